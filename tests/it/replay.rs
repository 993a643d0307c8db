//! `walhook replay`: re-queueing deliveries of a real outbox, by id or by subscription.

use crate::support;

use support::outbox::{config, outbox, ERP};
use support::{run_walhook, unique, ConfigFile, Finished, TestDb};

/// Deliveries of three subscriptions, oldest first (ids 1..=8); `legacy` is no longer in the
/// config but still has deliveries.
const OUTBOX_ROWS: &str = "
SELECT pg_temp.add('invoices', 'evt_1', 'delivered', 1, 200, NULL, '3 days');
SELECT pg_temp.add('invoices', 'evt_2', 'dead', 10, 500, 'HTTP 500', '2 days');
SELECT pg_temp.add('invoices', 'evt_3', 'dead', 10, 502, 'HTTP 502', '1 hour');
SELECT pg_temp.add('invoices', 'evt_4', 'dead', 10, NULL, 'connection refused', '10 minutes');
SELECT pg_temp.add('partners', 'evt_5', 'dead', 10, 500, 'HTTP 500', '1 hour');
SELECT pg_temp.add('invoices', 'evt_6', 'pending', 3, 503, 'HTTP 503', '30 minutes');
SELECT pg_temp.add('invoices', 'evt_7', 'delivered', 1, 204, NULL, '20 minutes');
SELECT pg_temp.add('legacy', 'evt_8', 'dead', 10, 500, 'HTTP 500', '1 day');
-- Delivery 3 died in a batch request, delivery 6 is leased right now.
UPDATE walhook.delivery SET batch_id = 'batch_1' WHERE id = 3;
UPDATE walhook.delivery SET leased_until = now() + interval '30 seconds' WHERE id = 6;
";

/// The outbox of [`OUTBOX_ROWS`].
fn replay_outbox() -> (TestDb<'static>, ConfigFile) {
    outbox(OUTBOX_ROWS)
}

/// `walhook replay ARGS…`.
fn replay(config: &ConfigFile, args: &[&str]) -> Finished {
    run_walhook(config, &[&["replay"], args].concat())
}

/// `walhook replay ARGS…`, which must succeed; its one line of output.
fn replayed(config: &ConfigFile, args: &[&str]) -> String {
    let out = replay(config, args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    out.stdout.trim_end().to_owned()
}

/// One delivery as `event_id|status|attempts|trigger|due|leased|batch|delivered|last_code|last_error`
/// (`due`: next_attempt_at is not in the future), read through the `walhook.deliveries` view
/// where it has the column.
fn delivery(db: &TestDb<'_>, id: i64) -> String {
    db.sql(&format!(
        "SELECT v.event_id, v.status, v.attempts, d.trigger, v.next_attempt_at <= now(), \
                d.leased_until IS NOT NULL, d.batch_id IS NOT NULL, v.delivered_at IS NOT NULL, \
                v.last_status_code, v.last_error \
         FROM walhook.deliveries v JOIN walhook.delivery d USING (id) WHERE v.id = {id}"
    ))
}

/// The ids of the deliveries in this status, ascending.
fn ids(db: &TestDb<'_>, status: &str) -> Vec<i64> {
    db.sql(&format!(
        "SELECT id FROM walhook.delivery WHERE status = '{status}' ORDER BY id"
    ))
    .lines()
    .map(|line| line.parse().unwrap())
    .collect()
}

/// The ids of the deliveries with trigger `replay`, ascending.
fn replayed_ids(db: &TestDb<'_>) -> Vec<i64> {
    db.sql("SELECT id FROM walhook.delivery WHERE trigger = 'replay' ORDER BY id")
        .lines()
        .map(|line| line.parse().unwrap())
        .collect()
}

/// Marks `subscription` as switched off by a 410 Gone, as the dispatcher does.
fn deactivate(db: &TestDb<'_>, subscription: &str) {
    db.sql(&format!(
        "INSERT INTO walhook.subscription_state (subscription, state, reason) \
         VALUES ('{subscription}', 'gone', 'the receiver answered 410 Gone')"
    ));
}

fn deactivated(db: &TestDb<'_>) -> Vec<String> {
    db.sql("SELECT subscription FROM walhook.subscription_state ORDER BY 1")
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn an_operator_replays_one_dead_delivery_by_id_with_the_same_event_id() {
    let (db, config) = replay_outbox();
    assert_eq!(
        delivery(&db, 3),
        "evt_3|dead|10|scheduled|f|f|t|f|502|HTTP 502"
    );
    let line = replayed(&config, &["--id", "3"]);
    assert_eq!(
        line,
        "replayed delivery 3 of subscription \"invoices\" (was dead, re-queued; same event id \
         evt_3); a running walhook sends it within a second"
    );
    // Pending, due now, a fresh schedule, out of its old batch; the last outcome stays.
    assert_eq!(
        delivery(&db, 3),
        "evt_3|pending|0|replay|t|f|f|f|502|HTTP 502"
    );
    assert_eq!(replayed_ids(&db), [3]);
    assert_eq!(ids(&db, "dead"), [2, 4, 5, 8]);
}

#[test]
fn replaying_a_delivered_or_pending_delivery_by_id_sends_it_again_now() {
    let (db, config) = replay_outbox();
    let line = replayed(&config, &["--id", "1"]);
    assert!(
        line.starts_with("replayed delivery 1 of subscription \"invoices\" (was delivered"),
        "{line}"
    );
    assert_eq!(delivery(&db, 1), "evt_1|pending|0|replay|t|f|f|f|200|");
    // A pending one, even a leased one, is made due now.
    let line = replayed(&config, &["--id", "6"]);
    assert!(
        line.contains("(was pending, made due now; same event id evt_6)"),
        "{line}"
    );
    assert_eq!(
        delivery(&db, 6),
        "evt_6|pending|0|replay|t|f|f|f|503|HTTP 503"
    );
    // A subscription no longer in the config: re-queued, and the line says who sends it.
    let line = replayed(&config, &["--id", "8"]);
    assert!(
        line.ends_with(
            "subscription \"legacy\" is not in the config: it waits until it is added back"
        ),
        "{line}"
    );
}

#[test]
fn replaying_an_inactive_subscription_says_it_waits_until_it_is_active() {
    let (db, config) = replay_outbox();
    let text = std::fs::read_to_string(&config.path).unwrap();
    let edited = text.replacen(
        "name = \"partners\"\n",
        "name = \"partners\"\nactive = false\n",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&config.path, edited).unwrap();
    let line = replayed(&config, &["--subscription", "partners", "--status", "dead"]);
    assert!(
        line.ends_with(
            "subscription \"partners\" has active = false in the config: it waits until it is \
             active"
        ),
        "{line}"
    );
    assert_eq!(replayed_ids(&db), [5]);
}

#[test]
fn an_unknown_id_is_an_error_naming_it() {
    let (db, config) = replay_outbox();
    let out = replay(&config, &["--id", "42"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no delivery with id 42"),
        "{}",
        out.stderr
    );
    assert!(replayed_ids(&db).is_empty());
}

#[test]
fn an_operator_replays_the_recent_dead_deliveries_of_one_subscription() {
    let (db, config) = replay_outbox();
    let line = replayed(
        &config,
        &[
            "--subscription",
            "invoices",
            "--status",
            "dead",
            "--since",
            "2h",
        ],
    );
    assert_eq!(
        line,
        "replayed 2 deliveries of subscription \"invoices\" (dead, created in the last 2h; \
         same event ids); a running walhook sends them within a second"
    );
    assert_eq!(replayed_ids(&db), [3, 4]);
    // The older dead one and the other subscriptions' are left alone.
    assert_eq!(ids(&db, "dead"), [2, 5, 8]);
    assert_eq!(
        delivery(&db, 4),
        "evt_4|pending|0|replay|t|f|f|f||connection refused"
    );
    // The same with a timestamp, without --since: the rest of them.
    let since = db.sql(
        "SELECT to_char((now() - interval '1 year') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    );
    let line = replayed(
        &config,
        &[
            "--subscription",
            "invoices",
            "--status",
            "dead",
            "--since",
            since.trim(),
        ],
    );
    assert!(
        line.starts_with("replayed 1 delivery of subscription \"invoices\" (dead, created since "),
        "{line}"
    );
    assert_eq!(ids(&db, "dead"), [5, 8]);
    let line = replayed(&config, &["--subscription", "partners", "--status", "dead"]);
    assert!(
        line.starts_with("replayed 1 delivery of subscription \"partners\" (dead; same event ids)"),
        "{line}"
    );
    assert_eq!(ids(&db, "dead"), [8]);
    // A subscription that is only in the outbox any more can be replayed too.
    let line = replayed(&config, &["--subscription", "legacy", "--status", "dead"]);
    assert!(
        line.starts_with("replayed 1 delivery of subscription \"legacy\" (dead; "),
        "{line}"
    );
    assert!(ids(&db, "dead").is_empty());
}

#[test]
fn an_operator_resends_what_was_delivered_after_the_receiver_lost_it() {
    let (db, config) = replay_outbox();
    let line = replayed(
        &config,
        &[
            "--subscription",
            "invoices",
            "--status",
            "delivered",
            "--since",
            "1h",
        ],
    );
    assert!(
        line.starts_with(
            "replayed 1 delivery of subscription \"invoices\" (delivered, created in the last 1h; "
        ),
        "{line}"
    );
    assert_eq!(delivery(&db, 7), "evt_7|pending|0|replay|t|f|f|f|204|");
    assert_eq!(ids(&db, "delivered"), [1]);
    let line = replayed(
        &config,
        &["--subscription", "invoices", "--status", "delivered"],
    );
    assert!(
        line.starts_with("replayed 1 delivery of subscription \"invoices\" (delivered; "),
        "{line}"
    );
    assert!(ids(&db, "delivered").is_empty());
}

#[test]
fn nothing_to_replay_is_not_an_error() {
    let (db, config) = replay_outbox();
    let line = replayed(
        &config,
        &[
            "--subscription",
            "partners",
            "--status",
            "dead",
            "--since",
            "5m",
        ],
    );
    assert_eq!(
        line,
        "nothing to replay: subscription \"partners\" has no deliveries with status dead \
         created in the last 5m"
    );
    assert!(replayed_ids(&db).is_empty());
}

#[test]
fn replaying_a_subscription_switches_it_back_on_after_a_410() {
    let (db, config) = replay_outbox();
    deactivate(&db, "invoices");
    deactivate(&db, "partners");
    let line = replayed(&config, &["--subscription", "invoices", "--status", "dead"]);
    assert_eq!(
        line,
        "replayed 3 deliveries of subscription \"invoices\" (dead; same event ids); \
         subscription \"invoices\", deactivated by a 410 Gone, is switched back on; \
         a running walhook sends them within a second"
    );
    assert_eq!(deactivated(&db), ["partners"]);
    // With nothing to replay, the subscription is still switched back on.
    let line = replayed(
        &config,
        &[
            "--subscription",
            "partners",
            "--status",
            "dead",
            "--since",
            "1m",
        ],
    );
    assert_eq!(
        line,
        "nothing to replay: subscription \"partners\" has no deliveries with status dead \
         created in the last 1m; subscription \"partners\", deactivated by a 410 Gone, is switched back on; a \
         running walhook resumes its pending deliveries within a second"
    );
    assert!(deactivated(&db).is_empty());
    // Replaying one delivery switches its subscription back on too.
    deactivate(&db, "partners");
    let line = replayed(&config, &["--id", "5"]);
    assert!(
        line.contains("subscription \"partners\", deactivated by a 410 Gone, is switched back on"),
        "{line}"
    );
    assert!(deactivated(&db).is_empty());
}

#[test]
fn a_mistyped_subscription_is_refused_with_a_suggestion() {
    let (db, config) = replay_outbox();
    let out = replay(&config, &["--subscription", "invoice", "--status", "dead"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("unknown subscription \"invoice\"")
            && out.stderr.contains("did you mean \"invoices\"?"),
        "{}",
        out.stderr
    );
    // Names only the outbox knows are suggested too.
    let out = replay(&config, &["--subscription", "legacyy", "--status", "dead"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("did you mean \"legacy\"?"),
        "{}",
        out.stderr
    );
    assert!(replayed_ids(&db).is_empty());
}

#[test]
fn bad_combinations_of_arguments_are_usage_errors() {
    let (db, config) = replay_outbox();
    let cases: [(&[&str], &str); 5] = [
        (&[], "say what to replay"),
        (
            &["--subscription", "invoices"],
            "--subscription needs --status",
        ),
        (
            &["--subscription", "invoices", "--status", "pending"],
            "pending deliveries are still queued",
        ),
        (
            &["--id", "3", "--subscription", "invoices"],
            "cannot be combined with --subscription",
        ),
        (
            &["--id", "3", "--since", "1h"],
            "cannot be combined with --since",
        ),
    ];
    for (args, message) in cases {
        let out = replay(&config, args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    let out = replay(
        &config,
        &["--subscription", "invoices", "--status", "failed"],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(replayed_ids(&db).is_empty());
}

#[test]
fn before_setup_replay_says_to_run_setup() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("slot"));
    let out = replay(&config, &["--id", "1"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("the outbox schema walhook does not exist yet: run `walhook setup`"),
        "{}",
        out.stderr
    );
}

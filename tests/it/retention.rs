//! `outbox.retention` (SPEC §2): a running daemon removes delivered and dead deliveries
//! settled longer ago than the retention, their events once no delivery refers to them, and
//! old attempts; pending deliveries and their events stay whatever their age.

use crate::support;

use std::time::Duration;

use support::http::{metric, Http};
use support::outbox::{config_text, ADD_DELIVERY, ERP};
use support::{config_file, run_walhook, unique, wait_until, ConfigFile, Daemon, TestDb};

/// Old delivered rows beyond one batch of 1,000, so a run takes several batches.
const BULK: usize = 2_500;

fn config(db: &TestDb<'_>, retention: &str) -> ConfigFile {
    let text = config_text(db, &unique("slot"));
    config_file(&format!("{text}\n[outbox]\nretention = \"{retention}\"\n"))
}

/// A second delivery, for `subscription`, of the event `evt` that `pg_temp.add` made.
fn share(evt: &str, subscription: &str, status: &str, age: &str) -> String {
    format!(
        "INSERT INTO walhook.delivery (subscription, event_seq, status, attempts, \
                                       next_attempt_at, created_at, delivered_at) \
         SELECT '{subscription}', seq, '{status}', 1, now() + interval '5 minutes', \
                now() - interval '{age}', \
                CASE WHEN '{status}' = 'delivered' THEN now() - interval '{age}' END \
         FROM walhook.event WHERE event_id = '{evt}';"
    )
}

/// An attempt of the delivery of `evt` for `subscription` (or a `walhook test` request,
/// without a delivery, when `evt` is empty), started `age` ago.
fn attempt(evt: &str, subscription: &str, age: &str) -> String {
    let delivery = if evt.is_empty() {
        "NULL".to_owned()
    } else {
        format!(
            "(SELECT d.id FROM walhook.delivery d JOIN walhook.event e ON e.seq = d.event_seq \
              WHERE e.event_id = '{evt}' AND d.subscription = '{subscription}')"
        )
    };
    let trigger = if evt.is_empty() { "test" } else { "scheduled" };
    format!(
        "INSERT INTO walhook.attempt (delivery_id, subscription, attempt, trigger, started_at, \
                                      duration_ms, status_code, response_excerpt) \
         VALUES ({delivery}, '{subscription}', 1, '{trigger}', now() - interval '{age}', 5, \
                 200, 'age {age}');"
    )
}

/// `subscription:event_id:status` of every delivery, sorted.
fn deliveries(db: &TestDb<'_>) -> Vec<String> {
    let mut rows: Vec<String> = support::rows::deliveries(db)
        .into_iter()
        .map(|d| format!("{}:{}:{}", d.subscription, d.event_id, d.status))
        .collect();
    rows.sort();
    rows
}

fn events(db: &TestDb<'_>) -> Vec<String> {
    let mut rows: Vec<String> = db
        .sql("SELECT event_id FROM walhook.event")
        .lines()
        .map(str::to_owned)
        .collect();
    rows.sort();
    rows
}

/// `subscription:response_excerpt` of every attempt, sorted.
fn attempts(db: &TestDb<'_>) -> Vec<String> {
    let mut rows: Vec<String> = support::rows::attempts(db)
        .into_iter()
        // As `subscription || ':' || response_excerpt` would: empty without an excerpt.
        .map(|a| {
            a.response_excerpt
                .map(|excerpt| format!("{}:{excerpt}", a.subscription))
                .unwrap_or_default()
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn old_settled_deliveries_their_events_and_old_attempts_go_pending_ones_stay() {
    let db = TestDb::new(ERP);
    let config = config(&db, "1h");
    let slot = config_slot(&config);
    let _guard = support::SlotGuard::new(&db, &slot);
    let setup = run_walhook(&config, &["setup"]);
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);

    let rows = [
        // Gone: settled two hours ago.
        "SELECT pg_temp.add('invoices', 'evt_1', 'delivered', 1, 200, NULL, '2 hours');",
        "SELECT pg_temp.add('invoices', 'evt_2', 'dead', 10, 500, 'boom', '2 hours');",
        // Kept: settled ten minutes ago.
        "SELECT pg_temp.add('invoices', 'evt_3', 'delivered', 1, 200, NULL, '10 minutes');",
        "SELECT pg_temp.add('invoices', 'evt_4', 'dead', 10, 500, 'boom', '10 minutes');",
        // Kept: pending, however old.
        "SELECT pg_temp.add('invoices', 'evt_5', 'pending', 3, 503, 'busy', '3 days');",
        // An old event that a pending delivery still needs: the delivered one goes, the
        // event stays.
        "SELECT pg_temp.add('invoices', 'evt_6', 'delivered', 1, 200, NULL, '2 hours');",
        &share("evt_6", "partners", "pending", "2 hours"),
        // Both deliveries of one event old and settled: all three go in one run.
        "SELECT pg_temp.add('invoices', 'evt_7', 'delivered', 1, 200, NULL, '2 hours');",
        &share("evt_7", "partners", "dead", "2 hours"),
        // One old, one recent: the event stays with the recent one.
        "SELECT pg_temp.add('invoices', 'evt_8', 'delivered', 1, 200, NULL, '2 hours');",
        &share("evt_8", "partners", "delivered", "10 minutes"),
        // Created long ago, replayed, dead again ten minutes ago: retention counts from
        // when it settled.
        "SELECT pg_temp.add('invoices', 'evt_9', 'dead', 10, 500, 'boom', '3 days');",
        "UPDATE walhook.delivery SET settled_at = now() - interval '10 minutes' \
         WHERE event_seq = (SELECT seq FROM walhook.event WHERE event_id = 'evt_9');",
        // The attempt log: by the age of each attempt, whatever its delivery.
        &attempt("evt_1", "invoices", "2 hours"),
        &attempt("evt_3", "invoices", "2 hours"),
        &attempt("evt_3", "invoices", "10 minutes"),
        &attempt("evt_5", "invoices", "3 days"),
        &attempt("evt_5", "invoices", "5 minutes"),
        &attempt("", "invoices", "2 hours"),
        &attempt("", "partners", "1 minute"),
    ];
    db.sql(&format!("{ADD_DELIVERY}{}", rows.concat()));
    // Many old ones: more than one batch.
    db.sql(&format!(
        "{ADD_DELIVERY} SELECT pg_temp.add('partners', 'evt_' || g, 'delivered', 1, 200, \
         NULL, '1 day') FROM generate_series(1000, {}) g;
         INSERT INTO walhook.attempt (delivery_id, subscription, attempt, trigger, started_at, \
                                      response_excerpt) \
         SELECT NULL, 'bulk', 1, 'test', now() - interval '1 day', 'bulk' \
         FROM generate_series(1, {BULK});",
        999 + BULK
    ));

    let daemon = Daemon::start(&config);
    let http = Http::of(&daemon);
    wait_until(
        Duration::from_secs(60),
        "a retention run that removes rows",
        || daemon.log_text().contains("outbox retention: removed"),
    );

    assert_eq!(
        deliveries(&db),
        [
            "invoices:evt_3:delivered",
            "invoices:evt_4:dead",
            "invoices:evt_5:pending",
            "invoices:evt_9:dead",
            "partners:evt_6:pending",
            "partners:evt_8:delivered",
        ],
        "log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        events(&db),
        ["evt_3", "evt_4", "evt_5", "evt_6", "evt_8", "evt_9"]
    );
    assert_eq!(
        attempts(&db),
        [
            "invoices:age 10 minutes",
            "invoices:age 5 minutes",
            "partners:age 1 minute"
        ]
    );
    // The view users read still joins every delivery left to its event.
    assert_eq!(db.sql("SELECT count(*) FROM walhook.deliveries"), "6");

    // Gone: evt_1, evt_2, evt_6 (invoices), evt_7 (both), evt_8 (invoices) and the bulk;
    // attempts of evt_1, evt_3 and evt_5 and a test request, two hours or more ago.
    let removed_deliveries = 6 + BULK;
    let removed_events = 3 + BULK;
    let removed_attempts = 4 + BULK;
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("outbox retention: removed"))
        .expect("the log line");
    for (field, n) in [
        ("deliveries", removed_deliveries),
        ("events", removed_events),
        ("attempts", removed_attempts),
    ] {
        assert!(
            strip_ansi(line).contains(&format!("{field}={n}")),
            "{field}={n} in {line}"
        );
    }
    assert!(line.contains("older than 1h"), "{line}");
    let metrics = http.metrics();
    for (table, n) in [
        ("delivery", removed_deliveries),
        ("event", removed_events),
        ("attempt", removed_attempts),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("walhook_retention_deleted_total{{table=\"{table}\"}}")
            ),
            Some(n as f64),
            "{table}:\n{metrics}"
        );
    }
}

#[test]
fn the_shortest_retention_the_config_accepts_is_one_second() {
    // A test outbox can use "1s"; anything positive goes, zero is refused.
    let db = TestDb::new(ERP);
    let ok = config(&db, "1s");
    let checked = run_walhook(&ok, &["deliveries"]);
    assert!(
        !checked.stderr.contains("outbox.retention"),
        "{}",
        checked.stderr
    );
    let zero = config(&db, "0s");
    let refused = run_walhook(&zero, &["deliveries"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("outbox.retention: must be greater than 0"),
        "{}",
        refused.stderr
    );
}

fn config_slot(config: &ConfigFile) -> String {
    let text = std::fs::read_to_string(&config.path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("slot = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("slot in config")
        .to_owned()
}

/// The log without terminal colours.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

//! `walhook deliveries`: the delivery log read from a real outbox, with every filter.

use crate::support;

use serde_json::Value;
use support::outbox::{config, ERP};
use support::{run_walhook, unique, ConfigFile, Finished, TestDb};

/// Five deliveries of two subscriptions, oldest first (ids 1..=5).
const OUTBOX_ROWS: &str = "
SELECT pg_temp.add('invoices', 'evt_1', 'delivered', 1, 200, NULL, '3 days');
SELECT pg_temp.add('invoices', 'evt_2', 'dead', 10, 500,
                   'HTTP 500 from the receiver: ' || repeat('stack trace ', 20), '2 days');
SELECT pg_temp.add('partners', 'evt_3', 'delivered', 1, 204, NULL, '5 hours');
SELECT pg_temp.add('invoices', 'evt_4', 'pending', 2, 503, 'HTTP 503', '1 hour');
SELECT pg_temp.add('partners', 'evt_5', 'pending', 0, NULL, NULL, '10 minutes');
";

/// A database with the outbox made by `walhook setup` and [`OUTBOX_ROWS`] in it.
fn outbox() -> (TestDb<'static>, ConfigFile) {
    support::outbox::outbox(OUTBOX_ROWS)
}

/// `walhook deliveries ARGS…`, which must succeed.
fn deliveries(config: &ConfigFile, args: &[&str]) -> Finished {
    let out = run_walhook(config, &[&["deliveries"], args].concat());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out
}

/// The event ids in the table, top to bottom.
fn event_ids(out: &Finished) -> Vec<String> {
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|word| word.starts_with("evt_"))
        .map(String::from)
        .collect()
}

/// The last line: the summary.
fn summary(out: &Finished) -> &str {
    out.stdout.lines().last().unwrap_or_default()
}

#[test]
fn an_operator_sees_every_delivery_newest_first_with_a_summary() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &[]);
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "SUBSCRIPTION",
        "EVENT_ID",
        "STATUS",
        "LAST_ERROR",
        "CREATED_AT",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(
        event_ids(&out),
        ["evt_5", "evt_4", "evt_3", "evt_2", "evt_1"]
    );
    assert_eq!(
        summary(&out),
        "5 shown (limit 50); pending 2, delivered 2, dead 1 for these filters"
    );
    // The long error is cut to one short cell; the pending row shows when it is retried.
    assert!(
        out.stdout.contains("HTTP 500 from the receiver"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&"stack trace ".repeat(5)),
        "{}",
        out.stdout
    );
    let pending = out.stdout.lines().find(|l| l.contains("evt_4")).unwrap();
    assert!(
        pending.contains("pending") && pending.contains("503"),
        "{pending}"
    );
    assert_eq!(pending.matches('Z').count(), 2, "{pending}");
}

#[test]
fn an_operator_narrows_the_log_to_one_subscription() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &["--subscription", "partners"]);
    assert_eq!(event_ids(&out), ["evt_5", "evt_3"]);
    assert_eq!(
        summary(&out),
        "2 shown (limit 50); pending 1, delivered 1, dead 0 for these filters"
    );
}

#[test]
fn an_operator_lists_only_the_dead_deliveries() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &["--status", "dead"]);
    assert_eq!(event_ids(&out), ["evt_2"]);
    let out = deliveries(
        &config,
        &["--status", "pending", "--subscription", "invoices"],
    );
    assert_eq!(event_ids(&out), ["evt_4"]);
}

#[test]
fn an_operator_looks_at_the_last_two_hours() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &["--since", "2h"]);
    assert_eq!(event_ids(&out), ["evt_5", "evt_4"]);
    assert_eq!(
        summary(&out),
        "2 shown (limit 50); pending 2, delivered 0, dead 0 for these filters"
    );
}

#[test]
fn an_operator_looks_at_everything_since_a_timestamp() {
    let (db, config) = outbox();
    let since = db.sql(
        "SELECT to_char((now() - interval '1 day') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    );
    let out = deliveries(&config, &["--since", since.trim()]);
    assert_eq!(event_ids(&out), ["evt_5", "evt_4", "evt_3"]);
    // With an offset too.
    let out = deliveries(&config, &["--since", "2000-01-01T02:00:00+02:00"]);
    assert_eq!(event_ids(&out).len(), 5);
}

#[test]
fn a_since_that_is_neither_a_duration_nor_a_timestamp_is_a_usage_error() {
    let (_db, config) = outbox();
    let out = run_walhook(&config, &["deliveries", "--since", "yesterday"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("RFC 3339"), "{}", out.stderr);
}

#[test]
fn a_since_too_far_back_or_on_no_real_date_is_a_usage_error_not_a_db_error() {
    let (_db, config) = outbox();
    for since in ["99999999999d", "2026-02-30T08:00:00Z"] {
        let out = run_walhook(&config, &["deliveries", "--since", since]);
        assert_eq!(out.code, 2, "{since}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("--since"), "{since}: {}", out.stderr);
    }
}

#[test]
fn the_limit_shows_the_newest_and_the_summary_still_counts_them_all() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &["--limit", "2"]);
    assert_eq!(event_ids(&out), ["evt_5", "evt_4"]);
    assert_eq!(
        summary(&out),
        "2 shown (limit 2); pending 2, delivered 2, dead 1 for these filters"
    );
}

#[test]
fn a_script_reads_one_json_object_per_line_with_the_views_columns() {
    let (_db, config) = outbox();
    let out = deliveries(&config, &["--json", "--subscription", "invoices"]);
    let rows: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    let columns: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        columns,
        [
            "id",
            "subscription",
            "event_id",
            "event_type",
            "object",
            "key",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at"
        ]
    );
    let (pending, delivered) = (&rows[0], &rows[2]);
    assert_eq!(pending["id"], 4);
    assert_eq!(pending["event_id"], "evt_4");
    assert_eq!(pending["key"], serde_json::json!({"id": 4}));
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["attempts"], 2);
    assert_eq!(pending["last_status_code"], 503);
    assert_eq!(pending["delivered_at"], Value::Null);
    assert_eq!(delivered["status"], "delivered");
    for ts in [&pending["created_at"], &delivered["delivered_at"]] {
        let ts = ts.as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
    }
}

#[test]
fn a_mistyped_subscription_is_a_usage_error_that_suggests_the_configured_name() {
    let (_db, config) = outbox();
    let out = run_walhook(&config, &["deliveries", "--subscription", "invoice"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "unknown subscription \"invoice\": not in the config and no deliveries in the outbox; \
             did you mean \"invoices\"?"
        ),
        "{}",
        out.stderr
    );
    // A configured name lists its deliveries as before.
    let out = deliveries(&config, &["--subscription", "partners"]);
    assert_eq!(event_ids(&out), ["evt_5", "evt_3"]);
}

#[test]
fn an_unknown_status_is_a_usage_error() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("slot"));
    let out = run_walhook(&config, &["deliveries", "--status", "failed"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("pending"), "{}", out.stderr);
}

#[test]
fn before_setup_the_log_says_to_run_setup() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("slot"));
    let out = run_walhook(&config, &["deliveries"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("the outbox schema walhook does not exist yet: run `walhook setup`"),
        "{}",
        out.stderr
    );
}

//! Webhook delivery end to end: a real daemon, real Postgres, and a real receiver on
//! 127.0.0.1 that the tests program to succeed, fail, slow down or vanish.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{invoice_config, start_daemon, wait_until, TestDb};
use support::{verify, Reply, Subscriber};

use support::WEBHOOK_SECRET as SECRET;

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text);
ALTER TABLE account_invoice REPLICA IDENTITY FULL;
INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft');
";

/// `walhook.deliveries` as (event_id, status, attempts), oldest first.
fn deliveries(db: &TestDb<'_>) -> Vec<(String, String, i32)> {
    support::rows::deliveries(db)
        .into_iter()
        .map(|d| (d.event_id, d.status, d.attempts))
        .collect()
}

#[test]
fn updating_a_watched_row_sends_a_signed_webhook_with_old_and_new_values() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let config = invoice_config(&db, &receiver.url("/hooks/invoice"), "");
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET partner_id = 2 WHERE id = 1");
    let seen = receiver.wait_for(1, Duration::from_secs(20));
    let hook = &seen[0];
    assert_eq!(hook.method, "POST");
    assert_eq!(hook.path, "/hooks/invoice");
    verify(hook, SECRET).expect("the signature verifies");
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["type"], "invoice.updated");
    assert_eq!(body["key"], json!({"id": 1}));
    assert_eq!(
        body["values"],
        json!({"number": "INV-1", "partner_id": 2, "state": "draft"})
    );
    assert_eq!(body["previous"], json!({"partner_id": 1}));
    assert_eq!(body["changed"], json!(["partner_id"]));
    let id = body["id"].as_str().unwrap();
    assert_eq!(hook.header("webhook-id"), Some(id));
    assert_eq!(hook.header("idempotency-key"), Some(id));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert!(hook
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("walhook/")));
    let timestamp: i64 = hook.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - timestamp).abs() < 60,
        "timestamp {timestamp} vs now {now}"
    );

    wait_until(Duration::from_secs(10), "the delivery is recorded", || {
        deliveries(&db) == vec![(id.to_owned(), "delivered".to_owned(), 1)]
    });
    let attempt =
        db.sql("SELECT attempt, trigger, status_code, error IS NULL FROM walhook.attempts");
    assert_eq!(attempt.trim(), "1|scheduled|204|t");
    drop(daemon);
}

#[test]
fn a_failing_receiver_gets_retries_on_the_schedule_then_the_delivery_is_dead() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(500).body("boom"));
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"400ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let seen = receiver.wait_for(3, Duration::from_secs(20));
    let ids: Vec<_> = seen
        .iter()
        .map(|s| s.header("webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "same event id on every attempt"
    );
    let gap1 = seen[1].at - seen[0].at;
    let gap2 = seen[2].at - seen[1].at;
    assert!(
        gap1 >= Duration::from_millis(160),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(320),
        "second retry after {gap2:?}"
    );
    wait_until(Duration::from_secs(10), "the delivery is dead", || {
        deliveries(&db)
            .first()
            .is_some_and(|d| d.1 == "dead" && d.2 == 3)
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        receiver.count(),
        3,
        "nothing after the last scheduled attempt"
    );
    let log = db.sql("SELECT string_agg(attempt || ':' || status_code, ',' ORDER BY attempt) FROM walhook.attempts");
    assert_eq!(log.trim(), "1:500,2:500,3:500");
    let excerpt = db.sql("SELECT DISTINCT response_excerpt FROM walhook.attempts");
    assert_eq!(excerpt.trim(), "boom");
}

#[test]
fn replay_resends_a_dead_delivery_with_its_original_event_id() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(500));
    let config = invoice_config(&db, &receiver.url("/hooks"), "retry_schedule = []");
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let first = receiver.wait_for(1, Duration::from_secs(20));
    let id = first[0].header("webhook-id").unwrap().to_owned();
    wait_until(Duration::from_secs(10), "the delivery is dead", || {
        deliveries(&db) == vec![(id.clone(), "dead".to_owned(), 1)]
    });

    receiver.respond(|_| Reply::status(200));
    let out = support::run_walhook(
        &config,
        &["replay", "--subscription", "invoices", "--status", "dead"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let seen = receiver.wait_for(2, Duration::from_secs(20));
    assert_eq!(seen[1].header("webhook-id"), Some(id.as_str()));
    assert_eq!(seen[1].body, first[0].body, "byte-identical body");
    wait_until(Duration::from_secs(10), "the replay is recorded", || {
        deliveries(&db) == vec![(id.clone(), "delivered".to_owned(), 1)]
    });
    let log = db.sql("SELECT string_agg(attempt || ':' || trigger || ':' || status_code, ',' ORDER BY started_at) FROM walhook.attempts");
    assert_eq!(log.trim(), "1:scheduled:500,1:replay:200");
}

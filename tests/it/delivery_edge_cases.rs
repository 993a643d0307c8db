//! Delivery when receivers and configs do unusual things: a real `walhook run`, real
//! Postgres, and a programmable receiver on 127.0.0.1.

use crate::support;
use support::{Sub, Toml};

use std::time::Duration;

use serde_json::Value;
use support::{
    config_file, start_daemon, unique, wait_until, ConfigFile, Daemon, Reply, Subscriber, TestDb,
};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, state text);
INSERT INTO account_invoice SELECT g, 'INV-' || g, 'draft' FROM generate_series(1, 5) g;
";

/// The config text with one subscription `invoices` on `url`; `extra` goes into the
/// subscription, or into `[delivery]` after a line `[delivery]`. `slot` and `publication`
/// are fixed by the caller so that the file can be rewritten for a reload.
fn config_text(db: &TestDb<'_>, names: &(String, String), url: &str, extra: &str) -> String {
    let (delivery, extra) = match extra.split_once("[delivery]\n") {
        Some((extra, delivery)) => (delivery, extra),
        None => ("", extra),
    };
    Toml::new(db)
        .slot(&names.0)
        .publication(&names.1)
        .delivery(delivery)
        .table("invoice", "public.account_invoice")
        .subscription(Sub::new("invoices", "invoice", url).with(extra))
        .text()
}

fn names() -> (String, String) {
    (unique("slot"), unique("pub"))
}

fn config(db: &TestDb<'_>, url: &str, extra: &str) -> ConfigFile {
    config_file(&config_text(db, &names(), url, extra))
}

/// `(status, attempts)` of every delivery, oldest first.
fn deliveries(db: &TestDb<'_>) -> Vec<(String, i32)> {
    support::rows::deliveries(db)
        .into_iter()
        .map(|d| (d.status, d.attempts))
        .collect()
}

fn wait_for_deliveries(
    db: &TestDb<'_>,
    daemon: &Daemon,
    what: &str,
    ready: impl Fn(&[(String, i32)]) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = deliveries(db);
        if ready(&now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 20 s; deliveries {now:?}; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A body that Postgres `text` cannot hold (a NUL byte) must not stop the attempt log,
/// and with it every later result of every subscription.
#[test]
fn a_response_body_with_a_nul_byte_is_recorded_and_delivery_goes_on() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(500).body(b"bad\0body".as_slice()),
        Reply::status(204),
    ]);
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"1h\"]",
    );
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    receiver.wait_for(2, Duration::from_secs(20));
    wait_for_deliveries(&db, &daemon, "the retry is delivered", |d| {
        d == [("delivered".to_owned(), 2)]
    });
    let log = db.sql(
        "SELECT attempt || ':' || status_code || ':' || coalesce(response_excerpt, '') \
         FROM walhook.attempts ORDER BY attempt",
    );
    assert_eq!(log, "1:500:bad\u{FFFD}body\n2:204:");
}

/// Rewrites the config file and waits until the daemon has applied it.
fn reload(config: &ConfigFile, daemon: &Daemon, text: String) {
    let before = daemon.log_text().matches("config reloaded").count();
    std::fs::write(&config.path, text).unwrap();
    wait_until(Duration::from_secs(10), "the reload is logged", || {
        daemon.log_text().matches("config reloaded").count() > before
    });
}

/// Waits until every delivery has made `attempts` attempts (their results are recorded).
fn wait_for_attempts(db: &TestDb<'_>, daemon: &Daemon, count: usize, attempts: i32) {
    wait_for_deliveries(db, daemon, "the attempts are recorded", |d| {
        d.len() == count && d.iter().all(|(_, a)| *a == attempts)
    });
}

const BATCH: &str = "batch = { max_events = 10, max_wait = \"200ms\" }";

/// A failed batch is retried whole; its deliveries wait for one retry time, not one each.
/// Once `batch` is gone from the config, they go one event per request.
#[test]
fn a_failed_batch_goes_one_event_at_a_time_once_batch_is_switched_off() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![Reply::status(500), Reply::status(204)]);
    let names = names();
    let url = receiver.url("/hooks");
    let schedule = "retry_schedule = [\"3s\", \"1h\"]";
    let config = config_file(&config_text(
        &db,
        &names,
        &url,
        &format!("{BATCH}\n{schedule}"),
    ));
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id <= 3");
    let first = receiver.wait_for(1, Duration::from_secs(20));
    assert_eq!(first[0].json().as_array().map(Vec::len), Some(3));
    wait_for_attempts(&db, &daemon, 3, 1);
    assert_eq!(
        db.sql(
            "SELECT count(DISTINCT next_attempt_at) || ':' || count(DISTINCT batch_id) \
             FROM walhook.delivery"
        ),
        "1:1",
        "one retry time and one batch for the three deliveries"
    );

    reload(&config, &daemon, config_text(&db, &names, &url, schedule));
    let seen = receiver.wait_for(4, Duration::from_secs(15));
    let singles: Vec<Value> = seen[1..].iter().map(|s| s.json()).collect();
    for (request, event) in seen[1..].iter().zip(&singles) {
        assert!(event.is_object(), "one event per request: {event}");
        assert_eq!(request.header("webhook-id"), event["id"].as_str());
    }
    wait_for_deliveries(&db, &daemon, "all three are delivered", |d| {
        d.len() == 3 && d.iter().all(|(s, a)| s == "delivered" && *a == 2)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 4);
}

/// A failed batch goes again under the same `webhook-id` with the same events, even after
/// `max_events` shrank below its size: a receiver that deduplicates on the id must not see
/// another body under it.
#[test]
fn a_failed_batch_goes_again_whole_after_max_events_shrinks() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![Reply::status(500), Reply::status(204)]);
    let names = names();
    let url = receiver.url("/hooks");
    let schedule = "retry_schedule = [\"3s\", \"1h\"]";
    let config = config_file(&config_text(
        &db,
        &names,
        &url,
        &format!("{BATCH}\n{schedule}"),
    ));
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted'");
    receiver.wait_for(1, Duration::from_secs(20));
    wait_for_attempts(&db, &daemon, 5, 1);
    let smaller = "batch = { max_events = 2, max_wait = \"200ms\" }";
    reload(
        &config,
        &daemon,
        config_text(&db, &names, &url, &format!("{smaller}\n{schedule}")),
    );
    let seen = receiver.wait_for(2, Duration::from_secs(15));
    wait_for_deliveries(&db, &daemon, "all five are delivered", |d| {
        d.len() == 5 && d.iter().all(|(s, a)| s == "delivered" && *a == 2)
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen_now = receiver.requests();
    assert_eq!(seen_now.len(), 2, "one retry request: {:?}", seen_now.len());
    assert_eq!(seen[1].header("webhook-id"), seen[0].header("webhook-id"));
    assert_eq!(
        seen[1].body, seen[0].body,
        "the same events under the same id"
    );
}

/// A subscription that a 410 switched off is looked at again on a clock: switching it back
/// on works while new events keep waking its worker.
#[test]
fn a_subscription_switched_back_on_resumes_while_events_keep_coming() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(410));
    let config = config(&db, &receiver.url("/hooks"), "retry_schedule = [\"1h\"]");
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    wait_until(
        Duration::from_secs(20),
        "the subscription is switched off",
        || db.sql("SELECT count(*) FROM walhook.subscription_state") == "1",
    );
    receiver.respond(|_| Reply::status(204));
    let gone = receiver.count();

    // Events keep coming, a few a second, while the subscription is switched back on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let name = db.name.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                support::cluster()
                    .psql(
                        &name,
                        &format!("UPDATE account_invoice SET number = 'INV-{n}' WHERE id = 2"),
                    )
                    .unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    db.sql("DELETE FROM walhook.subscription_state");
    let resumed = std::time::Instant::now();
    while receiver.count() <= gone && resumed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        receiver.count() > gone,
        "nothing sent within 5 s of switching the subscription back on; log:\n{}",
        daemon.log_text()
    );
}

/// SIGTERM waits `shutdown_timeout` for a request in flight, then cuts it off, gives its
/// delivery back to the queue and exits.
#[test]
fn sigterm_cuts_off_a_hanging_request_at_the_shutdown_timeout() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(204).after(Duration::from_secs(60)));
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "timeout = \"30s\"\n[delivery]\nshutdown_timeout = \"1s\"",
    );
    let mut daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    receiver.wait_for(1, Duration::from_secs(20));
    let asked = std::time::Instant::now();
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "exit {took:?} after SIGTERM with shutdown_timeout = 1s; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        db.sql("SELECT status || ':' || attempts || ':' || (leased_until IS NULL) FROM walhook.delivery"),
        "pending:0:true",
        "given back untouched"
    );
}

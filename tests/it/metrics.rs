//! Observability of a running daemon (SPEC §7): `/metrics` after a known workload and
//! config edits, `/readyz` and `/healthz` while Postgres goes away and comes back, and the
//! `source.max_retained_wal` warning.

use crate::support;
use support::{Sub, Toml};

use std::time::Duration;

use support::http::{metric, Http};
use support::{config_file, start_daemon, wait_until, ConfigFile, TestDb};
use support::{Reply, Subscriber};
use walhook::ephemeral::{EphemeralPostgres, Options};

const SCHEMA: &str = "
CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);
CREATE TABLE mishap (id int PRIMARY KEY);
";

/// `counted` gets every change of `ledger`; `dead_end` (no retries) and `parked` (a retry
/// in an hour) get the changes of `mishap`, which the receiver answers with 500.
fn workload_config(db: &TestDb<'_>, receiver: &Subscriber, extra: &str) -> String {
    let fail = receiver.url("/fail");
    Toml::new(db)
        .source(extra)
        .table("ledger", "public.ledger")
        .table("mishap", "public.mishap")
        .subscription(Sub::new("counted", "ledger", &receiver.url("/counted")))
        .subscription(Sub::new("dead_end", "mishap", &fail).with("retry_schedule = []"))
        .subscription(Sub::new("parked", "mishap", &fail).with("retry_schedule = [\"1h\"]"))
        .text()
}

/// Waits until `series` reads `value` in `/metrics`; returns the text that did.
fn wait_for_metric(http: &Http, series: &str, value: f64, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = http.metrics();
        let last = metric(&text, series);
        if last == Some(value) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {last:?}, not {value}, after {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_metric(text: &str, series: &str, value: f64) {
    assert_eq!(metric(text, series), Some(value), "{series} in:\n{text}");
}

#[test]
fn metrics_count_a_known_workload_and_config_reloads() {
    let db = TestDb::new(SCHEMA);
    let receiver = Subscriber::start();
    receiver.respond(|seen| {
        if seen.path.starts_with("/fail") {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    });
    let text = workload_config(&db, &receiver, "");
    let config = config_file(&text);
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);

    // Nothing yet: the series exist at zero, so dashboards and alerts see them.
    let before = http.metrics();
    assert_metric(
        &before,
        "walhook_events_total{subscription=\"counted\"}",
        0.0,
    );
    assert_metric(
        &before,
        "walhook_delivery_attempts_total{subscription=\"counted\",outcome=\"success\"}",
        0.0,
    );
    assert_metric(&before, "walhook_replication_connected", 1.0);

    // 100 changes in 10 transactions, and one that nobody can take.
    for batch in 0..10 {
        db.sql(&format!(
            "INSERT INTO ledger SELECT g, 0 FROM generate_series({}, {}) g",
            batch * 10 + 1,
            batch * 10 + 10
        ));
    }
    db.sql("INSERT INTO mishap VALUES (1)");

    let text = wait_for_metric(
        &http,
        "walhook_delivery_attempts_total{subscription=\"counted\",outcome=\"success\"}",
        100.0,
        Duration::from_secs(60),
    );
    assert_metric(
        &text,
        "walhook_changes_total{table=\"public.ledger\",operation=\"create\"}",
        100.0,
    );
    assert_metric(
        &text,
        "walhook_events_total{subscription=\"counted\"}",
        100.0,
    );
    assert_metric(
        &text,
        "walhook_delivery_duration_seconds_count{subscription=\"counted\"}",
        100.0,
    );
    assert_metric(
        &text,
        "walhook_end_to_end_latency_seconds_count{subscription=\"counted\"}",
        100.0,
    );
    for outcome in ["retry", "dead"] {
        assert_metric(
            &text,
            &format!(
                "walhook_delivery_attempts_total{{subscription=\"counted\",outcome=\"{outcome}\"}}"
            ),
            0.0,
        );
    }

    // The one change of `mishap`: dead at once for one subscription, waiting an hour for the
    // other.
    let text = wait_for_metric(
        &http,
        "walhook_delivery_attempts_total{subscription=\"dead_end\",outcome=\"dead\"}",
        1.0,
        Duration::from_secs(30),
    );
    assert_metric(
        &text,
        "walhook_changes_total{table=\"public.mishap\",operation=\"create\"}",
        1.0,
    );
    assert_metric(
        &text,
        "walhook_delivery_attempts_total{subscription=\"dead_end\",outcome=\"retry\"}",
        0.0,
    );
    let text = wait_for_metric(
        &http,
        "walhook_delivery_attempts_total{subscription=\"parked\",outcome=\"retry\"}",
        1.0,
        Duration::from_secs(30),
    );
    assert_metric(
        &text,
        "walhook_delivery_attempts_total{subscription=\"parked\",outcome=\"dead\"}",
        0.0,
    );
    assert_eq!(receiver.count(), 102, "100 requests, and 2 to /fail");

    // The backlog, as the sampler reads it from the outbox every few seconds.
    let text = wait_for_metric(
        &http,
        "walhook_outbox_pending{subscription=\"parked\"}",
        1.0,
        Duration::from_secs(15),
    );
    assert_metric(
        &text,
        "walhook_outbox_pending{subscription=\"counted\"}",
        0.0,
    );
    assert_metric(
        &text,
        "walhook_outbox_pending{subscription=\"dead_end\"}",
        0.0,
    );
    wait_for_metric(
        &http,
        "walhook_outbox_dead{subscription=\"dead_end\"}",
        1.0,
        Duration::from_secs(15),
    );
    let oldest = metric(
        &text,
        "walhook_outbox_oldest_pending_seconds{subscription=\"parked\"}",
    )
    .expect("oldest pending of parked");
    assert!(oldest > 0.0, "oldest pending {oldest}");

    // The slot, as the source reports it. Right after the slot moved on it may hold
    // nothing; a little WAL that walhook has not confirmed yet shows.
    wait_until(Duration::from_secs(20), "retained WAL above 0", || {
        db.sql("SELECT pg_logical_emit_message(false, 'test', 'some WAL')");
        let text = http.metrics();
        let retained = metric(&text, "walhook_slot_retained_wal_bytes").expect("retained WAL");
        retained > 0.0 || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    let lag = metric(&text, "walhook_replication_lag_bytes").expect("replication lag");
    assert!(lag >= 0.0, "lag {lag}");
    assert_metric(&text, "walhook_slot_retained_wal_over_limit", 0.0);
    assert_metric(
        &text,
        &format!(
            "walhook_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    assert_metric(
        &text,
        "walhook_config_reloads_total{result=\"applied\"}",
        0.0,
    );
    assert_metric(
        &text,
        "walhook_config_reloads_total{result=\"rejected\"}",
        0.0,
    );

    // Every settled delivery knows when it settled: retention counts from there.
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM walhook.delivery \
             WHERE status <> 'pending' AND settled_at IS NULL"
        ),
        "0"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery WHERE status <> 'pending'"),
        "101"
    );

    // A valid edit is applied; a broken one rejected, and the running config stays.
    let edited = text_with(
        &config,
        "retry_schedule = [\"1h\"]",
        "retry_schedule = [\"2h\"]",
    );
    std::fs::write(&config.path, edited).unwrap();
    wait_for_metric(
        &http,
        "walhook_config_reloads_total{result=\"applied\"}",
        1.0,
        Duration::from_secs(20),
    );
    let broken = text_with(
        &config,
        "retry_schedule = [\"2h\"]",
        "retry_schedule = \"soon\"",
    );
    std::fs::write(&config.path, broken).unwrap();
    let text = wait_for_metric(
        &http,
        "walhook_config_reloads_total{result=\"rejected\"}",
        1.0,
        Duration::from_secs(20),
    );
    assert_metric(
        &text,
        "walhook_config_reloads_total{result=\"applied\"}",
        1.0,
    );

    // Still delivering with the config that stayed.
    db.sql("INSERT INTO ledger VALUES (101, 0)");
    wait_for_metric(
        &http,
        "walhook_delivery_attempts_total{subscription=\"counted\",outcome=\"success\"}",
        101.0,
        Duration::from_secs(30),
    );
}

/// The config file's text with `from` replaced by `to` (which must be there).
fn text_with(config: &ConfigFile, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(&config.path).unwrap();
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    text.replacen(from, to, 1)
}

#[test]
fn readyz_is_ready_as_soon_as_the_daemon_captures_without_waiting_for_a_sample() {
    let db = TestDb::new(SCHEMA);
    let receiver = Subscriber::start();
    let config = config_file(&workload_config(&db, &receiver, ""));
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    // Right after "capturing": no sampler tick (every 2 s) has run since the migrations.
    let (status, body) = http.get("/readyz").unwrap();
    assert_eq!(status, 200, "{body}\nlog:\n{}", daemon.log_text());
}

#[test]
fn readyz_follows_postgres_going_away_and_coming_back_while_healthz_stays_200() {
    // A cluster of its own: stopping it must not disturb the other tests.
    let pg = EphemeralPostgres::start(&Options::default()).expect("a cluster of its own");
    let db = TestDb::in_cluster(&pg, SCHEMA);
    let receiver = Subscriber::start();
    let config = config_file(&workload_config(&db, &receiver, ""));
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    wait_until(Duration::from_secs(15), "/readyz answers 200", || {
        http.status("/readyz") == 200
    });
    assert_eq!(http.status("/healthz"), 200);

    pg.stop().expect("stop Postgres");
    let mut saw_healthz = 0;
    wait_until(Duration::from_secs(20), "/readyz answers 503", || {
        assert_eq!(
            http.status("/healthz"),
            200,
            "/healthz while Postgres is down"
        );
        saw_healthz += 1;
        http.status("/readyz") == 503
    });
    let (_, body) = http.get("/readyz").unwrap();
    assert!(body.contains("unready"), "{body}");
    assert_eq!(
        metric(&http.metrics(), "walhook_replication_connected"),
        Some(0.0)
    );
    // It stays unready while Postgres is down.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(http.status("/readyz"), 503);
        assert_eq!(http.status("/healthz"), 200);
    }

    pg.start_again().expect("start Postgres again");
    wait_until(Duration::from_secs(45), "/readyz answers 200 again", || {
        assert_eq!(http.status("/healthz"), 200, "/healthz after the restart");
        http.status("/readyz") == 200
    });
    assert_eq!(
        metric(&http.metrics(), "walhook_replication_connected"),
        Some(1.0)
    );
    // And it captures again.
    db.sql("INSERT INTO ledger VALUES (1, 0)");
    wait_until(Duration::from_secs(30), "the change is delivered", || {
        receiver.count() >= 1
    });
    assert!(saw_healthz > 0);
}

#[test]
fn a_slot_holding_more_wal_than_max_retained_wal_is_a_metric_and_a_warning() {
    let db = TestDb::new(SCHEMA);
    let receiver = Subscriber::start();
    let config = config_file(&workload_config(
        &db,
        &receiver,
        "max_retained_wal = \"1kB\"\n",
    ));
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    // A few kB of WAL: the slot's restart point moves on only now and then, so it holds
    // more than 1 kB behind it.
    db.sql("INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 200) g");
    let text = wait_for_metric(
        &http,
        "walhook_slot_retained_wal_over_limit",
        1.0,
        Duration::from_secs(20),
    );
    let retained = metric(&text, "walhook_slot_retained_wal_bytes").unwrap();
    assert!(retained > 1_000.0, "{retained}");
    wait_until(Duration::from_secs(10), "the warning in the log", || {
        daemon
            .log_text()
            .contains("more than source.max_retained_wal (1000 B)")
    });
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("more than source.max_retained_wal"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("the source's disk fills"),
        "the warning says why it matters: {line}"
    );
}

//! Graceful shutdown (SPEC §1 `run`, §2 `delivery.shutdown_timeout`): SIGTERM while
//! deliveries stream to a slow receiver, and while a receiver hangs for longer than the
//! shutdown timeout. walhook exits 0 within the timeout (plus a little), requests in flight
//! finish or go back to the queue, and a restart loses nothing.

use crate::support;
use support::{Sub, Toml};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{start_daemon, wait_until, ConfigFile, Daemon, TestDb};
use support::{Reply, Subscriber};

/// How long walhook may take beyond `shutdown_timeout` to stop: the capture checkpoint,
/// the last results, closing connections.
const MARGIN: Duration = Duration::from_secs(3);

/// `shutdown_timeout` of these tests.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// A config with one subscription `stream` on `url`; `extra` goes into the subscription.
fn config(db: &TestDb<'_>, url: &str, extra: &str) -> ConfigFile {
    Toml::new(db)
        .delivery("shutdown_timeout = \"2s\"")
        .table("ledger", "public.ledger")
        .subscription(Sub::new("stream", "ledger", url).with(extra))
        .write()
}

/// SIGTERM; asserts exit code 0 within `shutdown_timeout` + [`MARGIN`] and returns how long
/// it took.
fn terminate(daemon: &mut Daemon) -> Duration {
    let asked = Instant::now();
    daemon.signal("TERM");
    let code = daemon.wait(SHUTDOWN_TIMEOUT + MARGIN + Duration::from_secs(30));
    let took = asked.elapsed();
    let log = daemon.log_text();
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{log}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + MARGIN,
        "SIGTERM took {took:?}, more than shutdown_timeout {SHUTDOWN_TIMEOUT:?} + {MARGIN:?}; \
         log (tail):\n{}",
        &log[log.len().saturating_sub(4_000)..]
    );
    took
}

/// `(event_id, status, attempts, leased)` of every delivery.
fn deliveries(db: &TestDb<'_>) -> Vec<(String, String, i32, bool)> {
    support::rows::deliveries(db)
        .into_iter()
        .map(|d| (d.event_id, d.status, d.attempts, d.leased))
        .collect()
}

fn count_status(rows: &[(String, String, i32, bool)], status: &str) -> usize {
    rows.iter().filter(|r| r.1 == status).count()
}

/// Waits until `n` deliveries exist and all are delivered.
fn wait_all_delivered(db: &TestDb<'_>, daemon: &Daemon, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let rows = deliveries(db);
        if rows.len() == n && count_status(&rows, "delivered") == n {
            return;
        }
        if Instant::now() >= deadline {
            let log = daemon.log_text();
            panic!(
                "expected {n} delivered within {within:?}: {} rows, {} delivered, {} pending, \
                 {} dead; log (tail):\n{}",
                rows.len(),
                count_status(&rows, "delivered"),
                count_status(&rows, "pending"),
                count_status(&rows, "dead"),
                &log[log.len().saturating_sub(4_000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_during_a_stream_finishes_what_is_in_flight_and_a_restart_delivers_the_rest() {
    const EVENTS: usize = 400;
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(204).after(Duration::from_millis(300)));
    let config = config(&db, &receiver.url("/hooks"), "");
    let mut daemon = start_daemon(&config);

    db.sql(&format!(
        "INSERT INTO ledger SELECT g, 1 FROM generate_series(1, {EVENTS}) g"
    ));
    // A stream in full swing: many requests done, many more to go, some in flight.
    receiver.wait_for(60, Duration::from_secs(60));
    terminate(&mut daemon);
    let arrived_before_exit: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    let rows = deliveries(&db);
    assert_eq!(
        rows.len(),
        EVENTS,
        "every change was captured before the stop"
    );
    let leased: Vec<&String> = rows.iter().filter(|r| r.3).map(|r| &r.0).collect();
    assert!(
        leased.is_empty(),
        "deliveries left leased after a graceful stop (a restart would wait for the lease): \
         {leased:?}"
    );
    // Replies take 300 ms, far within shutdown_timeout: every request that went out
    // finished and its result was recorded before the exit.
    let delivered: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.1 == "delivered")
        .map(|r| r.0.clone())
        .collect();
    let unrecorded: Vec<&String> = arrived_before_exit.difference(&delivered).collect();
    assert!(
        unrecorded.is_empty(),
        "requests in flight at SIGTERM were not finished and recorded: {unrecorded:?}\nlog:\n{}",
        daemon.log_text()
    );
    assert!(
        delivered.len() < EVENTS,
        "SIGTERM came mid-stream, yet all {EVENTS} were delivered"
    );
    let pending_untouched = rows.iter().filter(|r| r.1 == "pending").all(|r| r.2 == 0);
    assert!(
        pending_untouched,
        "a pending delivery has an attempt: {rows:?}"
    );

    receiver.respond(|_| Reply::status(204));
    let daemon = start_daemon(&config);
    wait_all_delivered(&db, &daemon, EVENTS, Duration::from_secs(60));
    let received: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    let recorded: BTreeSet<String> = deliveries(&db).into_iter().map(|r| r.0).collect();
    assert_eq!(recorded.len(), EVENTS);
    let missing: Vec<&String> = recorded.difference(&received).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    let ids = receiver.all_event_ids();
    assert_eq!(
        ids.len(),
        EVENTS,
        "what finished before the stop is not sent again after the restart"
    );
}

#[test]
fn a_receiver_hanging_past_the_shutdown_timeout_does_not_hold_the_exit_and_its_deliveries_go_back()
{
    const EVENTS: usize = 10;
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    let receiver = Subscriber::start();
    // Longer than the request timeout, which is longer than shutdown_timeout.
    receiver.respond(|_| Reply::status(204).after(Duration::from_secs(120)));
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "timeout = \"60s\"\nmax_in_flight = 4",
    );
    let mut daemon = start_daemon(&config);

    db.sql(&format!(
        "INSERT INTO ledger SELECT g, 1 FROM generate_series(1, {EVENTS}) g"
    ));
    receiver.wait_for(4, Duration::from_secs(30));
    let took = terminate(&mut daemon);
    assert!(
        took >= SHUTDOWN_TIMEOUT - Duration::from_millis(200),
        "requests in flight get shutdown_timeout ({SHUTDOWN_TIMEOUT:?}) to finish, \
         yet walhook exited after {took:?}"
    );
    let rows = deliveries(&db);
    assert_eq!(rows.len(), EVENTS);
    for (event, status, attempts, leased) in &rows {
        assert_eq!(status, "pending", "{event}");
        assert!(!leased, "{event} is still leased after the exit: {rows:?}");
        assert_eq!(*attempts, 0, "{event}: a request cut short is no attempt");
    }
    let log = daemon.log_text();
    assert!(
        log.contains("requests still in flight are given back"),
        "the log says what happened:\n{log}"
    );

    // The leases (60 s + 10 s) would hold them back for over a minute; released, they go
    // at once.
    receiver.respond(|_| Reply::status(204));
    let restarted = Instant::now();
    let daemon = start_daemon(&config);
    wait_all_delivered(&db, &daemon, EVENTS, Duration::from_secs(15));
    eprintln!(
        "restart delivered everything {:?} after the start",
        restarted.elapsed()
    );
    let received: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    assert_eq!(received.len(), EVENTS);
}

/// Stops a cluster's postmaster (SIGSTOP) so that new connections hang: the kernel accepts
/// them, but nobody answers. Running backends carry on. Resumes it on drop, pass or fail.
struct FrozenPostmaster(String);

impl FrozenPostmaster {
    fn freeze(pg: &walhook::ephemeral::EphemeralPostgres) -> FrozenPostmaster {
        let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
        let pid = pid_file.lines().next().unwrap().trim().to_owned();
        kill("STOP", &pid);
        FrozenPostmaster(pid)
    }
}

impl Drop for FrozenPostmaster {
    fn drop(&mut self) {
        kill("CONT", &self.0);
    }
}

fn kill(signal: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn sigterm_while_capture_reconnects_to_a_server_that_does_not_answer_exits_at_once() {
    // Its own cluster: its postmaster is frozen for a while.
    let pg = support::private_cluster();
    let db = TestDb::in_cluster(
        &pg,
        "CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);",
    );
    let receiver = Subscriber::start();
    let config = config(&db, &receiver.url("/hooks"), "");
    let mut daemon = start_daemon(&config);
    let walsender =
        db.sql("SELECT active_pid FROM pg_replication_slots WHERE active_pid IS NOT NULL");

    let frozen = FrozenPostmaster::freeze(&pg);
    // The replication connection drops; connecting again hangs (no connect_timeout).
    kill("TERM", &walsender);
    wait_until(Duration::from_secs(10), "capture reconnects", || {
        daemon.log_text().contains("reconnecting in")
    });
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut daemon);
    drop(frozen);
}

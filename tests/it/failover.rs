//! Standby failover: a second `walhook run` on the same config waits while the first is
//! active, takes over within 10 seconds of the first one dying, and resumes from the
//! checkpoint. Nothing delivered before the handover is delivered again; only what was in
//! flight at the kill may arrive twice (at least once), and key order holds across it. Real
//! processes, real Postgres, a real receiver.

use crate::support;
use support::{Sub, Toml};

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{start_daemon, wait_until, ConfigFile, Daemon, Reply, Seen, Subscriber, TestDb};

/// Requests in flight at most, for the subscription.
const MAX_IN_FLIGHT: usize = 8;

/// Rows the stream updates in turn. With `ordering = "key"` (the default) a row has at most
/// one delivery sent and not yet settled, so with `MAX_IN_FLIGHT` this bounds what the
/// handover may send twice, exactly: a result that came back but was not yet recorded when
/// the process died counts too.
const KEYS: usize = 6;

/// The promise: a standby takes over within this long after the active process dies.
const TAKEOVER: Duration = Duration::from_secs(10);

/// Rows 1–6 at `n = 0`; `stream(count)` updates them in turn, `n = n + 1`, one row per
/// transaction, about 50 a second, so `values.n` says where an event stands in its row's
/// commit order.
const LEDGER: &str = "
CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 6) g;
CREATE PROCEDURE stream(count int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 0..count - 1 LOOP
    UPDATE ledger SET n = n + 1 WHERE id = i % 6 + 1;
    COMMIT;
    PERFORM pg_sleep(0.02);
  END LOOP;
END $$;
";

fn config(db: &TestDb<'_>, url: &str) -> ConfigFile {
    Toml::new(db)
        .table("ledger", "public.ledger")
        .subscription(Sub::new("ledger", "ledger", url).with(&format!(
            "timeout = \"2s\"\nmax_in_flight = {MAX_IN_FLIGHT}\n\
             retry_schedule = [\"200ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]"
        )))
        .write()
}

/// Starts a second daemon on the same config and waits until it says it is a standby.
fn start_standby(config: &ConfigFile) -> Daemon {
    let mut daemon = Daemon::start(config);
    wait_until(
        Duration::from_secs(30),
        "the second walhook is a standby",
        || {
            assert!(
                daemon.running(),
                "the standby exited; log:\n{}",
                daemon.log_text()
            );
            daemon.log_text().contains("standby: another walhook holds")
        },
    );
    daemon
}

/// `event_id → status` of `walhook.deliveries`.
fn deliveries(db: &TestDb<'_>) -> BTreeMap<String, String> {
    support::rows::deliveries(db)
        .into_iter()
        .map(|d| (d.event_id, d.status))
        .collect()
}

/// The events of a request body: one object, or the elements of a batch.
fn events(seen: &Seen) -> Vec<Value> {
    match seen.json() {
        Value::Array(events) => events,
        event => vec![event],
    }
}

/// `(row id, n)` of an event.
fn key_and_n(event: &Value) -> (i64, i64) {
    let key = event["key"]["id"].as_i64();
    let n = event["values"]["n"].as_i64();
    match (key, n) {
        (Some(key), Some(n)) => (key, n),
        _ => panic!("no key.id or values.n: {event}"),
    }
}

/// Polls `daemon`'s log until it contains `needle`; how long that took from `since`.
fn log_line_after(daemon: &mut Daemon, needle: &str, since: Instant) -> Duration {
    loop {
        if daemon.log_text().contains(needle) {
            return since.elapsed();
        }
        assert!(
            daemon.running(),
            "walhook exited; log:\n{}",
            daemon.log_text()
        );
        assert!(
            since.elapsed() < TAKEOVER * 3,
            "{needle:?} not logged; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_standby_takes_over_within_10_seconds_of_a_kill_and_sends_nothing_delivered_again() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    // A little latency per request, so that some are in flight at the kill.
    receiver.respond(|_| Reply::status(204).after(Duration::from_millis(20)));
    let config = config(&db, &receiver.url("/hooks"));
    let mut first = start_daemon(&config);
    let mut second = start_standby(&config);
    assert!(
        !second.log_text().contains("http server listening"),
        "a standby serves no HTTP; log:\n{}",
        second.log_text()
    );

    const ROWS: usize = 800;
    let name = db.name.clone();
    let stream = std::thread::spawn(move || {
        support::cluster()
            .psql(&name, &format!("CALL stream({ROWS})"))
            .unwrap();
    });
    receiver.wait_for(150, Duration::from_secs(60));

    // Everything recorded as delivered by now must never be sent again.
    let before_kill = db.sql("SELECT clock_timestamp()");
    let killed = Instant::now();
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    // Each row's `n` now: an event with a higher `n` was committed after the kill.
    let n_at_kill: BTreeMap<i64, i64> = db
        .sql("SELECT id, n FROM ledger")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, n) = l.split_once('|').unwrap();
            (id.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    // For the record (the standby may already be clearing them): what the killed process
    // had claimed and not settled.
    let leased_at_kill = db.sql(
        "SELECT count(*) FROM walhook.delivery \
         WHERE status = 'pending' AND leased_until IS NOT NULL",
    );
    let took_over = log_line_after(&mut second, "active: took over", killed);

    stream.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let recorded = loop {
        let rows = deliveries(&db);
        if rows.len() == ROWS && rows.values().all(|s| s == "delivered") {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} deliveries, {} delivered; log of the new active (tail):\n{}",
            rows.len(),
            rows.values().filter(|s| *s == "delivered").count(),
            {
                let log = second.log_text();
                log[log.len().saturating_sub(6_000)..].to_owned()
            }
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        db.sql("SELECT count(*) || ' ' || count(DISTINCT event_id) FROM walhook.event"),
        format!("{ROWS} {ROWS}"),
        "every change captured exactly once through the handover"
    );

    let requests = receiver.requests();
    // Kill → the first delivery of a change committed after the kill: the new active
    // captures and delivers.
    let flowing = requests
        .iter()
        .filter(|r| r.at > killed)
        .find(|r| {
            events(r).iter().any(|e| {
                let (key, n) = key_and_n(e);
                n > n_at_kill[&key]
            })
        })
        .map(|r| r.at - killed)
        .expect("a change committed after the kill was delivered");
    eprintln!(
        "takeover: 'active' logged {took_over:?} after the kill; the first change committed \
         after the kill delivered {flowing:?} after it"
    );
    assert!(took_over < TAKEOVER, "took over after {took_over:?}");
    assert!(flowing < TAKEOVER, "events flowed again after {flowing:?}");

    // Every event arrived, and nothing else.
    let mut arrivals: BTreeMap<String, usize> = BTreeMap::new();
    for request in &requests {
        for event in events(request) {
            *arrivals
                .entry(event["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let received: BTreeSet<&String> = arrivals.keys().collect();
    let expected: BTreeSet<&String> = recorded.keys().collect();
    assert_eq!(received, expected, "every recorded event arrived, no other");
    // Each row's events first arrived in commit order, across the handover.
    let mut seen = BTreeSet::new();
    let mut last_n: BTreeMap<i64, i64> = BTreeMap::new();
    for event in requests.iter().flat_map(events) {
        if seen.insert(event["id"].as_str().unwrap().to_owned()) {
            let (key, n) = key_and_n(&event);
            let last = last_n.entry(key).or_insert(0);
            assert_eq!(
                n,
                *last + 1,
                "row {key}: first arrivals out of commit order"
            );
            *last = n;
        }
    }

    // Recorded as delivered before the kill: never sent again.
    let delivered_before: BTreeSet<String> = db
        .sql(&format!(
            "SELECT event_id FROM walhook.deliveries WHERE delivered_at < '{before_kill}'"
        ))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        delivered_before.len() >= 100,
        "{} delivered before the kill",
        delivered_before.len()
    );
    let again: Vec<String> = requests
        .iter()
        .filter(|r| r.at > killed)
        .flat_map(events)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .filter(|id| delivered_before.contains(id))
        .collect();
    assert!(
        again.is_empty(),
        "delivered before the kill and sent again after it: {again:?}"
    );
    // Only what was in flight at the kill arrives twice.
    let twice: Vec<(&String, &usize)> = arrivals.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} events arrived twice ({leased_at_kill} deliveries leased right after the kill): \
         {twice:?}",
        twice.len()
    );
    assert!(
        twice.iter().all(|(_, n)| **n == 2),
        "an event arrived more than twice: {twice:?}"
    );
    assert!(
        twice.len() <= KEYS.min(MAX_IN_FLIGHT),
        "{} events arrived twice; at most {} were in flight: {twice:?}",
        twice.len(),
        KEYS.min(MAX_IN_FLIGHT)
    );

    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(30)), Some(0));
}

#[test]
fn sigterm_ends_a_standby_at_once_with_exit_code_0() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = config(&db, &receiver.url("/hooks"));
    let mut first = start_daemon(&config);
    let mut second = start_standby(&config);
    // SIGHUP (a config reload meant for the active one) does not end a standby.
    second.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(second.running(), "SIGHUP ended the standby");

    let asked = Instant::now();
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(5)), Some(0));
    eprintln!("the standby exited {:?} after SIGTERM", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert!(first.running(), "the active one carries on");
    db.sql("INSERT INTO ledger VALUES (101, 0)");
    receiver.wait_for(1, Duration::from_secs(30));
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(30)), Some(0));
}

#[test]
fn an_active_walhook_that_loses_its_lock_connection_to_a_standby_stops_and_the_standby_takes_over()
{
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = config(&db, &receiver.url("/hooks"));
    let mut first = start_daemon(&config);
    let mut second = start_standby(&config);

    let holder = db.sql(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
    );
    assert!(!holder.is_empty() && !holder.contains('\n'), "{holder:?}");
    let terminated = Instant::now();
    db.sql(&format!("SELECT pg_terminate_backend({holder})"));
    assert_eq!(
        first.wait(Duration::from_secs(15)),
        Some(1),
        "the active one stops with an error"
    );
    let stopped = terminated.elapsed();
    let log = first.log_text();
    assert!(
        log.contains("lost the active lock") && log.contains("another walhook holds it now"),
        "{log}"
    );
    let took_over = log_line_after(&mut second, "active: took over", terminated);
    eprintln!("lock connection terminated: the active one exited after {stopped:?}, the standby took over after {took_over:?}");
    // It first gives a waiting standby the chance to take the lock (2.5 s).
    assert!(stopped < Duration::from_secs(6), "{stopped:?}");

    db.sql("INSERT INTO ledger VALUES (107, 0)");
    let seen = receiver.wait_for(1, Duration::from_secs(30));
    assert_eq!(events(&seen[0])[0]["key"]["id"], 107);
}

/// The fence under the lock: a writer commits only from the checkpoint it last saw, so a
/// process that was still finishing a commit when another took over cannot make the new one
/// capture the same transactions twice.
#[tokio::test]
async fn an_outbox_writer_refuses_to_commit_over_a_checkpoint_another_process_moved() {
    use support::outbox::ledger_event as event;
    use walhook::capture::Commit;
    use walhook::outbox::writer::{OutboxError, OutboxWriter};
    use walhook::pg::conninfo::ConnInfo;
    use walhook::pg::{self, Lsn};

    let db = TestDb::new("");
    let info = ConnInfo::parse(&db.url).unwrap();
    let client = pg::connect_sql(&info).await.unwrap();
    walhook::outbox::migrate::migrate(&client, "walhook")
        .await
        .unwrap();
    let commit = |lsn: &str| Commit {
        lsn: lsn.parse::<Lsn>().unwrap(),
        time: 0,
        xid: 1,
    };
    let mut old = OutboxWriter::new(pg::connect_sql(&info).await.unwrap(), "walhook", "s")
        .await
        .unwrap();
    let mut new = OutboxWriter::new(pg::connect_sql(&info).await.unwrap(), "walhook", "s")
        .await
        .unwrap();
    assert_eq!(new.checkpoint(), None);

    old.add(event(1), commit("0/100"));
    old.commit("0/100".parse().unwrap()).await.unwrap();
    new.add(event(1), commit("0/100"));
    new.add(event(2), commit("0/200"));
    let refused = new.commit("0/200".parse().unwrap()).await;
    assert!(
        matches!(refused, Err(OutboxError::CheckpointMoved { .. })),
        "{refused:?}"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.event"), "1");
    assert_eq!(
        db.sql("SELECT commit_lsn FROM walhook.checkpoint WHERE slot = 's'"),
        "0/100"
    );

    // A writer that starts from the checkpoint as it is carries on.
    let mut next = OutboxWriter::new(pg::connect_sql(&info).await.unwrap(), "walhook", "s")
        .await
        .unwrap();
    assert_eq!(next.checkpoint(), Some("0/100".parse().unwrap()));
    next.add(event(2), commit("0/200"));
    next.commit("0/200".parse().unwrap()).await.unwrap();
    assert_eq!(db.sql("SELECT count(*) FROM walhook.event"), "2");
}

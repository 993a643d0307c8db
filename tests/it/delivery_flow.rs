//! Delivery user stories end to end: row changes in Postgres → `walhook run` → a
//! programmable receiver. A receiver that goes away and comes back, a daemon killed in the
//! middle of delivering, a rate limit, batches, GET pings, the in-flight cap, key order
//! around a failing event, retries on their own schedule, and a batch that forms while the
//! receiver asks for a pause (SPEC §4).
//!
//! Each test has a table `ledger (id, n)` where `n` counts the updates of a row, so the
//! body's `values.n` says where an event stands in its key's commit order.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::rows::{deliveries, Delivery};
use support::{start_daemon, ConfigFile, Daemon, Sub, TestDb, Toml};
use support::{verify, Reply, Seen, Subscriber};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Rows 1–5, each at `n = 0`.
const LEDGER: &str = "
CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 5) g;
";

/// A config with one subscription `flow` on `url`; `extra` goes into the subscription.
fn config(db: &TestDb<'_>, url: &str, extra: &str) -> ConfigFile {
    Toml::new(db)
        .table("ledger", "public.ledger")
        .subscription(Sub::new("flow", "ledger", url).secret(SECRET).with(extra))
        .write()
}

/// Waits until `walhook.deliveries` holds `n` rows, all delivered; returns them. The failure
/// message counts them by status and ends with the daemon's log.
fn wait_all_delivered(
    db: &TestDb<'_>,
    daemon: &Daemon,
    n: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let rows = deliveries(db);
        if rows.len() == n && rows.iter().all(|d| d.status == "delivered") {
            return rows;
        }
        if Instant::now() >= deadline {
            let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
            for d in &rows {
                *by_status.entry(d.status.as_str()).or_default() += 1;
            }
            let log = daemon.log_text();
            panic!(
                "expected {n} delivered within {within:?}; {} deliveries: {by_status:?}\n\
                 log (tail):\n{}",
                rows.len(),
                &log[log.len().saturating_sub(6_000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(key id, n)` of an event object.
fn key_and_n(event: &Value) -> (i64, i64) {
    let key = event["key"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no key.id: {event}"));
    let n = event["values"]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("no values.n: {event}"));
    (key, n)
}

/// The events of a request body: one object, or the elements of a batch.
fn events(seen: &Seen) -> Vec<Value> {
    match seen.json() {
        Value::Array(events) => events,
        event => vec![event],
    }
}

/// Each event id with its `(key, n)`, at its first arrival, in arrival order.
fn first_arrivals(requests: &[Seen]) -> Vec<(String, (i64, i64))> {
    let mut seen = BTreeSet::new();
    let mut first = Vec::new();
    for request in requests {
        for event in events(request) {
            let id = event["id"].as_str().unwrap().to_owned();
            if seen.insert(id.clone()) {
                first.push((id, key_and_n(&event)));
            }
        }
    }
    first
}

/// Asserts that for every key the first arrivals come in commit order (`n` rising by one
/// from `1`), and returns each key's count.
fn assert_key_order(first: &[(String, (i64, i64))]) -> BTreeMap<i64, usize> {
    let mut by_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (_, (key, n)) in first {
        by_key.entry(*key).or_default().push(*n);
    }
    for (key, ns) in &by_key {
        let expected: Vec<i64> = (1..=ns.len() as i64).collect();
        assert_eq!(
            ns, &expected,
            "key {key}: first arrivals out of commit order"
        );
    }
    by_key.into_iter().map(|(k, ns)| (k, ns.len())).collect()
}

#[test]
fn a_receiver_that_is_down_for_a_while_gets_every_event_in_key_order_once_it_is_back() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"retry_schedule = ["200ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s"]"#,
    );
    let daemon = start_daemon(&config);

    receiver.stop();
    let down = Instant::now();
    // 3 keys × 20 updates, each its own transaction, keys interleaved.
    db.sql(
        "DO $$ BEGIN
           FOR i IN 1..20 LOOP
             FOR k IN 1..3 LOOP
               UPDATE ledger SET n = n + 1 WHERE id = k;
               COMMIT;
             END LOOP;
           END LOOP;
         END $$",
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    assert_eq!(receiver.count(), 0, "nothing gets through while it is down");
    receiver.restart();

    let rows = wait_all_delivered(&db, &daemon, 60, Duration::from_secs(90));
    let first = first_arrivals(&receiver.requests());
    let received: BTreeSet<&str> = first.iter().map(|(id, _)| id.as_str()).collect();
    let recorded: BTreeSet<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(received, recorded, "every event arrived");
    let counts = assert_key_order(&first);
    assert_eq!(counts, BTreeMap::from([(1, 20), (2, 20), (3, 20)]));
    // Two failed attempts each at most: the six failures of the first two rounds open the
    // breaker, and its probes, failed or not, are not counted.
    let attempts: Vec<i32> = rows.iter().map(|d| d.attempts).collect();
    assert!(
        attempts.iter().all(|&n| (1..=3).contains(&n)),
        "the breaker kept the attempts: {attempts:?}"
    );
    assert!(
        daemon.log_text().contains("circuit breaker open"),
        "the failures in a row opened the breaker; log:\n{}",
        daemon.log_text()
    );
    for request in receiver.requests() {
        verify(&request, SECRET).unwrap();
    }
}

#[test]
fn a_daemon_killed_while_delivering_delivers_everything_after_a_restart() {
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(204).after(Duration::from_millis(50)));
    // A short request timeout keeps the leases of the killed process short (timeout + 10 s).
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"timeout = "1s"
max_in_flight = 4
retry_schedule = ["200ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s"]"#,
    );
    let mut daemon = start_daemon(&config);

    db.sql("INSERT INTO ledger SELECT g, 1 FROM generate_series(1, 300) g");
    receiver.wait_for(60, Duration::from_secs(60));
    daemon.signal("KILL");
    daemon.wait(Duration::from_secs(10));
    let at_kill = receiver.count();
    let delivered_at_kill = deliveries(&db)
        .iter()
        .filter(|d| d.status == "delivered")
        .count();
    assert!(
        at_kill < 300 && delivered_at_kill < 300,
        "killed mid-delivery: {at_kill} requests, {delivered_at_kill} recorded delivered"
    );

    let daemon = start_daemon(&config);
    let rows = wait_all_delivered(&db, &daemon, 300, Duration::from_secs(120));
    let ids = receiver.all_event_ids();
    let received: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let recorded: BTreeSet<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(recorded.len(), 300);
    let missing: Vec<&&str> = recorded.difference(&received).collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived (at least once is the promise): {missing:?}",
        missing.len()
    );
    assert_eq!(received, recorded, "nothing but the captured events");
    eprintln!(
        "killed after {at_kill} requests; {} requests for 300 events ({} duplicates)",
        ids.len(),
        ids.len() - 300
    );
}

#[test]
fn a_rate_limit_of_15_per_second_with_a_burst_of_20_is_never_exceeded() {
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    let receiver = Subscriber::start();
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "rate_limit = { per_second = 15, burst = 20 }",
    );
    let daemon = start_daemon(&config);

    db.sql("INSERT INTO ledger SELECT g, 1 FROM generate_series(1, 200) g");
    let requests = receiver.wait_for(200, Duration::from_secs(90));
    let t0 = requests[0].at;
    for (i, request) in requests.iter().enumerate() {
        let elapsed = (request.at - t0).as_secs_f64();
        let allowed = 20.0 + 15.0 * elapsed + 1.0;
        assert!(
            (i + 1) as f64 <= allowed,
            "{} requests by {elapsed:.3} s after the first: more than 20 + 15/s allows",
            i + 1
        );
    }
    let span = requests[199].at - t0;
    assert!(
        span < Duration::from_secs(30),
        "the limit paces, it does not stall: 200 requests took {span:?}"
    );
    let rows = wait_all_delivered(&db, &daemon, 200, Duration::from_secs(30));
    let received: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    let recorded: BTreeSet<String> = rows.into_iter().map(|d| d.event_id).collect();
    assert_eq!(received, recorded, "all 200 arrive");
}

#[test]
fn batches_carry_arrays_in_order_and_a_failed_batch_is_retried_whole_under_its_id() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![Reply::status(500), Reply::status(204)]);
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"batch = { max_events = 10, max_wait = "200ms" }
retry_schedule = ["300ms", "1s", "1s"]"#,
    );
    let daemon = start_daemon(&config);

    // 25 events in one transaction: keys 1–5 in turn, five rounds.
    let updates: String = (1..=5)
        .flat_map(|_| (1..=5).map(|k| format!("UPDATE ledger SET n = n + 1 WHERE id = {k};")))
        .collect();
    db.sql(&updates);
    let rows = wait_all_delivered(&db, &daemon, 25, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let requests = receiver.requests();
    let event_ids: BTreeSet<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();

    for request in &requests {
        assert_eq!(request.method, "POST");
        verify(request, SECRET).unwrap();
        assert!(
            request.json().is_array(),
            "a batch is a JSON array: {}",
            request.text()
        );
        let n = request.event_ids().len();
        assert!((1..=10).contains(&n), "{n} events in one batch");
        let id = request.header("webhook-id").unwrap();
        assert!(
            id.starts_with("bat_") && !event_ids.contains(id),
            "webhook-id {id:?} is a batch id, not an event id"
        );
        assert_eq!(request.header("idempotency-key"), Some(id));
    }
    // The first batch failed and went again, whole and under the same id; then the rest.
    assert_eq!(
        requests
            .iter()
            .map(|r| r.event_ids().len())
            .collect::<Vec<_>>(),
        vec![10, 10, 10, 5],
        "requests: {:?}",
        requests.iter().map(Seen::event_ids).collect::<Vec<_>>()
    );
    let (failed, retried) = (&requests[0], &requests[1]);
    assert_eq!(failed.header("webhook-id"), retried.header("webhook-id"));
    assert_eq!(failed.event_ids(), retried.event_ids());
    assert_eq!(failed.body, retried.body, "the same bytes again");
    let batch_ids: BTreeSet<&str> = requests
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(batch_ids.len(), 3, "each new batch has an id of its own");

    // Every event once (after the retry), in commit order.
    let first = first_arrivals(&requests);
    let in_commit_order: Vec<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(
        first.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        in_commit_order
    );
    let expected: Vec<(i64, i64)> = (1..=5).flat_map(|n| (1..=5).map(move |k| (k, n))).collect();
    assert_eq!(
        first.iter().map(|(_, kn)| *kn).collect::<Vec<_>>(),
        expected
    );
    let attempts: Vec<i32> = rows.iter().map(|d| d.attempts).collect();
    let mut expected_attempts = vec![2; 10];
    expected_attempts.extend([1; 15]);
    assert_eq!(attempts, expected_attempts);
}

#[test]
fn get_sends_one_bodiless_signed_ping_per_event_and_ignores_batch() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = config(
        &db,
        &receiver.url("/ping?source=walhook"),
        r#"method = "GET"
batch = { max_events = 10, max_wait = "200ms" }"#,
    );
    let daemon = start_daemon(&config);

    db.sql(
        "UPDATE ledger SET n = n + 1 WHERE id = 1; UPDATE ledger SET n = n + 1 WHERE id = 2; \
         UPDATE ledger SET n = n + 1 WHERE id = 1;",
    );
    let rows = wait_all_delivered(&db, &daemon, 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "one request per event, no batch");
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/ping?source=walhook");
        assert!(request.body.is_empty(), "no body: {:?}", request.text());
        verify(request, SECRET).expect("signed over the empty body");
        assert_eq!(
            request.header("idempotency-key"),
            request.header("webhook-id")
        );
    }
    let mut ids: Vec<&str> = requests
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    let mut recorded: Vec<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();
    // Key 1's two events in commit order; key 2's may go beside them.
    let key1 = [recorded[0], recorded[2]];
    let arrived_key1: Vec<&str> = ids.iter().copied().filter(|id| key1.contains(id)).collect();
    assert_eq!(arrived_key1, key1, "key order holds for GET too");
    ids.sort_unstable();
    recorded.sort_unstable();
    assert_eq!(ids, recorded, "webhook-id is the event id");
}

#[test]
fn with_ordering_none_max_in_flight_caps_concurrent_requests_even_for_one_key() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(204).after(Duration::from_millis(200)));
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "ordering = \"none\"\nmax_in_flight = 2",
    );
    let daemon = start_daemon(&config);

    // Ten events of one key: with ordering = "none" they need not wait for each other.
    db.sql(&"UPDATE ledger SET n = n + 1 WHERE id = 1;".repeat(10));
    let rows = wait_all_delivered(&db, &daemon, 10, Duration::from_secs(60));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 10);
    assert_eq!(
        receiver.max_concurrent(),
        2,
        "never more than max_in_flight at once, and the cap is used"
    );
    let received: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    let recorded: BTreeSet<String> = rows.into_iter().map(|d| d.event_id).collect();
    assert_eq!(received, recorded);
}

#[test]
fn delivery_max_in_flight_applies_on_reload_without_a_restart() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(204).after(Duration::from_millis(300)));
    let config = config(
        &db,
        &receiver.url("/hooks"),
        "ordering = \"none\"\nmax_in_flight = 8",
    );
    let capped = |n: usize| {
        let text = std::fs::read_to_string(&config.path).unwrap();
        let text = match text.find("max_in_flight = 1\n") {
            Some(_) => text.replacen("max_in_flight = 1\n", &format!("max_in_flight = {n}\n"), 1),
            None => text.replacen(
                "[delivery]\n",
                &format!("[delivery]\nmax_in_flight = {n}\n"),
                1,
            ),
        };
        std::fs::write(&config.path, text).unwrap();
    };
    capped(1);
    let daemon = start_daemon(&config);
    db.sql(&"UPDATE ledger SET n = n + 1 WHERE id = 1;".repeat(6));
    wait_all_delivered(&db, &daemon, 6, Duration::from_secs(60));
    assert_eq!(
        receiver.max_concurrent(),
        1,
        "delivery.max_in_flight = 1 at start"
    );

    capped(4);
    daemon.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon.log_text().contains("config reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    db.sql(&"UPDATE ledger SET n = n + 1 WHERE id = 1;".repeat(12));
    wait_all_delivered(&db, &daemon, 18, Duration::from_secs(60));
    assert_eq!(
        receiver.max_concurrent(),
        4,
        "the reloaded delivery.max_in_flight = 4 is used, and not exceeded\nlog:\n{}",
        daemon.log_text()
    );
}

#[test]
fn a_receiver_echoing_credentials_and_redirecting_with_them_leaks_none_into_the_log_or_api() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    receiver.respond(|seen| {
        Reply::status(302)
            .header(
                "location",
                &format!("http://elsewhere.example{}", seen.path),
            )
            .body(format!(
                "echo {} {:?}",
                seen.header("authorization").unwrap_or("-"),
                seen.header("x-tenant-key")
            ))
    });
    let url = format!("{}?token=url-token-5678", receiver.url("/hooks"));
    let config = config(
        &db,
        &url,
        "auth = { type = \"bearer\", token = \"bearer-echo-1234\" }\n\
         headers = { \"X-Tenant-Key\" = \"tenant-echo-5678\" }\n\
         retry_schedule = [\"1h\"]",
    );
    let daemon = start_daemon(&config);
    db.sql("UPDATE ledger SET n = n + 1 WHERE id = 1");
    receiver.wait_for(1, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    let last_error = loop {
        let row = db.sql("SELECT coalesce(last_error, '') FROM walhook.deliveries");
        if !row.trim().is_empty() {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "no last_error:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(last_error.contains("token=***"), "{last_error}");
    let excerpt = db.sql("SELECT response_excerpt FROM walhook.attempts");
    assert!(excerpt.contains("echo Bearer ***"), "{excerpt}");
    let listed = support::run_walhook(&config, &["deliveries", "--json"]);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    assert!(listed.stdout.contains("token=***"), "{}", listed.stdout);
    let (_, api) = support::http::Http::of(&daemon)
        .get("/api/v1/deliveries")
        .unwrap();
    for (what, text) in [
        ("last_error", &last_error),
        ("response_excerpt", &excerpt),
        ("walhook deliveries", &listed.stdout),
        ("the API", &api),
        ("the log", &daemon.log_text()),
    ] {
        for secret in ["bearer-echo-1234", "tenant-echo-5678", "url-token-5678"] {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
}

#[test]
fn a_failing_event_holds_back_only_its_own_key() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    // Key 1's first event fails twice, then succeeds; everything else succeeds.
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = failures.clone();
    receiver.respond(move |seen| {
        let (key, n) = key_and_n(&seen.json());
        if (key, n) == (1, 1) && counted.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::status(500)
        } else {
            Reply::status(204)
        }
    });
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"retry_schedule = ["1s", "1s", "1s"]"#,
    );
    let daemon = start_daemon(&config);

    // Commit order: A1 B1 A2 B2 A3 B3 B4 B5 (A = key 1, B = key 2), each its own transaction.
    db.sql(
        "DO $$ BEGIN
           FOR i IN 1..5 LOOP
             IF i <= 3 THEN UPDATE ledger SET n = n + 1 WHERE id = 1; COMMIT; END IF;
             UPDATE ledger SET n = n + 1 WHERE id = 2; COMMIT;
           END LOOP;
         END $$",
    );
    let rows = wait_all_delivered(&db, &daemon, 8, Duration::from_secs(60));
    let requests = receiver.requests();
    let arrivals: Vec<(i64, i64)> = requests.iter().map(|r| key_and_n(&r.json())).collect();
    let a: Vec<i64> = arrivals
        .iter()
        .filter(|(k, _)| *k == 1)
        .map(|(_, n)| *n)
        .collect();
    let b: Vec<i64> = arrivals
        .iter()
        .filter(|(k, _)| *k == 2)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        a,
        vec![1, 1, 1, 2, 3],
        "A1 twice failed then delivered, then A2 and A3: {arrivals:?}"
    );
    assert_eq!(
        b,
        vec![1, 2, 3, 4, 5],
        "B in order, once each: {arrivals:?}"
    );
    let index_of = |kn: (i64, i64)| arrivals.iter().position(|x| *x == kn).unwrap();
    let last_b = index_of((2, 5));
    let first_a2 = index_of((1, 2));
    assert!(
        last_b < first_a2,
        "B is not held back by A's failing event: {arrivals:?}"
    );
    let attempts: HashMap<&str, i32> = rows
        .iter()
        .map(|d| (d.event_id.as_str(), d.attempts))
        .collect();
    let a1 = requests
        .iter()
        .find(|r| key_and_n(&r.json()) == (1, 1))
        .unwrap()
        .event_ids()
        .remove(0);
    assert_eq!(attempts[a1.as_str()], 3);
    assert_eq!(attempts.values().filter(|&&n| n == 1).count(), 7);
}

#[test]
fn each_failed_event_is_retried_on_its_own_schedule_not_at_the_next_poll() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    // Every event's first attempt fails; its retry succeeds.
    let tries: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let counted = tries.clone();
    receiver.respond(move |seen| {
        let id = seen.header("webhook-id").unwrap().to_owned();
        let mut tries = counted.lock().unwrap();
        let n = tries.entry(id).or_default();
        *n += 1;
        Reply::status(if *n == 1 { 500 } else { 204 })
    });
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"retry_schedule = ["300ms"]"#,
    );
    let daemon = start_daemon(&config);

    // Four keys (fewer than the five failures in a row that open the breaker), one
    // transaction: four first attempts together, four retries each 300 ms ± 20 % later.
    db.sql("UPDATE ledger SET n = n + 1 WHERE id IN (1, 2, 3, 4)");
    wait_all_delivered(&db, &daemon, 4, Duration::from_secs(60));
    let mut first: HashMap<String, Instant> = HashMap::new();
    let mut gaps = Vec::new();
    for request in receiver.requests() {
        let id = request.header("webhook-id").unwrap().to_owned();
        match first.get(&id) {
            None => {
                first.insert(id, request.at);
            }
            Some(at) => gaps.push(request.at - *at),
        }
    }
    assert_eq!(gaps.len(), 4, "one retry each");
    for gap in &gaps {
        // 240–360 ms; the upper bound leaves room for a busy machine, not for a 1 s poll.
        assert!(
            *gap >= Duration::from_millis(200) && *gap <= Duration::from_millis(860),
            "retries after {gaps:?}: each is due 300 ms ± 20 % after its failure"
        );
    }
}

#[test]
fn a_batch_forming_while_the_receiver_asks_to_slow_down_never_carries_an_event_twice() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    // The first batch is answered 429 after a while, asking for a 14 s pause; the rest 204.
    receiver.respond_with_sequence(vec![
        Reply::status(429)
            .header("Retry-After", "14")
            .after(Duration::from_millis(700)),
        Reply::status(204),
    ]);
    // Leases of the batch that forms meanwhile: timeout + max_wait + 10 s = 12.5 s, shorter
    // than the pause.
    let config = config(
        &db,
        &receiver.url("/hooks"),
        r#"timeout = "1s"
batch = { max_events = 5, max_wait = "1500ms" }
retry_schedule = ["1s"]"#,
    );
    let daemon = start_daemon(&config);

    // Batch A: five events, full at once.
    db.sql("UPDATE ledger SET n = n + 1");
    receiver.wait_for(1, Duration::from_secs(30));
    // Batch B: three events of other keys, gathering (max_wait) while A waits for its reply.
    db.sql("INSERT INTO ledger SELECT g, 1 FROM generate_series(6, 8) g");
    let rows = wait_all_delivered(&db, &daemon, 8, Duration::from_secs(60));
    let requests = receiver.requests();
    let pause = requests[1].at - requests[0].at;
    assert!(
        pause >= Duration::from_millis(14_000),
        "nothing is sent while the receiver asked for a pause: next request after {pause:?}"
    );
    for request in &requests {
        let ids = request.event_ids();
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "request #{} carries an event twice: {ids:?}",
            request.index
        );
    }
    let received: BTreeSet<String> = receiver.all_event_ids().into_iter().collect();
    let recorded: BTreeSet<String> = rows.into_iter().map(|d| d.event_id).collect();
    assert_eq!(received, recorded);
    let b: Vec<String> = receiver
        .all_event_ids()
        .into_iter()
        .filter(|id| !requests[0].event_ids().contains(id))
        .collect();
    assert_eq!(b.len(), 3, "batch B's events once each: {b:?}");
}

#[test]
fn a_result_the_outbox_refuses_is_set_apart_and_every_other_result_still_lands() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = config(&db, &receiver.url("/hooks"), "");
    let daemon = start_daemon(&config);
    // A trigger of the user's (or a broken value) makes Postgres refuse the attempt row of
    // key 3's deliveries; before, the completion writer retried that statement forever and
    // no result of any delivery was recorded again.
    db.sql(
        "CREATE FUNCTION pg_temp_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT e.key::jsonb->>'id' FROM walhook.delivery d JOIN walhook.event e
                 ON e.seq = d.event_seq WHERE d.id = NEW.delivery_id) = '3' THEN
             RAISE EXCEPTION 'attempt rows of key 3 are refused';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON walhook.attempt
           FOR EACH ROW EXECUTE FUNCTION pg_temp_refuse();",
    );
    db.sql("UPDATE ledger SET n = n + 1");

    let rows = wait_all_delivered(&db, &daemon, 5, Duration::from_secs(30));
    assert_eq!(rows.len(), 5);
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery WHERE last_error IS NOT NULL")
            .trim(),
        "1",
        "only key 3's delivery carries a note"
    );
    let note = db.sql(
        "SELECT d.last_error FROM walhook.delivery d \
         JOIN walhook.event e ON e.seq = d.event_seq WHERE e.key::jsonb->>'id' = '3'",
    );
    assert!(
        note.contains("the attempt could not be recorded")
            && note.contains("attempt rows of key 3 are refused"),
        "{note}"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.attempt").trim(), "4");
    let log = daemon.log_text();
    assert!(
        log.contains("the delivery is settled without its attempt row"),
        "{log}"
    );
}

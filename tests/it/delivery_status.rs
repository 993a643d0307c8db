//! What each kind of answer from a receiver means (SPEC §4 status policy), end to end: a
//! row change in Postgres, the real daemon, and a programmable receiver on 127.0.0.1. The
//! retry schedules are short so each story takes seconds.

use crate::support;
use support::rows::{attempts, deliveries, Delivery};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{invoice_config, start_daemon, wait_until, TestDb};
use support::{Reply, Seen, Subscriber};

/// Generous, for a loaded machine; the happy path takes a fraction of it.
const PATIENCE: Duration = Duration::from_secs(20);

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text);
ALTER TABLE account_invoice REPLICA IDENTITY FULL;
INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft'), (2, 'INV-2', 1, 'draft');
";

/// Waits until every one of `n` deliveries is `delivered`, and returns them.
fn wait_delivered(db: &TestDb<'_>, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = deliveries(db);
        if now.len() == n && now.iter().all(|d| d.status == "delivered") {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{n} deliveries not all delivered within {PATIENCE:?}: {now:#?}\nattempts: {:#?}",
            attempts(db)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `n` deliveries exist (the changes are captured).
fn wait_captured(db: &TestDb<'_>, n: usize) -> Vec<Delivery> {
    let mut last = Vec::new();
    wait_until(PATIENCE, &format!("{n} deliveries are captured"), || {
        last = deliveries(db);
        last.len() >= n
    });
    last
}

/// Runs one statement over and over (every 150 ms) in a thread of its own until stopped or
/// dropped: a source database that keeps changing.
struct BusyWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl BusyWriter {
    fn start(db: &TestDb<'static>, statement: &str) -> BusyWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, database, statement) = (stop.clone(), db.name.clone(), statement.to_owned());
        let thread = std::thread::spawn(move || {
            let mut changes = 0;
            while !flag.load(Ordering::Relaxed) {
                support::cluster()
                    .psql(&database, &statement)
                    .expect("the busy writer's statement");
                changes += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            changes
        });
        BusyWriter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; how many times the statement ran.
    fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the busy writer panicked")
    }
}

impl Drop for BusyWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The event id a request carried.
fn event_id(seen: &Seen) -> String {
    let ids = seen.event_ids();
    assert_eq!(ids.len(), 1, "one event per request: {ids:?}");
    ids.into_iter().next().unwrap()
}

/// The time between two requests' arrivals.
fn gap(earlier: &Seen, later: &Seen) -> Duration {
    later.at.saturating_duration_since(earlier.at)
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the HTTP-date every sender uses.
fn http_date(unix_seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn the_imf_fixdate_helper_formats_the_rfc_example() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
}

#[test]
fn a_receiver_answering_200_or_201_gets_each_event_once_and_it_is_delivered() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(200).body("ok"),
        Reply::status(201).body("created"),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    receiver.wait_for(1, PATIENCE);
    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 2");
    let seen = receiver.wait_for(2, PATIENCE);

    let done = wait_delivered(&db, 2);
    assert!(done.iter().all(|d| d.attempts == 1), "{done:#?}");
    assert!(
        done.iter().all(|d| d.last_error.is_none()),
        "no error on success: {done:#?}"
    );
    let mut codes: Vec<_> = done.iter().map(|d| d.last_status_code).collect();
    codes.sort();
    assert_eq!(codes, vec![Some(200), Some(201)]);
    let log = attempts(&db);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(
        log.iter()
            .all(|a| a.attempt == 1 && a.trigger == "scheduled" && a.error.is_none()),
        "{log:#?}"
    );
    // A retry, if one were made by mistake, would come after 200 ms.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.count(), 2, "each event exactly once");
    let sent: Vec<String> = seen.iter().map(event_id).collect();
    let stored: Vec<String> = done.iter().map(|d| d.event_id.clone()).collect();
    assert_eq!(sent, stored);
}

#[test]
fn a_redirect_is_not_followed_it_is_retried_and_the_log_names_the_new_location() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let moved_to = receiver.url("/moved/here");
    // Were the redirect followed, the second request would go to /moved/here and succeed.
    receiver.respond_with_sequence(vec![
        Reply::status(301).header("Location", &moved_to),
        Reply::status(204),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let done = wait_delivered(&db, 1);
    let seen = receiver.requests();
    assert_eq!(seen.len(), 2, "the 301 and the retry: {seen:#?}");
    assert!(
        seen.iter().all(|s| s.path == "/hooks"),
        "only the configured path is requested: {:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    assert_eq!(event_id(&seen[0]), event_id(&seen[1]));
    let retry_after = gap(&seen[0], &seen[1]);
    assert!(
        retry_after >= Duration::from_millis(160),
        "the retry waits for the schedule: {retry_after:?}"
    );
    assert_eq!(done[0].attempts, 2);

    let log = attempts(&db);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0].status_code, Some(301));
    let error = log[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&moved_to),
        "the attempt error names the location: {error:?}"
    );
    assert_eq!((log[1].attempt, log[1].status_code), (2, Some(204)));
}

#[test]
fn a_400_is_retried_and_delivered_once_the_receiver_accepts_it() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(400).body("missing field partner"),
        Reply::status(200),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET partner_id = 7 WHERE id = 1");
    let done = wait_delivered(&db, 1);
    assert_eq!(done[0].attempts, 2, "{done:#?}");
    let seen = receiver.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(event_id(&seen[0]), event_id(&seen[1]), "the same event");
    assert!(gap(&seen[0], &seen[1]) >= Duration::from_millis(160));
    let log: Vec<_> = attempts(&db)
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(log, vec![(1, Some(400)), (2, Some(200))]);
    let excerpt = db.sql("SELECT response_excerpt FROM walhook.attempts WHERE attempt = 1");
    assert_eq!(excerpt, "missing field partner");
}

#[test]
fn a_status_in_dead_on_status_is_dead_after_one_attempt_while_a_500_is_retried() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    // Invoice 1 is refused as invalid data (Rivile's 400); invoice 2 meets a server error
    // once, then is accepted.
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    receiver.respond(move |seen| {
        if seen.json()["key"]["id"] == 1 {
            Reply::status(400).body("invalid I13 data")
        } else if !flag.swap(true, Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "dead_on_status = [400, 422]\nretry_schedule = [\"200ms\", \"300ms\"]\nordering = \"none\"",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET partner_id = 7 WHERE id = 1");
    db.sql("UPDATE account_invoice SET partner_id = 7 WHERE id = 2");
    let deadline = Instant::now() + PATIENCE;
    let (dead, delivered) = loop {
        let now = deliveries(&db);
        let by_key = |key| now.iter().find(|d| d.key_id() == key).cloned();
        if let (Some(one), Some(two)) = (by_key(1), by_key(2)) {
            if one.status == "dead" && two.status == "delivered" {
                break (one, two);
            }
        }
        assert!(
            Instant::now() < deadline,
            "not settled within {PATIENCE:?}: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dead.attempts, 1, "{dead:#?}");
    assert_eq!(dead.last_status_code, Some(400));
    assert_eq!(
        dead.last_error.as_deref(),
        Some("400 is in dead_on_status: dead after this attempt, not retried")
    );
    assert_eq!(delivered.attempts, 2, "{delivered:#?}");
    // Invoice 2's retry came after 200 ms; a retry of invoice 1 would have been due then too.
    let to_one = receiver
        .requests()
        .iter()
        .filter(|seen| seen.json()["key"]["id"] == 1)
        .count();
    assert_eq!(to_one, 1, "invoice 1 was sent once");
    let log: Vec<_> = attempts(&db)
        .iter()
        .filter(|a| a.delivery_id == Some(dead.id))
        .map(|a| (a.attempt, a.status_code, a.error.clone()))
        .collect();
    assert_eq!(
        log,
        vec![(
            1,
            Some(400),
            Some("400 is in dead_on_status: dead after this attempt, not retried".to_owned())
        )]
    );
}

#[test]
fn a_410_gone_switches_the_subscription_off_and_its_deliveries_wait_for_replay() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(410).body("this endpoint is gone"));
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    receiver.wait_for(1, PATIENCE);
    let mut state = String::new();
    wait_until(PATIENCE, "the subscription is deactivated", || {
        state = db.sql("SELECT subscription, reason FROM walhook.subscription_state");
        !state.is_empty()
    });
    assert!(state.starts_with("invoices|"), "{state}");
    assert!(state.contains("410"), "the reason names the 410: {state}");
    wait_until(PATIENCE, "the 410 is recorded", || {
        deliveries(&db)
            .first()
            .is_some_and(|d| d.last_status_code == Some(410))
    });

    // Later changes are captured, and nothing more is sent.
    db.sql("UPDATE account_invoice SET state = 'paid' WHERE id = 1");
    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 2");
    wait_captured(&db, 3);
    // Past the schedule (200 ms, 300 ms) and the idle poll (1 s) twice over.
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        receiver.count(),
        1,
        "no request while the subscription is switched off"
    );
    let pending = deliveries(&db);
    assert!(
        pending.iter().all(|d| d.status == "pending"),
        "kept for replay, never dead: {pending:#?}"
    );
    assert_eq!(pending[0].attempts, 1);
    assert!(pending[1..].iter().all(|d| d.attempts == 0), "{pending:#?}");

    // What `walhook replay --subscription invoices` does.
    receiver.respond(|_| Reply::status(204));
    let switched_on = Instant::now();
    db.sql("DELETE FROM walhook.subscription_state WHERE subscription = 'invoices'");
    let done = wait_delivered(&db, 3);
    let took = switched_on.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "delivered {took:?} after being switched back on"
    );
    let seen = receiver.requests();
    assert_eq!(seen.len(), 4, "one each after the 410");
    let after: Vec<String> = seen[1..].iter().map(event_id).collect();
    let key1: Vec<&String> = after
        .iter()
        .filter(|id| **id == done[0].event_id || **id == done[1].event_id)
        .collect();
    assert_eq!(
        key1,
        vec![&done[0].event_id, &done[1].event_id],
        "one row's events in commit order"
    );
    assert_eq!(done[0].attempts, 2);
    assert!(done[1..].iter().all(|d| d.attempts == 1), "{done:#?}");
}

#[test]
fn a_subscription_switched_back_on_resumes_even_while_its_table_keeps_changing() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(410));
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    wait_until(PATIENCE, "the subscription is deactivated", || {
        !db.sql("SELECT 1 FROM walhook.subscription_state")
            .is_empty()
    });
    // A busy ERP: another row changes several times a second, all along.
    let busy = BusyWriter::start(
        &db,
        "UPDATE account_invoice SET partner_id = partner_id + 1 WHERE id = 2",
    );
    wait_captured(&db, 4);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        receiver.count(),
        1,
        "no request while the subscription is switched off"
    );

    receiver.respond(|_| Reply::status(204));
    db.sql("DELETE FROM walhook.subscription_state WHERE subscription = 'invoices'");
    let switched_on = Instant::now();
    let first = deliveries(&db)[0].clone();
    let mut delivered = false;
    while !delivered && switched_on.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        delivered = deliveries(&db)
            .iter()
            .any(|d| d.id == first.id && d.status == "delivered");
    }
    let changes = busy.stop();
    assert!(
        delivered,
        "the delivery held back by the 410 is still pending 10 s after the subscription \
         was switched back on ({changes} changes meanwhile; {} requests)",
        receiver.count()
    );
    let n = deliveries(&db).len();
    wait_delivered(&db, n);
}

#[test]
fn a_429_with_retry_after_seconds_pauses_the_whole_subscription_that_long() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(429).header("Retry-After", "2"),
        Reply::status(204),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let first = receiver.wait_for(1, PATIENCE).remove(0);
    // An event of another row, ready while the subscription is paused.
    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 2");
    wait_captured(&db, 2);
    let captured_after = first.at.elapsed();
    assert!(
        captured_after < Duration::from_millis(1_700),
        "inconclusive: the second change took {captured_after:?} to be captured"
    );
    assert_eq!(receiver.count(), 1, "nothing is sent during the pause");

    let seen = receiver.wait_for(3, PATIENCE);
    for later in &seen[1..] {
        let waited = gap(&first, later);
        assert!(
            waited >= Duration::from_millis(1_950),
            "request #{} {waited:?} after the 429 asking for 2 s",
            later.index
        );
    }
    let done = wait_delivered(&db, 2);
    let retried = seen[1..]
        .iter()
        .filter(|s| event_id(s) == event_id(&first))
        .count();
    assert_eq!(retried, 1, "the throttled event is retried once");
    assert_eq!(done[0].attempts, 2);
    assert_eq!(
        done[1].attempts, 1,
        "the pause cost the other event nothing"
    );
    assert_eq!(attempts(&db)[0].status_code, Some(429));
}

#[test]
fn a_429_with_retry_after_as_an_http_date_is_honoured() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    // Arrival (wall clock) of every request, and the date the first one was told.
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let asked: Arc<Mutex<Option<u64>>> = Arc::default();
    {
        let (arrivals, asked) = (arrivals.clone(), asked.clone());
        receiver.respond(move |seen| {
            let now = unix_now();
            arrivals.lock().unwrap().push(now);
            if seen.index > 0 {
                return Reply::status(204);
            }
            // Two to three seconds ahead: the date has whole seconds.
            let date = now.as_secs() + 3;
            *asked.lock().unwrap() = Some(date);
            Reply::status(429).header("Retry-After", &http_date(date))
        });
    }
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let seen = receiver.wait_for(2, PATIENCE);
    // The responder runs just after the request is recorded.
    wait_until(PATIENCE, "the responder saw the retry", || {
        arrivals.lock().unwrap().len() >= 2
    });
    let date = Duration::from_secs(asked.lock().unwrap().expect("the 429 was sent"));
    let retried_at = arrivals.lock().unwrap()[1];
    assert!(
        retried_at + Duration::from_millis(50) >= date,
        "retried at {retried_at:?}, {:?} before the date asked",
        date.saturating_sub(retried_at)
    );
    assert!(gap(&seen[0], &seen[1]) >= Duration::from_millis(1_950));
    let done = wait_delivered(&db, 1);
    assert_eq!(done[0].attempts, 2);
}

#[test]
fn server_errors_500_and_503_are_retried_on_the_schedule() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(500).body("boom"),
        // Without Retry-After: the schedule decides.
        Reply::status(503),
        // With one: honoured.
        Reply::status(503).header("Retry-After", "1"),
        Reply::status(200),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"300ms\", \"200ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let done = wait_delivered(&db, 1);
    assert_eq!(done[0].attempts, 4, "{done:#?}");
    let seen = receiver.requests();
    assert_eq!(seen.len(), 4);
    let gaps: Vec<Duration> = seen.windows(2).map(|w| gap(&w[0], &w[1])).collect();
    // ±20 % jitter on 200 ms and 300 ms; then the 1 s the 503 asked for.
    assert!(gaps[0] >= Duration::from_millis(160), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(240), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(950), "{gaps:?}");
    // A 503 without Retry-After does not hold the event longer than the schedule says
    // (slack for a loaded machine).
    assert!(gaps[1] < Duration::from_secs(3), "{gaps:?}");
    let log: Vec<_> = attempts(&db)
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(
        log,
        vec![
            (1, Some(500)),
            (2, Some(503)),
            (3, Some(503)),
            (4, Some(200))
        ]
    );
}

#[test]
fn a_receiver_slower_than_the_timeout_gets_the_event_again() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond_with_sequence(vec![
        Reply::status(200).after(Duration::from_secs(3)),
        Reply::status(200),
    ]);
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "timeout = \"1s\"\nretry_schedule = [\"200ms\", \"300ms\"]",
    );
    let _daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let done = wait_delivered(&db, 1);
    assert_eq!(done[0].attempts, 2, "{done:#?}");
    let seen = receiver.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(event_id(&seen[0]), event_id(&seen[1]));
    let waited = gap(&seen[0], &seen[1]);
    assert!(
        waited >= Duration::from_millis(1_150) && waited < Duration::from_millis(2_900),
        "the retry follows the 1 s timeout and the 200 ms delay, not the slow answer: {waited:?}"
    );
    let log = attempts(&db);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0].status_code, None);
    let error = log[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("timed out"),
        "the error says it timed out: {error:?}"
    );
    assert!(
        (900..2_500).contains(&log[0].duration_ms.unwrap_or(-1)),
        "the attempt lasted the timeout: {:?} ms",
        log[0].duration_ms
    );
    assert_eq!(log[1].status_code, Some(200));
}

#[test]
fn a_receiver_that_is_down_gets_the_event_once_it_is_back() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"200ms\", \"1s\", \"2s\", \"5s\"]",
    );
    let _daemon = start_daemon(&config);
    receiver.stop();

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let mut failed = Vec::new();
    wait_until(PATIENCE, "two refused attempts are recorded", || {
        failed = attempts(&db);
        failed.len() >= 2
    });
    for a in &failed {
        assert_eq!(a.status_code, None, "{a:?}");
        let error = a.error.as_deref().unwrap_or_default();
        assert!(
            error.to_lowercase().contains("refused"),
            "the error says the connection was refused: {error:?}"
        );
    }
    let pending = deliveries(&db);
    assert_eq!(pending[0].status, "pending");
    assert!(pending[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.to_lowercase().contains("refused")));

    receiver.restart();
    let seen = receiver.wait_for(1, PATIENCE);
    let done = wait_delivered(&db, 1);
    assert_eq!(event_id(&seen[0]), done[0].event_id);
    let log = attempts(&db);
    assert_eq!(done[0].attempts as usize, log.len(), "{log:#?}");
    let last = log.last().unwrap();
    assert_eq!((last.status_code, last.error.as_deref()), (Some(204), None));
    assert!(log[..log.len() - 1].iter().all(|a| a.status_code.is_none()));
    assert_eq!(receiver.count(), 1, "delivered once");
}

#[test]
fn after_five_failures_in_a_row_the_breaker_pauses_without_burning_attempts() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(500));
    // Without the breaker every delivery would be dead after about 3 s.
    let config = invoice_config(
        &db,
        &receiver.url("/hooks"),
        "retry_schedule = [\"1s\", \"1s\", \"1s\"]",
    );
    let _daemon = start_daemon(&config);

    // Six events of six rows, in one transaction.
    db.sql(
        "INSERT INTO account_invoice \
         SELECT g, 'INV-' || g, 1, 'draft' FROM generate_series(10, 15) g",
    );
    let burst = receiver.wait_for(6, PATIENCE);
    let opened = burst[5].at;
    std::thread::sleep(Duration::from_millis(4_500));

    let during = deliveries(&db);
    assert_eq!(during.len(), 6);
    assert!(
        during
            .iter()
            .all(|d| d.status == "pending" && d.attempts == 1),
        "waiting for the breaker costs no attempt: {during:#?}"
    );
    let seen = receiver.requests();
    let probes = &seen[6..];
    assert!(
        !probes.is_empty() && probes.len() <= 3,
        "one probe at a time while open, not the schedule's bursts: {} requests in {:?}",
        probes.len(),
        opened.elapsed()
    );
    let mut previous = opened;
    for probe in probes {
        let waited = probe.at.saturating_duration_since(previous);
        assert!(
            waited >= Duration::from_millis(900),
            "probe #{} {waited:?} after the previous request",
            probe.index
        );
        previous = probe.at;
    }
    let log = attempts(&db);
    assert!(log.iter().all(|a| a.status_code == Some(500)), "{log:#?}");
    assert_eq!(log.len(), seen.len(), "every request is in the log");

    receiver.respond(|_| Reply::status(204));
    let done = wait_delivered(&db, 6);
    assert!(
        done.iter().all(|d| d.attempts == 2),
        "one failed attempt and one success each: {done:#?}"
    );
    let delivered: std::collections::BTreeSet<String> = receiver.requests()[seen.len()..]
        .iter()
        .map(event_id)
        .collect();
    assert_eq!(
        delivered.len(),
        6,
        "each event delivered once the receiver is back"
    );
}

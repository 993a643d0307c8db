//! Backfills (SPEC §3b): the rows that already exist reach the receiver as `read` events,
//! consistent with the changes that stream beside them, exactly once through crashes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use crate::support::config::{Sub, Toml};
use crate::support::{
    cluster, config_file, run_walhook, start_daemon, wait_until, Daemon, Subscriber, TestDb,
};

/// Generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

const STOCK: &str =
    "CREATE TABLE stock (id bigint PRIMARY KEY, article text NOT NULL, qty int NOT NULL);";

fn stock(db: &TestDb<'_>, rows: u32) {
    db.sql(&format!(
        "INSERT INTO stock SELECT g, 'article ' || g, g % 100 FROM generate_series(1, {rows}) g"
    ));
}

/// The backfill of `subscription`: state and rows, as the outbox records them.
fn backfill_of(db: &TestDb<'_>, subscription: &str) -> String {
    db.sql(&format!(
        "SELECT coalesce(string_agg(state || ' ' || rows, ',' ORDER BY id), 'none') \
         FROM walhook.backfill WHERE subscription = '{subscription}'"
    ))
}

/// Waits until the last backfill of `subscription` is done; the rows it read.
fn wait_done(db: &TestDb<'_>, daemon: &Daemon, subscription: &str) -> u64 {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let state = backfill_of(db, subscription);
        if let Some(rows) = state
            .rsplit(',')
            .next()
            .and_then(|s| s.strip_prefix("done "))
        {
            return rows.parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline && !state.contains("failed"),
            "backfill of {subscription}: {state}; log:\n{}",
            tail(&daemon.log_text())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(log: &str) -> &str {
    &log[log.len().saturating_sub(4000)..]
}

/// Read events in the outbox for `subscription`: (all, distinct keys).
fn read_events(db: &TestDb<'_>, subscription: &str) -> (u64, u64) {
    let counts = db.sql(&format!(
        "SELECT count(*) || ' ' || count(DISTINCT e.key) FROM walhook.event e \
         JOIN walhook.delivery d ON d.event_seq = e.seq \
         WHERE d.subscription = '{subscription}' AND e.event_id LIKE 'evt\\_r%'"
    ));
    let (all, distinct) = counts.split_once(' ').unwrap();
    (all.parse().unwrap(), distinct.parse().unwrap())
}

fn bodies(receiver: &Subscriber) -> Vec<Value> {
    receiver.requests().iter().map(|seen| seen.json()).collect()
}

#[test]
fn existing_rows_reach_the_receiver_once_and_a_concurrent_writer_never_sees_an_older_value_win() {
    let db = TestDb::new(STOCK);
    stock(&db, 5_000);
    let receiver = Subscriber::start();
    // Slow enough that the writer below runs while the backfill does.
    let config = Toml::new(&db)
        .source("backfill_rows_per_second = 2500")
        .table("stock", "public.stock")
        .subscription(Sub::new("sync", "stock", &receiver.url("/stock")).with("backfill = true"))
        .write();
    let daemon = start_daemon(&config);
    wait_until(PATIENCE, "the backfill has begun", || {
        db.sql("SELECT coalesce(max(rows), 0) > 0 FROM walhook.backfill") == "t"
    });

    // 600 updates of existing rows and 200 new rows, in small transactions, while it runs.
    let url = db.name.clone();
    let writer = std::thread::spawn(move || {
        let mut rng = rand::thread_rng();
        let mut script = String::new();
        for n in 0..700u32 {
            if n % 7 == 6 {
                let id = 5_001 + n / 7 * 2;
                script.push_str(&format!(
                    "INSERT INTO stock VALUES ({id}, 'new {id}', 1), ({}, 'new', 2);\n",
                    id + 1
                ));
            } else {
                let id = rng.gen_range(1..=5_000);
                script.push_str(&format!(
                    "UPDATE stock SET qty = qty + 1000 WHERE id = {id};\n"
                ));
            }
            if n % 50 == 49 {
                script.push_str("SELECT pg_sleep(0.1);\n");
            }
        }
        cluster().psql(&url, &script).unwrap();
    });
    writer.join().unwrap();
    let rows = wait_done(&db, &daemon, "sync");
    // The rows inserted meanwhile may be read too (then their create event went first).
    assert!((5_000..=5_200).contains(&rows), "{rows} rows");

    // Every change is in the outbox, and every event there has reached the receiver.
    wait_until(PATIENCE, "the 800 changes are captured", || {
        db.sql("SELECT count(*) FROM walhook.event WHERE event_id NOT LIKE 'evt\\_r%'") == "800"
    });
    let expected: usize = db
        .sql("SELECT count(*) FROM walhook.delivery")
        .parse()
        .unwrap();
    receiver.wait_for(expected, PATIENCE);
    let table: BTreeMap<i64, i64> = db
        .sql("SELECT string_agg(id || ':' || qty, ',' ORDER BY id) FROM stock")
        .split(',')
        .map(|pair| {
            let (id, qty) = pair.split_once(':').unwrap();
            (id.parse().unwrap(), qty.parse().unwrap())
        })
        .collect();
    let mut last: HashMap<i64, i64> = HashMap::new();
    let mut changed: HashMap<i64, bool> = HashMap::new();
    let mut reads: HashMap<i64, u32> = HashMap::new();
    let mut story: HashMap<i64, Vec<String>> = HashMap::new();
    for event in bodies(&receiver) {
        let id = event["key"]["id"].as_i64().unwrap();
        story.entry(id).or_default().push(format!(
            "{} {} {} {}",
            event["operation"], event["values"]["qty"], event["id"], event["source"]["lsn"]
        ));
        let qty = event["values"]["qty"].as_i64().unwrap();
        match event["operation"].as_str().unwrap() {
            "read" => {
                assert_eq!(event["type"], "stock.read");
                assert!(event.get("previous").is_none(), "{event}");
                assert!(
                    !changed.contains_key(&id),
                    "a read event of key {id} arrived after a change of it: {event}"
                );
                *reads.entry(id).or_default() += 1;
            }
            _ => {
                changed.insert(id, true);
            }
        }
        last.insert(id, qty);
    }
    for (id, qty) in &table {
        assert_eq!(
            last.get(id),
            Some(qty),
            "the receiver's last value of key {id} is the table's: {:?}; log:\n{}",
            story.get(id),
            tail(&daemon.log_text())
        );
    }
    for id in 1..=5_000 {
        let read = reads.get(&id).copied().unwrap_or(0);
        assert!(read <= 1, "key {id} was read {read} times");
        assert!(
            read == 1 || changed.contains_key(&id),
            "key {id} was neither read nor changed"
        );
    }
    let (all, distinct) = read_events(&db, "sync");
    assert_eq!(all, distinct, "one read event per key in the outbox");
    assert!(all >= 4_500, "most rows were read, not superseded: {all}");
}

#[test]
fn a_sigkill_in_the_middle_of_a_backfill_resumes_and_every_row_is_written_once() {
    let db = TestDb::new(STOCK);
    stock(&db, 20_000);
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .source("backfill_rows_per_second = 5000")
        .table("stock", "public.stock")
        .subscription(Sub::new("sync", "stock", &receiver.url("/stock")).with("backfill = true"))
        .write();
    let mut daemon = start_daemon(&config);
    let mut kills = 0;
    while kills < 3 {
        std::thread::sleep(Duration::from_millis(
            rand::thread_rng().gen_range(700..1500),
        ));
        if backfill_of(&db, "sync").starts_with("done") {
            break;
        }
        daemon.signal("KILL");
        daemon.wait(Duration::from_secs(10));
        kills += 1;
        daemon = start_daemon(&config);
    }
    assert!(kills > 0, "the backfill finished before the first kill");
    assert_eq!(wait_done(&db, &daemon, "sync"), 20_000);
    assert_eq!(
        read_events(&db, "sync"),
        (20_000, 20_000),
        "every row exactly once after {kills} kills"
    );
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM stock s WHERE NOT EXISTS (SELECT 1 FROM walhook.event e \
             WHERE e.key = format('{\"id\":%s}', s.id))"
        ),
        "0",
        "no row without its read event"
    );
}

#[test]
fn where_limits_the_rows_and_cancel_stops_a_backfill() {
    let db = TestDb::new(STOCK);
    stock(&db, 3_000);
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .source("backfill_rows_per_second = 500")
        .table("stock", "public.stock")
        .subscription(Sub::new("sync", "stock", &receiver.url("/stock")))
        .write();
    let daemon = start_daemon(&config);

    let asked = run_walhook(&config, &["backfill", "sync", "--where", "qty < 10"]);
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    assert_eq!(wait_done(&db, &daemon, "sync"), 300);
    let events = receiver.wait_for(300, PATIENCE);
    assert!(events
        .iter()
        .map(|seen| seen.json())
        .all(|e| e["operation"] == "read" && e["values"]["qty"].as_i64().unwrap() < 10));

    // A slow backfill of everything, cancelled after its first chunks.
    let asked = run_walhook(&config, &["backfill", "sync"]);
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    wait_until(PATIENCE, "the second backfill has rows", || {
        db.sql("SELECT rows > 0 FROM walhook.backfill WHERE state = 'running'") == "t"
    });
    let cancelled = run_walhook(&config, &["backfill", "--cancel", "sync"]);
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    std::thread::sleep(Duration::from_secs(3));
    let rows: u64 = db
        .sql("SELECT rows FROM walhook.backfill WHERE state = 'cancelled'")
        .parse()
        .unwrap();
    assert!(rows < 3_000, "cancelled before the end: {rows} rows");
    let (written, _) = read_events(&db, "sync");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_events(&db, "sync").0,
        written,
        "no read events after the cancel"
    );
    assert!(written <= 300 + rows, "{written} read events");
}

#[test]
fn only_the_subscription_that_asks_gets_read_events_and_a_reloaded_new_one_is_backfilled_once() {
    let db = TestDb::new(STOCK);
    stock(&db, 2_000);
    let receiver = Subscriber::start();
    let base = Toml::new(&db)
        .table("stock", "public.stock")
        .subscription(Sub::new("plain", "stock", &receiver.url("/plain")));
    let config = config_file(&base.text());
    let daemon = start_daemon(&config);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(backfill_of(&db, "plain"), "none");
    assert_eq!(read_events(&db, "plain"), (0, 0));

    // A new subscription with backfill = true, added by a hot reload.
    let edited = base
        .clone()
        .subscription(
            Sub::new("late", "stock", &receiver.url("/late"))
                .with("backfill = true\nwhen = \"operation == 'read' and values.qty < 50\""),
        )
        .text();
    std::fs::write(&config.path, edited).unwrap();
    assert_eq!(wait_done(&db, &daemon, "late"), 2_000);
    assert_eq!(
        read_events(&db, "late"),
        (1_000, 1_000),
        "when filters reads"
    );
    assert_eq!(read_events(&db, "plain"), (0, 0));
    drop(daemon);

    // Seen before: a restart does not backfill it again.
    let _daemon = start_daemon(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(backfill_of(&db, "late"), "done 2000");
}

#[test]
fn composite_and_text_keys_are_walked_in_key_order_once() {
    let db = TestDb::new(
        "CREATE TABLE stock_level (warehouse text, article int, qty int, \
           PRIMARY KEY (warehouse, article));
         CREATE TABLE tag (code text PRIMARY KEY, label text);",
    );
    db.sql(
        "INSERT INTO stock_level SELECT w, a, a FROM unnest(ARRAY['', 'A', 'a''b', 'Zürich', 'z']) w, \
           generate_series(1, 700) a;
         INSERT INTO tag SELECT 'tag-' || g || CASE WHEN g % 3 = 0 THEN ' ü\"' ELSE '' END, 'x' \
           FROM generate_series(1, 2500) g;",
    );
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .table("level", "public.stock_level")
        .table("tag", "public.tag")
        .subscription(Sub::new("levels", "level", &receiver.url("/l")).with("backfill = true"))
        .subscription(Sub::new("tags", "tag", &receiver.url("/t")).with("backfill = true"))
        .write();
    let daemon = start_daemon(&config);
    assert_eq!(wait_done(&db, &daemon, "levels"), 3_500);
    assert_eq!(wait_done(&db, &daemon, "tags"), 2_500);
    assert_eq!(read_events(&db, "levels"), (3_500, 3_500));
    assert_eq!(read_events(&db, "tags"), (2_500, 2_500));
}

#[test]
fn a_backfill_that_cannot_work_fails_with_the_fix_in_its_status() {
    let db = TestDb::new(STOCK);
    stock(&db, 10);
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .object(
            crate::support::config::Object::new("stock", "public.stock")
                .with("key = [\"article\"]"),
        )
        .subscription(Sub::new("sync", "stock", &receiver.url("/stock")).with("backfill = true"))
        .write();
    let daemon = start_daemon(&config);
    wait_until(PATIENCE, "the backfill failed", || {
        backfill_of(&db, "sync").starts_with("failed")
    });
    let status = run_walhook(&config, &["backfill", "--status", "--json"]);
    let list: Value = serde_json::from_str(&status.stdout).unwrap();
    let error = list[0]["error"].as_str().unwrap();
    assert!(
        error.contains("CREATE UNIQUE INDEX") && error.contains("public.stock"),
        "{error}; log:\n{}",
        tail(&daemon.log_text())
    );
    assert_eq!(read_events(&db, "sync"), (0, 0));
}

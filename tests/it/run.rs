//! `walhook run`: matching changes land in the outbox exactly once, through crashes,
//! restarts and config edits. Real daemon process, real signals, real Postgres.

use crate::support;
use support::{Object, Sub, Toml};

use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use support::http::{metric, Http};
use support::{config_file, run_walhook, start_daemon, unique, wait_until, Daemon, TestDb};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text,
                              amount numeric);
ALTER TABLE account_invoice REPLICA IDENTITY FULL;
CREATE TABLE res_partner (id int PRIMARY KEY, name text);
CREATE TABLE stock_move (id bigint PRIMARY KEY, qty int);
";

/// A config on `db` (slot and publication of this test's own, no `[delivery]`) with the
/// invoice object on `account_invoice`'s number, partner_id, state and amount.
fn invoices(db: &TestDb<'_>) -> Toml {
    Toml::new(db).without_delivery().object(invoice_object())
}

fn invoice_object() -> Object {
    Object::new("invoice", "public.account_invoice").fields(&[
        "number",
        "partner_id",
        "state",
        "amount",
    ])
}

/// Subscription `name` to `object` at `https://hooks.example.com/NAME`, plus `extra` lines.
fn sub(name: &str, object: &str, extra: &str) -> Sub {
    Sub::new(name, object, &format!("https://hooks.example.com/{name}")).with(extra)
}

/// The events each subscription received, as (subscription, body) in delivery order.
fn outbox(db: &TestDb<'_>) -> Vec<(String, Value)> {
    let rows = db.sql(
        "SELECT d.subscription || ' ' || convert_from(e.body, 'UTF8') \
         FROM walhook.delivery d JOIN walhook.event e ON e.seq = d.event_seq ORDER BY d.id",
    );
    rows.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (sub, body) = l.split_once(' ').unwrap();
            (sub.to_owned(), serde_json::from_str(body).unwrap())
        })
        .collect()
}

/// The bodies `subscription` received, in delivery order.
fn bodies_for<'a>(rows: &'a [(String, Value)], subscription: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|(s, _)| s == subscription)
        .map(|(_, b)| b)
        .collect()
}

/// Waits until the outbox holds `n` deliveries, and returns them.
fn wait_for_deliveries(db: &TestDb<'_>, daemon: &Daemon, n: usize) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = outbox(db);
        if rows.len() >= n {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} deliveries, have {}: {rows:?}\nlog:\n{}",
            rows.len(),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes a change that every config here routes (a marker), so that once it is in the
/// outbox everything committed before it has been captured too.
fn settle(db: &TestDb<'_>, daemon: &Daemon, marker_sub: &str) -> Vec<(String, Value)> {
    let marker = rand::thread_rng().gen_range(1_000_000..2_000_000);
    db.sql(&format!(
        "INSERT INTO account_invoice VALUES ({marker}, 'MARKER', 0, 'marker', 0)"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = outbox(db);
        if rows
            .iter()
            .any(|(s, b)| s == marker_sub && b["key"]["id"] == marker)
        {
            return rows
                .into_iter()
                .filter(|(_, b)| b["values"]["state"] != "marker")
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "marker not captured; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn updating_a_watched_column_sends_old_and_new_values_and_unwatched_columns_send_nothing() {
    let db = TestDb::new(ERP);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    let config = invoices(&db)
        .subscription(sub(
            "partner-sync",
            "invoice",
            "operations = [\"update\"]\nwatch = [\"partner_id\"]",
        ))
        .subscription(sub("all", "invoice", ""))
        .write();
    let daemon = start_daemon(&config);
    db.sql("UPDATE account_invoice SET amount = 120 WHERE id = 1");
    db.sql("UPDATE account_invoice SET partner_id = 11 WHERE id = 1");
    let rows = settle(&db, &daemon, "all");
    let partner: Vec<&Value> = rows
        .iter()
        .filter(|(s, _)| s == "partner-sync")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(partner.len(), 1, "only the partner change fires: {rows:?}");
    assert_eq!(partner[0]["type"], "invoice.updated");
    assert_eq!(partner[0]["previous"], json!({"partner_id": 10}));
    assert_eq!(partner[0]["changed"], json!(["partner_id"]));
    assert_eq!(partner[0]["values"]["partner_id"], 11);
    let all = rows.iter().filter(|(s, _)| s == "all").count();
    assert_eq!(
        all, 2,
        "a subscription without watch fires on any field change"
    );
}

#[test]
fn operations_when_fields_and_event_type_each_shape_what_is_captured() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .object(Object::new("invoice_state", "public.account_invoice").fields(&["state"]))
        .subscription(sub("created-only", "invoice", "operations = [\"create\"]"))
        .subscription(sub(
            "posted",
            "invoice",
            "when = \"values.state == 'posted'\"",
        ))
        .subscription(sub(
            "state",
            "invoice_state",
            "event_type = \"invoice.state-changed\"",
        ))
        .subscription(sub("all", "invoice", ""))
        .write();
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    db.sql("UPDATE account_invoice SET amount = 5 WHERE id = 1");
    db.sql("DELETE FROM account_invoice WHERE id = 1");
    let rows = settle(&db, &daemon, "all");
    let of = |name: &str| bodies_for(&rows, name);

    let created = of("created-only");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["operation"], "create");

    let posted = of("posted");
    assert_eq!(
        posted.len(),
        2,
        "the update to posted and the amount change while posted"
    );
    assert!(posted.iter().all(|b| b["values"]["state"] == "posted"));

    let state = of("state");
    let kinds: Vec<&str> = state
        .iter()
        .map(|b| b["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["create", "update", "delete"],
        "the amount change is not a state change"
    );
    assert!(state.iter().all(|b| b["type"] == "invoice.state-changed"));
    assert_eq!(
        state[0]["values"],
        json!({"state": "draft"}),
        "fields limit values"
    );

    assert_eq!(of("all").len(), 4);
}

#[test]
fn a_when_compares_a_numeric_column_as_a_number_while_the_event_keeps_its_text() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub("large", "invoice", "when = \"values.amount > 100\""))
        .subscription(sub("all", "invoice", ""))
        .write();
    let daemon = start_daemon(&config);
    for (id, amount) in [
        (1, "5"),
        (2, "100.00"),
        (3, "100.01"),
        (4, "99999999999999999999"),
    ] {
        db.sql(&format!(
            "INSERT INTO account_invoice VALUES ({id}, 'INV-{id}', 10, 'draft', {amount})"
        ));
    }
    let rows = settle(&db, &daemon, "all");
    let large: Vec<&Value> = rows
        .iter()
        .filter(|(s, _)| s == "large")
        .map(|(_, b)| &b["values"]["amount"])
        .collect();
    // As text "5" > "100" would fire; as a number only the two above 100 do.
    assert_eq!(large, [&json!("100.01"), &json!("99999999999999999999")]);
}

#[test]
fn a_truncate_is_an_event_for_subscriptions_listing_it_and_a_warning_for_the_others() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub(
            "wipes",
            "invoice",
            "operations = [\"create\", \"truncate\"]",
        ))
        .subscription(sub("all", "invoice", ""))
        .write();
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    db.sql("TRUNCATE account_invoice");
    let rows = settle(&db, &daemon, "all");
    let of = |name: &str| bodies_for(&rows, name);
    let wipes = of("wipes");
    assert_eq!(wipes.len(), 2, "{rows:?}");
    assert_eq!(wipes[1]["type"], "invoice.truncated");
    assert_eq!(wipes[1]["operation"], "truncate");
    assert_eq!(wipes[1]["key"], Value::Null);
    assert_eq!(wipes[1]["values"], Value::Null);
    assert_eq!(wipes[1]["source"]["table"], "public.account_invoice");
    let all: Vec<&Value> = of("all");
    assert_eq!(
        all.len(),
        1,
        "truncate is not in the default operations: {rows:?}"
    );

    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("TRUNCATE of public.account_invoice")
            && l.contains("all")),
        "{log}"
    );
    assert_eq!(
        metric(
            &http.metrics(),
            "walhook_truncates_total{table=\"public.account_invoice\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_table_renamed_while_running_keeps_its_events_and_the_rename_is_an_error_with_a_metric() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .write();
    let mut daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    wait_for_deliveries(&db, &daemon, 1);
    db.sql("ALTER TABLE account_invoice RENAME TO invoice_v2");
    db.sql("INSERT INTO invoice_v2 VALUES (2, 'INV-2', 10, 'draft', 200)");
    db.sql("UPDATE invoice_v2 SET state = 'posted' WHERE id = 1");
    let rows = wait_for_deliveries(&db, &daemon, 3);
    let events: Vec<(&str, &Value, &Value)> = rows
        .iter()
        .map(|(s, b)| (s.as_str(), &b["type"], &b["key"]["id"]))
        .collect();
    assert_eq!(
        events,
        [
            ("all", &json!("invoice.created"), &json!(1)),
            ("all", &json!("invoice.created"), &json!(2)),
            ("all", &json!("invoice.updated"), &json!(1)),
        ],
        "{rows:?}"
    );
    assert_eq!(rows[2].1["values"]["state"], "posted");
    assert_eq!(rows[2].1["source"]["table"], "public.invoice_v2");

    let log = daemon.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("renamed"))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR for the rename:\n{log}");
    assert!(
        errors[0].contains("public.account_invoice")
            && errors[0].contains("public.invoice_v2")
            && errors[0].contains("rename it back"),
        "{log}"
    );
    assert_eq!(
        metric(
            &http.metrics(),
            "walhook_renamed_tables{table=\"public.account_invoice\"}"
        ),
        Some(1.0)
    );

    // A restart with the config unchanged is refused, not started without the table.
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(30)), Some(0));
    let out = run_walhook(&config, &["run"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("public.account_invoice does not exist")
            && out.stderr.contains("rename it back"),
        "{}",
        out.stderr
    );
}

#[test]
fn after_a_rename_setting_the_configs_table_to_the_new_name_clears_the_renamed_metric() {
    let db = TestDb::new(ERP);
    let toml = Toml::new(&db).without_delivery();
    let invoice = |table: &str| {
        toml.clone()
            .table("invoice", table)
            .subscription(sub("all", "invoice", ""))
            .text()
    };
    let config = config_file(&invoice("public.account_invoice"));
    let daemon = start_daemon(&config);
    let http = Http::of(&daemon);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    wait_for_deliveries(&db, &daemon, 1);
    db.sql("ALTER TABLE account_invoice RENAME TO invoice_v2");
    db.sql("INSERT INTO invoice_v2 VALUES (2, 'INV-2', 10, 'draft', 200)");
    wait_for_deliveries(&db, &daemon, 2);
    let renamed = "walhook_renamed_tables{table=\"public.account_invoice\"}";
    assert_eq!(metric(&http.metrics(), renamed), Some(1.0));

    std::fs::write(&config.path, invoice("public.invoice_v2")).unwrap();
    wait_until(Duration::from_secs(20), "the reload is logged", || {
        daemon.log_text().contains("config reloaded")
    });
    db.sql("INSERT INTO invoice_v2 VALUES (3, 'INV-3', 10, 'draft', 300)");
    let rows = wait_for_deliveries(&db, &daemon, 3);
    assert_eq!(rows[2].1["type"], "invoice.created", "{rows:?}");
    assert_eq!(rows[2].1["key"]["id"], 3, "{rows:?}");
    assert_eq!(metric(&http.metrics(), renamed), Some(0.0));
}

#[test]
fn two_subscriptions_with_their_own_fields_get_their_own_deliveries_and_share_the_event_id() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .object(Object::new("invoice_state", "public.account_invoice").fields(&["state"]))
        .subscription(sub("all", "invoice", ""))
        .subscription(sub("state", "invoice_state", ""))
        .write();
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 10, 'draft', 100)");
    let rows = settle(&db, &daemon, "all");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let all = &rows.iter().find(|(s, _)| s == "all").unwrap().1;
    let state = &rows.iter().find(|(s, _)| s == "state").unwrap().1;
    assert_eq!(all["id"], state["id"]);
    assert_eq!(all["values"].as_object().unwrap().len(), 4);
    assert_eq!(state["values"], json!({"state": "draft"}));
    assert_eq!(
        db.sql("SELECT count(DISTINCT event_seq) FROM walhook.delivery"),
        "4",
        "different bytes, different event rows (2 changes incl. the marker × 2 subscriptions)"
    );
}

#[test]
fn a_single_transaction_of_200000_rows_is_captured_completely() {
    // Its own cluster: the outbox transaction that takes in the 200,000 events stays open
    // for many seconds, and no replication slot can be created in its cluster meanwhile.
    let pg = support::private_cluster();
    let db = TestDb::in_cluster(&pg, ERP);
    let config = Toml::new(&db)
        .without_delivery()
        .table("stock", "public.stock_move")
        .object(invoice_object())
        .subscription(sub("stock", "stock", ""))
        .subscription(sub("all", "invoice", ""))
        .write();
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO stock_move SELECT g, 1 FROM generate_series(1, 200000) g");
    wait_until(
        Duration::from_secs(120),
        "200,000 events in the outbox",
        || db.sql("SELECT count(*) FROM walhook.delivery WHERE subscription = 'stock'") == "200000",
    );
    assert_eq!(
        db.sql("SELECT count(DISTINCT event_id) FROM walhook.event"),
        "200000"
    );
    drop(daemon);
}

#[test]
fn exactly_once_into_the_outbox_through_repeated_sigkills() {
    let db = TestDb::new(
        "CREATE TABLE stock_move (id bigint PRIMARY KEY, qty int);
         CREATE PROCEDURE workload() LANGUAGE plpgsql AS $$
         BEGIN
           FOR b IN 0..249 LOOP
             FOR i IN 1..100 LOOP
               INSERT INTO stock_move VALUES (b * 200 + i, 1);
               COMMIT;
             END LOOP;
             INSERT INTO stock_move SELECT b * 200 + 100 + g, 100 FROM generate_series(1, 100) g;
             COMMIT;
           END LOOP;
         END $$;",
    );
    let config = Toml::new(&db)
        .without_delivery()
        .table("stock", "public.stock_move")
        .subscription(sub("stock", "stock", ""))
        .write();
    let mut daemon = start_daemon(&config);
    let url = db.name.clone();
    let workload = std::thread::spawn(move || {
        support::cluster().psql(&url, "CALL workload()").unwrap();
    });
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    while kills < 5 || !workload.is_finished() {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        daemon.signal("KILL");
        daemon.wait(Duration::from_secs(10));
        kills += 1;
        daemon = Daemon::start(&config);
    }
    workload.join().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while db.sql("SELECT count(*) FROM walhook.event") != "50000" {
        let log = daemon.log_text();
        assert!(
            std::time::Instant::now() < deadline,
            "not all 50,000 events captured after {kills} kills: {} rows, {} distinct; log:\n{}",
            db.sql("SELECT count(*) FROM walhook.event"),
            db.sql("SELECT count(DISTINCT key) FROM walhook.event"),
            &log[log.len().saturating_sub(3000)..]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        db.sql(
            "SELECT count(*) || ' ' || count(DISTINCT event_id) || ' ' || count(DISTINCT key) \
             FROM walhook.event"
        ),
        "50000 50000 50000",
        "every change exactly once, after {kills} kills; log of the last run:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM stock_move m WHERE NOT EXISTS \
             (SELECT 1 FROM walhook.event e WHERE e.key = format('{\"id\":%s}', m.id))"
        ),
        "0",
        "no row without its event"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery"), "50000");
}

#[test]
fn a_config_edit_takes_effect_without_restart_and_a_broken_edit_is_refused() {
    let db = TestDb::new(ERP);
    let base = invoices(&db).subscription(sub("all", "invoice", "")).text();
    let config = config_file(&base);
    let daemon = start_daemon(&config);

    // Adding a subscription and a new object on another table.
    let edited = format!(
        "{base}\n{}\n{}\n{}",
        Object::new("partner", "public.res_partner").text(),
        sub("partners", "partner", "").text(),
        sub("late", "invoice", "").text(),
    );
    std::fs::write(&config.path, &edited).unwrap();
    wait_until(
        Duration::from_secs(20),
        "res_partner joins the publication",
        || {
            db.sql("SELECT count(*) FROM pg_publication_tables WHERE tablename = 'res_partner'")
                == "1"
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    db.sql("INSERT INTO res_partner VALUES (1, 'ACME')");
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft', 1)");
    let rows = settle(&db, &daemon, "all");
    let subs: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        subs.contains(&"partners"),
        "{subs:?}\n{}",
        daemon.log_text()
    );
    assert!(subs.contains(&"late"), "{subs:?}");

    // A broken edit: the running config keeps working.
    std::fs::write(
        &config.path,
        format!("{edited}\n[[subscriptions]]\nname = \"bad\"\n"),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "the broken edit is logged", || {
        daemon.log_text().contains("config reload rejected")
    });
    db.sql("INSERT INTO res_partner VALUES (2, 'Globex')");
    let rows = settle(&db, &daemon, "all");
    let partners = rows.iter().filter(|(s, _)| s == "partners").count();
    assert_eq!(partners, 2, "the old config still routes");
}

#[test]
fn editing_a_template_file_takes_effect_without_restart_and_a_broken_one_is_refused() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub(
            "all",
            "invoice",
            "template_file = \"templates/invoice.json.j2\"",
        ))
        .write();
    let templates = config.path.parent().unwrap().join("templates");
    std::fs::create_dir(&templates).unwrap();
    let template = templates.join("invoice.json.j2");
    std::fs::write(&template, r#"{"v": 1, "id": {{ key.id | tojson }}}"#).unwrap();
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &daemon, 1);
    assert_eq!(rows[0].1, json!({"v": 1, "id": 1}));

    // Only the template changes, not the config file.
    std::fs::write(&template, r#"{"v": 2, "id": {{ key.id | tojson }}}"#).unwrap();
    wait_until(Duration::from_secs(20), "the reload is logged", || {
        daemon.log_text().contains("config reloaded")
    });
    db.sql("INSERT INTO account_invoice VALUES (2, 'INV-2', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &daemon, 2);
    assert_eq!(rows[1].1, json!({"v": 2, "id": 2}), "{}", daemon.log_text());

    // A template that does not compile is refused; the running one stays.
    std::fs::write(&template, r#"{"v": 3, "id": {{ key.id | tojson }"#).unwrap();
    wait_until(Duration::from_secs(20), "the broken edit is logged", || {
        daemon.log_text().contains("config reload rejected")
    });
    db.sql("INSERT INTO account_invoice VALUES (3, 'INV-3', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &daemon, 3);
    assert_eq!(rows[2].1, json!({"v": 2, "id": 3}));
}

#[test]
fn a_watch_the_replica_identity_cannot_serve_is_refused_at_start_with_the_fix() {
    let db = TestDb::new(ERP);
    db.sql("ALTER TABLE account_invoice REPLICA IDENTITY DEFAULT");
    let config = invoices(&db)
        .subscription(sub("partner-sync", "invoice", "watch = [\"partner_id\"]"))
        .write();
    let out = run_walhook(&config, &["run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ALTER TABLE public.account_invoice REPLICA IDENTITY FULL"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_slot_dropped_behind_walhooks_back_is_a_loud_error_not_a_silent_restart() {
    let db = TestDb::new(ERP);
    let text = invoices(&db).subscription(sub("all", "invoice", "")).text();
    let config = config_file(&text);
    let mut daemon = start_daemon(&config);
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(30)), Some(0));
    let slot = text.split('"').nth(3).unwrap().to_owned();
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    let out = run_walhook(&config, &["run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("setup --recreate-slot"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "0",
        "no silent new slot"
    );
}

#[test]
fn creating_the_slot_waits_for_open_transactions_says_which_and_sigterm_ends_the_wait() {
    // Its own cluster: the open transaction would hold up every other test's slot.
    let pg = support::private_cluster();
    let db = TestDb::in_cluster(&pg, ERP);
    let elsewhere = TestDb::in_cluster(&pg, "CREATE TABLE t (id int)");
    let config = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .write();
    std::thread::scope(|scope| {
        // A transaction with a transaction id, open in another database, until terminated.
        let holder = scope.spawn(|| {
            let _ = pg.psql(
                &elsewhere.name,
                "BEGIN; INSERT INTO t VALUES (1); SELECT pg_sleep(120); COMMIT;",
            );
        });
        wait_until(Duration::from_secs(10), "the transaction is open", || {
            elsewhere.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL")
                == "1"
        });
        let holder_pid =
            elsewhere.sql("SELECT pid FROM pg_stat_activity WHERE backend_xid IS NOT NULL");
        // Ends the transaction when the scope ends, also when an assertion fails in it (the
        // scope waits for the holder).
        let terminate = Terminate(&elsewhere, holder_pid.clone());

        let mut daemon = Daemon::start(&config);
        wait_until(
            Duration::from_secs(30),
            "the log says what the slot waits for",
            || {
                daemon
                    .log_text()
                    .contains("creating the replication slot waits")
            },
        );
        let log = daemon.log_text();
        assert!(
            log.contains(&format!(
                "process {holder_pid} (database {}",
                elsewhere.name
            )),
            "the log names the open transaction:\n{log}"
        );
        assert!(!log.contains("capturing"), "{log}");

        daemon.signal("TERM");
        assert_eq!(
            daemon.wait(Duration::from_secs(5)),
            Some(0),
            "SIGTERM ends the wait at once"
        );

        drop(terminate);
        holder.join().unwrap();
    });
    // The half-made slot goes with the walsender that was making it; the next start makes
    // the slot afresh and captures.
    wait_until(Duration::from_secs(10), "no slot is left behind", || {
        db.sql("SELECT count(*) FROM pg_replication_slots") == "0"
    });
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &daemon, 1);
    assert_eq!(rows[0].1["key"], json!({"id": 1}));
}

/// Terminates a backend on drop.
struct Terminate<'a>(&'a TestDb<'a>, String);

impl Drop for Terminate<'_> {
    fn drop(&mut self) {
        self.0
            .sql(&format!("SELECT pg_terminate_backend({})", self.1));
    }
}

#[test]
fn a_second_walhook_on_the_same_slot_waits_instead_of_crashing_and_takes_over() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .write();
    let mut first = start_daemon(&config);
    let mut second = Daemon::start(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(second.running(), "log:\n{}", second.log_text());
    let log = second.log_text();
    assert!(log.contains("standby: another walhook holds"), "{log}");
    assert!(
        !log.contains("capturing"),
        "a standby does not capture: {log}"
    );
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    db.sql("INSERT INTO account_invoice VALUES (5, 'INV-5', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &second, 1);
    assert_eq!(rows[0].1["key"], json!({"id": 5}));
    assert!(second.log_text().contains("active: took over"));
}

#[test]
fn sigterm_exits_zero_and_keeps_the_checkpoint() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .write();
    let mut daemon = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft', 1)");
    wait_for_deliveries(&db, &daemon, 1);
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(30)), Some(0));
    let restarted = start_daemon(&config);
    db.sql("INSERT INTO account_invoice VALUES (2, 'INV-2', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &restarted, 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(outbox(&db).len(), 2, "nothing captured twice: {rows:?}");
}

#[test]
fn an_idle_slot_keeps_advancing_while_other_tables_write_wal() {
    let db = TestDb::new(ERP);
    let config = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .write();
    let _daemon = start_daemon(&config);
    // res_partner is not watched: its WAL must not stay pinned by walhook's slot.
    db.sql("INSERT INTO res_partner SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    let written = db.sql("SELECT pg_current_wal_lsn()");
    wait_until(
        Duration::from_secs(40),
        "the slot confirms past the unrelated writes",
        || {
            db.sql(&format!(
                "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots \
             WHERE database = current_database()"
            )) == "t"
        },
    );
}

#[test]
fn sighup_rereads_the_config_and_a_removed_subscription_keeps_its_pending_deliveries() {
    let db = TestDb::new(ERP);
    let first = invoices(&db)
        .subscription(sub("all", "invoice", ""))
        .subscription(sub("leaving", "invoice", ""))
        .text();
    // The config path is a link into another directory: editing the target is invisible
    // to the file watch, so only SIGHUP can make walhook see it.
    let real = config_file(&first);
    let link = config_file("");
    std::fs::remove_file(&link.path).unwrap();
    std::os::unix::fs::symlink(&real.path, &link.path).unwrap();
    let daemon = start_daemon(&link);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft', 1)");
    settle(&db, &daemon, "all");

    let second = format!(
        "{}\n{}\n{}",
        source_of(&first),
        invoice_object().text(),
        sub("all", "invoice", "").text()
    );
    std::fs::write(&real.path, second).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    daemon.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload is logged", || {
        daemon.log_text().contains("config reloaded")
    });
    db.sql("INSERT INTO account_invoice VALUES (2, 'INV-2', 1, 'draft', 1)");
    let rows = settle(&db, &daemon, "all");
    let leaving: Vec<&Value> = rows
        .iter()
        .filter(|(s, _)| s == "leaving")
        .map(|(_, b)| &b["key"]["id"])
        .collect();
    assert_eq!(
        leaving,
        [&json!(1)],
        "no new events, and the old one stays: {rows:?}"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery WHERE subscription = 'leaving' AND status = 'pending'"),
        "2",
        "the invoice and the marker from before the edit stay pending for replay"
    );
}

/// The `[source]` section of a config written by [`invoices`], to keep slot and publication.
fn source_of(config: &str) -> String {
    let at = config.find("\npublication = ").expect("a publication") + 1;
    let end = at + config[at..].find('\n').expect("a line end") + 1;
    config[..end].to_owned()
}

#[test]
fn a_non_utf8_byte_in_a_sql_ascii_database_is_captured_as_a_replacement_character() {
    let pg = support::cluster();
    let name = unique("ascii");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 \
             LC_COLLATE 'C' LC_CTYPE 'C'"
        ),
    )
    .unwrap();
    pg.psql(&name, ERP).unwrap();
    let db = TestDb::existing(pg, &name);
    let config = invoices(&db)
        .subscription(sub("invoices", "invoice", ""))
        .write();
    let check = run_walhook(&config, &["check"]);
    assert!(
        check.stdout.contains("the database encoding is SQL_ASCII"),
        "{}",
        check.stdout
    );
    let daemon = start_daemon(&config);
    // 0xE9 is "é" in Latin-1 and no valid UTF-8 on its own.
    db.sql("INSERT INTO account_invoice VALUES (1, E'caf\\351', 1, 'draft', 1)");
    db.sql("INSERT INTO account_invoice VALUES (2, 'after', 1, 'draft', 1)");
    let rows = wait_for_deliveries(&db, &daemon, 2);
    assert_eq!(rows[0].1["values"]["number"], "caf\u{fffd}");
    assert_eq!(rows[1].1["values"]["number"], "after");
}

#[test]
fn a_when_on_a_renamed_column_makes_the_delivery_dead_with_the_error_and_replayable() {
    let db = TestDb::new(ERP);
    let config = Toml::new(&db)
        .without_delivery()
        .table("partner", "public.res_partner")
        .subscription(sub("acme", "partner", "when = \"values.name == 'ACME'\""))
        .write();
    let daemon = start_daemon(&config);
    db.sql("INSERT INTO res_partner VALUES (1, 'ACME')");
    wait_for_deliveries(&db, &daemon, 1);

    // The ERP renames the column the filter reads: before, every later change was dropped
    // with a line in the log and nothing else.
    db.sql("ALTER TABLE res_partner RENAME COLUMN name TO title");
    db.sql("INSERT INTO res_partner VALUES (2, 'ACME')");
    let rows = wait_for_deliveries(&db, &daemon, 2);
    assert_eq!(rows[1].1["key"], json!({"id": 2}), "{rows:?}");
    let dead = db
        .sql("SELECT status || ' ' || last_error FROM walhook.deliveries WHERE key = '{\"id\":2}'");
    assert!(
        dead.starts_with("dead failed at capture: ") && dead.contains("name"),
        "{dead}"
    );
    assert!(
        daemon
            .log_text()
            .contains("recorded as a dead delivery, replay it once the config is fixed"),
        "{}",
        daemon.log_text()
    );
    let out = run_walhook(
        &config,
        &["replay", "--subscription", "acme", "--status", "dead"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        db.sql("SELECT status FROM walhook.deliveries WHERE key = '{\"id\":2}'")
            .trim(),
        "pending"
    );
}

//! An outbox made by `walhook setup` and filled with SQL, for the commands that read or
//! change it (`deliveries`, `replay`).

use super::{config_file, run_walhook, unique, ConfigFile, Sub, TestDb, Toml};

/// The business table the subscriptions watch.
pub const ERP: &str = "CREATE TABLE account_invoice (id int PRIMARY KEY, number text);";

/// Defines `pg_temp.add(subscription, event_id, status, attempts, last_status_code,
/// last_error, age)`: one event (key `{"id": N}` from `evt_N`) and one delivery of it,
/// created `age` ago, due in 5 minutes, delivered at creation when `delivered`. Put the
/// calls after it in the same SQL text: the function lives as long as the session.
pub const ADD_DELIVERY: &str = "
CREATE FUNCTION pg_temp.add(sub text, evt text, st text, tries int, code int, err text,
                            age interval) RETURNS void LANGUAGE sql AS $$
    WITH e AS (
        INSERT INTO walhook.event (seq, event_id, event_type, object, key, body, commit_lsn,
                                   committed_at, created_at)
        VALUES (nextval('walhook.event_seq'), evt, 'invoice.updated', 'invoice',
                '{\"id\":' || substr(evt, 5) || '}', '{}'::bytea, '0/16B3748',
                now() - age, now() - age)
        RETURNING seq)
    INSERT INTO walhook.delivery (subscription, event_seq, status, attempts, next_attempt_at,
                                  last_status_code, last_error, created_at, delivered_at)
    SELECT sub, seq, st, tries, now() + interval '5 minutes', code, err, now() - age,
           CASE WHEN st = 'delivered' THEN now() - age END
    FROM e
$$;
";

/// A config with subscriptions `invoices` and `partners` on the database.
pub fn config(db: &TestDb<'_>, slot: &str) -> ConfigFile {
    config_file(&config_text(db, slot))
}

/// The text of [`config`], for tests that add to it.
pub fn config_text(db: &TestDb<'_>, slot: &str) -> String {
    invoice_subscriptions(db, slot).text()
}

/// [`config`] in the making.
pub fn invoice_subscriptions(db: &TestDb<'_>, slot: &str) -> Toml {
    Toml::new(db)
        .slot(slot)
        .table("invoice", "public.account_invoice")
        .subscription(Sub::new(
            "invoices",
            "invoice",
            "http://127.0.0.1:9/invoices",
        ))
        .subscription(Sub::new(
            "partners",
            "invoice",
            "http://127.0.0.1:9/partners",
        ))
}

/// A database with the outbox made by `walhook setup` for [`config`], and `rows` (calls of
/// `pg_temp.add`, see [`ADD_DELIVERY`]) in it.
pub fn outbox(rows: &str) -> (TestDb<'static>, ConfigFile) {
    let db = TestDb::new(ERP);
    let slot = unique("slot");
    let config = config(&db, &slot);
    let setup = run_walhook(&config, &["setup"]);
    // These commands need no slot, and the shared cluster has few of them.
    db.sql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{slot}'"
    ));
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);
    db.sql(&format!("{ADD_DELIVERY}{rows}"));
    (db, config)
}

/// A routed `ledger.created` event for row `n`, as capture hands it to the outbox writer.
pub fn ledger_event(n: u32) -> walhook::capture::matcher::RoutedEvent {
    walhook::capture::matcher::RoutedEvent {
        event_id: format!("evt_{n}"),
        event_type: "ledger.created".into(),
        object: "ledger".into(),
        key: format!("{{\"id\":{n}}}"),
        body: b"{}".to_vec(),
        subscriptions: vec!["ledger".into()],
        dead: Vec::new(),
        target: None,
        unrendered: false,
    }
}

/// Migrates the outbox of `db` and writes `events` in one outbox commit, as capture would.
pub async fn write_events(db: &TestDb<'_>, events: Vec<walhook::capture::matcher::RoutedEvent>) {
    let info = walhook::pg::ConnInfo::parse(&db.url).unwrap();
    let client = walhook::pg::connect_sql(&info).await.unwrap();
    walhook::outbox::migrate::migrate(&client, "walhook")
        .await
        .unwrap();
    let outbox = walhook::pg::connect_sql(&info).await.unwrap();
    let mut writer = walhook::outbox::writer::OutboxWriter::new(outbox, "walhook", "s")
        .await
        .unwrap();
    let commit = walhook::capture::Commit {
        lsn: "0/100".parse().unwrap(),
        time: 0,
        xid: 1,
    };
    for event in events {
        writer.add(event, commit);
    }
    writer.commit(commit.lsn).await.unwrap();
}

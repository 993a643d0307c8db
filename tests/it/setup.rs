//! `walhook setup` / `teardown` and what they build on: migrations, the managed publication
//! and the slot. Each test has its own database, slot and publication.

use crate::support;
use support::Toml;

use std::time::Duration;

use support::{config_file, run_walhook, unique, ConfigFile, Finished, SlotGuard, TestDb};
use walhook::config::TableName;

use walhook::outbox::migrate::{latest_version, migrate, MIGRATIONS};
use walhook::pg::connect_sql;
use walhook::pg::conninfo::ConnInfo;
use walhook::pg::Lsn;
use walhook::source::publication::sync_publication;
use walhook::source::replication::ReplicationConnection;
use walhook::source::slot::{create_slot, drop_slot, slot_state, SlotState};
use walhook::source::SetupError;

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text);
CREATE TABLE res_partner (id int PRIMARY KEY, name text);
CREATE TABLE stock_move (id int PRIMARY KEY, qty int);
CREATE TABLE audit_log (at timestamptz, line text);
";

/// Names of one walhook installation in a test database.
struct Names {
    slot: String,
    publication: String,
}

impl Names {
    fn new() -> Names {
        Names {
            slot: unique("slot"),
            publication: unique("pub"),
        }
    }
}

/// A config for `db` with `names` and `body` (objects and subscriptions).
fn config(db: &TestDb<'_>, names: &Names, body: &str) -> ConfigFile {
    config_at(&db.url, names, body)
}

/// [`config`] logging in with `url`, e.g. as a least-privilege role.
fn config_at(url: &str, names: &Names, body: &str) -> ConfigFile {
    Toml::at(url)
        .slot(&names.slot)
        .publication(&names.publication)
        .without_delivery()
        .tail(body)
        .write()
}

const INVOICE_AND_PARTNER: &str = r#"
[objects.invoice]
table = "public.account_invoice"

[[subscriptions]]
name = "partners"
table = "public.res_partner"
url = "https://partner.example.com/hooks"
"#;

fn walhook_ok(file: &ConfigFile, args: &[&str]) -> Finished {
    let out = run_walhook(file, args);
    assert_eq!(
        out.code, 0,
        "walhook {args:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

fn walhook_fails(file: &ConfigFile, args: &[&str]) -> Finished {
    let out = run_walhook(file, args);
    assert_eq!(
        out.code, 1,
        "walhook {args:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

fn published(db: &TestDb<'_>, publication: &str) -> String {
    db.sql(&format!(
        "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1) \
         FROM pg_publication_tables WHERE pubname = '{publication}'"
    ))
}

fn slot_exists(db: &TestDb<'_>, slot: &str) -> bool {
    db.sql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    )) == "1"
}

async fn client(db: &TestDb<'_>) -> tokio_postgres::Client {
    connect_sql(&ConnInfo::parse(&db.url).unwrap())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Migrations

#[tokio::test]
async fn migrations_apply_once_and_a_second_run_is_a_no_op() {
    let db = TestDb::new("");
    let client = client(&db).await;
    let first = migrate(&client, "walhook").await.unwrap();
    assert!(first.created_schema);
    assert_eq!(first.applied.len(), MIGRATIONS.len());
    assert_eq!(first.version, latest_version());
    let second = migrate(&client, "walhook").await.unwrap();
    assert!(!second.created_schema);
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.version, latest_version());
    assert_eq!(
        second.lines(),
        [format!(
            "schema walhook at version {} (already current)",
            latest_version()
        )]
    );
    let expected: Vec<String> = MIGRATIONS
        .iter()
        .map(|m| format!("{}|{}", m.version, m.file))
        .collect();
    assert_eq!(
        db.sql("SELECT version || '|' || name FROM walhook.schema_version ORDER BY version"),
        expected.join("\n")
    );
    // No transaction left open: its advisory lock would still be held. Only this test's
    // database counts: other tests' daemons hold their active locks in theirs.
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        "0"
    );
}

#[tokio::test]
async fn concurrent_migrations_do_not_fail_and_apply_each_file_once() {
    let db = TestDb::new("");
    let (a, b, c) = (client(&db).await, client(&db).await, client(&db).await);
    let (ra, rb, rc) = tokio::join!(
        migrate(&a, "walhook"),
        migrate(&b, "walhook"),
        migrate(&c, "walhook")
    );
    let reports = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
    let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
    assert_eq!(applied, MIGRATIONS.len(), "{reports:?}");
    assert_eq!(
        reports.iter().filter(|r| r.created_schema).count(),
        1,
        "{reports:?}"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.schema_version"),
        MIGRATIONS.len().to_string()
    );
}

#[tokio::test]
async fn the_views_have_exactly_the_spec_columns() {
    let db = TestDb::new("");
    migrate(&client(&db).await, "walhook").await.unwrap();
    let columns = |view: &str| {
        db.sql(&format!(
            "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns \
             WHERE table_schema = 'walhook' AND table_name = '{view}'"
        ))
    };
    assert_eq!(
        columns("deliveries"),
        "id, subscription, event_id, event_type, object, key, status, attempts, \
         next_attempt_at, last_status_code, last_error, created_at, delivered_at"
    );
    assert_eq!(
        columns("attempts"),
        "delivery_id, attempt, trigger, started_at, duration_ms, status_code, error, \
         response_excerpt"
    );
    assert_eq!(
        db.sql(
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.views \
             WHERE table_schema = 'walhook'"
        ),
        "attempts,deliveries"
    );
}

#[tokio::test]
async fn a_schema_name_that_needs_quoting_works() {
    let db = TestDb::new("");
    let client = client(&db).await;
    let report = migrate(&client, "Walhook Outbox").await.unwrap();
    assert_eq!(report.applied.len(), MIGRATIONS.len());
    assert_eq!(
        db.sql("SELECT count(*) FROM \"Walhook Outbox\".schema_version"),
        MIGRATIONS.len().to_string()
    );
    assert!(migrate(&client, "Walhook Outbox")
        .await
        .unwrap()
        .applied
        .is_empty());
}

#[tokio::test]
async fn a_schema_from_a_newer_walhook_is_refused_with_upgrade_advice() {
    let db = TestDb::new("");
    let client = client(&db).await;
    migrate(&client, "walhook").await.unwrap();
    let newer = latest_version() + 1;
    db.sql(&format!(
        "INSERT INTO walhook.schema_version (version, name) VALUES ({newer}, 'future.sql')"
    ));
    let err = migrate(&client, "walhook").await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "the walhook schema walhook is at version {newer}, this walhook knows up to {}; \
             upgrade walhook",
            latest_version()
        )
    );
}

#[tokio::test]
async fn a_failing_migration_names_its_file_and_leaves_nothing_half_done() {
    let db = TestDb::new("CREATE SCHEMA walhook; CREATE TABLE walhook.event (x int);");
    let client = client(&db).await;
    let err = migrate(&client, "walhook").await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "migration sql/0001_outbox.sql failed in schema walhook: relation \"event\" already \
             exists"
        ),
        "{err}"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.schema_version"),
        "0",
        "nothing recorded"
    );
    assert_eq!(
        db.sql("SELECT to_regclass('walhook.checkpoint') IS NULL"),
        "t",
        "the statements before the failing one were rolled back"
    );
}

// ---------------------------------------------------------------------------------------
// Publication and slot through `walhook setup`

#[test]
fn setup_creates_schema_publication_and_slot_and_a_second_run_changes_nothing() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);

    let out = walhook_ok(&file, &["setup"]);
    let slot = &names.slot;
    let publication = &names.publication;
    assert!(
        out.stdout.contains("created schema walhook"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "created publication \"{publication}\" for public.account_invoice, public.res_partner"
        )),
        "{}",
        out.stdout
    );
    let point = db.sql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    assert!(
        out.stdout
            .contains(&format!("created slot \"{slot}\" at {point}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("fills the source server's disk"));
    assert_eq!(
        published(&db, publication),
        "public.account_invoice,public.res_partner"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication \
             WHERE pubname = '{publication}'"
        )),
        "t"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT plugin, slot_type, temporary, database = current_database() \
             FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "pgoutput|logical|f|t"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT commit_lsn FROM walhook.checkpoint WHERE slot = '{slot}'"
        )),
        point,
        "the new slot's consistent point is its checkpoint"
    );

    let again = walhook_ok(&file, &["setup"]);
    assert!(
        again.stdout.contains(&format!(
            "schema walhook at version {} (already current)",
            latest_version()
        )),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains(&format!(
            "publication \"{publication}\" already publishes exactly the configured tables"
        )),
        "{}",
        again.stdout
    );
    assert!(
        again
            .stdout
            .contains(&format!("slot \"{slot}\" already in place (pgoutput")),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("created"), "{}", again.stdout);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "1"
    );
}

#[test]
fn setup_follows_the_config_adding_and_removing_tables() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    walhook_ok(&config(&db, &names, INVOICE_AND_PARTNER), &["setup"]);
    assert_eq!(
        published(&db, &names.publication),
        "public.account_invoice,public.res_partner"
    );

    // The partner subscription goes, a stock object comes.
    let edited = config(
        &db,
        &names,
        r#"
[objects.invoice]
table = "public.account_invoice"

[objects.stock]
table = "public.stock_move"
"#,
    );
    let out = walhook_ok(&edited, &["setup"]);
    let publication = &names.publication;
    assert!(
        out.stdout.contains(&format!(
            "publication \"{publication}\": added public.stock_move"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "publication \"{publication}\": removed public.res_partner"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        published(&db, publication),
        "public.account_invoice,public.stock_move"
    );
}

#[test]
fn a_table_whose_updates_would_break_once_published_is_refused_with_the_fix() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(
        &db,
        &names,
        "[objects.audit]\ntable = \"public.audit_log\"\nkey = [\"at\"]\n",
    );
    let out = walhook_fails(&file, &["setup"]);
    assert!(
        out.stderr.contains(
            "table public.audit_log has no primary key and REPLICA IDENTITY DEFAULT: once it is in \
             publication"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("ALTER TABLE public.audit_log REPLICA IDENTITY FULL;"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            names.publication
        )),
        "0"
    );
    // The business table still takes updates.
    db.sql("INSERT INTO audit_log VALUES (now(), 'x'); UPDATE audit_log SET line = 'y'");
}

#[test]
fn a_for_all_tables_publication_is_left_alone() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    db.sql(&format!(
        "CREATE PUBLICATION {} FOR ALL TABLES",
        names.publication
    ));
    let out = walhook_ok(&config(&db, &names, INVOICE_AND_PARTNER), &["setup"]);
    assert!(
        out.stdout.contains("is FOR ALL TABLES: left as it is"),
        "{}",
        out.stdout
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT puballtables FROM pg_publication WHERE pubname = '{}'",
            names.publication
        )),
        "t"
    );
}

#[tokio::test]
async fn walhooks_own_outbox_tables_are_never_published() {
    let db = TestDb::new(ERP);
    let client = client(&db).await;
    migrate(&client, "walhook").await.unwrap();
    let publication = unique("pub");
    let tables: Vec<TableName> = ["public.account_invoice", "walhook.delivery"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let change = sync_publication(&client, &publication, &tables)
        .await
        .unwrap();
    assert!(change.created);
    assert_eq!(change.skipped_own, [tables[1].clone()]);
    assert_eq!(published(&db, &publication), "public.account_invoice");

    // A second sync with the same list changes nothing.
    let again = sync_publication(&client, &publication, &tables)
        .await
        .unwrap();
    assert!(again.is_unchanged(), "{again:?}");
}

#[tokio::test]
async fn row_filters_column_lists_and_missing_operations_are_reset() {
    let db = TestDb::new(ERP);
    let client = client(&db).await;
    let publication = unique("pub");
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE account_invoice WHERE (id > 10), \
         res_partner (id, name), stock_move WITH (publish = 'insert')"
    ));
    let tables: Vec<TableName> = ["account_invoice", "res_partner", "stock_move"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let change = sync_publication(&client, &publication, &tables)
        .await
        .unwrap();
    assert!(change.publish_fixed, "{change:?}");
    assert_eq!(change.reset, tables[..2], "{change:?}");
    assert!(change.added.is_empty() && change.removed.is_empty());
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
             WHERE p.pubname = '{publication}' AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)"
        )),
        "0"
    );
    assert_eq!(
        published(&db, &publication),
        "public.account_invoice,public.res_partner,public.stock_move"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication \
             WHERE pubname = '{publication}'"
        )),
        "t"
    );
}

#[tokio::test]
async fn concurrent_syncs_of_a_new_publication_both_succeed() {
    let db = TestDb::new(ERP);
    let (a, b) = (client(&db).await, client(&db).await);
    let publication = unique("pub");
    let tables: Vec<TableName> = vec!["account_invoice".parse().unwrap()];
    let (ra, rb) = tokio::join!(
        sync_publication(&a, &publication, &tables),
        sync_publication(&b, &publication, &tables)
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(published(&db, &publication), "public.account_invoice");
}

#[tokio::test]
async fn a_slot_in_use_is_not_dropped_and_the_error_names_who_holds_it() {
    let db = TestDb::new(ERP);
    let client = client(&db).await;
    let info = ConnInfo::parse(&db.url).unwrap();
    let (slot, publication) = (unique("slot"), unique("pub"));
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE account_invoice"
    ));
    let point = create_slot(&info, &slot).await.unwrap();
    assert!(point > Lsn::ZERO);
    let stream = ReplicationConnection::connect(&info)
        .await
        .unwrap()
        .start_replication(
            &slot,
            Lsn::ZERO,
            &[
                ("proto_version", "1"),
                ("publication_names", &format!("\"{publication}\"")),
            ],
        )
        .await
        .unwrap();
    let state = slot_state(&client, &slot).await.unwrap();
    let SlotState::Ready {
        active_pid: Some(pid),
        ..
    } = state
    else {
        panic!("an active slot: {state:?}");
    };

    let err = drop_slot(&client, &slot).await.unwrap_err();
    assert!(
        matches!(&err, SetupError::SlotBusy { pid: p, .. } if *p == pid),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("is in use by process {pid} (application walhook")),
        "{text}"
    );
    assert!(slot_exists(&db, &slot));

    // Once the stream is gone, the slot goes (the walsender may linger a moment).
    drop(stream);
    assert!(drop_slot(&client, &slot).await.unwrap());
    assert!(!slot_exists(&db, &slot));
    assert!(!drop_slot(&client, &slot).await.unwrap(), "already gone");
}

#[tokio::test]
async fn slot_state_tells_missing_ready_and_wrong_kind_apart() {
    let db = TestDb::new(ERP);
    let client = client(&db).await;
    let slot = unique("slot");
    assert_eq!(
        slot_state(&client, &slot).await.unwrap(),
        SlotState::Missing
    );
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')"
    ));
    let state = slot_state(&client, &slot).await;
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    assert_eq!(
        state.unwrap(),
        SlotState::WrongKind {
            plugin: "test_decoding".into(),
            slot_type: "logical".into(),
            database: db.name.clone(),
        }
    );
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let state = slot_state(&client, &slot).await;
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    assert!(
        matches!(
            state.unwrap(),
            SlotState::Ready {
                active_pid: None,
                ..
            }
        ),
        "a fresh, idle pgoutput slot is ready"
    );
}

// ---------------------------------------------------------------------------------------
// REPLICA IDENTITY

#[test]
fn replica_identity_is_set_only_where_a_subscription_needs_old_values() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(
        &db,
        &names,
        r#"
[objects.invoice]
table = "public.account_invoice"

[objects.stock]
table = "public.stock_move"

[[subscriptions]]
name = "partner-sync"
object = "invoice"
watch = ["partner_id"]
url = "https://partner.example.com/hooks"

[[subscriptions]]
name = "partners"
table = "public.res_partner"
url = "https://partner.example.com/hooks"

[[subscriptions]]
name = "stock-created"
object = "stock"
operations = ["create"]
watch = ["qty"]
url = "https://partner.example.com/hooks"
"#,
    );
    let identities = || {
        db.sql(
            "SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) \
             FROM pg_class \
             WHERE relname IN ('account_invoice', 'res_partner', 'stock_move')",
        )
    };

    // Without the flag: nothing altered, but the need is pointed out.
    let out = walhook_ok(&file, &["setup"]);
    assert!(
        out.stdout.contains(
            "note: table public.account_invoice needs REPLICA IDENTITY FULL for \
             subscriptions.partner-sync (watch); run `walhook setup --replica-identity`"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(identities(), "account_invoice=d,res_partner=d,stock_move=d");

    let out = walhook_ok(&file, &["setup", "--replica-identity"]);
    assert!(
        out.stdout.contains(
            "ALTER TABLE public.account_invoice REPLICA IDENTITY FULL; -- for \
             subscriptions.partner-sync (watch)"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("ALTER TABLE").count(),
        1,
        "only the invoice table: {}",
        out.stdout
    );
    assert_eq!(identities(), "account_invoice=f,res_partner=d,stock_move=d");

    let again = walhook_ok(&file, &["setup", "--replica-identity"]);
    assert!(
        again
            .stdout
            .contains("table public.account_invoice: REPLICA IDENTITY already FULL"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("ALTER TABLE"), "{}", again.stdout);
}

// ---------------------------------------------------------------------------------------
// Teardown

#[test]
fn teardown_refuses_while_deliveries_are_pending_and_force_proceeds() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    walhook_ok(&file, &["setup"]);
    db.sql("INSERT INTO walhook.delivery (subscription, event_seq) VALUES ('partners', 1)");

    let out = walhook_fails(&file, &["teardown"]);
    assert!(
        out.stderr
            .contains("1 delivery is still pending in schema walhook"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("walhook deliveries --status pending"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert!(slot_exists(&db, &names.slot), "nothing dropped");
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery"), "1");

    let out = walhook_ok(&file, &["teardown", "--force"]);
    assert!(
        out.stdout.contains("WARNING: dropping 1 pending delivery"),
        "{}",
        out.stdout
    );
    assert!(!slot_exists(&db, &names.slot));
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0"
    );
}

#[test]
fn teardown_drops_slot_publication_and_schema_and_tolerates_missing_pieces() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    walhook_ok(&file, &["setup"]);
    let (slot, publication) = (&names.slot, &names.publication);

    let out = walhook_ok(&file, &["teardown"]);
    for line in [
        format!("dropped slot \"{slot}\""),
        format!("dropped publication \"{publication}\""),
        "dropped schema walhook".to_owned(),
        "fills the source server's disk".to_owned(),
    ] {
        assert!(out.stdout.contains(&line), "{line:?} in:\n{}", out.stdout);
    }
    assert!(!slot_exists(&db, slot));
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{publication}'"
        )),
        "0"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0"
    );

    let again = walhook_ok(&file, &["teardown"]);
    for line in [
        format!("slot \"{slot}\": not present"),
        format!("publication \"{publication}\": not present"),
        "schema walhook: not present".to_owned(),
    ] {
        assert!(
            again.stdout.contains(&line),
            "{line:?} in:\n{}",
            again.stdout
        );
    }
}

#[test]
fn teardown_by_a_role_that_does_not_own_the_publication_refuses_up_front_names_the_owner_fix_and_drops_nothing(
) {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let (role, url) = support::replication_role(&db, "");
    // The README's recipe: the DBA publishes the table, which only its owner may do, and
    // here forgets to hand the publication over.
    let publication = &names.publication;
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE public.account_invoice"
    ));
    let file = config_at(
        &url,
        &names,
        r#"
[objects.invoice]
table = "public.account_invoice"

[[subscriptions]]
name = "erp"
object = "invoice"
url = "https://partner.example.com/hooks"
"#,
    );
    walhook_ok(&file, &["setup"]);

    let out = walhook_fails(&file, &["teardown"]);
    for part in [
        format!("does not own publication \"{publication}\" (owner: postgres)"),
        format!("ALTER PUBLICATION {publication} OWNER TO {role};"),
        "dropped nothing".to_owned(),
    ] {
        assert!(out.stderr.contains(&part), "{part:?} in:\n{}", out.stderr);
    }
    assert!(!out.stdout.contains("dropped"), "{}", out.stdout);
    assert!(slot_exists(&db, &names.slot), "the slot stays");
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{publication}'"
        )),
        "1",
        "the publication stays"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "1",
        "the outbox schema stays"
    );

    // The fix it names is the whole fix.
    db.sql(&format!("ALTER PUBLICATION {publication} OWNER TO {role};"));
    walhook_ok(&file, &["teardown"]);
    assert!(!slot_exists(&db, &names.slot));
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0"
    );
}

#[test]
fn teardown_will_not_drop_a_schema_shared_with_business_tables() {
    let db = TestDb::new(&format!(
        "{ERP} CREATE SCHEMA shared; CREATE TABLE shared.price_list (id int PRIMARY KEY);"
    ));
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(
        &db,
        &names,
        &format!("[outbox]\nschema = \"shared\"\n{INVOICE_AND_PARTNER}"),
    );
    walhook_ok(&file, &["setup"]);
    let out = walhook_fails(&file, &["teardown"]);
    assert!(
        out.stderr
            .contains("it holds objects walhook did not create (price_list)"),
        "{}",
        out.stderr
    );
    assert!(slot_exists(&db, &names.slot), "nothing dropped");
    assert_eq!(db.sql("SELECT count(*) FROM shared.price_list"), "0");
}

// ---------------------------------------------------------------------------------------
// A slot that is gone or lost

#[test]
fn a_slot_dropped_behind_walhooks_back_is_not_silently_recreated() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    walhook_ok(&file, &["setup"]);
    db.sql(&format!(
        "SELECT pg_drop_replication_slot('{}')",
        names.slot
    ));

    let out = walhook_fails(&file, &["setup"]);
    assert!(
        out.stderr.contains("dropped behind walhook's back"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("walhook setup --recreate-slot"),
        "{}",
        out.stderr
    );
    assert!(!slot_exists(&db, &names.slot));

    let out = walhook_ok(&file, &["setup", "--recreate-slot"]);
    assert!(out.stdout.contains("are NOT captured"), "{}", out.stdout);
    assert!(slot_exists(&db, &names.slot));
}

#[test]
fn a_lost_slot_fails_setup_until_recreated_and_the_checkpoint_moves() {
    let pg = support::small_wal_cluster();
    let db = TestDb::in_cluster(&pg, ERP);
    let names = Names::new();
    let slot = &names.slot;
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    walhook_ok(&file, &["setup"]);
    let checkpoint = || {
        db.sql(&format!(
            "SELECT commit_lsn FROM walhook.checkpoint WHERE slot = '{slot}'"
        ))
    };
    let before = checkpoint();

    support::lose_slot(&db, slot, "res_partner");

    let out = walhook_fails(&file, &["setup"]);
    assert!(out.stderr.contains("was invalidated"), "{}", out.stderr);
    assert!(
        out.stderr.contains("walhook setup --recreate-slot"),
        "{}",
        out.stderr
    );

    let out = walhook_ok(&file, &["setup", "--recreate-slot"]);
    assert!(
        out.stdout.contains(&format!("dropped slot \"{slot}\"")),
        "{}",
        out.stdout
    );
    let after = checkpoint();
    assert!(
        out.stdout.contains(&format!(
            "WARNING: capture restarts at {after}. changes committed between {before} and \
             {after} are NOT captured"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT coalesce(wal_status, '') <> 'lost' AND confirmed_flush_lsn = '{after}' \
                    AND '{after}'::pg_lsn > '{before}'::pg_lsn \
             FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "t",
        "a fresh slot, and the checkpoint moved forward to its consistent point"
    );
    walhook_ok(&file, &["setup"]);
}

// ---------------------------------------------------------------------------------------
// Identifiers that are keywords

#[tokio::test]
async fn every_keyword_is_quoted_exactly_as_postgres_quotes_it() {
    let db = TestDb::new("");
    let client = client(&db).await;
    let rows = client
        .query(
            "SELECT word, quote_ident(word) FROM pg_get_keywords() ORDER BY word",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() > 400, "the server lists its keywords");
    for row in rows {
        let (word, theirs): (String, String) = (row.get(0), row.get(1));
        assert_eq!(walhook::pg::quote_ident(&word), theirs, "keyword {word}");
    }
}

#[test]
fn join_left_and_user_work_as_schema_publication_and_table_names() {
    let db = TestDb::new(
        "CREATE SCHEMA \"user\"; \
         CREATE TABLE \"user\".\"left\" (id int PRIMARY KEY, state text);",
    );
    let slot = unique("slot");
    let _guard = SlotGuard::new(&db, &slot);
    let file = config_file(&format!(
        r#"
[source]
url = "{url}"
slot = "{slot}"
publication = "left"

[outbox]
schema = "join"

[[subscriptions]]
name = "lefts"
table = "user.left"
url = "https://left.example.com/hooks"
"#,
        url = db.url,
    ));
    walhook_ok(&file, &["check"]);
    walhook_ok(&file, &["setup"]);
    assert_eq!(published(&db, "left"), "user.left");
    assert_eq!(
        db.sql("SELECT count(*) FROM \"join\".schema_version"),
        MIGRATIONS.len().to_string()
    );
    walhook_ok(&file, &["teardown"]);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'join'"),
        "0"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication WHERE pubname = 'left'"),
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// Teardown drops only what walhook created

/// Sets up walhook, lets the user create `dependent` on the outbox, and checks that
/// teardown refuses naming `named`, and that slot, publication, schema and `survivor` stay.
fn teardown_refuses_because_of(dependent: &str, named: &str, survivor: &str) {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    walhook_ok(&file, &["setup"]);
    db.sql(dependent);

    let out = walhook_fails(&file, &["teardown"]);
    assert!(out.stderr.contains(named), "{named:?} in:\n{}", out.stderr);
    assert!(
        out.stderr.contains("walhook drops nothing"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("CASCADE"), "{}", out.stderr);
    assert!(slot_exists(&db, &names.slot), "the slot stays");
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            names.publication
        )),
        "1",
        "the publication stays"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery"), "0");
    assert_eq!(db.sql(survivor), "1", "{survivor}");
}

#[test]
fn teardown_refuses_to_drop_a_users_view_over_the_outbox_and_names_it() {
    teardown_refuses_because_of(
        "CREATE VIEW public.stuck AS SELECT * FROM walhook.deliveries WHERE status = 'dead'",
        "view stuck depends on view walhook.deliveries",
        "SELECT count(*) FROM pg_views WHERE schemaname = 'public' AND viewname = 'stuck'",
    );
}

#[test]
fn teardown_refuses_to_drop_a_users_function_on_outbox_rows_and_names_it() {
    teardown_refuses_because_of(
        "CREATE FUNCTION public.describe(d walhook.delivery) RETURNS text \
         LANGUAGE sql AS 'SELECT $1.subscription'",
        "function describe(walhook.delivery) depends on type walhook.delivery",
        "SELECT count(*) FROM pg_proc WHERE proname = 'describe'",
    );
}

#[test]
fn teardown_refuses_to_drop_a_business_column_whose_type_lives_in_the_schema() {
    teardown_refuses_because_of(
        "CREATE TYPE walhook.invoice_mood AS ENUM ('calm', 'urgent'); \
         ALTER TABLE public.account_invoice ADD COLUMN mood walhook.invoice_mood",
        "column mood of table account_invoice depends on type walhook.invoice_mood",
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_name = 'account_invoice' AND column_name = 'mood'",
    );
}

// ---------------------------------------------------------------------------------------
// Preflight: nothing half done

#[test]
fn setup_on_a_server_without_logical_wal_fails_with_the_fix_and_creates_nothing() {
    let pg = walhook::ephemeral::EphemeralPostgres::start(&walhook::ephemeral::Options {
        settings: vec![("wal_level".into(), "replica".into())],
        ..Default::default()
    })
    .expect("start a wal_level=replica cluster");
    let db = TestDb::in_cluster(&pg, ERP);
    let names = Names::new();
    let file = config(&db, &names, INVOICE_AND_PARTNER);

    let out = walhook_fails(&file, &["setup"]);
    assert!(
        out.stderr
            .contains("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was created"), "{}", out.stderr);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0",
        "no outbox schema"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication"),
        "0",
        "no publication"
    );
}

#[test]
fn run_with_a_missing_table_stops_before_creating_the_outbox_schema() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let file = config(
        &db,
        &names,
        r#"
[[subscriptions]]
name = "orders"
table = "public.sale_order"
url = "https://orders.example.com/hooks"
"#,
    );
    let out = run_walhook(&file, &["run"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("table public.sale_order does not exist"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0",
        "no outbox schema"
    );
}

// ---------------------------------------------------------------------------------------
// Whose checkpoint it is

#[test]
fn a_second_source_sharing_the_outbox_under_the_same_slot_name_is_refused() {
    let a = TestDb::new(ERP);
    let other = support::private_cluster();
    let b = TestDb::in_cluster(&other, ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&a, &names.slot);
    walhook_ok(&config(&a, &names, INVOICE_AND_PARTNER), &["setup"]);
    let checkpoint = a.sql(&format!(
        "SELECT commit_lsn FROM walhook.checkpoint WHERE slot = '{}'",
        names.slot
    ));

    let shared = config(
        &b,
        &names,
        &format!("[outbox]\nurl = \"{}\"\n{INVOICE_AND_PARTNER}", a.url),
    );
    let out = walhook_fails(&shared, &["setup"]);
    assert!(
        out.stderr.contains("it belongs to another source"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("its own source.slot"), "{}", out.stderr);
    assert_eq!(
        a.sql(&format!(
            "SELECT commit_lsn FROM walhook.checkpoint WHERE slot = '{}'",
            names.slot
        )),
        checkpoint,
        "the first source's checkpoint is untouched"
    );
    assert!(
        !slot_exists(&b, &names.slot),
        "nothing created on the second source"
    );
}

#[test]
fn an_outbox_from_before_the_checkpoint_source_migration_resumes_without_recapturing() {
    let db = TestDb::new(ERP);
    let names = Names::new();
    let _guard = SlotGuard::new(&db, &names.slot);
    let file = config(&db, &names, INVOICE_AND_PARTNER);
    let events = || db.sql("SELECT count(*) FROM walhook.event");

    let mut daemon = support::start_daemon(&file);
    db.sql("INSERT INTO res_partner VALUES (1, 'P1')");
    support::wait_until(Duration::from_secs(30), "the first event", || {
        events() == "1"
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(20)), Some(0));

    // The outbox as walhook made it before 0003: no source on the checkpoint, no version 3.
    db.sql(
        "ALTER TABLE walhook.checkpoint DROP COLUMN system_identifier, DROP COLUMN database; \
         DELETE FROM walhook.schema_version WHERE version = 3",
    );
    db.sql("INSERT INTO res_partner VALUES (2, 'P2')");

    let mut daemon = support::start_daemon(&file);
    support::wait_until(Duration::from_secs(30), "the second event", || {
        events() == "2"
    });
    db.sql("INSERT INTO res_partner VALUES (3, 'P3')");
    support::wait_until(Duration::from_secs(30), "the third event", || {
        events() == "3"
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(20)), Some(0));
    assert_eq!(
        db.sql("SELECT string_agg(key::text, ',' ORDER BY seq) FROM walhook.event"),
        r#"{"id":1},{"id":2},{"id":3}"#,
        "each change once: the carried checkpoint kept its place"
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT database = current_database() AND system_identifier = \
                    (SELECT system_identifier::text FROM pg_control_system()) \
             FROM walhook.checkpoint WHERE slot = '{}'",
            names.slot
        )),
        "t",
        "the old checkpoint now names its source"
    );
}

//! `walhook check`: each problem it claims to detect, found and explained with its fix,
//! and a clean bill of health for a correct setup.

use crate::support;
use support::{Object, Sub, Toml};

use support::{config_file, run_walhook, unique, Finished, TestDb};
use walhook::ephemeral::{EphemeralPostgres, Options, SCRAM_USER, TEST_PASSWORD};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text);
CREATE TABLE res_partner (id int PRIMARY KEY, name text);
";

/// A config for `url` with one invoice object and the given subscription lines.
fn config(url: &str, extra: &str) -> String {
    Toml::at(url)
        .without_delivery()
        .object(Object::new("invoice", "public.account_invoice").fields(&[
            "number",
            "partner_id",
            "state",
        ]))
        .subscription(
            Sub::new(
                "partner-sync",
                "invoice",
                "https://partner.example.com/hooks/invoice",
            )
            .with(extra),
        )
        .text()
}

/// [`support::replication_role`] with `grants`; its name, a config logging in as it, and
/// the config's publication name.
fn replication_role(db: &TestDb<'_>, grants: &str) -> (String, String, String) {
    let (role, url) = support::replication_role(db, grants);
    let text = config(&url, "");
    let publication = text
        .lines()
        .find_map(|l| l.strip_prefix("publication = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    (role, text, publication)
}

fn check(text: &str) -> Finished {
    let file = config_file(text);
    run_walhook(&file, &["check"])
}

fn problem_lines(out: &Finished) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect()
}

/// Asserts exit code 3 and a problem line containing every one of `parts`.
fn assert_problem(out: &Finished, parts: &[&str]) {
    assert_eq!(
        out.code, 3,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let found = problem_lines(out)
        .into_iter()
        .any(|line| parts.iter().all(|p| line.contains(p)));
    assert!(found, "no problem line with {parts:?} in:\n{}", out.stdout);
}

#[test]
fn a_correct_setup_passes_and_says_what_will_be_created() {
    let db = TestDb::new(ERP);
    let out = check(&config(&db.url, ""));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(problem_lines(&out).is_empty(), "{}", out.stdout);
    assert!(out.stdout.contains("wal_level = logical"), "{}", out.stdout);
    assert!(
        out.stdout.contains("does not exist yet: will be created"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("check: everything walhook needs is in place"));
}

#[test]
fn wal_level_replica_is_a_problem_with_the_setting_to_change() {
    let pg = EphemeralPostgres::start(&Options {
        settings: vec![("wal_level".into(), "replica".into())],
        ..Options::default()
    })
    .unwrap();
    let db = TestDb::in_cluster(&pg, ERP);
    let out = check(&config(&db.url, ""));
    assert_problem(
        &out,
        &[
            "wal_level is replica",
            "ALTER SYSTEM SET wal_level = logical",
        ],
    );
}

#[test]
fn a_role_without_replication_is_told_the_grant() {
    let db = TestDb::new(ERP);
    let role = unique("norepl");
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {} TO {role}",
        db.name
    ));
    let url = db.url.replace("postgres@", &format!("{role}@"));
    let out = check(&config(&url, ""));
    assert_problem(
        &out,
        &[
            "may not start replication",
            &format!("ALTER ROLE {role} REPLICATION;"),
        ],
    );
}

#[test]
fn a_misspelled_table_gets_a_suggestion() {
    let db = TestDb::new("CREATE TABLE account_invoce (id int PRIMARY KEY, number text, partner_id int, state text);");
    let out = check(&config(&db.url, ""));
    assert_problem(
        &out,
        &[
            "table public.account_invoice does not exist",
            "did you mean \"public.account_invoce\"?",
        ],
    );
}

#[test]
fn a_misspelled_column_gets_a_suggestion_naming_the_config_key() {
    let db = TestDb::new(
        "CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner text, state text);",
    );
    let out = check(&config(&db.url, ""));
    assert_problem(
        &out,
        &[
            "objects.invoice.fields",
            "no column \"partner_id\"",
            "did you mean \"partner\"?",
        ],
    );
}

#[test]
fn watch_under_replica_identity_default_prints_the_alter_table() {
    let db = TestDb::new(ERP);
    let out = check(&config(&db.url, r#"watch = ["partner_id"]"#));
    assert_problem(
        &out,
        &[
            "subscriptions.partner-sync (watch) need old values",
            "ALTER TABLE public.account_invoice REPLICA IDENTITY FULL;",
        ],
    );
    db.sql("ALTER TABLE account_invoice REPLICA IDENTITY FULL");
    let out = check(&config(&db.url, r#"watch = ["partner_id"]"#));
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn an_object_keyed_outside_the_replica_identity_is_told_deletes_cannot_name_the_row() {
    // Invoices are keyed on their number, but under REPLICA IDENTITY DEFAULT a delete
    // carries only the primary key id: the event could not say which invoice is gone.
    let db = TestDb::new(ERP);
    let keyed_on_number = |extra: &str| {
        config(&db.url, extra).replacen("fields = [", "key = [\"number\"]\nfields = [", 1)
    };
    let out = check(&keyed_on_number(""));
    assert_problem(
        &out,
        &[
            "subscriptions.partner-sync fire on delete",
            "objects.invoice.key: number",
            "REPLICA IDENTITY DEFAULT logs only id of a deleted row",
            "ALTER TABLE public.account_invoice REPLICA IDENTITY FULL;",
        ],
    );

    // A subscription that never sees deletes does not need the key of a deleted row.
    let out = check(&keyed_on_number(r#"operations = ["create", "update"]"#));
    assert_eq!(out.code, 0, "{}", out.stdout);

    // Making the key the replica identity is the other fix.
    db.sql(
        "ALTER TABLE account_invoice ALTER number SET NOT NULL; \
         CREATE UNIQUE INDEX account_invoice_number ON account_invoice (number); \
         ALTER TABLE account_invoice REPLICA IDENTITY USING INDEX account_invoice_number",
    );
    let out = check(&keyed_on_number(""));
    assert_eq!(out.code, 0, "{}", out.stdout);

    // Now the primary key is the one a delete does not carry.
    let out = check(&config(&db.url, ""));
    assert_problem(
        &out,
        &[
            "the primary key: id",
            "REPLICA IDENTITY USING INDEX logs only number of a deleted row",
        ],
    );

    db.sql("ALTER TABLE account_invoice REPLICA IDENTITY FULL");
    let out = check(&keyed_on_number(""));
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn a_table_without_primary_key_is_flagged_before_it_breaks_updates() {
    let db = TestDb::new(
        "CREATE TABLE account_invoice (id int, number text, partner_id int, state text);",
    );
    let out = check(&config(&db.url, ""));
    assert_problem(
        &out,
        &[
            "no primary key and REPLICA IDENTITY DEFAULT",
            "UPDATE and DELETE on it fail",
            "REPLICA IDENTITY FULL",
        ],
    );
}

#[test]
fn an_unreachable_source_is_a_problem_and_hides_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = check(&config(
        &format!("postgres://walhook:hunter2@127.0.0.1:{port}/erp"),
        "",
    ));
    assert_problem(&out, &["cannot connect to", "127.0.0.1"]);
    assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"));
}

#[test]
fn a_password_login_works_and_the_password_never_shows() {
    let db = TestDb::new(ERP);
    // What a least-privilege role needs (see the README's "Privileges"): here it owns the
    // table, which lets it publish it.
    db.sql(&format!(
        "GRANT CREATE ON DATABASE {} TO {SCRAM_USER}; \
         ALTER TABLE account_invoice OWNER TO {SCRAM_USER};",
        db.name
    ));
    let url = support::cluster().url_as(SCRAM_USER, TEST_PASSWORD, &db.name);
    let out = check(&config(&url, ""));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains(TEST_PASSWORD) && !out.stderr.contains(TEST_PASSWORD));
}

#[test]
fn no_free_replication_slot_is_a_problem() {
    let pg = EphemeralPostgres::start(&Options {
        settings: vec![("max_replication_slots".into(), "1".into())],
        ..Options::default()
    })
    .unwrap();
    let db = TestDb::in_cluster(&pg, ERP);
    db.sql("SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')");
    let out = check(&config(&db.url, ""));
    assert_problem(&out, &["no free replication slot", "max_replication_slots"]);
}

#[test]
fn a_slot_retaining_too_much_wal_is_a_problem() {
    let db = TestDb::new(ERP);
    let slot = unique("slot");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    db.sql("INSERT INTO res_partner SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    let text = config(&db.url, "").replacen(
        "slot = \"",
        &format!("max_retained_wal = \"1KB\"\nslot = \"{slot}\"\n# was: \""),
        1,
    );
    let out = check(&text);
    assert_problem(&out, &["retains", "more than source.max_retained_wal"]);
}

#[test]
fn an_invalidated_slot_is_a_loud_problem() {
    let pg = support::small_wal_cluster();
    let db = TestDb::in_cluster(&pg, ERP);
    let slot = unique("slot");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    support::lose_slot(&db, &slot, "res_partner");
    let text =
        config(&db.url, "").replacen("slot = \"", &format!("slot = \"{slot}\"\n# was: \""), 1);
    let out = check(&text);
    assert_problem(&out, &["was invalidated", "walhook setup --recreate-slot"]);
}

#[test]
fn a_slot_left_behind_by_a_killed_tail_is_reported_with_the_drop() {
    let db = TestDb::new(ERP);
    let slot = unique("walhook_tail_leftover");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let out = check(&config(&db.url, ""));
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    assert_problem(
        &out,
        &[
            "left behind",
            &format!("SELECT pg_drop_replication_slot('{slot}');"),
        ],
    );
}

#[test]
fn a_publication_that_does_not_publish_updates_is_a_problem() {
    let db = TestDb::new(ERP);
    let publication = unique("pub");
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE account_invoice WITH (publish = 'insert')"
    ));
    let text = config(&db.url, "").replacen(
        "publication = \"",
        &format!("publication = \"{publication}\"\n# was: \""),
        1,
    );
    let out = check(&text);
    assert_problem(
        &out,
        &["does not publish update, delete", "ALTER PUBLICATION"],
    );
}

#[test]
fn a_bad_config_exits_2_before_touching_the_database() {
    let out = check("[source]\nurl = \"postgres://x@127.0.0.1:1/db\"\nslto = \"x\"\n");
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("walhook.toml:3"), "{}", out.stderr);
    assert!(out.stderr.contains("slto"), "{}", out.stderr);
}

#[test]
fn subscriber_urls_on_private_or_metadata_addresses_are_problems_unless_allowed() {
    let db = TestDb::new(ERP);
    let with_url = |url: &str, delivery: &str| {
        config(&db.url, "").replace("https://partner.example.com/hooks/invoice", url) + delivery
    };
    let out = check(&with_url("http://127.0.0.1:9/hook", ""));
    assert_problem(
        &out,
        &[
            "subscriptions.partner-sync.url",
            "loopback",
            "allow_networks",
        ],
    );

    let out = check(&with_url("http://localhost:9/hook", ""));
    assert_problem(&out, &["localhost resolves to", "loopback"]);

    let allowed = "\n[delivery]\nallow_networks = [\"127.0.0.0/8\"]\n";
    let out = check(&with_url("http://127.0.0.1:9/hook", allowed));
    assert_eq!(out.code, 0, "{}", out.stdout);

    let out = check(&with_url(
        "http://169.254.169.254/latest",
        "\n[delivery]\nallow_networks = [\"169.254.0.0/16\"]\n",
    ));
    assert_problem(&out, &["metadata", "never allowed"]);
}

#[test]
fn a_url_template_is_checked_with_its_placeholders_and_a_templated_host_is_a_note() {
    let db = TestDb::new(ERP);
    let with_url =
        |url: &str| config(&db.url, "").replace("https://partner.example.com/hooks/invoice", url);
    let out = check(&with_url("http://127.0.0.1:9/orders/{{ key.id }}"));
    assert_problem(
        &out,
        &[
            "subscriptions.partner-sync.url",
            "loopback",
            "allow_networks",
        ],
    );

    let out = check(&with_url("https://tenant-{{ key.id }}.example.com/hook"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "subscriptions.partner-sync.url: the host is rendered per event (checked at every delivery)"
        ),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------
// Privileges of a least-privilege role

#[test]
fn a_replication_role_without_grants_gets_each_missing_privilege_with_its_grant() {
    let db = TestDb::new(ERP);
    let (role, text, publication) = replication_role(&db, "");

    let out = check(&text);
    assert_problem(
        &out,
        &[
            "may not SELECT from table public.account_invoice",
            &format!("GRANT SELECT ON TABLE public.account_invoice TO {role};"),
        ],
    );
    assert_problem(
        &out,
        &[
            "does not own table public.account_invoice (owner: postgres)",
            &format!("GRANT postgres TO {role};"),
            &format!("CREATE PUBLICATION {publication} FOR TABLE public.account_invoice;"),
            &format!("ALTER PUBLICATION {publication} OWNER TO {role};"),
        ],
    );

    // What the DBA runs once, as the README's recipe says; then check passes and setup works.
    db.sql(&format!(
        "GRANT SELECT ON TABLE public.account_invoice TO {role}; \
         CREATE PUBLICATION {publication} FOR TABLE public.account_invoice; \
         ALTER PUBLICATION {publication} OWNER TO {role};"
    ));
    let out = check(&text);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("has the table privileges setup, test and tail need"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_publication_owned_by_someone_else_is_reported_with_the_owner_change() {
    let db = TestDb::new(ERP);
    let (role, text, publication) = replication_role(
        &db,
        "GRANT SELECT ON TABLE public.account_invoice TO {role};",
    );
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE public.account_invoice"
    ));
    let out = check(&text);
    assert_problem(
        &out,
        &[
            &format!("does not own publication \"{publication}\""),
            &format!("ALTER PUBLICATION {publication} OWNER TO {role};"),
        ],
    );
}

#[test]
fn check_refuses_every_when_that_run_would_refuse_or_fail_on_with_its_config_line() {
    let db = TestDb::new(ERP);
    // Line 15 of the config is the subscription's `when`.
    for (when, said) in [
        ("values.state = 'posted'", "syntax error"),
        ("value.state == 'posted'", "\"value\" is not a variable"),
        (
            "values.stat == 'posted'",
            "reads values.stat, but \"stat\" is not a field",
        ),
    ] {
        let out = check(&config(&db.url, &format!("when = \"{when}\"")));
        assert_problem(&out, &["walhook.toml:15: subscriptions[0].when: ", said]);
    }
}

#[test]
fn a_when_that_would_spin_or_exhaust_memory_is_refused_by_check_and_run_with_its_line() {
    let db = TestDb::new(ERP);
    // Both once spun a core (or aborted on a 240 TB allocation) for every change, at every
    // restart, with SIGTERM ignored.
    for when in [
        "(range(100000) * 100000000000)|sum > 0",
        "(range(100000) * 100000000000)|list|length > 0",
    ] {
        let text = config(&db.url, &format!("when = \"{when}\""));
        assert_problem(
            &check(&text),
            &[
                "walhook.toml:15: subscriptions[0].when: `*` multiplies numbers only",
                "(column 2)",
            ],
        );
        let file = support::config_file(&text);
        let mut daemon = support::Daemon::start(&file);
        let code = daemon.wait(std::time::Duration::from_secs(30));
        let log = daemon.log_text();
        assert_eq!(code, Some(2), "{log}");
        assert!(
            log.contains("walhook.toml:15: subscriptions[0].when: `*` multiplies numbers only"),
            "{log}"
        );
    }
}

#[test]
fn a_when_multiplying_a_text_column_is_refused_by_check_and_run() {
    let db = TestDb::new(ERP);
    let text = config(&db.url, "when = \"values.number * 2 == 'x'\"");
    assert_problem(
        &check(&text),
        &[
            "walhook.toml:15: subscriptions[0].when: multiplies values.number, but column \
             \"number\" of public.account_invoice is not a number",
        ],
    );
    let file = support::config_file(&text);
    let mut daemon = support::Daemon::start(&file);
    assert_eq!(
        daemon.wait(std::time::Duration::from_secs(30)),
        Some(2),
        "{}",
        daemon.log_text()
    );
    // A number column multiplies fine.
    let out = check(&config(&db.url, "when = \"values.partner_id * 2 > 4\""));
    assert!(
        !problem_lines(&out).iter().any(|l| l.contains("multiplies")),
        "{}",
        out.stdout
    );
}

#[test]
fn a_when_reading_a_column_the_table_lacks_is_a_problem_when_the_object_takes_every_column() {
    let db = TestDb::new(ERP);
    let text = format!(
        r#"
[source]
url = "{url}"
slot = "{slot}"
publication = "{publication}"

[[subscriptions]]
name = "posted"
table = "public.account_invoice"
url = "https://partner.example.com/hooks/invoice"
when = "values.stat == 'posted'"
"#,
        url = db.url,
        slot = unique("slot"),
        publication = unique("pub"),
    );
    let out = check(&text);
    assert_problem(
        &out,
        &[
            "walhook.toml:11: subscriptions[0].when: reads values.stat, but table \
             public.account_invoice has no column \"stat\"; did you mean \"state\"?",
        ],
    );
    // `run` refuses the same at start instead of failing on every event.
    let file = support::config_file(&text);
    let out = run_walhook(&file, &["run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("walhook.toml:11: subscriptions[0].when: reads values.stat"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_backfilled_key_without_a_unique_index_is_a_problem_with_the_index_to_create() {
    // Backfills read in key order, a chunk after the last key sent: invoices keyed on their
    // number need the number to be unique, or a chunk's edge could skip or repeat rows.
    // (FULL: a delete names its row whatever the key.)
    let db = TestDb::new(&format!(
        "{ERP} ALTER TABLE account_invoice REPLICA IDENTITY FULL;"
    ));
    let keyed_on_number = |extra: &str| {
        config(&db.url, extra).replacen("fields = [", "key = [\"number\"]\nfields = [", 1)
    };
    let out = check(&keyed_on_number("backfill = true"));
    assert_problem(
        &out,
        &[
            "objects.invoice.key [\"number\"] is not unique on public.account_invoice: \
             backfills read in key order and need a unique index",
            "fix: CREATE UNIQUE INDEX ON public.account_invoice (number)",
        ],
    );

    // Without backfill = true it is a warning: a backfill may still be asked for.
    let out = check(&keyed_on_number(""));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("note")
            && l.contains("WARNING: objects.invoice.key [\"number\"] is not unique")
            && l.contains("CREATE UNIQUE INDEX ON public.account_invoice (number)")),
        "{}",
        out.stdout
    );

    // A partial unique index says nothing about the rows it leaves out.
    db.sql("CREATE UNIQUE INDEX ON account_invoice (number) WHERE state = 'posted'");
    assert_problem(
        &check(&keyed_on_number("backfill = true")),
        &["objects.invoice.key [\"number\"] is not unique"],
    );

    // The index the fix names is enough; the primary key never needs one of its own.
    db.sql("CREATE UNIQUE INDEX ON account_invoice (number)");
    let out = check(&keyed_on_number("backfill = true"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(!out.stdout.contains("is not unique"), "{}", out.stdout);
    let out = check(&config(&db.url, "backfill = true"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(!out.stdout.contains("is not unique"), "{}", out.stdout);
}

#[test]
fn a_two_column_key_needs_a_unique_index_of_exactly_its_columns_in_any_order() {
    let db = TestDb::new(
        "CREATE TABLE stock_quant (id int PRIMARY KEY, product_id int, location_id int, qty int);
         CREATE UNIQUE INDEX ON stock_quant (product_id, qty);
         CREATE UNIQUE INDEX ON stock_quant (location_id, product_id) WHERE qty > 0;
         ALTER TABLE stock_quant REPLICA IDENTITY FULL;",
    );
    let text = Toml::at(&db.url)
        .without_delivery()
        .object(
            Object::new("quant", "public.stock_quant")
                .with("key = [\"location_id\", \"product_id\"]"),
        )
        .subscription(
            Sub::new("stock", "quant", "https://stock.example.com/hooks").with("backfill = true"),
        )
        .text();
    // (product_id, qty) is unique, which says nothing about (location_id, product_id); the
    // partial index says nothing about the rows it leaves out.
    assert_problem(
        &check(&text),
        &[
            "objects.quant.key [\"location_id\",\"product_id\"] is not unique on \
             public.stock_quant",
            "CREATE UNIQUE INDEX ON public.stock_quant (location_id, product_id)",
        ],
    );
    db.sql("CREATE UNIQUE INDEX ON stock_quant (product_id, location_id)");
    let out = check(&text);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(!out.stdout.contains("is not unique"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------
// Documents and objects that keep state (SPEC §3a)

/// An invoice header and its lines, both under REPLICA IDENTITY DEFAULT.
const INVOICES: &str = "
CREATE TABLE invoice (id int PRIMARY KEY, number text, partner_id int, state text);
CREATE TABLE invoice_line (id int PRIMARY KEY, invoice_id int NOT NULL, sequence int,
                           product text, quantity numeric, price numeric(12,2));
";

/// The invoice document's collection of lines as TOML, with `extra` lines added.
fn lines_collection(extra: &str) -> String {
    format!(
        "\n[[objects.invoice.children]]\nname = \"invoice_lines\"\n\
         table = \"public.invoice_line\"\nparent_key = [\"invoice_id\"]\n\
         fields = [\"product\", \"quantity\", \"price\"]\norder_by = [\"sequence\", \"id\"]\n{extra}"
    )
}

/// A config with the invoice document (`collection` is its children's TOML) and a
/// subscription to it with `extra` lines.
fn document(url: &str, collection: &str, extra: &str) -> String {
    Toml::at(url)
        .without_delivery()
        .object(
            Object::new("invoice", "public.invoice")
                .fields(&["number", "partner_id", "state"])
                .with(collection),
        )
        .subscription(
            Sub::new(
                "invoices",
                "invoice",
                "https://erp.example.com/hooks/invoice",
            )
            .with(extra),
        )
        .text()
}

#[test]
fn a_document_under_replica_identity_default_passes_and_says_it_keeps_its_state() {
    // Watching a header field and the lines needs no REPLICA IDENTITY FULL: walhook keeps
    // the document's state itself.
    let db = TestDb::new(INVOICES);
    let out = check(&document(
        &db.url,
        &lines_collection(""),
        r#"watch = ["state", "invoice_lines"]"#,
    ));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for line in [
        "ok      objects.invoice.children[0] (invoice_lines): rows of public.invoice_line join \
         objects.invoice by invoice_id = id, keyed by id",
        "ok      table public.invoice: replica identity DEFAULT is enough: objects.invoice keeps \
         its state (old values come from walhook's state)",
        "ok      table public.invoice_line: replica identity DEFAULT is enough: \
         objects.invoice.children[0] (invoice_lines) is a collection of a document, which \
         keeps its state (old values come from walhook's state)",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            out.stdout
        );
    }
    // The lines' table is published with the header's.
    assert!(
        out.stdout
            .contains("will be created for public.invoice, public.invoice_line"),
        "{}",
        out.stdout
    );
}

#[test]
fn an_object_with_keep_state_watches_under_replica_identity_default() {
    let db = TestDb::new(ERP);
    let watching = |keep_state: &str| {
        config(&db.url, r#"watch = ["partner_id"]"#).replacen(
            "fields = [",
            &format!("{keep_state}fields = ["),
            1,
        )
    };
    assert_problem(
        &check(&watching("")),
        &["subscriptions.partner-sync (watch) need old values"],
    );
    let out = check(&watching("keep_state = true\n"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "table public.account_invoice: replica identity DEFAULT is enough: \
             objects.invoice keeps its state"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn a_misspelled_child_table_gets_a_suggestion() {
    let db = TestDb::new(INVOICES);
    let text = document(
        &db.url,
        &lines_collection("").replace("public.invoice_line", "public.invoice_lines"),
        "",
    );
    assert_problem(
        &check(&text),
        &[
            "table public.invoice_lines does not exist",
            "did you mean \"public.invoice_line\"?",
        ],
    );
}

#[test]
fn misspelled_child_columns_get_suggestions_naming_the_config_key() {
    let db = TestDb::new(INVOICES);
    let collection = lines_collection("key = [\"line_id\"]\n")
        .replace("[\"invoice_id\"]", "[\"invoice\"]")
        .replace("\"quantity\"", "\"qty\"")
        .replace("[\"sequence\"", "[\"seq\"");
    let out = check(&document(&db.url, &collection, ""));
    for (place, column, suggestion) in [
        ("parent_key", "invoice", "invoice_id"),
        ("key", "line_id", ""),
        ("fields", "qty", ""),
        ("order_by", "seq", "sequence"),
    ] {
        let mut parts = vec![
            format!(
                "objects.invoice.children[0].{place}: table public.invoice_line has no column \
                 \"{column}\""
            ),
            format!("fix: correct objects.invoice.children[0].{place} in the config"),
        ];
        // "qty" is too far from "quantity" to guess; "line_id" has no near column.
        if !suggestion.is_empty() {
            parts.push(format!("did you mean \"{suggestion}\"?"));
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_problem(&out, &parts);
    }
}

#[test]
fn a_parent_key_of_another_type_than_the_header_key_is_a_problem_naming_both() {
    // The header key is an int, the lines hold it as a bigint: 7 and 7 would not be the
    // same key to walhook's state.
    let db =
        TestDb::new(&INVOICES.replace("invoice_id int NOT NULL", "invoice_id bigint NOT NULL"));
    let text = document(&db.url, &lines_collection(""), "");
    assert_problem(
        &check(&text),
        &[
            "objects.invoice.children[0].parent_key: public.invoice_line.invoice_id is bigint, \
             but the header key column public.invoice.id is integer",
            "fix: ALTER TABLE public.invoice_line ALTER COLUMN invoice_id TYPE integer;",
        ],
    );
    db.sql("ALTER TABLE invoice_line ALTER COLUMN invoice_id TYPE integer");
    let out = check(&text);
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn a_parent_key_has_as_many_columns_as_the_headers_primary_key() {
    let db = TestDb::new(
        "CREATE TABLE invoice (company_id int, id int, number text, partner_id int, state text,
                               PRIMARY KEY (company_id, id));
         CREATE TABLE invoice_line (id int PRIMARY KEY, invoice_id int, sequence int,
                                    product text, quantity numeric, price numeric(12,2));",
    );
    assert_problem(
        &check(&document(&db.url, &lines_collection(""), "")),
        &[
            "objects.invoice.children[0].parent_key has 1 column(s) (invoice_id), but the key \
             of public.invoice has 2 (company_id, id)",
            "fix: list in objects.invoice.children[0].parent_key one column of \
             public.invoice_line for each key column of public.invoice, in key order",
        ],
    );
}

#[test]
fn a_child_table_without_primary_key_needs_a_key() {
    let db = TestDb::new(&INVOICES.replace("id int PRIMARY KEY, invoice_id", "id int, invoice_id"));
    let out = check(&document(&db.url, &lines_collection(""), ""));
    assert_problem(
        &out,
        &[
            "objects.invoice.children[0]: table public.invoice_line has no primary key to use \
             as the key of collection \"invoice_lines\"",
            "fix: set objects.invoice.children[0].key = [\"…\"] to the columns that identify a \
             row of public.invoice_line",
        ],
    );
    // Under DEFAULT a table without primary key cannot be published for updates at all.
    assert_problem(
        &out,
        &["table public.invoice_line has no primary key and REPLICA IDENTITY DEFAULT"],
    );

    // A key, and a REPLICA IDENTITY that logs it, are the fix.
    db.sql("ALTER TABLE invoice_line REPLICA IDENTITY FULL");
    let out = check(&document(
        &db.url,
        &lines_collection("key = [\"id\"]\n"),
        "",
    ));
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn a_state_key_the_wal_does_not_log_for_deleted_rows_is_a_problem_with_the_fix() {
    // Lines keyed on (invoice_id, sequence), but a deleted line carries only its id under
    // REPLICA IDENTITY DEFAULT: walhook could not tell which line left the document.
    let db = TestDb::new(INVOICES);
    let keyed = lines_collection("key = [\"invoice_id\", \"sequence\"]\n");
    let text = document(&db.url, &keyed, "");
    assert_problem(
        &check(&text),
        &[
            "table public.invoice_line: objects.invoice.children[0] (invoice_lines) keeps state \
             by its key (objects.invoice.children[0].key: invoice_id, sequence), but REPLICA \
             IDENTITY DEFAULT logs only id of a deleted row",
            "fix: ALTER TABLE public.invoice_line REPLICA IDENTITY FULL;",
        ],
    );
    db.sql("ALTER TABLE invoice_line REPLICA IDENTITY FULL");
    let out = check(&text);
    assert_eq!(out.code, 0, "{}", out.stdout);

    // The same rule for the header's key, also when no subscription fires on delete.
    let text = document(&db.url, &lines_collection(""), r#"operations = ["create"]"#).replacen(
        "fields = [\"number\"",
        "key = [\"number\"]\nfields = [\"number\"",
        1,
    );
    assert_problem(
        &check(&text),
        &[
            "table public.invoice: objects.invoice keeps state by its key (objects.invoice.key: \
             number), but REPLICA IDENTITY DEFAULT logs only id of a deleted row",
            "fix: ALTER TABLE public.invoice REPLICA IDENTITY FULL;",
        ],
    );
}

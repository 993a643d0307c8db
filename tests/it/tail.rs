//! `walhook tail`: the pg_recvlogical of walhook. Real process, real signals.

use crate::support;
use support::{Object, Toml};

use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{config_file, unique, walhook, ConfigFile, TestDb};
use walhook::ephemeral::{EphemeralPostgres, Options};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text);
CREATE TABLE res_partner (id int PRIMARY KEY, name text);
";

fn config(db: &TestDb<'_>, publication: &str) -> ConfigFile {
    Toml::new(db)
        .without_slot()
        .publication(publication)
        .without_delivery()
        .object(Object::new("invoice", "public.account_invoice").fields(&[
            "number",
            "partner_id",
            "state",
        ]))
        .write()
}

/// A running `walhook tail` whose stdout lines arrive on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(config: &ConfigFile, db: &TestDb<'_>) -> Tail {
        Tail::start_with(config, db, &[], "walhook_tail_%", Stdio::inherit())
    }

    /// `walhook tail ARGS`, once a slot named like `slot_like` streams.
    fn start_with(
        config: &ConfigFile,
        db: &TestDb<'_>,
        args: &[&str],
        slot_like: &str,
        stderr: Stdio,
    ) -> Tail {
        let mut command = walhook(config);
        command
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr);
        // A closed terminal's SIGHUP must reach tail as it would from a shell, even when
        // this test runs under `nohup` (which leaves SIGHUP ignored for every child).
        // SAFETY: signal() is async-signal-safe, as pre_exec requires.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start walhook tail");
        let lines = support::stdout_lines(&mut child);
        // Changes count from the moment tail's slot exists and streams.
        wait_for(Duration::from_secs(20), || {
            db.sql(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{slot_like}' \
                 AND active AND database = current_database()"
            )) == "1"
        });
        Tail { child, lines }
    }

    fn signal(&self, name: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    fn next_event(&self, within: Duration) -> Value {
        let line = self.lines.recv_timeout(within).expect("a line from tail");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "tail did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_for(within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tail_prints_each_change_as_a_json_line_and_leaves_nothing_behind() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("absent_pub"));
    let tail = Tail::start(&config, &db);

    db.sql("INSERT INTO res_partner VALUES (1, 'not watched')");
    db.sql("INSERT INTO account_invoice VALUES (7, 'INV-7', 1, 'draft')");
    db.sql("UPDATE account_invoice SET partner_id = 2 WHERE id = 7");

    let created = tail.next_event(Duration::from_secs(20));
    assert_eq!(created["type"], "invoice.created");
    assert_eq!(created["object"], "invoice");
    assert_eq!(created["key"], json!({"id": 7}));
    assert_eq!(
        created["values"],
        json!({"number": "INV-7", "partner_id": 1, "state": "draft"})
    );
    let updated = tail.next_event(Duration::from_secs(20));
    assert_eq!(updated["type"], "invoice.updated");
    assert_eq!(updated["values"]["partner_id"], 2);
    assert!(
        tail.lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing else"
    );

    assert_eq!(tail.terminate(), 0);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walhook_tail_%' AND database = current_database()"),
        "0",
        "tail drops its slot"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication"),
        "0",
        "tail drops the publication it created"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'"),
        "0",
        "tail writes nothing else"
    );
}

#[test]
fn tail_of_a_subscription_prints_only_what_it_fires_on_as_its_template_renders_it() {
    let db = TestDb::new(ERP);
    let text = format!(
        r#"
[source]
url = "{url}"
publication = "{publication}"

[objects.invoice]
table = "public.account_invoice"
name = "account.invoice"
fields = ["number", "partner_id", "state"]

[[subscriptions]]
name = "posted"
object = "invoice"
operations = ["update"]
when = "values.state == 'posted'"
url = "https://erp.example.com/invoices/{{{{ key.id }}}}"
method = {{ update = "PUT" }}
template = '{{{{ {{"invoiceNumber": values.number, "object": object}}|tojson }}}}'

[[subscriptions]]
name = "everything"
object = "invoice"
url = "https://erp.example.com/all"
"#,
        url = db.url,
        publication = unique("absent_pub"),
    );
    let config = config_file(&text);
    let tail = Tail::start_with(
        &config,
        &db,
        &["--subscription", "posted"],
        "walhook_tail_%",
        Stdio::inherit(),
    );

    db.sql("INSERT INTO account_invoice VALUES (7, 'INV-7', 1, 'draft')");
    db.sql("UPDATE account_invoice SET partner_id = 2 WHERE id = 7");
    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 7");

    // Only the update its `when` lets through, as its template renders it.
    let rendered = tail.next_event(Duration::from_secs(20));
    assert_eq!(
        rendered,
        json!({"invoiceNumber": "INV-7", "object": "account.invoice"})
    );
    assert!(
        tail.lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing else"
    );
    assert_eq!(tail.terminate(), 0);

    // A name that is no subscription is a usage error.
    let out = walhook(&config)
        .args(["tail", "--subscription", "postd"])
        .output()
        .expect("run walhook tail");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown subscription \"postd\"; did you mean \"posted\"?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tail_uses_the_configured_publication_when_it_exists() {
    let db = TestDb::new(ERP);
    let publication = unique("pub");
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE account_invoice"
    ));
    let config = config(&db, &publication);
    let tail = Tail::start(&config, &db);
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV-1', 1, 'draft')");
    assert_eq!(
        tail.next_event(Duration::from_secs(20))["key"],
        json!({"id": 1})
    );
    assert_eq!(tail.terminate(), 0);
    assert_eq!(
        db.sql("SELECT string_agg(pubname, ',') FROM pg_publication"),
        publication,
        "the user's publication stays, and no other was made"
    );
}

#[test]
fn tail_on_a_durable_slot_survives_a_postgres_restart_without_losing_or_repeating_a_change() {
    let pg = EphemeralPostgres::start(&Options::default()).unwrap();
    let db = TestDb::in_cluster(&pg, ERP);
    let config = config(&db, &unique("pub"));
    let slot = unique("my_tail");
    let tail = Tail::start_with(&config, &db, &["--slot", &slot], &slot, Stdio::inherit());

    for id in 1..=20 {
        db.sql(&format!(
            "INSERT INTO account_invoice VALUES ({id}, 'INV', 1, 'draft')"
        ));
    }
    // Read some before the restart so that both sides of it are exercised.
    for _ in 0..5 {
        tail.next_event(Duration::from_secs(20));
    }
    pg.restart().unwrap();
    for id in 21..=40 {
        db.sql(&format!(
            "BEGIN; INSERT INTO account_invoice VALUES ({id}, 'INV', 1, 'draft'); \
             UPDATE account_invoice SET state = 'posted' WHERE id = {id}; COMMIT;"
        ));
    }
    let mut seen: Vec<(String, i64)> = Vec::new();
    // 15 left from before the restart, then 20 transactions of two changes each.
    while seen.len() < 15 + 40 {
        let event = tail.next_event(Duration::from_secs(60));
        seen.push((
            event["id"].as_str().unwrap().to_owned(),
            event["key"]["id"].as_i64().unwrap(),
        ));
    }
    assert!(
        tail.lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "no repeats"
    );
    let mut ids: Vec<&String> = seen.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "every event id exactly once");
    let keys: Vec<i64> = seen.iter().map(|(_, k)| *k).collect();
    let mut expected: Vec<i64> = (6..=20).collect();
    expected.extend((21..=40).flat_map(|k| [k, k]));
    assert_eq!(keys, expected, "nothing lost, in commit order");
    assert_eq!(tail.terminate(), 0);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "1",
        "the --slot slot is the user's: tail does not drop it"
    );
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
}

/// Tail's slots in this database, temporary or not.
fn tail_slots(db: &TestDb<'_>) -> String {
    db.sql(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walhook_tail_%' \
         AND database = current_database()",
    )
}

#[test]
fn a_sigkilled_tail_leaves_no_slot_behind() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("absent_pub"));
    let mut tail = Tail::start(&config, &db);
    tail.signal("KILL");
    tail.child.wait().unwrap();
    wait_for(Duration::from_secs(20), || tail_slots(&db) == "0");
}

#[test]
fn a_tail_whose_terminal_closed_leaves_no_slot_behind() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("absent_pub"));
    let mut tail = Tail::start(&config, &db);
    tail.signal("HUP");
    wait_for(Duration::from_secs(20), || {
        tail.child.try_wait().unwrap().is_some()
    });
    wait_for(Duration::from_secs(20), || tail_slots(&db) == "0");
}

#[test]
fn after_a_postgres_restart_tail_warns_that_changes_in_the_gap_may_be_missing() {
    let pg = EphemeralPostgres::start(&Options::default()).unwrap();
    let db = TestDb::in_cluster(&pg, ERP);
    let config = config(&db, &unique("pub"));
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let tail = Tail::start_with(&config, &db, &[], "walhook_tail_%", stderr.into());
    pg.restart().unwrap();
    wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&stderr_path)
            .unwrap_or_default()
            .contains("changes committed while it was disconnected may be missing")
    });
    // And it streams again.
    db.sql("INSERT INTO account_invoice VALUES (1, 'INV', 1, 'draft')");
    let event = tail.next_event(Duration::from_secs(30));
    assert_eq!(event["type"], "invoice.created");
    assert_eq!(tail.terminate(), 0);
}

#[test]
fn tail_refuses_to_publish_a_table_whose_updates_would_then_fail() {
    let db = TestDb::new(
        "CREATE TABLE account_invoice (id int, number text, partner_id int, state text);",
    );
    let config = config(&db, &unique("absent_pub"));
    let out = support::run_walhook(&config, &["tail"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("UPDATE and"), "{}", out.stderr);
    assert!(
        out.stderr.contains("REPLICA IDENTITY FULL"),
        "{}",
        out.stderr
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication"), "0");
    db.sql("UPDATE account_invoice SET state = 'x'");
}

#[test]
fn tail_by_a_role_without_table_ownership_refuses_up_front_with_the_owner_fix_and_creates_no_slot_or_publication(
) {
    let db = TestDb::new(ERP);
    let (role, url) = support::replication_role(&db, "");
    let publication = unique("absent_pub");
    let config = config_file(&format!(
        r#"
[source]
url = "{url}"
publication = "{publication}"

[objects.invoice]
table = "public.account_invoice"
"#
    ));
    let out = support::run_walhook(&config, &["tail"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for part in [
        "does not own table public.account_invoice (owner: postgres)",
        &format!("GRANT postgres TO {role};"),
        &format!(
            "CREATE PUBLICATION {publication} FOR TABLE public.account_invoice; \
             ALTER PUBLICATION {publication} OWNER TO {role};"
        ),
        "created no slot and no publication",
    ] {
        assert!(out.stderr.contains(part), "{part:?} in:\n{}", out.stderr);
    }
    assert_eq!(tail_slots(&db), "0");
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication"), "0");

    // The DBA runs the statement it names once; then tail streams as that role.
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE public.account_invoice; \
         ALTER PUBLICATION {publication} OWNER TO {role};"
    ));
    let tail = Tail::start(&config, &db);
    db.sql("INSERT INTO account_invoice VALUES (8, 'INV-8', 1, 'draft')");
    assert_eq!(
        tail.next_event(Duration::from_secs(20))["type"],
        "invoice.created"
    );
    assert_eq!(tail.terminate(), 0);
}

#[test]
fn tail_of_a_document_subscription_says_it_needs_run_and_how_to_see_the_rows() {
    let db = TestDb::new(
        "CREATE TABLE invoice (id int PRIMARY KEY, state text);
         CREATE TABLE invoice_line (id int PRIMARY KEY, invoice_id int, product text);",
    );
    let config = Toml::new(&db)
        .object(
            Object::new("invoice", "public.invoice").child(support::Child::new(
                "invoice_lines",
                "public.invoice_line",
                &["invoice_id"],
            )),
        )
        .subscription(support::Sub::new("all", "invoice", "http://127.0.0.1:9/x"))
        .write();
    let out = support::run_walhook(&config, &["tail", "--subscription", "all"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("subscription all: objects.invoice keeps its state")
            && out.stderr.contains("without --subscription"),
        "{}",
        out.stderr
    );
}

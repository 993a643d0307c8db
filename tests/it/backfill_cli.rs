//! `walhook backfill` and the admin API's backfill calls (SPEC §1, §3b, §7): asking for a
//! backfill writes the request row a running daemon picks up, `--where` is tried on the
//! source first, `--status` shows every backfill, `--cancel` stops one. The CLI stories need
//! no daemon (the row is what the command produces); the API stories run one, and since
//! that daemon works on what it is asked, they only check what a backfill at work keeps.

use crate::support;
use support::Sub;

use std::time::Duration;

use serde_json::Value;
use support::http::Http;
use support::{config_file, run_walhook, start_daemon, unique, ConfigFile, Finished, TestDb};

/// Three invoices, analyzed so that the planner's estimate is exact.
const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, state text);
INSERT INTO account_invoice VALUES (1, 'INV/1', 'draft'), (2, 'INV/2', 'posted'),
                                   (3, 'INV/3', 'posted');
ANALYZE account_invoice;
CREATE SEQUENCE invoice_number;
";

/// `invoices` and `partners` on the invoices, and `archive`, switched off.
fn config_text(db: &TestDb<'_>, slot: &str, extra: &str) -> String {
    support::outbox::invoice_subscriptions(db, slot)
        .source(extra)
        .subscription(
            Sub::new("archive", "invoice", "http://127.0.0.1:9/archive").with("active = false"),
        )
        .text()
}

/// A database with the outbox made by `walhook setup`, and a config for it.
fn outbox() -> (TestDb<'static>, ConfigFile) {
    let db = TestDb::new(ERP);
    let slot = unique("slot");
    let config = config_file(&config_text(&db, &slot, ""));
    let setup = run_walhook(&config, &["setup"]);
    // These commands need no slot, and the shared cluster has few of them.
    db.sql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{slot}'"
    ));
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);
    (db, config)
}

/// `walhook backfill ARGS…`.
fn backfill(config: &ConfigFile, args: &[&str]) -> Finished {
    run_walhook(config, &[&["backfill"], args].concat())
}

/// `walhook backfill ARGS…`, which must succeed; its stdout.
fn backfilled(config: &ConfigFile, args: &[&str]) -> String {
    let out = backfill(config, args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out.stdout
}

/// The backfill rows as `id|subscription|state|filter|requested_by|finished`, oldest first.
fn rows(db: &TestDb<'_>) -> Vec<String> {
    db.sql(
        "SELECT id, subscription, state, coalesce(filter, '-'), requested_by, \
                finished_at IS NOT NULL \
         FROM walhook.backfill ORDER BY id",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The id of the latest backfill.
fn latest_id(db: &TestDb<'_>) -> i64 {
    db.sql("SELECT max(id) FROM walhook.backfill")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_backfill_is_asked_for_listed_and_cancelled() {
    let (db, config) = outbox();
    assert!(backfilled(&config, &["--status"]).starts_with("no backfills yet"));

    let said = backfilled(&config, &["invoices"]);
    let id = latest_id(&db);
    assert_eq!(
        said.trim_end(),
        format!(
            "backfill {id} of \"invoices\" requested: public.account_invoice, about 3 rows; \
             the running daemon starts it within seconds (progress: walhook backfill --status)"
        )
    );
    assert_eq!(rows(&db), [format!("{id}|invoices|running|-|cli|f")]);

    // One at a time per subscription: the second ask names the running one.
    let again = backfill(&config, &["invoices"]);
    assert_eq!(again.code, 1, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains(&format!(
            "subscription \"invoices\" is being backfilled already (backfill {id}); see \
             `walhook backfill --status`, or stop it with `walhook backfill --cancel invoices`"
        )),
        "{}",
        again.stderr
    );
    assert_eq!(rows(&db).len(), 1);

    // Another subscription may be backfilled alongside.
    backfilled(&config, &["partners", "--where", "state = 'posted'"]);
    let status = backfilled(&config, &["--status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 3, "{status}");
    assert!(
        lines[0].starts_with("ID  SUBSCRIPTION  STATE    ROWS  RATE"),
        "{status}"
    );
    assert!(lines[1].contains("partners      running  0"), "{status}");
    assert!(
        lines[2].starts_with(&format!("{id}   invoices      running  0")),
        "{status}"
    );

    let json = backfilled(&config, &["--status", "--json"]);
    let list: Value = serde_json::from_str(&json).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    assert_eq!(first["subscription"], "partners");
    assert_eq!(first["state"], "running");
    assert_eq!(first["where"], "state = 'posted'");
    assert_eq!(first["requested_by"], "cli");
    assert_eq!(first["rows"], 0);
    assert!(first["finished_at"].is_null());
    for field in [
        "id",
        "rows_estimate",
        "chunks",
        "rows_per_second",
        "last_key",
        "error",
        "started_at",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(list[1]["id"], id);

    let cancelled = backfilled(&config, &["--cancel", "invoices"]);
    assert!(
        cancelled.starts_with(&format!(
            "backfill {id} of \"invoices\" cancelled after 0 rows"
        )),
        "{cancelled}"
    );
    assert_eq!(rows(&db)[0], format!("{id}|invoices|cancelled|-|cli|t"));

    // Nothing runs for it any more; a typo gets the closest name.
    let none = backfill(&config, &["--cancel", "invoices"]);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr
            .contains("no backfill of \"invoices\" is running; `walhook backfill --status`"),
        "{}",
        none.stderr
    );
    let typo = backfill(&config, &["--cancel", "partnres"]);
    assert_eq!(typo.code, 1);
    assert!(
        typo.stderr.contains("did you mean \"partners\"?"),
        "{}",
        typo.stderr
    );

    // Cancelled, it may be asked for again.
    backfilled(&config, &["invoices"]);
    assert_eq!(rows(&db).len(), 3);
}

#[test]
fn where_is_tried_on_the_source_before_anything_is_asked() {
    let (db, config) = outbox();
    let said = backfilled(&config, &["invoices", "--where", "state = 'posted'"]);
    assert!(
        said.starts_with(&format!(
            "backfill {} of \"invoices\" requested: public.account_invoice where state = \
             'posted', about 2 rows;",
            latest_id(&db)
        )),
        "{said}"
    );
    assert_eq!(
        rows(&db),
        [format!(
            "{}|invoices|running|state = 'posted'|cli|f",
            latest_id(&db)
        )]
    );
    backfilled(&config, &["--cancel", "invoices"]);

    let refused = |filter: &str, parts: &[&str]| {
        let out = backfill(&config, &["invoices", "--where", filter]);
        assert_eq!(out.code, 2, "{filter}: {}{}", out.stdout, out.stderr);
        for part in parts {
            assert!(
                out.stderr.contains(part),
                "{filter}: no {part:?} in {}",
                out.stderr
            );
        }
    };
    refused(
        "state = = 'posted'",
        &[
            "walhook backfill: the where condition \"state = = 'posted'\" does not work on \
             public.account_invoice: syntax error at or near \"=\" (SQLSTATE 42601)",
        ],
    );
    refused(
        "numbr = 'INV/1'",
        &[
            "column \"numbr\" does not exist (SQLSTATE 42703)",
            "hint: Perhaps you meant to reference the column \"account_invoice.number\"",
        ],
    );
    // One statement only: the second is never run, also when the condition closes the
    // parenthesis around it to make room for one.
    refused(
        "true; DROP TABLE account_invoice",
        &["syntax error at or near \";\""],
    );
    refused(
        "true); DROP TABLE account_invoice; SELECT (1",
        &["cannot insert multiple commands into a prepared statement"],
    );
    // Nothing a condition does may write: not a data-modifying CTE, not a sequence.
    refused(
        "id IN (WITH d AS (DELETE FROM account_invoice RETURNING id) SELECT id FROM d)",
        &["data-modifying statement"],
    );
    refused(
        "nextval('invoice_number') > 0",
        &["cannot execute nextval() in a read-only transaction"],
    );
    refused("  ", &["the where condition is empty"]);
    assert_eq!(
        db.sql("SELECT count(*) FROM account_invoice").trim(),
        "3",
        "the invoices are all still there"
    );
    assert_eq!(
        db.sql("SELECT last_value, is_called FROM invoice_number")
            .trim(),
        "1|f",
        "the sequence never moved"
    );
    assert_eq!(rows(&db).len(), 1, "no refused condition was asked for");
}

#[test]
fn unknown_and_switched_off_subscriptions_are_refused() {
    let (db, config) = outbox();
    let out = backfill(&config, &["invoces"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "walhook backfill: unknown subscription \"invoces\": not in the config; did you \
             mean \"invoices\"?"
        ),
        "{}",
        out.stderr
    );
    let out = backfill(&config, &["archive"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("subscription \"archive\" has active = false in the config"),
        "{}",
        out.stderr
    );
    assert!(rows(&db).is_empty());

    // Usage: one of SUBSCRIPTION, --status, --cancel; --json and --follow go with --status.
    for args in [
        &[][..],
        &["invoices", "--status"],
        &["--json"],
        &["--status", "--json", "--follow"],
        &["--where", "id > 1"],
    ] {
        let out = backfill(&config, args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
    }
}

#[test]
fn status_follow_shows_progress_until_no_backfill_runs() {
    let (db, config) = outbox();
    let idle = backfilled(&config, &["--status", "--follow"]);
    assert_eq!(idle.trim_end(), "no backfill is running");

    backfilled(&config, &["invoices"]);
    let id = latest_id(&db);
    // No daemon runs here: the test plays its part, one chunk of two rows, then cancels.
    let name = db.name.clone();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        let db_sql = |sql: &str| support::cluster().psql(&name, sql).expect("run SQL");
        db_sql(&format!(
            "UPDATE walhook.backfill SET rows = 2, chunks = 1, rows_estimate = 3 WHERE id = {id}"
        ));
        std::thread::sleep(Duration::from_millis(1500));
        db_sql(&format!(
            "UPDATE walhook.backfill SET state = 'cancelled', finished_at = now() WHERE id = {id}"
        ));
    });
    let out = backfilled(&config, &["--watch", "--status"]);
    worker.join().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    // Not a terminal: a line a second, then how it ended.
    assert!(lines.len() >= 3, "{out}");
    assert!(lines[0].starts_with("invoices: 0 rows"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("invoices: 2 / 3 rows (66%)")),
        "{out}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        format!("invoices: cancelled, 2 rows (backfill {id})")
    );
    assert!(!out.contains('\r'), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// The admin API

const ADMIN_TOKEN: &str = "backfill-admin-token";

/// A daemon whose backfills go at one row a second, so one stays running through a test.
struct Api {
    db: TestDb<'static>,
    config: ConfigFile,
    http: Http,
    _daemon: support::Daemon,
}

impl Api {
    fn start() -> Api {
        let db = TestDb::new(&format!(
            "{ERP} INSERT INTO account_invoice SELECT g, 'INV/' || g, 'posted' \
             FROM generate_series(4, 200) g; ANALYZE account_invoice;"
        ));
        let text = config_text(&db, &unique("slot"), "backfill_rows_per_second = 1");
        let config = config_file(&format!(
            "{text}\n[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n"
        ));
        let daemon = start_daemon(&config);
        let http = Http::of(&daemon);
        Api {
            db,
            config,
            http,
            _daemon: daemon,
        }
    }

    /// `method path` with the token and `body`: status and JSON.
    fn call(&self, method: &str, path: &str, token: bool, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self
            .http
            .call(method, path, token.then_some(ADMIN_TOKEN), body);
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    fn ask(&self, name: &str, body: Option<&str>) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/api/v1/subscriptions/{name}/backfill"),
            true,
            body,
        )
    }
}

#[test]
fn the_api_asks_for_a_backfill_and_lists_them() {
    let api = Api::start();

    // A write call: the token is needed.
    let (status, _) = api.call(
        "POST",
        "/api/v1/subscriptions/invoices/backfill",
        false,
        None,
    );
    assert_eq!(status, 401);

    let (status, answer) = api.ask("invoices", Some(r#"{"where": "id > 100"}"#));
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_i64().unwrap();
    assert_eq!(answer["subscription"], "invoices");
    assert_eq!(answer["state"], "running");
    assert_eq!(answer["where"], "id > 100");
    assert_eq!(answer["requested_by"], "api");
    assert_eq!(answer["table"], "public.account_invoice");
    // The planner's estimate of the 100 rows after id 100.
    let expected = answer["expected_rows"].as_i64().unwrap();
    assert!((80..=120).contains(&expected), "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("backfill {id} of \"invoices\" requested")),
        "{answer}"
    );
    assert_eq!(
        api.db
            .sql(&format!(
                "SELECT subscription, filter, requested_by FROM walhook.backfill WHERE id = {id}"
            ))
            .trim(),
        "invoices|id > 100|api"
    );

    // At one row a second it is still running: asking again is a conflict.
    let (status, answer) = api.ask("invoices", None);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains(&format!("is being backfilled already (backfill {id})")),
        "{answer}"
    );

    let (status, answer) = api.ask("invoces", None);
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        answer["error"],
        "unknown subscription \"invoces\": not in the config; did you mean \"invoices\"?"
    );
    let (status, answer) = api.ask("archive", None);
    assert_eq!(status, 409, "{answer}");

    let (status, answer) = api.ask("partners", Some(r#"{"where": "numbr = 'x'"}"#));
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("does not work on public.account_invoice")
            && error.contains("column \"numbr\" does not exist"),
        "{error}"
    );
    let (status, answer) = api.ask("partners", Some(r#"{"wehre": "id > 1"}"#));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("did you mean \"where\""),
        "{answer}"
    );

    let (status, answer) = api.call("GET", "/api/v1/backfills", false, None);
    assert_eq!(status, 200, "{answer}");
    let list = answer["backfills"].as_array().unwrap();
    assert_eq!(list.len(), 1, "only the accepted one: {answer}");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["subscription"], "invoices");
    assert_eq!(list[0]["requested_by"], "api");
    assert!(list[0]["started_at"].is_string());

    // The endpoint list names the new calls.
    let (status, answer) = api.call("GET", "/api/v1/nothing", false, None);
    assert_eq!(status, 404);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("GET /api/v1/backfills") && error.contains("replay|backfill"),
        "{error}"
    );

    // The metrics exist from the start, per subscription.
    let metrics = api.http.metrics();
    assert!(
        metrics.contains("walhook_backfill_rows_total{subscription=\"invoices\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("walhook_backfills_running "), "{metrics}");

    // The CLI stops what the API started.
    let out = backfill(&api.config, &["--cancel", "invoices"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let (_, answer) = api.call("GET", "/api/v1/backfills", false, None);
    assert_eq!(answer["backfills"][0]["state"], "cancelled");
}

#[test]
fn an_outbox_made_before_backfills_says_how_to_bring_it_up_to_date() {
    let (db, config) = outbox();
    // As an outbox made by a walhook before migration 0006 looks.
    db.sql("DROP TABLE walhook.backfill");
    let out = backfill(&config, &["--status"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "the outbox schema walhook has no backfill yet (it was made by an older walhook): \
             run `walhook setup`, or start `walhook run`, to bring it up to date"
        ),
        "{}",
        out.stderr
    );
}

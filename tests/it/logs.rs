//! The daemon's log (SPEC §7, §6): human-readable by default, one JSON object per line with
//! `--log-format json`; one line per notable event with the subscription, event id and key
//! as fields; never a secret, not even at debug level.
//!
//! Each test runs a subscription that uses every kind of secret — a signing secret, a bearer
//! token, a custom header, a token in the URL's query, and the database password — against a
//! receiver that answers 500 with no retries left, so a delivery goes dead.

use crate::support;
use support::{Sub, Toml};

use std::time::Duration;

use serde_json::Value;
use support::{start_daemon_with, verify, wait_until, Reply, Subscriber};
use support::{ConfigFile, TestDb};
use walhook::ephemeral::{SCRAM_USER, TEST_PASSWORD};

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BEARER_TOKEN: &str = "bearer-Tq83nWzV5kLc";
const HEADER_VALUE: &str = "header-Hs72pXeR4mJd";
const URL_TOKEN: &str = "query-Vb61cKsN9wQa";

/// Every value that must never be in the log, with what it is.
fn secrets() -> [(&'static str, &'static str); 6] {
    [
        ("the signing secret", SIGNING_SECRET),
        (
            "the signing secret's key",
            SIGNING_SECRET.trim_start_matches("whsec_"),
        ),
        ("the bearer token", BEARER_TOKEN),
        ("the custom header's value", HEADER_VALUE),
        ("the token in the URL", URL_TOKEN),
        ("the database password", TEST_PASSWORD),
    ]
}

/// The secrets reach walhook only through the environment (`${…}`).
fn environment() -> Vec<(&'static str, &'static str)> {
    vec![
        ("LOGS_TEST_SIGNING_SECRET", SIGNING_SECRET),
        ("LOGS_TEST_BEARER_TOKEN", BEARER_TOKEN),
        ("LOGS_TEST_HEADER_VALUE", HEADER_VALUE),
        ("LOGS_TEST_URL_TOKEN", URL_TOKEN),
        ("LOGS_TEST_DB_PASSWORD", TEST_PASSWORD),
    ]
}

/// A database walhook reaches as a role that authenticates with a password (SCRAM), with
/// the rights `run` needs: create its schema, publish the table it owns, replicate.
fn database() -> TestDb<'static> {
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    db.sql(&format!(
        "GRANT CREATE ON DATABASE {} TO {SCRAM_USER}; ALTER TABLE ledger OWNER TO {SCRAM_USER};",
        db.name
    ));
    db
}

fn config(db: &TestDb<'_>, receiver: &Subscriber) -> ConfigFile {
    let port = db.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let url = receiver.url("/hooks");
    Toml::at(&format!(
        "postgres://{SCRAM_USER}:${{LOGS_TEST_DB_PASSWORD}}@127.0.0.1:{port}/{}",
        db.name
    ))
    .delivery("retry_schedule = []")
    .table("ledger", "public.ledger")
    .subscription(
        Sub::new(
            "ledger-sync",
            "ledger",
            &format!("{url}?token=${{LOGS_TEST_URL_TOKEN}}"),
        )
        .secret("${LOGS_TEST_SIGNING_SECRET}")
        .with(
            "auth = { type = \"bearer\", token = \"${LOGS_TEST_BEARER_TOKEN}\" }\n\
                 headers = { \"X-Api-Key\" = \"${LOGS_TEST_HEADER_VALUE}\" }",
        ),
    )
    .write()
}

/// What one run left behind.
struct Run {
    /// Everything the daemon wrote on stderr, from start to exit.
    log: String,
    /// The dead delivery's event id.
    event_id: String,
}

/// Starts `walhook ARGS… run` (log level `WALHOOK_LOG=walhook=debug,info`), lets one
/// delivery go dead against a receiver answering 500, checks that the receiver did get every
/// credential, and stops the daemon with SIGTERM.
fn dead_delivery(args: &[&str]) -> Run {
    let db = database();
    let receiver = Subscriber::start();
    receiver.respond(|_| Reply::status(500).body("receiver is down"));
    let config = config(&db, &receiver);
    let mut daemon = start_daemon_with(&config, args, &environment());

    db.sql("INSERT INTO ledger VALUES (7, 0)");
    wait_until(Duration::from_secs(30), "the delivery goes dead", || {
        db.sql("SELECT status FROM walhook.deliveries") == "dead"
            && daemon.log_text().contains("delivery dead")
    });

    // The secrets were in use: the request carried every one of them.
    let seen = receiver.wait_for(1, Duration::from_secs(5));
    let request = &seen[0];
    assert_eq!(request.path, format!("/hooks?token={URL_TOKEN}"));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {BEARER_TOKEN}").as_str())
    );
    assert_eq!(request.header("x-api-key"), Some(HEADER_VALUE));
    verify(request, SIGNING_SECRET).expect("signed with the secret");

    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(30)), Some(0));
    Run {
        log: daemon.log_text(),
        event_id: db.sql("SELECT event_id FROM walhook.deliveries"),
    }
}

/// Fails naming the secret, and the line it is on.
fn assert_no_secret(log: &str) {
    for (what, value) in secrets() {
        if let Some(line) = log.lines().find(|line| line.contains(value)) {
            panic!("{what} is in the log:\n{line}");
        }
    }
}

/// Every string in a JSON value, recursively (keys included).
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                out.push(key.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_delivery_in_fields_and_no_secret() {
    let run = dead_delivery(&["--log-format", "json"]);

    let lines: Vec<Value> = run
        .log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}):\n{line}"))
        })
        .collect();
    assert!(lines.len() > 5, "{}", run.log);
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["target"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let levels: Vec<&str> = lines.iter().filter_map(|l| l["level"].as_str()).collect();
    assert!(
        levels.contains(&"DEBUG"),
        "debug lines are part of what is checked: {levels:?}"
    );

    let dead: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("delivery dead"))
        })
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "one line for the dead delivery:\n{}",
        run.log
    );
    let dead = dead[0];
    assert_eq!(dead["level"], "ERROR", "{dead}");
    let fields = &dead["fields"];
    assert_eq!(fields["subscription"], "ledger-sync", "{dead}");
    assert_eq!(fields["event_id"], run.event_id.as_str(), "{dead}");
    assert_eq!(fields["key"], r#"{"id":7}"#, "{dead}");
    assert_eq!(fields["status"], 500, "{dead}");
    assert!(fields["delivery"].is_i64(), "{dead}");

    assert_no_secret(&run.log);
    // Also as decoded: JSON escaping must not hide one either.
    let mut all = Vec::new();
    for line in &lines {
        strings(line, &mut all);
    }
    assert_no_secret(&all.join("\n"));
}

#[test]
fn the_default_log_is_human_readable_text_with_the_same_fields_and_no_secret() {
    let run = dead_delivery(&[]);

    assert!(
        run.log
            .lines()
            .all(|line| serde_json::from_str::<Value>(line).is_err()),
        "{}",
        run.log
    );
    assert!(
        !run.log.contains('\u{1b}'),
        "no terminal colours when stderr is not a terminal:\n{}",
        run.log
    );
    let dead = run
        .log
        .lines()
        .find(|line| line.contains("delivery dead"))
        .unwrap_or_else(|| panic!("no line for the dead delivery:\n{}", run.log));
    for wanted in [
        " ERROR ",
        "subscription=\"ledger-sync\"",
        &format!("event_id=\"{}\"", run.event_id),
        r#"key="{\"id\":7}""#,
        "status=500",
    ] {
        assert!(dead.contains(wanted), "{wanted:?} not in:\n{dead}");
    }
    assert!(
        run.log.lines().any(|line| line.contains(" DEBUG ")),
        "{}",
        run.log
    );
    assert_no_secret(&run.log);
}

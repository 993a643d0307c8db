//! `walhook test`: one signed test event to a real `walhook receive` process, recorded in
//! the attempt log.

use crate::support;
use support::{Object, Sub, Toml};

use std::time::Duration;

use support::{run_walhook, unique, ConfigFile, Receiver, Reply, SlotGuard, Subscriber, TestDb};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, amount numeric, paid boolean);
INSERT INTO account_invoice VALUES (7, 'INV-7', 12.50, false);
";

/// A config with one subscription `invoices` on `url`, signed with `secret`.
fn config(db: &TestDb<'_>, slot: &str, url: &str, secret: &str) -> ConfigFile {
    Toml::new(db)
        .slot(slot)
        .object(Object::new("invoice", "public.account_invoice").fields(&["number", "amount"]))
        .subscription(
            Sub::new("invoices", "invoice", url)
                .secret(secret)
                .with("timeout = \"5s\""),
        )
        .write()
}

#[test]
fn a_test_event_reaches_a_real_receiver_and_is_recorded() {
    let db = TestDb::new(ERP);
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let slot = unique("slot");
    let _guard = SlotGuard::new(&db, &slot);
    let url = format!("{}/hooks?token=url-token-1234", receiver.base);
    let config = config(&db, &slot, &url, SECRET);

    let setup = run_walhook(&config, &["setup"]);
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);

    let out = run_walhook(&config, &["test", "invoices"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("status 200"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"type\":\"invoice.updated\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\"operation\":\"update\""),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(SECRET), "{}", out.stdout);
    receiver.output_until("signature verified", Duration::from_secs(10));

    let rows = db.sql(
        "SELECT delivery_id IS NULL, attempt, trigger, status_code, error IS NULL \
         FROM walhook.attempts",
    );
    assert_eq!(rows.trim(), "t|1|test|200|t", "{rows}");

    // The real row, limited to the object's fields.
    let out = run_walhook(&config, &["test", "invoices", "--key", r#"{"id": 7}"#]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(r#""values":{"number":"INV-7","amount":"12.50"}"#),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(r#""key":{"id":7}"#), "{}", out.stdout);
}

#[test]
fn a_receivers_terminal_escapes_are_printed_escaped_and_cannot_fake_a_status() {
    let db = TestDb::new(ERP);
    let subscriber = Subscriber::start();
    subscriber.respond(|_| {
        Reply::status(500).body("\u{1b}]0;pwned\u{7}\u{1b}[2J\nresponse: status 200 in 1 ms")
    });
    let slot = unique("slot");
    let config = config(&db, &slot, &subscriber.url("/hooks"), SECRET);

    let out = run_walhook(&config, &["test", "invoices"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stdout.contains('\u{1b}') && !out.stdout.contains('\u{7}'),
        "raw control characters in {:?}",
        out.stdout
    );
    assert!(out.stdout.contains("\\u{1b}]0;pwned"), "{}", out.stdout);
    let statuses: Vec<&str> = out
        .stdout
        .lines()
        .filter(|line| line.starts_with("response:"))
        .collect();
    assert_eq!(statuses.len(), 1, "{}", out.stdout);
    assert!(
        statuses[0].starts_with("response: status 500 "),
        "{}",
        out.stdout
    );
}

#[test]
fn a_receiver_echoing_the_request_shows_no_credential_in_the_output_or_the_attempt_log() {
    let db = TestDb::new(ERP);
    let subscriber = Subscriber::start();
    subscriber.respond(|seen| {
        let echo = format!(
            "you sent {} and {:?} to {}",
            seen.header("authorization").unwrap_or("-"),
            seen.header("x-tenant-key"),
            seen.path
        );
        Reply::status(400).body(echo)
    });
    let slot = unique("slot");
    let url = format!("{}?token=url-token-5678", subscriber.url("/hooks"));
    let config = config(&db, &slot, &url, SECRET);
    let text = std::fs::read_to_string(&config.path).unwrap().replacen(
        "timeout = \"5s\"",
        "timeout = \"5s\"\nauth = { type = \"bearer\", token = \"bearer-echo-1234\" }\n\
         headers = { \"X-Tenant-Key\" = \"tenant-echo-5678\" }",
        1,
    );
    std::fs::write(&config.path, text).unwrap();
    let setup = run_walhook(&config, &["setup"]);
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);

    let out = run_walhook(&config, &["test", "invoices"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("you sent Bearer ***"), "{}", out.stdout);
    let excerpt = db.sql("SELECT response_excerpt FROM walhook.attempts");
    // What the receiver answered (the request line above shows the configured URL).
    let response = out.stdout.split("response:").nth(1).unwrap();
    for secret in ["bearer-echo-1234", "tenant-echo-5678", "url-token-5678"] {
        assert!(!response.contains(secret), "{secret}: {}", out.stdout);
        assert!(!excerpt.contains(secret), "{secret}: {excerpt}");
    }
    assert!(excerpt.contains("you sent Bearer ***"), "{excerpt}");
}

#[test]
fn a_wrong_secret_is_a_failure_and_still_recorded() {
    let db = TestDb::new(ERP);
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let slot = unique("slot");
    let _guard = SlotGuard::new(&db, &slot);
    let other = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let config = config(&db, &slot, &format!("{}/hooks", receiver.base), other);
    let setup = run_walhook(&config, &["setup"]);
    assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);

    let out = run_walhook(&config, &["test", "invoices"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("status 401"), "{}", out.stdout);
    let rows = db.sql("SELECT trigger, status_code FROM walhook.attempts");
    assert_eq!(rows.trim(), "test|401", "{rows}");
}

#[test]
fn without_the_outbox_schema_the_attempt_is_sent_but_not_recorded() {
    let db = TestDb::new(ERP);
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let config = config(
        &db,
        &unique("slot"),
        &format!("{}/hooks", receiver.base),
        SECRET,
    );
    let out = run_walhook(&config, &["test", "invoices"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("does not exist yet"), "{}", out.stdout);
}

#[test]
fn an_unknown_subscription_is_bad_usage_with_a_suggestion() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("slot"), "http://127.0.0.1:9/hooks", SECRET);
    let out = run_walhook(&config, &["test", "invoice"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("did you mean \"invoices\"?"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_key_naming_no_column_is_bad_usage() {
    let db = TestDb::new(ERP);
    let config = config(&db, &unique("slot"), "http://127.0.0.1:9/hooks", SECRET);
    let out = run_walhook(&config, &["test", "invoices", "--key", r#"{"idd": 7}"#]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("did you mean \"id\"?"),
        "{}",
        out.stderr
    );
}

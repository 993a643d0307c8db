//! The network policy of SPEC §6 end to end: a real `walhook run`, real Postgres, a row
//! change, and the delivery attempt it leads to in `walhook.attempts`.
//!
//! `run` starts with any syntactically valid subscriber URL (only `walhook check` judges
//! them beforehand): a refused address is found when the request is made, recorded as a
//! failed attempt that says why, and the request never leaves the process. Host names are
//! judged on the address they resolve to, at connect time.

use crate::support;
use support::rows::{Attempt, Delivery};
use support::{Sub, Toml};

use std::time::Duration;

use support::{
    config_file, start_daemon, unique, wait_until, ConfigFile, Daemon, Subscriber, TestDb,
};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, state text);
INSERT INTO account_invoice VALUES (1, 'INV-1', 'draft');
";

/// A config whose `allow_networks` is `allow` (absent when empty), with one subscription per
/// `(name, url)` on the invoice table. The retry schedule is long, so a refused delivery
/// makes exactly one attempt while a test looks.
fn config(db: &TestDb<'_>, allow: &[&str], subscriptions: &[(&str, &str)]) -> ConfigFile {
    let names = (unique("slot"), unique("pub"));
    config_file(&config_text(db, &names, allow, subscriptions, r#"["1h"]"#))
}

/// The text of [`config`] with the given `(slot, publication)` and retry schedule.
fn config_text(
    db: &TestDb<'_>,
    (slot, publication): &(String, String),
    allow: &[&str],
    subscriptions: &[(&str, &str)],
    retry_schedule: &str,
) -> String {
    let mut delivery = format!("retry_schedule = {retry_schedule}");
    if !allow.is_empty() {
        let quoted: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
        delivery.push_str(&format!("\nallow_networks = [{}]", quoted.join(", ")));
    }
    let mut toml = Toml::new(db)
        .slot(slot)
        .publication(publication)
        .delivery_only(&delivery)
        .table("invoice", "public.account_invoice");
    for (name, url) in subscriptions {
        toml = toml.subscription(Sub::new(name, "invoice", url));
    }
    toml.text()
}

/// The attempts of deliveries (not of `walhook test`), by subscription and attempt number.
fn attempts(db: &TestDb<'_>) -> Vec<Attempt> {
    let mut all: Vec<Attempt> = support::rows::attempts(db)
        .into_iter()
        .filter(|a| a.delivery_id.is_some())
        .collect();
    all.sort_by(|a, b| (&a.subscription, a.attempt).cmp(&(&b.subscription, b.attempt)));
    all
}

/// Waits until every subscription in `names` has an attempt, then returns all attempts.
fn wait_for_attempts(db: &TestDb<'_>, daemon: &Daemon, names: &[&str]) -> Vec<Attempt> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = attempts(db);
        if names
            .iter()
            .all(|name| seen.iter().any(|a| a.subscription == *name))
        {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt for each of {names:?} within 20 s: {seen:?}; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(status, attempts, last_error)` of the one delivery of `subscription`.
fn delivery(db: &TestDb<'_>, subscription: &str) -> (String, i32, String) {
    let mine: Vec<Delivery> = support::rows::deliveries(db)
        .into_iter()
        .filter(|d| d.subscription == subscription)
        .collect();
    assert_eq!(mine.len(), 1, "one delivery of {subscription}: {mine:?}");
    let d = mine.into_iter().next().unwrap();
    (d.status, d.attempts, d.last_error.unwrap_or_default())
}

/// The single attempt of `subscription` among `all`.
fn only<'a>(all: &'a [Attempt], subscription: &str) -> &'a Attempt {
    let mine: Vec<&Attempt> = all
        .iter()
        .filter(|a| a.subscription == subscription)
        .collect();
    assert_eq!(mine.len(), 1, "one attempt of {subscription}: {all:?}");
    mine[0]
}

/// Asserts that `attempt` is a refusal by the policy with exactly `error`: no response, and
/// (no connection was tried) no time spent on the network.
fn assert_refused(attempt: &Attempt, error: &str) {
    assert_eq!(attempt.attempt, 1, "{attempt:?}");
    assert_eq!(attempt.trigger, "scheduled", "{attempt:?}");
    assert_eq!(attempt.status_code, None, "{attempt:?}");
    assert_eq!(attempt.error.as_deref(), Some(error), "{attempt:?}");
    assert!(
        attempt.duration_ms.expect("a duration") < 100,
        "{attempt:?}"
    );
}

fn assert_delivered(db: &TestDb<'_>, all: &[Attempt], subscription: &str) {
    let attempt = only(all, subscription);
    assert_eq!(attempt.status_code, Some(204), "{attempt:?}");
    assert_eq!(attempt.error, None, "{attempt:?}");
    wait_until(
        Duration::from_secs(10),
        "the delivery is marked delivered",
        || delivery(db, subscription).0 == "delivered",
    );
}

#[test]
fn a_subscriber_on_loopback_is_refused_unless_allow_networks_covers_it() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    // The query holds a token: the error names the address, never the rest of the URL.
    let url = receiver.url("/hooks?token=sekrit");
    let config = config(&db, &[], &[("invoices", &url)]);
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let all = wait_for_attempts(&db, &daemon, &["invoices"]);
    let why = "127.0.0.1 is loopback; add it to delivery.allow_networks to allow it";
    assert_refused(only(&all, "invoices"), why);
    assert_eq!(
        delivery(&db, "invoices"),
        ("pending".to_owned(), 1, why.to_owned()),
        "kept for the next scheduled attempt"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 0, "nothing reached the subscriber");
    assert!(
        !daemon.log_text().contains("sekrit"),
        "the log shows the URL's token:\n{}",
        daemon.log_text()
    );
}

#[test]
fn a_subscriber_on_loopback_is_delivered_when_allow_networks_covers_it() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let config = config(
        &db,
        &["127.0.0.0/8"],
        &[("invoices", &receiver.url("/hooks"))],
    );
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let seen = receiver.wait_for(1, Duration::from_secs(20));
    assert_eq!(seen[0].path, "/hooks");
    let all = wait_for_attempts(&db, &daemon, &["invoices"]);
    assert_delivered(&db, &all, "invoices");
}

/// The config accepts networks that contain cloud-metadata and link-local addresses (even
/// "everything"); the policy refuses those addresses anyway. A subscriber on loopback in
/// the same daemon shows that the list does take effect.
#[test]
fn cloud_metadata_is_refused_even_when_allow_networks_opens_everything() {
    for allow in [
        &["0.0.0.0/0", "::/0"][..],
        &["169.254.0.0/16", "127.0.0.0/8"],
    ] {
        let db = TestDb::new(ERP);
        let receiver = Subscriber::start();
        let control = receiver.url("/control");
        let config = config(
            &db,
            allow,
            &[
                ("metadata", "http://169.254.169.254/latest/meta-data"),
                (
                    "metadata-mapped",
                    "http://[::ffff:169.254.169.254]/latest/meta-data",
                ),
                ("ecs-credentials", "http://169.254.170.2/v2/credentials"),
                ("link-local", "http://169.254.10.20:8080/hooks"),
                ("control", &control),
            ],
        );
        let daemon = start_daemon(&config);

        db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
        let all = wait_for_attempts(
            &db,
            &daemon,
            &[
                "metadata",
                "metadata-mapped",
                "ecs-credentials",
                "link-local",
                "control",
            ],
        );
        let context = format!("allow_networks = {allow:?}");
        for (name, error) in [
            (
                "metadata",
                "169.254.169.254 is a cloud metadata address, always refused",
            ),
            (
                "metadata-mapped",
                "::ffff:169.254.169.254 is a cloud metadata address, always refused",
            ),
            (
                "ecs-credentials",
                "169.254.170.2 is a cloud metadata address, always refused",
            ),
            ("link-local", "169.254.10.20 is link-local, always refused"),
        ] {
            let attempt = only(&all, name);
            assert_eq!(attempt.error.as_deref(), Some(error), "{context}");
            assert_refused(attempt, error);
            assert_eq!(delivery(&db, name).0, "pending", "{context}");
        }
        assert_delivered(&db, &all, "control");
        assert_eq!(
            receiver.count(),
            1,
            "{context}: only the control subscription"
        );
        drop(daemon);
    }
}

#[test]
fn a_host_name_resolving_to_loopback_is_refused_when_it_connects() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let url = format!("http://localhost:{}/hooks", receiver.port());
    let config = config(&db, &[], &[("invoices", &url)]);
    // The name is not judged at start: `run` starts, and resolves when it delivers.
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let all = wait_for_attempts(&db, &daemon, &["invoices"]);
    let attempt = only(&all, "invoices");
    assert_eq!(attempt.status_code, None, "{attempt:?}");
    let error = attempt.error.as_deref().unwrap_or_default();
    // localhost may resolve to more than one address; every one is refused.
    assert!(
        error.starts_with(
            "localhost resolves to 127.0.0.1, which is loopback; \
             add localhost or the address to delivery.allow_networks to allow it"
        ),
        "{error}"
    );
    assert_eq!(delivery(&db, "invoices").0, "pending");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 0, "nothing reached the subscriber");
}

#[test]
fn a_host_name_resolving_to_loopback_is_delivered_when_allowed_by_network_or_by_name() {
    for allow in ["127.0.0.0/8", "localhost"] {
        let db = TestDb::new(ERP);
        let receiver = Subscriber::start();
        let url = format!("http://localhost:{}/hooks", receiver.port());
        let config = config(&db, &[allow], &[("invoices", &url)]);
        let daemon = start_daemon(&config);

        db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
        let seen = receiver.wait_for(1, Duration::from_secs(20));
        assert_eq!(seen[0].path, "/hooks", "allow_networks = [{allow:?}]");
        let all = wait_for_attempts(&db, &daemon, &["invoices"]);
        assert_delivered(&db, &all, "invoices");
        drop(daemon);
    }
}

/// `allow_networks` is read again with the rest of the file: a refused subscriber becomes
/// reachable without a restart, and the next scheduled attempt gets through.
#[test]
fn allowing_the_network_in_a_config_edit_lets_the_next_attempt_through() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let url = receiver.url("/hooks");
    let names = (unique("slot"), unique("pub"));
    let schedule = r#"["1s", "1s", "1s", "1s", "1s", "1s", "1h"]"#;
    let subscriptions = [("invoices", url.as_str())];
    let config = config_file(&config_text(&db, &names, &[], &subscriptions, schedule));
    let daemon = start_daemon(&config);

    db.sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let all = wait_for_attempts(&db, &daemon, &["invoices"]);
    assert_refused(
        &all[0],
        "127.0.0.1 is loopback; add it to delivery.allow_networks to allow it",
    );
    assert_eq!(receiver.count(), 0);

    let allowed = config_text(&db, &names, &["127.0.0.0/8"], &subscriptions, schedule);
    std::fs::write(&config.path, allowed).unwrap();
    wait_until(Duration::from_secs(10), "the reload is logged", || {
        daemon.log_text().contains("config reloaded")
    });
    let seen = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(seen[0].path, "/hooks");
    wait_until(Duration::from_secs(10), "the delivery is delivered", || {
        delivery(&db, "invoices").0 == "delivered"
    });
    let all = attempts(&db);
    let last = all.last().unwrap();
    assert_eq!(
        (last.status_code, last.error.as_deref()),
        (Some(204), None),
        "{all:?}"
    );
    assert!(
        all[..all.len() - 1]
            .iter()
            .all(|a| a.status_code.is_none() && a.error.is_some()),
        "refused before the edit: {all:?}"
    );
    assert_eq!(receiver.count(), 1);
}

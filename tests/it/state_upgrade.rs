//! Migration 0005 (`subscription_state.state`) on an outbox walhook made at version 4: a
//! subscription paused through the admin API stays paused with its pending delivery held
//! back, one a 410 switched off stays switched off, and resuming the paused one sends what
//! waited.

use std::time::Duration;

use crate::support::config::{Sub, Toml};
use crate::support::outbox::{ledger_event, write_events};
use crate::support::{start_daemon, wait_until, Subscriber, TestDb};
use walhook::capture::matcher::RoutedEvent;

/// Generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

const LEDGER: &str = "CREATE TABLE ledger (id int PRIMARY KEY, amount int);";

/// One pending delivery for each of `subscriptions`, written as capture would.
async fn write_pending(db: &TestDb<'_>, subscriptions: &[&str]) {
    let events = subscriptions
        .iter()
        .enumerate()
        .map(|(n, name)| RoutedEvent {
            event_id: format!("evt_{name}"),
            body: format!(r#"{{"id":"evt_{name}"}}"#).into_bytes(),
            subscriptions: vec![(*name).into()],
            ..ledger_event(n as u32 + 1)
        })
        .collect();
    write_events(db, events).await;
}

const TOKEN: &str = "admin-token-for-the-upgrade";

/// `method path` on the admin API with the token: the JSON answer.
async fn call(method: reqwest::Method, base: &str, path: &str) -> serde_json::Value {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn state_of(status: &serde_json::Value, name: &str) -> String {
    status["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn port(log: &str) -> u16 {
    let after = log
        .split("http server listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no listening line in the log:\n{log}"));
    let addr = after.split_whitespace().next().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_and_a_410_from_before_the_state_column_keep_their_meaning_after_the_upgrade() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    write_pending(&db, &["paused", "gone"]).await;
    // The outbox as walhook made it at version 4: no `state`, the kind told by the reason.
    db.sql(
        "ALTER TABLE walhook.subscription_state DROP COLUMN state; \
         DELETE FROM walhook.schema_version WHERE version = 5; \
         INSERT INTO walhook.subscription_state (subscription, reason) VALUES \
           ('paused', 'paused through the admin API at 2026-11-23T10:00:00Z'), \
           ('gone', 'the receiver answered 410 Gone at 2026-11-23T10:00:00Z')",
    );
    let url = receiver.url("/hooks");
    let config = Toml::new(&db)
        .table("ledger", "public.ledger")
        .subscription(Sub::new("paused", "ledger", &url))
        .subscription(Sub::new("gone", "ledger", &url))
        .tail(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{TOKEN}\""
        ))
        .write();
    let daemon = start_daemon(&config);
    let base = format!("http://127.0.0.1:{}", port(&daemon.log_text()));

    assert_eq!(
        db.sql("SELECT subscription || '=' || state FROM walhook.subscription_state ORDER BY 1"),
        "gone=gone\npaused=paused"
    );
    let now = call(reqwest::Method::GET, &base, "/status").await;
    assert_eq!(state_of(&now, "paused"), "paused", "{now}");
    assert_eq!(state_of(&now, "gone"), "deactivated", "{now}");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(receiver.count(), 0, "a switched-off subscription sent");

    let resumed = call(reqwest::Method::POST, &base, "/subscriptions/paused/resume").await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    let seen = receiver.wait_for(1, PATIENCE);
    assert_eq!(seen[0].event_ids(), vec!["evt_paused".to_owned()]);
    wait_until(PATIENCE, "the paused one's delivery is delivered", || {
        db.sql("SELECT status FROM walhook.deliveries WHERE subscription = 'paused'") == "delivered"
    });
    assert_eq!(
        db.sql("SELECT status FROM walhook.deliveries WHERE subscription = 'gone'"),
        "pending",
        "the 410'd subscription still holds its delivery back"
    );
}

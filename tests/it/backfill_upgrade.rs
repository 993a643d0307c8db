//! Migration 0006 (backfills) on an outbox walhook made at version 5: the pending delivery
//! of an existing subscription is still sent, and `backfill = true` backfills only the
//! subscription that is new, not the one that was already delivering.

use std::time::Duration;

use crate::support::config::{Sub, Toml};
use crate::support::outbox::{ledger_event, write_events};
use crate::support::{start_daemon, wait_until, Subscriber, TestDb};
use walhook::capture::matcher::RoutedEvent;

/// Generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn an_outbox_from_before_backfills_keeps_its_pending_delivery_and_backfills_only_new_subscriptions()
{
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, amount int);");
    db.sql("INSERT INTO ledger SELECT g, g FROM generate_series(1, 50) g");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(write_events(
        &db,
        vec![RoutedEvent {
            event_id: "evt_before".into(),
            body: br#"{"id":"evt_before"}"#.to_vec(),
            subscriptions: vec!["existing".into()],
            ..ledger_event(1)
        }],
    ));
    // The outbox as walhook made it at version 5.
    db.sql(
        "DROP TABLE walhook.backfill, walhook.subscription_seen; \
         DELETE FROM walhook.schema_version WHERE version = 6;",
    );
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .table("ledger", "public.ledger")
        .subscription(
            Sub::new("existing", "ledger", &receiver.url("/existing")).with("backfill = true"),
        )
        .subscription(Sub::new("new", "ledger", &receiver.url("/new")).with("backfill = true"))
        .write();
    let daemon = start_daemon(&config);
    wait_until(PATIENCE, "the new subscription is backfilled", || {
        db.sql("SELECT state || ' ' || rows FROM walhook.backfill WHERE subscription = 'new'")
            == "done 50"
    });
    wait_until(PATIENCE, "the pending delivery is delivered", || {
        db.sql("SELECT status FROM walhook.deliveries WHERE event_id = 'evt_before'") == "delivered"
    });
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.backfill WHERE subscription = 'existing'"),
        "0",
        "the subscription that delivered before the upgrade is not new; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        db.sql("SELECT max(version) FROM walhook.schema_version"),
        walhook::outbox::migrate::latest_version().to_string()
    );
}

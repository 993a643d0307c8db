//! Events whose subscription routes per event (SPEC §4a): the URL and method stored with the
//! event at capture are what delivery sends, with the subscription's `Content-Type`, signed
//! over the exact stored bytes. Events are written through the outbox writer as capture
//! hands them over, and the real daemon delivers them to a real receiver on 127.0.0.1.

use crate::support;
use support::{Object, Sub, Toml};

use std::time::Duration;

use support::outbox::{ledger_event, write_events};
use support::{start_daemon, verify, ConfigFile, Subscriber, TestDb, WEBHOOK_SECRET};
use walhook::capture::matcher::RoutedEvent;
use walhook::config::{Method, Target};

/// Generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

const LEDGER: &str = "CREATE TABLE ledger (id int PRIMARY KEY, amount int);";

/// A config with subscription `ledger` on the `ledger` table; `extra` goes into it.
fn ledger_config(db: &TestDb<'_>, url: &str, extra: &str) -> ConfigFile {
    Toml::new(db)
        .table("ledger", "public.ledger")
        .subscription(
            Sub::new("ledger", "ledger", url)
                .secret(WEBHOOK_SECRET)
                .with(extra),
        )
        .write()
}

/// Event `n` for subscription `ledger` with id `id`, body `body` and, when given, a target.
fn event(n: u32, id: &str, body: &[u8], target: Option<Target>) -> RoutedEvent {
    RoutedEvent {
        event_id: id.to_owned(),
        body: body.to_vec(),
        target,
        ..ledger_event(n)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_events_reach_their_own_url_with_their_own_method_and_the_configured_content_type() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let at = |method| Target {
        url: receiver.url("/orders/7"),
        method,
    };
    let put = br#"<order id="7"><amount>120 &amp; more</amount></order>"#;
    write_events(
        &db,
        vec![
            event(7, "evt_put", put, Some(at(Method::Put))),
            event(
                7,
                "evt_delete",
                b"<order id=\"7\"/>",
                Some(at(Method::Delete)),
            ),
        ],
    )
    .await;
    let config = ledger_config(
        &db,
        &receiver.url("/orders/{{ key.id }}"),
        "method = { create = \"POST\", update = \"PUT\", delete = \"DELETE\" }\n\
         content_type = \"application/xml; charset=utf-8\"",
    );
    let _daemon = start_daemon(&config);

    let seen = receiver.wait_for(2, PATIENCE);
    let sent: Vec<(&str, &str, Option<&str>, Option<&str>)> = seen
        .iter()
        .map(|s| {
            (
                s.method.as_str(),
                s.path.as_str(),
                s.header("content-type"),
                s.header("webhook-id"),
            )
        })
        .collect();
    // One key: the PUT (earlier in the outbox) arrives before the DELETE.
    assert_eq!(
        sent,
        vec![
            (
                "PUT",
                "/orders/7",
                Some("application/xml; charset=utf-8"),
                Some("evt_put")
            ),
            (
                "DELETE",
                "/orders/7",
                Some("application/xml; charset=utf-8"),
                Some("evt_delete")
            ),
        ]
    );
    assert_eq!(seen[0].body, put);
    assert_eq!(seen[1].body, b"<order id=\"7\"/>");
    for request in &seen {
        verify(request, WEBHOOK_SECRET).unwrap();
    }
    support::wait_until(PATIENCE, "both deliveries are delivered", || {
        db.sql("SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'") == "2"
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_rendered_json_bodies_arrives_as_one_json_array_of_them() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    write_events(
        &db,
        vec![
            event(1, "evt_1", br#"{"orderId":1,"amount":"10.00"}"#, None),
            event(2, "evt_2", br#"{"orderId":2,"amount":"20.00"}"#, None),
        ],
    )
    .await;
    let config = ledger_config(
        &db,
        &receiver.url("/orders"),
        "batch = { max_events = 10, max_wait = \"500ms\" }",
    );
    let _daemon = start_daemon(&config);

    let seen = receiver.wait_for(1, PATIENCE);
    assert_eq!(
        seen[0].text(),
        r#"[{"orderId":1,"amount":"10.00"},{"orderId":2,"amount":"20.00"}]"#
    );
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/orders");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    verify(&seen[0], WEBHOOK_SECRET).unwrap();
    support::wait_until(PATIENCE, "both deliveries are delivered", || {
        db.sql("SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'") == "2"
    });
    assert_eq!(receiver.count(), 1, "one request for both");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_from_before_the_event_target_migration_still_delivers_its_pending_delivery() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    write_events(&db, vec![event(3, "evt_old", br#"{"id":"evt_old"}"#, None)]).await;
    // The outbox as walhook made it at version 3: none of the columns of 0004, no version 4.
    db.sql(
        "ALTER TABLE walhook.event DROP COLUMN url, DROP COLUMN method, DROP COLUMN unrendered; \
         DELETE FROM walhook.schema_version WHERE version = 4",
    );
    assert_eq!(
        db.sql("SELECT status FROM walhook.deliveries"),
        "pending",
        "a delivery waits in the old outbox"
    );
    let config = ledger_config(&db, &receiver.url("/hooks"), "");
    let _daemon = start_daemon(&config);

    let seen = receiver.wait_for(1, PATIENCE);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/hooks");
    assert_eq!(seen[0].body, br#"{"id":"evt_old"}"#);
    verify(&seen[0], WEBHOOK_SECRET).unwrap();
    support::wait_until(PATIENCE, "the old delivery is delivered", || {
        db.sql("SELECT status FROM walhook.deliveries") == "delivered"
    });
    assert_eq!(
        db.sql("SELECT max(version) FROM walhook.schema_version"),
        walhook::outbox::migrate::latest_version().to_string()
    );
    assert_eq!(
        db.sql("SELECT url IS NULL AND method IS NULL FROM walhook.event"),
        "t",
        "the old event has no target: it went to the subscription's URL"
    );
}

#[test]
fn an_objects_display_name_is_the_object_and_type_prefix_of_its_events() {
    let db = TestDb::new(LEDGER);
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .object(Object::new("ledger", "public.ledger").with("name = \"account.move.line\""))
        .subscription(Sub::new("ledger", "ledger", &receiver.url("/hooks")))
        .write();
    let _daemon = start_daemon(&config);

    db.sql("INSERT INTO ledger VALUES (1, 10)");
    let seen = receiver.wait_for(1, PATIENCE);
    let event = seen[0].json();
    assert_eq!(event["object"], "account.move.line");
    assert_eq!(event["type"], "account.move.line.created");
    assert_eq!(
        db.sql("SELECT object || ' ' || event_type FROM walhook.deliveries"),
        "account.move.line account.move.line.created"
    );
}

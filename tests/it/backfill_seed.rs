//! A backfill seed on a brand-new slot reads the tables exactly as they were at the slot's
//! start: later commits are in the stream and never in the seed.

use crate::backfill_chunks::{next_changes, stream, walk};
use crate::support;

use std::time::Duration;

use serde_json::json;
use support::{unique, wait_until, TestDb};
use walhook::capture::{Cell, Operation};
use walhook::pg::conninfo::ConnInfo;
use walhook::source::chunks::{describe, ChunkReader};
use walhook::source::pgoutput::Datum;
use walhook::source::snapshot::SeedSlot;

fn text(datum: &Datum) -> String {
    match datum {
        Datum::Text(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Drops `slot` once its walsender has let go of it.
fn drop_slot(db: &TestDb<'_>, slot: &str) {
    wait_until(Duration::from_secs(10), "the slot to be dropped", || {
        db.sql(&format!(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ));
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .trim()
            == "0"
    });
}

#[tokio::test]
async fn the_exported_snapshot_seed_on_a_new_slot_is_exactly_consistent() {
    let db = TestDb::new(
        "CREATE TABLE item (id int PRIMARY KEY, v text);
         INSERT INTO item SELECT i, 'v' || i FROM generate_series(1, 5) i;",
    );
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE item"));
    let slot = unique("seed");
    let info = ConnInfo::parse(&db.url).unwrap();
    let seed = SeedSlot::create(&info, &slot).await.unwrap();

    // Committed right after the slot's start, on another connection.
    db.sql("INSERT INTO item VALUES (6, 'new')");
    db.sql("UPDATE item SET v = 'changed' WHERE id = 2");

    let relation = describe(seed.client(), &"item".parse().unwrap())
        .await
        .unwrap();
    let reader = ChunkReader::new(seed.client(), &relation, &["id".into()], None)
        .await
        .unwrap()
        .in_snapshot();
    let (rows, _) = walk(&reader, seed.client(), 2).await;
    let seeded: Vec<(String, String)> = rows
        .iter()
        .map(|r| (text(&r.0[0]), text(&r.0[1])))
        .collect();
    let expected: Vec<(String, String)> =
        (1..=5).map(|i| (i.to_string(), format!("v{i}"))).collect();
    assert_eq!(
        seeded, expected,
        "the seed holds the rows as they were at the slot's start"
    );
    assert!(seed.consistent_point().0 > 0);
    seed.finish().await.unwrap();

    let mut wal = stream(&db, &slot, &publication).await;
    let (_, insert) = next_changes(&mut wal).await;
    assert_eq!(insert.len(), 1);
    assert_eq!(insert[0].operation, Operation::Create);
    assert_eq!(insert[0].new.as_ref().unwrap()[0], Cell::Value(json!(6)));
    let (_, update) = next_changes(&mut wal).await;
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].operation, Operation::Update);
    assert_eq!(
        update[0].new.as_ref().unwrap()[1],
        Cell::Value(json!("changed"))
    );
    // Nothing else before what commits next: each change came exactly once.
    db.sql("INSERT INTO item VALUES (7, 'marker')");
    let (_, next) = next_changes(&mut wal).await;
    assert_eq!(next[0].new.as_ref().unwrap()[0], Cell::Value(json!(7)));
    wal.close().await.unwrap();
    drop_slot(&db, &slot);
}

#[tokio::test]
async fn a_seed_on_an_existing_slot_name_is_refused() {
    let db = TestDb::new("CREATE TABLE item (id int PRIMARY KEY)");
    let slot = unique("seed");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let info = ConnInfo::parse(&db.url).unwrap();
    let error = SeedSlot::create(&info, &slot).await.unwrap_err();
    assert!(error.slot_exists(), "{error}");
    let message = error.to_string();
    assert!(message.contains(&slot), "{message}");
    assert!(message.contains("already exists"), "{message}");
    assert!(message.contains("brand-new slot"), "{message}");
    drop_slot(&db, &slot);
}

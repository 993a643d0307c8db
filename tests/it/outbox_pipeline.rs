//! The outbox writer on its own task: capture goes on decoding while Postgres inserts, but a
//! group is reported done (and the slot acknowledged) only once it is committed, in order.

use crate::support;

use support::outbox::ledger_event as event;
use support::TestDb;
use walhook::capture::Commit;
use walhook::outbox::pipeline::OutboxPipeline;
use walhook::outbox::writer::{OutboxError, OutboxWriter};
use walhook::pg::conninfo::ConnInfo;
use walhook::pg::{self, Lsn};

fn lsn(text: &str) -> Lsn {
    text.parse().unwrap()
}

fn commit(at: &str) -> Commit {
    Commit {
        lsn: lsn(at),
        time: 0,
        xid: 1,
    }
}

async fn writer(db: &TestDb<'_>) -> OutboxWriter {
    let info = ConnInfo::parse(&db.url).unwrap();
    let client = pg::connect_sql(&info).await.unwrap();
    walhook::outbox::migrate::migrate(&client, "walhook")
        .await
        .unwrap();
    OutboxWriter::new(pg::connect_sql(&info).await.unwrap(), "walhook", "s")
        .await
        .unwrap()
}

#[tokio::test]
async fn groups_are_reported_in_order_and_only_once_they_are_in_the_outbox() {
    let db = TestDb::new("");
    let mut pipeline = OutboxPipeline::start(writer(&db).await, "walhook");

    // Nothing to write and nothing ahead: the slot may move at once.
    assert_eq!(
        pipeline.commit(lsn("0/50"), lsn("0/58")).await.unwrap(),
        Some(lsn("0/58"))
    );

    pipeline.add(event(1), commit("0/100"));
    pipeline.spill().await.unwrap();
    pipeline.add(event(2), commit("0/100"));
    assert_eq!(
        pipeline.commit(lsn("0/100"), lsn("0/108")).await.unwrap(),
        None
    );
    // A group without events behind one in flight waits for its turn.
    assert_eq!(
        pipeline.commit(lsn("0/150"), lsn("0/158")).await.unwrap(),
        None
    );
    pipeline.add(event(3), commit("0/200"));
    assert_eq!(
        pipeline.commit(lsn("0/200"), lsn("0/208")).await.unwrap(),
        None
    );
    assert_eq!(pipeline.in_flight(), 3);
    assert!(pipeline.has_uncommitted());

    let first = pipeline.committed().await.unwrap();
    assert_eq!(
        (first.commit_lsn, first.end_lsn),
        (lsn("0/100"), lsn("0/108"))
    );
    assert_eq!(first.written.events, 2);
    let rows: i64 = db
        .sql("SELECT count(*) FROM walhook.event WHERE seq > 0")
        .parse()
        .unwrap();
    assert!(
        rows >= 2,
        "reported before its rows were committed ({rows})"
    );

    let second = pipeline.committed().await.unwrap();
    assert_eq!(second.end_lsn, lsn("0/158"));
    assert_eq!(second.written.events, 0);
    let third = pipeline.committed().await.unwrap();
    assert_eq!(third.end_lsn, lsn("0/208"));
    assert_eq!(third.written.events, 1);
    assert!(!pipeline.has_uncommitted());
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery"), "3");
    assert_eq!(
        db.sql("SELECT commit_lsn FROM walhook.checkpoint WHERE slot = 's'"),
        "0/200"
    );
}

#[tokio::test]
async fn a_failed_outbox_commit_is_reported_and_nothing_after_it_is() {
    let db = TestDb::new("");
    let mut pipeline = OutboxPipeline::start(writer(&db).await, "walhook");
    // Another process moves the checkpoint: this pipeline's next commit must be refused.
    let mut other = writer(&db).await;
    other.add(event(9), commit("0/900"));
    other.commit(lsn("0/900")).await.unwrap();

    pipeline.add(event(1), commit("0/100"));
    pipeline.commit(lsn("0/100"), lsn("0/108")).await.unwrap();
    pipeline.add(event(2), commit("0/200"));
    let _ = pipeline.commit(lsn("0/200"), lsn("0/208")).await;

    let refused = pipeline.committed().await;
    assert!(
        matches!(refused, Err(OutboxError::CheckpointMoved { .. })),
        "{refused:?}"
    );
    // The task is gone: later work fails with that error instead of vanishing.
    pipeline.add(event(3), commit("0/300"));
    let after = pipeline.commit(lsn("0/300"), lsn("0/308")).await;
    assert!(after.is_err(), "{after:?}");
    assert_eq!(db.sql("SELECT count(*) FROM walhook.event"), "1");
}

//! Capture against a real Postgres: row changes of watched tables become typed events with
//! honest before and after values.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{unique, TestDb};
use walhook::capture::envelope::envelope;
use walhook::capture::reader::{ReaderOptions, Truncation};
use walhook::capture::{ChangeReader, Commit, Item, ObjectView};
use walhook::pg::conninfo::ConnInfo;

/// A reader on a fresh slot and publication for `tables`, created before any change.
async fn reader_for(db: &TestDb<'_>, tables: &str) -> ChangeReader {
    let slot = unique("slot");
    let publication = unique("pub");
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE {tables}"
    ));
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let info = ConnInfo::parse(&db.url).unwrap();
    let options = ReaderOptions {
        slot,
        publication,
        skip_through: Default::default(),
    };
    ChangeReader::start(&info, &options).await.unwrap()
}

/// Reads one whole transaction: its commit and the items in between.
async fn next_transaction(reader: &mut ChangeReader) -> (Commit, Vec<Item>) {
    let read = async {
        let mut items = Vec::new();
        loop {
            match reader.next().await.unwrap().expect("stream open") {
                Item::Begin(_) => items.clear(),
                Item::Keepalive { .. } => {}
                Item::Commit { commit, .. } => return (commit, items),
                item => items.push(item),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a transaction within 20 s")
}

/// Each change of the next transaction as its SPEC §3 envelope (table defaults).
async fn next_events(reader: &mut ChangeReader) -> Vec<Value> {
    let (commit, items) = next_transaction(reader).await;
    items
        .into_iter()
        .map(|item| match item {
            Item::Change(change) => {
                let view = ObjectView::of_table(&change.relation);
                let event_type = view.default_event_type(change.operation);
                serde_json::from_slice(&envelope(&change, &view, &event_type, commit)).unwrap()
            }
            other => panic!("expected a row change, got {other:?}"),
        })
        .collect()
}

async fn next_event(reader: &mut ChangeReader) -> Value {
    let mut events = next_events(reader).await;
    assert_eq!(events.len(), 1, "one change expected: {events:?}");
    events.remove(0)
}

const ALL_TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive_int AS int4 CHECK (VALUE > 0);
CREATE TYPE money_pair AS (amount numeric, currency text);
CREATE TABLE all_types (
  id int PRIMARY KEY,
  i2 int2, i4 int4, i8 int8,
  num numeric, num_nan numeric,
  f4 float4, f8 float8, f8_inf float8, f8_ninf float8, f8_nan float8,
  b bool, t text, vc varchar(10), ch char(5), by bytea, u uuid,
  j json, jb jsonb,
  d date, tm time, ttz timetz, ts timestamp,
  tstz timestamptz, tstz_inf timestamptz, tstz_ninf timestamptz,
  iv interval, ip inet, net cidr, mac macaddr, m money,
  mo mood, dom positive_int, ia int[], ta text[], r int4range, x xml, o oid,
  comp money_pair, nothing text
);
"#;

#[tokio::test]
async fn every_column_type_becomes_the_json_spec_3_prescribes() {
    let db = TestDb::new(ALL_TYPES);
    let mut reader = reader_for(&db, "all_types").await;
    db.sql(
        r#"INSERT INTO all_types VALUES (
          1, 32767, -5, 9223372036854775807,
          123456789012345678901234567890.12, 'NaN',
          1.5, 0.1, 'Infinity', '-Infinity', 'NaN',
          true, 'héllo "quoted"', 'abc', 'ab', '\x0001ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": 2}',
          '2026-11-22', '10:15:30.5', '10:15:30+02', '2026-11-22 10:15:30.123456',
          '2026-11-22 12:15:30.123456+02', 'infinity', '-infinity',
          '1 day 02:03:04', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34,
          'happy', 7, '{1,2,3}', '{{a,NULL},{"b c",d}}', '[1,10)', '<a>1</a>', 12345,
          ROW(12.5, 'EUR'), NULL
        )"#,
    );
    let event = next_event(&mut reader).await;
    assert_eq!(event["type"], "all_types.created");
    assert_eq!(event["operation"], "create");
    assert_eq!(event["key"], json!({"id": 1}));
    let expected = json!({
        "id": 1, "i2": 32767, "i4": -5, "i8": 9223372036854775807_i64,
        "num": "123456789012345678901234567890.12", "num_nan": "NaN",
        "f4": 1.5, "f8": 0.1, "f8_inf": "Infinity", "f8_ninf": "-Infinity", "f8_nan": "NaN",
        "b": true, "t": "héllo \"quoted\"", "vc": "abc", "ch": "ab   ", "by": "AAH/",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"b": 1, "a": [1, 2]}, "jb": {"a": 2, "b": 1},
        "d": "2026-11-22", "tm": "10:15:30.5", "ttz": "10:15:30+02",
        "ts": "2026-11-22 10:15:30.123456",
        "tstz": "2026-11-22T10:15:30.123456Z", "tstz_inf": "infinity", "tstz_ninf": "-infinity",
        "iv": "1 day 02:03:04", "ip": "192.168.0.1/24", "net": "10.0.0.0/8",
        "mac": "08:00:2b:01:02:03", "m": "$12.34",
        "mo": "happy", "dom": 7, "ia": [1, 2, 3], "ta": [["a", null], ["b c", "d"]],
        "r": "[1,10)", "x": "<a>1</a>", "o": 12345, "comp": "(12.5,EUR)", "nothing": null
    });
    assert_eq!(event["values"], expected);
    // Field order is the table's column order, byte for byte.
    assert_eq!(
        serde_json::to_string(&event["values"]).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
    assert_eq!(event["source"]["table"], "public.all_types");
    let id = event["id"].as_str().unwrap();
    assert!(id.starts_with("evt_") && !id.contains('.'), "{id}");
}

const INVOICES: &str = "
CREATE TABLE invoice (id int PRIMARY KEY, partner_id int, state text, amount numeric);
INSERT INTO invoice VALUES (1, 10, 'draft', 100.00), (2, 20, 'draft', 50.00);
";

#[tokio::test]
async fn under_replica_identity_full_updates_carry_previous_and_changed() {
    let db = TestDb::new(INVOICES);
    db.sql("ALTER TABLE invoice REPLICA IDENTITY FULL");
    let mut reader = reader_for(&db, "invoice").await;

    db.sql("UPDATE invoice SET partner_id = 11, state = 'posted' WHERE id = 1");
    let event = next_event(&mut reader).await;
    assert_eq!(event["type"], "invoice.updated");
    assert_eq!(
        event["values"],
        json!({"id": 1, "partner_id": 11, "state": "posted", "amount": "100.00"})
    );
    assert_eq!(
        event["previous"],
        json!({"partner_id": 10, "state": "draft"})
    );
    assert_eq!(event["changed"], json!(["partner_id", "state"]));

    db.sql("DELETE FROM invoice WHERE id = 2");
    let event = next_event(&mut reader).await;
    assert_eq!(event["operation"], "delete");
    assert_eq!(event["values"], Value::Null);
    assert_eq!(event["key"], json!({"id": 2}));
    assert_eq!(
        event["previous"],
        json!({"id": 2, "partner_id": 20, "state": "draft", "amount": "50.00"})
    );
}

#[tokio::test]
async fn under_replica_identity_default_nothing_is_invented() {
    let db = TestDb::new(INVOICES);
    let mut reader = reader_for(&db, "invoice").await;

    db.sql("UPDATE invoice SET partner_id = 11 WHERE id = 1");
    let event = next_event(&mut reader).await;
    assert_eq!(event["values"]["partner_id"], 11);
    assert!(event.get("previous").is_none(), "{event}");
    assert!(event.get("changed").is_none(), "{event}");

    db.sql("DELETE FROM invoice WHERE id = 2");
    let event = next_event(&mut reader).await;
    assert_eq!(event["key"], json!({"id": 2}));
    assert_eq!(event["previous"], json!({"id": 2}), "only the key is known");

    db.sql("INSERT INTO invoice VALUES (3, 30, 'draft', 1)");
    let event = next_event(&mut reader).await;
    assert_eq!(event["operation"], "create");
    assert!(event.get("previous").is_none());
}

#[tokio::test]
async fn an_update_that_changes_the_key_reports_the_old_key() {
    for full in [false, true] {
        let db = TestDb::new(INVOICES);
        if full {
            db.sql("ALTER TABLE invoice REPLICA IDENTITY FULL");
        }
        let mut reader = reader_for(&db, "invoice").await;
        db.sql("UPDATE invoice SET id = 100 WHERE id = 1");
        let event = next_event(&mut reader).await;
        assert_eq!(event["key"], json!({"id": 100}), "full={full}");
        assert_eq!(event["previous"], json!({"id": 1}), "full={full}");
        if full {
            assert_eq!(event["changed"], json!(["id"]));
        } else {
            assert!(event.get("changed").is_none());
        }
    }
}

#[tokio::test]
async fn an_unchanged_toasted_value_is_filled_under_full_and_named_unavailable_under_default() {
    for full in [true, false] {
        let db = TestDb::new(
            "CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
             ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO doc SELECT 1, 'a', string_agg(md5(i::text), '') FROM generate_series(1, 400) i;",
        );
        if full {
            db.sql("ALTER TABLE doc REPLICA IDENTITY FULL");
        }
        let body = db.sql("SELECT body FROM doc WHERE id = 1");
        assert!(body.len() > 8000);
        let mut reader = reader_for(&db, "doc").await;
        db.sql("UPDATE doc SET title = 'b' WHERE id = 1");
        let event = next_event(&mut reader).await;
        assert_eq!(event["values"]["title"], "b");
        if full {
            assert_eq!(event["values"]["body"], body.as_str());
            assert!(event.get("unavailable").is_none());
            assert_eq!(event["changed"], json!(["title"]));
            assert_eq!(event["previous"], json!({"title": "a"}));
        } else {
            assert!(event["values"].get("body").is_none(), "{event}");
            assert_eq!(event["unavailable"], json!(["body"]));
        }
    }
}

#[tokio::test]
async fn a_transaction_across_three_tables_keeps_its_order_and_a_rollback_emits_nothing() {
    let db = TestDb::new(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         CREATE TABLE c (id int PRIMARY KEY);",
    );
    let mut reader = reader_for(&db, "a, b, c").await;
    db.sql("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (99); ROLLBACK;");
    db.sql(
        "BEGIN; INSERT INTO c VALUES (1); INSERT INTO a VALUES (2); INSERT INTO b VALUES (3);
         UPDATE c SET id = 4 WHERE id = 1; COMMIT;",
    );
    let events = next_events(&mut reader).await;
    let seen: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["key"]["id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("c.created".to_owned(), json!(1)),
            ("a.created".to_owned(), json!(2)),
            ("b.created".to_owned(), json!(3)),
            ("c.updated".to_owned(), json!(4)),
        ]
    );
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let lsn = events[0]["source"]["lsn"].as_str().unwrap();
    assert!(
        events.iter().all(|e| e["source"]["lsn"] == lsn),
        "one commit"
    );
    assert!(
        ids[0].ends_with("_0000") && ids[3].ends_with("_0003"),
        "{ids:?}"
    );
}

#[tokio::test]
async fn json_numbers_beyond_f64_come_out_exact_in_the_event() {
    let db = TestDb::new("CREATE TABLE docs (id int PRIMARY KEY, jb jsonb, j json)");
    let mut reader = reader_for(&db, "docs").await;
    db.sql(
        r#"INSERT INTO docs VALUES
           (1, '{"n": 12345678901234567890123, "huge": 1e400}', '{"n": 1e400, "f": 0.10}')"#,
    );
    let (commit, items) = next_transaction(&mut reader).await;
    let [Item::Change(change)] = items.as_slice() else {
        panic!("expected one change, got {items:?}");
    };
    let view = ObjectView::of_table(&change.relation);
    let body = envelope(change, &view, "docs.created", commit);
    let body = String::from_utf8(body).unwrap();
    // jsonb stores numbers as numeric and prints 1e400 in full; json keeps the digits as typed.
    let huge = format!("1{}", "0".repeat(400));
    assert!(
        body.contains(&format!(
            r#""jb":{{"n":12345678901234567890123,"huge":{huge}}}"#
        )),
        "{body}"
    );
    // The value exactly; serde_json spells the exponent with its sign.
    assert!(body.contains(r#""j":{"n":1e+400,"f":0.10}"#), "{body}");
}

#[tokio::test]
async fn a_truncate_of_two_tables_takes_a_position_each() {
    let db =
        TestDb::new("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);");
    let mut reader = reader_for(&db, "t, u").await;
    db.sql("BEGIN; TRUNCATE t, u; INSERT INTO t VALUES (1); COMMIT;");
    let (_, items) = next_transaction(&mut reader).await;
    match items.as_slice() {
        [Item::Truncate(t), Item::Change(c)] => {
            assert_eq!(t.relations.len(), 2);
            assert_eq!((t.position, c.position), (0, 2));
        }
        other => panic!("expected a truncate then an insert, got {other:?}"),
    }
}

#[tokio::test]
async fn truncate_is_reported() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let mut reader = reader_for(&db, "t").await;
    db.sql("TRUNCATE t");
    let (_, items) = next_transaction(&mut reader).await;
    match items.as_slice() {
        [Item::Truncate(Truncation {
            relations,
            cascade: false,
            ..
        })] => assert_eq!(relations[0].qualified_name(), "public.t"),
        other => panic!("expected one truncate, got {other:?}"),
    }
}

#[tokio::test]
async fn transactions_at_or_below_the_checkpoint_are_skipped_after_a_restart() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY)");
    let slot = unique("slot");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE t"));
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    db.sql("INSERT INTO t VALUES (1)");
    db.sql("INSERT INTO t VALUES (2)");
    let info = ConnInfo::parse(&db.url).unwrap();
    let mut options = ReaderOptions {
        slot,
        publication,
        skip_through: Default::default(),
    };
    let mut reader = ChangeReader::start(&info, &options).await.unwrap();
    let (first, _) = next_transaction(&mut reader).await;
    reader.close().await.unwrap();

    // Nothing was acknowledged, so the server sends both again; the first is skipped.
    options.skip_through = first.lsn;
    let mut reader = ChangeReader::start(&info, &options).await.unwrap();
    let events = next_events(&mut reader).await;
    assert_eq!(events[0]["key"], json!({"id": 2}));
}

#[tokio::test]
async fn a_backfill_watermark_arrives_between_the_transactions_around_it_and_the_heartbeat_does_not(
) {
    use walhook::source::watermark::{Mark, Watermark};
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY);");
    let mut reader = reader_for(&db, "t").await;
    let low = Watermark {
        token: "1-0-abc".into(),
        mark: Mark::Low,
    };
    let info = ConnInfo::parse(&db.url).unwrap();
    let client = walhook::pg::connect_sql(&info).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO t VALUES (1); \
             SELECT pg_logical_emit_message(false, 'walhook', 'heartbeat'); \
             SELECT pg_logical_emit_message(true, 'walhook', 'backfill low 9-9-x');",
        )
        .await
        .unwrap();
    let written = low.emit(&client).await.unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();

    let mut seen = Vec::new();
    let read = async {
        while seen.len() < 3 {
            match reader.next().await.unwrap().expect("stream open") {
                Item::Change(change) => seen.push(format!("change {:?}", change.current()[0])),
                Item::Watermark { watermark, lsn } => {
                    assert!(lsn <= written, "{lsn} after {written}");
                    seen.push(format!("{:?} {}", watermark.mark, watermark.token));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("three items within 20 s");
    assert_eq!(
        seen,
        [
            "change Value(Number(1))",
            "Low 1-0-abc",
            "change Value(Number(2))"
        ]
    );
}

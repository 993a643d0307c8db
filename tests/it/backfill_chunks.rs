//! Backfill reads a table in key-ordered chunks: each row it reads becomes the same event,
//! byte for byte, as the WAL insert of that row, and the chunks walk the table once.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use support::{unique, TestDb};
use walhook::capture::envelope::envelope;
use walhook::capture::reader::ReaderOptions;
use walhook::capture::{
    ChangeReader, Commit, Item, ObjectView, Relation, RelationCache, RowChange,
};
use walhook::pg::connect_sql;
use walhook::pg::conninfo::ConnInfo;
use walhook::source::chunks::{describe, pin_text_output, ChunkError, ChunkReader, Key};
use walhook::source::pgoutput::{Datum, Tuple};

/// A reader on a fresh slot and publication for `tables`, created before any change.
pub(crate) async fn reader_for(db: &TestDb<'_>, tables: &str) -> ChangeReader {
    let slot = unique("slot");
    let publication = unique("pub");
    db.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE {tables}"
    ));
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    stream(db, &slot, &publication).await
}

/// A reader on an existing slot.
pub(crate) async fn stream(db: &TestDb<'_>, slot: &str, publication: &str) -> ChangeReader {
    let info = ConnInfo::parse(&db.url).unwrap();
    let options = ReaderOptions {
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        skip_through: Default::default(),
    };
    ChangeReader::start(&info, &options).await.unwrap()
}

/// The next transaction's commit and row changes.
pub(crate) async fn next_changes(reader: &mut ChangeReader) -> (Commit, Vec<RowChange>) {
    let read = async {
        let mut changes = Vec::new();
        loop {
            match reader.next().await.unwrap().expect("stream open") {
                Item::Begin(_) => changes.clear(),
                Item::Change(change) => changes.push(change),
                Item::Commit { commit, .. } => return (commit, changes),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a transaction within 20 s")
}

/// The SPEC §3 envelope of a change (table defaults), as the outbox would store it.
pub(crate) fn event(change: &RowChange, commit: Commit) -> String {
    let view = ObjectView::of_table(&change.relation);
    let event_type = view.default_event_type(change.operation);
    String::from_utf8(envelope(change, &view, &event_type, commit)).unwrap()
}

/// A SQL connection set up for chunk reads, as backfill opens it.
pub(crate) async fn read_connection(db: &TestDb<'_>) -> tokio_postgres::Client {
    let client = connect_sql(&ConnInfo::parse(&db.url).unwrap())
        .await
        .unwrap();
    pin_text_output(&client).await.unwrap();
    client
}

/// The table as capture knows it, learned from [`describe`] instead of a Relation message.
pub(crate) async fn learned(client: &tokio_postgres::Client, table: &str) -> Arc<Relation> {
    let message = describe(client, &table.parse().unwrap()).await.unwrap();
    RelationCache::new().learn(message, client).await.unwrap()
}

/// Every row `reader` reads, `chunk` rows at a time, and how many reads it took.
pub(crate) async fn walk(
    reader: &ChunkReader,
    client: &tokio_postgres::Client,
    chunk: usize,
) -> (Vec<Tuple>, usize) {
    let mut rows = Vec::new();
    let mut after: Option<Key> = None;
    let mut reads = 0;
    loop {
        let got = reader.read(client, after.as_ref(), chunk).await.unwrap();
        reads += 1;
        assert!(
            got.rows.len() <= chunk,
            "a chunk holds at most {chunk} rows"
        );
        let done = got.rows.len() < chunk;
        rows.extend(got.rows);
        match got.last_key {
            Some(key) => after = Some(key),
            None => break,
        }
        if done {
            break;
        }
    }
    (rows, reads)
}

fn text(datum: &Datum) -> Option<String> {
    match datum {
        Datum::Text(bytes) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
        Datum::Null => None,
        other => panic!("a chunk read only text and nulls, got {other:?}"),
    }
}

const TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive_int AS int4 CHECK (VALUE > 0);
CREATE SCHEMA extra;
CREATE TABLE extra.thing ();
CREATE TABLE typed (
  id int PRIMARY KEY,
  gone text,
  i2 int2, i4 int4, i8 int8, num numeric,
  f4 float4, f8 float8, f8_special float8,
  b bool, t text, vc varchar(10), by bytea, j json, jb jsonb,
  tstz timestamptz, ts timestamp, d date, tm time, iv interval,
  u uuid, ip inet, ia int[], ta text[], mo mood, dom positive_int, rc regclass,
  twice int GENERATED ALWAYS AS (i4 * 2) STORED
);
ALTER TABLE typed DROP COLUMN gone;
"#;

#[tokio::test]
async fn a_read_row_is_the_same_json_as_the_insert_event_of_that_row() {
    let db = TestDb::new(TYPES);
    // Output settings unlike the walsender's, which pins them at startup: the read
    // connection must not follow them. search_path (which regclass output follows) the
    // walsender does take from the database, and so must the read connection.
    db.sql(&format!(
        "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE {0} SET TimeZone = 'America/New_York'; \
         ALTER DATABASE {0} SET extra_float_digits = 0; \
         ALTER DATABASE {0} SET IntervalStyle = 'sql_standard'; \
         ALTER DATABASE {0} SET bytea_output = 'escape'; \
         ALTER DATABASE {0} SET search_path = public, extra",
        db.name
    ));
    let mut wal = reader_for(&db, "typed").await;
    db.sql(
        r#"INSERT INTO typed VALUES
         (1, 32767, -5, 9223372036854775807, 123456789012345678901234567890.12,
          1.1, 0.1, 'NaN', true, 'héllo "quoted" it''s', 'abc', '\x0001ff',
          '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": 2}',
          '2026-11-22 12:15:30.123456+02', '2026-11-22 10:15:30.5', '2026-01-02', '10:15:30.25',
          '1 year 2 mons 3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '192.168.0.1/24', '{1,2,NULL}', '{"a b",NULL,"c\"d"}', 'sad', 7, 'extra.thing'),
         (2, -1, 0, -9223372036854775808, 'NaN', 'Infinity', '-Infinity', 'Infinity',
          false, '', NULL, '\x', '[]', 'null', 'infinity', '-infinity', '-infinity',
          '00:00', '-1 days +02:00', NULL, '::1', '{}', '{}', 'happy', NULL, 'typed'),
         (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
    );
    let (commit, inserts) = next_changes(&mut wal).await;
    assert_eq!(inserts.len(), 3);

    let client = read_connection(&db).await;
    let relation = learned(&client, "typed").await;
    let wal_relation = &inserts[0].relation;
    let names = |r: &Relation| r.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&relation),
        names(wal_relation),
        "describe lists pgoutput's columns"
    );
    assert!(!names(&relation).contains(&"twice".to_owned()));
    assert!(!names(&relation).contains(&"gone".to_owned()));
    let oids = |r: &Relation| r.columns.iter().map(|c| c.type_oid).collect::<Vec<_>>();
    assert_eq!(oids(&relation), oids(wal_relation));
    assert_eq!(relation.key, wal_relation.key);
    assert_eq!(relation.identity_columns, wal_relation.identity_columns);

    let message = describe(&client, &"typed".parse().unwrap()).await.unwrap();
    let reader = ChunkReader::new(&client, &message, &["id".to_owned()], None)
        .await
        .unwrap();
    let chunk = reader.read(&client, None, 10).await.unwrap();
    assert_eq!(chunk.rows.len(), 3);
    assert_eq!(chunk.last_key, Some(Key(vec!["3".into()])));
    for (position, (tuple, insert)) in chunk.rows.iter().zip(&inserts).enumerate() {
        let read = RowChange::insert(relation.clone(), position as u32, tuple);
        assert_eq!(read.new, insert.new, "row {position}'s values");
        assert_eq!(
            event(&read, commit),
            event(insert, commit),
            "row {position}'s event"
        );
    }

    // The database's settings are really in force where nothing pins them.
    let unpinned = connect_sql(&ConnInfo::parse(&db.url).unwrap())
        .await
        .unwrap();
    let plain = reader.read(&unpinned, None, 1).await.unwrap();
    let date = message.columns.iter().position(|c| c.name == "d").unwrap();
    assert_eq!(text(&plain.rows[0].0[date]).as_deref(), Some("02/01/2026"));
    assert_eq!(text(&chunk.rows[0].0[date]).as_deref(), Some("2026-01-02"));
    let rc = message.columns.iter().position(|c| c.name == "rc").unwrap();
    assert_eq!(text(&chunk.rows[0].0[rc]).as_deref(), Some("thing"));
    wal.close().await.unwrap();
}

#[tokio::test]
async fn describe_flags_the_replica_identity_columns_as_pgoutput_does() {
    let db = TestDb::new(
        "CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, note text);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         CREATE TABLE full_row (id int PRIMARY KEY, note text);
         ALTER TABLE full_row REPLICA IDENTITY FULL;
         CREATE TABLE no_identity (id int PRIMARY KEY, note text);
         ALTER TABLE no_identity REPLICA IDENTITY NOTHING;",
    );
    let mut wal = reader_for(&db, "by_index, full_row, no_identity").await;
    db.sql(
        "BEGIN; INSERT INTO by_index VALUES (1, 'a', 'x'); INSERT INTO full_row VALUES (1, 'x');
         INSERT INTO no_identity VALUES (1, 'x'); COMMIT;",
    );
    let (_, inserts) = next_changes(&mut wal).await;
    let client = read_connection(&db).await;
    for insert in &inserts {
        let relation = learned(&client, &insert.relation.qualified_name()).await;
        assert_eq!(
            relation.identity_columns, insert.relation.identity_columns,
            "{}",
            insert.relation
        );
        assert_eq!(relation.identity, insert.relation.identity);
        assert_eq!(relation.oid, insert.relation.oid);
    }
    let missing = describe(&client, &"public.nowhere".parse().unwrap())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("public.nowhere"), "{missing}");
    wal.close().await.unwrap();
}

const AWKWARD: &[&str] = &[
    "",
    "'",
    "''",
    "\"",
    "\\",
    "O'Reilly",
    "a b",
    "é",
    "日本語",
    "😀",
    "a\nb",
    "x); DROP",
    "%",
    "_",
    "NULL",
    "z",
];

#[tokio::test]
async fn chunks_walk_the_whole_table_exactly_once_in_key_order() {
    let db = TestDb::new(
        "CREATE TABLE pairs (n int, s text, v text, PRIMARY KEY (n, s));
         CREATE TABLE words (w text PRIMARY KEY, v int);",
    );
    let client = read_connection(&db).await;
    let mut values = Vec::new();
    for n in 0..5 {
        for s in AWKWARD {
            values.push(format!("({n}, {}, 'v')", walhook::pg::quote_literal(s)));
        }
    }
    db.sql(&format!("INSERT INTO pairs VALUES {}", values.join(", ")));
    let words: Vec<String> = AWKWARD
        .iter()
        .enumerate()
        .map(|(i, w)| format!("({}, {i})", walhook::pg::quote_literal(w)))
        .collect();
    db.sql(&format!("INSERT INTO words VALUES {}", words.join(", ")));

    for (table, key, width) in [("pairs", vec!["n", "s"], 2), ("words", vec!["w"], 1)] {
        let key: Vec<String> = key.into_iter().map(str::to_owned).collect();
        let expected: Vec<Vec<Option<String>>> = client
            .simple_query(&format!(
                "SELECT {} FROM {table} ORDER BY {0}",
                key.join(", ")
            ))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..width).map(|i| row.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect();
        let message = describe(&client, &table.parse().unwrap()).await.unwrap();
        let reader = ChunkReader::new(&client, &message, &key, None)
            .await
            .unwrap();
        for chunk in [1, 3, 7, expected.len(), 1000] {
            let (rows, reads) = walk(&reader, &client, chunk).await;
            let keys: Vec<Vec<Option<String>>> = rows
                .iter()
                .map(|row| row.0[..width].iter().map(text).collect())
                .collect();
            assert_eq!(keys, expected, "{table} in chunks of {chunk}");
            assert!(
                reads <= expected.len() / chunk + 1,
                "{reads} reads for chunks of {chunk}"
            );
        }
    }
}

#[tokio::test]
async fn a_filter_limits_the_rows_read() {
    let db = TestDb::new(
        "CREATE TABLE invoice (id int PRIMARY KEY, state text);
         CREATE SEQUENCE invoice_reads;
         INSERT INTO invoice SELECT i, CASE WHEN i % 3 = 0 THEN 'paid' ELSE 'open' END
         FROM generate_series(1, 30) i;",
    );
    let client = read_connection(&db).await;
    let message = describe(&client, &"invoice".parse().unwrap())
        .await
        .unwrap();
    let reader = ChunkReader::new(&client, &message, &["id".into()], Some("state = 'paid'"))
        .await
        .unwrap();
    let (rows, _) = walk(&reader, &client, 4).await;
    let ids: Vec<String> = rows.iter().map(|r| text(&r.0[0]).unwrap()).collect();
    let expected: Vec<String> = (1..=30)
        .filter(|i| i % 3 == 0)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids, expected);

    // The read runs in a READ ONLY transaction (a filter cannot write), and a failed read
    // leaves the connection usable.
    let writing = ChunkReader::new(
        &client,
        &message,
        &["id".into()],
        Some("nextval('invoice_reads') > 0"),
    )
    .await
    .unwrap();
    let error = writing.read(&client, None, 5).await.unwrap_err();
    assert!(error.to_string().contains("public.invoice"), "{error}");
    assert!(
        error.to_string().contains("read-only transaction"),
        "{error}"
    );
    assert_eq!(reader.read(&client, None, 2).await.unwrap().rows.len(), 2);
}

#[tokio::test]
async fn a_key_that_is_not_unique_is_refused_with_the_fix() {
    let db = TestDb::new(
        "CREATE TABLE person (id int PRIMARY KEY, email text, nick text, team int, code int);
         CREATE UNIQUE INDEX person_email ON person (email);
         CREATE UNIQUE INDEX person_nick ON person (nick) WHERE team IS NOT NULL;
         CREATE UNIQUE INDEX person_pair ON person (team, nick);
         CREATE UNIQUE INDEX person_code ON person (code) INCLUDE (team);
         INSERT INTO person VALUES (1, 'b@x', 'b', 1), (2, NULL, 'n', 1), (3, 'a@x', NULL, 2);",
    );
    let client = read_connection(&db).await;
    let message = describe(&client, &"person".parse().unwrap()).await.unwrap();
    let key = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();

    for not_unique in [
        &["team"][..],
        &["nick"],
        &["id", "email"],
        &["code", "team"],
    ] {
        let error = ChunkReader::new(&client, &message, &key(not_unique), None)
            .await
            .unwrap_err();
        assert!(matches!(error, ChunkError::NotUnique { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains(&format!("ON public.person ({})", not_unique.join(", "))),
            "{text}"
        );
        assert!(text.contains("CREATE UNIQUE INDEX"), "{text}");
    }
    let unknown = ChunkReader::new(&client, &message, &key(&["mail"]), None)
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("mail"), "{unknown}");

    // A unique index that is not the primary key works; rows with a NULL key are not read.
    let by_email = ChunkReader::new(&client, &message, &key(&["email"]), None)
        .await
        .unwrap();
    let (rows, _) = walk(&by_email, &client, 1).await;
    let emails: Vec<Option<String>> = rows.iter().map(|r| text(&r.0[1])).collect();
    assert_eq!(emails, vec![Some("a@x".to_owned()), Some("b@x".to_owned())]);

    // The key columns of an index count, its INCLUDE columns do not.
    ChunkReader::new(&client, &message, &key(&["code"]), None)
        .await
        .unwrap();

    // Covering as a set: the key's order is the reading order.
    let by_pair = ChunkReader::new(&client, &message, &key(&["nick", "team"]), None)
        .await
        .unwrap();
    let (rows, _) = walk(&by_pair, &client, 1).await;
    let nicks: Vec<Option<String>> = rows.iter().map(|r| text(&r.0[2])).collect();
    assert_eq!(nicks, vec![Some("b".to_owned()), Some("n".to_owned())]);
}

#[test]
fn a_key_survives_its_json_form() {
    for key in [
        Key(vec!["1".into()]),
        Key(vec![
            "42".into(),
            "O'Reilly \"q\" \\ é 😀".into(),
            "".into(),
        ]),
    ] {
        let json = key.to_json();
        assert!(json.starts_with('['), "{json}");
        assert_eq!(Key::from_json(&json).unwrap(), key);
    }
    assert_eq!(Key(vec!["a".into(), "b".into()]).to_json(), r#"["a","b"]"#);
    let bad = Key::from_json("{\"a\": 1}").unwrap_err();
    assert!(bad.to_string().contains("JSON array of strings"), "{bad}");
}

//! Change readers on fresh or existing slots, for stories that read the WAL themselves.

use walhook::capture::reader::ReaderOptions;
use walhook::capture::ChangeReader;
use walhook::pg::conninfo::ConnInfo;

use super::{unique, TestDb};

/// A reader on a fresh slot and publication for `tables`, created before any change.
pub async fn reader_for(db: &TestDb<'_>, tables: &str) -> ChangeReader {
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
pub async fn stream(db: &TestDb<'_>, slot: &str, publication: &str) -> ChangeReader {
    let info = ConnInfo::parse(&db.url).unwrap();
    let options = ReaderOptions {
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        skip_through: Default::default(),
    };
    ChangeReader::start(&info, &options).await.unwrap()
}

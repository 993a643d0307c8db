//! Seeding document state (SPEC §3a): before a capture session streams, every document or
//! `keep_state` object without state that fits its settings is read whole from the source
//! and written into `document_row`, so its first event is complete.
//!
//! The read is consistent with the stream: a TEMPORARY slot is created with an exported
//! snapshot, the tables are read inside that snapshot, and the slot's consistent point is
//! the seed's LSN. A source transaction committed before it is in the state; one committed
//! at or after it is applied to the state by capture ([`Seeds::applies`]). The slot exists
//! only for its snapshot: it is dropped when the seed ends, and Postgres drops it itself if
//! walhook dies mid-seed, so a seed never leaves a slot behind holding WAL.
//!
//! Why not watermarked chunks on the session's own slot (as a backfill reads): the state
//! must be as of one position for the whole document (a header and its lines read in
//! different chunks would disagree), and a snapshot gives exactly that. The cost, written
//! down in ARCHITECTURE.md: changes committed between the capture checkpoint and the seed's
//! consistent point become part of the state without events (a new object has no
//! subscriptions yet; a reseed after an edit of its settings is logged with that span).

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::capture::document::{DocumentObject, Documents};
use crate::capture::relation::RelationError;
use crate::capture::{Relation, RelationCache, RowChange};
use crate::config::TableName;
use crate::outbox::documents::{self as state, SeedRows};
use crate::outbox::StoreError;
use crate::pg::{self, ConnInfo, Lsn};
use crate::source::chunks::{self, ChunkError, ChunkReader};
use crate::source::snapshot::{SeedError, SeedSlot};

/// Rows read and written at a time.
const SEED_CHUNK: usize = 5_000;

/// Why a seed failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedFailure {
    /// The seed slot or its snapshot.
    #[error(transparent)]
    Slot(#[from] SeedError),
    /// A connection could not be opened.
    #[error("seeding document state: {0}")]
    Connect(#[from] pg::ConnectError),
    /// The document tables could not be described for capture.
    #[error("describing the tables of documents and keep_state objects: {0}")]
    Describe(#[source] ChunkError),
    /// Their column types could not be looked up.
    #[error("describing the tables of documents and keep_state objects: {0}")]
    DescribeTypes(#[source] RelationError),
    /// Which objects are seeded could not be read.
    #[error("reading which documents are seeded: {0}")]
    Seeds(#[source] StoreError),
    /// Reading a table failed.
    #[error("seeding objects.{object}: {source}")]
    Read {
        /// The object.
        object: String,
        /// The error.
        #[source]
        source: ChunkError,
    },
    /// A table's column types could not be looked up.
    #[error("seeding objects.{object}: {source}")]
    Types {
        /// The object.
        object: String,
        /// The error.
        #[source]
        source: RelationError,
    },
    /// A row could not be kept (no key, a key column missing).
    #[error("seeding objects.{object}: table {table}: {message}")]
    Row {
        /// The object.
        object: String,
        /// The table.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// Writing the state failed.
    #[error("seeding objects.{object}: {source}")]
    Store {
        /// The object.
        object: String,
        /// The error.
        #[source]
        source: StoreError,
    },
}

impl SeedFailure {
    /// Whether trying again may succeed (a lost connection, a busy server); a row or table
    /// that does not fit the config will not.
    pub fn is_transient(&self) -> bool {
        match self {
            SeedFailure::Read { source, .. } | SeedFailure::Describe(source) => {
                source.is_transient()
            }
            SeedFailure::Row { .. } => false,
            _ => true,
        }
    }
}

/// Where each object's state starts: object id → the LSN of its seed.
#[derive(Debug, Default, Clone)]
pub struct Seeds {
    /// Object id → (fingerprint, seed LSN), as `document_seed` holds them.
    seeded: HashMap<String, (String, Lsn)>,
}

impl Seeds {
    /// Whether a change of `object` committed at `commit_lsn` is applied to its state: one
    /// committed before the seed's consistent point is in the seed already.
    pub fn applies(&self, object: &str, commit_lsn: Lsn) -> bool {
        self.seeded
            .get(object)
            .is_none_or(|(_, seed)| commit_lsn >= *seed)
    }

    /// Whether the state fits `documents` exactly: every object seeded with its settings,
    /// and none kept that it no longer has (whose state would go stale). A config edit that
    /// it does not fit needs a new session, which seeds and forgets first.
    pub fn covers(&self, documents: &Documents) -> bool {
        self.seeded.len() == documents.objects().len()
            && state::unseeded(documents, &self.seeded).is_empty()
    }
}

/// Where a seed reads and writes.
pub struct Seeder<'a> {
    /// The source database.
    pub source: &'a ConnInfo,
    /// The outbox database.
    pub outbox: &'a ConnInfo,
    /// The outbox schema.
    pub schema: &'a str,
    /// The capture slot: the seed slot is named after it.
    pub slot: &'a str,
}

impl Seeder<'_> {
    /// Seeds every object of `documents` whose state is missing or was kept under other
    /// settings, and returns where each object's state starts. `checkpoint` is where
    /// capture resumes: a reseed says how much WAL it takes in without events.
    pub async fn seed(&self, documents: &Documents, checkpoint: Lsn) -> Result<Seeds, SeedFailure> {
        let mut outbox = pg::connect_sql(self.outbox).await?;
        let stored = state::seeds(&outbox, self.schema)
            .await
            .map_err(SeedFailure::Seeds)?;
        let unseeded = state::unseeded(documents, &stored);
        let mut seeds = Seeds::default();
        for (object, seed) in &stored {
            if documents.objects().iter().any(|o| *o.id == **object) {
                seeds.seeded.insert(object.clone(), seed.clone());
                continue;
            }
            // It left the config: its state would be stale if it came back.
            let tx = outbox
                .transaction()
                .await
                .map_err(StoreError::at("beginning to forget a document's state"))
                .map_err(SeedFailure::Seeds)?;
            state::forget(&tx, self.schema, object)
                .await
                .map_err(SeedFailure::Seeds)?;
            tx.commit()
                .await
                .map_err(StoreError::at("forgetting a document's state"))
                .map_err(SeedFailure::Seeds)?;
            tracing::info!(
                object = %object,
                "objects.{object} is no longer configured: its kept state is gone"
            );
        }
        if unseeded.is_empty() {
            return Ok(seeds);
        }
        let slot = SeedSlot::create_temporary(self.source, &seed_slot_name(self.slot)).await?;
        let at = slot.consistent_point();
        for object in unseeded {
            let reseed = stored.contains_key(&*object.id);
            let rows = self.seed_object(&slot, &mut outbox, object, at).await?;
            if reseed {
                tracing::warn!(
                    object = %object.id,
                    "objects.{}: its settings changed, so its state was read again ({rows} \
                     rows, as of {at}); changes committed between the capture checkpoint \
                     {checkpoint} and {at} are in that state but made no events",
                    object.id
                );
            } else {
                tracing::info!(
                    object = %object.id,
                    "objects.{}: state seeded from the source ({rows} rows, as of {at}); its \
                     events begin there",
                    object.id
                );
            }
            seeds
                .seeded
                .insert(object.id.to_string(), (object.fingerprint.clone(), at));
        }
        slot.finish().await?;
        Ok(seeds)
    }

    /// Reads every table of one object inside the snapshot and writes its state in one
    /// outbox transaction; returns the rows kept.
    async fn seed_object(
        &self,
        slot: &SeedSlot,
        outbox: &mut Client,
        object: &DocumentObject,
        at: Lsn,
    ) -> Result<i64, SeedFailure> {
        let id = object.id.to_string();
        let store = |source| SeedFailure::Store {
            object: id.clone(),
            source,
        };
        let read = |source| SeedFailure::Read {
            object: id.clone(),
            source,
        };
        let tx = outbox
            .transaction()
            .await
            .map_err(StoreError::at("beginning a seed"))
            .map_err(store)?;
        state::forget(&tx, self.schema, &id).await.map_err(store)?;
        let source = slot.client();
        let mut total = 0i64;
        for (part, spec) in object.parts.iter().enumerate() {
            let part = part as u16;
            let described = chunks::describe(source, &spec.table).await.map_err(read)?;
            let relation = RelationCache::new()
                .learn(described.clone(), source)
                .await
                .map_err(|source| SeedFailure::Types {
                    object: id.clone(),
                    source,
                })?;
            let key =
                key_names(&relation, spec.key.as_deref()).ok_or_else(|| SeedFailure::Row {
                    object: id.clone(),
                    table: spec.table.to_string(),
                    message: "the table has no primary key; name the key columns in the config"
                        .into(),
                })?;
            let reader = ChunkReader::new(source, &described, &key, None)
                .await
                .map_err(read)?
                .in_snapshot();
            let mut after = None;
            loop {
                let chunk = reader
                    .read(source, after.as_ref(), SEED_CHUNK)
                    .await
                    .map_err(read)?;
                let mut rows = SeedRows::default();
                for tuple in &chunk.rows {
                    let change = RowChange::insert(relation.clone(), 0, tuple);
                    let (row_key, doc_key, row) =
                        object
                            .seed_row(part, &change)
                            .map_err(|message| SeedFailure::Row {
                                object: id.clone(),
                                table: spec.table.to_string(),
                                message,
                            })?;
                    rows.push(part, row_key, doc_key, &row);
                }
                total += rows.len() as i64;
                state::seed_rows(&tx, self.schema, &id, &rows)
                    .await
                    .map_err(store)?;
                match chunk.last_key {
                    Some(last) if chunk.rows.len() == SEED_CHUNK => after = Some(last),
                    _ => break,
                }
            }
        }
        state::seed_finish(&tx, self.schema, &id, &object.fingerprint, at, total)
            .await
            .map_err(store)?;
        tx.commit()
            .await
            .map_err(StoreError::at("committing a seed"))
            .map_err(store)?;
        Ok(total)
    }
}

/// The column types of every document table, as the catalog describes them now.
pub async fn describe(
    client: &Client,
    tables: impl Iterator<Item = &TableName>,
) -> Result<HashMap<TableName, Relation>, SeedFailure> {
    let mut relations = HashMap::new();
    let mut cache = RelationCache::new();
    for table in tables {
        let described = chunks::describe(client, table)
            .await
            .map_err(SeedFailure::Describe)?;
        let relation = cache
            .learn(described, client)
            .await
            .map_err(SeedFailure::DescribeTypes)?;
        relations.insert(table.clone(), (*relation).clone());
    }
    Ok(relations)
}

/// The configured key columns, else the table's primary key; `None` when it has neither.
fn key_names(relation: &Relation, configured: Option<&[String]>) -> Option<Vec<String>> {
    let key: Vec<String> = match configured {
        Some(key) => key.to_vec(),
        None => relation
            .key
            .iter()
            .map(|&i| relation.columns[i].name.clone())
            .collect(),
    };
    (!key.is_empty()).then_some(key)
}

/// The seed slot's name: the capture slot's with `_seed`, within Postgres's 63 bytes.
fn seed_slot_name(slot: &str) -> String {
    let mut base = slot.to_owned();
    while base.len() > 63 - "_seed".len() {
        base.pop();
    }
    format!("{base}_seed")
}

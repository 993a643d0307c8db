//! A consistent seed on a brand-new slot: the slot is created with an exported snapshot,
//! and a second, SQL connection reads the tables inside that snapshot. What it reads is
//! exactly what the tables held at the slot's consistent point, so seed plus stream is
//! every row once, with no gap and no overlap.
//!
//! Postgres keeps an exported snapshot importable only while the exporting replication
//! connection stays open and idle, so [`SeedSlot`] holds both connections until
//! [`SeedSlot::finish`].

use tokio_postgres::Client;

use super::chunks::{pin_text_output, ChunkError};
use super::replication::{ReplicationConnection, ReplicationError};
use crate::pg::error::server_message;
use crate::pg::{connect_sql, quote_literal, ConnInfo, ConnectError, Lsn};

/// What went wrong creating or using a seed slot.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The replication connection could not be opened.
    #[error("seeding slot {slot}: opening the replication connection: {source}")]
    Replication {
        /// The slot.
        slot: String,
        /// The error.
        #[source]
        source: ReplicationError,
    },
    /// `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` failed.
    #[error(
        "creating slot {slot} with an exported snapshot: {source}{}",
        exists_fix(slot, source)
    )]
    CreateSlot {
        /// The slot.
        slot: String,
        /// The error (SQLSTATE 42710 when the slot exists already).
        #[source]
        source: ReplicationError,
    },
    /// The SQL connection could not be opened.
    #[error("seeding slot {slot}: opening the SQL connection: {source}")]
    Connect {
        /// The slot.
        slot: String,
        /// The error.
        #[source]
        source: ConnectError,
    },
    /// The SQL connection's output settings could not be pinned.
    #[error("seeding slot {slot}: {source}")]
    Settings {
        /// The slot.
        slot: String,
        /// The error.
        #[source]
        source: ChunkError,
    },
    /// Opening or ending the transaction inside the snapshot failed.
    #[error("seeding slot {slot}: {what}: {message}")]
    Snapshot {
        /// The slot.
        slot: String,
        /// What walhook was doing.
        what: &'static str,
        /// The server's words.
        message: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Closing the replication connection failed (the slot exists and is usable).
    #[error("seeding slot {slot}: closing the replication connection: {source}")]
    Close {
        /// The slot.
        slot: String,
        /// The error.
        #[source]
        source: ReplicationError,
    },
}

impl SeedError {
    /// Whether the slot already existed: a seed needs a brand-new one.
    pub fn slot_exists(&self) -> bool {
        matches!(self, SeedError::CreateSlot { source, .. } if source.code() == Some("42710"))
    }
}

fn exists_fix(slot: &str, source: &ReplicationError) -> String {
    if source.code() == Some("42710") {
        format!(
            "; a seed needs a brand-new slot, because only a new slot's snapshot matches where \
             its stream starts: choose another slot name, or drop this one if nothing uses it \
             (SELECT pg_drop_replication_slot({}))",
            quote_literal(slot)
        )
    } else {
        String::new()
    }
}

/// A new logical slot whose exported snapshot is open for reading: what the tables held
/// exactly at the slot's start.
pub struct SeedSlot {
    slot: String,
    consistent_point: Lsn,
    /// Kept open and idle: closing it, or running any command on it, ends the export.
    replication: ReplicationConnection,
    client: Client,
}

impl std::fmt::Debug for SeedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedSlot")
            .field("slot", &self.slot)
            .field("consistent_point", &self.consistent_point)
            .finish_non_exhaustive()
    }
}

impl SeedSlot {
    /// Creates `slot` (pgoutput, NOT temporary) with EXPORT_SNAPSHOT on a replication
    /// connection, then opens a second, SQL connection inside `BEGIN ISOLATION LEVEL
    /// REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '<name>'`. If anything after the
    /// slot's creation fails, the slot is dropped again (best effort), so a failed seed
    /// leaves no slot holding WAL.
    pub async fn create(info: &ConnInfo, slot: &str) -> Result<SeedSlot, SeedError> {
        SeedSlot::create_with(info, slot, false).await
    }

    /// Like [`SeedSlot::create`], but the slot is TEMPORARY: it is only there for its
    /// snapshot and its consistent point (a document seed), and Postgres drops it when the
    /// seed ends or walhook dies, so it can never be left behind holding WAL.
    pub async fn create_temporary(info: &ConnInfo, slot: &str) -> Result<SeedSlot, SeedError> {
        SeedSlot::create_with(info, slot, true).await
    }

    async fn create_with(
        info: &ConnInfo,
        slot: &str,
        temporary: bool,
    ) -> Result<SeedSlot, SeedError> {
        let name = slot.to_owned();
        let mut replication = ReplicationConnection::connect(info)
            .await
            .map_err(|source| SeedError::Replication {
                slot: name.clone(),
                source,
            })?;
        let created = replication
            .create_slot_exporting_snapshot(slot, temporary)
            .await
            .map_err(|source| SeedError::CreateSlot {
                slot: name.clone(),
                source,
            })?;
        match open_in_snapshot(info, slot, &created.snapshot).await {
            Ok(client) => Ok(SeedSlot {
                slot: name,
                consistent_point: created.consistent_point,
                replication,
                client,
            }),
            Err(e) if temporary => {
                let _ = replication.close().await;
                Err(e)
            }
            Err(e) => {
                // Any command ends the export, which is lost already.
                let drop = format!("DROP_REPLICATION_SLOT \"{}\"", slot.replace('"', "\"\""));
                if let Err(drop_error) = replication.simple_query(&drop).await {
                    tracing::warn!(slot, error = %drop_error, "could not drop the slot of a failed seed");
                }
                let _ = replication.close().await;
                Err(e)
            }
        }
    }

    /// The slot's consistent point: changes committed after it are streamed by the slot,
    /// never in the seed.
    pub fn consistent_point(&self) -> Lsn {
        self.consistent_point
    }

    /// The SQL connection inside the snapshot (pin_text_output already applied), for
    /// [`ChunkReader::read`] (on a reader made [`ChunkReader::in_snapshot`]) or any query.
    ///
    /// [`ChunkReader::read`]: crate::source::chunks::ChunkReader::read
    /// [`ChunkReader::in_snapshot`]: crate::source::chunks::ChunkReader::in_snapshot
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the snapshot transaction and closes the replication connection; the slot stays,
    /// to be streamed from.
    pub async fn finish(self) -> Result<(), SeedError> {
        self.client
            .simple_query("COMMIT")
            .await
            .map_err(|source| SeedError::Snapshot {
                slot: self.slot.clone(),
                what: "ending the snapshot's transaction",
                message: server_message(&source),
                source,
            })?;
        self.replication
            .close()
            .await
            .map_err(|source| SeedError::Close {
                slot: self.slot,
                source,
            })
    }
}

/// A SQL connection with the walsender's output settings, inside the exported snapshot.
async fn open_in_snapshot(
    info: &ConnInfo,
    slot: &str,
    snapshot: &str,
) -> Result<Client, SeedError> {
    let client = connect_sql(info)
        .await
        .map_err(|source| SeedError::Connect {
            slot: slot.to_owned(),
            source,
        })?;
    pin_text_output(&client)
        .await
        .map_err(|source| SeedError::Settings {
            slot: slot.to_owned(),
            source,
        })?;
    client
        .simple_query(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|source| SeedError::Snapshot {
            slot: slot.to_owned(),
            what: "importing the slot's snapshot",
            message: server_message(&source),
            source,
        })?;
    Ok(client)
}

//! What `run` does before capturing: migrations, publication, slot, and the refusal to
//! start subscriptions the table's replica identity cannot serve.

use std::collections::BTreeMap;

use crate::capture::matcher::needs_old_values;
use crate::config::{Config, TableName};
use crate::outbox::migrate::{migrate, MigrateError};
use crate::source::conninfo::{ConnInfo, ConnInfoError};
use crate::source::publication::{self, PublicationChange};
use crate::source::slot::{self, SlotState};
use crate::source::tls::{self, ConnectError};
use crate::source::SetupError;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A connection string is invalid.
    #[error("connection string: {0}")]
    ConnInfo(#[from] ConnInfoError),
    /// A database could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The outbox schema could not be migrated.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Publication or slot management failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The slot is gone although walhook captured from it before.
    #[error(
        "replication slot {slot:?} does not exist, but walhook captured through it up to {checkpoint}: \
         it was dropped behind walhook's back and the changes since then cannot be recovered. \
         Run `walhook setup --recreate-slot` to start again from now (those changes stay lost)"
    )]
    SlotDropped {
        /// The slot.
        slot: String,
        /// The last checkpoint.
        checkpoint: String,
    },
    /// The slot was invalidated (its WAL was removed).
    #[error(
        "replication slot {slot:?} was invalidated (wal_status lost): the WAL it needed was \
         removed, so the changes since its last position cannot be captured. Run \
         `walhook setup --recreate-slot` to start again from now (those changes stay lost)"
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// `--no-setup` and the slot does not exist.
    #[error("replication slot {slot:?} does not exist; run `walhook setup` (or `run` without --no-setup)")]
    SlotMissing {
        /// The slot.
        slot: String,
    },
    /// The slot exists but is not a pgoutput slot of this database.
    #[error("replication slot {slot:?} is not walhook's: {detail}; set source.slot to another name")]
    SlotForeign {
        /// The slot.
        slot: String,
        /// What it is instead.
        detail: String,
    },
    /// Subscriptions need old values that the replica identity does not log.
    #[error(
        "refusing to start: {}",
        problems.join("; ")
    )]
    ReplicaIdentity {
        /// One message per table, each with its `ALTER TABLE`.
        problems: Vec<String>,
    },
    /// A catalog query failed.
    #[error("reading the catalog: {0}")]
    Catalog(#[from] tokio_postgres::Error),
}

impl StartupError {
    /// Whether this is the config asking for something the database cannot give (exit 2).
    pub fn is_config_problem(&self) -> bool {
        matches!(self, StartupError::ReplicaIdentity { .. } | StartupError::ConnInfo(_))
    }
}

/// Migrates the outbox, syncs the publication and makes sure the slot is usable.
pub(super) async fn prepare(
    config: &Config,
    source: &ConnInfo,
    outbox: &ConnInfo,
    setup: bool,
) -> Result<(), StartupError> {
    let catalog = tls::connect_sql(source).await?;
    let outbox_client = tls::connect_sql(outbox).await?;
    if setup {
        let report = migrate(&outbox_client, &config.outbox.schema).await?;
        tracing::info!(schema = %config.outbox.schema, "outbox schema: {report}");
        sync_publication(config, &catalog).await?;
    }
    check_replica_identity(config, &catalog).await?;

    let slot = &config.source.slot;
    match slot::slot_state(&catalog, slot).await? {
        SlotState::Ready { active_pid, .. } => {
            if let Some(pid) = active_pid {
                tracing::warn!(slot, pid, "the slot is in use by another process (another walhook?); waiting for it");
            }
        }
        SlotState::Lost => return Err(StartupError::SlotLost { slot: slot.clone() }),
        SlotState::WrongKind {
            plugin,
            slot_type,
            database,
        } => {
            return Err(StartupError::SlotForeign {
                slot: slot.clone(),
                detail: format!("a {slot_type} slot with plugin {plugin:?} in database {database:?}"),
            })
        }
        SlotState::Missing => {
            let checkpoint = read_checkpoint(&outbox_client, &config.outbox.schema, slot).await;
            if let Some(checkpoint) = checkpoint {
                return Err(StartupError::SlotDropped {
                    slot: slot.clone(),
                    checkpoint,
                });
            }
            if !setup {
                return Err(StartupError::SlotMissing { slot: slot.clone() });
            }
            let at = slot::create_slot(source, slot).await?;
            // Recorded at once, so that a slot dropped before the first event is noticed.
            outbox_client
                .execute(
                    &format!(
                        "INSERT INTO {}.checkpoint (slot, commit_lsn) VALUES ($1, $2::text::pg_lsn) \
                         ON CONFLICT (slot) DO NOTHING",
                        crate::pg::quote_ident(&config.outbox.schema)
                    ),
                    &[slot, &at.to_string()],
                )
                .await?;
            tracing::info!(slot, at = %at, "created replication slot");
        }
    }
    Ok(())
}

async fn read_checkpoint(client: &tokio_postgres::Client, schema: &str, slot: &str) -> Option<String> {
    client
        .query_opt(
            &format!(
                "SELECT commit_lsn::text FROM {}.checkpoint WHERE slot = $1",
                crate::pg::quote_ident(schema)
            ),
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// Makes the publication hold exactly the configured tables, logging what changed.
pub(super) async fn sync_publication(
    config: &Config,
    catalog: &tokio_postgres::Client,
) -> Result<PublicationChange, StartupError> {
    let change = publication::sync_publication(
        catalog,
        &config.source.publication,
        &config.tables(),
    )
    .await?;
    tracing::info!(publication = %config.source.publication, "{change}");
    Ok(change)
}

/// Refuses subscriptions whose `watch` or `when` needs old values the table does not log.
pub(super) async fn check_replica_identity(
    config: &Config,
    catalog: &tokio_postgres::Client,
) -> Result<(), StartupError> {
    let mut by_table: BTreeMap<TableName, Vec<String>> = BTreeMap::new();
    for (table, subscription, reason) in needs_old_values(config) {
        by_table
            .entry(table)
            .or_default()
            .push(format!("{subscription} ({reason})"));
    }
    let mut problems = Vec::new();
    for (table, subscriptions) in by_table {
        let identity: Option<String> = catalog
            .query_opt(
                "SELECT c.relreplident::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await?
            .map(|row| row.get(0));
        if identity.as_deref() != Some("f") {
            problems.push(format!(
                "subscriptions {} need old values of {table}, but its REPLICA IDENTITY logs only \
                 the key; fix: ALTER TABLE {} REPLICA IDENTITY FULL; (or `walhook setup --replica-identity`)",
                subscriptions.join(", "),
                crate::pg::quote_table(&table)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StartupError::ReplicaIdentity { problems })
    }
}

//! What `run` does before capturing: migrations, publication, slot, and the refusal to
//! start subscriptions the table's replica identity cannot serve.

use std::collections::BTreeMap;

use super::slot::ensure_slot;
use crate::capture::matcher::{needs_old_values, Matcher};
use crate::config::{Config, TableName};
use crate::outbox::migrate::{migrate, MigrateError};
use crate::pg::conninfo::ConnInfo;
use crate::pg::{self, ConnectError};
use crate::source::publication::{self, PublicationChange};
use crate::source::slot::{self, SlotState};
use crate::source::SetupError;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A database could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The outbox schema could not be migrated.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Publication or slot management failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// `--no-setup` and the slot does not exist.
    #[error("replication slot {slot:?} does not exist; run `walhook setup` (or `run` without --no-setup)")]
    SlotMissing {
        /// The slot.
        slot: String,
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
    /// A `when` or template reads a column its table does not have, or a template fails
    /// on a synthetic event of its object.
    #[error("refusing to start: {}", problems.join("\n"))]
    WhenColumns {
        /// One message per lookup, with where the `when` is written.
        problems: Vec<String>,
    },
    /// A catalog query failed.
    #[error("reading the catalog: {0}")]
    Catalog(#[from] tokio_postgres::Error),
    /// The lock that makes one process the active one could not be asked for.
    #[error("taking the active lock on {what} in the outbox database: {message}")]
    Lock {
        /// `<schema>/<slot>`.
        what: String,
        /// The server's words.
        message: String,
    },
    /// Leases of a previous process could not be released.
    #[error("outbox ({schema}): releasing the delivery leases of a previous walhook: {message}")]
    Leases {
        /// The outbox schema.
        schema: String,
        /// The server's words.
        message: String,
    },
}

impl StartupError {
    /// Whether this is the config asking for something the database cannot give (exit 2).
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self,
            StartupError::ReplicaIdentity { .. } | StartupError::WhenColumns { .. }
        )
    }
}

/// Migrates the outbox, syncs the publication and makes sure the slot is usable.
pub(super) async fn prepare(
    config: &Config,
    source: &ConnInfo,
    outbox: &ConnInfo,
    setup: bool,
) -> Result<(), StartupError> {
    let catalog = pg::connect_sql(source).await?;
    let outbox_client = pg::connect_sql(outbox).await?;
    if setup {
        crate::source::preflight::preflight(&catalog, config).await?;
        for line in migrate(&outbox_client, &config.outbox.schema)
            .await?
            .lines()
        {
            tracing::info!("{line}");
        }
        sync_publication(config, &catalog).await?;
    }
    check_replica_identity(config, &catalog).await?;
    check_when_columns(config, &catalog).await?;

    let slot = &config.source.slot;
    if setup {
        for line in ensure_slot(
            source,
            &catalog,
            &outbox_client,
            &config.outbox.schema,
            slot,
        )
        .await?
        {
            tracing::info!("{line}");
        }
    } else if slot::slot_state(&catalog, slot).await? == SlotState::Missing {
        return Err(StartupError::SlotMissing { slot: slot.clone() });
    }
    release_leases(config, &outbox_client).await
}

/// Gives back the deliveries a previous process leased and never settled (it was killed, or
/// lost its lock): this process holds the active lock, so nobody else dispatches these
/// subscriptions, and the deliveries need not wait for the leases to expire. Requests that
/// process had in flight are sent again, as at-least-once allows.
async fn release_leases(
    config: &Config,
    outbox: &tokio_postgres::Client,
) -> Result<(), StartupError> {
    let schema = &config.outbox.schema;
    let released = crate::outbox::leases::release(outbox, schema, &config.subscription_names())
        .await
        .map_err(|e| StartupError::Leases {
            schema: schema.clone(),
            message: crate::pg::error::server_message(&e),
        })?;
    if released > 0 {
        tracing::info!(
            "released {released} delivery leases a previous walhook left behind; \
             what it had in flight is sent again"
        );
    }
    Ok(())
}

/// Makes the publication hold exactly the configured tables, logging what changed.
pub(super) async fn sync_publication(
    config: &Config,
    catalog: &tokio_postgres::Client,
) -> Result<PublicationChange, StartupError> {
    let change =
        publication::sync_publication(catalog, &config.source.publication, &config.tables())
            .await?;
    for line in change.lines() {
        tracing::info!("{line}");
    }
    Ok(change)
}

/// Refuses a `when` that reads a column its table does not have: every event of the table
/// would fail to evaluate.
pub(super) async fn check_when_columns(
    config: &Config,
    catalog: &tokio_postgres::Client,
) -> Result<(), StartupError> {
    let mut problems = Vec::new();
    for table in config.tables() {
        let columns = match crate::source::columns::table_columns(catalog, &table).await {
            Ok(Some(columns)) => columns,
            // A missing table is reported by the table checks.
            Ok(None) => continue,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        problems.extend(crate::capture::matcher::when_column_problems(
            config, &table, &columns,
        ));
        problems.extend(crate::capture::render::synthetic_problems(
            config, &table, &columns,
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StartupError::WhenColumns { problems })
    }
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

/// Binds each configured table not yet bound to its OID, so that its changes are matched by
/// OID from then on and a rename does not lose them. A table missing by name stays unbound
/// (preflight refuses it at start; a reload's publication sync fails on it).
pub(super) async fn bind_tables(
    matcher: &mut Matcher,
    catalog: &tokio_postgres::Client,
) -> Result<(), StartupError> {
    for table in matcher.unbound() {
        let oid: Option<u32> = catalog
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await?
            .map(|row| row.get(0));
        if let Some(oid) = oid {
            matcher.bind(&table, oid);
        }
    }
    Ok(())
}

//! walhook's replication slot: what state it is in, creating it, dropping it.
//!
//! The slot is what makes capture lossless across restarts — and what makes the source keep
//! WAL until walhook has read it, so a slot nobody reads any more fills the source's disk.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::pg::conninfo::ConnInfo;
use crate::pg::quote_literal;
use crate::pg::Lsn;
use crate::source::replication::ReplicationConnection;
use crate::source::setup::SetupError;

/// The state of a slot, as far as walhook cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No slot of that name.
    Missing,
    /// A pgoutput slot of this database that walhook can stream from.
    Ready {
        /// The process streaming from it now, if any (another walhook?).
        active_pid: Option<i32>,
        /// Everything up to here has been acknowledged; streaming resumes after it.
        confirmed_flush: Lsn,
        /// WAL the source keeps for this slot, in bytes.
        retained_bytes: u64,
    },
    /// Invalidated (Postgres removed WAL it still needed, e.g. past
    /// `max_slot_wal_keep_size`): it can never stream again.
    Lost,
    /// Not a logical pgoutput slot of this database.
    WrongKind {
        /// Its output plugin (empty for a physical slot).
        plugin: String,
        /// `logical` or `physical`.
        slot_type: String,
        /// The database it belongs to (empty for a physical slot).
        database: String,
    },
}

impl SlotState {
    /// Why a slot in this state cannot be streamed from, for `Lost` and `WrongKind`.
    pub fn unusable_reason(&self) -> Option<String> {
        match self {
            SlotState::Lost => Some(
                "was invalidated (wal_status lost): the source removed WAL it still needed, \
                 so changes since its last position cannot be captured"
                    .to_owned(),
            ),
            SlotState::WrongKind {
                plugin,
                slot_type,
                database,
            } => Some(if slot_type != "logical" {
                format!("is a {slot_type} slot, not a logical pgoutput slot")
            } else if plugin != "pgoutput" {
                format!("uses output plugin {plugin:?}, not pgoutput")
            } else {
                format!("belongs to database {database:?}, not this one")
            }),
            SlotState::Missing | SlotState::Ready { .. } => None,
        }
    }
}

/// Reads the state of slot `name`. Works from Postgres 12 (which has no `wal_status`) on.
pub async fn slot_state(client: &Client, name: &str) -> Result<SlotState, SetupError> {
    // to_jsonb reads columns that only some versions have: wal_status (13+), conflicting
    // (16+, logical slots on a standby), invalidation_reason (17+).
    let row = client
        .query_opt(
            "SELECT coalesce(s.plugin::text, ''), s.slot_type, \
                    coalesce(s.database::text, ''), current_database()::text, \
                    s.active_pid, s.confirmed_flush_lsn::text, \
                    coalesce(to_jsonb(s) ->> 'wal_status' = 'lost', false) \
                    OR coalesce(to_jsonb(s) ->> 'conflicting' = 'true', false) \
                    OR to_jsonb(s) ->> 'invalidation_reason' IS NOT NULL, \
                    greatest(pg_wal_lsn_diff( \
                        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                             ELSE pg_current_wal_lsn() END, \
                        s.restart_lsn), 0)::bigint \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| SetupError::sql(format!("reading replication slot {name:?}"), &e, None))?;
    let Some(row) = row else {
        return Ok(SlotState::Missing);
    };
    let plugin: String = row.get(0);
    let slot_type: String = row.get(1);
    let database: String = row.get(2);
    let current_database: String = row.get(3);
    if slot_type != "logical" || plugin != "pgoutput" || database != current_database {
        return Ok(SlotState::WrongKind {
            plugin,
            slot_type,
            database,
        });
    }
    let lost: bool = row.get(6);
    if lost {
        return Ok(SlotState::Lost);
    }
    // Null only while another session is still creating the slot.
    let confirmed_flush: Option<String> = row.get(5);
    let confirmed_flush = confirmed_flush
        .and_then(|lsn| lsn.parse::<Lsn>().ok())
        .unwrap_or(Lsn::ZERO);
    let retained: Option<i64> = row.get(7);
    Ok(SlotState::Ready {
        active_pid: row.get(4),
        confirmed_flush,
        retained_bytes: retained.unwrap_or(0).max(0) as u64,
    })
}

/// How long [`create_slot`] waits before saying why it is waiting.
const CREATE_PATIENCE: Duration = Duration::from_secs(10);

/// Creates permanent pgoutput slot `name` over a replication connection and returns its
/// consistent point: the slot delivers every transaction that commits after it.
///
/// Postgres finishes creating a logical slot only when the transactions running at that
/// moment (in the whole cluster) have ended, so this can take as long as the longest open
/// transaction; after a few seconds it logs that it is waiting and for what.
pub async fn create_slot(info: &ConnInfo, name: &str) -> Result<Lsn, SetupError> {
    let context = || format!("creating replication slot {name:?}");
    let mut connection = ReplicationConnection::connect(info)
        .await
        .map_err(|source| SetupError::Replication {
            context: context(),
            source,
        })?;
    let slot = {
        let create = connection.create_slot(name, false);
        tokio::pin!(create);
        tokio::select! {
            result = &mut create => result,
            () = tokio::time::sleep(CREATE_PATIENCE) => {
                // Best effort, and briefly: the slot is what matters.
                let found = tokio::time::timeout(
                    Duration::from_secs(5),
                    older_transactions(info, CREATE_PATIENCE),
                )
                .await;
                let waiting_for = match found {
                    Ok(Some(found)) if !found.is_empty() => found.join("; "),
                    _ => "look for old ones in pg_stat_activity (state 'idle in transaction') \
                          and pg_prepared_xacts"
                        .to_owned(),
                };
                tracing::warn!(
                    slot = name,
                    "creating the replication slot waits for the transactions that were open \
                     in the cluster when it started to end: {waiting_for}"
                );
                create.await
            }
        }
    }
    .map_err(|source| SetupError::Replication {
        context: context(),
        source,
    })?;
    // The slot is permanent and already exists; a failed goodbye changes nothing.
    let _ = connection.close().await;
    tracing::debug!(
        slot = name,
        consistent_point = %slot.consistent_point,
        "created replication slot"
    );
    Ok(slot.consistent_point)
}

/// The transactions with a transaction id that began more than `age` ago, anywhere in the
/// cluster, oldest first: what a slot being created for that long is waiting for. `None`
/// when they cannot be read.
async fn older_transactions(info: &ConnInfo, age: Duration) -> Option<Vec<String>> {
    let client = crate::pg::connect_sql(info).await.ok()?;
    let rows = client
        .query(
            "SELECT pid, coalesce(datname, '?'), coalesce(state, '?'), \
                    coalesce(extract(epoch FROM now() - xact_start)::int8, -1) \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' \
               AND (xact_start IS NULL OR xact_start < now() - make_interval(secs => $1)) \
             ORDER BY xact_start NULLS LAST LIMIT 5",
            &[&age.as_secs_f64()],
        )
        .await
        .ok()?;
    let mut found: Vec<String> = rows
        .iter()
        .map(|row| {
            let seconds: i64 = row.get(3);
            let open = if seconds >= 0 {
                format!(", open for {seconds} s")
            } else {
                String::new()
            };
            format!(
                "process {} (database {}, {}{open})",
                row.get::<_, i32>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            )
        })
        .collect();
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .await
        .ok()?
        .get(0);
    if prepared > 0 {
        found.push(format!(
            "{prepared} prepared transaction(s) in pg_prepared_xacts"
        ));
    }
    Some(found)
}

/// How long [`drop_slot`] waits for a slot that is in use to be released.
const DROP_PATIENCE: Duration = Duration::from_secs(5);

/// Drops slot `name`, so the source stops keeping WAL for it. Returns false when there was
/// no such slot. A slot in use is waited for a few seconds (a walsender lingers a moment
/// after its client goes); if it stays in use, the error names the process holding it.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, SetupError> {
    let context = || format!("dropping replication slot {name:?}");
    let deadline = tokio::time::Instant::now() + DROP_PATIENCE;
    loop {
        let active_pid: Option<i32> = match client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| SetupError::sql(context(), &e, None))?
        {
            None => return Ok(false),
            Some(row) => row.get(0),
        };
        if active_pid.is_none() {
            match client
                .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
            {
                Ok(_) => return Ok(true),
                // Gone meanwhile: someone else dropped it, which is what was wanted.
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(false),
                // Taken meanwhile: wait like for any active slot.
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {}
                Err(e) => {
                    let fix = (e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)).then(|| {
                        format!(
                            "the role needs REPLICATION, or a superuser can run: SELECT \
                             pg_drop_replication_slot({});",
                            quote_literal(name)
                        )
                    });
                    return Err(SetupError::sql(context(), &e, fix));
                }
            }
        }
        if let (Some(pid), true) = (active_pid, tokio::time::Instant::now() >= deadline) {
            return Err(SetupError::SlotBusy {
                slot: name.to_owned(),
                pid,
                holder: holder(client, pid).await,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `" (application …, user …, from …)"` for a server process, as far as it can be read.
async fn holder(client: &Client, pid: i32) -> String {
    let row = client
        .query_opt(
            "SELECT application_name, usename::text, client_addr::text \
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .ok()
        .flatten();
    let Some(row) = row else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (label, value) in [
        ("application", row.get::<_, Option<String>>(0)),
        ("user", row.get(1)),
        ("from", row.get(2)),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            parts.push(format!("{label} {value}"));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// One source database: what `IDENTIFY_SYSTEM` says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// The database name.
    pub database: String,
}

/// Which source `info` connects to (`IDENTIFY_SYSTEM`), to tell whose a checkpoint is.
pub async fn source_id(info: &ConnInfo) -> Result<SourceId, SetupError> {
    let context = || "identifying the source system (IDENTIFY_SYSTEM)".to_owned();
    let mut connection = crate::source::replication::ReplicationConnection::connect(info)
        .await
        .map_err(|source| SetupError::Replication {
            context: context(),
            source,
        })?;
    let system = connection
        .identify_system()
        .await
        .map_err(|source| SetupError::Replication {
            context: context(),
            source,
        })?;
    let _ = connection.close().await;
    Ok(SourceId {
        system_identifier: system.systemid,
        database: system.dbname.unwrap_or_else(|| info.dbname().to_owned()),
    })
}

//! What the modules that set up the source (publication, slot) and `walhook setup` share:
//! [`SetupError`], and quoting of identifiers and literals for the SQL they build.
//!
//! Catalog DDL (`CREATE PUBLICATION`, `ALTER TABLE`, `CREATE SCHEMA`) cannot take bind
//! parameters for names, so names are quoted here; values go as parameters wherever they can.

use crate::config::TableName;
use crate::pg::error::{server_message, ConnectError};
use crate::pg::Lsn;
use crate::source::privileges::Refusal;
use crate::source::replication::ReplicationError;

/// Why setting up (or tearing down) walhook's schema, publication or slot failed. Every
/// variant says which object it is about, the server's words where there are some, and the
/// fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An SQL connection could not be opened.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// A statement failed.
    #[error("{context}: {message}{}", fix_suffix(fix))]
    Sql {
        /// What walhook was doing, naming the object (slot, publication, table).
        context: String,
        /// SQLSTATE, when the server sent one.
        code: Option<String>,
        /// The server's message with its detail and hint.
        message: String,
        /// The fix, when walhook knows it.
        fix: Option<String>,
    },
    /// A command on the replication connection failed.
    #[error("{context}: {source}")]
    Replication {
        /// What walhook was doing, naming the slot.
        context: String,
        /// The error, which carries the server's message and its fix.
        source: ReplicationError,
    },
    /// A configured table does not exist.
    #[error(
        "table {table} does not exist (or is not a table); correct it in the config or create \
         it (`walhook check` suggests close names); if it was renamed, rename it back or set \
         the config's `table` to its new name"
    )]
    MissingTable {
        /// The table as configured.
        table: TableName,
    },
    /// The source cannot take what `setup` would create; found before anything was.
    #[error("{problem}; nothing was created; fix: {fix}")]
    Preflight {
        /// What is missing.
        problem: String,
        /// The statement or step that fixes it.
        fix: String,
    },
    /// The role lacks privileges the command needs; found before anything was changed.
    #[error(transparent)]
    Privileges(#[from] Refusal),
    /// Publishing the table would make UPDATE and DELETE on it fail on the source.
    #[error(
        "table {table} has {identity}: once it is in publication {publication:?}, UPDATE and \
         DELETE on it fail on the source, so walhook did not add it; fix: {fix} (or give it a \
         primary key), then run `walhook setup` again"
    )]
    NoReplicaIdentity {
        /// The table.
        table: TableName,
        /// The publication it was to join.
        publication: String,
        /// What the table has, e.g. `REPLICA IDENTITY NOTHING`.
        identity: &'static str,
        /// The exact `ALTER TABLE … REPLICA IDENTITY FULL;`.
        fix: String,
    },
    /// The slot is held by a running process.
    #[error(
        "replication slot {slot:?} is in use by process {pid}{holder}; stop that process \
         (another walhook?) and try again"
    )]
    SlotBusy {
        /// The slot.
        slot: String,
        /// The server process holding it.
        pid: i32,
        /// Who that is (application, user, client address), as far as Postgres says.
        holder: String,
    },
    /// The slot exists but cannot be used: invalidated, or not a pgoutput slot of this
    /// database.
    #[error(
        "replication slot {slot:?} {reason}; fix: `walhook setup --recreate-slot` (capture \
         restarts from now: changes made before that are not captured)"
    )]
    SlotUnusable {
        /// The slot.
        slot: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The slot is gone although the outbox says walhook captured from it.
    #[error(
        "replication slot {slot:?} does not exist, but the outbox has captured from it up to \
         {checkpoint}: it was dropped behind walhook's back, and changes since then cannot be \
         captured; fix: `walhook setup --recreate-slot` (capture restarts from now)"
    )]
    SlotDropped {
        /// The slot.
        slot: String,
        /// The last commit the outbox holds events for.
        checkpoint: Lsn,
    },
}

fn fix_suffix(fix: &Option<String>) -> String {
    fix.as_ref()
        .map(|f| format!("; fix: {f}"))
        .unwrap_or_default()
}

impl SetupError {
    /// A failed statement, with what walhook was doing and an optional fix.
    pub(crate) fn sql(
        context: impl Into<String>,
        error: &tokio_postgres::Error,
        fix: Option<String>,
    ) -> SetupError {
        SetupError::Sql {
            context: context.into(),
            code: error.code().map(|c| c.code().to_owned()),
            message: server_message(error),
            fix,
        }
    }

    /// The SQLSTATE of a failed statement.
    pub fn code(&self) -> Option<&str> {
        match self {
            SetupError::Sql { code, .. } => code.as_deref(),
            SetupError::Replication { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// An advisory lock key for `purpose` on object `name` (transaction-scoped for migrations
/// and the publication, session-scoped for the active `run`): FNV-1a of both, so every
/// walhook version computes the same key, and different objects do not contend.
pub(crate) fn advisory_key(purpose: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ["walhook ", purpose, " ", name]
        .iter()
        .flat_map(|part| part.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Reinterpreting the bits: Postgres takes a signed bigint.
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_keys_differ_by_purpose_and_name() {
        assert_eq!(
            advisory_key("migrate", "walhook"),
            advisory_key("migrate", "walhook")
        );
        assert_ne!(
            advisory_key("migrate", "walhook"),
            advisory_key("migrate", "walhook2")
        );
        assert_ne!(
            advisory_key("migrate", "walhook"),
            advisory_key("publication", "walhook")
        );
    }
}

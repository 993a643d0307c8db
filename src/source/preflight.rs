//! What `setup` and `run` make sure of before they create anything, so that a source that
//! cannot work leaves no half a setup (an outbox schema and a publication, but no slot):
//! every configured table exists, and, when the slot is still to be created, the server can
//! create it (`wal_level = logical`, a free slot).

use tokio_postgres::Client;

use crate::config::{Config, TableName};
use crate::source::setup::SetupError;

/// Checks the source before anything is created; the first problem found is the error, with
/// its fix.
pub async fn preflight(source: &Client, config: &Config) -> Result<(), SetupError> {
    for table in config.tables() {
        if !table_exists(source, &table).await? {
            return Err(SetupError::MissingTable { table });
        }
    }
    let row = source
        .query_one(
            "SELECT current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int8, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&config.source.slot],
        )
        .await
        .map_err(|e| SetupError::sql("reading the server's replication settings", &e, None))?;
    let (wal_level, max_slots, used_slots, slot_exists): (String, i64, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if slot_exists {
        return Ok(());
    }
    if wal_level != "logical" {
        return Err(SetupError::Preflight {
            problem: format!(
                "wal_level is {wal_level}, and logical replication (the slot walhook needs) \
                 needs logical"
            ),
            fix: "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL".to_owned(),
        });
    }
    if used_slots >= max_slots {
        return Err(SetupError::Preflight {
            problem: format!("no free replication slot: {used_slots} of {max_slots} in use"),
            fix: format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart PostgreSQL (or drop \
                 an unused slot)",
                max_slots + 4
            ),
        });
    }
    Ok(())
}

async fn table_exists(source: &Client, table: &TableName) -> Result<bool, SetupError> {
    Ok(source
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| SetupError::sql(format!("looking up table {table}"), &e, None))?
        .is_some())
}

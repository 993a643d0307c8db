//! The outbox schema's migrations: the numbered files in `sql/`, compiled into the binary and
//! applied in order by `walhook run` and `walhook setup`.
//!
//! Each migration runs in its own transaction with `search_path` set to the configured
//! schema, and is recorded in `<schema>.schema_version` in that same transaction, so a
//! migration is either applied and recorded or neither. Concurrent starts (two walhooks, or
//! `setup` next to `run`) are serialised by a transaction-scoped advisory lock whose key
//! depends only on the schema name, and every transaction re-reads the version table after
//! taking it, so the second one finds the work done.

use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;

use crate::pg::error::server_message;
use crate::pg::quote_ident;
use crate::source::setup::advisory_key;

/// One file of `sql/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i32,
    /// The file name, e.g. `0001_outbox.sql`.
    pub file: &'static str,
    /// Its contents.
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            file: $file,
            sql: include_str!(concat!("../../sql/", $file)),
        }
    };
}

/// Every migration, in the order they apply. A new file in `sql/` goes at the end of this
/// list; the unit tests fail when a file is missing here or out of order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_outbox.sql"),
    migration!(3, "0003_checkpoint_source.sql"),
    migration!(4, "0004_event_target.sql"),
    migration!(5, "0005_subscription_state.sql"),
    migration!(6, "0006_backfill.sql"),
    migration!(7, "0007_document_state.sql"),
];

/// The highest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// One migration applied by this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version.
    pub version: i32,
    /// Its file name.
    pub file: &'static str,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema migrated.
    pub schema: String,
    /// Whether this call created the schema.
    pub created_schema: bool,
    /// Migrations this call applied, in order; empty when the schema was already current.
    pub applied: Vec<AppliedMigration>,
    /// The schema's version afterwards.
    pub version: i32,
}

impl MigrationReport {
    /// One line per thing done, or one line saying everything was in place.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.created_schema {
            lines.push(format!("created schema {}", self.schema));
        }
        for m in &self.applied {
            lines.push(format!("schema {}: applied {}", self.schema, m.file));
        }
        lines.push(if self.applied.is_empty() {
            format!(
                "schema {} at version {} (already current)",
                self.schema, self.version
            )
        } else {
            format!("schema {} at version {}", self.schema, self.version)
        });
        lines
    }
}

/// Why the outbox schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database was migrated by a newer walhook.
    #[error(
        "the walhook schema {schema} is at version {found}, this walhook knows up to {known}; \
         upgrade walhook"
    )]
    TooNew {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// [`latest_version`].
        known: i32,
    },
    /// A migration file failed; nothing of it was applied.
    #[error(
        "migration sql/{file} failed in schema {schema}{}: {message}; nothing of it was applied",
        line.map(|l| format!(" at line {l}")).unwrap_or_default()
    )]
    Migration {
        /// The file.
        file: &'static str,
        /// The schema.
        schema: String,
        /// The line of the file the server pointed at, if it did.
        line: Option<usize>,
        /// The server's message.
        message: String,
    },
    /// Creating the schema or the version table, or reading it, failed.
    #[error(
        "preparing schema {schema} for migrations: {step}: {message}{}",
        fix.as_ref().map(|f| format!("; fix: {f}")).unwrap_or_default()
    )]
    Prepare {
        /// The schema.
        schema: String,
        /// What walhook was doing.
        step: &'static str,
        /// The server's message.
        message: String,
        /// The fix, for missing privileges.
        fix: Option<String>,
    },
}

/// Brings `schema` up to [`latest_version`]: creates it and its version table if missing
/// and applies each migration not yet recorded, each in its own transaction. Running it
/// again is a no-op; running it concurrently is safe.
///
/// It issues `BEGIN`/`COMMIT` on `client`, so nothing else may use that client meanwhile.
pub async fn migrate(client: &Client, schema: &str) -> Result<MigrationReport, MigrateError> {
    let quoted = quote_ident(schema);
    let key = advisory_key("migrate", schema);
    // Only for the fix in error messages: the exact GRANT names both.
    let (role, database): (String, String) = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .map_err(|e| MigrateError::Prepare {
            schema: schema.to_owned(),
            step: "reading the role and database",
            message: server_message(&e),
            fix: None,
        })?;
    let denied_fix = |step: &str| {
        if step == "creating the schema" {
            format!(
                "GRANT CREATE ON DATABASE {} TO {}; or have a superuser run: CREATE SCHEMA \
                 {quoted} AUTHORIZATION {};",
                quote_ident(&database),
                quote_ident(&role),
                quote_ident(&role)
            )
        } else {
            format!(
                "make the role own the schema: ALTER SCHEMA {quoted} OWNER TO {};",
                quote_ident(&role)
            )
        }
    };
    let prepare = |step: &'static str| {
        let denied_fix = &denied_fix;
        move |e: tokio_postgres::Error| MigrateError::Prepare {
            schema: schema.to_owned(),
            step,
            fix: (e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE))
                .then(|| denied_fix(step)),
            message: server_message(&e),
        }
    };

    let (created_schema, recorded) = in_transaction(client, schema, async {
        lock(client, key)
            .await
            .map_err(prepare("taking the migration lock"))?;
        // Checked first rather than `CREATE SCHEMA IF NOT EXISTS`, which demands CREATE on
        // the database even when the schema exists: a role that merely owns the schema must
        // be able to start.
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .map_err(prepare("looking up the schema"))?
            .get(0);
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA {quoted}"))
                .await
                .map_err(prepare("creating the schema"))?;
        }
        let has_table: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = 'schema_version')",
                &[&schema],
            )
            .await
            .map_err(prepare("looking up the version table"))?
            .get(0);
        if !has_table {
            client
                .batch_execute(&format!(
                    "CREATE TABLE {quoted}.schema_version (\
                        version    integer PRIMARY KEY, \
                        name       text NOT NULL, \
                        applied_at timestamptz NOT NULL DEFAULT now())"
                ))
                .await
                .map_err(prepare("creating the version table"))?;
        }
        let recorded: Vec<i32> = client
            .query(
                &format!("SELECT version FROM {quoted}.schema_version ORDER BY version"),
                &[],
            )
            .await
            .map_err(prepare("reading the version table"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok((!exists, recorded))
    })
    .await?;

    let known = latest_version();
    if let Some(&found) = recorded.iter().max() {
        if found > known {
            return Err(MigrateError::TooNew {
                schema: schema.to_owned(),
                found,
                known,
            });
        }
    }

    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !recorded.contains(&m.version)) {
        let failed = |e: tokio_postgres::Error| MigrateError::Migration {
            file: migration.file,
            schema: schema.to_owned(),
            line: error_line(&e, migration.sql),
            message: server_message(&e),
        };
        let done = in_transaction(client, schema, async {
            lock(client, key)
                .await
                .map_err(prepare("taking the migration lock"))?;
            // Another walhook may have applied it while this one waited for the lock.
            let already: bool = client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {quoted}.schema_version WHERE version = $1)"
                    ),
                    &[&migration.version],
                )
                .await
                .map_err(prepare("reading the version table"))?
                .get(0);
            if already {
                return Ok(false);
            }
            client
                .batch_execute(&format!("SET LOCAL search_path = {quoted}"))
                .await
                .map_err(prepare("setting search_path"))?;
            // Alone in its batch, so an error position is an offset into the file.
            client.batch_execute(migration.sql).await.map_err(failed)?;
            client
                .execute(
                    &format!("INSERT INTO {quoted}.schema_version (version, name) VALUES ($1, $2)"),
                    &[&migration.version, &migration.file],
                )
                .await
                .map_err(prepare("recording the migration"))?;
            Ok(true)
        })
        .await?;
        if done {
            tracing::debug!(schema, file = migration.file, "applied migration");
            applied.push(AppliedMigration {
                version: migration.version,
                file: migration.file,
            });
        }
    }

    Ok(MigrationReport {
        schema: schema.to_owned(),
        created_schema,
        applied,
        version: recorded.iter().copied().max().unwrap_or(0).max(known),
    })
}

/// Runs `body` between `BEGIN` and `COMMIT`, rolling back when it fails so the client is
/// usable afterwards. (`Client::transaction` needs `&mut Client`; callers share theirs.)
async fn in_transaction<T>(
    client: &Client,
    schema: &str,
    body: impl std::future::Future<Output = Result<T, MigrateError>>,
) -> Result<T, MigrateError> {
    let failed = |step: &'static str| {
        move |e: tokio_postgres::Error| MigrateError::Prepare {
            schema: schema.to_owned(),
            step,
            message: server_message(&e),
            fix: None,
        }
    };
    client
        .batch_execute("BEGIN")
        .await
        .map_err(failed("starting a transaction"))?;
    match body.await {
        Ok(value) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(failed("committing"))?;
            Ok(value)
        }
        Err(e) => {
            // The error being returned is the one worth reading; a failed rollback means
            // the connection is gone, which the next use reports.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn lock(client: &Client, key: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await
        .map(drop)
}

/// The 1-based line of `sql` an error position points at.
fn error_line(error: &tokio_postgres::Error, sql: &str) -> Option<usize> {
    let Some(ErrorPosition::Original(position)) = error.as_db_error()?.position() else {
        return None;
    };
    // The position counts characters from 1.
    let before = (*position as usize).saturating_sub(1);
    Some(sql.chars().take(before).filter(|&c| c == '\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_sql_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(files, listed, "sql/ and MIGRATIONS disagree");
        // Numbers are reserved per branch, so one may be missing until its branch lands.
        assert!(
            MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version),
            "versions increase"
        );
        for m in MIGRATIONS {
            assert_eq!(
                m.file[..4].parse::<i32>().ok(),
                Some(m.version),
                "{} starts with its version",
                m.file
            );
            assert_eq!(m.file.as_bytes()[4], b'_', "{} is NNNN_name.sql", m.file);
        }
        assert_eq!(latest_version(), MIGRATIONS.last().unwrap().version);
    }

    #[test]
    fn report_lines() {
        let mut report = MigrationReport {
            schema: "walhook".into(),
            created_schema: false,
            applied: vec![],
            version: 1,
        };
        assert_eq!(
            report.lines(),
            ["schema walhook at version 1 (already current)"]
        );
        report.created_schema = true;
        report.applied.push(AppliedMigration {
            version: 1,
            file: "0001_outbox.sql",
        });
        assert_eq!(
            report.lines(),
            [
                "created schema walhook",
                "schema walhook: applied 0001_outbox.sql",
                "schema walhook at version 1"
            ]
        );
    }
}

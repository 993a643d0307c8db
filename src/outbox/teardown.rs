//! Dropping the outbox for `walhook teardown`: walhook's own relations by name, then the
//! schema, all with RESTRICT, so nothing that depends on them (a user's view, function or
//! column) is removed behind the user's back. A `DROP SCHEMA … CASCADE` would do exactly that.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::pg::quote_ident;
use crate::source::setup::SetupError;

/// Whether [`drop_outbox`] keeps what it did, or only proves it can be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropMode {
    /// Run every statement and roll back: `teardown` checks this before dropping the slot
    /// or the publication, so a refusal leaves everything in place.
    DryRun,
    /// Run every statement and commit.
    Commit,
}

/// Drops the relations named in `own` that exist in `schema`, then the schema itself, in one
/// transaction and with RESTRICT. Objects outside walhook's list that depend on them, or
/// that live in the schema, make it fail with their names (Postgres reads them from
/// `pg_depend`) and a fix, and nothing is dropped.
pub async fn drop_outbox(
    client: &Client,
    schema: &str,
    own: &[String],
    mode: DropMode,
) -> Result<(), SetupError> {
    let context = || format!("dropping schema {schema}");
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1",
            &[&schema, &own],
        )
        .await
        .map_err(|e| SetupError::sql(context(), &e, None))?;
    let named = |kinds: &[&str]| -> Vec<String> {
        rows.iter()
            .filter(|row| kinds.contains(&row.get::<_, String>(1).as_str()))
            .map(|row| {
                format!(
                    "{}.{}",
                    quote_ident(schema),
                    quote_ident(&row.get::<_, String>(0))
                )
            })
            .collect()
    };
    let mut sql = String::from("BEGIN; SET LOCAL client_min_messages = warning;");
    // Views before the tables they read; sequences last, since some go with their column.
    for (kinds, statement) in [
        (&["v"][..], "DROP VIEW IF EXISTS"),
        (&["m"][..], "DROP MATERIALIZED VIEW IF EXISTS"),
        (&["r", "p"][..], "DROP TABLE IF EXISTS"),
        (&["S"][..], "DROP SEQUENCE IF EXISTS"),
    ] {
        let names = named(kinds);
        if !names.is_empty() {
            sql.push_str(&format!(" {statement} {} RESTRICT;", names.join(", ")));
        }
    }
    sql.push_str(&format!(" DROP SCHEMA {} RESTRICT;", quote_ident(schema)));
    sql.push_str(match mode {
        DropMode::DryRun => " ROLLBACK",
        DropMode::Commit => " COMMIT",
    });
    let Err(e) = client.batch_execute(&sql).await else {
        return Ok(());
    };
    let _ = client.batch_execute("ROLLBACK").await;
    match e.as_db_error() {
        Some(db) if db.code() == &SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
            // Postgres's detail has one "X depends on Y" line per dependent; its hint
            // (DROP … CASCADE) is exactly what must not be done, so it is left out.
            let dependents = db
                .detail()
                .unwrap_or("")
                .lines()
                .collect::<Vec<_>>()
                .join("; ");
            Err(SetupError::Sql {
                context: context(),
                code: Some(db.code().code().to_owned()),
                message: format!(
                    "objects walhook did not create depend on the outbox ({dependents}), so \
                     walhook drops nothing"
                ),
                fix: Some(
                    "drop or change those objects (they are yours: walhook only drops what it \
                     created), then run `walhook teardown` again"
                        .to_owned(),
                ),
            })
        }
        _ => Err(SetupError::sql(
            context(),
            &e,
            Some(format!(
                "the schema's owner or a superuser can run: DROP SCHEMA {} RESTRICT; after \
                 dropping walhook's tables and views in it",
                quote_ident(schema)
            )),
        )),
    }
}

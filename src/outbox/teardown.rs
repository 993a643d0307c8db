//! Dropping the outbox for `walhook teardown`: walhook's own relations by name, then the
//! schema, all with RESTRICT, so nothing that depends on them (a user's view, function or
//! column) is removed behind the user's back. A `DROP SCHEMA … CASCADE` would do exactly that.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::migrate::MIGRATIONS;
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

/// `teardown` found deliveries that have not been made yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "{count} {} still pending in schema {schema}; see them with `walhook deliveries \
     --status pending` (or SELECT * FROM {}.deliveries WHERE status = 'pending'); let \
     walhook deliver them first, or run `walhook teardown --force` to drop them",
    if *count == 1 { "delivery is" } else { "deliveries are" },
    quote_ident(schema)
)]
pub struct Pending {
    /// The outbox schema.
    pub schema: String,
    /// How many.
    pub count: i64,
}

/// What `teardown` needs to know about the outbox schema before dropping anything.
pub struct OutboxFacts {
    /// Whether the schema exists.
    pub exists: bool,
    /// How many deliveries are pending.
    pub pending: i64,
    /// Relations walhook's migrations did not create, when the schema has any.
    pub foreign: Option<String>,
}

/// What the schema holds: whether it exists, its pending deliveries, foreign relations.
pub async fn outbox_facts(outbox: &Client, schema: &str) -> Result<OutboxFacts, SetupError> {
    let context = || format!("looking at schema {schema}");
    let relations: Option<Vec<String>> = outbox
        .query_opt(
            // Sequences owned by a column (identity, serial, OWNED BY) go with their table.
            "SELECT array(SELECT c.relname::text FROM pg_class c \
                          WHERE c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','f','S') \
                            AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                    AND d.deptype IN ('a', 'i')) \
                          ORDER BY 1) \
             FROM pg_namespace n WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(|e| SetupError::sql(context(), &e, None))?
        .map(|row| row.get(0));
    let Some(relations) = relations else {
        return Ok(OutboxFacts {
            exists: false,
            pending: 0,
            foreign: None,
        });
    };
    let own = own_relations();
    let foreign: Vec<&String> = relations.iter().filter(|r| !own.contains(r)).collect();
    let pending = if relations.iter().any(|r| r == "delivery") {
        outbox
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.delivery WHERE status = 'pending'",
                    quote_ident(schema)
                ),
                &[],
            )
            .await
            .map_err(|e| SetupError::sql(context(), &e, None))?
            .get(0)
    } else {
        0
    };
    Ok(OutboxFacts {
        exists: true,
        pending,
        foreign: (!foreign.is_empty()).then(|| {
            foreign
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }),
    })
}

/// The tables, views and sequences walhook creates in its schema: the version table and what
/// the migration files create. Read from the files themselves, so a new migration needs no
/// change here.
pub fn own_relations() -> Vec<String> {
    let mut names = vec!["schema_version".to_owned()];
    for migration in MIGRATIONS {
        let words: Vec<&str> = migration
            .sql
            .lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect();
        for (i, word) in words.iter().enumerate() {
            if !word.eq_ignore_ascii_case("CREATE") {
                continue;
            }
            let mut rest = words[i + 1..].iter().copied().peekable();
            if rest.peek().is_some_and(|w| w.eq_ignore_ascii_case("OR")) {
                rest.next(); // OR
                rest.next(); // REPLACE
            }
            if rest
                .peek()
                .is_some_and(|w| w.eq_ignore_ascii_case("MATERIALIZED"))
            {
                rest.next();
            }
            let Some(kind) = rest.next() else { continue };
            if !["TABLE", "VIEW", "SEQUENCE"]
                .iter()
                .any(|k| kind.eq_ignore_ascii_case(k))
            {
                continue;
            }
            let mut name = rest.next().unwrap_or("");
            if name.eq_ignore_ascii_case("IF") {
                rest.next(); // NOT
                rest.next(); // EXISTS
                name = rest.next().unwrap_or("");
            }
            let name = name
                .split(['(', ';'])
                .next()
                .unwrap_or("")
                .trim_matches('"');
            if !name.is_empty() {
                names.push(name.to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_relations_come_from_the_migration_files() {
        let own = own_relations();
        for name in [
            "schema_version",
            "checkpoint",
            "event",
            "event_seq",
            "delivery",
            "attempt",
            "deliveries",
            "attempts",
        ] {
            assert!(own.iter().any(|o| o == name), "{name} missing from {own:?}");
        }
        assert!(!own.iter().any(|o| o == "account_invoice"));
    }
}

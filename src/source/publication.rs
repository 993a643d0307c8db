//! walhook's publication: created for the configured tables, then kept holding exactly them
//! (SPEC §2: walhook manages its publication, adding and removing tables as the config
//! changes).
//!
//! Membership is read from `pg_publication_rel`, not `pg_publication_tables`: the view lists
//! the partitions of a partitioned table instead of the table itself, which would make a
//! configured partitioned table look missing on every sync.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::{table_list, TableName};
use crate::pg::{quote_ident, quote_table};
use crate::source::setup::{advisory_key, SetupError};

/// What every walhook publication publishes: all row changes, and truncates.
pub const PUBLISH: &str = "insert, update, delete, truncate";

/// What [`sync_publication`] did (or found in place), for the caller to print or log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicationChange {
    /// The publication.
    pub name: String,
    /// It did not exist and was created with the configured tables.
    pub created: bool,
    /// It is `FOR ALL TABLES`: left as it is (it publishes every table already).
    pub all_tables: bool,
    /// Tables added (all of them when `created`).
    pub added: Vec<TableName>,
    /// Tables removed because the config no longer names them.
    pub removed: Vec<TableName>,
    /// Tables that had a row filter or column list (Postgres 15+), re-added without, since
    /// either would silently hide changes from walhook.
    pub reset: Vec<TableName>,
    /// The `publish` option lacked an operation and was set to [`PUBLISH`].
    pub publish_fixed: bool,
    /// Configured tables left out because they are walhook's own outbox tables.
    pub skipped_own: Vec<TableName>,
    /// The tables it publishes now (empty for `FOR ALL TABLES`).
    pub tables: Vec<TableName>,
}

impl PublicationChange {
    /// Whether nothing was changed.
    pub fn is_unchanged(&self) -> bool {
        !self.created
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.reset.is_empty()
            && !self.publish_fixed
    }

    /// One line per change, or one line saying all was in place.
    pub fn lines(&self) -> Vec<String> {
        let name = &self.name;
        let mut lines = Vec::new();
        for table in &self.skipped_own {
            lines.push(format!(
                "publication {name:?}: not adding {table}, one of walhook's own outbox tables"
            ));
        }
        if self.created {
            lines.push(format!(
                "created publication {name:?} for {}",
                table_list(&self.tables)
            ));
        } else {
            lines.extend(
                self.added
                    .iter()
                    .map(|t| format!("publication {name:?}: added {t}")),
            );
        }
        lines.extend(
            self.removed
                .iter()
                .map(|t| format!("publication {name:?}: removed {t}")),
        );
        lines.extend(self.reset.iter().map(|t| {
            format!(
                "publication {name:?}: {t} had a row filter or column list, which would hide \
                 changes from walhook; re-added without"
            )
        }));
        if self.publish_fixed {
            lines.push(format!(
                "publication {name:?}: now publishes {PUBLISH} (some were missing)"
            ));
        }
        if self.all_tables {
            lines.push(format!(
                "publication {name:?} is FOR ALL TABLES: left as it is (it publishes every \
                 configured table; walhook ignores changes to the others)"
            ));
        } else if self.is_unchanged() {
            lines.push(format!(
                "publication {name:?} already publishes exactly the configured tables ({})",
                table_list(&self.tables)
            ));
        }
        lines
    }
}

/// Makes publication `name` publish exactly `tables` (and every operation): creates it if
/// missing, otherwise adds and drops tables, all in one transaction. A `FOR ALL TABLES`
/// publication keeps its tables. Tables of walhook's own outbox schemas are never added (a
/// schema holding both `schema_version` and `checkpoint` tables is one); a table that would
/// make UPDATE and DELETE fail on the source once published (no primary key under REPLICA
/// IDENTITY DEFAULT, or NOTHING) is refused with the `ALTER TABLE` that fixes it.
///
/// It issues `BEGIN`/`COMMIT` on `client`, so nothing else may use that client meanwhile.
pub async fn sync_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<PublicationChange, SetupError> {
    // Serialised like migrations: two walhooks (or `setup` next to `run`) syncing at once
    // would otherwise both try to create the publication or add the same table.
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| SetupError::sql(format!("syncing publication {name:?}"), &e, None))?;
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&advisory_key("publication", name)],
            )
            .await
            .map_err(|e| SetupError::sql(format!("locking publication {name:?}"), &e, None))?;
        sync_locked(client, name, tables).await
    }
    .await;
    match result {
        Ok(change) => {
            client.batch_execute("COMMIT").await.map_err(|e| {
                SetupError::sql(
                    format!("committing changes to publication {name:?}"),
                    &e,
                    None,
                )
            })?;
            Ok(change)
        }
        Err(e) => {
            // The error is what matters; a failed rollback means the connection is gone.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The body of [`sync_publication`], inside its transaction and lock.
async fn sync_locked(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<PublicationChange, SetupError> {
    let context = |what: &str| format!("{what} publication {name:?}");
    let own_schemas: Vec<String> = client
        .query(
            "SELECT n.nspname::text FROM pg_namespace n \
             WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid \
                             AND c.relname = 'schema_version' AND c.relkind = 'r') \
               AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid \
                             AND c.relname = 'checkpoint' AND c.relkind = 'r')",
            &[],
        )
        .await
        .map_err(|e| SetupError::sql("looking up walhook's outbox schemas", &e, None))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut change = PublicationChange {
        name: name.to_owned(),
        ..PublicationChange::default()
    };
    let mut wanted: Vec<TableName> = Vec::new();
    for table in tables {
        if own_schemas.contains(&table.schema) {
            if !change.skipped_own.contains(table) {
                change.skipped_own.push(table.clone());
            }
        } else if !wanted.contains(table) {
            wanted.push(table.clone());
        }
    }

    let existing = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| SetupError::sql(context("looking up"), &e, None))?;

    let Some(existing) = existing else {
        for table in &wanted {
            check_publishable(client, name, table).await?;
        }
        let sql = create_statement(name, &wanted);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| SetupError::sql(context("creating"), &e, Some(privilege_fix(&e, &sql))))?;
        change.created = true;
        change.added = wanted.clone();
        change.tables = wanted;
        return Ok(change);
    };
    let all_tables: bool = existing.get(0);
    let publishes_all: bool = existing.get(1);

    let mut statements = Vec::new();
    if !publishes_all {
        statements.push(format!(
            "ALTER PUBLICATION {} SET (publish = '{PUBLISH}')",
            quote_ident(name)
        ));
        change.publish_fixed = true;
    }
    if all_tables {
        change.all_tables = true;
    } else {
        // prqual and prattrs exist from Postgres 15; to_jsonb reads them where they exist.
        let published: Vec<(TableName, bool)> = client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                        to_jsonb(pr) ->> 'prqual' IS NOT NULL \
                        OR to_jsonb(pr) ->> 'prattrs' IS NOT NULL \
                 FROM pg_publication_rel pr \
                 JOIN pg_publication p ON p.oid = pr.prpubid \
                 JOIN pg_class c ON c.oid = pr.prrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.pubname = $1 \
                 ORDER BY 1, 2",
                &[&name],
            )
            .await
            .map_err(|e| SetupError::sql(context("reading the tables of"), &e, None))?
            .iter()
            .map(|row| {
                (
                    TableName {
                        schema: row.get(0),
                        name: row.get(1),
                    },
                    row.get(2),
                )
            })
            .collect();
        for table in &wanted {
            match published.iter().find(|(t, _)| t == table) {
                None => {
                    check_publishable(client, name, table).await?;
                    change.added.push(table.clone());
                }
                Some((_, true)) => change.reset.push(table.clone()),
                Some((_, false)) => {}
            }
        }
        change.removed = published
            .iter()
            .map(|(t, _)| t)
            .filter(|t| !wanted.contains(t))
            .cloned()
            .collect();
        let alter = |verb: &str, list: &[TableName]| {
            format!(
                "ALTER PUBLICATION {} {verb} TABLE {}",
                quote_ident(name),
                list.iter().map(quote_table).collect::<Vec<_>>().join(", ")
            )
        };
        // Reset = drop, then add back plain; dropping first also clears what the add
        // would otherwise collide with.
        let to_drop: Vec<TableName> = change
            .removed
            .iter()
            .chain(&change.reset)
            .cloned()
            .collect();
        let to_add: Vec<TableName> = change.added.iter().chain(&change.reset).cloned().collect();
        if !to_drop.is_empty() {
            statements.push(alter("DROP", &to_drop));
        }
        if !to_add.is_empty() {
            statements.push(alter("ADD", &to_add));
        }
        change.tables = wanted;
    }

    if !statements.is_empty() {
        let sql = statements.join(";\n");
        client.batch_execute(&sql).await.map_err(|e| {
            SetupError::sql(
                context("changing"),
                &e,
                Some(privilege_fix(&e, &format!("{sql};"))),
            )
        })?;
    }
    Ok(change)
}

/// `CREATE PUBLICATION` for `tables`; with none, an empty publication that tables join later.
fn create_statement(name: &str, tables: &[TableName]) -> String {
    let tables = if tables.is_empty() {
        String::new()
    } else {
        format!(
            " FOR TABLE {}",
            tables
                .iter()
                .map(quote_table)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "CREATE PUBLICATION {}{tables} WITH (publish = '{PUBLISH}')",
        quote_ident(name)
    )
}

/// The fix for a failed publication change: for missing privileges, who may run it.
fn privilege_fix(error: &tokio_postgres::Error, sql: &str) -> String {
    if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        format!(
            "creating a publication needs CREATE on the database, and adding a table needs \
             ownership of it: run `walhook setup` as the tables' owner or a superuser, or have \
             one of them run: {sql}"
        )
    } else {
        format!("run by hand to see more: {sql}")
    }
}

/// Refuses a table that does not exist, or whose UPDATEs and DELETEs Postgres would reject
/// once it is in a publication (it has nothing to identify the old row by).
pub async fn check_publishable(
    client: &Client,
    publication: &str,
    table: &TableName,
) -> Result<(), SetupError> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| SetupError::sql(format!("looking up table {table}"), &e, None))?;
    let Some(row) = row else {
        return Err(SetupError::MissingTable {
            table: table.clone(),
        });
    };
    let identity: String = row.get(0);
    let has_primary_key: bool = row.get(1);
    let problem = match (identity.as_str(), has_primary_key) {
        ("n", _) => Some("REPLICA IDENTITY NOTHING"),
        ("d", false) => Some("no primary key and REPLICA IDENTITY DEFAULT"),
        _ => None,
    };
    match problem {
        Some(identity) => Err(SetupError::NoReplicaIdentity {
            table: table.clone(),
            publication: publication.to_owned(),
            identity,
            fix: format!("ALTER TABLE {} REPLICA IDENTITY FULL;", quote_table(table)),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TableName {
        s.parse().unwrap()
    }

    #[test]
    fn create_statement_quotes_and_publishes_everything() {
        assert_eq!(
            create_statement("walhook", &[t("public.account_invoice"), t("erp.Order")]),
            "CREATE PUBLICATION walhook FOR TABLE public.account_invoice, erp.\"Order\" \
             WITH (publish = 'insert, update, delete, truncate')"
        );
        assert_eq!(
            create_statement("My Pub", &[]),
            "CREATE PUBLICATION \"My Pub\" WITH (publish = 'insert, update, delete, truncate')"
        );
    }

    #[test]
    fn lines_say_what_changed_or_that_nothing_did() {
        let mut change = PublicationChange {
            name: "walhook".into(),
            tables: vec![t("public.a")],
            ..Default::default()
        };
        assert_eq!(
            change.lines(),
            ["publication \"walhook\" already publishes exactly the configured tables (public.a)"]
        );
        change.added = vec![t("public.a")];
        change.removed = vec![t("public.b")];
        assert_eq!(
            change.lines(),
            [
                "publication \"walhook\": added public.a",
                "publication \"walhook\": removed public.b"
            ]
        );
    }
}

//! Opening the configured outbox for the commands that read or change it (`deliveries`,
//! `replay`, `test`): the connection, and the check that `walhook setup` made the schema.

use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::{self, quote_ident};

/// A connection to the outbox (`outbox.url`, else `source.url`) whose schema holds
/// `relation`, a table or view of the migrations. Errors name the config key, never the URL
/// (it may hold a password), and say to run `walhook setup` before the schema exists.
pub async fn open(config: &Config, relation: &str) -> Result<Client, String> {
    let key = config.outbox_key();
    let db = pg::connect_sql(config.outbox_conninfo())
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    let schema = &config.outbox.schema;
    let exists = has_relation(&db, schema, relation)
        .await
        .map_err(|e| format!("reading the outbox: {e}"))?;
    if !exists {
        // A schema made by an older walhook lacks the newer tables (`backfill`).
        let schema_exists: bool = db
            .query_one(
                "SELECT to_regnamespace($1) IS NOT NULL",
                &[&quote_ident(schema)],
            )
            .await
            .map_err(|e| format!("reading the outbox: {e}"))?
            .get(0);
        return Err(if schema_exists {
            format!(
                "the outbox schema {schema} has no {relation} yet (it was made by an older \
                 walhook): run `walhook setup`, or start `walhook run`, to bring it up to date"
            )
        } else {
            format!("the outbox schema {schema} does not exist yet: run `walhook setup`")
        });
    }
    Ok(db)
}

/// Whether `schema` holds `relation` (a table or view of the migrations): `walhook setup`
/// has made the outbox.
pub(super) async fn has_relation(
    db: &Client,
    schema: &str,
    relation: &str,
) -> Result<bool, tokio_postgres::Error> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(relation));
    Ok(db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}

//! `walhook backfill --where SQL` (SPEC §3b): the condition checked against the source
//! before a backfill is asked for, so that a typo is answered at once instead of failing the
//! daemon's first chunk, and the planner's estimate of the rows it picks.
//!
//! The condition is user SQL and is spliced into the backfill's reads as `WHERE (filter)`.
//! It is only ever prepared here (the extended protocol refuses several statements in one
//! Parse, so `1=1; DROP TABLE x` fails), then run for at most one row inside a READ ONLY
//! transaction that is rolled back, so a condition that would write (a data-modifying
//! function) is refused by the server, never carried out.

use tokio_postgres::Client;

use crate::pg::error::server_message;
use crate::pg::{quote_table, TableName};

/// How long the one-row trial of a condition may take: a condition no row passes scans the
/// whole table, and a slow trial only means the condition is valid.
const TRIAL_TIMEOUT: &str = "2s";

/// SQLSTATE query_canceled: the trial ran out of [`TRIAL_TIMEOUT`].
const QUERY_CANCELED: &str = "57014";

/// Why a `--where` condition cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Nothing but whitespace was given.
    #[error("the where condition is empty: give one over the columns of {table}, e.g. id > 1000")]
    Empty {
        /// The subscription's table.
        table: TableName,
    },
    /// The server refused the condition (syntax, an unknown column, several statements, a
    /// write in a read-only transaction, …).
    #[error("the where condition {filter:?} does not work on {table}: {message}")]
    Refused {
        /// The subscription's table.
        table: TableName,
        /// The condition as given.
        filter: String,
        /// The server's message with its detail and hint.
        message: String,
    },
}

/// Checks that `filter` is one boolean condition over `table` that reads and never writes.
pub async fn check(client: &Client, table: &TableName, filter: &str) -> Result<(), FilterError> {
    if filter.trim().is_empty() {
        return Err(FilterError::Empty {
            table: table.clone(),
        });
    }
    let refused = |e: tokio_postgres::Error| FilterError::Refused {
        table: table.clone(),
        filter: filter.to_owned(),
        message: server_message(&e),
    };
    let select = format!(
        "SELECT 1 FROM {} WHERE ({filter}) LIMIT 1",
        quote_table(table)
    );
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = '{TRIAL_TIMEOUT}'"
        ))
        .await
        .map_err(refused)?;
    let outcome = async {
        let statement = client.prepare(&select).await?;
        match client.query(&statement, &[]).await {
            Err(e) if e.code().map(|c| c.code()) == Some(QUERY_CANCELED) => Ok(()),
            other => other.map(drop),
        }
    }
    .await;
    // Rolled back whatever happened: the trial leaves nothing behind.
    let rollback = client.batch_execute("ROLLBACK").await;
    outcome.map_err(refused)?;
    rollback.map_err(refused)
}

/// The planner's estimate of the rows of `table` that pass `filter` (all rows without one);
/// `filter` must have passed [`check`]. Prepared like the check, so it is one statement.
pub async fn estimate(
    client: &Client,
    table: &TableName,
    filter: Option<&str>,
) -> Result<i64, FilterError> {
    let condition = filter.map_or_else(String::new, |f| format!(" WHERE ({f})"));
    let explain = format!("EXPLAIN SELECT 1 FROM {}{condition}", quote_table(table));
    let refused = |message: String| FilterError::Refused {
        table: table.clone(),
        filter: filter.unwrap_or_default().to_owned(),
        message,
    };
    let statement = client
        .prepare(&explain)
        .await
        .map_err(|e| refused(server_message(&e)))?;
    let rows = client
        .query(&statement, &[])
        .await
        .map_err(|e| refused(server_message(&e)))?;
    // The top plan node's line: `Seq Scan on t  (cost=0.00..35.50 rows=2550 width=4)`.
    let top: Option<String> = rows.first().map(|row| row.get(0));
    top.as_deref()
        .and_then(plan_rows)
        .ok_or_else(|| refused(format!("EXPLAIN gave no row estimate: {top:?}")))
}

/// The `rows=N` of one line of EXPLAIN's text output.
fn plan_rows(line: &str) -> Option<i64> {
    let (_, after) = line.split_once(" rows=")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::plan_rows;

    #[test]
    fn the_estimate_is_read_from_the_top_plan_line() {
        assert_eq!(
            plan_rows("Seq Scan on t  (cost=0.00..35.50 rows=2550 width=4)"),
            Some(2550)
        );
        assert_eq!(
            plan_rows("Result  (cost=0.00..0.01 rows=1 width=4)"),
            Some(1)
        );
        assert_eq!(plan_rows("nothing here"), None);
    }
}

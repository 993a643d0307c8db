//! What the outbox holds, for `/metrics` and the status endpoint: the backlog of each
//! subscription (pending and dead deliveries, the age of the oldest pending one).

use tokio_postgres::Client;

use crate::pg::quote_ident;

/// The deliveries of one subscription in one status.
#[derive(Clone, Debug, PartialEq)]
pub struct BacklogRow {
    /// The subscription.
    pub subscription: String,
    /// Pending (else dead).
    pub pending: bool,
    /// How many.
    pub count: i64,
    /// Seconds since the oldest of them was created.
    pub oldest_seconds: f64,
}

/// Every subscription's pending and dead deliveries. The error is the database's, so that
/// the caller can tell a schema not made yet (`run` samples before its migrations ran).
pub async fn backlog(db: &Client, schema: &str) -> Result<Vec<BacklogRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            &format!(
                "SELECT subscription, status = 'pending', count(*), \
                        coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
                 FROM {}.delivery WHERE status IN ('pending', 'dead') \
                 GROUP BY subscription, status",
                quote_ident(schema)
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| BacklogRow {
            subscription: row.get(0),
            pending: row.get(1),
            count: row.get(2),
            oldest_seconds: row.get(3),
        })
        .collect())
}

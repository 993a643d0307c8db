//! The attempt log's rows that no delivery owns: test events (`walhook test`, the admin
//! API's test button). A delivery's own attempts are written by the queue with its
//! completion.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::pg::quote_ident;

/// One test request, as the attempt log keeps it.
#[derive(Debug)]
pub struct TestAttempt<'a> {
    /// The subscription it was sent for.
    pub subscription: &'a str,
    /// When the request started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The HTTP status, `None` when no response arrived.
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<&'a str>,
    /// The start of the response body.
    pub response_excerpt: &'a str,
}

/// Why a test attempt was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// `walhook setup` has not made the outbox yet.
    #[error(
        "the outbox schema {0:?} does not exist yet (run `walhook setup`); this attempt was \
         not recorded"
    )]
    NoSchema(String),
    /// The statement failed.
    #[error("could not record the attempt: {0}")]
    Failed(#[from] tokio_postgres::Error),
}

/// Adds `attempt` to the attempt log with trigger `test`.
pub async fn record_test(
    db: &Client,
    schema: &str,
    attempt: &TestAttempt<'_>,
) -> Result<(), RecordError> {
    if !super::open::has_relation(db, schema, "attempt").await? {
        return Err(RecordError::NoSchema(schema.to_owned()));
    }
    let duration_ms = i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX);
    let status = attempt.status.map(i32::from);
    db.execute(
        &format!(
            "INSERT INTO {}.attempt (delivery_id, subscription, attempt, trigger, started_at, \
             duration_ms, status_code, error, response_excerpt) \
             VALUES (NULL, $1, 1, 'test', $2, $3, $4, $5, $6)",
            quote_ident(schema)
        ),
        &[
            &attempt.subscription,
            &attempt.started_at,
            &duration_ms,
            &status,
            &attempt.error,
            &attempt.response_excerpt,
        ],
    )
    .await?;
    Ok(())
}

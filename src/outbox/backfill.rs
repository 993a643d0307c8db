//! Backfills (SPEC §3b): the `backfill` table and `subscription_seen`. Asking for one,
//! cancelling it, its progress for `walhook backfill --status` and the admin API, and what
//! the daemon's backfill task reads and finishes. The progress of a chunk is written by the
//! outbox writer, in the transaction of the chunk's events ([`progress_sql`]).

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use super::StoreError;
use crate::pg::quote_ident;
use crate::pg::sql::{rfc3339, Precision};

/// Where a backfill stands: the `state` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    /// Asked for and not finished: the daemon works on it (or will, once running).
    Running,
    /// Every row was read.
    Done,
    /// Stopped by `walhook backfill --cancel` (or the API).
    Cancelled,
    /// Stopped by an error that a retry would repeat (`error` says which).
    Failed,
}

impl BackfillState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Failed => "failed",
        }
    }

    fn from_stored(text: &str) -> BackfillState {
        match text {
            "running" => BackfillState::Running,
            "done" => BackfillState::Done,
            "cancelled" => BackfillState::Cancelled,
            _ => BackfillState::Failed,
        }
    }
}

/// Who asked for a backfill: the `requested_by` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestedBy {
    /// `backfill = true` on a subscription the daemon saw for the first time.
    Config,
    /// `walhook backfill SUBSCRIPTION`.
    Cli,
    /// `POST /api/v1/subscriptions/{name}/backfill`.
    Api,
}

impl RequestedBy {
    fn as_str(self) -> &'static str {
        match self {
            RequestedBy::Config => "config",
            RequestedBy::Cli => "cli",
            RequestedBy::Api => "api",
        }
    }

    fn from_stored(text: &str) -> RequestedBy {
        match text {
            "config" => RequestedBy::Config,
            "cli" => RequestedBy::Cli,
            _ => RequestedBy::Api,
        }
    }
}

/// One backfill as `--status` and `GET /api/v1/backfills` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backfill {
    /// Its number, part of its events' ids.
    pub id: i64,
    /// The subscription its events go to.
    pub subscription: String,
    /// running, done, cancelled or failed.
    pub state: BackfillState,
    /// Rows written to the outbox so far (read events, or rows `when` passed over).
    pub rows: i64,
    /// The planner's estimate of the table's rows when it started.
    pub rows_estimate: Option<i64>,
    /// Chunks committed.
    pub chunks: i64,
    /// Rows per second from the start to the end (or to now, while running).
    pub rows_per_second: Option<f64>,
    /// `--where`, as given.
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// config, cli or api.
    pub requested_by: RequestedBy,
    /// The key of the last row committed (a JSON array of the key columns' text forms).
    pub last_key: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC; none while running.
    pub finished_at: Option<String>,
}

impl Backfill {
    fn from_row(row: &Row) -> Backfill {
        let seconds: Option<f64> = row.get("seconds");
        let rows: i64 = row.get("rows");
        Backfill {
            id: row.get("id"),
            subscription: row.get("subscription"),
            state: BackfillState::from_stored(row.get("state")),
            rows,
            rows_estimate: row.get("rows_estimate"),
            chunks: row.get("chunks"),
            rows_per_second: seconds
                .filter(|s| *s > 0.0)
                .map(|s| (rows as f64 / s * 10.0).round() / 10.0),
            filter: row.get("filter"),
            requested_by: RequestedBy::from_stored(row.get("requested_by")),
            last_key: row.get("last_key"),
            error: row.get("error"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
        }
    }
}

fn select(schema: &str) -> String {
    format!(
        "SELECT id, subscription, state, rows, rows_estimate, chunks, filter, requested_by, \
                last_key, error, {started} AS started_at, {finished} AS finished_at, \
                extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8 \
                  AS seconds \
         FROM {s}.backfill",
        started = rfc3339("started_at", Precision::Micros),
        finished = rfc3339("finished_at", Precision::Micros),
        s = quote_ident(schema),
    )
}

/// Why a backfill could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// One is running for this subscription already.
    #[error(
        "subscription {subscription:?} is being backfilled already (backfill {id}); see \
         `walhook backfill --status`, or stop it with `walhook backfill --cancel {subscription}`"
    )]
    AlreadyRunning {
        /// The subscription.
        subscription: String,
        /// The running backfill.
        id: i64,
    },
    /// A statement failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks for a backfill of `subscription`: the daemon starts it within a second or two.
pub async fn request(
    db: &impl GenericClient,
    schema: &str,
    subscription: &str,
    filter: Option<&str>,
    by: RequestedBy,
) -> Result<Backfill, RequestError> {
    let s = quote_ident(schema);
    let inserted = db
        .query_opt(
            &format!(
                "INSERT INTO {s}.backfill (subscription, filter, requested_by) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (subscription) WHERE state = 'running' DO NOTHING \
                 RETURNING id"
            ),
            &[&subscription, &filter, &by.as_str()],
        )
        .await
        .map_err(StoreError::at(format!(
            "asking for a backfill of {subscription:?}"
        )))?;
    match inserted {
        Some(row) => Ok(one(db, schema, row.get(0))
            .await?
            .expect("the row was just inserted")),
        None => {
            let id = running(db, schema)
                .await?
                .into_iter()
                .find(|b| b.subscription == subscription)
                .map_or(0, |b| b.id);
            Err(RequestError::AlreadyRunning {
                subscription: subscription.to_owned(),
                id,
            })
        }
    }
}

/// Cancels the running backfill of `subscription`; `None` when none runs. A chunk already
/// read may still be delivered: the daemon stops before its next chunk.
pub async fn cancel(
    db: &impl GenericClient,
    schema: &str,
    subscription: &str,
) -> Result<Option<Backfill>, StoreError> {
    let row = db
        .query_opt(
            &format!(
                "UPDATE {}.backfill SET state = 'cancelled', finished_at = now() \
                 WHERE subscription = $1 AND state = 'running' RETURNING id",
                quote_ident(schema)
            ),
            &[&subscription],
        )
        .await
        .map_err(StoreError::at(format!(
            "cancelling the backfill of {subscription:?}"
        )))?;
    match row {
        Some(row) => one(db, schema, row.get(0)).await,
        None => Ok(None),
    }
}

/// Every backfill, newest first.
pub async fn list(db: &impl GenericClient, schema: &str) -> Result<Vec<Backfill>, StoreError> {
    let rows = db
        .query(&format!("{} ORDER BY id DESC", select(schema)), &[])
        .await
        .map_err(StoreError::at("reading the backfills"))?;
    Ok(rows.iter().map(Backfill::from_row).collect())
}

/// The running backfills, oldest first: the order the daemon works through them.
pub async fn running(db: &impl GenericClient, schema: &str) -> Result<Vec<Backfill>, StoreError> {
    let rows = db
        .query(
            &format!("{} WHERE state = 'running' ORDER BY id", select(schema)),
            &[],
        )
        .await
        .map_err(StoreError::at("reading the running backfills"))?;
    Ok(rows.iter().map(Backfill::from_row).collect())
}

/// One backfill by its number.
pub async fn one(
    db: &impl GenericClient,
    schema: &str,
    id: i64,
) -> Result<Option<Backfill>, StoreError> {
    let row = db
        .query_opt(&format!("{} WHERE id = $1", select(schema)), &[&id])
        .await
        .map_err(StoreError::at(format!("reading backfill {id}")))?;
    Ok(row.as_ref().map(Backfill::from_row))
}

/// Records the planner's estimate of the rows to read, once, when the daemon starts it.
pub async fn estimate(
    db: &impl GenericClient,
    schema: &str,
    id: i64,
    rows: i64,
) -> Result<(), StoreError> {
    db.execute(
        &format!(
            "UPDATE {}.backfill SET rows_estimate = $2 WHERE id = $1",
            quote_ident(schema)
        ),
        &[&id, &rows],
    )
    .await
    .map_err(StoreError::at(format!(
        "recording backfill {id}'s estimate"
    )))?;
    Ok(())
}

/// Ends a running backfill as done or failed (with why); a cancelled one stays cancelled.
pub async fn finish(
    db: &impl GenericClient,
    schema: &str,
    id: i64,
    outcome: Result<(), &str>,
) -> Result<(), StoreError> {
    let (state, error) = match outcome {
        Ok(()) => (BackfillState::Done, None),
        Err(error) => (BackfillState::Failed, Some(error)),
    };
    db.execute(
        &format!(
            "UPDATE {}.backfill SET state = $2, error = $3, finished_at = now() \
             WHERE id = $1 AND state = 'running'",
            quote_ident(schema)
        ),
        &[&id, &state.as_str(), &error],
    )
    .await
    .map_err(StoreError::at(format!("finishing backfill {id}")))?;
    Ok(())
}

/// The statement the outbox writer runs in a chunk's transaction: `$1` backfill, `$2` the
/// chunk's last key, `$3` its rows, `$4` the number of chunks committed before it. Guarded
/// by that number, so a chunk can never count twice; a cancelled backfill still records the
/// chunk that was under way.
pub fn progress_sql(schema: &str) -> String {
    format!(
        "UPDATE {}.backfill SET last_key = $2, rows = rows + $3, chunks = chunks + 1 \
         WHERE id = $1 AND chunks = $4",
        quote_ident(schema)
    )
}

/// Marks these subscriptions seen; returns the ones seen now for the first time, for
/// `backfill = true` (SPEC §2).
pub async fn first_seen(
    db: &impl GenericClient,
    schema: &str,
    subscriptions: &[&str],
) -> Result<Vec<String>, StoreError> {
    let rows = db
        .query(
            &format!(
                "INSERT INTO {}.subscription_seen (subscription) SELECT unnest($1::text[]) \
                 ON CONFLICT DO NOTHING RETURNING subscription",
                quote_ident(schema)
            ),
            &[&subscriptions],
        )
        .await
        .map_err(StoreError::at("recording the subscriptions seen"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A chunk's progress, committed by the outbox writer with the chunk's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The chunk read's token, to tell the backfill task it is committed.
    pub token: String,
    /// The backfill.
    pub backfill: i64,
    /// The chunks committed before this one.
    pub chunk: i64,
    /// The subscription, for `walhook_backfill_rows_total`.
    pub subscription: Arc<str>,
    /// The chunk's last key.
    pub last_key: String,
    /// The chunk's rows (events, and rows `when` passed over or a change superseded).
    pub rows: i64,
}

//! `outbox.retention`: settled deliveries, their events and the attempt log do not stay
//! forever. Delivered and dead deliveries settled longer ago than the retention go, with
//! each event once no delivery refers to it any more, and attempts started longer ago than
//! the retention. Pending deliveries and their events stay, whatever their age.
//!
//! Every statement removes at most [`BATCH`] rows in a short transaction of its own, and
//! the caller pauses between statements, so retention never holds locks for long, never
//! makes one huge transaction for autovacuum to clean up after, and leaves the database
//! time for capture and delivery. A transaction-scoped advisory lock keeps two processes
//! on one outbox from racing each other for the same rows (which could leave an event
//! behind that both thought the other still needed).

use std::time::Duration;

use tokio_postgres::{Client, Statement};

use crate::pg::quote_ident;
use crate::source::setup::advisory_key;

/// Rows one statement removes at most.
pub const BATCH: i64 = 1_000;

/// A retention statement that failed.
#[derive(Debug, thiserror::Error)]
#[error("outbox retention ({schema}): {what}: {source}")]
pub struct RetentionError {
    schema: String,
    what: &'static str,
    source: tokio_postgres::Error,
}

/// What one batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Delivered and dead deliveries.
    pub deliveries: u64,
    /// Events no delivery refers to any more.
    pub events: u64,
    /// Attempt log rows.
    pub attempts: u64,
}

impl Removed {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.deliveries == 0 && self.events == 0 && self.attempts == 0
    }

    /// Adds another batch's counts.
    pub fn add(&mut self, other: Removed) {
        self.deliveries += other.deliveries;
        self.events += other.events;
        self.attempts += other.attempts;
    }
}

/// One batch's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// These rows went; a full batch means more may be left.
    Removed(Removed),
    /// Another process is removing old rows of this outbox right now.
    Busy,
}

/// Which table a batch works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Settled deliveries and the events they leave unreferenced.
    Deliveries,
    /// The attempt log.
    Attempts,
}

/// The retention statements, prepared on a connection of their own.
pub struct Retention {
    client: Client,
    schema: String,
    lock_key: i64,
    deliveries: Statement,
    attempts: Statement,
}

impl Retention {
    /// Prepares the statements on `client` for the outbox in `schema`.
    pub async fn new(client: Client, schema: &str) -> Result<Self, RetentionError> {
        let s = quote_ident(schema);
        let err = |what: &'static str| {
            let schema = schema.to_owned();
            move |source| RetentionError {
                schema,
                what,
                source,
            }
        };
        // Nothing here is worth waiting for: a lock held elsewhere ends the batch (it is
        // tried again next run), and removals need not wait for the WAL flush.
        client
            .batch_execute("SET lock_timeout = '2s'; SET synchronous_commit = off")
            .await
            .map_err(err("setting up the session"))?;
        let cutoff = "now() - $1::int8 * interval '1 millisecond'";
        // Within one statement every part sees the same snapshot, so the event check must
        // not count the deliveries this very statement removes.
        let deliveries = client
            .prepare(&format!(
                "WITH doomed AS ( \
                   SELECT id, event_seq FROM {s}.delivery \
                   WHERE status IN ('delivered', 'dead') \
                     AND coalesce(settled_at, created_at) < {cutoff} \
                   ORDER BY coalesce(settled_at, created_at) \
                   LIMIT $2 \
                   FOR UPDATE SKIP LOCKED), \
                 gone AS ( \
                   DELETE FROM {s}.delivery d USING doomed \
                   WHERE d.id = doomed.id AND d.status IN ('delivered', 'dead') \
                   RETURNING d.event_seq), \
                 events AS ( \
                   DELETE FROM {s}.event e \
                   WHERE e.seq IN (SELECT event_seq FROM gone) \
                     AND NOT EXISTS (SELECT 1 FROM {s}.delivery o \
                                     WHERE o.event_seq = e.seq \
                                       AND o.id NOT IN (SELECT id FROM doomed)) \
                   RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events)"
            ))
            .await
            .map_err(err("preparing the removal of deliveries"))?;
        let attempts = client
            .prepare(&format!(
                "WITH gone AS ( \
                   DELETE FROM {s}.attempt WHERE id IN ( \
                     SELECT id FROM {s}.attempt WHERE started_at < {cutoff} \
                     ORDER BY started_at LIMIT $2) \
                   RETURNING 1) \
                 SELECT count(*) FROM gone"
            ))
            .await
            .map_err(err("preparing the removal of attempts"))?;
        Ok(Retention {
            client,
            schema: schema.to_owned(),
            lock_key: advisory_key("retention", schema),
            deliveries,
            attempts,
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Removes at most [`BATCH`] rows of `step` older than `retention`, in one short
    /// transaction.
    pub async fn batch(
        &mut self,
        step: Step,
        retention: Duration,
    ) -> Result<Batch, RetentionError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let schema = self.schema.clone();
        let err = |what: &'static str| {
            let schema = schema.clone();
            move |source| RetentionError {
                schema,
                what,
                source,
            }
        };
        let tx = self
            .client
            .transaction()
            .await
            .map_err(err("starting a transaction"))?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&self.lock_key])
            .await
            .map_err(err("taking the retention lock"))?
            .get(0);
        if !locked {
            tx.rollback().await.map_err(err("ending the transaction"))?;
            return Ok(Batch::Busy);
        }
        let mut removed = Removed::default();
        match step {
            Step::Deliveries => {
                let row = tx
                    .query_one(&self.deliveries, &[&retention_ms, &BATCH])
                    .await
                    .map_err(err("removing old deliveries"))?;
                removed.deliveries = count(row.get(0));
                removed.events = count(row.get(1));
            }
            Step::Attempts => {
                let row = tx
                    .query_one(&self.attempts, &[&retention_ms, &BATCH])
                    .await
                    .map_err(err("removing old attempts"))?;
                removed.attempts = count(row.get(0));
            }
        }
        tx.commit().await.map_err(err("committing"))?;
        Ok(Batch::Removed(removed))
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

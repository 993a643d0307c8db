//! The delivery queue in the outbox: the dispatcher's claims (short leases, never a
//! transaction held across HTTP), its batched completions and attempt log, and the
//! subscriptions a 410 Gone switched off.
//!
//! Every statement is one round trip; a claim is a single `UPDATE … RETURNING` over rows
//! picked with `FOR UPDATE SKIP LOCKED`, so two processes never claim the same delivery, and
//! a lease that its process did not live to release simply expires.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::config::{Method, Target};
use crate::pg::error::server_words;
use crate::pg::quote_ident;

/// A queue operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A statement failed.
    #[error("outbox ({schema}): {what}: {}", server_words(source))]
    Db {
        /// The outbox schema.
        schema: String,
        /// What was being done, with the subscription it was for.
        what: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// The outbox connection could not be opened.
    #[error("outbox: {0}")]
    Connect(#[from] crate::pg::ConnectError),
}

impl QueueError {
    /// Whether Postgres refused the statement itself (the connection is fine): sending the
    /// same statement again would fail the same way.
    pub fn is_refused_statement(&self) -> bool {
        matches!(self, QueueError::Db { source, .. } if source.as_db_error().is_some())
    }
}

/// Which pending deliveries of a subscription a claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Due deliveries in event order, for one-event requests (`ordering = "none"`). Includes
    /// deliveries a batch carried before `batch` was switched off: they go one by one now.
    Unordered,
    /// Due deliveries that have no earlier pending delivery of the same key: one event per
    /// key at a time (`ordering = "key"`, one event per request). Includes deliveries a
    /// batch carried before, as [`Claim::Unordered`].
    FirstOfKey,
    /// Due deliveries no batch has carried yet, in event order: a new batch
    /// (`ordering = "none"` with `batch`).
    NewUnordered,
    /// Due deliveries no batch has carried yet whose earlier pending deliveries of the same
    /// key are due too and taken by the same claim: a new batch carries a key's events in
    /// order (`ordering = "key"` with `batch`).
    InOrderOfKey,
    /// All deliveries of the earliest failed batch that is due again. A batch is retried
    /// whole under its id, so the limit must not cut it: pass `usize::MAX`.
    FailedBatch,
}

/// What a request triggered by the dispatcher is, in the attempt log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The retry schedule (or the first attempt).
    Scheduled,
    /// `walhook replay`.
    Replay,
}

impl Trigger {
    /// The name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Replay => "replay",
        }
    }
}

/// A claimed delivery and the event it carries.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery row.
    pub id: i64,
    /// The event's position in the outbox.
    pub event_seq: i64,
    /// The event id (`webhook-id` of a single-event request).
    pub event_id: String,
    /// The envelope bytes.
    pub body: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
    /// What this attempt is.
    pub trigger: Trigger,
    /// The batch that carried it before, when it failed in one.
    pub batch_id: Option<String>,
    /// The source commit time.
    pub committed_at: SystemTime,
    /// The row key as minified JSON, for the log.
    pub key: String,
    /// The hash the claims order by (see `delivery.ordering_key`).
    pub ordering_key: i64,
    /// The event's own URL and method, stored at capture for a subscription that routes
    /// per event; `None`: the subscription's.
    pub target: Option<Target>,
}

/// What an attempt makes of its delivery: the one vocabulary of the status policy
/// (`delivery::policy::Verdict`), the queue ([`Settled::outcome`]) and the metrics (the
/// `outcome` label of `walhook_delivery_attempts_total`, [`Outcome::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done: the receiver answered 2xx.
    Delivered,
    /// Failed; the delivery stays pending and goes again.
    Retry,
    /// Failed for good: the delivery is dead.
    Dead,
}

impl Outcome {
    /// Every outcome, in the order the metrics list them.
    pub const ALL: [Outcome; 3] = [Outcome::Delivered, Outcome::Retry, Outcome::Dead];

    /// The metric label: `success`, `retry` or `dead` (SPEC §7).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "success",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
        }
    }
}

/// The new state of a delivery after an attempt: its [`Outcome`] and what the queue needs
/// beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// 2xx.
    Delivered,
    /// Failed; the next attempt is due at that time.
    Retry(SystemTime),
    /// Failed and the schedule is exhausted.
    Dead,
    /// Back to the queue as it was: an attempt that must not count (a circuit-breaker probe,
    /// or a request cut short by shutdown).
    Released,
}

impl Settled {
    /// What the attempt made of the delivery: a release is a retry that costs no attempt.
    pub fn outcome(&self) -> Outcome {
        match self {
            Settled::Delivered => Outcome::Delivered,
            Settled::Retry(_) | Settled::Released => Outcome::Retry,
            Settled::Dead => Outcome::Dead,
        }
    }
}

/// One finished attempt of one delivery, as the completion writes it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The delivery.
    pub delivery_id: i64,
    /// Its subscription.
    pub subscription: String,
    /// The attempt's number (attempts made including this one).
    pub attempt: u32,
    /// What triggered it.
    pub trigger: Trigger,
    /// The delivery's new state.
    pub settled: Settled,
    /// The batch that carried it.
    pub batch_id: Option<String>,
    /// When the request started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// The kept part of the response body.
    pub response_excerpt: String,
}

/// The dispatcher's statements on one connection of its own.
pub struct DeliveryQueue {
    client: Client,
    schema: String,
    claim_unordered: Statement,
    claim_first_of_key: Statement,
    claim_new_unordered: Statement,
    claim_in_order_of_key: Statement,
    claim_failed_batch: Statement,
    release: Statement,
    complete: Statement,
    settle_only: Statement,
    deactivate: Statement,
    deactivated: Statement,
}

impl DeliveryQueue {
    /// Prepares the statements on `client`.
    pub async fn new(client: Client, schema: &str) -> Result<Self, QueueError> {
        let s = quote_ident(schema);
        // An earlier pending delivery of the same key holds a delivery back; for
        // `InOrderOfKey` only one that is in flight, waiting for its retry or in a failed
        // batch (a due one is earlier in event order, so the same claim takes it first).
        //
        // A scalar subquery rather than NOT EXISTS: Postgres never turns it into a join, so it
        // is always a probe of `delivery_pending_key` per candidate. As an anti-join, a plan
        // made while the table was small scans every pending row of the subscription per
        // candidate once it is not (measured: 173 ms per claim at 5,000 pending rows).
        //
        // "Pending" spelled so that only `delivery_pending_key` (unsettled rows) matches it,
        // never `delivery_pending` (`status = 'pending'`): with equal estimates, as before
        // the table's first ANALYZE, the planner took the latter and scanned every earlier
        // pending row of the subscription per candidate (see sql/0001_outbox.sql).
        let earlier = |also: &str| {
            format!(
                "AND (SELECT 1 FROM {s}.delivery p \
                   WHERE p.subscription = d.subscription AND p.settled_at IS NULL \
                     AND p.status <> 'delivered' AND p.status <> 'dead' \
                     AND p.ordering_key = d.ordering_key AND p.event_seq < d.event_seq {also} \
                   LIMIT 1) IS NULL"
            )
        };
        let claim = |filter: String| {
            format!(
                "WITH c AS ( \
                   SELECT d.id FROM {s}.delivery d \
                   WHERE d.subscription = $1 AND d.status = 'pending' \
                     AND d.next_attempt_at <= now() \
                     AND (d.leased_until IS NULL OR d.leased_until < now()) \
                     {filter} \
                   ORDER BY d.event_seq LIMIT $2 \
                   FOR UPDATE OF d SKIP LOCKED) \
                 UPDATE {s}.delivery d \
                 SET leased_until = now() + $3::int8 * interval '1 millisecond' \
                 FROM c, {s}.event e \
                 WHERE d.id = c.id AND e.seq = d.event_seq \
                 RETURNING d.id, d.event_seq, e.event_id, e.body, d.attempts, d.trigger, \
                           d.batch_id, e.committed_at, e.key, d.ordering_key, e.url, e.method"
            )
        };
        let unbatched = "AND d.batch_id IS NULL";
        let schema_name = schema.to_owned();
        let err = |what: &'static str| {
            let schema = schema_name.clone();
            move |source| QueueError::Db {
                schema,
                what: what.to_owned(),
                source,
            }
        };
        // A completion lost in a crash only means the delivery is sent again, which
        // at-least-once allows; not waiting for the WAL flush keeps completions cheap.
        //
        // No JIT: with fresh statistics and tens of thousands of pending rows, the claim's
        // estimated cost passes `jit_above_cost`, and every claim is compiled anew (EXPLAIN
        // ANALYZE at 30,000 pending, 400 claimed: 460 ms with JIT, 5 ms without); these
        // statements are short and never gain from it.
        client
            .batch_execute("SET synchronous_commit = off; SET jit = off")
            .await
            .map_err(err("setting synchronous_commit and jit"))?;
        let claim_failed_batch = format!(
            "WITH b AS ( \
               SELECT d.batch_id FROM {s}.delivery d \
               WHERE d.subscription = $1 AND d.status = 'pending' AND d.batch_id IS NOT NULL \
                 AND d.next_attempt_at <= now() \
                 AND (d.leased_until IS NULL OR d.leased_until < now()) \
               ORDER BY d.event_seq LIMIT 1), \
             c AS ( \
               SELECT d.id FROM {s}.delivery d JOIN b ON d.batch_id = b.batch_id \
               WHERE d.subscription = $1 AND d.status = 'pending' \
               ORDER BY d.event_seq LIMIT $2 \
               FOR UPDATE OF d SKIP LOCKED) \
             UPDATE {s}.delivery d \
             SET leased_until = now() + $3::int8 * interval '1 millisecond' \
             FROM c, {s}.event e \
             WHERE d.id = c.id AND e.seq = d.event_seq \
             RETURNING d.id, d.event_seq, e.event_id, e.body, d.attempts, d.trigger, \
                       d.batch_id, e.committed_at, e.key, d.ordering_key, e.url, e.method"
        );
        // A result settles its delivery; the attempt log gets a row beside it, or (when that
        // row was refused) the delivery settles alone.
        let settle = format!(
            "UPDATE {s}.delivery d SET \
               status = CASE WHEN u.settled IN ('retry', 'released') THEN 'pending' \
                             ELSE u.settled END, \
               attempts = u.attempts, \
               next_attempt_at = coalesce(u.next_at, d.next_attempt_at), \
               leased_until = NULL, \
               last_status_code = u.code, \
               last_error = u.error, \
               delivered_at = CASE WHEN u.settled = 'delivered' THEN now() END, \
               settled_at = CASE WHEN u.settled IN ('delivered', 'dead') \
                                 THEN now() END, \
               batch_id = u.batch_id, \
               trigger = CASE WHEN u.settled = 'released' THEN d.trigger \
                              ELSE 'scheduled' END \
                       FROM unnest($1::int8[], $2::text[], $3::int4[], $4::timestamptz[], \
                         $5::int4[], $6::text[], $7::text[]) \
                  AS u(id, settled, attempts, next_at, code, error, batch_id) \
                       WHERE d.id = u.id AND d.status = 'pending'"
        );
        Ok(DeliveryQueue {
            claim_unordered: client
                .prepare(&claim(String::new()))
                .await
                .map_err(err("preparing the claim"))?,
            claim_first_of_key: client
                .prepare(&claim(earlier("")))
                .await
                .map_err(err("preparing the claim"))?,
            claim_new_unordered: client
                .prepare(&claim(unbatched.to_owned()))
                .await
                .map_err(err("preparing the claim"))?,
            claim_in_order_of_key: client
                .prepare(&claim(format!(
                    "{unbatched} {}",
                    earlier(
                        "AND (p.next_attempt_at > now() OR p.leased_until >= now() \
                              OR p.batch_id IS NOT NULL)"
                    )
                )))
                .await
                .map_err(err("preparing the claim"))?,
            claim_failed_batch: client
                .prepare(&claim_failed_batch)
                .await
                .map_err(err("preparing the claim"))?,
            release: client
                .prepare(&format!(
                    "UPDATE {s}.delivery SET leased_until = NULL \
                     WHERE id = ANY($1::int8[]) AND status = 'pending'"
                ))
                .await
                .map_err(err("preparing the lease release"))?,
            // One statement, so it is atomic without a transaction and the connection can
            // be shared with claims.
            complete: client
                .prepare(&format!(
                    "WITH settled AS ({settle}) \
                     INSERT INTO {s}.attempt (delivery_id, subscription, attempt, trigger, \
                       started_at, duration_ms, status_code, error, response_excerpt) \
                     SELECT * FROM unnest($1::int8[], $8::text[], $9::int4[], $10::text[], \
                       $11::timestamptz[], $12::int4[], $5::int4[], $6::text[], $13::text[])"
                ))
                .await
                .map_err(err("preparing the completion"))?,
            settle_only: client
                .prepare(&settle)
                .await
                .map_err(err("preparing the completion without attempts"))?,
            deactivate: client
                .prepare(&super::state::mark_gone_sql(schema))
                .await
                .map_err(err("preparing the deactivation"))?,
            deactivated: client
                .prepare(&super::state::read_sql(schema))
                .await
                .map_err(err("preparing the state query"))?,
            client,
            schema: schema.to_owned(),
        })
    }

    /// Whether the connection is gone (a new queue must be made).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Leases up to `limit` deliveries of `subscription` for `lease`, in event order.
    pub async fn claim(
        &self,
        subscription: &str,
        how: Claim,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, QueueError> {
        let statement = match how {
            Claim::Unordered => &self.claim_unordered,
            Claim::FirstOfKey => &self.claim_first_of_key,
            Claim::NewUnordered => &self.claim_new_unordered,
            Claim::InOrderOfKey => &self.claim_in_order_of_key,
            Claim::FailedBatch => &self.claim_failed_batch,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(statement, &[&subscription, &limit, &lease_ms])
            .await
            .map_err(|source| {
                self.error(format!("claiming deliveries of {subscription:?}"), source)
            })?;
        let mut claimed: Vec<Claimed> = rows.iter().map(claimed).collect();
        // RETURNING follows no ORDER BY.
        claimed.sort_by_key(|c| c.event_seq);
        Ok(claimed)
    }

    /// Gives leased deliveries back untouched (shutdown, or a batch not sent).
    pub async fn release(&self, ids: &[i64]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .execute(&self.release, &[&ids])
            .await
            .map_err(|source| self.error("releasing leases".to_owned(), source))?;
        Ok(())
    }

    /// Writes finished attempts: the deliveries' new state and the attempt log, atomically.
    pub async fn complete(&self, done: &[Completion]) -> Result<(), QueueError> {
        self.record(done, true).await
    }

    /// Settles deliveries without their attempt rows: for a result whose attempt row
    /// Postgres refused, so that one bad row cannot stall every other result.
    pub async fn settle_without_attempts(&self, done: &[Completion]) -> Result<(), QueueError> {
        self.record(done, false).await
    }

    async fn record(&self, done: &[Completion], with_attempts: bool) -> Result<(), QueueError> {
        if done.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(done.len());
        let mut settled = Vec::with_capacity(done.len());
        let mut attempts = Vec::with_capacity(done.len());
        let mut next_at: Vec<Option<SystemTime>> = Vec::with_capacity(done.len());
        let mut codes: Vec<Option<i32>> = Vec::with_capacity(done.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(done.len());
        let mut batch_ids: Vec<Option<&str>> = Vec::with_capacity(done.len());
        let mut subscriptions = Vec::with_capacity(done.len());
        let mut triggers = Vec::with_capacity(done.len());
        let mut started = Vec::with_capacity(done.len());
        let mut durations = Vec::with_capacity(done.len());
        let mut excerpts = Vec::with_capacity(done.len());
        for c in done {
            ids.push(c.delivery_id);
            let attempt = i32::try_from(c.attempt).unwrap_or(i32::MAX);
            let (name, at, counted) = match c.settled {
                Settled::Delivered => ("delivered", None, attempt),
                Settled::Retry(at) => ("retry", Some(at), attempt),
                Settled::Dead => ("dead", None, attempt),
                Settled::Released => ("released", None, attempt - 1),
            };
            settled.push(name);
            attempts.push(counted);
            next_at.push(at);
            codes.push(c.status.map(i32::from));
            errors.push(c.error.as_deref().map(pg_text));
            batch_ids.push(c.batch_id.as_deref());
            subscriptions.push(c.subscription.as_str());
            triggers.push(c.trigger.as_str());
            started.push(c.started_at);
            durations.push(i32::try_from(c.duration.as_millis()).unwrap_or(i32::MAX));
            excerpts.push(pg_text(&c.response_excerpt));
        }
        let attempt_numbers: Vec<i32> = done
            .iter()
            .map(|c| i32::try_from(c.attempt).unwrap_or(i32::MAX))
            .collect();
        let params: [&(dyn ToSql + Sync); 13] = [
            &ids,
            &settled,
            &attempts,
            &next_at,
            &codes,
            &errors,
            &batch_ids,
            &subscriptions,
            &attempt_numbers,
            &triggers,
            &started,
            &durations,
            &excerpts,
        ];
        let written = if with_attempts {
            self.client.execute(&self.complete, &params).await
        } else {
            self.client.execute(&self.settle_only, &params[..7]).await
        };
        written.map_err(|source| self.error("recording delivery results".to_owned(), source))?;
        Ok(())
    }

    /// Records that the receiver of `subscription` answered 410 Gone.
    pub async fn deactivate(&self, subscription: &str, reason: &str) -> Result<(), QueueError> {
        self.client
            .execute(&self.deactivate, &[&subscription, &reason])
            .await
            .map_err(|source| self.error(format!("deactivating {subscription:?}"), source))?;
        Ok(())
    }

    /// Why `subscription` is switched off (paused or gone), if it is.
    pub async fn deactivated(
        &self,
        subscription: &str,
    ) -> Result<Option<super::state::Stopped>, QueueError> {
        let row = self
            .client
            .query_opt(&self.deactivated, &[&subscription])
            .await
            .map_err(|source| {
                self.error(format!("reading the state of {subscription:?}"), source)
            })?;
        Ok(row.as_ref().map(super::state::Stopped::from_row))
    }

    fn error(&self, what: String, source: tokio_postgres::Error) -> QueueError {
        QueueError::Db {
            schema: self.schema.clone(),
            what,
            source,
        }
    }
}

/// `text` as Postgres `text` can hold it: a NUL byte (valid UTF-8, but refused by Postgres)
/// becomes U+FFFD. What a receiver answers must never make the statement that records it
/// fail, or every later result would wait behind it.
fn pg_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The stored target of an event: its URL, and the method as stored (authoritative: the
/// config's method for that operation may have changed since). Capture writes both or neither.
fn target(url: Option<String>, method: Option<&str>) -> Option<Target> {
    let url = url?;
    let method = method.and_then(Method::parse).unwrap_or(Method::Post);
    Some(Target { url, method })
}

fn claimed(row: &Row) -> Claimed {
    let trigger: &str = row.get(5);
    Claimed {
        id: row.get(0),
        event_seq: row.get(1),
        event_id: row.get(2),
        body: row.get(3),
        attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        trigger: if trigger == "replay" {
            Trigger::Replay
        } else {
            Trigger::Scheduled
        },
        batch_id: row.get(6),
        committed_at: row.get(7),
        key: row.get(8),
        ordering_key: row.get(9),
        target: target(row.get(10), row.get(11)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_a_metric_label() {
        let labels = Outcome::ALL.map(Outcome::as_str);
        assert_eq!(labels, crate::metrics::ATTEMPT_OUTCOMES);
        let cases = [
            (Settled::Delivered, Outcome::Delivered),
            (Settled::Retry(SystemTime::UNIX_EPOCH), Outcome::Retry),
            (Settled::Released, Outcome::Retry),
            (Settled::Dead, Outcome::Dead),
        ];
        for (settled, outcome) in cases {
            assert_eq!(settled.outcome(), outcome, "{settled:?}");
        }
    }
}

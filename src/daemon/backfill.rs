//! The backfill task of `walhook run` (SPEC §3b): works through the running backfills in
//! the outbox, oldest first, one chunk read at a time, beside capture.
//!
//! Per chunk: announce the read to the capture session, write the low watermark, read up
//! to `limit` rows after the last key with one plain SELECT (no snapshot is held between
//! chunks, no lock beyond a normal SELECT), hand the rows over, write the high watermark.
//! Capture emits the rows when it meets the high mark and commits the chunk's progress with
//! their events, then tells this task. Two chunks may be under way at once, so reading the
//! next overlaps with committing the last. Whatever is not confirmed is read again after the
//! progress the outbox recorded: the outbox is the only truth about what was written.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::capture::relation::RelationCache;
use crate::capture::window::{Announce, Chunk, ToCapture};
use crate::capture::RowChange;
use crate::config::{Config, SubscriptionConfig};
use crate::outbox::backfill::{self, Backfill, BackfillState, RequestError, RequestedBy};
use crate::outbox::backfill_ask::{self, AskError};
use crate::pg;
use crate::pg::conninfo::ConnInfo;
use crate::source::chunks::{self, ChunkError, ChunkReader, Key};
use crate::source::watermark::{Mark, Watermark};
use crate::time::pg_now_micros;

/// How often the task looks for a backfill to work on while none runs.
const POLL: Duration = Duration::from_secs(1);

/// After an error a retry may fix (a lost connection), before trying again.
const RETRY: Duration = Duration::from_secs(5);

/// Chunk reads handed to capture and not yet confirmed.
const IN_FLIGHT: usize = 2;

/// How long a chunk may wait for capture before it is read again. Capture meets the high
/// mark within milliseconds unless it is far behind the WAL; then reading again is right.
const CONFIRM: Duration = Duration::from_secs(120);

/// The chunk size adapts so that one SELECT takes about this long: long enough that the
/// per-chunk cost (two watermarks, a round through capture) stays small, short enough
/// that no transaction of the source lasts long.
const BUDGET: Duration = Duration::from_millis(200);

/// Bounds of the adaptive chunk size. Two chunks are under way at once, each held as
/// rows, events and the writer's buffers: at 20,000 rows a peak RSS of 150 MiB was
/// measured for a 1,000,000-row backfill, at 5,000 rows 47 MiB (SPEC §9: 64), for 27,600
/// and 23,100 rows/s against 29,400 and 34,000, alternating in one run whose Postgres-only
/// ceiling moved from 40,700 to 48,700 (`walhook-bench --only backfill`).
const MIN_ROWS: usize = 100;
const MAX_ROWS: usize = 5_000;
const FIRST_ROWS: usize = 1_000;

/// Starts the task; `chunks` goes to the capture session, `config` is the running config.
pub(super) fn spawn(
    source: ConnInfo,
    outbox: ConnInfo,
    config: watch::Receiver<Arc<Config>>,
    chunks: mpsc::Sender<ToCapture>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut task = Task {
            source,
            outbox,
            config,
            chunks,
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = task.run() => {}
        }
    })
}

struct Task {
    source: ConnInfo,
    outbox: ConnInfo,
    config: watch::Receiver<Arc<Config>>,
    chunks: mpsc::Sender<ToCapture>,
}

/// Why a backfill stopped before it was done.
#[derive(Debug)]
enum Stop {
    /// Cancelled: nothing more to do.
    Cancelled,
    /// A retry may work (a lost connection): the backfill stays running.
    Transient(String),
    /// A retry would repeat it: the backfill is failed with this message.
    Failed(String),
}

impl Task {
    async fn run(&mut self) {
        // Seen first now: subscriptions of the config at start, then of every reload.
        let mut seen_config = None;
        loop {
            let config = self.config.borrow_and_update().clone();
            let schema = config.outbox.schema.clone();
            let outbox = match pg::connect_sql(&self.outbox).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::warn!("backfill: {e}; trying again in {RETRY:?}");
                    sleep(RETRY).await;
                    continue;
                }
            };
            loop {
                let config = self.config.borrow_and_update().clone();
                if seen_config
                    .as_ref()
                    .is_none_or(|c| !Arc::ptr_eq(c, &config))
                {
                    if let Err(e) = request_new(&outbox, &config).await {
                        tracing::warn!("backfill: {e}; trying again in {RETRY:?}");
                        break;
                    }
                    seen_config = Some(config.clone());
                }
                let next = match backfill::running(&outbox, &schema).await {
                    Ok(running) => running.into_iter().next(),
                    Err(e) => {
                        tracing::warn!("backfill: {e}; trying again in {RETRY:?}");
                        break;
                    }
                };
                let Some(next) = next else {
                    tokio::select! {
                        _ = sleep(POLL) => {}
                        _ = self.config.changed() => {}
                    }
                    continue;
                };
                let started = Instant::now();
                let outcome = self.backfill(&outbox, &config, &next).await;
                let finished = match outcome {
                    Ok(()) => backfill::finish(&outbox, &schema, next.id, Ok(())).await,
                    Err(Stop::Cancelled) => {
                        tracing::info!(
                            subscription = %next.subscription,
                            backfill = next.id,
                            "backfill cancelled"
                        );
                        Ok(())
                    }
                    Err(Stop::Failed(error)) => {
                        tracing::error!(
                            subscription = %next.subscription,
                            backfill = next.id,
                            "backfill failed: {error}"
                        );
                        backfill::finish(&outbox, &schema, next.id, Err(&error)).await
                    }
                    Err(Stop::Transient(error)) => {
                        tracing::warn!(
                            subscription = %next.subscription,
                            backfill = next.id,
                            "backfill interrupted: {error}; resuming in {RETRY:?}"
                        );
                        sleep(RETRY).await;
                        break;
                    }
                };
                let _ = self.chunks.send(ToCapture::End(next.id)).await;
                if let Err(e) = finished {
                    tracing::warn!("backfill: {e}; trying again in {RETRY:?}");
                    break;
                }
                if let Ok(Some(done)) = backfill::one(&outbox, &schema, next.id).await {
                    if done.state == BackfillState::Done {
                        tracing::info!(
                            subscription = %done.subscription,
                            backfill = done.id,
                            rows = done.rows,
                            "backfill done: {} rows in {:.1}s",
                            done.rows,
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            sleep(RETRY).await;
        }
    }

    /// Works on one backfill until it is done, cancelled or stopped by an error.
    async fn backfill(
        &mut self,
        outbox: &tokio_postgres::Client,
        config: &Config,
        backfill: &Backfill,
    ) -> Result<(), Stop> {
        let schema = &config.outbox.schema;
        let id = backfill.id;
        // What the request was checked for may have changed since (a reload, the source
        // upgraded or downgraded, a column dropped): checked again, the same way.
        let checked =
            backfill_ask::check(config, &backfill.subscription, backfill.filter.as_deref())
                .await
                .map_err(|e| match e {
                    AskError::Source(_) => Stop::Transient(e.to_string()),
                    e => Stop::Failed(e.to_string()),
                })?;
        let sub = backfill_ask::active_subscription(config, &backfill.subscription)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        if backfill.rows_estimate.is_none() {
            if let Some(rows) = checked.rows_estimate {
                let _ = backfill::estimate(outbox, schema, id, rows).await;
            }
        }
        let source = pg::connect_sql(&self.source)
            .await
            .map_err(|e| Stop::Transient(e.to_string()))?;
        let table = &sub.object.config.table;
        let stopped = |e: ChunkError| match e.is_transient() {
            true => Stop::Transient(format!("{table}: {e}")),
            false => Stop::Failed(format!("{table}: {e}")),
        };
        chunks::pin_text_output(&source).await.map_err(stopped)?;
        let described = chunks::describe(&source, table).await.map_err(stopped)?;
        let oid = described.oid;
        let relation = RelationCache::new()
            .learn(described.clone(), &source)
            .await
            .map_err(|e| Stop::Transient(e.to_string()))?;
        let key: Vec<String> = match &sub.object.config.key {
            Some(key) => key.clone(),
            None => relation
                .key
                .iter()
                .map(|&i| relation.columns[i].name.clone())
                .collect(),
        };
        if key.is_empty() {
            return Err(Stop::Failed(format!(
                "{table} has no primary key; set the object's key to columns with a unique \
                 index (backfills read in key order)"
            )));
        }
        let reader = ChunkReader::new(&source, &described, &key, backfill.filter.as_deref())
            .await
            .map_err(stopped)?;
        tracing::info!(
            subscription = %sub.name,
            backfill = id,
            table = %table,
            "backfill: reading {table} in key order ({})",
            key.join(", ")
        );
        let subscription: Arc<str> = Arc::from(sub.name.as_str());
        let mut progress = Position::of(backfill)?;
        let mut in_flight: VecDeque<(String, oneshot::Receiver<()>)> = VecDeque::new();
        let mut limit = FIRST_ROWS.min(rate_cap(config));
        let mut pace = Pace::new(config.source.backfill_rows_per_second);
        let mut last_line = Instant::now();
        loop {
            let state = backfill::one(outbox, schema, id)
                .await
                .map_err(|e| Stop::Transient(e.to_string()))?;
            let state = match state {
                Some(b) => b,
                None => return Err(Stop::Cancelled),
            };
            if state.state != BackfillState::Running {
                self.forget(&mut in_flight).await;
                return Err(Stop::Cancelled);
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                progress_line(sub, &state);
            }
            let token = format!("{id}-{}-{:08x}", progress.chunk, rand::random::<u32>());
            self.send(ToCapture::Announce(Announce {
                token: token.clone(),
                backfill: id,
                subscription: subscription.clone(),
                table: oid,
                key: key.clone(),
            }))
            .await?;
            emit(&source, &token, Mark::Low).await?;
            let started = Instant::now();
            let read = reader
                .read(&source, progress.last_key.as_ref(), limit)
                .await
                .map_err(stopped)?;
            let took = started.elapsed();
            let Some(last_key) = read.last_key.clone() else {
                // Past the last row: done once what is under way is committed.
                self.send(ToCapture::Forget(token)).await?;
                if self.confirm_all(&mut in_flight).await {
                    return Ok(());
                }
                progress = self.reread(outbox, schema, id).await?;
                continue;
            };
            limit = adapt(limit, read.rows.len(), took).min(rate_cap(config));
            let rows: Vec<RowChange> = read
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| RowChange::read(relation.clone(), i as u32, row))
                .collect();
            let count = rows.len();
            let (done, confirmed) = oneshot::channel();
            self.send(ToCapture::Chunk(Chunk {
                token: token.clone(),
                backfill: id,
                chunk: progress.chunk,
                subscription: subscription.clone(),
                rows,
                last_key: last_key.to_json(),
                time: pg_now_micros(),
                done,
            }))
            .await?;
            emit(&source, &token, Mark::High).await?;
            in_flight.push_back((token, confirmed));
            progress = Position {
                last_key: Some(last_key),
                chunk: progress.chunk + 1,
            };
            while in_flight.len() >= IN_FLIGHT {
                if !self.confirm_oldest(&mut in_flight).await {
                    progress = self.reread(outbox, schema, id).await?;
                }
            }
            pace.after(count).await;
        }
    }

    async fn send(&self, message: ToCapture) -> Result<(), Stop> {
        self.chunks
            .send(message)
            .await
            .map_err(|_| Stop::Transient("the capture session is gone".into()))
    }

    /// Waits for the oldest chunk under way; `false` when it will not be committed (then
    /// the later ones are forgotten too, and everything is read again after the progress
    /// the outbox recorded).
    async fn confirm_oldest(
        &self,
        in_flight: &mut VecDeque<(String, oneshot::Receiver<()>)>,
    ) -> bool {
        let Some((_, confirmed)) = in_flight.front_mut() else {
            return true;
        };
        if let Ok(Ok(())) = timeout(CONFIRM, confirmed).await {
            in_flight.pop_front();
            return true;
        }
        self.forget(in_flight).await;
        false
    }

    /// Waits for every chunk under way; `false` when one will not be committed.
    async fn confirm_all(&self, in_flight: &mut VecDeque<(String, oneshot::Receiver<()>)>) -> bool {
        while !in_flight.is_empty() {
            if !self.confirm_oldest(in_flight).await {
                return false;
            }
        }
        true
    }

    async fn forget(&self, in_flight: &mut VecDeque<(String, oneshot::Receiver<()>)>) {
        for (token, _) in in_flight.drain(..) {
            let _ = self.chunks.send(ToCapture::Forget(token)).await;
        }
    }

    /// The progress as the outbox recorded it, after a chunk went unconfirmed.
    async fn reread(
        &self,
        outbox: &tokio_postgres::Client,
        schema: &str,
        id: i64,
    ) -> Result<Position, Stop> {
        tracing::debug!(
            backfill = id,
            "backfill: reading again from the recorded progress"
        );
        match backfill::one(outbox, schema, id).await {
            Ok(Some(b)) => Position::of(&b),
            Ok(None) => Err(Stop::Cancelled),
            Err(e) => Err(Stop::Transient(e.to_string())),
        }
    }
}

/// Where the next chunk starts.
struct Position {
    last_key: Option<Key>,
    /// Chunks committed before it.
    chunk: i64,
}

impl Position {
    fn of(backfill: &Backfill) -> Result<Position, Stop> {
        let last_key = match &backfill.last_key {
            Some(text) => Some(Key::from_json(text).map_err(|e| {
                Stop::Failed(format!("the recorded progress {text:?} is not a key: {e}"))
            })?),
            None => None,
        };
        Ok(Position {
            last_key,
            chunk: backfill.chunks,
        })
    }
}

async fn emit(source: &tokio_postgres::Client, token: &str, mark: Mark) -> Result<(), Stop> {
    Watermark {
        token: token.to_owned(),
        mark,
    }
    .emit(source)
    .await
    .map(|_| ())
    .map_err(|e| Stop::Transient(format!("writing a watermark: {e}")))
}

/// The next chunk size: scaled so one SELECT takes about [`BUDGET`], changing by at most
/// 2× a step.
fn adapt(limit: usize, rows: usize, took: Duration) -> usize {
    if rows < limit {
        // A short chunk (the end of the table, or a filter) says nothing about speed.
        return limit;
    }
    let took = took.as_secs_f64().max(0.001);
    let ideal = (limit as f64 * BUDGET.as_secs_f64() / took) as usize;
    ideal.clamp(limit / 2, limit * 2).clamp(MIN_ROWS, MAX_ROWS)
}

/// At most a second's worth of rows per chunk under a rate limit.
fn rate_cap(config: &Config) -> usize {
    config
        .source
        .backfill_rows_per_second
        .map_or(MAX_ROWS, |rate| (rate as usize).clamp(1, MAX_ROWS))
}

/// Keeps a backfill at or below `source.backfill_rows_per_second`.
struct Pace {
    rate: Option<u32>,
    started: Instant,
    rows: u64,
}

impl Pace {
    fn new(rate: Option<u32>) -> Pace {
        Pace {
            rate,
            started: Instant::now(),
            rows: 0,
        }
    }

    async fn after(&mut self, rows: usize) {
        self.rows += rows as u64;
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.rows as f64 / f64::from(rate));
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The progress line of a running backfill in the log.
fn progress_line(sub: &SubscriptionConfig, state: &Backfill) {
    let of = match state.rows_estimate {
        Some(estimate) if estimate > 0 => format!(
            " of about {estimate} ({:.0}%)",
            (state.rows as f64 * 100.0 / estimate as f64).min(100.0)
        ),
        _ => String::new(),
    };
    let rate = state
        .rows_per_second
        .map(|r| format!(", {r:.0} rows/s"))
        .unwrap_or_default();
    tracing::info!(
        subscription = %sub.name,
        backfill = state.id,
        rows = state.rows,
        "backfill {}: {} rows{of}{rate}",
        sub.name,
        state.rows
    );
}

/// Asks for a backfill of every subscription with `backfill = true` that no running
/// daemon has seen before; marks every active subscription seen.
async fn request_new(outbox: &tokio_postgres::Client, config: &Config) -> Result<(), String> {
    let schema = &config.outbox.schema;
    let names: Vec<&str> = config
        .subscriptions
        .iter()
        .filter(|s| s.active)
        .map(|s| s.name.as_str())
        .collect();
    let new = backfill::first_seen(outbox, schema, &names)
        .await
        .map_err(|e| e.to_string())?;
    for sub in config
        .subscriptions
        .iter()
        .filter(|s| s.backfill && new.contains(&s.name))
    {
        match backfill::request(outbox, schema, &sub.name, None, RequestedBy::Config).await {
            Ok(b) => tracing::info!(
                subscription = %sub.name,
                backfill = b.id,
                "backfill = true on a new subscription: backfill {} asked for",
                b.id
            ),
            Err(RequestError::AlreadyRunning { .. }) => {}
            Err(RequestError::Store(e)) => return Err(e.to_string()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_size_follows_the_time_budget_within_bounds() {
        let ms = Duration::from_millis;
        for (limit, rows, took, expected) in [
            // Fast reads grow the chunk, at most 2× a step.
            (1_000, 1_000, ms(10), 2_000),
            // Slow reads shrink it, at most to half.
            (1_000, 1_000, ms(1_000), 500),
            // On budget: unchanged.
            (1_000, 1_000, ms(200), 1_000),
            // A short chunk says nothing.
            (1_000, 10, ms(1), 1_000),
            // Bounds.
            (MAX_ROWS, MAX_ROWS, ms(1), MAX_ROWS),
            (MIN_ROWS, MIN_ROWS, ms(10_000), MIN_ROWS),
        ] {
            assert_eq!(
                adapt(limit, rows, took),
                expected,
                "{limit} {rows} {took:?}"
            );
        }
    }
}

//! Health and samples, shared by the daemon (which runs the sampler and sets the health
//! flags) and the HTTP server (which shows them).
//!
//! The status sampler: every few seconds it reads what the metrics and the admin API show
//! but nobody else computes — the outbox backlog per subscription, the slot's retained WAL
//! and lag — warns when the slot holds more WAL than `source.max_retained_wal`, and emits
//! the heartbeat that keeps an idle slot moving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_postgres::error::SqlState;

use crate::config::{format_size, Config};
use crate::metrics::Metrics;
use crate::outbox::{backfill, checkpoint, status};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::server_message;
use crate::pg::Reconnecting;

/// How often the sampler reads.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One subscription's backlog.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Backlog {
    /// Deliveries waiting.
    pub pending: i64,
    /// Dead deliveries kept.
    pub dead: i64,
    /// Age of the oldest waiting delivery, in seconds.
    pub oldest_pending_seconds: f64,
}

/// The slot as the source reports it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SlotStatus {
    /// Bytes of WAL the source keeps for the slot.
    pub retained_wal_bytes: i64,
    /// Bytes between the source's WAL position and what walhook confirmed.
    pub lag_bytes: i64,
    /// The position walhook confirmed.
    pub confirmed_flush_lsn: Option<String>,
    /// Whether a process streams from it now.
    pub active: bool,
}

/// What the last sample saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    /// Per subscription.
    pub backlog: BTreeMap<String, Backlog>,
    /// The slot, when the source answered.
    pub slot: Option<SlotStatus>,
    /// The capture checkpoint (last source commit in the outbox).
    pub checkpoint_lsn: Option<String>,
    /// Whether the outbox answered and accepts writes (not a standby).
    pub outbox_writable: bool,
    /// When it was taken; `None` before the first sample.
    #[serde(skip)]
    pub taken_at: Option<std::time::SystemTime>,
}

/// Shared health flags, set by the parts that know.
#[derive(Debug, Default)]
pub struct Health {
    /// The replication stream is connected.
    pub replication_connected: AtomicBool,
    /// The last outbox check or outbox commit succeeded.
    pub outbox_writable: AtomicBool,
    /// Asks the sampler for a sample now instead of at its next tick (after startup: the
    /// first tick ran before the migrations had created the outbox).
    pub sample_now: tokio::sync::Notify,
}

impl Health {
    /// An outbox transaction committed: the outbox is writable, whatever the last sample said.
    pub fn outbox_committed(&self) {
        self.outbox_writable.store(true, Ordering::Relaxed);
    }
}

impl Health {
    /// Ready: replication connected and the outbox writable.
    pub fn ready(&self) -> Result<(), Vec<&'static str>> {
        let mut problems = Vec::new();
        if !self.replication_connected.load(Ordering::Relaxed) {
            problems.push("replication is not connected");
        }
        if !self.outbox_writable.load(Ordering::Relaxed) {
            problems.push("the outbox is not writable");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Samples until `shutdown`, publishing each sample on the returned channel.
pub fn spawn(
    config: &Config,
    source: ConnInfo,
    outbox: ConnInfo,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Arc<Sample>> {
    let (tx, rx) = watch::channel(Arc::new(Sample::default()));
    let settings = Settings {
        schema: config.outbox.schema.clone(),
        slot: config.source.slot.clone(),
        max_retained_wal: config.source.max_retained_wal,
        heartbeat: config.source.heartbeat,
    };
    tokio::spawn(async move {
        let mut sampler = Sampler {
            settings,
            metrics,
            health,
            source_db: Reconnecting::new(source),
            outbox_db: Reconnecting::new(outbox),
            over_limit: false,
            last_heartbeat: Instant::now(),
            heartbeat_failed: false,
            with_backlog: BTreeSet::new(),
        };
        let mut tick = interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
                _ = sampler.health.sample_now.notified() => tick.reset(),
            }
            let sample = sampler.sample().await;
            tx.send_replace(Arc::new(sample));
        }
    });
    rx
}

/// Why the outbox could not be sampled before migrations created the schema: not a warning.
const NOT_SET_UP: &str = "the outbox schema is not set up yet";

struct Settings {
    schema: String,
    slot: String,
    max_retained_wal: u64,
    heartbeat: Duration,
}

struct Sampler {
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    source_db: Reconnecting,
    outbox_db: Reconnecting,
    over_limit: bool,
    last_heartbeat: Instant,
    heartbeat_failed: bool,
    /// Subscriptions the last sample saw a backlog of.
    with_backlog: BTreeSet<String>,
}

impl Sampler {
    async fn sample(&mut self) -> Sample {
        let mut sample = Sample {
            taken_at: Some(std::time::SystemTime::now()),
            ..Sample::default()
        };
        match self.sample_outbox(&mut sample).await {
            Ok(()) => sample.outbox_writable = true,
            Err(e) if e == NOT_SET_UP => tracing::debug!("outbox status: {e}"),
            Err(e) => {
                tracing::warn!("outbox status: {e}");
                self.outbox_db.reset();
            }
        }
        self.health
            .outbox_writable
            .store(sample.outbox_writable, Ordering::Relaxed);
        match self.sample_source(&mut sample).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("slot status: {e}");
                self.source_db.reset();
            }
        }
        sample
    }

    async fn sample_outbox(&mut self, sample: &mut Sample) -> Result<(), String> {
        let db = self.outbox_db.get().await.map_err(|e| e.to_string())?;
        let schema = &self.settings.schema;
        let rows = status::backlog(db, schema)
            .await
            .map_err(|e| match e.code() {
                // `run` samples from the start; migrations create the schema moments later.
                Some(c)
                    if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME =>
                {
                    NOT_SET_UP.to_owned()
                }
                _ => server_message(&e),
            })?;
        for row in rows {
            let entry = sample.backlog.entry(row.subscription).or_default();
            if row.pending {
                entry.pending = row.count;
                entry.oldest_pending_seconds = row.oldest_seconds;
            } else {
                entry.dead = row.count;
            }
        }
        // A schema older than the backfill migration has none running; the gauge waits.
        if let Ok(running) = backfill::running(db, schema).await {
            self.metrics
                .backfills_running
                .set(i64::try_from(running.len()).unwrap_or(i64::MAX));
        }
        sample.checkpoint_lsn = checkpoint::text(db, schema, &self.settings.slot)
            .await
            .map_err(|e| server_message(&e))?;
        let standby: bool = db
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| server_message(&e))?
            .get(0);
        if standby {
            return Err("the outbox database is a standby (read-only)".to_owned());
        }
        // Series of subscriptions whose backlog emptied go back to zero.
        for (name, backlog) in &sample.backlog {
            let labels = Metrics::subscription(name);
            self.metrics
                .outbox_pending
                .get_or_create(&labels)
                .set(backlog.pending);
            self.metrics
                .outbox_dead
                .get_or_create(&labels)
                .set(backlog.dead);
            self.metrics
                .outbox_oldest_pending_seconds
                .get_or_create(&labels)
                .set(backlog.oldest_pending_seconds);
        }
        for gone in self
            .with_backlog
            .difference(&sample.backlog.keys().cloned().collect())
        {
            let labels = Metrics::subscription(gone);
            self.metrics.outbox_pending.get_or_create(&labels).set(0);
            self.metrics.outbox_dead.get_or_create(&labels).set(0);
            self.metrics
                .outbox_oldest_pending_seconds
                .get_or_create(&labels)
                .set(0.0);
        }
        self.with_backlog = sample.backlog.keys().cloned().collect();
        Ok(())
    }

    async fn sample_source(&mut self, sample: &mut Sample) -> Result<(), String> {
        let db = self.source_db.get().await.map_err(|e| e.to_string())?;
        let row = db
            .query_opt(
                "SELECT (pg_current_wal_lsn() - restart_lsn)::int8, \
                        (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
                        confirmed_flush_lsn::text, active \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.settings.slot],
            )
            .await
            .map_err(|e| server_message(&e))?;
        if let Some(row) = row {
            let slot = SlotStatus {
                retained_wal_bytes: row.get::<_, Option<i64>>(0).unwrap_or(0),
                lag_bytes: row.get::<_, Option<i64>>(1).unwrap_or(0),
                confirmed_flush_lsn: row.get(2),
                active: row.get(3),
            };
            self.metrics
                .slot_retained_wal_bytes
                .set(slot.retained_wal_bytes);
            self.metrics.replication_lag_bytes.set(slot.lag_bytes);
            sample.slot = Some(slot);
        }
        if self.last_heartbeat.elapsed() >= self.settings.heartbeat {
            self.last_heartbeat = Instant::now();
            // A tiny WAL record on an otherwise idle server: the walsender then sends a
            // keepalive past it, and capture acknowledges the slot forward, so WAL written
            // by other databases of the cluster is not retained for walhook.
            let beat = db
                .execute(
                    "SELECT pg_logical_emit_message(false, 'walhook', 'heartbeat')",
                    &[],
                )
                .await;
            match beat {
                Ok(_) => self.heartbeat_failed = false,
                Err(e) if !self.heartbeat_failed => {
                    self.heartbeat_failed = true;
                    tracing::warn!(
                        "source.heartbeat: pg_logical_emit_message failed ({}); an idle slot \
                         advances only when the database writes",
                        server_message(&e)
                    );
                }
                Err(_) => {}
            }
        }
        if let Some(slot) = &sample.slot {
            self.watch_retained_wal(slot.retained_wal_bytes);
        }
        Ok(())
    }

    fn watch_retained_wal(&mut self, retained: i64) {
        let limit = self.settings.max_retained_wal;
        let over = u64::try_from(retained).unwrap_or(0) > limit;
        self.metrics
            .slot_retained_wal_over_limit
            .set(i64::from(over));
        if over && !self.over_limit {
            tracing::warn!(
                slot = %self.settings.slot,
                "the slot makes the source keep {} of WAL, more than source.max_retained_wal \
                 ({}): walhook is behind or stopped; if it stays so, the source's disk fills",
                format_size(u64::try_from(retained).unwrap_or(0)),
                format_size(limit)
            );
        }
        self.over_limit = over;
    }
}

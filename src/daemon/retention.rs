//! The retention task of `walhook run`: shortly after start and then every minute it removes
//! what `outbox.retention` says may go (see `outbox::retention`), a batch at a time with a
//! pause between batches, and stops on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::{format_duration, Config};
use crate::metrics::Metrics;
use crate::outbox::retention::{Batch, Removed, Retention, Step, BATCH};
use crate::pg::client::OpenError;
use crate::pg::conninfo::ConnInfo;
use crate::pg::{Reconnecting, Session};

/// The first run, after start.
const FIRST_RUN: Duration = Duration::from_secs(5);

/// Between runs.
const EVERY: Duration = Duration::from_secs(60);

/// The least pause between two batches; a batch that took longer is followed by a pause as
/// long, so retention takes at most about half of the database's attention.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Starts the task on the outbox at `outbox`; `config` brings edits of `outbox.retention`.
pub(super) fn spawn(
    outbox: ConnInfo,
    config: watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut task = Task {
            config,
            metrics,
            db: Reconnecting::new(outbox),
        };
        let mut next = Instant::now() + FIRST_RUN;
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = sleep_until(next) => {}
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = task.run() => {}
            }
            next = Instant::now() + EVERY;
        }
    })
}

struct Task {
    config: watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    db: Reconnecting<Retention>,
}

impl Session for Retention {
    fn is_closed(&self) -> bool {
        Retention::is_closed(self)
    }
}

impl Task {
    /// One run: every batch there is, deliveries (with their events) first, then attempts.
    async fn run(&mut self) {
        let (schema, retention) = {
            let config = self.config.borrow();
            (config.outbox.schema.clone(), config.outbox.retention)
        };
        let connected = self
            .db
            .get_with(|client| Retention::new(client, &schema))
            .await;
        let db = match connected {
            Ok(db) => db,
            Err(e) => {
                let e = match e {
                    OpenError::Connect(e) => format!("outbox retention: {e}"),
                    OpenError::Setup(e) => e.to_string(),
                };
                tracing::warn!("{e}; trying again in {}", format_duration(EVERY));
                return;
            }
        };
        let mut total = Removed::default();
        let mut lost = false;
        'steps: for step in [Step::Deliveries, Step::Attempts] {
            loop {
                let started = Instant::now();
                let removed = match db.batch(step, retention).await {
                    Ok(Batch::Removed(removed)) => removed,
                    // Another walhook on this outbox is at it: its run covers ours.
                    Ok(Batch::Busy) => break 'steps,
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {}", format_duration(EVERY));
                        lost = true;
                        break 'steps;
                    }
                };
                self.metrics
                    .retention_removed("delivery", removed.deliveries);
                self.metrics.retention_removed("event", removed.events);
                self.metrics.retention_removed("attempt", removed.attempts);
                total.add(removed);
                let full = match step {
                    Step::Deliveries => removed.deliveries >= BATCH as u64,
                    Step::Attempts => removed.attempts >= BATCH as u64,
                };
                if !full {
                    break;
                }
                sleep(started.elapsed().max(MIN_PAUSE)).await;
            }
        }
        if lost {
            self.db.reset();
        }
        if !total.is_empty() {
            tracing::info!(
                deliveries = total.deliveries,
                events = total.events,
                attempts = total.attempts,
                "outbox retention: removed delivered and dead deliveries, their events and \
                 attempts older than {}",
                format_duration(retention)
            );
        }
    }
}

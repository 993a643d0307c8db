//! The dispatcher: one worker per active subscription, woken right after the outbox commit
//! that gave it new deliveries, and one completion writer that records results in batches.
//!
//! The outbox table is the queue: workers claim from it with short leases (so nothing is
//! held across HTTP, and a process that dies leaves nothing locked for long), and completions
//! are written by one task that takes everything waiting in one statement.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::network::{self, NetworkPolicy};
use super::worker::{Control, Worker};
use crate::config::{AllowedNetwork, Config, SubscriptionConfig};
use crate::metrics::Metrics;
use crate::outbox::queue::{Completion, DeliveryQueue, QueueError};
use crate::pg::client::OpenError;
use crate::pg::conninfo::ConnInfo;
use crate::pg::{Reconnecting, Session};

/// Completions written together at most.
const COMPLETION_BATCH: usize = 512;
/// How long the completion writer waits for more results when it has fewer than
/// [`COMPLETION_LINGER_ENOUGH`].
const COMPLETION_LINGER: Duration = Duration::from_millis(2);
const COMPLETION_LINGER_ENOUGH: usize = 64;

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The HTTP client could not be built (TLS roots).
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Results of one request, for the completion writer.
pub(super) struct Finished {
    pub(super) completions: Vec<Completion>,
    /// The worker to wake once they are recorded: a key's next event may go then.
    pub(super) wake: Arc<Notify>,
}

/// The network policy of `delivery.allow_networks` and the HTTP client that enforces it.
pub(super) struct Net {
    pub(super) client: reqwest::Client,
    pub(super) policy: NetworkPolicy,
    allow: Vec<AllowedNetwork>,
}

impl Net {
    fn new(allow: &[AllowedNetwork]) -> Result<Net, reqwest::Error> {
        let policy = NetworkPolicy::new(allow);
        Ok(Net {
            client: network::http_client(policy.clone())?,
            policy,
            allow: allow.to_vec(),
        })
    }
}

/// What every worker uses.
pub(super) struct Shared {
    /// Replaced when `delivery.allow_networks` changes; a request keeps the one it started
    /// with.
    net: RwLock<Arc<Net>>,
    /// `delivery.max_in_flight`, across subscriptions.
    pub(super) global: Arc<Semaphore>,
    pub(super) completions: mpsc::Sender<Finished>,
    pub(super) metrics: Arc<Metrics>,
    queues: Arc<Queues>,
}

impl Shared {
    /// The network policy and client for a new request.
    pub(super) fn net(&self) -> Arc<Net> {
        self.net
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies an edited `delivery.allow_networks`: a new client, since pooled connections
    /// were checked under the old list.
    fn set_allow_networks(&self, allow: &[AllowedNetwork]) {
        if self.net().allow == allow {
            return;
        }
        match Net::new(allow) {
            Ok(net) => {
                *self.net.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(net);
                tracing::info!("delivery.allow_networks changed: new requests use the new list");
            }
            Err(e) => tracing::warn!(
                "delivery.allow_networks changed, but building the HTTP client failed ({e}); \
                 the previous list stays in force"
            ),
        }
    }

    /// The queue on the dispatcher's outbox connection for claims.
    pub(super) async fn queue(&self) -> Result<Arc<DeliveryQueue>, QueueError> {
        self.queues.get().await
    }
}

/// An outbox connection of the dispatcher (one for claims, one for completions), opened
/// again when it was lost.
struct Queues {
    schema: String,
    current: tokio::sync::Mutex<Reconnecting<Arc<DeliveryQueue>>>,
}

impl Session for DeliveryQueue {
    fn is_closed(&self) -> bool {
        DeliveryQueue::is_closed(self)
    }
}

impl Queues {
    async fn get(&self) -> Result<Arc<DeliveryQueue>, QueueError> {
        let mut current = self.current.lock().await;
        let schema = &self.schema;
        let queue = current
            .get_with(
                |client| async move { DeliveryQueue::new(client, schema).await.map(Arc::new) },
            )
            .await
            .map_err(|e| match e {
                OpenError::Connect(e) => QueueError::Connect(e),
                OpenError::Setup(e) => e,
            })?;
        Ok(queue.clone())
    }
}

/// How the capture side talks to the dispatcher.
#[derive(Clone)]
pub struct DispatchHandle {
    wakes: mpsc::Sender<Vec<Arc<str>>>,
    config: Arc<watch::Sender<Arc<Config>>>,
}

impl DispatchHandle {
    /// New deliveries of these subscriptions are committed.
    pub fn wake<'a>(&self, subscriptions: impl IntoIterator<Item = &'a Arc<str>>) {
        let names: Vec<Arc<str>> = subscriptions.into_iter().cloned().collect();
        if names.is_empty() {
            return;
        }
        // A full channel means wakes are already queued; a lost one costs at most a poll.
        let _ = self.wakes.try_send(names);
    }

    /// The config was reloaded.
    pub fn reload(&self, config: &Config) {
        self.config.send_replace(Arc::new(config.clone()));
    }

    /// The running config, updated on every applied reload.
    pub fn config(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }
}

struct WorkerHandle {
    control: mpsc::Sender<Control>,
    wake: Arc<Notify>,
    join: JoinHandle<()>,
}

/// Starts the dispatcher for the subscriptions of the running config on the outbox at
/// `outbox`. `running` carries the config; [`DispatchHandle::reload`] sends edits on it, so
/// that whoever else watches it (the admin API) sees them too. The dispatcher stops when
/// `shutdown` turns true: workers stop claiming, requests in flight get until
/// `delivery.shutdown_timeout`, and the rest go back to the queue.
pub fn spawn(
    running: Arc<watch::Sender<Arc<Config>>>,
    outbox: ConnInfo,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(DispatchHandle, JoinHandle<()>), DispatchError> {
    let config = running.borrow().clone();
    let net = Net::new(&config.delivery.allow_networks)?;
    let (completions_tx, completions_rx) = mpsc::channel(1_024);
    let queues = Arc::new(Queues {
        schema: config.outbox.schema.clone(),
        current: tokio::sync::Mutex::new(Reconnecting::new(outbox.clone())),
    });
    // A connection of its own: on one shared with the claims, each statement waited for
    // the other's, and the outbox backend (one core) bounded batch mode at ~130 requests/s.
    let completion_queues = Arc::new(Queues {
        schema: config.outbox.schema.clone(),
        current: tokio::sync::Mutex::new(Reconnecting::new(outbox)),
    });
    let shared = Arc::new(Shared {
        net: RwLock::new(Arc::new(net)),
        global: Arc::new(Semaphore::new(config.delivery.max_in_flight.max(1))),
        completions: completions_tx,
        queues: queues.clone(),
        metrics,
    });
    let (wakes_tx, wakes_rx) = mpsc::channel(256);
    let config_rx = running.subscribe();
    let completer = tokio::spawn(write_completions(completion_queues, completions_rx));
    let join = tokio::spawn(manage(shared, config_rx, wakes_rx, shutdown, completer));
    let handle = DispatchHandle {
        wakes: wakes_tx,
        config: running,
    };
    Ok((handle, join))
}

/// Changes the size of `delivery.max_in_flight`'s semaphore from `from` to `to` permits.
/// Growing adds permits at once. Shrinking forgets the free ones at once and, for those held
/// by requests in flight, takes them as the requests finish (a task waiting for them in the
/// semaphore's fair queue, so no new request starts until in flight is under the new limit).
/// Sizes only ever move by the difference, so overlapping reloads still add up.
fn resize(global: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        global.add_permits(to - from);
        tracing::info!(from, to, "delivery.max_in_flight changed");
    } else if to < from {
        let owed = (from - to) - global.forget_permits(from - to);
        tracing::info!(from, to, "delivery.max_in_flight changed");
        if owed > 0 {
            let global = global.clone();
            let owed = u32::try_from(owed).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(permits) = global.acquire_many_owned(owed).await {
                    permits.forget();
                }
            });
        }
    }
}

/// Keeps one worker per active subscription in line with the config, forwards wakes, and
/// stops everything on shutdown.
async fn manage(
    shared: Arc<Shared>,
    mut config: watch::Receiver<Arc<Config>>,
    mut wakes: mpsc::Receiver<Vec<Arc<str>>>,
    mut shutdown: watch::Receiver<bool>,
    completer: JoinHandle<()>,
) {
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let current = config.borrow_and_update().clone();
    sync(&shared, &mut workers, &current).await;
    let mut shutdown_timeout = current.delivery.shutdown_timeout;
    let mut max_in_flight = current.delivery.max_in_flight.max(1);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = config.borrow_and_update().clone();
                shutdown_timeout = current.delivery.shutdown_timeout;
                shared.set_allow_networks(&current.delivery.allow_networks);
                let wanted = current.delivery.max_in_flight.max(1);
                resize(&shared.global, max_in_flight, wanted);
                max_in_flight = wanted;
                sync(&shared, &mut workers, &current).await;
            }
            Some(names) = wakes.recv() => {
                for name in names.iter() {
                    if let Some(worker) = workers.get(name.as_ref()) {
                        worker.wake.notify_one();
                    }
                }
            }
        }
    }
    let deadline = Instant::now() + shutdown_timeout;
    for worker in workers.values() {
        let _ = worker.control.send(Control::Stop(deadline)).await;
    }
    for (_, worker) in workers.drain() {
        let _ = worker.join.await;
    }
    // Every worker has handed in its results: the writer finishes what is queued.
    drop(shared);
    if tokio::time::timeout(Duration::from_secs(5), completer)
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping with delivery results unrecorded: those deliveries are sent again"
        );
    }
}

async fn sync(shared: &Arc<Shared>, workers: &mut HashMap<String, WorkerHandle>, config: &Config) {
    let deadline = Instant::now() + config.delivery.shutdown_timeout;
    let wanted: HashMap<&str, &SubscriptionConfig> = config
        .subscriptions
        .iter()
        .filter(|s| s.active)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let gone: Vec<String> = workers
        .keys()
        .filter(|name| !wanted.contains_key(name.as_str()))
        .cloned()
        .collect();
    for name in gone {
        if let Some(worker) = workers.remove(&name) {
            tracing::info!(subscription = %name, "subscription removed or inactive: its pending deliveries are kept");
            let _ = worker.control.send(Control::Stop(deadline)).await;
        }
    }
    for (name, sub) in wanted {
        match workers.get_mut(name) {
            Some(worker) => {
                let _ = worker
                    .control
                    .send(Control::Update(Arc::new(sub.clone())))
                    .await;
            }
            None => {
                let config = Arc::new(sub.clone());
                let wake = Arc::new(Notify::new());
                let (control, control_rx) = mpsc::channel(4);
                let worker = Worker::new(config, shared.clone(), wake.clone(), control_rx);
                let join = tokio::spawn(worker.run());
                workers.insert(
                    name.to_owned(),
                    WorkerHandle {
                        control,
                        wake,
                        join,
                    },
                );
            }
        }
    }
}

/// Records results: everything waiting goes into one statement; then the workers concerned
/// are woken. A write the outbox could not take is retried (the results stay in memory; the
/// leases keep the deliveries from being sent twice meanwhile, for a while); a statement
/// Postgres refuses is split into one per result, so only the bad one is set apart. Ends when every worker and
/// request task is gone and everything they sent is written (or the dispatcher gives up
/// waiting at shutdown).
async fn write_completions(queues: Arc<Queues>, mut finished: mpsc::Receiver<Finished>) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].completions.len();
        while count < COMPLETION_BATCH {
            match finished.try_recv() {
                Ok(more) => {
                    count += more.completions.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        // A statement costs the outbox about as much for one result as for dozens; written
        // as they came (one per request), completions held the outbox connection busy at
        // ~2,000 requests/s. Waiting briefly for more only delays the next event of the
        // same key, never a request's own latency. A lone result (nothing else was waiting)
        // is written at once: under light load, or one busy key whose every event waits
        // for its predecessor's completion, lingering would only slow things down.
        let linger = Instant::now() + COMPLETION_LINGER;
        while batch.len() > 1 && count < COMPLETION_LINGER_ENOUGH {
            match tokio::time::timeout_at(linger, finished.recv()).await {
                Ok(Some(more)) => {
                    count += more.completions.len();
                    batch.push(more);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let completions: Vec<Completion> = batch
            .iter_mut()
            .flat_map(|f| std::mem::take(&mut f.completions))
            .collect();
        match write(&queues, &completions, Write::Whole).await {
            Ok(()) => {}
            // One result Postgres refuses (a value, a constraint, a trigger of the user's)
            // must not hold back every other: each goes alone, and a refused one settles
            // without its attempt row.
            Err(_) => {
                for completion in &completions {
                    let one = std::slice::from_ref(completion);
                    if let Err(e) = write(&queues, one, Write::Whole).await {
                        tracing::error!(
                            delivery_id = completion.delivery_id,
                            subscription = %completion.subscription,
                            "{e}; the delivery is settled without its attempt row"
                        );
                        let mut alone = completion.clone();
                        alone.error = Some(format!("the attempt could not be recorded: {e}"));
                        if let Err(e) =
                            write(&queues, std::slice::from_ref(&alone), Write::SettleOnly).await
                        {
                            tracing::error!(
                                delivery_id = completion.delivery_id,
                                subscription = %completion.subscription,
                                "{e}; the delivery stays pending and is sent again when its \
                                 lease expires"
                            );
                        }
                    }
                }
            }
        }
        for f in batch {
            f.wake.notify_one();
        }
    }
}

/// How [`write`] records results.
#[derive(Clone, Copy)]
enum Write {
    /// The deliveries' new state and the attempt log.
    Whole,
    /// The deliveries' new state only.
    SettleOnly,
}

/// Writes `completions`, retrying with backoff while the outbox is unreachable; a statement
/// Postgres refuses is returned, since sending it again would fail the same way.
async fn write(queues: &Queues, completions: &[Completion], how: Write) -> Result<(), QueueError> {
    let mut failures = 0u32;
    loop {
        let written = match queues.get().await {
            Ok(queue) => match how {
                Write::Whole => queue.complete(completions).await,
                Write::SettleOnly => queue.settle_without_attempts(completions).await,
            },
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => return Ok(()),
            Err(e) if e.is_refused_statement() => return Err(e),
            Err(e) => {
                failures += 1;
                tracing::warn!(results = completions.len(), "{e}; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_the_limit_takes_back_permits_as_requests_finish() {
        let global = Arc::new(Semaphore::new(4));
        let held: Vec<_> = (0..3)
            .map(|_| global.clone().try_acquire_owned().unwrap())
            .collect();
        resize(&global, 4, 1);
        assert_eq!(global.available_permits(), 0);
        drop(held);
        // The task taking the owed permits runs on this runtime: let it.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(global.available_permits(), 1);
        resize(&global, 1, 3);
        assert_eq!(global.available_permits(), 3);
    }
}

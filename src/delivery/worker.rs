//! One subscription's delivery loop, the I/O around the pure core: asks the gate
//! (`gate.rs`: breaker, slow-down, pause, 410) whether it may send, claims what is due from
//! the outbox within its in-flight cap, the global cap and its rate limit, cuts batches
//! (`batcher.rs`), sends each request in a task of its own, and records what `settle.rs`
//! makes of each result (SPEC §4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::batcher::{self, Batcher};
use super::dispatcher::{Finished, Shared};
use super::gate::{Decision, Gate, Stop};
use super::limits::TokenBucket;
use super::policy::Outcome;
use super::sender::{self, Attempt};
use super::settle::{settle, DeadReason, Returned, Settlement, LONGEST_WAIT};
use crate::config::{Ordering, SubscriptionConfig};
use crate::metrics::Metrics;
use crate::outbox::queue::{
    Claim, Claimed, Completion, DeliveryQueue, QueueError, Settled, Trigger,
};

/// Requests in flight per subscription when the subscription sets no `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// How often an idle subscription looks at the table anyway: retries scheduled by another
/// process, `walhook replay`, expired leases, a 410 switched back on; and how often any
/// subscription looks whether it was paused or resumed (`subscription_state`).
const POLL: Duration = Duration::from_secs(1);

/// A lease outlives the request by this much, so it never expires under a live request.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Retry times a worker remembers at most; later ones are found by the poll.
const MAX_DUES: usize = 1_024;

/// What the dispatcher tells a worker.
pub(super) enum Control {
    /// The subscription's config changed.
    Update(Arc<SubscriptionConfig>),
    /// Stop claiming; let requests in flight finish until the deadline, then give their
    /// deliveries back.
    Stop(Instant),
}

/// A delivery carried by a request in flight.
struct Carried {
    id: i64,
    attempts: u32,
    trigger: Trigger,
    committed_at: SystemTime,
    event_id: String,
    key: String,
}

/// A request in flight: the deliveries it carries and its task, aborted when the worker gives
/// the deliveries back.
struct InFlight {
    ids: Vec<i64>,
    task: AbortHandle,
}

/// A request that returned.
struct Sent {
    request: u64,
    carried: Vec<Carried>,
    batch_id: Option<String>,
    probe: bool,
    attempt: Attempt,
}

/// One subscription's loop.
pub(super) struct Worker {
    sub: Arc<SubscriptionConfig>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    control: mpsc::Receiver<Control>,
    // Unbounded, yet bounded by the in-flight cap: one message per request in flight.
    sent_tx: mpsc::UnboundedSender<Sent>,
    sent_rx: mpsc::UnboundedReceiver<Sent>,
    in_flight: HashMap<u64, InFlight>,
    next_request: u64,
    bucket: Option<TokenBucket>,
    gate: Gate,
    /// When the retries this worker scheduled fall due, soonest first (one per failed
    /// request, at most [`MAX_DUES`]), so that each is claimed on time, not at the next poll.
    dues: BTreeSet<Instant>,
    batcher: Batcher,
    /// The global permit of the batch being gathered: it holds a request slot from its
    /// first claim, so that it goes out within `max_wait` of it.
    gather_slot: Option<OwnedSemaphorePermit>,
    /// When to look again whether the subscription was paused, resumed, or switched back on.
    recheck_at: Option<Instant>,
    waiting_for_global: bool,
    /// A global permit that came free while the worker waited for one, kept for the next
    /// claim (dropping it would hand it straight to the next waiting worker, and so on).
    reserved: Option<OwnedSemaphorePermit>,
    retry_claim_at: Option<Instant>,
    stopping: Option<Instant>,
}

impl Worker {
    /// A worker for `sub`, woken through `wake` when new deliveries are committed.
    pub(super) fn new(
        sub: Arc<SubscriptionConfig>,
        shared: Arc<Shared>,
        wake: Arc<Notify>,
        control: mpsc::Receiver<Control>,
    ) -> Self {
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Worker {
            bucket: sub.rate_limit.as_ref().map(|l| TokenBucket::new(l, now)),
            gate: Gate::new(probe_interval(&sub)),
            sub,
            shared,
            wake,
            control,
            sent_tx,
            sent_rx,
            in_flight: HashMap::new(),
            next_request: 0,
            dues: BTreeSet::new(),
            batcher: Batcher::default(),
            gather_slot: None,
            recheck_at: None,
            waiting_for_global: false,
            reserved: None,
            retry_claim_at: None,
            stopping: None,
        }
    }

    /// Runs until stopped and every request it started has returned (or the deadline).
    pub(super) async fn run(mut self) {
        self.check_state().await;
        loop {
            // On a clock rather than when the loop sleeps a whole POLL: wakes for new
            // events keep coming. An active subscription looks too: the admin API pauses it
            // by writing the same table.
            if self.recheck_at.is_none_or(|t| Instant::now() >= t) {
                self.check_state().await;
            }
            match self.stopping {
                None => {
                    if let Err(e) = self.dispatch().await {
                        tracing::warn!(subscription = %self.sub.name, "{e}; trying again in 1s");
                        self.retry_claim_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                Some(_) if self.in_flight.is_empty() => break,
                Some(deadline) if Instant::now() >= deadline => {
                    self.give_back_in_flight().await;
                    break;
                }
                Some(_) => {}
            }
            let wake_at = self.wake_at();
            let global = self.shared.global.clone();
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Update(sub)) => self.update(sub).await,
                    Some(Control::Stop(deadline)) => self.stop(deadline).await,
                    None => self.stop(Instant::now()).await,
                },
                Some(sent) = self.sent_rx.recv() => {
                    self.finish(sent).await;
                    // Every request that returned meanwhile, before claiming again: one
                    // claim refills all their slots. (One finish per claim made each wait
                    // for up to max_in_flight claims before its result was recorded.)
                    while let Ok(sent) = self.sent_rx.try_recv() {
                        self.finish(sent).await;
                    }
                }
                _ = self.wake.notified() => {}
                // A permit came free elsewhere: keep it and claim again.
                permit = global.acquire_owned(), if self.waiting_for_global => {
                    self.reserved = permit.ok();
                }
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    async fn update(&mut self, sub: Arc<SubscriptionConfig>) {
        if sub.rate_limit != self.sub.rate_limit {
            let now = Instant::now();
            self.bucket = sub.rate_limit.as_ref().map(|l| TokenBucket::new(l, now));
        }
        let batching = self.batching();
        self.sub = sub;
        self.batcher.failed_batch_may_be_due();
        if self.batching() != batching {
            // The batch being gathered was meant for the old settings.
            self.drop_gathering().await;
        }
    }

    async fn stop(&mut self, deadline: Instant) {
        self.stopping = Some(deadline);
        self.reserved = None;
        self.drop_gathering().await;
    }

    /// Gives the batch being gathered back to the queue, and its request slot.
    async fn drop_gathering(&mut self) {
        self.gather_slot = None;
        let gathered = self.batcher.give_back();
        self.release(&gathered).await;
    }

    /// The requests still in flight at the deadline are cut off and their deliveries go
    /// back to pending; if a request did reach the receiver, the event is sent again
    /// (at-least-once). Cut off first: a lease given back while its request can still
    /// succeed would let the delivery go twice at once.
    async fn give_back_in_flight(&mut self) {
        let ids: Vec<i64> = self
            .in_flight
            .drain()
            .flat_map(|(_, request)| {
                request.task.abort();
                request.ids
            })
            .collect();
        if !ids.is_empty() {
            tracing::warn!(
                subscription = %self.sub.name,
                deliveries = ids.len(),
                "shutdown timeout: requests still in flight are given back to the queue"
            );
        }
        self.release(&ids).await;
    }

    async fn release(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let released = match self.shared.queue().await {
            Ok(queue) => queue.release(ids).await,
            Err(e) => Err(e),
        };
        if let Err(e) = released {
            // The leases expire on their own.
            tracing::warn!(subscription = %self.sub.name, "{e}");
        }
    }

    /// Whether the subscription is paused or deactivated, as stored; the one place that
    /// reads that state.
    async fn read_stop(&self) -> Result<Option<Stop>, QueueError> {
        let stopped = self
            .shared
            .queue()
            .await?
            .deactivated(&self.sub.name)
            .await?;
        Ok(stopped.map(|stopped| {
            if stopped.is_pause() {
                Stop::Paused(stopped.reason)
            } else {
                Stop::Gone(stopped.reason)
            }
        }))
    }

    /// Stores that the receiver answered 410 Gone; the one place that writes that state.
    async fn write_gone(&self, reason: &str) -> Result<(), QueueError> {
        self.shared
            .queue()
            .await?
            .deactivate(&self.sub.name, reason)
            .await
    }

    /// Looks whether the subscription was paused, resumed, or switched back on.
    async fn check_state(&mut self) {
        let stored = self.read_stop().await;
        self.recheck_at = Some(Instant::now() + POLL);
        let inactive = |worker: &Self, value| {
            let labels = Metrics::subscription(&worker.sub.name);
            let gauge = worker
                .shared
                .metrics
                .subscription_inactive
                .get_or_create(&labels);
            gauge.set(value);
        };
        match stored {
            Ok(Some(stop)) => {
                if self.gate.stopped() != Some(&stop) {
                    let name = &self.sub.name;
                    match &stop {
                        Stop::Paused(reason) => tracing::info!(
                            subscription = %name,
                            "subscription is {reason}; its deliveries wait; \
                             POST /api/v1/subscriptions/{name}/resume resumes it"
                        ),
                        Stop::Gone(reason) => tracing::warn!(
                            subscription = %name,
                            "subscription is deactivated ({reason}); its deliveries are kept; \
                             `walhook replay --subscription {name} --status dead` switches it \
                             back on"
                        ),
                    }
                }
                inactive(self, 1);
                self.gate.stop(stop);
                // Sending stops: a batch being gathered goes back to the queue.
                self.drop_gathering().await;
            }
            Ok(None) => {
                if self.gate.resume() {
                    inactive(self, 0);
                    tracing::info!(subscription = %self.sub.name, "subscription is active again");
                }
            }
            Err(e) => tracing::warn!(subscription = %self.sub.name, "{e}"),
        }
    }

    /// The next moment something may change without a message arriving.
    fn wake_at(&mut self) -> Instant {
        let now = Instant::now();
        let mut at = now + POLL;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = at.min(t);
            }
        };
        consider(self.stopping);
        consider(self.retry_claim_at);
        consider(self.dues.first().copied());
        consider(self.gate.next_change(now));
        consider(self.batcher.deadline());
        consider(self.recheck_at);
        if let Some(bucket) = &mut self.bucket {
            if bucket.available(now) == 0 {
                consider(Some(bucket.next_token(now)));
            }
        }
        at
    }

    fn max_in_flight(&self) -> usize {
        self.sub
            .max_in_flight
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
            .max(1)
    }

    fn lease(&self) -> Duration {
        let gathering = self.batching().map_or(Duration::ZERO, |(_, wait)| wait);
        self.sub
            .timeout
            .saturating_add(gathering)
            .saturating_add(LEASE_MARGIN)
            .min(LONGEST_WAIT)
    }

    /// `(max_events, max_wait)` when requests carry JSON arrays.
    fn batching(&self) -> Option<(usize, Duration)> {
        // Validation refuses `batch` with a method per operation; a GET pings per event.
        match (&self.sub.batch, self.sub.method.single()) {
            (Some(batch), Some(method)) if method.has_body() => {
                Some((batch.max_events.max(1), batch.max_wait))
            }
            _ => None,
        }
    }

    /// Whether anything may be sent now, and if so whether only the breaker's probe.
    fn may_send(&self, now: Instant) -> Option<bool> {
        if self.retry_claim_at.is_some() || !self.sub.active {
            return None;
        }
        match self.gate.decide(now) {
            Decision::Allow => Some(false),
            Decision::Probe => Some(true),
            Decision::WaitUntil(_) | Decision::AwaitProbe | Decision::Stopped => None,
        }
    }

    /// Claims and sends as much as the limits allow.
    async fn dispatch(&mut self) -> Result<(), QueueError> {
        let now = Instant::now();
        self.waiting_for_global = false;
        if self.retry_claim_at.is_some_and(|t| t <= now) {
            self.retry_claim_at = None;
        }
        // Retries due by now are claimed below (or, when a limit holds them, once it lets go).
        while self.dues.first().is_some_and(|t| *t <= now) {
            self.dues.pop_first();
            self.batcher.failed_batch_may_be_due();
        }
        let Some(probe) = self.may_send(now) else {
            // Nothing goes until the pause ends: a batch being gathered goes back to the
            // queue rather than sit on leases that would expire meanwhile.
            self.reserved = None;
            self.drop_gathering().await;
            return Ok(());
        };
        let queue = self.shared.queue().await?;
        loop {
            let more = match self.batching() {
                // The batch being gathered already holds its request slot.
                Some((max_events, _)) if self.batcher.is_gathering() => {
                    self.top_up(&queue, max_events, probe).await?
                }
                batching => match self.slots(probe) {
                    None => false,
                    Some((requests, permit)) if batching.is_none() => {
                        self.claim_events(&queue, requests, permit, probe).await?
                    }
                    Some((requests, permit)) => {
                        self.claim_batches(&queue, requests, permit, probe, now)
                            .await?
                    }
                },
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// How many requests may start now, with the global permit of the first; `None` when
    /// none may.
    fn slots(&mut self, probe: bool) -> Option<(usize, OwnedSemaphorePermit)> {
        let mut requests = self.max_in_flight().saturating_sub(self.in_flight.len());
        if !probe && !self.in_flight.is_empty() {
            // A claim costs the outbox about the same for one delivery (or batch) as for
            // dozens (planning, a round trip, a commit): refilling each slot as it frees
            // up made the claim the bottleneck at ~2,000 requests/s. Wait until a
            // quarter of the slots are free; an idle subscription still claims at once.
            let refill = (self.max_in_flight() / 4).max(1);
            if requests < refill {
                self.reserved = None;
                return None;
            }
        }
        if probe {
            requests = requests.min(1);
        }
        if let Some(bucket) = &mut self.bucket {
            requests = requests.min(bucket.available(Instant::now()));
        }
        if requests == 0 {
            // A permit kept from the wait goes back to the other subscriptions.
            self.reserved = None;
            return None;
        }
        let permit = match self.reserved.take() {
            Some(permit) => permit,
            None => match self.shared.global.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.waiting_for_global = true;
                    return None;
                }
            },
        };
        Some((requests, permit))
    }

    /// Adds global permits to `permits`, up to `requests` of them, as far as they are free.
    fn more_permits(&self, permits: &mut Vec<OwnedSemaphorePermit>, requests: usize) {
        while permits.len() < requests {
            match self.shared.global.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
    }

    /// One event per request: claims one per free slot and sends them. Returns whether to
    /// claim again.
    async fn claim_events(
        &mut self,
        queue: &DeliveryQueue,
        requests: usize,
        permit: OwnedSemaphorePermit,
        probe: bool,
    ) -> Result<bool, QueueError> {
        let mut permits = vec![permit];
        self.more_permits(&mut permits, requests);
        let how = match self.sub.ordering {
            Ordering::Key => Claim::FirstOfKey,
            Ordering::None => Claim::Unordered,
        };
        let wanted = permits.len();
        let claimed = queue
            .claim(&self.sub.name, how, wanted, self.lease())
            .await?;
        let got = claimed.len();
        for (row, permit) in claimed.into_iter().zip(permits) {
            let id = row.event_id.clone();
            self.start(vec![row], id, None, permit, probe);
        }
        Ok(got == wanted && !probe)
    }

    /// Batch mode: a failed batch again, else new batches for every free slot, the last of
    /// them gathered when short. Returns whether to claim again.
    async fn claim_batches(
        &mut self,
        queue: &DeliveryQueue,
        requests: usize,
        permit: OwnedSemaphorePermit,
        probe: bool,
        now: Instant,
    ) -> Result<bool, QueueError> {
        let Some((max_events, max_wait)) = self.batching() else {
            return Ok(false);
        };
        let (name, lease) = (self.sub.name.clone(), self.lease());
        // A failed batch goes again whole, under its id, whatever max_events says now.
        if self.batcher.may_find_failed_batch(now) {
            let failed = queue
                .claim(&name, Claim::FailedBatch, usize::MAX, lease)
                .await?;
            if failed.is_empty() {
                self.batcher.no_failed_batch_until(Instant::now() + POLL);
            }
            if let Some(batch_id) = failed.first().and_then(|c| c.batch_id.clone()) {
                self.start(failed, batch_id.clone(), Some(batch_id), permit, probe);
                return Ok(!probe);
            }
        }
        // The batches of every free slot in one claim: a claim costs mostly per statement,
        // and the worker sends nothing while it waits for one (one batch per claim held
        // batch mode at ~130 requests/s).
        let mut permits = vec![permit];
        if !self.batcher.keys_are_hot(now) {
            self.more_permits(&mut permits, requests);
        }
        let wanted = max_events.saturating_mul(permits.len());
        let claimed = queue.claim(&name, self.new_batch(), wanted, lease).await?;
        if claimed.is_empty() {
            return Ok(false);
        }
        let got = claimed.len();
        let cut = batcher::cut(claimed, max_events, self.sub.ordering == Ordering::Key);
        let mut permits = permits.into_iter();
        for (batch, permit) in cut.full.into_iter().zip(&mut permits) {
            let batch_id = new_batch_id(&batch);
            self.start(batch, batch_id.clone(), Some(batch_id), permit, probe);
        }
        if let (Some(batch), Some(permit)) = (cut.partial, permits.next()) {
            self.gather_slot = Some(permit);
            self.batcher.gather(batch, later(Instant::now(), max_wait));
            if self.batcher.ready(max_events, Instant::now()) {
                self.send_gathered(max_events, probe).await;
            }
        }
        if !cut.held_back.is_empty() {
            // Keys with several events due: claiming more than one batch at a time would
            // mostly claim events to give back.
            self.batcher.keys_hot_until(Instant::now() + POLL);
            self.release(&cut.held_back).await;
            return Ok(false);
        }
        Ok(!(probe || got < wanted || self.batcher.is_gathering()))
    }

    /// Tops up the batch being gathered, and sends it once it is full or has waited long
    /// enough. Returns whether to claim again.
    async fn top_up(
        &mut self,
        queue: &DeliveryQueue,
        max_events: usize,
        probe: bool,
    ) -> Result<bool, QueueError> {
        let room = self.batcher.room(max_events);
        let mut got = 0;
        if room > 0 {
            let claimed = queue
                .claim(&self.sub.name, self.new_batch(), room, self.lease())
                .await?;
            got = claimed.len();
            self.batcher.top_up(claimed);
        }
        if !self.batcher.ready(max_events, Instant::now()) {
            return Ok(false);
        }
        self.send_gathered(max_events, probe).await;
        Ok(!(probe || got < room))
    }

    /// How a new batch is claimed.
    fn new_batch(&self) -> Claim {
        match self.sub.ordering {
            Ordering::Key => Claim::InOrderOfKey,
            Ordering::None => Claim::NewUnordered,
        }
    }

    /// Sends the batch gathered, at most `max_events` of it (the rest, left over from a
    /// larger `max_events` before a config edit, goes back to the queue).
    async fn send_gathered(&mut self, max_events: usize, probe: bool) {
        let (batch, rest) = self.batcher.take(max_events);
        let slot = self
            .gather_slot
            .take()
            .or_else(|| self.shared.global.clone().try_acquire_owned().ok());
        match slot {
            Some(permit) => {
                let batch_id = new_batch_id(&batch);
                self.start(batch, batch_id.clone(), Some(batch_id), permit, probe);
            }
            None => {
                // Not expected: a gathered batch holds its slot. Give it all back.
                let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
                self.release(&ids).await;
            }
        }
        self.release(&rest).await;
    }

    /// Sends one request carrying `rows` as `id` in a task of its own.
    fn start(
        &mut self,
        rows: Vec<Claimed>,
        id: String,
        batch_id: Option<String>,
        permit: OwnedSemaphorePermit,
        probe: bool,
    ) {
        let now = Instant::now();
        if probe {
            self.gate.probing();
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.take(1, now);
        }
        let request = self.next_request;
        self.next_request += 1;
        let ids: Vec<i64> = rows.iter().map(|c| c.id).collect();
        let carried: Vec<Carried> = rows
            .iter()
            .map(|c| Carried {
                id: c.id,
                attempts: c.attempts,
                trigger: c.trigger,
                committed_at: c.committed_at,
                event_id: c.event_id.clone(),
                key: c.key.clone(),
            })
            .collect();
        // A batch goes to the subscription's URL (validation refuses batches that route);
        // a single event to its own stored target, if it has one.
        let (body, target) = match &batch_id {
            Some(_) => (batcher::array(&rows), None),
            None => rows
                .into_iter()
                .next()
                .map(|c| (c.body, c.target))
                .unwrap_or_default(),
        };
        let sub = self.sub.clone();
        let net = self.shared.net();
        let done = self.sent_tx.clone();
        let task = tokio::spawn(async move {
            let attempt =
                sender::send(&net.client, &net.policy, &sub, target.as_ref(), &id, &body).await;
            drop(permit);
            let _ = done.send(Sent {
                request,
                carried,
                batch_id,
                probe,
                attempt,
            });
        });
        self.in_flight.insert(
            request,
            InFlight {
                ids,
                task: task.abort_handle(),
            },
        );
    }

    /// Records a returned request: what [`settle`] makes of it for the gate, the retry
    /// clock and the metrics, and the deliveries' new state for the outbox.
    async fn finish(&mut self, sent: Sent) {
        self.in_flight.remove(&sent.request);
        let now = Instant::now();
        let wall = SystemTime::now();
        if sent.attempt.verdict.outcome != Outcome::Delivered {
            // A batch that failed, or a probe given back, is a failed batch to claim again.
            self.batcher.failed_batch_may_be_due();
        }
        let attempts_made: Vec<u32> = sent.carried.iter().map(|c| c.attempts).collect();
        let returned = Returned {
            verdict: sent.attempt.verdict,
            answered: sent.attempt.status.is_some(),
            probe: sent.probe,
            attempts_made: &attempts_made,
        };
        let schedule = &self.sub.retry_schedule;
        let settlement = settle(&returned, schedule, now, wall, rand::random());
        self.learn(&settlement, &sent.attempt, now, wall).await;
        let finished = Finished {
            completions: self.completions(&sent, settlement, wall),
            wake: self.wake.clone(),
        };
        if self.shared.completions.send(finished).await.is_err() {
            tracing::warn!(subscription = %self.sub.name, "delivery results not recorded: stopping");
        }
    }

    /// Tells the gate, the retry clock and the subscription's gauges what a returned
    /// request settled; a 410 is stored.
    async fn learn(
        &mut self,
        settlement: &Settlement,
        a: &Attempt,
        now: Instant,
        wall: SystemTime,
    ) {
        let name = self.sub.name.clone();
        if let Some(pause) = self.gate.learn(settlement.gate, now) {
            tracing::warn!(
                subscription = %name,
                "circuit breaker open after failures in a row: pausing, next probe in {pause:?}"
            );
        }
        if settlement.deactivate {
            let reason = format!(
                "the receiver answered 410 Gone at {}",
                crate::time::rfc3339(wall)
            );
            tracing::error!(
                subscription = %name,
                "410 Gone: subscription deactivated; its pending deliveries are kept; \
                 `walhook replay --subscription {name} --status dead` switches it back on"
            );
            self.gate.stop(Stop::Gone(reason.clone()));
            self.recheck_at = Some(now + POLL);
            if let Err(e) = self.write_gone(&reason).await {
                tracing::warn!(subscription = %name, "{e}");
            }
        }
        if let Some(due) = settlement.earliest_due {
            self.dues.insert(due);
            if self.dues.len() > MAX_DUES {
                self.dues.pop_last();
            }
        }
        if let Some(pause) = settlement.slow_down {
            tracing::warn!(
                subscription = %name,
                status = a.status,
                "the receiver asked to slow down: pausing the subscription for {pause:?}"
            );
        }
        let metrics = &self.shared.metrics;
        metrics.request_took(&name, a.duration);
        let labels = Metrics::subscription(&name);
        metrics
            .circuit_open
            .get_or_create(&labels)
            .set(i64::from(self.gate.breaker_open()));
        metrics
            .subscription_inactive
            .get_or_create(&labels)
            .set(i64::from(self.gate.stopped().is_some()));
        // A pause (slow-down, open breaker, 410) can outlast the leases of a batch being
        // gathered: give its deliveries back, to be claimed afresh when sending resumes.
        if self.gate.holds(now) && self.batcher.is_gathering() {
            self.drop_gathering().await;
        }
    }

    /// The outbox's record of each delivery a returned request carried, logged and
    /// counted.
    fn completions(
        &self,
        sent: &Sent,
        settlement: Settlement,
        wall: SystemTime,
    ) -> Vec<Completion> {
        let (name, a, metrics) = (&self.sub.name, &sent.attempt, &self.shared.metrics);
        let labels = Metrics::subscription(name);
        let why = settlement.dead_reason;
        sent.carried
            .iter()
            .zip(settlement.deliveries)
            .map(|(c, settled)| {
                log_result(name, c, a, &settled, sent.probe, why);
                if settled == Settled::Delivered {
                    let latency = wall.duration_since(c.committed_at).unwrap_or_default();
                    metrics
                        .end_to_end_latency
                        .get_or_create(&labels)
                        .observe(latency.as_secs_f64());
                }
                metrics.attempt(name, settled.outcome().as_str());
                Completion {
                    delivery_id: c.id,
                    subscription: name.clone(),
                    attempt: c.attempts + 1,
                    trigger: c.trigger,
                    settled,
                    batch_id: sent.batch_id.clone(),
                    started_at: a.started_at,
                    duration: a.duration,
                    status: a.status,
                    error: a.error.clone(),
                    response_excerpt: a.response_excerpt.clone(),
                }
            })
            .collect()
    }
}

/// `now + wait`, with waits cut to [`LONGEST_WAIT`].
fn later(now: Instant, wait: Duration) -> Instant {
    now + wait.min(LONGEST_WAIT)
}

/// Pause before the first probe of an open breaker: the first retry delay, within 1 s – 60 s.
fn probe_interval(sub: &SubscriptionConfig) -> Duration {
    sub.retry_schedule
        .first()
        .copied()
        .unwrap_or(POLL)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// A new batch's id: its first delivery and a random part, so a batch re-formed after a
/// crash (possibly with other events) never reuses an id a receiver may have deduplicated.
fn new_batch_id(rows: &[Claimed]) -> String {
    let first = rows.first().map_or(0, |c| c.id);
    format!("bat_{first:016X}_{:08x}", rand::random::<u32>())
}

/// One line per result, with the subscription, delivery, event id and key as fields; the
/// status when the receiver answered, the error when something else went wrong.
fn log_result(
    subscription: &str,
    c: &Carried,
    a: &Attempt,
    settled: &Settled,
    probe: bool,
    dead: DeadReason,
) {
    let (delivery, event_id, key) = (c.id, c.event_id.as_str(), c.key.as_str());
    let status = a.status;
    let error = a.error.as_deref();
    match settled {
        Settled::Delivered => {
            tracing::debug!(subscription, delivery, event_id, key, status, "delivered")
        }
        Settled::Retry(_) | Settled::Released => tracing::warn!(
            subscription,
            delivery,
            event_id,
            key,
            status,
            error,
            probe,
            "delivery failed, will retry"
        ),
        Settled::Dead if dead == DeadReason::Refused => tracing::error!(
            subscription,
            delivery,
            event_id,
            key,
            status,
            error,
            "delivery dead: the receiver's answer is in dead_on_status"
        ),
        Settled::Dead if dead == DeadReason::Unsendable => tracing::error!(
            subscription,
            delivery,
            event_id,
            key,
            error,
            "delivery dead: it cannot be sent"
        ),
        Settled::Dead => tracing::error!(
            subscription,
            delivery,
            event_id,
            key,
            status,
            error,
            "delivery dead after the last scheduled attempt"
        ),
    }
}

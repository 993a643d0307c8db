//! One subscription's delivery loop: claims what is due from the outbox, within its
//! in-flight cap, the global cap, its rate limit, its slow-down and its circuit breaker;
//! sends each request in a task of its own; and turns each result into the deliveries' new
//! state (SPEC §4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::dispatcher::{Finished, Shared};
use super::limits::{Allowance, Breaker, TokenBucket};
use super::policy::{self, Outcome};
use super::sender::{self, Attempt};
use crate::config::{Ordering, SubscriptionConfig};
use crate::metrics::{AttemptOutcome, Metrics};
use crate::outbox::queue::{is_pause, Claim, Claimed, Completion, QueueError, Settled, Trigger};

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
/// The longest wait the worker schedules: configured durations beyond it (a retry in a
/// thousand years) are cut to it, so that adding them to a point in time cannot overflow and
/// the time still fits a Postgres `timestamptz`.
const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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
    breaker: Breaker,
    slow_until: Option<Instant>,
    /// When the retries this worker scheduled fall due, soonest first (one per failed
    /// request, at most [`MAX_DUES`]), so that each is claimed on time, not at the next poll.
    dues: BTreeSet<Instant>,
    /// The batch being gathered, leased; it holds a request slot ([`Worker::gather_slot`])
    /// from its first claim, so that it goes out within `max_wait` of it.
    gathering: Vec<Claimed>,
    gather_until: Option<Instant>,
    /// The global permit of the batch being gathered.
    gather_slot: Option<OwnedSemaphorePermit>,
    deactivated: Option<String>,
    /// When to look again whether a deactivated subscription was switched back on.
    recheck_at: Option<Instant>,
    waiting_for_global: bool,
    /// A global permit that came free while the worker waited for one, kept for the next
    /// claim (dropping it would hand it straight to the next waiting worker, and so on).
    reserved: Option<OwnedSemaphorePermit>,
    retry_claim_at: Option<Instant>,
    stopping: Option<Instant>,
    /// Until when no failed batch of this subscription can be due, as far as this worker
    /// knows: its own failures and due retries clear it, and what other processes do
    /// (`walhook replay`, another instance's failures) is seen within [`POLL`]. Spares a
    /// claim per batch, which cost as much as the new batch's claim.
    no_failed_batch_until: Option<Instant>,
    /// Until when batch mode claims one batch at a time, because a claim of several found
    /// keys with events for more than one batch.
    hot_keys_until: Option<Instant>,
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
            breaker: Breaker::new(probe_interval(&sub)),
            sub,
            shared,
            wake,
            control,
            sent_tx,
            sent_rx,
            in_flight: HashMap::new(),
            next_request: 0,
            slow_until: None,
            dues: BTreeSet::new(),
            gathering: Vec::new(),
            gather_until: None,
            gather_slot: None,
            deactivated: None,
            recheck_at: None,
            waiting_for_global: false,
            reserved: None,
            retry_claim_at: None,
            stopping: None,
            no_failed_batch_until: None,
            hot_keys_until: None,
        }
    }

    /// Runs until stopped and every request it started has returned (or the deadline).
    pub(super) async fn run(mut self) {
        self.check_deactivated().await;
        loop {
            // On a clock rather than when the loop sleeps a whole POLL: wakes for new
            // events keep coming. An active subscription looks too: the admin API pauses it
            // by writing the same table.
            if self.recheck_at.is_none_or(|t| Instant::now() >= t) {
                self.check_deactivated().await;
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
        self.no_failed_batch_until = None;
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
        self.gather_until = None;
        self.gather_slot = None;
        let gathered: Vec<i64> = self.gathering.drain(..).map(|c| c.id).collect();
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

    async fn check_deactivated(&mut self) {
        let state = match self.shared.queue().await {
            Ok(queue) => queue.deactivated(&self.sub.name).await,
            Err(e) => Err(e),
        };
        self.recheck_at = Some(Instant::now() + POLL);
        let labels = Metrics::subscription(&self.sub.name);
        match state {
            Ok(Some(reason)) => {
                if self.deactivated.as_deref() != Some(reason.as_str()) {
                    let name = &self.sub.name;
                    if is_pause(&reason) {
                        tracing::info!(
                            subscription = %name,
                            "subscription is {reason}; its deliveries wait; \
                             POST /api/v1/subscriptions/{name}/resume resumes it"
                        );
                    } else {
                        tracing::warn!(
                            subscription = %name,
                            "subscription is deactivated ({reason}); its deliveries are kept; \
                             `walhook replay --subscription {name} --status dead` switches it \
                             back on"
                        );
                    }
                }
                self.shared
                    .metrics
                    .subscription_inactive
                    .get_or_create(&labels)
                    .set(1);
                self.deactivated = Some(reason);
                // Sending stops: a batch being gathered goes back to the queue.
                let gathered: Vec<i64> = self.gathering.drain(..).map(|c| c.id).collect();
                self.gather_until = None;
                self.release(&gathered).await;
            }
            Ok(None) => {
                if self.deactivated.take().is_some() {
                    self.shared
                        .metrics
                        .subscription_inactive
                        .get_or_create(&labels)
                        .set(0);
                    tracing::info!(subscription = %self.sub.name, "subscription is active again");
                    self.breaker.success();
                    self.slow_until = None;
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
        consider(self.slow_until);
        consider(self.gather_until);
        consider(self.recheck_at);
        if let Allowance::Wait(until) = self.breaker.allowance(now) {
            consider(Some(until));
        }
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
            self.no_failed_batch_until = None;
        }
        let paused = self.retry_claim_at.is_some()
            || self.deactivated.is_some()
            || !self.sub.active
            || self.slow_until.is_some_and(|t| now < t);
        let probe = match self.breaker.allowance(now) {
            _ if paused => None,
            Allowance::Open => Some(false),
            Allowance::Probe => Some(true),
            Allowance::Wait(_) | Allowance::ProbeInFlight => None,
        };
        let Some(probe) = probe else {
            // Nothing goes until the pause ends: a batch being gathered goes back to the
            // queue rather than sit on leases that would expire meanwhile.
            self.reserved = None;
            self.drop_gathering().await;
            return Ok(());
        };
        if self.slow_until.is_some_and(|t| t <= now) {
            self.slow_until = None;
        }
        let queue = self.shared.queue().await?;
        let name = self.sub.name.clone();
        let lease = self.lease();
        loop {
            if let Some((max_events, _)) = self.batching() {
                if !self.gathering.is_empty() {
                    // The batch being gathered already holds its request slot: top it up,
                    // and send it once it is full or has waited long enough.
                    let room = max_events.saturating_sub(self.gathering.len());
                    let mut got = 0;
                    if room > 0 {
                        let claimed = queue.claim(&name, self.new_batch(), room, lease).await?;
                        got = claimed.len();
                        self.gathering.extend(claimed);
                    }
                    if !self.batch_ready(max_events) {
                        return Ok(());
                    }
                    self.send_gathered(max_events, probe).await;
                    if probe || got < room {
                        return Ok(());
                    }
                    continue;
                }
            }
            let mut requests = self.max_in_flight().saturating_sub(self.in_flight.len());
            if !probe && !self.in_flight.is_empty() {
                // A claim costs the outbox about the same for one delivery (or batch) as for
                // dozens (planning, a round trip, a commit): refilling each slot as it frees
                // up made the claim the bottleneck at ~2,000 requests/s. Wait until a
                // quarter of the slots are free; an idle subscription still claims at once.
                let refill = (self.max_in_flight() / 4).max(1);
                if requests < refill {
                    self.reserved = None;
                    return Ok(());
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
                return Ok(());
            }
            let permit = match self.reserved.take() {
                Some(permit) => permit,
                None => match self.shared.global.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        self.waiting_for_global = true;
                        return Ok(());
                    }
                },
            };
            match self.batching() {
                None => {
                    let mut permits = vec![permit];
                    while permits.len() < requests {
                        match self.shared.global.clone().try_acquire_owned() {
                            Ok(p) => permits.push(p),
                            Err(_) => break,
                        }
                    }
                    let how = match self.sub.ordering {
                        Ordering::Key => Claim::FirstOfKey,
                        Ordering::None => Claim::Unordered,
                    };
                    let wanted = permits.len();
                    let claimed = queue.claim(&name, how, wanted, lease).await?;
                    let got = claimed.len();
                    for (row, permit) in claimed.into_iter().zip(permits) {
                        let id = row.event_id.clone();
                        self.start(vec![row], id, None, permit, probe);
                    }
                    if got < wanted || probe {
                        return Ok(());
                    }
                }
                Some((max_events, max_wait)) => {
                    // A failed batch goes again whole, under its id, whatever max_events
                    // says now.
                    let failed = if self.no_failed_batch_until.is_some_and(|t| now < t) {
                        Vec::new()
                    } else {
                        let failed = queue
                            .claim(&name, Claim::FailedBatch, usize::MAX, lease)
                            .await?;
                        if failed.is_empty() {
                            self.no_failed_batch_until = Some(Instant::now() + POLL);
                        }
                        failed
                    };
                    if let Some(batch_id) = failed.first().and_then(|c| c.batch_id.clone()) {
                        self.start(failed, batch_id.clone(), Some(batch_id), permit, probe);
                        if probe {
                            return Ok(());
                        }
                        continue;
                    }
                    // The batches of every free slot in one claim: a claim costs mostly per
                    // statement, and the worker sends nothing while it waits for one (one
                    // batch per claim held batch mode at ~130 requests/s).
                    let mut permits = vec![permit];
                    let hot_keys = self.hot_keys_until.is_some_and(|t| now < t);
                    while permits.len() < requests && !hot_keys {
                        match self.shared.global.clone().try_acquire_owned() {
                            Ok(p) => permits.push(p),
                            Err(_) => break,
                        }
                    }
                    let wanted = max_events.saturating_mul(permits.len());
                    let claimed = queue.claim(&name, self.new_batch(), wanted, lease).await?;
                    if claimed.is_empty() {
                        return Ok(());
                    }
                    let got = claimed.len();
                    let by_key = self.sub.ordering == Ordering::Key;
                    let (batches, held_back) = split(claimed, max_events, by_key);
                    let count = batches.len();
                    for (n, (batch, permit)) in batches.into_iter().zip(permits).enumerate() {
                        if n + 1 == count && batch.len() < max_events {
                            self.gathering = batch;
                            self.gather_slot = Some(permit);
                            self.gather_until = Some(later(Instant::now(), max_wait));
                            if self.batch_ready(max_events) {
                                self.send_gathered(max_events, probe).await;
                            }
                        } else {
                            let batch_id = new_batch_id(&batch);
                            self.start(batch, batch_id.clone(), Some(batch_id), permit, probe);
                        }
                    }
                    if !held_back.is_empty() {
                        // Keys with several events due: claiming more than one batch at a
                        // time would mostly claim events to give back.
                        self.hot_keys_until = Some(Instant::now() + POLL);
                        self.release(&held_back).await;
                        return Ok(());
                    }
                    if probe || got < wanted || !self.gathering.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// How a new batch is claimed.
    fn new_batch(&self) -> Claim {
        match self.sub.ordering {
            Ordering::Key => Claim::InOrderOfKey,
            Ordering::None => Claim::NewUnordered,
        }
    }

    /// Whether the batch being gathered is full or has waited long enough.
    fn batch_ready(&self, max_events: usize) -> bool {
        !self.gathering.is_empty()
            && (self.gathering.len() >= max_events
                || self.gather_until.is_some_and(|t| Instant::now() >= t))
    }

    /// Sends the batch gathered, at most `max_events` of it (the rest, left over from a
    /// larger `max_events` before a config edit, goes back to the queue).
    async fn send_gathered(&mut self, max_events: usize, probe: bool) {
        let mut batch = std::mem::take(&mut self.gathering);
        let rest: Vec<i64> = batch
            .split_off(batch.len().min(max_events))
            .iter()
            .map(|c| c.id)
            .collect();
        self.gather_until = None;
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
            self.breaker.probing();
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
            Some(_) => (array(&rows), None),
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

    /// Turns a returned request into the new state of the deliveries it carried.
    async fn finish(&mut self, sent: Sent) {
        self.in_flight.remove(&sent.request);
        let now = Instant::now();
        let wall = SystemTime::now();
        let a = &sent.attempt;
        let name = &self.sub.name;
        if a.outcome != Outcome::Delivered {
            // A batch that failed, or a probe given back, is a failed batch to claim again.
            self.no_failed_batch_until = None;
        }
        let settled: Vec<Settled> = match a.outcome {
            Outcome::Delivered => {
                self.breaker.success();
                sent.carried.iter().map(|_| Settled::Delivered).collect()
            }
            Outcome::Dead => {
                // The receiver answered, and said the data is wrong: it is up, and sending
                // this again would not help (the attempt's error says which status). Without
                // a status nothing was sent, and the breaker learns nothing.
                if a.status.is_some() {
                    self.breaker.success();
                }
                sent.carried.iter().map(|_| Settled::Dead).collect()
            }
            Outcome::Gone => {
                let reason = format!(
                    "the receiver answered 410 Gone at {}",
                    crate::time::rfc3339(wall)
                );
                tracing::error!(
                    subscription = %name,
                    "410 Gone: subscription deactivated; its pending deliveries are kept; \
                     `walhook replay --subscription {name} --status dead` switches it back on"
                );
                self.deactivated = Some(reason.clone());
                self.recheck_at = Some(now + POLL);
                if let Err(e) = self.deactivate(&reason).await {
                    tracing::warn!(subscription = %name, "{e}");
                }
                sent.carried.iter().map(|_| Settled::Retry(wall)).collect()
            }
            Outcome::Retry { after, slow_down } => {
                if let Some(pause) = self.breaker.failure(now) {
                    tracing::warn!(
                        subscription = %name,
                        "circuit breaker open after failures in a row: pausing, next probe in {pause:?}"
                    );
                }
                let mut first_delay = None;
                // A batch is claimed again when its earliest delivery is due.
                let mut earliest = None;
                // One jitter for the whole request: the deliveries of a batch stay due
                // together, and the batch goes again whole.
                let rng = StdRng::seed_from_u64(rand::random());
                let settled = sent
                    .carried
                    .iter()
                    .map(|c| {
                        if sent.probe {
                            return Settled::Released;
                        }
                        match policy::next_attempt(
                            &self.sub.retry_schedule,
                            c.attempts + 1,
                            after,
                            &mut rng.clone(),
                        ) {
                            Some(delay) => {
                                let delay = delay.min(LONGEST_WAIT);
                                first_delay.get_or_insert(delay);
                                let due = now + delay;
                                earliest = Some(earliest.map_or(due, |t: Instant| t.min(due)));
                                Settled::Retry(wall + delay)
                            }
                            None => Settled::Dead,
                        }
                    })
                    .collect();
                if let Some(due) = earliest {
                    self.dues.insert(due);
                    if self.dues.len() > MAX_DUES {
                        self.dues.pop_last();
                    }
                }
                if slow_down {
                    let pause = after.or(first_delay).unwrap_or(POLL);
                    let until = now + pause;
                    self.slow_until = Some(self.slow_until.map_or(until, |t| t.max(until)));
                    tracing::warn!(
                        subscription = %name,
                        status = a.status,
                        "the receiver asked to slow down: pausing the subscription for {pause:?}"
                    );
                }
                settled
            }
        };
        let metrics = &self.shared.metrics;
        metrics.request_took(name, a.duration);
        let labels = Metrics::subscription(name);
        metrics
            .circuit_open
            .get_or_create(&labels)
            .set(i64::from(self.breaker.is_open()));
        metrics
            .subscription_inactive
            .get_or_create(&labels)
            .set(i64::from(self.deactivated.is_some()));
        // A pause (slow-down, open breaker, 410) can outlast the leases of a batch being
        // gathered: give its deliveries back, to be claimed afresh when sending resumes.
        let paused = self.slow_until.is_some_and(|t| t > now)
            || self.breaker.is_open()
            || self.deactivated.is_some();
        if paused && !self.gathering.is_empty() {
            let gathered: Vec<i64> = self.gathering.drain(..).map(|c| c.id).collect();
            self.gather_until = None;
            self.release(&gathered).await;
        }
        let completions: Vec<Completion> = sent
            .carried
            .iter()
            .zip(settled)
            .map(|(c, settled)| {
                log_result(name, c, a, &settled, sent.probe);
                let outcome = match settled {
                    Settled::Delivered => {
                        let latency = wall.duration_since(c.committed_at).unwrap_or_default();
                        metrics
                            .end_to_end_latency
                            .get_or_create(&labels)
                            .observe(latency.as_secs_f64());
                        AttemptOutcome::Success
                    }
                    Settled::Dead => AttemptOutcome::Dead,
                    Settled::Retry(_) | Settled::Released => AttemptOutcome::Retry,
                };
                metrics.attempt(name, outcome);
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
            .collect();
        let finished = Finished {
            completions,
            wake: self.wake.clone(),
        };
        if self.shared.completions.send(finished).await.is_err() {
            tracing::warn!(subscription = %name, "delivery results not recorded: stopping");
        }
    }

    async fn deactivate(&self, reason: &str) -> Result<(), QueueError> {
        self.shared
            .queue()
            .await?
            .deactivate(&self.sub.name, reason)
            .await
    }
}

/// Cuts claimed deliveries, in event order, into batches of `max_events`. With
/// `by_key` (`ordering = "key"`), a key's events must not go in two batches at once (the later
/// batch could arrive first): those after a key's first batch are held back, to be
/// given back to the queue.
fn split(claimed: Vec<Claimed>, max_events: usize, by_key: bool) -> (Vec<Vec<Claimed>>, Vec<i64>) {
    let mut batches: Vec<Vec<Claimed>> = Vec::new();
    let mut first_batch_of_key: HashMap<i64, usize> = HashMap::new();
    let mut held_back = Vec::new();
    for row in claimed {
        let n = match batches.last() {
            Some(last) if last.len() < max_events => batches.len() - 1,
            _ => batches.len(),
        };
        if by_key && *first_batch_of_key.entry(row.ordering_key).or_insert(n) != n {
            held_back.push(row.id);
            continue;
        }
        if n == batches.len() {
            batches.push(Vec::with_capacity(max_events.min(1_024)));
        }
        batches[n].push(row);
    }
    (batches, held_back)
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

/// The body of a batch: the events' stored bytes as one JSON array.
fn array(rows: &[Claimed]) -> Vec<u8> {
    let mut body = Vec::with_capacity(rows.iter().map(|c| c.body.len() + 1).sum::<usize>() + 1);
    body.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&row.body);
    }
    body.push(b']');
    body
}

/// A new batch's id: its first delivery and a random part, so a batch re-formed after a
/// crash (possibly with other events) never reuses an id a receiver may have deduplicated.
fn new_batch_id(rows: &[Claimed]) -> String {
    let first = rows.first().map_or(0, |c| c.id);
    format!("bat_{first:016X}_{:08x}", rand::random::<u32>())
}

/// One line per result, with the subscription, delivery, event id and key as fields; the
/// status when the receiver answered, the error when something else went wrong.
fn log_result(subscription: &str, c: &Carried, a: &Attempt, settled: &Settled, probe: bool) {
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
        Settled::Dead if a.outcome == Outcome::Dead && status.is_some() => tracing::error!(
            subscription,
            delivery,
            event_id,
            key,
            status,
            error,
            "delivery dead: the receiver's answer is in dead_on_status"
        ),
        Settled::Dead if a.outcome == Outcome::Dead => tracing::error!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, ordering_key: i64) -> Claimed {
        Claimed {
            id,
            event_seq: id,
            event_id: format!("evt_{id}"),
            body: b"{}".to_vec(),
            attempts: 0,
            trigger: Trigger::Scheduled,
            batch_id: None,
            committed_at: SystemTime::UNIX_EPOCH,
            key: String::new(),
            ordering_key,
            target: None,
        }
    }

    fn ids(batches: &[Vec<Claimed>]) -> Vec<Vec<i64>> {
        batches
            .iter()
            .map(|b| b.iter().map(|c| c.id).collect())
            .collect()
    }

    #[test]
    fn split_keeps_each_key_in_its_first_batch_and_holds_back_the_rest() {
        let claimed = vec![row(1, 10), row(2, 20), row(3, 10), row(4, 30), row(5, 10)];
        let (batches, held_back) = split(claimed, 2, true);
        assert_eq!(ids(&batches), vec![vec![1, 2], vec![4]]);
        assert_eq!(held_back, vec![3, 5]);
    }

    #[test]
    fn split_without_key_ordering_only_cuts() {
        let claimed = vec![row(1, 10), row(2, 20), row(3, 10), row(4, 30), row(5, 10)];
        let (batches, held_back) = split(claimed, 2, false);
        assert_eq!(ids(&batches), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(held_back.is_empty());
    }

    #[test]
    fn split_keeps_a_keys_events_together_within_one_batch() {
        let claimed = vec![row(1, 10), row(2, 10), row(3, 20), row(4, 20)];
        let (batches, held_back) = split(claimed, 3, true);
        assert_eq!(ids(&batches), vec![vec![1, 2, 3]]);
        assert_eq!(held_back, vec![4]);
    }
}

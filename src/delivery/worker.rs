//! One subscription's delivery loop: claims what is due from the outbox, within its
//! in-flight cap, the global cap, its rate limit, its slow-down and its circuit breaker;
//! sends each request in a task of its own; and turns each result into the deliveries' new
//! state (SPEC §4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};

use super::dispatcher::{Finished, Shared};
use super::limits::{Allowance, Breaker, TokenBucket};
use super::policy::{self, Outcome};
use super::sender::{self, Attempt};
use crate::config::{Method, Ordering, SubscriptionConfig};
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
    in_flight: HashMap<u64, Vec<i64>>,
    next_request: u64,
    bucket: Option<TokenBucket>,
    breaker: Breaker,
    slow_until: Option<Instant>,
    /// When the retries this worker scheduled fall due, soonest first (one per failed
    /// request, at most [`MAX_DUES`]), so that each is claimed on time, not at the next poll.
    dues: BTreeSet<Instant>,
    gathering: Vec<Claimed>,
    gather_until: Option<Instant>,
    deactivated: Option<String>,
    /// When a deactivated subscription next looks whether it was switched back on.
    recheck_at: Instant,
    waiting_for_global: bool,
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
            deactivated: None,
            recheck_at: now,
            waiting_for_global: false,
            retry_claim_at: None,
            stopping: None,
        }
    }

    /// Runs until stopped and every request it started has returned (or the deadline).
    pub(super) async fn run(mut self) {
        self.check_deactivated().await;
        loop {
            // Here, not only when the poll timer fires: on a busy table wakes come more
            // often than the poll, and the timer would never fire. An active subscription
            // looks too: the admin API pauses it by writing the same table.
            if Instant::now() >= self.recheck_at {
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
                    Some(Control::Update(sub)) => self.update(sub),
                    Some(Control::Stop(deadline)) => self.stop(deadline).await,
                    None => self.stop(Instant::now()).await,
                },
                Some(sent) = self.sent_rx.recv() => self.finish(sent).await,
                _ = self.wake.notified() => {}
                // A permit came free elsewhere: claim again.
                _ = global.acquire_owned(), if self.waiting_for_global => {}
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    fn update(&mut self, sub: Arc<SubscriptionConfig>) {
        if sub.rate_limit != self.sub.rate_limit {
            let now = Instant::now();
            self.bucket = sub.rate_limit.as_ref().map(|l| TokenBucket::new(l, now));
        }
        self.sub = sub;
    }

    async fn stop(&mut self, deadline: Instant) {
        self.stopping = Some(deadline);
        let gathered: Vec<i64> = self.gathering.drain(..).map(|c| c.id).collect();
        self.release(&gathered).await;
    }

    /// The deliveries of requests still in flight at the deadline go back to pending; if a
    /// request did succeed, the event is sent again (at-least-once).
    async fn give_back_in_flight(&mut self) {
        let ids: Vec<i64> = self.in_flight.drain().flat_map(|(_, ids)| ids).collect();
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
        self.recheck_at = Instant::now() + POLL;
        let state = match self.shared.queue().await {
            Ok(queue) => queue.deactivated(&self.sub.name).await,
            Err(e) => Err(e),
        };
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
        consider(Some(self.recheck_at));
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
        self.sub.timeout + gathering + LEASE_MARGIN
    }

    /// `(max_events, max_wait)` when requests carry JSON arrays.
    fn batching(&self) -> Option<(usize, Duration)> {
        match (&self.sub.batch, self.sub.method) {
            (Some(batch), Method::Post) => Some((batch.max_events.max(1), batch.max_wait)),
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
        }
        if self.retry_claim_at.is_some() || self.deactivated.is_some() || !self.sub.active {
            return Ok(());
        }
        if self.slow_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.slow_until = None;
        let probe = match self.breaker.allowance(now) {
            Allowance::Open => false,
            Allowance::Probe => true,
            Allowance::Wait(_) | Allowance::ProbeInFlight => return Ok(()),
        };
        let queue = self.shared.queue().await?;
        let name = self.sub.name.clone();
        let lease = self.lease();
        loop {
            let mut requests = self.max_in_flight().saturating_sub(self.in_flight.len());
            if probe {
                requests = requests.min(1);
            }
            if let Some(bucket) = &mut self.bucket {
                requests = requests.min(bucket.available(Instant::now()));
            }
            if requests == 0 {
                return Ok(());
            }
            let Ok(permit) = self.shared.global.clone().try_acquire_owned() else {
                self.waiting_for_global = true;
                return Ok(());
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
                    if self.gathering.is_empty() {
                        let failed = queue
                            .claim(&name, Claim::FailedBatch, max_events, lease)
                            .await?;
                        if let Some(batch_id) = failed.first().and_then(|c| c.batch_id.clone()) {
                            self.start(failed, batch_id.clone(), Some(batch_id), permit, probe);
                            if probe {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    let how = match self.sub.ordering {
                        Ordering::Key => Claim::InOrderOfKey,
                        Ordering::None => Claim::Unordered,
                    };
                    let room = max_events - self.gathering.len();
                    let claimed = queue.claim(&name, how, room, lease).await?;
                    if self.gathering.is_empty() && !claimed.is_empty() {
                        self.gather_until = Some(Instant::now() + max_wait);
                    }
                    let got = claimed.len();
                    // A gathered delivery whose lease ran out (a long wait for a global
                    // permit) comes back from the claim: carry it once.
                    let gathered: Vec<i64> = self.gathering.iter().map(|c| c.id).collect();
                    self.gathering
                        .extend(claimed.into_iter().filter(|c| !gathered.contains(&c.id)));
                    let full = self.gathering.len() >= max_events;
                    let waited = self.gather_until.is_some_and(|t| Instant::now() >= t);
                    if self.gathering.is_empty() || !(full || waited) {
                        return Ok(());
                    }
                    let batch = std::mem::take(&mut self.gathering);
                    self.gather_until = None;
                    let batch_id = new_batch_id(&batch);
                    self.start(batch, batch_id.clone(), Some(batch_id), permit, probe);
                    if probe || got < room {
                        return Ok(());
                    }
                }
            }
        }
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
        self.in_flight
            .insert(request, rows.iter().map(|c| c.id).collect());
        let carried: Vec<Carried> = rows
            .iter()
            .map(|c| Carried {
                id: c.id,
                attempts: c.attempts,
                trigger: c.trigger,
                committed_at: c.committed_at,
            })
            .collect();
        let body = match &batch_id {
            Some(_) => array(&rows),
            None => rows.into_iter().next().map(|c| c.body).unwrap_or_default(),
        };
        let sub = self.sub.clone();
        let shared = self.shared.clone();
        let done = self.sent_tx.clone();
        tokio::spawn(async move {
            let attempt = sender::send(&shared.client, &shared.policy, &sub, &id, &body).await;
            drop(permit);
            let _ = done.send(Sent {
                request,
                carried,
                batch_id,
                probe,
                attempt,
            });
        });
    }

    /// Turns a returned request into the new state of the deliveries it carried.
    async fn finish(&mut self, sent: Sent) {
        self.in_flight.remove(&sent.request);
        let now = Instant::now();
        let wall = SystemTime::now();
        let a = &sent.attempt;
        let name = &self.sub.name;
        let settled: Vec<Settled> = match a.outcome {
            Outcome::Delivered => {
                self.breaker.success();
                sent.carried.iter().map(|_| Settled::Delivered).collect()
            }
            Outcome::Gone => {
                let reason = format!("the receiver answered 410 Gone at {}", rfc3339(wall));
                tracing::error!(
                    subscription = %name,
                    "410 Gone: subscription deactivated; its pending deliveries are kept; \
                     `walhook replay --subscription {name} --status dead` switches it back on"
                );
                self.deactivated = Some(reason.clone());
                self.recheck_at = now + POLL;
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
                let mut rng = rand::thread_rng();
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
                            &mut rng,
                        ) {
                            Some(delay) => {
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
                log_result(name, &c.id, a, &settled, sent.probe);
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

fn rfc3339(time: SystemTime) -> String {
    let micros = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    // Postgres counts from 2000-01-01.
    crate::capture::envelope::pg_micros_to_rfc3339(micros - 946_684_800_000_000)
}

fn log_result(subscription: &str, delivery: &i64, a: &Attempt, settled: &Settled, probe: bool) {
    let status = a.status;
    let error = a.error.as_deref().unwrap_or("");
    match settled {
        Settled::Delivered => {
            tracing::debug!(subscription, delivery, status, "delivered")
        }
        Settled::Retry(_) | Settled::Released => tracing::warn!(
            subscription,
            delivery,
            status,
            probe,
            "delivery failed, will retry: {error}"
        ),
        Settled::Dead => tracing::error!(
            subscription,
            delivery,
            status,
            "delivery dead after the last scheduled attempt: {error}"
        ),
    }
}

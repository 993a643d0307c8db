//! Whether a subscription may send now (SPEC §4): its circuit breaker, a receiver's
//! slow-down (429/503), a pause through the admin API and a deactivation by 410 Gone, each
//! holding it back without costing attempts. Pure: time comes in as `now`; the worker does
//! the I/O and tells the gate what happened.

use std::time::Duration;

use tokio::time::Instant;

/// What the gate lets a worker do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send as the other limits (rate limit, in-flight caps) allow.
    Allow,
    /// Send one probe request, whose failure costs no attempt.
    Probe,
    /// Send nothing until then (a slow-down, or the breaker's pause before its next probe).
    WaitUntil(Instant),
    /// Send nothing until the probe in flight returns.
    AwaitProbe,
    /// Send nothing until the subscription is resumed or switched back on.
    Stopped,
}

/// Why a subscription is switched off, with the reason it has in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Paused through the admin API; only a resume lifts it.
    Paused(String),
    /// The receiver answered 410 Gone; a replay of its dead deliveries switches it back on.
    Gone(String),
}

/// What a returned request says about the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered, and not with a failure the breaker counts (a 2xx, or a status in
    /// `dead_on_status`).
    Up,
    /// It failed (a network error, a timeout, a status retried).
    Down,
}

/// What a returned request tells the gate (see `settle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct News {
    /// What the breaker learns; `None`: nothing (nothing was sent, or 410 Gone).
    pub health: Option<Health>,
    /// The receiver asked to slow down: nothing goes until then.
    pub slow_down_until: Option<Instant>,
}

/// One subscription's gate.
#[derive(Debug, Clone)]
pub struct Gate {
    breaker: Breaker,
    slow_until: Option<Instant>,
    stop: Option<Stop>,
}

impl Gate {
    /// An open gate whose breaker pauses `probe_interval` before its first probe.
    pub fn new(probe_interval: Duration) -> Self {
        Gate {
            breaker: Breaker::new(probe_interval),
            slow_until: None,
            stop: None,
        }
    }

    /// What may be sent at `now`.
    pub fn decide(&self, now: Instant) -> Decision {
        if self.stop.is_some() {
            return Decision::Stopped;
        }
        if let Some(until) = self.slow_until.filter(|until| now < *until) {
            return Decision::WaitUntil(until);
        }
        match self.breaker.allowance(now) {
            Allowance::Open => Decision::Allow,
            Allowance::Probe => Decision::Probe,
            Allowance::Wait(until) => Decision::WaitUntil(until),
            Allowance::ProbeInFlight => Decision::AwaitProbe,
        }
    }

    /// A probe is being sent.
    pub fn probing(&mut self) {
        self.breaker.probing();
    }

    /// Learns what a returned request said; returns the breaker's pause when this opened
    /// (or re-opened) it.
    pub fn learn(&mut self, news: News, now: Instant) -> Option<Duration> {
        let opened = match news.health {
            Some(Health::Up) => {
                self.breaker.success();
                None
            }
            Some(Health::Down) => self.breaker.failure(now),
            None => None,
        };
        if let Some(until) = news.slow_down_until {
            // Two slow-downs: the later end wins, a shorter one never cuts a longer short.
            self.slow_until = Some(self.slow_until.map_or(until, |t| t.max(until)));
        }
        opened
    }

    /// The subscription was paused or deactivated.
    pub fn stop(&mut self, stop: Stop) {
        self.stop = Some(stop);
    }

    /// The subscription is active again: it starts afresh, with a closed breaker and no
    /// slow-down. Returns whether it had been stopped.
    pub fn resume(&mut self) -> bool {
        let was = self.stop.take().is_some();
        if was {
            self.breaker.success();
            self.slow_until = None;
        }
        was
    }

    /// Why the subscription is switched off, if it is.
    pub fn stopped(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Whether the breaker is not closed (the `walhook_circuit_open` gauge).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Whether anything holds sending back beyond `now` for longer than a request: a
    /// slow-down, an open breaker, a stop. A batch being gathered is given back then, rather
    /// than outlive its leases.
    pub fn holds(&self, now: Instant) -> bool {
        self.slow_until.is_some_and(|t| t > now) || self.breaker.is_open() || self.stop.is_some()
    }

    /// The next moment after `now` at which [`Gate::decide`] may change on its own.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let slow = self.slow_until.filter(|t| *t > now);
        let breaker = match self.breaker.allowance(now) {
            Allowance::Wait(until) => Some(until),
            _ => None,
        };
        match (slow, breaker) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Failed requests in a row that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 5;

/// The longest pause between probes of an open breaker.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// A circuit breaker: after [`BREAKER_THRESHOLD`] failures in a row the subscription pauses,
/// then sends one probe at a time (its attempt does not count); a success closes it, a
/// failure doubles the pause up to [`MAX_PROBE_INTERVAL`].
#[derive(Debug, Clone)]
pub struct Breaker {
    failures: u32,
    first_interval: Duration,
    state: BreakerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open { until: Instant, interval: Duration },
    Probing { interval: Duration },
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Requests as the other limits allow.
    Open,
    /// One probe request, whose failure costs no attempt.
    Probe,
    /// Nothing until then.
    Wait(Instant),
    /// Nothing until the probe in flight returns.
    ProbeInFlight,
}

impl Breaker {
    /// A closed breaker whose first pause is `first_interval`.
    pub fn new(first_interval: Duration) -> Self {
        Breaker {
            failures: 0,
            first_interval,
            state: BreakerState::Closed,
        }
    }

    /// What may be sent now.
    pub fn allowance(&self, now: Instant) -> Allowance {
        match self.state {
            BreakerState::Closed => Allowance::Open,
            BreakerState::Open { until, .. } if now < until => Allowance::Wait(until),
            BreakerState::Open { .. } => Allowance::Probe,
            BreakerState::Probing { .. } => Allowance::ProbeInFlight,
        }
    }

    /// A probe is being sent.
    pub fn probing(&mut self) {
        if let BreakerState::Open { interval, .. } = self.state {
            self.state = BreakerState::Probing { interval };
        }
    }

    /// Whether the breaker is not closed.
    pub fn is_open(&self) -> bool {
        self.state != BreakerState::Closed
    }

    /// A request succeeded.
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// A request failed; returns the pause when this opened (or re-opened) the breaker.
    pub fn failure(&mut self, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let interval = match self.state {
            BreakerState::Probing { interval } => (interval * 2).min(MAX_PROBE_INTERVAL),
            BreakerState::Closed if self.failures >= BREAKER_THRESHOLD => self.first_interval,
            _ => return None,
        };
        self.state = BreakerState::Open {
            until: now + interval,
            interval,
        };
        Some(interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_a_success_closes_it() {
        let now = Instant::now();
        let mut breaker = Breaker::new(Duration::from_secs(1));
        for _ in 1..BREAKER_THRESHOLD {
            assert_eq!(breaker.failure(now), None);
        }
        breaker.success();
        for _ in 1..BREAKER_THRESHOLD {
            assert_eq!(breaker.failure(now), None, "a success resets the count");
        }
        assert_eq!(breaker.failure(now), Some(Duration::from_secs(1)));
        assert_eq!(
            breaker.allowance(now),
            Allowance::Wait(now + Duration::from_secs(1))
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(breaker.allowance(later), Allowance::Probe);
        breaker.probing();
        assert_eq!(breaker.allowance(later), Allowance::ProbeInFlight);
        assert_eq!(breaker.failure(later), Some(Duration::from_secs(2)));
        breaker.probing();
        breaker.success();
        assert_eq!(breaker.allowance(later), Allowance::Open);
    }

    #[test]
    fn probe_pauses_double_up_to_the_cap() {
        let now = Instant::now();
        let mut breaker = Breaker::new(Duration::from_secs(200));
        for _ in 0..BREAKER_THRESHOLD {
            breaker.failure(now);
        }
        breaker.probing();
        assert_eq!(breaker.failure(now), Some(MAX_PROBE_INTERVAL));
    }

    /// One step of a gate's life, `at` seconds after the start, and what it decides then.
    enum Step {
        Fail,
        Succeed,
        Probe,
        SlowDownFor(u64),
        Stop(Stop),
        Resume,
    }

    /// What the gate should decide, with times in seconds after the start.
    #[derive(Debug, PartialEq)]
    enum Want {
        Allow,
        Probe,
        WaitUntil(u64),
        AwaitProbe,
        Stopped,
    }

    /// Runs `steps` (at, what happens, what the gate decides right after) on a gate whose
    /// first probe waits 1 s.
    fn run(steps: &[(u64, Option<Step>, Want)]) {
        let start = Instant::now();
        let secs = |s: u64| start + Duration::from_secs(s);
        let mut gate = Gate::new(Duration::from_secs(1));
        for (n, (at, step, want)) in steps.iter().enumerate() {
            let now = secs(*at);
            match step {
                Some(Step::Fail) => {
                    gate.learn(
                        News {
                            health: Some(Health::Down),
                            slow_down_until: None,
                        },
                        now,
                    );
                }
                Some(Step::Succeed) => {
                    gate.learn(
                        News {
                            health: Some(Health::Up),
                            slow_down_until: None,
                        },
                        now,
                    );
                }
                Some(Step::Probe) => gate.probing(),
                Some(Step::SlowDownFor(s)) => {
                    let until = Some(now + Duration::from_secs(*s));
                    gate.learn(
                        News {
                            health: Some(Health::Down),
                            slow_down_until: until,
                        },
                        now,
                    );
                }
                Some(Step::Stop(stop)) => gate.stop(stop.clone()),
                Some(Step::Resume) => {
                    gate.resume();
                }
                None => {}
            }
            let got = match gate.decide(now) {
                Decision::Allow => Want::Allow,
                Decision::Probe => Want::Probe,
                Decision::WaitUntil(t) => Want::WaitUntil((t - start).as_secs()),
                Decision::AwaitProbe => Want::AwaitProbe,
                Decision::Stopped => Want::Stopped,
            };
            assert_eq!(&got, want, "step {n} (at {at} s)");
        }
    }

    #[test]
    fn the_gate_opens_the_breaker_after_five_failures_probes_and_closes_on_success() {
        run(&[
            (0, None, Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            // The fifth failure in a row opens it: one probe after the first pause.
            (0, Some(Step::Fail), Want::WaitUntil(1)),
            (1, None, Want::Probe),
            (1, Some(Step::Probe), Want::AwaitProbe),
            (2, Some(Step::Succeed), Want::Allow),
        ]);
    }

    #[test]
    fn a_success_between_failures_keeps_the_breaker_closed() {
        run(&[
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Succeed), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
        ]);
    }

    #[test]
    fn a_failed_probe_doubles_the_pause_before_the_next() {
        run(&[
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::Allow),
            (0, Some(Step::Fail), Want::WaitUntil(1)),
            (1, Some(Step::Probe), Want::AwaitProbe),
            (1, Some(Step::Fail), Want::WaitUntil(3)),
            (3, Some(Step::Probe), Want::AwaitProbe),
            (3, Some(Step::Fail), Want::WaitUntil(7)),
            (7, Some(Step::Probe), Want::AwaitProbe),
            (8, Some(Step::Succeed), Want::Allow),
        ]);
    }

    #[test]
    fn a_slow_down_holds_the_subscription_until_its_end_and_a_shorter_one_does_not_cut_it() {
        run(&[
            (0, Some(Step::SlowDownFor(120)), Want::WaitUntil(120)),
            (10, Some(Step::SlowDownFor(30)), Want::WaitUntil(120)),
            (119, None, Want::WaitUntil(120)),
            (120, None, Want::Allow),
            (130, Some(Step::SlowDownFor(5)), Want::WaitUntil(135)),
        ]);
    }

    #[test]
    fn a_410_or_a_pause_stops_the_gate_until_resumed_and_resuming_starts_afresh() {
        let gone = Stop::Gone("the receiver answered 410 Gone at …".to_owned());
        let paused = Stop::Paused("paused through the admin API at …".to_owned());
        run(&[
            (0, Some(Step::SlowDownFor(600)), Want::WaitUntil(600)),
            (1, Some(Step::Stop(gone)), Want::Stopped),
            (300, None, Want::Stopped),
            // Switched back on: the slow-down it had is forgotten.
            (301, Some(Step::Resume), Want::Allow),
            (302, Some(Step::Stop(paused)), Want::Stopped),
            (900, None, Want::Stopped),
            (901, Some(Step::Resume), Want::Allow),
        ]);
        let mut gate = Gate::new(Duration::from_secs(1));
        let now = Instant::now();
        for _ in 0..BREAKER_THRESHOLD {
            gate.learn(
                News {
                    health: Some(Health::Down),
                    slow_down_until: None,
                },
                now,
            );
        }
        gate.stop(Stop::Gone(String::new()));
        assert!(gate.resume(), "it had been stopped");
        assert!(!gate.breaker_open(), "resuming closes the breaker");
        assert!(!gate.resume(), "not stopped any more");
    }

    #[test]
    fn the_gate_holds_and_wakes_for_the_soonest_of_slow_down_and_probe() {
        let now = Instant::now();
        let s = |secs| now + Duration::from_secs(secs);
        let mut gate = Gate::new(Duration::from_secs(60));
        assert!(!gate.holds(now));
        assert_eq!(gate.next_change(now), None);
        gate.learn(
            News {
                health: None,
                slow_down_until: Some(s(10)),
            },
            now,
        );
        assert!(gate.holds(now));
        assert_eq!(gate.next_change(now), Some(s(10)));
        // Once over, a slow-down neither holds nor wakes.
        assert!(!gate.holds(s(10)));
        assert_eq!(gate.next_change(s(10)), None);
        for _ in 0..BREAKER_THRESHOLD {
            gate.learn(
                News {
                    health: Some(Health::Down),
                    slow_down_until: None,
                },
                now,
            );
        }
        assert_eq!(gate.next_change(now), Some(s(10)));
        assert_eq!(gate.next_change(s(10)), Some(s(60)));
        assert!(
            gate.holds(s(100)),
            "an open breaker holds until a probe succeeds"
        );
    }
}

//! What holds a subscription back without costing attempts (SPEC §4): its token-bucket rate
//! limit and its circuit breaker.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

/// The longest [`TokenBucket::next_token`] looks ahead.
const LONGEST_TOKEN_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A token bucket: `per_second` tokens a second, at most `burst` saved up; one token per
/// request.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &RateLimit, now: Instant) -> Self {
        TokenBucket {
            per_second: limit.per_second,
            burst: f64::from(limit.burst.max(1)),
            tokens: f64::from(limit.burst.max(1)),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    /// Spends `n` tokens (no more than [`Self::available`] said).
    pub fn take(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// When the next whole token will be there (at most a day from now: a rate so low that
    /// a token takes longer is looked at again then).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        // try_: a tiny (but positive) rate makes the wait too large for a Duration.
        let wait = Duration::try_from_secs_f64(missing / self.per_second)
            .map_or(LONGEST_TOKEN_WAIT, |w| w.min(LONGEST_TOKEN_WAIT));
        now + wait
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

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limit(15.0, 20), start);
        assert_eq!(bucket.available(start), 20);
        bucket.take(20, start);
        assert_eq!(bucket.available(start), 0);
        let later = start + Duration::from_millis(1_000);
        assert_eq!(bucket.available(later), 15);
        let much_later = start + Duration::from_secs(60);
        assert_eq!(
            bucket.available(much_later),
            20,
            "never more than the burst"
        );
    }

    #[test]
    fn the_next_token_comes_after_one_over_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limit(10.0, 1), start);
        bucket.take(1, start);
        let next = bucket.next_token(start);
        let wait = next - start;
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
    }

    #[test]
    fn a_tiny_rate_does_not_overflow_the_wait() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limit(1e-300, 1), start);
        bucket.take(1, start);
        assert_eq!(bucket.next_token(start), start + LONGEST_TOKEN_WAIT);
    }

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
}

//! The token-bucket rate limit that holds a subscription back without costing attempts
//! (SPEC §4); the circuit breaker is the gate's (`gate.rs`).

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
}

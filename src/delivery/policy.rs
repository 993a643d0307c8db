//! What a subscriber's response means for a delivery (SPEC §4 status policy), and when the
//! next attempt is due.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

pub use crate::outbox::queue::Outcome;

/// The longest wait a `Retry-After` can impose: a receiver asking for a day would otherwise
/// hold the subscription back far beyond what the retry schedule intends.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3_600);

/// Retry delays vary by ±20 % so that deliveries failed together don't retry together.
const JITTER: f64 = 0.2;

/// What a response means (SPEC §4): for its delivery, in the one [`Outcome`] vocabulary of
/// the queue and the metrics, and for the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What becomes of the delivery; a retry whose schedule is exhausted is dead (see
    /// [`next_attempt`]). For a 3xx the caller records the `Location`.
    pub outcome: Outcome,
    /// What `Retry-After` asked for (429 and 503 only), at most [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// What becomes of the subscription.
    pub effect: Effect,
}

/// What a response does to the whole subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the delivery.
    None,
    /// 429 or 503: the receiver is overloaded, so the whole subscription slows down, not
    /// only this event.
    SlowDown,
    /// 410 Gone: deactivate the subscription; its pending deliveries are kept for replay
    /// (the delivery itself is a retry, due at once).
    Deactivate,
}

impl Verdict {
    /// A 2xx: the delivery is done.
    pub const DELIVERED: Verdict = Verdict::of(Outcome::Delivered, Effect::None);
    /// A failure retried on the schedule.
    pub const ON_SCHEDULE: Verdict = Verdict::of(Outcome::Retry, Effect::None);
    /// 410 Gone.
    pub const GONE: Verdict = Verdict::of(Outcome::Retry, Effect::Deactivate);
    /// A status in the subscription's `dead_on_status` (the receiver says the data is
    /// wrong), or a delivery that cannot be sent: dead after this attempt, without retries.
    pub const DEAD: Verdict = Verdict::of(Outcome::Dead, Effect::None);

    const fn of(outcome: Outcome, effect: Effect) -> Verdict {
        Verdict {
            outcome,
            retry_after: None,
            effect,
        }
    }

    /// 429 or 503, with what `Retry-After` asked for.
    pub fn slow_down(retry_after: Option<Duration>) -> Verdict {
        Verdict {
            retry_after,
            ..Verdict::of(Outcome::Retry, Effect::SlowDown)
        }
    }
}

/// Classifies an attempt by its HTTP status; `None` is a network error or timeout.
///
/// `retry_after` is the raw `Retry-After` header, honoured for 429 and 503 only.
/// `dead_on_status` is the subscription's list: a status in it is [`Verdict::DEAD`], before
/// any other meaning that status has (the user listed it on purpose).
pub fn classify(
    status: Option<u16>,
    retry_after: Option<&str>,
    dead_on_status: &[u16],
    now: SystemTime,
) -> Verdict {
    match status {
        Some(200..=299) => Verdict::DELIVERED,
        Some(code) if dead_on_status.contains(&code) => Verdict::DEAD,
        Some(410) => Verdict::GONE,
        Some(429 | 503) => {
            Verdict::slow_down(retry_after.and_then(|value| parse_retry_after(value, now)))
        }
        // Network errors, timeouts, redirects (never followed), 408, 409, 425, 5xx and every
        // other 4xx: a human usually fixes a 4xx within the retry window, so none is final.
        _ => Verdict::ON_SCHEDULE,
    }
}

/// Parses a `Retry-After` value — delta-seconds or an HTTP-date — into a wait from `now`,
/// capped at [`MAX_RETRY_AFTER`]. A date in the past means no wait; anything unparseable
/// is `None`, so the schedule alone decides.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than fit in a u64 still means "a long time": cap rather than ignore.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let date = crate::time::parse_http_date(value, crate::time::unix_secs(now))?;
    let wait = match u64::try_from(date) {
        Ok(seconds) => (UNIX_EPOCH + Duration::from_secs(seconds))
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
        // Before 1970: long past.
        Err(_) => Duration::ZERO,
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The wait before the next attempt, given `attempts_made` so far, or `None` when the
/// schedule is exhausted and the delivery is dead.
///
/// A schedule of N delays allows N + 1 attempts: the first at once (`attempts_made == 0`
/// gives zero), then after attempt k the delay `schedule[k - 1]` with ±20 % jitter. A
/// `retry_after` (capped at [`MAX_RETRY_AFTER`]) wins when it is longer, but never adds an
/// attempt to an exhausted schedule.
///
/// Only real HTTP attempts count: waiting for the subscription's rate limit, its in-flight
/// cap or an open circuit breaker never consumes an attempt — the dispatcher holds such a
/// delivery back without raising `attempts_made`.
pub fn next_attempt(
    schedule: &[Duration],
    attempts_made: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let Some(index) = attempts_made.checked_sub(1) else {
        return Some(Duration::ZERO);
    };
    let delay = *schedule.get(usize::try_from(index).ok()?)?;
    let jittered = jitter(delay, rng);
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

/// `delay` scaled by a random factor in [0.8, 1.2].
fn jitter(delay: Duration, rng: &mut impl Rng) -> Duration {
    let factor = rng.gen_range(1.0 - JITTER..=1.0 + JITTER);
    // try_: a schedule entry near Duration::MAX must not panic when scaled up.
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::config::DEFAULT_RETRY_SCHEDULE;

    #[test]
    fn a_status_in_dead_on_status_is_dead_and_nothing_else_changes() {
        let listed = [400, 422, 503];
        let cases: [(Option<u16>, Verdict); 8] = [
            (Some(400), Verdict::DEAD),
            (Some(422), Verdict::DEAD),
            // Listed on purpose: the user's word wins over "slow down".
            (Some(503), Verdict::DEAD),
            (Some(200), Verdict::DELIVERED),
            (Some(404), ON_SCHEDULE),
            (Some(500), ON_SCHEDULE),
            (Some(410), Verdict::GONE),
            (None, ON_SCHEDULE),
        ];
        for (status, expected) in cases {
            assert_eq!(
                classify(status, None, &listed, now()),
                expected,
                "{status:?}"
            );
        }
        assert_eq!(classify(Some(400), None, &[], now()), ON_SCHEDULE);
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A fixed "now": 2026-03-01 12:00:00 UTC.
    fn now() -> SystemTime {
        at(1_772_366_400)
    }

    fn retry(after: Option<Duration>, slow_down: bool) -> Verdict {
        assert!(slow_down, "only 429 and 503 slow down");
        Verdict::slow_down(after)
    }

    const ON_SCHEDULE: Verdict = Verdict::ON_SCHEDULE;

    #[test]
    fn a_2xx_response_delivers_the_event() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(Some(status), None, &[], now()),
                Verdict::DELIVERED,
                "{status}"
            );
        }
    }

    #[test]
    fn a_redirect_is_not_followed_but_retried_on_schedule() {
        // The caller records the Location header; for the policy a 3xx is a plain failure,
        // and a Retry-After on it is not one of the two statuses that honour it.
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(
                classify(Some(status), Some("60"), &[], now()),
                ON_SCHEDULE,
                "{status}"
            );
        }
    }

    #[test]
    fn client_errors_are_retried_because_a_human_usually_fixes_them_in_time() {
        for status in [400, 401, 403, 404, 405, 413, 415, 422, 451, 499] {
            assert_eq!(
                classify(Some(status), None, &[], now()),
                ON_SCHEDULE,
                "{status}"
            );
        }
    }

    #[test]
    fn request_timeout_conflict_and_too_early_are_retried() {
        for status in [408, 409, 425] {
            assert_eq!(
                classify(Some(status), None, &[], now()),
                ON_SCHEDULE,
                "{status}"
            );
        }
    }

    #[test]
    fn gone_deactivates_the_subscription() {
        assert_eq!(classify(Some(410), None, &[], now()), Verdict::GONE);
        assert_eq!(classify(Some(410), Some("60"), &[], now()), Verdict::GONE);
    }

    #[test]
    fn too_many_requests_waits_the_seconds_asked_and_slows_the_subscription() {
        assert_eq!(
            classify(Some(429), Some("120"), &[], now()),
            retry(Some(Duration::from_secs(120)), true)
        );
        assert_eq!(
            classify(Some(429), Some(" 0 "), &[], now()),
            retry(Some(Duration::ZERO), true)
        );
    }

    #[test]
    fn too_many_requests_waits_until_the_date_asked() {
        assert_eq!(
            classify(Some(429), Some("Sun, 01 Mar 2026 12:30:00 GMT"), &[], now()),
            retry(Some(Duration::from_secs(30 * 60)), true)
        );
    }

    #[test]
    fn too_many_requests_without_retry_after_still_slows_the_subscription() {
        assert_eq!(classify(Some(429), None, &[], now()), retry(None, true));
    }

    #[test]
    fn server_errors_are_retried_on_schedule() {
        for status in [500, 501, 502, 504, 599] {
            assert_eq!(
                classify(Some(status), Some("60"), &[], now()),
                ON_SCHEDULE,
                "{status}"
            );
        }
    }

    #[test]
    fn service_unavailable_honours_retry_after_and_slows_the_subscription() {
        assert_eq!(
            classify(Some(503), Some("300"), &[], now()),
            retry(Some(Duration::from_secs(300)), true)
        );
        assert_eq!(classify(Some(503), None, &[], now()), retry(None, true));
    }

    #[test]
    fn a_network_error_or_timeout_is_retried_on_schedule() {
        assert_eq!(classify(None, None, &[], now()), ON_SCHEDULE);
        assert_eq!(classify(None, Some("60"), &[], now()), ON_SCHEDULE);
    }

    #[test]
    fn unusual_statuses_are_failures_too() {
        for status in [0, 100, 199, 600, 999] {
            assert_eq!(
                classify(Some(status), None, &[], now()),
                ON_SCHEDULE,
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_is_capped_at_six_hours() {
        for value in [
            "21601",
            "86400",
            "99999999999999999999999",
            "Tue, 03 Mar 2026 12:00:00 GMT",
        ] {
            assert_eq!(
                classify(Some(429), Some(value), &[], now()),
                retry(Some(MAX_RETRY_AFTER), true),
                "{value}"
            );
        }
        assert_eq!(
            parse_retry_after("21600", now()),
            Some(Duration::from_secs(21_600))
        );
    }

    #[test]
    fn a_retry_after_date_in_the_past_means_try_now() {
        for value in [
            "Sun, 01 Mar 2026 11:59:59 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(
                classify(Some(503), Some(value), &[], now()),
                retry(Some(Duration::ZERO), true),
                "{value}"
            );
        }
    }

    #[test]
    fn a_garbage_retry_after_is_ignored_and_the_schedule_decides() {
        for value in [
            "",
            "soon",
            "-5",
            "1.5",
            "+60",
            "60s",
            "Sun, 01 Mar 2026 12:30:00 PST",
            "Sun, 01 Mar 2026 12:30:00",
            "Sun, 31 Feb 2026 12:30:00 GMT",
            "Sun, 01 Mar 2026 24:00:00 GMT",
            "Sun, 1 Mar 2026 12:30:00 GMT",
            "Sun, 01 mar 2026 12:30:00 GMT",
            "Sunday, 01 Mar 2026 12:30:00 GMT",
            "Sun 01 Mar 2026 12:30:00 GMT",
            "2026-03-01T12:30:00Z",
        ] {
            assert_eq!(
                classify(Some(429), Some(value), &[], now()),
                retry(None, true),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_first_attempt_goes_at_once() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            next_attempt(&DEFAULT_RETRY_SCHEDULE, 0, None, &mut rng),
            Some(Duration::ZERO)
        );
        assert_eq!(next_attempt(&[], 0, None, &mut rng), Some(Duration::ZERO));
    }

    #[test]
    fn a_schedule_of_n_delays_allows_n_plus_one_attempts_then_the_delivery_is_dead() {
        let mut rng = StdRng::seed_from_u64(2);
        let schedule = [
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(600),
        ];
        let mut attempts = 0;
        while next_attempt(&schedule, attempts, None, &mut rng).is_some() {
            attempts += 1;
        }
        assert_eq!(attempts, 4);

        let mut attempts = 0;
        while next_attempt(&DEFAULT_RETRY_SCHEDULE, attempts, None, &mut rng).is_some() {
            attempts += 1;
        }
        assert_eq!(attempts, 10);

        // An empty schedule: one attempt, then dead.
        assert_eq!(next_attempt(&[], 1, None, &mut rng), None);
        assert_eq!(next_attempt(&schedule, u32::MAX, None, &mut rng), None);
    }

    #[test]
    fn after_attempt_k_the_kth_delay_applies() {
        let mut rng = StdRng::seed_from_u64(3);
        let schedule = [
            Duration::from_secs(10),
            Duration::from_secs(1_000),
            Duration::from_secs(100_000),
        ];
        for (k, delay) in (1..).zip(schedule) {
            let next = next_attempt(&schedule, k, None, &mut rng).unwrap();
            assert!(
                next >= delay.mul_f64(0.8) && next <= delay.mul_f64(1.2),
                "after attempt {k}: {next:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_spreads_across_it() {
        let mut rng = StdRng::seed_from_u64(42);
        let delay = Duration::from_secs(300);
        let (low, high) = (delay.mul_f64(0.8), delay.mul_f64(1.2));
        let samples: Vec<Duration> = (0..10_000)
            .map(|_| next_attempt(&[delay], 1, None, &mut rng).unwrap())
            .collect();
        assert!(samples.iter().all(|d| (low..=high).contains(d)));
        // Spread, not a constant: both ends of the range are reached closely.
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*min < delay.mul_f64(0.81), "{min:?}");
        assert!(*max > delay.mul_f64(1.19), "{max:?}");
        let below = samples.iter().filter(|d| **d < delay).count();
        assert!((4_000..6_000).contains(&below), "{below} of 10000 below");
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_schedule() {
        let mut rng = StdRng::seed_from_u64(4);
        let schedule = [Duration::from_secs(5)];
        let asked = Duration::from_secs(120);
        assert_eq!(
            next_attempt(&schedule, 1, Some(asked), &mut rng),
            Some(asked)
        );
    }

    #[test]
    fn a_shorter_retry_after_does_not_shorten_the_schedule() {
        let mut rng = StdRng::seed_from_u64(5);
        let delay = Duration::from_secs(600);
        let next = next_attempt(&[delay], 1, Some(Duration::from_secs(1)), &mut rng).unwrap();
        assert!(next >= delay.mul_f64(0.8), "{next:?}");
    }

    #[test]
    fn retry_after_in_the_schedule_is_capped_at_six_hours() {
        let mut rng = StdRng::seed_from_u64(6);
        let schedule = [Duration::from_secs(5)];
        assert_eq!(
            next_attempt(
                &schedule,
                1,
                Some(Duration::from_secs(7 * 86_400)),
                &mut rng
            ),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_never_revives_an_exhausted_schedule() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            next_attempt(
                &[Duration::from_secs(5)],
                2,
                Some(Duration::from_secs(60)),
                &mut rng
            ),
            None
        );
    }

    #[test]
    fn an_enormous_schedule_entry_does_not_panic() {
        let mut rng = StdRng::seed_from_u64(8);
        assert!(next_attempt(&[Duration::MAX], 1, None, &mut rng).is_some());
    }
}

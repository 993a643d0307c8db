//! What becomes of the deliveries a request carried once it returned (SPEC §4): delivered,
//! retried at a time on the schedule, dead and why, and what the subscription's gate learns
//! (the breaker, a slow-down, a 410). Pure: the clock and the jitter's seed come in.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::gate::{Health, News};
use super::policy::{self, Effect, Outcome, Verdict};
use crate::outbox::queue::Settled;

/// The longest wait settled: configured durations beyond it (a retry in a thousand years)
/// are cut to it, so that adding them to a point in time cannot overflow and the time still
/// fits a Postgres `timestamptz`.
pub const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long a slow-down lasts when neither `Retry-After` nor the schedule says (a probe
/// answered 429 without the header): as long as an idle worker waits between looks.
pub const SLOW_DOWN_WITHOUT_HINT: Duration = Duration::from_secs(1);

/// A request that returned, as far as settling it goes.
#[derive(Debug, Clone, Copy)]
pub struct Returned<'a> {
    /// What its response means.
    pub verdict: Verdict,
    /// Whether a response (a status) arrived at all.
    pub answered: bool,
    /// Whether it was the breaker's probe (a failure costs no attempt).
    pub probe: bool,
    /// Attempts made so far by each delivery it carried, before this one.
    pub attempts_made: &'a [u32],
}

/// Why a delivery settled as dead is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The receiver answered a status in `dead_on_status`.
    Refused,
    /// It could not be sent, and never will be (see `sender::send`).
    Unsendable,
    /// The last scheduled attempt failed.
    Exhausted,
}

/// What becomes of a returned request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Each carried delivery's new state, in the order carried.
    pub deliveries: Vec<Settled>,
    /// Why those settled as [`Settled::Dead`] are dead.
    pub dead_reason: DeadReason,
    /// What the subscription's gate learns.
    pub gate: News,
    /// How long the receiver asked the subscription to slow down for (the gate's
    /// `slow_down_until` is `now` plus it).
    pub slow_down: Option<Duration>,
    /// 410 Gone: the subscription is to be deactivated.
    pub deactivate: bool,
    /// When the soonest retry scheduled falls due.
    pub earliest_due: Option<Instant>,
}

/// Settles a returned request under `schedule` (the subscription's `retry_schedule`) at
/// `now` (`wall` on the clock the outbox stores). One jitter, from `seed`, serves every
/// delivery of the request: those of a batch stay due together and the batch goes again
/// whole.
pub fn settle(
    returned: &Returned,
    schedule: &[Duration],
    now: Instant,
    wall: SystemTime,
    seed: u64,
) -> Settlement {
    let verdict = returned.verdict;
    let carried = returned.attempts_made.len();
    let mut settlement = Settlement {
        deliveries: Vec::with_capacity(carried),
        dead_reason: match (verdict.outcome, returned.answered) {
            (Outcome::Dead, true) => DeadReason::Refused,
            (Outcome::Dead, false) => DeadReason::Unsendable,
            _ => DeadReason::Exhausted,
        },
        gate: News::default(),
        slow_down: None,
        deactivate: false,
        earliest_due: None,
    };
    match (verdict.outcome, verdict.effect) {
        (Outcome::Delivered, _) => {
            settlement.gate.health = Some(Health::Up);
            settlement.deliveries = vec![Settled::Delivered; carried];
        }
        (Outcome::Dead, _) => {
            // The receiver answered, and said the data is wrong: it is up, and sending this
            // again would not help. Without a status nothing was sent, and the breaker
            // learns nothing.
            if returned.answered {
                settlement.gate.health = Some(Health::Up);
            }
            settlement.deliveries = vec![Settled::Dead; carried];
        }
        (Outcome::Retry, Effect::Deactivate) => {
            // Kept pending, due at once: they go when the subscription is switched back on.
            // The breaker learns nothing: the receiver is there, and said to stop.
            settlement.deactivate = true;
            settlement.deliveries = vec![Settled::Retry(wall); carried];
        }
        (Outcome::Retry, effect) => {
            settlement.gate.health = Some(Health::Down);
            let after = verdict.retry_after;
            let rng = StdRng::seed_from_u64(seed);
            let mut first_delay = None;
            for &made in returned.attempts_made {
                if returned.probe {
                    settlement.deliveries.push(Settled::Released);
                    continue;
                }
                let next = policy::next_attempt(schedule, made + 1, after, &mut rng.clone());
                settlement.deliveries.push(match next {
                    Some(delay) => {
                        let delay = delay.min(LONGEST_WAIT);
                        first_delay.get_or_insert(delay);
                        let due = now + delay;
                        settlement.earliest_due =
                            Some(settlement.earliest_due.map_or(due, |t| t.min(due)));
                        Settled::Retry(wall + delay)
                    }
                    None => Settled::Dead,
                });
            }
            if effect == Effect::SlowDown {
                let pause = after.or(first_delay).unwrap_or(SLOW_DOWN_WITHOUT_HINT);
                settlement.slow_down = Some(pause);
                settlement.gate.slow_down_until = Some(now + pause);
            }
        }
    }
    settlement
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const SCHEDULE: [Duration; 3] = [
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(600),
    ];

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_772_366_400)
    }

    fn settle_one(verdict: Verdict, answered: bool, probe: bool, made: u32) -> Settlement {
        let returned = Returned {
            verdict,
            answered,
            probe,
            attempts_made: &[made],
        };
        settle(&returned, &SCHEDULE, Instant::now(), wall(), 1)
    }

    /// What a settled delivery is, without the jitter: `Retry(n)` is due about `n` seconds on.
    #[derive(Debug, PartialEq)]
    enum Is {
        Delivered,
        Retry(u64),
        RetryNow,
        Released,
        Dead(DeadReason),
    }

    fn is(settlement: &Settlement) -> Is {
        match settlement.deliveries[..] {
            [Settled::Delivered] => Is::Delivered,
            [Settled::Retry(at)] if at == wall() => Is::RetryNow,
            [Settled::Retry(at)] => {
                let wait = at.duration_since(wall()).unwrap().as_secs_f64();
                // Within the ±20 % jitter of a scheduled delay: name the delay.
                let named = SCHEDULE
                    .iter()
                    .chain(&[Duration::from_secs(120)])
                    .map(Duration::as_secs)
                    .find(|d| (*d as f64 * 0.8..=*d as f64 * 1.2).contains(&wait));
                Is::Retry(named.unwrap_or(0))
            }
            [Settled::Released] => Is::Released,
            [Settled::Dead] => Is::Dead(settlement.dead_reason),
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_verdict_settles_its_delivery_and_tells_the_gate() {
        let slow_120 = Verdict::slow_down(Some(Duration::from_secs(120)));
        // verdict, answered, probe, attempts made, delivery, breaker, deactivate
        type Case = (Verdict, bool, bool, u32, Is, Option<Health>, bool);
        let cases: [Case; 10] = [
            // verdict, answered, probe, attempts made, delivery, breaker, deactivate
            (
                Verdict::DELIVERED,
                true,
                false,
                0,
                Is::Delivered,
                Some(Health::Up),
                false,
            ),
            (
                Verdict::DELIVERED,
                true,
                true,
                3,
                Is::Delivered,
                Some(Health::Up),
                false,
            ),
            (
                Verdict::DEAD,
                true,
                false,
                0,
                Is::Dead(DeadReason::Refused),
                Some(Health::Up),
                false,
            ),
            (
                Verdict::DEAD,
                false,
                false,
                0,
                Is::Dead(DeadReason::Unsendable),
                None,
                false,
            ),
            (Verdict::GONE, true, false, 0, Is::RetryNow, None, true),
            (
                Verdict::ON_SCHEDULE,
                false,
                false,
                0,
                Is::Retry(10),
                Some(Health::Down),
                false,
            ),
            (
                Verdict::ON_SCHEDULE,
                true,
                false,
                2,
                Is::Retry(600),
                Some(Health::Down),
                false,
            ),
            (
                Verdict::ON_SCHEDULE,
                true,
                false,
                3,
                Is::Dead(DeadReason::Exhausted),
                Some(Health::Down),
                false,
            ),
            // A probe's failure costs no attempt.
            (
                Verdict::ON_SCHEDULE,
                false,
                true,
                3,
                Is::Released,
                Some(Health::Down),
                false,
            ),
            // A longer Retry-After wins over the schedule.
            (
                slow_120,
                true,
                false,
                0,
                Is::Retry(120),
                Some(Health::Down),
                false,
            ),
        ];
        for (n, (verdict, answered, probe, made, want, health, deactivate)) in
            cases.into_iter().enumerate()
        {
            let settled = settle_one(verdict, answered, probe, made);
            assert_eq!(is(&settled), want, "case {n}");
            assert_eq!(settled.gate.health, health, "case {n}");
            assert_eq!(settled.deactivate, deactivate, "case {n}");
        }
    }

    #[test]
    fn the_retry_schedule_spaces_the_attempts_then_the_delivery_is_dead() {
        let cases = [
            (0, Is::Retry(10)),
            (1, Is::Retry(60)),
            (2, Is::Retry(600)),
            (3, Is::Dead(DeadReason::Exhausted)),
            (u32::MAX - 1, Is::Dead(DeadReason::Exhausted)),
        ];
        for (made, want) in cases {
            let settled = settle_one(Verdict::ON_SCHEDULE, true, false, made);
            assert_eq!(is(&settled), want, "after {made} attempts");
            let due = settled.earliest_due.is_some();
            assert_eq!(due, matches!(want, Is::Retry(_)), "after {made} attempts");
        }
    }

    #[test]
    fn a_slow_down_pauses_for_retry_after_else_the_first_delay_else_a_second() {
        let now = Instant::now();
        let cases = [
            (
                Some(Duration::from_secs(300)),
                false,
                Duration::from_secs(300),
            ),
            (Some(Duration::ZERO), false, Duration::ZERO),
            // The probe retries nothing, so no delay: the fallback.
            (None, true, SLOW_DOWN_WITHOUT_HINT),
        ];
        for (after, probe, pause) in cases {
            let returned = Returned {
                verdict: Verdict::slow_down(after),
                answered: true,
                probe,
                attempts_made: &[0],
            };
            let settled = settle(&returned, &SCHEDULE, now, wall(), 7);
            assert_eq!(settled.slow_down, Some(pause), "{after:?}");
            assert_eq!(settled.gate.slow_down_until, Some(now + pause), "{after:?}");
        }
        // Without Retry-After the schedule's (jittered) delay is the pause.
        let settled = settle_one(Verdict::slow_down(None), true, false, 0);
        let pause = settled.slow_down.unwrap();
        assert!((8..=12).contains(&pause.as_secs()), "{pause:?}");
        let plain = settle_one(Verdict::ON_SCHEDULE, true, false, 0);
        assert_eq!((plain.slow_down, plain.gate.slow_down_until), (None, None));
    }

    #[test]
    fn the_deliveries_of_one_request_fall_due_together() {
        let now = Instant::now();
        let returned = Returned {
            verdict: Verdict::ON_SCHEDULE,
            answered: false,
            probe: false,
            attempts_made: &[0, 0, 0, 1],
        };
        let settled = settle(&returned, &SCHEDULE, now, wall(), 42);
        let [Settled::Retry(a), Settled::Retry(b), Settled::Retry(c), Settled::Retry(d)] =
            settled.deliveries[..]
        else {
            panic!("{:?}", settled.deliveries);
        };
        assert!(a == b && b == c, "one jitter for the request");
        assert!(d > a, "a delivery further along the schedule waits longer");
        let soonest = a.duration_since(wall()).unwrap();
        assert_eq!(settled.earliest_due, Some(now + soonest));
    }

    #[test]
    fn a_delay_of_a_thousand_years_is_cut_to_a_hundred() {
        let returned = Returned {
            verdict: Verdict::ON_SCHEDULE,
            answered: false,
            probe: false,
            attempts_made: &[0],
        };
        let schedule = [Duration::from_secs(1_000 * 365 * 24 * 3600)];
        let now = Instant::now();
        let settled = settle(&returned, &schedule, now, wall(), 3);
        assert_eq!(
            settled.deliveries,
            vec![Settled::Retry(wall() + LONGEST_WAIT)]
        );
        assert_eq!(settled.earliest_due, Some(now + LONGEST_WAIT));
    }
}

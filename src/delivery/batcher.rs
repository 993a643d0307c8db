//! Batch mode (SPEC §4 `batch`): cutting claimed deliveries into batches of `max_events`
//! that keep a key's events in order, the batch being gathered until it is full or has
//! waited `max_wait`, and what a batch's body is. Pure: time comes in as `now`, and leases
//! and request slots stay the worker's.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::outbox::queue::Claimed;

/// Claimed deliveries cut into batches (see [`cut`]).
#[derive(Debug, Default)]
pub struct Cut {
    /// Batches of `max_events`, to send now.
    pub full: Vec<Vec<Claimed>>,
    /// The last batch, when it is short: to gather until it is full or has waited enough.
    pub partial: Option<Vec<Claimed>>,
    /// Deliveries of keys that already have events in a batch: to give back to the queue.
    pub held_back: Vec<i64>,
}

/// Cuts claimed deliveries, in event order, into batches of `max_events` (see [`split`]);
/// only the last can be short, and it is [`Cut::partial`].
pub fn cut(claimed: Vec<Claimed>, max_events: usize, by_key: bool) -> Cut {
    let (mut full, held_back) = split(claimed, max_events, by_key);
    let partial = match full.last() {
        Some(last) if last.len() < max_events => full.pop(),
        _ => None,
    };
    Cut {
        full,
        partial,
        held_back,
    }
}

/// Cuts claimed deliveries, in event order, into batches of `max_events`. With
/// `by_key` (`ordering = "key"`), a key's events must not go in two batches at once (the later
/// batch could arrive first): those after a key's first batch are held back, to be
/// given back to the queue.
pub fn split(
    claimed: Vec<Claimed>,
    max_events: usize,
    by_key: bool,
) -> (Vec<Vec<Claimed>>, Vec<i64>) {
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

/// The body of a batch: the events' stored bytes as one JSON array.
pub fn array(rows: &[Claimed]) -> Vec<u8> {
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

/// A subscription's batch being gathered, and what its claims have learnt about the queue.
#[derive(Debug, Default)]
pub struct Batcher {
    /// The batch being gathered, leased.
    gathering: Vec<Claimed>,
    /// When it goes out however short it is: `max_wait` after its first claim.
    until: Option<Instant>,
    /// Until when no failed batch of this subscription can be due, as far as this worker
    /// knows: its own failures and due retries clear it, and what other processes do
    /// (`walhook replay`, another instance's failures) is seen within the poll. Spares a
    /// claim per batch, which cost as much as the new batch's claim.
    no_failed_batch_until: Option<Instant>,
    /// Until when batch mode claims one batch at a time, because a claim of several found
    /// keys with events for more than one batch.
    hot_keys_until: Option<Instant>,
}

impl Batcher {
    /// Whether a batch is being gathered.
    pub fn is_gathering(&self) -> bool {
        !self.gathering.is_empty()
    }

    /// How many more deliveries the batch being gathered takes.
    pub fn room(&self, max_events: usize) -> usize {
        max_events.saturating_sub(self.gathering.len())
    }

    /// Starts gathering `batch`, to go out at `until` at the latest.
    pub fn gather(&mut self, batch: Vec<Claimed>, until: Instant) {
        self.gathering = batch;
        self.until = Some(until);
    }

    /// Adds deliveries claimed for the batch being gathered.
    pub fn top_up(&mut self, rows: Vec<Claimed>) {
        self.gathering.extend(rows);
    }

    /// Whether the batch being gathered is full or has waited long enough.
    pub fn ready(&self, max_events: usize, now: Instant) -> bool {
        !self.gathering.is_empty()
            && (self.gathering.len() >= max_events || self.until.is_some_and(|t| now >= t))
    }

    /// Takes the batch gathered, at most `max_events` of it, and the ids of the rest (left
    /// over from a larger `max_events` before a config edit), to give back.
    pub fn take(&mut self, max_events: usize) -> (Vec<Claimed>, Vec<i64>) {
        let mut batch = std::mem::take(&mut self.gathering);
        let rest = batch.split_off(batch.len().min(max_events));
        self.until = None;
        (batch, rest.iter().map(|c| c.id).collect())
    }

    /// Ends gathering; returns the ids gathered, to give back to the queue.
    pub fn give_back(&mut self) -> Vec<i64> {
        self.until = None;
        self.gathering.drain(..).map(|c| c.id).collect()
    }

    /// When the batch being gathered must go out.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// Whether a failed batch may be due at `now` (worth a claim).
    pub fn may_find_failed_batch(&self, now: Instant) -> bool {
        self.no_failed_batch_until.is_none_or(|t| now >= t)
    }

    /// A claim found no failed batch due: none will be until `until`, unless
    /// [`Batcher::failed_batch_may_be_due`] says otherwise first.
    pub fn no_failed_batch_until(&mut self, until: Instant) {
        self.no_failed_batch_until = Some(until);
    }

    /// A request failed, a retry fell due or the config changed: look for failed batches
    /// again.
    pub fn failed_batch_may_be_due(&mut self) {
        self.no_failed_batch_until = None;
    }

    /// Whether keys with events for several batches were seen lately (claim one batch at a
    /// time).
    pub fn keys_are_hot(&self, now: Instant) -> bool {
        self.hot_keys_until.is_some_and(|t| now < t)
    }

    /// A claim held events back for their keys: claim one batch at a time until `until`.
    pub fn keys_hot_until(&mut self, until: Instant) {
        self.hot_keys_until = Some(until);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::outbox::queue::Trigger;

    fn row(id: i64, ordering_key: i64) -> Claimed {
        Claimed {
            id,
            event_seq: id,
            event_id: format!("evt_{id}"),
            body: format!("{{\"n\":{id}}}").into_bytes(),
            attempts: 0,
            trigger: Trigger::Scheduled,
            batch_id: None,
            committed_at: SystemTime::UNIX_EPOCH,
            key: String::new(),
            ordering_key,
            target: None,
        }
    }

    fn rows(keys: &[(i64, i64)]) -> Vec<Claimed> {
        keys.iter().map(|&(id, key)| row(id, key)).collect()
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

    #[test]
    fn cut_sends_full_batches_gathers_a_short_last_one_and_holds_back_hot_keys() {
        type Case = (
            &'static [(i64, i64)],
            usize,
            bool,
            Vec<Vec<i64>>,
            Option<Vec<i64>>,
            Vec<i64>,
        );
        let cases: Vec<Case> = vec![
            // (id, key) claimed, max_events, by key, full, partial, held back
            (&[], 3, false, vec![], None, vec![]),
            (&[(1, 1)], 3, false, vec![], Some(vec![1]), vec![]),
            (
                &[(1, 1), (2, 2), (3, 3)],
                3,
                false,
                vec![vec![1, 2, 3]],
                None,
                vec![],
            ),
            (
                &[(1, 1), (2, 2), (3, 3), (4, 4)],
                2,
                false,
                vec![vec![1, 2], vec![3, 4]],
                None,
                vec![],
            ),
            (
                &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)],
                2,
                false,
                vec![vec![1, 2], vec![3, 4]],
                Some(vec![5]),
                vec![],
            ),
            // Key 1's third event would start a second batch of key 1: held back.
            (
                &[(1, 1), (2, 1), (3, 1), (4, 2)],
                2,
                true,
                vec![vec![1, 2]],
                Some(vec![4]),
                vec![3],
            ),
            (
                &[(1, 1), (2, 1), (3, 1), (4, 2)],
                2,
                false,
                vec![vec![1, 2], vec![3, 4]],
                None,
                vec![],
            ),
            (
                &[(1, 7), (2, 7), (3, 7)],
                1,
                true,
                vec![vec![1]],
                None,
                vec![2, 3],
            ),
        ];
        for (n, (claimed, max_events, by_key, full, partial, held_back)) in
            cases.into_iter().enumerate()
        {
            let cut = cut(rows(claimed), max_events, by_key);
            assert_eq!(ids(&cut.full), full, "case {n}");
            assert_eq!(
                cut.partial.as_deref().map(|b| ids(&[b.to_vec()]).remove(0)),
                partial,
                "case {n}"
            );
            assert_eq!(cut.held_back, held_back, "case {n}");
        }
    }

    #[test]
    fn a_gathered_batch_is_ready_when_full_or_when_its_wait_is_over() {
        let start = Instant::now();
        let s = |secs| start + Duration::from_secs(secs);
        // gathered, max_events, now (s after start; the wait ends at 5 s), ready
        let cases = [
            (0, 3, 0, false),
            (0, 3, 9, false),
            (1, 3, 0, false),
            (2, 3, 4, false),
            (2, 3, 5, true),
            (3, 3, 0, true),
            (4, 3, 0, true),
        ];
        for (gathered, max_events, now, ready) in cases {
            let mut batcher = Batcher::default();
            let first: Vec<(i64, i64)> = (1..=gathered).map(|id| (id, id)).collect();
            if gathered > 0 {
                batcher.gather(rows(&first), s(5));
            }
            assert_eq!(
                batcher.ready(max_events, s(now)),
                ready,
                "{gathered} of {max_events} at {now} s"
            );
        }
    }

    #[test]
    fn a_gathered_batch_is_topped_up_then_taken_whole_or_cut_to_max_events() {
        let start = Instant::now();
        let mut batcher = Batcher::default();
        batcher.gather(rows(&[(1, 1), (2, 2)]), start);
        assert_eq!(batcher.room(4), 2);
        batcher.top_up(rows(&[(3, 3), (4, 4), (5, 5)]));
        assert_eq!(batcher.room(4), 0);
        // max_events lowered from 5 to 3 by a config edit: the rest goes back.
        let (batch, rest) = batcher.take(3);
        assert_eq!(ids(&[batch]), vec![vec![1, 2, 3]]);
        assert_eq!(rest, vec![4, 5]);
        assert!(!batcher.is_gathering());
        assert_eq!(batcher.deadline(), None);
        batcher.gather(rows(&[(6, 6)]), start);
        assert_eq!(batcher.give_back(), vec![6]);
        assert_eq!((batcher.is_gathering(), batcher.deadline()), (false, None));
    }

    #[test]
    fn what_a_claim_learnt_about_failed_batches_and_hot_keys_lasts_until_its_time() {
        let start = Instant::now();
        let s = |secs| start + Duration::from_secs(secs);
        let mut batcher = Batcher::default();
        assert!(batcher.may_find_failed_batch(s(0)));
        batcher.no_failed_batch_until(s(1));
        assert!(!batcher.may_find_failed_batch(s(0)));
        assert!(batcher.may_find_failed_batch(s(1)));
        batcher.failed_batch_may_be_due();
        assert!(batcher.may_find_failed_batch(s(0)));
        assert!(!batcher.keys_are_hot(s(0)));
        batcher.keys_hot_until(s(1));
        assert!(batcher.keys_are_hot(s(0)) && !batcher.keys_are_hot(s(1)));
    }

    #[test]
    fn the_body_of_a_batch_is_a_json_array_of_the_stored_events() {
        assert_eq!(array(&[]), b"[]");
        assert_eq!(array(&rows(&[(1, 1)])), br#"[{"n":1}]"#);
        assert_eq!(array(&rows(&[(1, 1), (2, 2)])), br#"[{"n":1},{"n":2}]"#);
    }
}

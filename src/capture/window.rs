//! Backfill windows (the DBLog algorithm, SPEC §3b). The backfill task announces a chunk
//! read, writes its low watermark, reads the rows, hands them over and writes its high
//! watermark. Between the two marks capture notes the key of every changed row of that
//! table; at the high mark the chunk's rows are emitted except the ones noted, because the
//! change event already in the stream carries a value at least as new as the one read.
//!
//! Beyond the window, capture also notes the keys whose change events went to the
//! backfill's subscription since the backfill's first announcement: a read of such a key
//! would arrive after a change of it, and the change already told the receiver the row
//! (its `values` are the whole row). So per key a read event never follows a change event.
//!
//! This is the pure part: no I/O, `Windows` is driven by the capture session and tested
//! table by table below.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::change::{Cell, RowChange};

/// A chunk read about to start: which table, keyed by which columns.
#[derive(Debug)]
pub struct Announce {
    /// Names this read; the watermarks carry it.
    pub token: String,
    /// The backfill's number.
    pub backfill: i64,
    /// The subscription the read events go to.
    pub subscription: Arc<str>,
    /// The table's OID.
    pub table: u32,
    /// The object's key columns, in key order.
    pub key: Vec<String>,
}

/// The rows of one chunk read, waiting for its high watermark.
#[derive(Debug)]
pub struct Chunk {
    /// The read, as announced.
    pub token: String,
    /// The backfill's number.
    pub backfill: i64,
    /// The chunk's number in its backfill: the chunks committed before it.
    pub chunk: i64,
    /// The subscription the read events go to.
    pub subscription: Arc<str>,
    /// The rows, as `read` changes, in key order.
    pub rows: Vec<RowChange>,
    /// The key of the last row (a JSON array of text forms), recorded as the progress.
    pub last_key: String,
    /// When it was read, µs since 2000-01-01 UTC.
    pub time: i64,
    /// Answered once the chunk is committed to the outbox; dropped when it never will be
    /// (the window was incomplete, the session ended): then the task reads it again.
    pub done: oneshot::Sender<()>,
}

/// What the backfill task tells the capture session.
#[derive(Debug)]
pub enum ToCapture {
    /// A read will start: watch for its low mark.
    Announce(Announce),
    /// A read's rows.
    Chunk(Chunk),
    /// The task gave up on this read (it waited too long): forget it.
    Forget(String),
    /// The backfill ended (done, cancelled, failed): stop noting its keys.
    End(i64),
}

/// A chunk whose high watermark was seen: the rows to emit.
#[derive(Debug)]
pub struct Ready {
    /// The chunk, its rows not yet filtered.
    pub chunk: Chunk,
    /// Indexes into `chunk.rows` of the rows to emit, in key order.
    pub keep: Vec<usize>,
}

#[derive(Debug)]
struct Open {
    table: u32,
    key: Vec<String>,
    /// Keys of rows of `table` changed since the low mark.
    changed: HashSet<String>,
    /// A change whose key the WAL did not carry: no row of this chunk can be trusted.
    unsure: bool,
}

/// A running backfill: the keys of its table whose changes went to its subscription.
#[derive(Debug)]
struct Tracked {
    subscription: Arc<str>,
    table: u32,
    key: Vec<String>,
    sent: HashSet<String>,
}

/// The announced, open and handed-over chunk reads of one capture session.
#[derive(Debug, Default)]
pub struct Windows {
    announced: HashMap<String, Announce>,
    open: HashMap<String, Open>,
    chunks: HashMap<String, Chunk>,
    tracked: HashMap<i64, Tracked>,
}

impl Windows {
    /// No window: nothing to note.
    pub fn new() -> Windows {
        Windows::default()
    }

    /// Takes a message of the backfill task.
    pub fn receive(&mut self, message: ToCapture) {
        match message {
            ToCapture::Announce(announce) => {
                self.tracked
                    .entry(announce.backfill)
                    .or_insert_with(|| Tracked {
                        subscription: announce.subscription.clone(),
                        table: announce.table,
                        key: announce.key.clone(),
                        sent: HashSet::new(),
                    });
                self.announced.insert(announce.token.clone(), announce);
            }
            ToCapture::End(backfill) => {
                self.tracked.remove(&backfill);
            }
            ToCapture::Chunk(chunk) => {
                self.chunks.insert(chunk.token.clone(), chunk);
            }
            ToCapture::Forget(token) => {
                self.announced.remove(&token);
                self.open.remove(&token);
                self.chunks.remove(&token);
            }
        }
    }

    /// A low watermark: the announced read's window opens. Unknown tokens (a read from
    /// before a restart, another process's) are ignored.
    pub fn low(&mut self, token: &str) {
        if let Some(announce) = self.announced.remove(token) {
            self.open.insert(
                announce.token,
                Open {
                    table: announce.table,
                    key: announce.key,
                    changed: HashSet::new(),
                    unsure: false,
                },
            );
        }
    }

    /// Whether any window is open (else [`Windows::saw`] need not be called).
    pub fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Whether any backfill runs (else [`Windows::sent`] need not be called).
    pub fn tracking(&self) -> bool {
        !self.tracked.is_empty()
    }

    /// A change went to these subscriptions: a later read of its key for one of them
    /// would follow it, so it will not be sent.
    pub fn sent<'a>(
        &mut self,
        change: &RowChange,
        subscriptions: impl Iterator<Item = &'a str> + Clone,
    ) {
        for tracked in self.tracked.values_mut() {
            if tracked.table != change.relation.oid
                || !subscriptions.clone().any(|s| s == &*tracked.subscription)
            {
                continue;
            }
            for image in [change.new.as_deref(), change.old.as_deref()]
                .into_iter()
                .flatten()
            {
                if let Some(key) = key_of(change, image, &tracked.key) {
                    tracked.sent.insert(key);
                }
            }
        }
    }

    /// A change in the stream: notes its row's key (both keys, when an update changed it)
    /// in every open window on its table.
    pub fn saw(&mut self, change: &RowChange) {
        for window in self.open.values_mut() {
            if window.table != change.relation.oid {
                continue;
            }
            let images = [change.new.as_deref(), change.old.as_deref()];
            for image in images.into_iter().flatten() {
                match key_of(change, image, &window.key) {
                    Some(key) => {
                        window.changed.insert(key);
                    }
                    // An old row without the object's key (REPLICA IDENTITY DEFAULT and a key
                    // that is not the primary key): which row it was cannot be told.
                    None => window.unsure = true,
                }
            }
        }
    }

    /// A high watermark: the chunk's rows to emit, or `None` when this read cannot be
    /// trusted (its low mark was not seen in this session, or a change's key was not
    /// known): its chunk is dropped, which tells the task to read it again.
    pub fn high(&mut self, token: &str) -> Option<Ready> {
        let window = self.open.remove(token);
        let chunk = self.chunks.remove(token)?;
        let window = window.filter(|w| !w.unsure)?;
        let sent = self.tracked.get(&chunk.backfill).map(|t| &t.sent);
        let keep = chunk
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| match key_of(row, row.current(), &window.key) {
                Some(key) => {
                    !window.changed.contains(&key) && !sent.is_some_and(|s| s.contains(&key))
                }
                None => false,
            })
            .map(|(i, _)| i)
            .collect();
        Some(Ready { chunk, keep })
    }
}

/// The row's key in `image` as JSON text, by column name (a chunk's rows and the stream's
/// changes may come from different descriptions of the table); `None` when a key value is
/// not known.
fn key_of(change: &RowChange, image: &[Cell], key: &[String]) -> Option<String> {
    let mut values = Vec::with_capacity(key.len());
    for name in key {
        let index = change.relation.column_index(name)?;
        values.push(image.get(index)?.known()?.clone());
    }
    Some(Value::Array(values).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::relation::{Column, Identity, Relation};
    use crate::config::Operation;
    use crate::source::types::TypeKind;

    fn relation(oid: u32) -> Arc<Relation> {
        let column = |name: &str| Column {
            name: name.into(),
            type_oid: 23,
            kind: TypeKind::Integer,
        };
        Arc::new(Relation {
            oid,
            schema: "public".into(),
            name: "stock".into(),
            columns: vec![column("id"), column("qty")],
            key: vec![0],
            identity: Identity::Key,
            identity_columns: vec![0],
        })
    }

    fn cells(id: Option<i64>, qty: Option<i64>) -> Vec<Cell> {
        [id, qty]
            .into_iter()
            .map(|v| v.map_or(Cell::Unknown, |v| Cell::Value(v.into())))
            .collect()
    }

    fn change(oid: u32, operation: Operation, new: Option<i64>, old: Option<i64>) -> RowChange {
        RowChange {
            relation: relation(oid),
            operation,
            position: 0,
            new: new.map(|id| cells(Some(id), Some(1))),
            old: old.map(|id| cells(Some(id), None)),
        }
    }

    fn read(id: i64) -> RowChange {
        change(1, Operation::Read, Some(id), None)
    }

    fn announce(windows: &mut Windows, token: &str) {
        windows.receive(ToCapture::Announce(Announce {
            token: token.into(),
            backfill: 1,
            subscription: "sync".into(),
            table: 1,
            key: vec!["id".into()],
        }));
    }

    fn hand_over(windows: &mut Windows, token: &str, ids: &[i64]) -> oneshot::Receiver<()> {
        let (done, answer) = oneshot::channel();
        windows.receive(ToCapture::Chunk(Chunk {
            token: token.into(),
            backfill: 1,
            chunk: 0,
            subscription: "sync".into(),
            rows: ids.iter().map(|&id| read(id)).collect(),
            last_key: format!("[\"{}\"]", ids.last().unwrap()),
            time: 0,
            done,
        }));
        answer
    }

    /// One step of a session as the WAL and the task drive it.
    enum Step {
        Low,
        Change(RowChange),
        /// A change whose event went to the backfill's subscription.
        Sent(RowChange),
        Chunk(&'static [i64]),
        High,
    }

    #[test]
    fn a_chunk_keeps_the_rows_no_change_in_its_window_touched() {
        use Step::*;
        // (story, steps, the ids kept or `None` for "read again")
        type Case = (&'static str, Vec<Step>, Option<Vec<i64>>);
        let cases: Vec<Case> = vec![
            (
                "no change: every row",
                vec![Low, Chunk(&[1, 2, 3]), High],
                Some(vec![1, 2, 3]),
            ),
            (
                "an update in the window drops its row",
                vec![
                    Low,
                    Change(change(1, Operation::Update, Some(2), None)),
                    Chunk(&[1, 2, 3]),
                    High,
                ],
                Some(vec![1, 3]),
            ),
            (
                "an insert and a delete in the window drop theirs",
                vec![
                    Low,
                    Change(change(1, Operation::Create, Some(3), None)),
                    Change(change(1, Operation::Delete, None, Some(1))),
                    Chunk(&[1, 2, 3]),
                    High,
                ],
                Some(vec![2]),
            ),
            (
                "an update that moved a key drops both keys",
                vec![
                    Low,
                    Change(change(1, Operation::Update, Some(9), Some(2))),
                    Chunk(&[1, 2, 9]),
                    High,
                ],
                Some(vec![1]),
            ),
            (
                "a change of another table drops nothing",
                vec![
                    Low,
                    Change(change(2, Operation::Update, Some(2), None)),
                    Chunk(&[1, 2]),
                    High,
                ],
                Some(vec![1, 2]),
            ),
            (
                "a change sent to the subscription before the low mark drops its row",
                vec![
                    Sent(change(1, Operation::Update, Some(2), None)),
                    Low,
                    Chunk(&[1, 2]),
                    High,
                ],
                Some(vec![1]),
            ),
            (
                "a change before the low mark drops nothing",
                vec![
                    Change(change(1, Operation::Update, Some(2), None)),
                    Low,
                    Chunk(&[1, 2]),
                    High,
                ],
                Some(vec![1, 2]),
            ),
            (
                "a high mark without its low mark: read again",
                vec![Chunk(&[1, 2]), High],
                None,
            ),
            (
                "a delete whose key the WAL did not carry: read again",
                vec![
                    Low,
                    Change(RowChange {
                        old: Some(cells(None, None)),
                        ..change(1, Operation::Delete, None, Some(1))
                    }),
                    Chunk(&[1, 2]),
                    High,
                ],
                None,
            ),
        ];
        for (story, steps, expected) in cases {
            let mut windows = Windows::new();
            announce(&mut windows, "t");
            let mut answer = None;
            let mut kept = None;
            for step in steps {
                match step {
                    Low => windows.low("t"),
                    Change(change) => windows.saw(&change),
                    Sent(change) => {
                        windows.saw(&change);
                        windows.sent(&change, ["sync"].into_iter());
                    }
                    Chunk(ids) => answer = Some(hand_over(&mut windows, "t", ids)),
                    High => {
                        kept = windows.high("t").map(|ready| {
                            ready
                                .keep
                                .iter()
                                .map(|&i| ready.chunk.rows[i].current()[0].clone())
                                .collect::<Vec<_>>()
                        })
                    }
                }
            }
            let expected = expected.map(|ids| {
                ids.into_iter()
                    .map(|id| Cell::Value(id.into()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(kept, expected, "{story}");
            if expected.is_none() {
                // Dropped: the task hears it and reads the chunk again.
                let mut answer = answer.expect("a chunk was handed over");
                assert!(answer.try_recv().is_err(), "{story}");
            }
            assert!(!windows.any_open(), "{story}: the window closed");
        }
    }

    #[test]
    fn marks_of_a_read_nobody_announced_are_ignored() {
        let mut windows = Windows::new();
        windows.low("from-before-a-restart");
        assert!(!windows.any_open());
        assert!(windows.high("from-before-a-restart").is_none());
    }

    #[test]
    fn a_forgotten_read_leaves_nothing_behind() {
        let mut windows = Windows::new();
        announce(&mut windows, "t");
        windows.low("t");
        let _answer = hand_over(&mut windows, "t", &[1]);
        windows.receive(ToCapture::Forget("t".into()));
        assert!(!windows.any_open());
        assert!(windows.high("t").is_none());
    }
}

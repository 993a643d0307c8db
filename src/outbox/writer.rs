//! The outbox writer: events, their deliveries and the capture checkpoint, in one
//! transaction.
//!
//! Capture is exactly-once because the checkpoint (the last source commit LSN) commits
//! atomically with the rows of that commit, and the slot is acknowledged only afterwards:
//! after a crash, the source resends from the slot's position and every transaction at or
//! below the checkpoint is skipped. Rows are buffered up to a bound and then written into an
//! open transaction ("spilled"), so a transaction of a million rows streams through with
//! flat memory and still commits as one.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::backfill::{progress_sql, Progress};
use super::documents::{DocumentRead, DocumentState, Made};
use crate::capture::document::{Documents, Touch};
use crate::capture::matcher::{RoutedEvent, RECORDED_DEAD};
use crate::capture::Commit;
use crate::pg::Lsn;
use crate::pg::{quote_ident, quote_literal};

/// Rows buffered in memory before they are written into the open transaction.
pub const SPILL_ROWS: usize = 2_000;

/// An outbox write that failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A statement failed.
    #[error("outbox ({schema}): {what}: {source}")]
    Db {
        /// The outbox schema.
        schema: String,
        /// What was being written.
        what: &'static str,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// The checkpoint is not where this writer left it: another process wrote to the outbox
    /// for the same slot (a walhook that was still finishing when this one took over). The
    /// transaction is rolled back; a new session starts from the checkpoint as it is now.
    #[error(
        "outbox ({schema}): the checkpoint of slot {slot:?} moved behind this process's back \
         (expected {expected}); another walhook wrote to this outbox; nothing was written, \
         capture resumes from the new checkpoint"
    )]
    CheckpointMoved {
        /// The outbox schema.
        schema: String,
        /// The slot.
        slot: String,
        /// Where this writer last saw it.
        expected: String,
    },
    /// A backfill's progress is not where this chunk expected it: the chunk would count
    /// twice. Nothing was written; the session starts again and the backfill re-reads its
    /// progress.
    #[error(
        "outbox ({schema}): backfill {backfill} has not committed exactly {chunk} chunks; \
         nothing was written, the backfill resumes from its recorded progress"
    )]
    BackfillMoved {
        /// The outbox schema.
        schema: String,
        /// The backfill.
        backfill: i64,
        /// The chunk's number.
        chunk: i64,
    },
    /// A document's stored state could not be read: the outbox was changed by hand, or by
    /// a walhook that stores it differently.
    #[error(
        "outbox ({schema}): the stored state of object {object} cannot be read ({message}); \
         seed it again: delete its row from {schema}.document_seed and restart"
    )]
    State {
        /// The outbox schema.
        schema: String,
        /// The object.
        object: String,
        /// What is wrong with it.
        message: String,
    },
    /// The writer task is gone without saying why (it panicked or the runtime is stopping).
    #[error("outbox ({schema}): the outbox writer stopped")]
    WriterStopped {
        /// The outbox schema.
        schema: String,
    },
}

/// What one outbox commit wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Event rows.
    pub events: u64,
    /// Delivery rows.
    pub deliveries: u64,
    /// Deliveries per subscription: the dispatcher wakes these.
    pub subscriptions: BTreeMap<Arc<str>, u64>,
    /// Backfill chunks whose progress this commit recorded.
    pub backfilled: Vec<Progress>,
    /// Document events too big to send, by object name (recorded dead).
    pub oversized: BTreeMap<String, u64>,
}

/// The ordering key of an event: a stable 64-bit FNV-1a hash of its object and row key.
/// Stable across versions and processes, because it is stored.
pub fn ordering_key(object: &str, key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in object.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

#[derive(Default)]
struct Buffer {
    event_ids: Vec<String>,
    event_types: Vec<String>,
    objects: Vec<String>,
    keys: Vec<String>,
    bodies: Vec<Vec<u8>>,
    commit_lsns: Vec<String>,
    commit_times: Vec<i64>,
    ordering_keys: Vec<i64>,
    /// For each event, its own URL and method when its subscription routes per event.
    urls: Vec<Option<String>>,
    methods: Vec<Option<&'static str>>,
    /// For each event, `Some(true)` when its body still needs the templates' rendering.
    unrendered: Vec<Option<bool>>,
    /// Whether any event buffered has a target or needs rendering (the insert then writes
    /// those columns).
    routed: bool,
    /// For each event, the subscriptions that receive it.
    subscriptions: Vec<Vec<Arc<str>>>,
    /// For each event, the subscriptions it is recorded dead for, with the error.
    dead: Vec<Vec<(Arc<str>, String)>>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.event_ids.len()
    }

    fn clear(&mut self) {
        *self = Buffer::default();
    }
}

struct Statements {
    allocate: Statement,
    events: Statement,
    routed_events: Statement,
    deliveries: Statement,
    dead_deliveries: Statement,
    checkpoint: Statement,
    read_checkpoint: Statement,
    progress: Statement,
}

/// Writes captured events into the outbox.
pub struct OutboxWriter {
    client: tokio_postgres::Client,
    schema: String,
    slot: String,
    statements: Statements,
    /// The state of documents and keep_state objects.
    documents: DocumentState,
    buffer: Buffer,
    /// Backfill chunks to record with the next commit.
    progress: Vec<Progress>,
    in_transaction: bool,
    written: Written,
    /// The checkpoint as this writer last read or wrote it: a commit moves it only from
    /// there (compare-and-set), so two processes can never both commit the same source
    /// transactions.
    checkpoint: Option<Lsn>,
}

impl OutboxWriter {
    /// Prepares the writer's statements on `client` (a connection of its own: the writer
    /// opens and commits transactions on it).
    pub async fn new(
        client: tokio_postgres::Client,
        schema: &str,
        slot: &str,
    ) -> Result<Self, OutboxError> {
        let s = quote_ident(schema);
        let err = |what| {
            let schema = schema.to_owned();
            move |source| OutboxError::Db {
                schema,
                what,
                source,
            }
        };
        // The slot is acknowledged right after COMMIT returns, so COMMIT must mean "on disk":
        // with the server's synchronous_commit = off (common on busy ERP databases) a crash
        // could lose outbox rows the slot has already moved past.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(err("setting synchronous_commit"))?;
        // Most events do not route: they are inserted without the url and method columns
        // (NULL), so the common insert sends no arrays of NULLs.
        let events = |extra_columns: &str, extra_params: &str, extra_names: &str| {
            format!(
                "INSERT INTO {s}.event \
                   (seq, event_id, event_type, object, key, body, commit_lsn, committed_at\
                    {extra_columns}) \
                 SELECT seq, event_id, event_type, object, key, body, lsn::pg_lsn, \
                        timestamptz '2000-01-01 00:00:00+00' + micros * interval '1 microsecond'\
                        {extra_columns} \
                 FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::bytea[], $7::text[], $8::int8[]{extra_params}) \
                      AS t(seq, event_id, event_type, object, key, body, lsn, micros\
                           {extra_names})"
            )
        };
        let statements = Statements {
            allocate: client
                .prepare(&format!(
                    "SELECT nextval({}) FROM generate_series(1, $1::int8)",
                    quote_literal(&format!("{s}.event_seq"))
                ))
                .await
                .map_err(err("preparing the sequence query"))?,
            events: client
                .prepare(&events("", "", ""))
                .await
                .map_err(err("preparing the event insert"))?,
            routed_events: client
                .prepare(&events(
                    ", url, method, unrendered",
                    ", $9::text[], $10::text[], $11::bool[]",
                    ", url, method, unrendered",
                ))
                .await
                .map_err(err("preparing the event insert"))?,
            deliveries: client
                .prepare(&format!(
                    "INSERT INTO {s}.delivery (subscription, event_seq, ordering_key) \
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])"
                ))
                .await
                .map_err(err("preparing the delivery insert"))?,
            // Settled at once, so they hold no key back (a dead delivery never does) and
            // retention treats them like any other dead delivery.
            dead_deliveries: client
                .prepare(&format!(
                    "INSERT INTO {s}.delivery \
                       (subscription, event_seq, ordering_key, status, last_error, settled_at) \
                     SELECT subscription, seq, key, 'dead', error, now() \
                     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) \
                          AS t(subscription, seq, key, error)"
                ))
                .await
                .map_err(err("preparing the dead delivery insert"))?,
            checkpoint: client
                .prepare(&format!(
                    "INSERT INTO {s}.checkpoint AS c (slot, commit_lsn) \
                     VALUES ($1, $2::text::pg_lsn) \
                     ON CONFLICT (slot) DO UPDATE \
                     SET commit_lsn = excluded.commit_lsn, updated_at = now() \
                     WHERE c.commit_lsn = $3::text::pg_lsn"
                ))
                .await
                .map_err(err("preparing the checkpoint update"))?,
            read_checkpoint: client
                .prepare(&format!(
                    "SELECT commit_lsn::text FROM {s}.checkpoint WHERE slot = $1"
                ))
                .await
                .map_err(err("preparing the checkpoint query"))?,
            progress: client
                .prepare(&progress_sql(schema))
                .await
                .map_err(err("preparing the backfill progress update"))?,
        };
        let documents = DocumentState::new(&client, schema).await?;
        let mut writer = OutboxWriter {
            client,
            schema: schema.to_owned(),
            slot: slot.to_owned(),
            statements,
            documents,
            buffer: Buffer::default(),
            progress: Vec::new(),
            in_transaction: false,
            written: Written::default(),
            checkpoint: None,
        };
        writer.checkpoint = writer.read_checkpoint().await?;
        Ok(writer)
    }

    /// The last source commit whose events are in the outbox, if walhook ever wrote one:
    /// as read when the writer was made, then as this writer committed it.
    pub fn checkpoint(&self) -> Option<Lsn> {
        self.checkpoint
    }

    async fn read_checkpoint(&self) -> Result<Option<Lsn>, OutboxError> {
        let row = self
            .client
            .query_opt(&self.statements.read_checkpoint, &[&self.slot])
            .await
            .map_err(|source| self.error("reading the checkpoint", source))?;
        Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    /// Buffers one routed event of the given commit.
    pub fn add(&mut self, event: RoutedEvent, commit: Commit) {
        let b = &mut self.buffer;
        b.ordering_keys
            .push(ordering_key(&event.object, &event.key));
        b.event_ids.push(event.event_id);
        b.event_types.push(event.event_type);
        b.objects.push(event.object);
        b.keys.push(event.key);
        b.bodies.push(event.body);
        match event.target {
            Some(target) => {
                b.routed = true;
                b.urls.push(Some(target.url));
                b.methods.push(Some(target.method.as_str()));
            }
            None => {
                b.urls.push(None);
                b.methods.push(None);
            }
        }
        b.routed |= event.unrendered;
        b.unrendered.push(event.unrendered.then_some(true));
        b.commit_lsns.push(commit.lsn.to_string());
        b.commit_times.push(commit.time);
        b.subscriptions.push(event.subscriptions);
        b.dead.push(event.dead);
    }

    /// Records a backfill chunk's progress in the next commit, with its events.
    pub fn add_progress(&mut self, progress: Progress) {
        self.progress.push(progress);
    }

    /// Events buffered in memory, not yet written.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether anything is written or buffered but not committed.
    pub fn has_uncommitted(&self) -> bool {
        self.in_transaction
            || self.buffer.len() > 0
            || !self.progress.is_empty()
            || self.documents.in_transaction()
            || self.documents.unwritten()
    }

    /// The documents the next touches refer to (after a config edit).
    pub async fn set_documents(&mut self, documents: Arc<Documents>) -> Result<(), OutboxError> {
        self.documents.set_documents(&self.client, documents).await
    }

    /// Takes one change of a document's (or keep_state object's) row, of the source
    /// transaction committing at `commit`.
    pub async fn touch(&mut self, touch: Touch, commit: Commit) -> Result<(), OutboxError> {
        if self.documents.touch(touch, commit) {
            self.begin().await?;
            let mut made = Made::default();
            self.documents.apply(&self.client, &mut made).await?;
            self.take(made, commit).await?;
        }
        Ok(())
    }

    /// The source transaction committing at `commit` is complete: its touched documents
    /// become events.
    pub async fn end_transaction(&mut self, commit: Commit) -> Result<(), OutboxError> {
        if !self.documents.in_transaction() {
            return Ok(());
        }
        self.begin().await?;
        let mut made = Made::default();
        self.documents.end(&self.client, commit, &mut made).await?;
        self.take(made, commit).await
    }

    /// A backfill chunk of documents: their read events, from the state.
    pub async fn read_documents(
        &mut self,
        read: &DocumentRead,
        commit: Commit,
    ) -> Result<(), OutboxError> {
        self.begin().await?;
        self.documents.flush(&self.client).await?;
        let mut made = Made::default();
        self.documents.read(&self.client, read, &mut made).await?;
        self.take(made, commit).await
    }

    /// A TRUNCATE of `object`'s table `part` (0: its header): its kept rows of it go.
    pub async fn truncate_state(
        &mut self,
        object: &str,
        part: u16,
        commit: Commit,
    ) -> Result<(), OutboxError> {
        self.begin().await?;
        let mut made = Made::default();
        self.documents
            .truncate(&self.client, object, part, &mut made)
            .await?;
        self.take(made, commit).await
    }

    /// Buffers the events documents made, saying what could not be evaluated.
    async fn take(&mut self, made: Made, commit: Commit) -> Result<(), OutboxError> {
        for problem in &made.problems {
            problem.log(RECORDED_DEAD);
        }
        for (object, count) in made.oversized {
            *self.written.oversized.entry(object).or_default() += count;
        }
        for event in made.events {
            self.add(event, commit);
            if self.buffer.len() >= SPILL_ROWS {
                self.spill().await?;
            }
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), OutboxError> {
        if !self.in_transaction {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|source| self.error("beginning a transaction", source))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Writes the buffer into the open transaction (opening one if needed), without
    /// committing.
    pub async fn spill(&mut self) -> Result<(), OutboxError> {
        if self.buffer.len() == 0 {
            return Ok(());
        }
        self.begin().await?;
        let b = std::mem::take(&mut self.buffer);
        let n = b.len() as i64;
        let seqs: Vec<i64> = self
            .client
            .query(&self.statements.allocate, &[&n])
            .await
            .map_err(|source| self.error("allocating event numbers", source))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let params: [&(dyn ToSql + Sync); 8] = [
            &seqs,
            &b.event_ids,
            &b.event_types,
            &b.objects,
            &b.keys,
            &b.bodies,
            &b.commit_lsns,
            &b.commit_times,
        ];
        let inserted = if b.routed {
            let [p1, p2, p3, p4, p5, p6, p7, p8] = params;
            let routed: [&(dyn ToSql + Sync); 11] = [
                p1,
                p2,
                p3,
                p4,
                p5,
                p6,
                p7,
                p8,
                &b.urls,
                &b.methods,
                &b.unrendered,
            ];
            self.client
                .execute(&self.statements.routed_events, &routed)
                .await
        } else {
            self.client.execute(&self.statements.events, &params).await
        };
        inserted.map_err(|source| self.error("inserting events", source))?;
        let mut subscriptions: Vec<&str> = Vec::new();
        let mut delivery_seqs: Vec<i64> = Vec::new();
        let mut ordering_keys: Vec<i64> = Vec::new();
        for ((seq, subs), key) in seqs.iter().zip(&b.subscriptions).zip(&b.ordering_keys) {
            for sub in subs {
                subscriptions.push(sub);
                delivery_seqs.push(*seq);
                ordering_keys.push(*key);
                match self.written.subscriptions.get_mut(sub) {
                    Some(count) => *count += 1,
                    None => {
                        self.written.subscriptions.insert(sub.clone(), 1);
                    }
                }
            }
        }
        let deliveries = self
            .client
            .execute(
                &self.statements.deliveries,
                &[&subscriptions, &delivery_seqs, &ordering_keys],
            )
            .await
            .map_err(|source| self.error("inserting deliveries", source))?;
        self.written.events += seqs.len() as u64;
        self.written.deliveries += deliveries;
        if b.dead.iter().any(|dead| !dead.is_empty()) {
            let mut subscriptions: Vec<&str> = Vec::new();
            let mut dead_seqs: Vec<i64> = Vec::new();
            let mut ordering_keys: Vec<i64> = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            for ((seq, dead), key) in seqs.iter().zip(&b.dead).zip(&b.ordering_keys) {
                for (sub, error) in dead {
                    subscriptions.push(sub);
                    dead_seqs.push(*seq);
                    ordering_keys.push(*key);
                    errors.push(format!(
                        "failed at capture: {error} (replay once the config is fixed)"
                    ));
                }
            }
            self.written.deliveries += self
                .client
                .execute(
                    &self.statements.dead_deliveries,
                    &[&subscriptions, &dead_seqs, &ordering_keys, &errors],
                )
                .await
                .map_err(|source| self.error("inserting dead deliveries", source))?;
        }
        Ok(())
    }

    /// Writes what is buffered and the checkpoint `through` (a source commit LSN), and
    /// commits. Returns what this outbox transaction wrote.
    pub async fn commit(&mut self, through: Lsn) -> Result<Written, OutboxError> {
        self.spill().await?;
        self.begin().await?;
        self.documents.flush(&self.client).await?;
        for progress in std::mem::take(&mut self.progress) {
            let recorded = self
                .client
                .execute(
                    &self.statements.progress,
                    &[
                        &progress.backfill,
                        &progress.last_key,
                        &progress.rows,
                        &progress.chunk,
                    ],
                )
                .await
                .map_err(|source| self.error("recording a backfill's progress", source))?;
            if recorded != 1 {
                self.rollback().await?;
                return Err(OutboxError::BackfillMoved {
                    schema: self.schema.clone(),
                    backfill: progress.backfill,
                    chunk: progress.chunk,
                });
            }
            self.written.backfilled.push(progress);
        }
        let lsn = through.to_string();
        let expected = self.checkpoint.map(|c| c.to_string());
        let moved = self
            .client
            .execute(&self.statements.checkpoint, &[&self.slot, &lsn, &expected])
            .await
            .map_err(|source| self.error("updating the checkpoint", source))?;
        if moved != 1 {
            self.rollback().await?;
            return Err(OutboxError::CheckpointMoved {
                schema: self.schema.clone(),
                slot: self.slot.clone(),
                expected: expected.unwrap_or_else(|| "none".to_owned()),
            });
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|source| self.error("committing", source))?;
        self.in_transaction = false;
        self.checkpoint = Some(through);
        Ok(std::mem::take(&mut self.written))
    }

    /// Abandons what is buffered and rolls back the open transaction; the source will send
    /// those transactions again.
    pub async fn rollback(&mut self) -> Result<(), OutboxError> {
        self.buffer.clear();
        self.progress.clear();
        self.documents.rollback();
        self.written = Written::default();
        if self.in_transaction {
            self.in_transaction = false;
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|source| self.error("rolling back", source))?;
        }
        Ok(())
    }

    fn error(&self, what: &'static str, source: tokio_postgres::Error) -> OutboxError {
        OutboxError::Db {
            schema: self.schema.clone(),
            what,
            source,
        }
    }
}

//! One capture session: a replication connection feeding the outbox until it ends.
//!
//! Group commit: after a source commit, the session keeps taking items that are already
//! waiting (polling the reader without blocking) and commits the outbox when nothing more
//! is ready or the group is large. Under load many small source transactions share one
//! outbox transaction; when idle each commits at once, so latency stays low. The outbox
//! writer runs on its own task (`outbox::pipeline`): a group that is ready while the
//! previous one is still committing waits for it and keeps growing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::seed::{self, SeedFailure, Seeder, Seeds};
use super::startup::{self, StartupError};
use crate::capture::document::Documents;
use crate::capture::envelope::ReadOrigin;
use crate::capture::matcher::{Matcher, MatcherError, NameChange, RECORDED_DEAD};
use crate::capture::reader::{CaptureError, ReaderOptions};
use crate::capture::window::{Ready, ToCapture, Windows};
use crate::capture::{ChangeReader, Commit, Item, RowChange};
use crate::config::{Config, TableName};
use crate::delivery::DispatchHandle;
use crate::health::Health;
use crate::metrics::{ChangeLabels, Metrics, ObjectLabels, SourceTableLabels};
use crate::outbox::backfill::Progress;
use crate::outbox::documents::DocumentRead;
use crate::outbox::pipeline::{Committed, OutboxPipeline, MAX_COMMITS_IN_FLIGHT};
use crate::outbox::writer::{OutboxError, OutboxWriter, SPILL_ROWS};
use crate::pg::conninfo::ConnInfo;
use crate::pg::{self, Lsn};
use crate::source::watermark::Mark;

/// Source transactions that may share one outbox transaction.
const GROUP_TRANSACTIONS: usize = 1_000;

/// How a session ended without an error.
#[derive(Debug)]
pub(super) enum Ended {
    /// SIGTERM or SIGINT: the daemon stops.
    Signal,
    /// The server ended the stream (it is shutting down): reconnect.
    ServerClosed,
    /// A config edit added a document or changed what its state holds: the next session
    /// seeds it before it streams (at once, no backoff).
    Reseed,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading from the slot failed.
    #[error(transparent)]
    Capture(Box<CaptureError>),
    /// Writing the outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A connection could not be opened.
    #[error(transparent)]
    Connect(#[from] pg::ConnectError),
    /// The configured tables' OIDs could not be looked up.
    #[error("looking up the OIDs of the configured tables: {0}")]
    Bind(Box<StartupError>),
    /// Seeding document state failed.
    #[error(transparent)]
    Seed(Box<SeedFailure>),
    /// A document subscription cannot be evaluated.
    #[error(transparent)]
    Documents(MatcherError),
}

impl SessionError {
    /// Whether a new session may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Capture(e) => e.is_transient(),
            // A lost outbox connection or a serialisation failure: try again. A constraint
            // violation or missing table will repeat, but retrying is harmless and the log
            // says what is wrong.
            SessionError::Outbox(_) => true,
            SessionError::Connect(_) => true,
            SessionError::Bind(_) => true,
            SessionError::Seed(e) => e.is_transient(),
            SessionError::Documents(_) => false,
        }
    }
}

impl SessionError {
    /// Whether the slot is in use by another connection: after a takeover, the previous
    /// process's walsender may hold it for a moment longer.
    pub fn is_slot_busy(&self) -> bool {
        matches!(
            self,
            SessionError::Capture(e)
                if matches!(&**e, CaptureError::Replication(r) if r.code() == Some("55006"))
        )
    }
}

impl From<SeedFailure> for SessionError {
    fn from(e: SeedFailure) -> Self {
        SessionError::Seed(Box::new(e))
    }
}

impl From<CaptureError> for SessionError {
    fn from(e: CaptureError) -> Self {
        SessionError::Capture(Box::new(e))
    }
}

/// Where a session connects.
pub(super) struct Session<'a> {
    pub(super) source: &'a ConnInfo,
    pub(super) outbox: &'a ConnInfo,
    /// Told about new deliveries and config edits.
    pub(super) dispatch: &'a DispatchHandle,
    pub(super) metrics: &'a Arc<Metrics>,
    pub(super) health: &'a Health,
}

/// What reaches a session besides the WAL, kept across sessions.
pub(super) struct Inbox<'a> {
    /// Config edits, loaded and not yet validated.
    pub(super) reloads: &'a mut mpsc::Receiver<Config>,
    /// The backfill task's chunk reads.
    pub(super) chunks: &'a mut mpsc::Receiver<ToCapture>,
    /// Turns true on SIGTERM or SIGINT.
    pub(super) shutdown: &'a mut watch::Receiver<bool>,
}

/// A validated config edit waiting for a transaction boundary.
pub(super) struct Staged {
    config: Config,
    matcher: Matcher,
    documents: Documents,
}

/// The documents of a session: what their changes are applied to and from where.
struct DocumentCapture {
    documents: Arc<Documents>,
    seeds: Seeds,
    /// The open source transaction touched a document.
    touched: bool,
}

/// The backfill chunks of one session: their windows, and the ones written to the outbox
/// whose task waits to hear they are committed.
#[derive(Default)]
struct Backfills {
    windows: Windows,
    committing: HashMap<String, oneshot::Sender<()>>,
}

/// A source commit handled in memory (its events written or buffered) but not yet
/// committed to the outbox.
#[derive(Clone, Copy)]
struct Handled {
    commit_lsn: Lsn,
    end_lsn: Lsn,
}

impl Session<'_> {
    /// Runs until a signal, the end of the stream, or an error.
    pub(super) async fn run(
        self,
        matcher: &mut Matcher,
        config: &mut Config,
        staged: &mut Option<Staged>,
        inbox: Inbox<'_>,
        backoff: &mut Duration,
    ) -> Result<Ended, SessionError> {
        let Inbox {
            reloads,
            chunks,
            shutdown,
        } = inbox;
        // An edit staged during a transaction the previous session never finished: it
        // applies before anything of this session is read.
        apply(staged, matcher, config, self.dispatch);
        // Connecting may hang (a server that accepts but does not answer, and no
        // connect_timeout): a signal must not wait for it. Nothing is open yet to close.
        let opened = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(Ended::Signal),
            opened = self.open(config) => opened?,
        };
        let Opened {
            writer,
            checkpoint,
            catalog,
            mut reader,
            mut documents,
        } = opened;
        startup::bind_tables(matcher, &catalog)
            .await
            .map_err(|e| SessionError::Bind(Box::new(e)))?;
        let mut writer = OutboxPipeline::start(writer, &config.outbox.schema);
        let _connected = Connected::new(self.health, self.metrics);
        *backoff = Duration::from_millis(200);
        tracing::info!(slot = %config.source.slot, checkpoint = %checkpoint, "capturing");

        let mut open: Option<Commit> = None;
        let mut handled: Option<Handled> = None;
        let mut group = 0usize;
        // The last source commit handled: what the outbox checkpoint becomes with a group
        // that only holds backfill chunks.
        let mut last_commit = checkpoint;
        let mut backfills = Backfills::default();
        loop {
            // While an outbox commit is in flight, the next group waits for it (below, in the
            // select) and keeps growing: under a steady stream of small transactions one
            // outbox commit then carries everything that arrived during the previous one,
            // instead of queueing one commit per source transaction behind it (measured at
            // 1,000 one-row transactions/s: p50 commit → 2xx went from 5.5 ms to 3.2 ms).
            let item = if handled.is_some() && open.is_none() && writer.in_flight() == 0 {
                // Commits are handled but not yet in the outbox: keep taking what is
                // already waiting, and commit the group as soon as nothing is. Never in
                // the middle of a source transaction: its rows so far would be committed
                // under the previous checkpoint, and repeated after a crash.
                match reader.next().now_or_never() {
                    Some(next) => match next? {
                        Some(item) => item,
                        None => {
                            self.flush(&mut writer, &mut reader, &mut handled, &mut backfills)
                                .await?;
                            self.drain(&mut writer, &mut reader, &mut backfills).await?;
                            return Ok(Ended::ServerClosed);
                        }
                    },
                    None => {
                        self.flush(&mut writer, &mut reader, &mut handled, &mut backfills)
                            .await?;
                        group = 0;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        return self
                            .stop(writer, reader, open, handled, &mut backfills, Ended::Signal)
                            .await;
                    }
                    Some(new) = reloads.recv() => {
                        match validate(new, matcher, &catalog).await {
                            Ok(valid) => {
                                self.metrics.reload_applied();
                                for sub in &valid.config.subscriptions {
                                    self.metrics.know_subscription(&sub.name);
                                }
                                *staged = Some(valid);
                            }
                            Err(e) => {
                                self.metrics.reload_rejected();
                                tracing::error!("config reload rejected: {e}; the running config stays");
                            }
                        }
                        if open.is_none() {
                            let edit = apply(staged, matcher, config, self.dispatch);
                            if !documents.take_edit(edit, &mut writer) {
                                return self
                                    .stop(writer, reader, None, handled, &mut backfills, Ended::Reseed)
                                    .await;
                            }
                        }
                        continue;
                    }
                    done = writer.committed() => {
                        self.committed(done?, &mut reader, &mut backfills);
                        continue;
                    }
                    Some(message) = chunks.recv() => {
                        backfills.windows.receive(message);
                        continue;
                    }
                    next = reader.next() => match next? {
                        Some(item) => item,
                        None => {
                            writer.rollback().await?;
                            return Ok(Ended::ServerClosed);
                        }
                    },
                }
            };
            match item {
                Item::Begin(commit) => open = Some(commit),
                Item::Change(change) => {
                    let commit = open.expect("changes arrive inside a transaction");
                    if backfills.windows.any_open() {
                        backfills.windows.saw(&change);
                    }
                    self.metrics
                        .changes
                        .get_or_create(&ChangeLabels {
                            table: change.relation.qualified_name(),
                            operation: change.operation.as_str(),
                        })
                        .inc();
                    documents.touch(&change, commit, &mut writer);
                    if !matcher.watches(&change.relation) {
                        continue;
                    }
                    if let Some(name_change) = matcher.notice_name(&change.relation) {
                        self.renamed(&name_change);
                    }
                    let (events, problems) = matcher.route(&change, commit);
                    for problem in problems {
                        let recorded = events.iter().any(|event| {
                            event
                                .dead
                                .iter()
                                .any(|(sub, _)| *sub == problem.subscription)
                        });
                        problem.log(if recorded { RECORDED_DEAD } else { "no event" });
                    }
                    if backfills.windows.tracking() {
                        let sent = events.iter().flat_map(|e| {
                            e.subscriptions.iter().chain(e.dead.iter().map(|(s, _)| s))
                        });
                        backfills.windows.sent(&change, sent.map(|s| &**s));
                    }
                    for event in events {
                        writer.add(event, commit);
                    }
                    if writer.buffered() >= SPILL_ROWS {
                        writer.spill().await?;
                    }
                }
                Item::Truncate(t) => {
                    let commit = open.expect("a truncate arrives inside a transaction");
                    for (index, relation) in t.relations.iter().enumerate() {
                        let kept = documents.truncate(relation.oid, commit, &mut writer);
                        let watched = matcher.watches(relation);
                        if !watched && !kept {
                            continue;
                        }
                        let table = relation.qualified_name();
                        self.metrics
                            .truncates
                            .get_or_create(&SourceTableLabels {
                                table: table.clone(),
                            })
                            .inc();
                        if !watched {
                            continue;
                        }
                        let route = matcher.route_truncate(&t, index, commit);
                        for subscription in &route.ignored_by {
                            // SPEC §3: never silence. The receiver still holds the rows.
                            tracing::warn!(
                                subscription = %subscription,
                                table = %table,
                                "TRUNCATE of {table}: no event, because the subscription does \
                                 not list \"truncate\" in operations"
                            );
                        }
                        for event in route.events {
                            for (subscription, error) in &event.dead {
                                // Recorded dead, like a row change that fails; said as loudly.
                                tracing::error!(
                                    subscription = %subscription,
                                    table = %table,
                                    "TRUNCATE of {table}: {error}; the event is recorded as a \
                                     dead delivery (replay once the config is fixed)"
                                );
                            }
                            writer.add(event, commit);
                        }
                    }
                }
                Item::Watermark { watermark, lsn } => {
                    // The task hands a chunk over before writing its high mark: it is in
                    // the channel by now, if not yet taken.
                    while let Ok(message) = chunks.try_recv() {
                        backfills.windows.receive(message);
                    }
                    match watermark.mark {
                        Mark::Low => backfills.windows.low(&watermark.token),
                        Mark::High => {
                            if let Some(ready) = backfills.windows.high(&watermark.token) {
                                let done = self
                                    .read_events(ready, lsn, matcher, &documents, &mut writer)
                                    .await?;
                                backfills.committing.insert(watermark.token, done);
                                handled.get_or_insert(Handled {
                                    commit_lsn: last_commit,
                                    end_lsn: reader.acknowledged(),
                                });
                            }
                        }
                    }
                }
                Item::Commit { commit, end_lsn } => {
                    open = None;
                    last_commit = commit.lsn;
                    handled = Some(Handled {
                        commit_lsn: commit.lsn,
                        end_lsn,
                    });
                    group += 1;
                    documents.end_transaction(commit, &mut writer);
                    let edit = apply(staged, matcher, config, self.dispatch);
                    if !documents.take_edit(edit, &mut writer) {
                        return self
                            .stop(writer, reader, None, handled, &mut backfills, Ended::Reseed)
                            .await;
                    }
                    if group >= GROUP_TRANSACTIONS || writer.buffered() >= SPILL_ROWS {
                        self.flush(&mut writer, &mut reader, &mut handled, &mut backfills)
                            .await?;
                        group = 0;
                    }
                }
                Item::Keepalive { wal_end } => {
                    // Everything before wal_end has been sent and handled: nothing is open
                    // or uncommitted, so the slot may move on (idle tables don't pin WAL).
                    // Said at once, as Postgres's own subscriber does, rather than with the
                    // next periodic status update: the walsender sends this keepalive when
                    // it has caught up past WAL we had no reason to acknowledge yet (other
                    // tables, other databases, the heartbeat), and stops once we confirm.
                    if handled.is_none()
                        && !writer.has_uncommitted()
                        && wal_end > reader.acknowledged()
                    {
                        reader.acknowledge(wal_end);
                        reader.report().await?;
                    }
                }
            }
        }
    }
}

/// What a session works with, once connected.
struct Opened {
    writer: OutboxWriter,
    /// The capture checkpoint: source commits up to here are in the outbox.
    checkpoint: Lsn,
    /// For validating config edits.
    catalog: tokio_postgres::Client,
    reader: ChangeReader,
    documents: DocumentCapture,
}

impl Session<'_> {
    /// Connects to the outbox and the source and starts streaming after the checkpoint.
    async fn open(&self, config: &Config) -> Result<Opened, SessionError> {
        let outbox_client = pg::connect_sql(self.outbox).await?;
        let mut writer =
            OutboxWriter::new(outbox_client, &config.outbox.schema, &config.source.slot).await?;
        let checkpoint = writer.checkpoint().unwrap_or(Lsn::ZERO);
        let catalog = pg::connect_sql(self.source).await?;
        let documents = Arc::new(describe_documents(config, &catalog).await?);
        let seeds = Seeder {
            source: self.source,
            outbox: self.outbox,
            schema: &config.outbox.schema,
            slot: &config.source.slot,
        }
        .seed(&documents, checkpoint)
        .await?;
        writer.set_documents(documents.clone()).await?;
        let options = ReaderOptions {
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
            skip_through: checkpoint,
        };
        let reader = ChangeReader::start(self.source, &options).await?;
        Ok(Opened {
            writer,
            checkpoint,
            catalog,
            reader,
            documents: DocumentCapture {
                documents,
                seeds,
                touched: false,
            },
        })
    }
}

impl Session<'_> {
    /// A chunk's window closed: its rows no change superseded become read events of its
    /// subscription, buffered with the chunk's progress. Returns whom to tell once the
    /// outbox commit holding them is done.
    async fn read_events(
        &self,
        ready: Ready,
        high: Lsn,
        matcher: &mut Matcher,
        documents: &DocumentCapture,
        writer: &mut OutboxPipeline,
    ) -> Result<oneshot::Sender<()>, SessionError> {
        let Ready { chunk, keep } = ready;
        let origin = ReadOrigin {
            backfill: chunk.backfill,
            chunk: chunk.chunk,
            lsn: high,
            time: chunk.time,
        };
        let commit = Commit {
            lsn: high,
            time: chunk.time,
            xid: 0,
        };
        let keep = match documents.read(&chunk.subscription, &chunk.rows, origin) {
            Some(read) => {
                writer.read_documents(read, commit);
                Vec::new()
            }
            None => keep,
        };
        for index in keep {
            let (event, problem) =
                matcher.route_read(&chunk.subscription, &chunk.rows[index], origin);
            if let Some(problem) = problem {
                tracing::error!(
                    subscription = %problem.subscription,
                    table = %problem.table,
                    key = %problem.key,
                    backfill = chunk.backfill,
                    "backfill read recorded as a dead delivery, replay it once the config is \
                     fixed: {}",
                    problem.message
                );
            }
            if let Some(event) = event {
                writer.add(event, commit);
                if writer.buffered() >= SPILL_ROWS {
                    writer.spill().await?;
                }
            }
        }
        writer.add_progress(Progress {
            token: chunk.token,
            backfill: chunk.backfill,
            chunk: chunk.chunk,
            subscription: chunk.subscription,
            last_key: chunk.last_key,
            rows: chunk.rows.len() as i64,
        });
        Ok(chunk.done)
    }
}

/// Marks replication connected for as long as it lives.
struct Connected<'a> {
    health: &'a Health,
    metrics: &'a Metrics,
}

impl<'a> Connected<'a> {
    fn new(health: &'a Health, metrics: &'a Metrics) -> Self {
        health.replication_connected.store(true, Ordering::Relaxed);
        metrics.replication_connected.set(1);
        Connected { health, metrics }
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.health
            .replication_connected
            .store(false, Ordering::Relaxed);
        self.metrics.replication_connected.set(0);
    }
}

impl Session<'_> {
    /// A watched table was renamed (or renamed back): its events keep flowing (matched by
    /// OID), but the config names a table that no longer exists, which the next start refuses.
    fn renamed(&self, change: &NameChange) {
        match change {
            NameChange::Renamed { configured, now } => {
                self.metrics
                    .renamed_tables
                    .get_or_create(&SourceTableLabels {
                        table: configured.to_string(),
                    })
                    .set(1);
                tracing::error!(
                    table = %configured,
                    renamed_to = %now,
                    "table {configured} was renamed to {now} on the source; its events keep \
                     flowing while walhook runs (matched by OID, source.table says {now}), but a \
                     restart would refuse the config; fix: rename it back, or set the config's \
                     table to {now:?} and reload"
                );
            }
            NameChange::Restored { configured } => {
                self.metrics
                    .renamed_tables
                    .get_or_create(&SourceTableLabels {
                        table: configured.to_string(),
                    })
                    .set(0);
                tracing::info!(
                    table = %configured,
                    "the renamed table {configured}: its name and the config agree again"
                );
            }
        }
    }

    /// Asks for the outbox commit through the last handled source commit; the slot is
    /// acknowledged when it is reported done ([`Session::committed`]).
    async fn flush(
        &self,
        writer: &mut OutboxPipeline,
        reader: &mut ChangeReader,
        handled: &mut Option<Handled>,
        backfills: &mut Backfills,
    ) -> Result<(), SessionError> {
        let Some(h) = handled.take() else {
            return Ok(());
        };
        while writer.in_flight() >= MAX_COMMITS_IN_FLIGHT {
            let done = writer.committed().await?;
            self.committed(done, reader, backfills);
        }
        // A group without events needs no outbox write: skipping it on restart is harmless,
        // because the slot itself will not send it again once acknowledged.
        if let Some(ack) = writer.commit(h.commit_lsn, h.end_lsn).await? {
            reader.acknowledge(ack);
        }
        Ok(())
    }

    /// An outbox commit is done: count it, wake the subscriptions that got deliveries and
    /// let the slot move past it.
    fn committed(&self, done: Committed, reader: &mut ChangeReader, backfills: &mut Backfills) {
        self.health.outbox_committed();
        let written = done.written;
        for (object, count) in &written.oversized {
            self.metrics
                .oversized_events
                .get_or_create(&ObjectLabels {
                    object: object.clone(),
                })
                .inc_by(*count);
        }
        for progress in &written.backfilled {
            self.metrics
                .backfill_rows(&progress.subscription, progress.rows as u64);
            if let Some(done) = backfills.committing.remove(&progress.token) {
                let _ = done.send(());
            }
        }
        if written.events > 0 {
            tracing::debug!(
                events = written.events,
                deliveries = written.deliveries,
                through = %done.commit_lsn,
                "outbox commit"
            );
            self.metrics.outbox_commits.inc();
            for (subscription, count) in &written.subscriptions {
                self.metrics
                    .events
                    .get_or_create(&Metrics::subscription(subscription))
                    .inc_by(*count);
            }
            self.dispatch.wake(written.subscriptions.keys());
        }
        reader.acknowledge(done.end_lsn);
    }

    /// Waits for every outbox commit in flight.
    async fn drain(
        &self,
        writer: &mut OutboxPipeline,
        reader: &mut ChangeReader,
        backfills: &mut Backfills,
    ) -> Result<(), SessionError> {
        while writer.in_flight() > 0 {
            let done = writer.committed().await?;
            self.committed(done, reader, backfills);
        }
        Ok(())
    }

    /// Graceful end: commit what is complete, abandon a source transaction in progress (the
    /// slot sends it again), release the slot.
    async fn stop(
        &self,
        mut writer: OutboxPipeline,
        mut reader: ChangeReader,
        open: Option<Commit>,
        mut handled: Option<Handled>,
        backfills: &mut Backfills,
        ended: Ended,
    ) -> Result<Ended, SessionError> {
        if open.is_some() {
            writer.rollback().await?;
        } else {
            self.flush(&mut writer, &mut reader, &mut handled, backfills)
                .await?;
        }
        // What finished before the stop is acknowledged, so a restart need not skip it.
        self.drain(&mut writer, &mut reader, backfills).await?;
        reader.close().await?;
        Ok(ended)
    }
}

async fn validate(
    config: Config,
    running: &Matcher,
    catalog: &tokio_postgres::Client,
) -> Result<Staged, ReloadError> {
    let mut matcher = Matcher::new(&config)?;
    startup::check_replica_identity(&config, catalog).await?;
    startup::check_when_columns(&config, catalog).await?;
    startup::sync_publication(&config, catalog).await?;
    // A table renamed under the running config is no longer found by name: keep its OID.
    matcher.carry_over(running);
    startup::bind_tables(&mut matcher, catalog).await?;
    let documents = describe_documents(&config, catalog).await?;
    Ok(Staged {
        config,
        matcher,
        documents,
    })
}

/// The config's documents, with their tables as the catalog describes them now.
async fn describe_documents(
    config: &Config,
    catalog: &tokio_postgres::Client,
) -> Result<Documents, SessionError> {
    let mut tables: Vec<&TableName> = Vec::new();
    for object in config.objects.values().filter(|o| o.keeps_state()) {
        for table in object.tables() {
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
    }
    if tables.is_empty() {
        return Ok(Documents::default());
    }
    let relations = seed::describe(catalog, tables.into_iter()).await?;
    Documents::new(config, &relations).map_err(SessionError::Documents)
}

impl DocumentCapture {
    /// Hands the changes of a document table to the writer as touches; a change committed
    /// before its object's seed is in the seeded state already.
    fn touch(&mut self, change: &RowChange, commit: Commit, writer: &mut OutboxPipeline) {
        if self.documents.table_of(change.relation.oid).is_none() {
            return;
        }
        let (touches, problems) = self.documents.touches(change);
        for problem in problems {
            tracing::error!(object = %problem.object, table = %problem.table, "no document event: {problem}");
        }
        for touch in touches {
            if self.seeds.applies(&touch.object_id, commit.lsn) {
                self.touched = true;
                writer.touch(touch, commit);
            }
        }
    }

    /// The source transaction committing at `commit` ended: its documents become events.
    fn end_transaction(&mut self, commit: Commit, writer: &mut OutboxPipeline) {
        if std::mem::take(&mut self.touched) {
            writer.end_transaction(commit);
        }
    }

    /// A TRUNCATE of the table with `oid`: the state of each object it belongs to loses
    /// that table's rows. Returns whether any object keeps state of it.
    fn truncate(&mut self, oid: u32, commit: Commit, writer: &mut OutboxPipeline) -> bool {
        let Some(table) = self.documents.table_of(oid) else {
            return false;
        };
        for &(object, part) in self.documents.parts_of(table) {
            let object = self.documents.object(object);
            if !self.seeds.applies(&object.id, commit.lsn) {
                continue;
            }
            // SPEC §3: never silence. A document's receiver still holds what the table held.
            tracing::warn!(
                object = %object.id,
                table = %table,
                "TRUNCATE of {table}: objects.{} no longer keeps its rows; no document event is                  made for it (its next change shows the document without them)",
                object.id
            );
            self.touched = true;
            writer.truncate_state(object.id.clone(), part, commit);
        }
        true
    }

    /// A backfill chunk of a document subscription, as reads from the state: all its
    /// headers, whatever changed in its window, since the state at the high watermark is
    /// each document exactly as of that position. `None` for a row subscription's chunk.
    fn read(
        &self,
        subscription: &Arc<str>,
        rows: &[RowChange],
        origin: ReadOrigin,
    ) -> Option<DocumentRead> {
        let index = self.documents.reading(subscription)?;
        let object = self.documents.object(index);
        let mut keys = Vec::with_capacity(rows.len());
        for (position, row) in rows.iter().enumerate() {
            match object.seed_row(0, row) {
                Ok((_, doc_key, _)) => keys.push((position as u32, doc_key)),
                Err(message) => tracing::error!(
                    subscription = %subscription,
                    object = %object.id,
                    backfill = origin.backfill,
                    "backfill read of objects.{}: no event: {message}",
                    object.id
                ),
            }
        }
        Some(DocumentRead {
            object: index,
            subscription: subscription.clone(),
            keys,
            origin,
        })
    }

    /// Takes an applied config edit's documents; false when the state does not fit them
    /// (a document added, changed or removed), so the session must end and the next one
    /// seed first.
    fn take_edit(&mut self, edit: Option<Documents>, writer: &mut OutboxPipeline) -> bool {
        let Some(documents) = edit else {
            return true;
        };
        if !self.seeds.covers(&documents) {
            return false;
        }
        self.documents = Arc::new(documents);
        writer.set_documents(self.documents.clone());
        true
    }
}

/// Applies a staged edit; returns its documents.
fn apply(
    staged: &mut Option<Staged>,
    matcher: &mut Matcher,
    config: &mut Config,
    dispatch: &DispatchHandle,
) -> Option<Documents> {
    let Staged {
        config: new_config,
        matcher: new_matcher,
        documents,
    } = staged.take()?;
    *matcher = new_matcher;
    *config = new_config;
    dispatch.reload(config);
    tracing::info!(
        subscriptions = config.subscriptions.len(),
        "config reloaded; applies from the next transaction"
    );
    Some(documents)
}

/// Why an edited config was not applied.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Documents(#[from] SessionError),
}

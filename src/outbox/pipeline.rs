//! The outbox writer on a task of its own, so that decoding the next rows overlaps with
//! Postgres inserting the previous ones.
//!
//! Measured before this existed, capture alternated: walhook decoded a group while the
//! outbox backend idled, then the backend inserted it while walhook waited. Now the capture
//! session hands rows and commits to [`OutboxPipeline`] through a bounded channel and goes
//! on reading the slot; the task writes them in order with one [`OutboxWriter`] and reports
//! each finished commit back. The slot is still acknowledged only for commits reported
//! done, in order, so exactly-once capture is unchanged.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::backfill::Progress;
use super::documents::DocumentRead;
use super::writer::{OutboxError, OutboxWriter, Written};
use crate::capture::document::{Documents, Touch};
use crate::capture::matcher::RoutedEvent;
use crate::capture::Commit;
use crate::pg::Lsn;

/// Commands waiting for the writer task: a few spills' worth of rows at most.
const QUEUED_COMMANDS: usize = 4;

/// Outbox commits sent but not yet reported done; the session waits beyond this.
pub const MAX_COMMITS_IN_FLIGHT: usize = 4;

/// A group of source transactions whose outbox commit has finished.
#[derive(Debug)]
pub struct Committed {
    /// The last source commit of the group; the outbox checkpoint is now here.
    pub commit_lsn: Lsn,
    /// Where the slot may be acknowledged to.
    pub end_lsn: Lsn,
    /// What the outbox commit wrote (nothing, for a group without events).
    pub written: Written,
}

/// One thing for the writer to do in the open outbox transaction, in capture order.
enum Entry {
    /// Write an event.
    Event(RoutedEvent, Commit),
    /// Apply a change to a document's state.
    Touch(Touch, Commit),
    /// A source transaction is complete: its documents become events.
    End(Commit),
    /// A table of an object that keeps state was truncated.
    Truncate {
        object: Arc<str>,
        part: u16,
        commit: Commit,
    },
    /// The documents touches refer to from here on.
    Documents(Arc<Documents>),
    /// A backfill chunk of documents, read from the state.
    Read(DocumentRead, Commit),
}

enum Command {
    /// Entries to write into the open outbox transaction, and backfill progress to record
    /// with the next commit.
    Spill(Vec<Entry>, Vec<Progress>),
    /// Commit the outbox through `commit_lsn`; `write` is false for a group that produced
    /// no events, which only has to be reported in its turn.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        write: bool,
    },
    /// Abandon the open outbox transaction.
    Rollback(oneshot::Sender<Result<(), OutboxError>>),
}

/// The capture session's end of the writer task.
pub struct OutboxPipeline {
    buffer: Vec<Entry>,
    progress: Vec<Progress>,
    /// Rows were sent since the last commit command.
    spilled: bool,
    in_flight: usize,
    commands: mpsc::Sender<Command>,
    results: mpsc::UnboundedReceiver<Result<Committed, OutboxError>>,
    schema: String,
}

impl OutboxPipeline {
    /// Moves `writer` onto a task of its own.
    pub fn start(writer: OutboxWriter, schema: &str) -> Self {
        let (commands, mut queue) = mpsc::channel(QUEUED_COMMANDS);
        // Bounded in practice: at most MAX_COMMITS_IN_FLIGHT results are ever outstanding.
        let (report, results) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut writer = writer;
            while let Some(command) = queue.recv().await {
                let result = match command {
                    Command::Spill(entries, progress) => {
                        let mut result = Ok(());
                        for entry in entries {
                            result = match entry {
                                Entry::Event(event, commit) => {
                                    writer.add(event, commit);
                                    Ok(())
                                }
                                Entry::Touch(touch, commit) => writer.touch(touch, commit).await,
                                Entry::End(commit) => writer.end_transaction(commit).await,
                                Entry::Read(read, commit) => {
                                    writer.read_documents(&read, commit).await
                                }
                                Entry::Truncate {
                                    object,
                                    part,
                                    commit,
                                } => writer.truncate_state(&object, part, commit).await,
                                Entry::Documents(documents) => {
                                    writer.set_documents(documents).await
                                }
                            };
                            if result.is_err() {
                                break;
                            }
                        }
                        for progress in progress {
                            writer.add_progress(progress);
                        }
                        match result {
                            Ok(()) => writer.spill().await.map(|()| None),
                            Err(e) => Err(e),
                        }
                    }
                    Command::Commit {
                        commit_lsn,
                        end_lsn,
                        write,
                    } => {
                        let written = if write {
                            writer.commit(commit_lsn).await
                        } else {
                            Ok(Written::default())
                        };
                        written.map(|written| {
                            Some(Committed {
                                commit_lsn,
                                end_lsn,
                                written,
                            })
                        })
                    }
                    Command::Rollback(reply) => {
                        let _ = reply.send(writer.rollback().await);
                        continue;
                    }
                };
                match result {
                    Ok(None) => {}
                    Ok(Some(committed)) => {
                        if report.send(Ok(committed)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // The session ends on this error; the transaction dies with the
                        // connection, and the slot resends everything not acknowledged.
                        let _ = report.send(Err(e));
                        return;
                    }
                }
            }
        });
        OutboxPipeline {
            buffer: Vec::new(),
            progress: Vec::new(),
            spilled: false,
            in_flight: 0,
            commands,
            results,
            schema: schema.to_owned(),
        }
    }

    /// Buffers one routed event of the given source commit.
    pub fn add(&mut self, event: RoutedEvent, commit: Commit) {
        self.buffer.push(Entry::Event(event, commit));
    }

    /// Buffers one change of a document's (or keep_state object's) row.
    pub fn touch(&mut self, touch: Touch, commit: Commit) {
        self.buffer.push(Entry::Touch(touch, commit));
    }

    /// Marks the end of a source transaction that touched documents: the writer makes
    /// their events.
    pub fn end_transaction(&mut self, commit: Commit) {
        self.buffer.push(Entry::End(commit));
    }

    /// A TRUNCATE of a table an object keeps state of (`part` 0: its header).
    pub fn truncate_state(&mut self, object: Arc<str>, part: u16, commit: Commit) {
        self.buffer.push(Entry::Truncate {
            object,
            part,
            commit,
        });
    }

    /// A backfill chunk of documents, read from the state at this point of the stream.
    pub fn read_documents(&mut self, read: DocumentRead, commit: Commit) {
        self.buffer.push(Entry::Read(read, commit));
    }

    /// The documents later touches refer to.
    pub fn set_documents(&mut self, documents: Arc<Documents>) {
        self.buffer.push(Entry::Documents(documents));
    }

    /// Records a backfill chunk's progress in the next outbox commit.
    pub fn add_progress(&mut self, progress: Progress) {
        self.progress.push(progress);
    }

    /// Entries (events, touches) buffered here, not yet handed to the task.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether anything is buffered, written or being committed but not reported done.
    pub fn has_uncommitted(&self) -> bool {
        !self.buffer.is_empty() || !self.progress.is_empty() || self.spilled || self.in_flight > 0
    }

    /// Outbox commits sent and not yet reported by [`OutboxPipeline::committed`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands the buffered rows to the task (waiting only while its queue is full).
    pub async fn spill(&mut self) -> Result<(), OutboxError> {
        if self.buffer.is_empty() && self.progress.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buffer);
        let progress = std::mem::take(&mut self.progress);
        self.send(Command::Spill(rows, progress)).await?;
        self.spilled = true;
        Ok(())
    }

    /// Asks for an outbox commit through the group ending at `commit_lsn`. Returns the
    /// position to acknowledge at once when there is nothing to write and nothing ahead of
    /// it; otherwise [`OutboxPipeline::committed`] reports it in its turn.
    pub async fn commit(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
    ) -> Result<Option<Lsn>, OutboxError> {
        self.spill().await?;
        let write = std::mem::take(&mut self.spilled);
        if !write && self.in_flight == 0 {
            return Ok(Some(end_lsn));
        }
        self.send(Command::Commit {
            commit_lsn,
            end_lsn,
            write,
        })
        .await?;
        self.in_flight += 1;
        Ok(None)
    }

    /// The next finished outbox commit, in the order they were asked for. Cancel-safe;
    /// pending forever while none is in flight.
    pub async fn committed(&mut self) -> Result<Committed, OutboxError> {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        let result = self
            .results
            .recv()
            .await
            .unwrap_or_else(|| Err(self.stopped()));
        if result.is_ok() {
            self.in_flight -= 1;
        }
        result
    }

    /// Abandons what is buffered and the open outbox transaction. Commits asked for before
    /// still finish, and are reported by [`OutboxPipeline::committed`].
    pub async fn rollback(&mut self) -> Result<(), OutboxError> {
        self.buffer.clear();
        self.progress.clear();
        self.spilled = false;
        let (reply, done) = oneshot::channel();
        self.send(Command::Rollback(reply)).await?;
        match done.await {
            Ok(result) => result,
            Err(_) => Err(self.task_error().await),
        }
    }

    async fn send(&mut self, command: Command) -> Result<(), OutboxError> {
        if self.commands.send(command).await.is_err() {
            return Err(self.task_error().await);
        }
        Ok(())
    }

    /// Why the task stopped: the error it reported, after any commits it finished first.
    async fn task_error(&mut self) -> OutboxError {
        while let Some(result) = self.results.recv().await {
            if let Err(e) = result {
                return e;
            }
        }
        self.stopped()
    }

    fn stopped(&self) -> OutboxError {
        OutboxError::WriterStopped {
            schema: self.schema.clone(),
        }
    }
}

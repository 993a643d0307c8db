//! The change reader: a replication stream in, committed transactions of row changes out.
//!
//! pgoutput protocol 1 sends a transaction only after it committed (a rolled-back one never
//! appears) and lets the server spill large transactions to its own disk, so the reader
//! holds one change at a time however big the transaction is. Transactions at or below
//! `skip_through` were already handled before a restart and are passed over: together
//! with acknowledging only handled commits, that is what makes capture exactly-once.

use std::sync::Arc;

use super::change::RowChange;
use super::envelope::Commit;
use super::relation::{Relation, RelationCache, RelationError};
use crate::pg::conninfo::ConnInfo;
use crate::pg::{self, Lsn};
use crate::source::pgoutput::{self, Decoder, Message};
use crate::source::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
};
use crate::source::watermark::{self, Watermark};

/// What the reader hands on, in WAL order.
#[derive(Debug, Clone)]
pub enum Item {
    /// A transaction starts; every item up to its `Commit` belongs to it.
    Begin(Commit),
    /// One row changed.
    Change(RowChange),
    /// Tables were truncated.
    Truncate(Truncation),
    /// The transaction committed; `end_lsn` is the position to acknowledge once handled.
    Commit {
        /// The commit.
        commit: Commit,
        /// WAL position just past the commit record.
        end_lsn: Lsn,
    },
    /// A backfill's watermark (SPEC §3b), at its place between transactions.
    Watermark {
        /// Which chunk read, low or high.
        watermark: Watermark,
        /// Where it is in the WAL.
        lsn: Lsn,
    },
    /// The server has sent everything up to `wal_end`. Outside a transaction, with every
    /// earlier commit handled, that position may be acknowledged: this is what keeps the
    /// slot of an idle table from pinning WAL.
    Keepalive {
        /// The server's WAL position.
        wal_end: Lsn,
    },
}

/// A TRUNCATE of one or more tables.
#[derive(Debug, Clone)]
pub struct Truncation {
    /// The truncated tables.
    pub relations: Vec<Arc<Relation>>,
    /// Position in the transaction of the first table; table `i` has `position + i`.
    pub position: u32,
    /// TRUNCATE … CASCADE.
    pub cascade: bool,
    /// TRUNCATE … RESTART IDENTITY.
    pub restart_identity: bool,
}

/// Why reading changes stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The catalog connection could not be opened.
    #[error("opening the catalog connection: {0}")]
    Catalog(#[from] pg::ConnectError),
    /// A pgoutput message could not be decoded.
    #[error("decoding WAL at {lsn}: {source}")]
    Decode {
        /// Start of the XLogData frame.
        lsn: Lsn,
        /// The decoder's complaint.
        source: pgoutput::DecodeError,
    },
    /// A table could not be described.
    #[error(transparent)]
    Relation(#[from] RelationError),
    /// The server sent something valid but out of place.
    #[error("unexpected pgoutput message at {lsn}: {what}")]
    Unexpected {
        /// Start of the XLogData frame.
        lsn: Lsn,
        /// What was out of place.
        what: String,
    },
}

impl CaptureError {
    /// Whether reconnecting may help (network, server restart, busy slot), as opposed to a
    /// problem that will recur (a missing slot, bad credentials, a decoding bug).
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Replication(e) => e.is_transient(),
            CaptureError::Catalog(_) => true,
            // The catalog connection dropped while a table or its types were looked up.
            CaptureError::Relation(RelationError::Catalog { .. } | RelationError::Types { .. }) => {
                true
            }
            _ => false,
        }
    }
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// The logical replication slot (pgoutput), which must exist.
    pub slot: String,
    /// The publication naming the tables to read.
    pub publication: String,
    /// Transactions whose commit LSN is at or below this were handled already.
    pub skip_through: Lsn,
}

#[derive(Debug)]
struct OpenTransaction {
    commit: Commit,
    next_position: u32,
    skipped: bool,
}

/// Reads committed row changes from a slot.
pub struct ChangeReader {
    stream: ReplicationStream,
    decoder: Decoder,
    relations: RelationCache,
    catalog: tokio_postgres::Client,
    skip_through: Lsn,
    open: Option<OpenTransaction>,
    /// A Relation message whose catalog lookup has not finished; kept so that a cancelled
    /// `next` resumes it instead of losing it.
    unlearned: Option<pgoutput::Relation>,
}

impl ChangeReader {
    /// Connects (a catalog connection and a replication connection) and starts streaming
    /// from the slot's confirmed position.
    pub async fn start(info: &ConnInfo, options: &ReaderOptions) -> Result<Self, CaptureError> {
        Self::start_on(info, options, false).await
    }

    /// Like [`ChangeReader::start`], but first creates `options.slot` as a TEMPORARY slot on
    /// the streaming connection itself: Postgres drops it when that connection ends, however
    /// the process ends (SIGKILL included), so it can never be left holding WAL. It starts at
    /// "now": what was committed before it existed is not read.
    pub async fn start_temporary(
        info: &ConnInfo,
        options: &ReaderOptions,
    ) -> Result<Self, CaptureError> {
        Self::start_on(info, options, true).await
    }

    async fn start_on(
        info: &ConnInfo,
        options: &ReaderOptions,
        temporary: bool,
    ) -> Result<Self, CaptureError> {
        let catalog = pg::connect_sql(info).await?;
        let mut connection = ReplicationConnection::connect(info).await?;
        if temporary {
            connection.create_slot(&options.slot, true).await?;
        }
        // Inside the option value the names are a list, each double-quoted.
        let publications = format!("\"{}\"", options.publication.replace('"', "\"\""));
        let mut settings = vec![
            ("proto_version", "1"),
            ("publication_names", publications.as_str()),
        ];
        // Backfill watermarks are logical messages; PostgreSQL 13 refuses the option, and
        // there only backfills are unavailable.
        let watermarks = watermark::carries_watermarks(connection.server_version());
        if watermarks {
            settings.push(("messages", "true"));
        }
        let stream = connection
            .start_replication(&options.slot, Lsn::ZERO, &settings)
            .await?;
        Ok(ChangeReader {
            stream,
            decoder: Decoder::new(),
            relations: RelationCache::new(),
            catalog,
            skip_through: options.skip_through,
            open: None,
            unlearned: None,
        })
    }

    /// The next item, or `None` when the server ended the stream. Cancel-safe: a dropped
    /// call loses nothing, so callers may poll it with a timeout or `now_or_never`.
    pub async fn next(&mut self) -> Result<Option<Item>, CaptureError> {
        loop {
            if let Some(relation) = &self.unlearned {
                // Cloned so that the message survives a cancellation during the lookup.
                self.relations
                    .learn(relation.clone(), &self.catalog)
                    .await?;
                self.unlearned = None;
            }
            let (lsn, data) = match self.stream.next().await? {
                None => return Ok(None),
                Some(ReplicationMessage::Keepalive { wal_end, .. }) => {
                    if self.open.is_none() {
                        return Ok(Some(Item::Keepalive { wal_end }));
                    }
                    continue;
                }
                Some(ReplicationMessage::XLogData {
                    wal_start, data, ..
                }) => (wal_start, data),
            };
            let message = self
                .decoder
                .decode(data)
                .map_err(|source| CaptureError::Decode { lsn, source })?;
            if let Some(item) = self.handle(lsn, message)? {
                return Ok(Some(item));
            }
        }
    }

    fn handle(&mut self, lsn: Lsn, message: Message) -> Result<Option<Item>, CaptureError> {
        let unexpected = |what: String| CaptureError::Unexpected { lsn, what };
        match message {
            Message::Relation(relation) => {
                // Looked up at the top of `next`, where a cancellation can resume it.
                self.unlearned = Some(relation);
                Ok(None)
            }
            Message::Begin(begin) => {
                if self.open.is_some() {
                    return Err(unexpected("Begin inside an open transaction".into()));
                }
                let commit = Commit {
                    lsn: begin.final_lsn,
                    time: begin.commit_time,
                    xid: begin.xid,
                };
                let skipped = commit.lsn <= self.skip_through;
                self.open = Some(OpenTransaction {
                    commit,
                    next_position: 0,
                    skipped,
                });
                Ok((!skipped).then_some(Item::Begin(commit)))
            }
            Message::Commit(c) => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| unexpected("Commit without Begin".into()))?;
                Ok((!open.skipped).then_some(Item::Commit {
                    commit: open.commit,
                    end_lsn: c.end_lsn,
                }))
            }
            Message::Insert(m) => self.change(lsn, m.relation, |rel, pos| {
                RowChange::insert(rel, pos, &m.new)
            }),
            Message::Update(m) => self.change(lsn, m.relation, |rel, pos| {
                RowChange::update(rel, pos, m.old.as_ref(), &m.new)
            }),
            Message::Delete(m) => self.change(lsn, m.relation, |rel, pos| {
                RowChange::delete(rel, pos, &m.old)
            }),
            Message::Truncate(t) => {
                let relations = t
                    .relations
                    .iter()
                    .map(|oid| self.relations.get(*oid).cloned())
                    .collect::<Result<Vec<_>, _>>()?;
                // One position per table: each truncated table is an event of its own.
                let Some(position) =
                    self.next_positions(lsn, "Truncate", relations.len() as u32)?
                else {
                    return Ok(None);
                };
                Ok(Some(Item::Truncate(Truncation {
                    relations,
                    position,
                    cascade: t.cascade,
                    restart_identity: t.restart_identity,
                })))
            }
            Message::Message(m) => Ok(Watermark::parse(&m).map(|watermark| Item::Watermark {
                watermark,
                lsn: m.lsn,
            })),
            // Origins and user types (resolved from the catalog instead) carry nothing
            // walhook turns into events.
            Message::Origin(_) | Message::Type(_) => Ok(None),
            Message::StreamStart(_)
            | Message::StreamStop
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => Err(unexpected(
                "a streamed-transaction message, but walhook asked for protocol 1".into(),
            )),
        }
    }

    fn change(
        &mut self,
        lsn: Lsn,
        relation: u32,
        build: impl FnOnce(Arc<Relation>, u32) -> RowChange,
    ) -> Result<Option<Item>, CaptureError> {
        let relation = self.relations.get(relation)?.clone();
        Ok(self
            .next_positions(lsn, "row change", 1)?
            .map(|position| Item::Change(build(relation, position))))
    }

    /// Reserves `count` positions in the open transaction and returns the first, `None`
    /// when the transaction is skipped.
    fn next_positions(
        &mut self,
        lsn: Lsn,
        what: &str,
        count: u32,
    ) -> Result<Option<u32>, CaptureError> {
        let open = self.open.as_mut().ok_or_else(|| CaptureError::Unexpected {
            lsn,
            what: format!("{what} outside a transaction"),
        })?;
        let position = open.next_position;
        open.next_position += count;
        Ok((!open.skipped).then_some(position))
    }

    /// Records that everything up to `lsn` is handled; the server may recycle that WAL.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.stream.acknowledge(lsn);
    }

    /// The position last acknowledged (or where the stream started).
    pub fn acknowledged(&self) -> Lsn {
        self.stream.acknowledged()
    }

    /// Sends the acknowledged position to the server now, instead of with the next periodic
    /// status update.
    pub async fn report(&mut self) -> Result<(), CaptureError> {
        Ok(self.stream.send_status(false).await?)
    }

    /// Sends the final acknowledgement and ends the stream cleanly.
    pub async fn close(self) -> Result<(), CaptureError> {
        Ok(self.stream.close().await?)
    }
}

//! Decoder for pgoutput, the logical replication protocol built into Postgres (versions 1 and 2).
//!
//! A pure codec: one message (the payload of an XLogData frame) in, one typed [`Message`] out.
//! It does no I/O so it can be tested byte by byte and reused by anything that has the bytes.
//! Column values are [`Bytes`] slices of the input, so a wide row costs no copies.
//!
//! The only state is whether we are inside a stream block (Stream Start .. Stream Stop):
//! there, Relation, Type, Insert, Update, Delete, Truncate and Message carry the xid of the
//! (sub)transaction right after the tag, and nothing in the message itself says so.

use std::fmt;

use bytes::Bytes;

use crate::pg::Lsn;

#[cfg(test)]
mod tests;

/// Turns pgoutput messages into [`Message`]s, tracking whether a stream block is open.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    in_stream: bool,
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 'B': a transaction starts.
    Begin(Begin),
    /// 'C': the transaction opened by the last Begin committed.
    Commit(Commit),
    /// 'O': the transaction was replicated into this server from another node.
    Origin(Origin),
    /// 'R': schema of a table, sent before the first change to it (and after it changes).
    Relation(Relation),
    /// 'Y': name of a non-builtin column type.
    Type(TypeInfo),
    /// 'I': a row was inserted.
    Insert(Insert),
    /// 'U': a row was updated.
    Update(Update),
    /// 'D': a row was deleted.
    Delete(Delete),
    /// 'T': tables were truncated.
    Truncate(Truncate),
    /// 'M': a message written with `pg_logical_emit_message`.
    Message(LogicalMessage),
    /// 'S': a chunk of a still-running large transaction follows (protocol 2).
    StreamStart(StreamStart),
    /// 'E': the current stream chunk ends (protocol 2).
    StreamStop,
    /// 'c': a streamed transaction committed (protocol 2).
    StreamCommit(StreamCommit),
    /// 'A': a streamed transaction or subtransaction aborted (protocol 2).
    StreamAbort(StreamAbort),
}

/// Start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record; the transaction's position in the WAL.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// End of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by Postgres so far; always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: confirm this one to the server.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// Replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server (0/0 inside a stream block).
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// Description of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// Table OID; later row messages refer to the table by it.
    pub oid: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old values Update and Delete carry.
    pub replica_identity: ReplicaIdentity,
    /// Columns in the order tuples list them (dropped and generated columns left out).
    pub columns: Vec<RelationColumn>,
}

/// The table's `REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing, so Update and Delete carry no old values.
    Nothing,
    /// 'f': the whole old row.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// Name of a type, sent before a Relation that uses a non-builtin type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// Type OID.
    pub oid: u32,
    /// Schema name; empty means `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// An inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// OID of the table, as announced by a Relation message.
    pub relation: u32,
    /// The new row.
    pub new: Tuple,
}

/// An updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// OID of the table, as announced by a Relation message.
    pub relation: u32,
    /// Old key or row; absent when the key did not change and identity is not FULL.
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: Tuple,
}

/// A deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// OID of the table, as announced by a Relation message.
    pub relation: u32,
    /// Old key or row.
    pub old: OldTuple,
}

/// Old values of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': replica identity key columns; the other columns are null.
    Key(Tuple),
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

/// Truncated tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_identity: bool,
    /// OIDs of the truncated tables.
    pub relations: Vec<u32>,
}

/// A message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Transaction id, present only inside a stream block.
    pub xid: Option<u32>,
    /// Part of a transaction (else sent at once, outside any Begin/Commit).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Prefix given by the writer, to tell message kinds apart.
    pub prefix: String,
    /// Content, as written.
    pub content: Bytes,
}

/// Start of a chunk of a streamed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: u32,
    /// First chunk of this transaction.
    pub first_segment: bool,
}

/// Commit of a streamed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: u32,
    /// Unused by Postgres so far; always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// Abort of a streamed transaction or one of its subtransactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// Aborted subtransaction; equal to `xid` when the whole transaction aborted.
    pub subxid: u32,
}

/// Column values of one row, in [`Relation::columns`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that did not change; Postgres does not send it again.
    UnchangedToast,
    /// 't': value in the type's text output format.
    Text(Bytes),
    /// 'b': value in the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

/// Why a message could not be decoded. Offsets count from the tag byte, which is byte 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload was empty, so there is not even a tag.
    #[error("empty pgoutput message: no tag byte")]
    Empty,
    /// The first byte is not a tag of protocol version 1 or 2.
    #[error(
        "unknown pgoutput message tag {} at byte 0 (walhook decodes protocol versions 1 and 2)",
        ByteChar(*.tag)
    )]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// The message ended before a fixed-size or length-prefixed field was complete.
    #[error(
        "pgoutput {message} message truncated at byte {offset} while reading {field} \
         (needs {needed} bytes, {left} left)"
    )]
    Truncated {
        /// Message type, e.g. "Update".
        message: &'static str,
        /// Field being read.
        field: Field,
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes the message had left.
        left: usize,
    },
    /// A string ran to the end of the message without its NUL terminator.
    #[error(
        "pgoutput {message} message truncated at byte {offset} while reading {field} \
         (no NUL terminator)"
    )]
    Unterminated {
        /// Message type, e.g. "Relation".
        message: &'static str,
        /// Field being read.
        field: Field,
        /// Where the string starts.
        offset: usize,
    },
    /// A byte that picks between alternatives has a value the protocol does not define.
    #[error(
        "pgoutput {message} message has unexpected {field} {} at byte {offset}; expected {expected}",
        ByteChar(*.byte)
    )]
    UnexpectedByte {
        /// Message type, e.g. "Insert".
        message: &'static str,
        /// Field being read.
        field: Field,
        /// Where the byte is.
        offset: usize,
        /// The byte found.
        byte: u8,
        /// The values allowed there.
        expected: &'static str,
    },
    /// A length or count is negative.
    #[error("pgoutput {message} message has negative {field} {value} at byte {offset}")]
    NegativeLength {
        /// Message type, e.g. "Truncate".
        message: &'static str,
        /// Field being read.
        field: Field,
        /// Where the field starts.
        offset: usize,
        /// The value found.
        value: i32,
    },
    /// A message arrived on the wrong side of a Stream Start / Stream Stop boundary.
    #[error(
        "pgoutput {message} message {}",
        if *.in_stream {
            "inside a stream block (after Stream Start, before Stream Stop), where it cannot occur"
        } else {
            "outside a stream block (no Stream Start before it)"
        }
    )]
    StreamState {
        /// Message type, e.g. "Stream Stop".
        message: &'static str,
        /// Whether the decoder was inside a stream block.
        in_stream: bool,
    },
}

/// What the decoder was reading when it failed, e.g. `commit LSN` or `new tuple column 3 length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Repeated item the field belongs to, with its 1-based position (like Postgres attnums).
    item: Option<(&'static str, usize)>,
    name: &'static str,
}

impl Field {
    const fn new(name: &'static str) -> Self {
        Field { item: None, name }
    }

    /// `index` is 0-based, as in the decoded `Vec`.
    const fn nth(item: &'static str, index: usize, name: &'static str) -> Self {
        Field {
            item: Some((item, index.saturating_add(1))),
            name,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item {
            Some((item, n)) => write!(f, "{item} {n} {}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Shows a protocol byte both ways: tags are ASCII letters, but garbage is best read in hex.
struct ByteChar(u8);

impl fmt::Display for ByteChar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (0x{:02X})", char::from(self.0), self.0)
    }
}

/// Where a message may appear relative to a stream block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    Anywhere,
    InsideStream,
    OutsideStream,
}

#[derive(Clone, Copy)]
enum Kind {
    Begin,
    Message,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
}

impl Kind {
    fn from_tag(tag: u8) -> Option<Kind> {
        Some(match tag {
            b'B' => Kind::Begin,
            b'M' => Kind::Message,
            b'C' => Kind::Commit,
            b'O' => Kind::Origin,
            b'R' => Kind::Relation,
            b'Y' => Kind::Type,
            b'I' => Kind::Insert,
            b'U' => Kind::Update,
            b'D' => Kind::Delete,
            b'T' => Kind::Truncate,
            b'S' => Kind::StreamStart,
            b'E' => Kind::StreamStop,
            b'c' => Kind::StreamCommit,
            b'A' => Kind::StreamAbort,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Begin => "Begin",
            Kind::Message => "Message",
            Kind::Commit => "Commit",
            Kind::Origin => "Origin",
            Kind::Relation => "Relation",
            Kind::Type => "Type",
            Kind::Insert => "Insert",
            Kind::Update => "Update",
            Kind::Delete => "Delete",
            Kind::Truncate => "Truncate",
            Kind::StreamStart => "Stream Start",
            Kind::StreamStop => "Stream Stop",
            Kind::StreamCommit => "Stream Commit",
            Kind::StreamAbort => "Stream Abort",
        }
    }

    // Postgres asserts these placements in pgoutput.c; checking them here turns a decoder that
    // lost track of the stream (and would misread every xid) into an error at the first sign.
    // Origin is allowed anywhere because Postgres sends it right after Stream Start.
    fn placement(self) -> Placement {
        match self {
            Kind::StreamStop => Placement::InsideStream,
            Kind::Begin
            | Kind::Commit
            | Kind::StreamStart
            | Kind::StreamCommit
            | Kind::StreamAbort => Placement::OutsideStream,
            _ => Placement::Anywhere,
        }
    }

    fn has_stream_xid(self) -> bool {
        matches!(
            self,
            Kind::Relation
                | Kind::Type
                | Kind::Insert
                | Kind::Update
                | Kind::Delete
                | Kind::Truncate
                | Kind::Message
        )
    }
}

impl Decoder {
    /// A decoder outside any stream block, as at the start of a replication connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one message; on error the stream-block state is left as it was.
    ///
    /// Bytes after a complete message are ignored: Postgres extends messages by appending
    /// fields in newer protocol versions (v4 appends abort LSN and time to Stream Abort), so
    /// ignoring them lets us negotiate a newer version for one feature without having to
    /// parse every field it adds elsewhere.
    pub fn decode(&mut self, data: Bytes) -> Result<Message, DecodeError> {
        let tag = *data.first().ok_or(DecodeError::Empty)?;
        let kind = Kind::from_tag(tag).ok_or(DecodeError::UnknownTag { tag })?;
        let wrong_place = match kind.placement() {
            Placement::Anywhere => false,
            Placement::InsideStream => !self.in_stream,
            Placement::OutsideStream => self.in_stream,
        };
        if wrong_place {
            return Err(DecodeError::StreamState {
                message: kind.name(),
                in_stream: self.in_stream,
            });
        }

        let mut r = Reader {
            buf: data,
            pos: 1,
            message: kind.name(),
        };
        let xid = if self.in_stream && kind.has_stream_xid() {
            Some(r.u32(Field::new("xid"))?)
        } else {
            None
        };

        let message = match kind {
            Kind::Begin => Message::Begin(begin(&mut r)?),
            Kind::Message => Message::Message(logical_message(&mut r, xid)?),
            Kind::Commit => Message::Commit(commit(&mut r)?),
            Kind::Origin => Message::Origin(origin(&mut r)?),
            Kind::Relation => Message::Relation(relation(&mut r, xid)?),
            Kind::Type => Message::Type(type_info(&mut r, xid)?),
            Kind::Insert => Message::Insert(insert(&mut r, xid)?),
            Kind::Update => Message::Update(update(&mut r, xid)?),
            Kind::Delete => Message::Delete(delete(&mut r, xid)?),
            Kind::Truncate => Message::Truncate(truncate(&mut r, xid)?),
            Kind::StreamStart => Message::StreamStart(stream_start(&mut r)?),
            Kind::StreamStop => Message::StreamStop,
            Kind::StreamCommit => Message::StreamCommit(stream_commit(&mut r)?),
            Kind::StreamAbort => Message::StreamAbort(stream_abort(&mut r)?),
        };

        match kind {
            Kind::StreamStart => self.in_stream = true,
            Kind::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(message)
    }
}

fn begin(r: &mut Reader) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn(Field::new("final LSN"))?,
        commit_time: r.i64(Field::new("commit timestamp"))?,
        xid: r.u32(Field::new("xid"))?,
    })
}

fn commit(r: &mut Reader) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8(Field::new("flags"))?,
        commit_lsn: r.lsn(Field::new("commit LSN"))?,
        end_lsn: r.lsn(Field::new("end LSN"))?,
        commit_time: r.i64(Field::new("commit timestamp"))?,
    })
}

fn origin(r: &mut Reader) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn(Field::new("commit LSN"))?,
        name: r.cstring(Field::new("origin name"))?,
    })
}

fn relation(r: &mut Reader, xid: Option<u32>) -> Result<Relation, DecodeError> {
    let oid = r.u32(Field::new("relation OID"))?;
    let namespace = r.cstring(Field::new("namespace"))?;
    let name = r.cstring(Field::new("relation name"))?;
    let field = Field::new("replica identity");
    let offset = r.pos;
    let replica_identity = match r.u8(field)? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        byte => return Err(r.unexpected(field, offset, byte, "'d', 'n', 'f' or 'i'")),
    };
    let count = r.count16(Field::new("column count"))?;
    // Each column takes at least 10 bytes, so a lying count can't make us allocate much.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for i in 0..count {
        columns.push(RelationColumn {
            is_key: r.u8(Field::nth("column", i, "flags"))? & 1 != 0,
            name: r.cstring(Field::nth("column", i, "name"))?,
            type_oid: r.u32(Field::nth("column", i, "type OID"))?,
            type_modifier: r.i32(Field::nth("column", i, "type modifier"))?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_info(r: &mut Reader, xid: Option<u32>) -> Result<TypeInfo, DecodeError> {
    Ok(TypeInfo {
        xid,
        oid: r.u32(Field::new("type OID"))?,
        namespace: r.cstring(Field::new("namespace"))?,
        name: r.cstring(Field::new("type name"))?,
    })
}

fn insert(r: &mut Reader, xid: Option<u32>) -> Result<Insert, DecodeError> {
    let relation = r.u32(Field::new("relation OID"))?;
    let field = Field::new("tuple marker");
    let offset = r.pos;
    match r.u8(field)? {
        b'N' => {}
        byte => return Err(r.unexpected(field, offset, byte, "'N'")),
    }
    Ok(Insert {
        xid,
        relation,
        new: tuple(r, Side::New)?,
    })
}

fn update(r: &mut Reader, xid: Option<u32>) -> Result<Update, DecodeError> {
    let relation = r.u32(Field::new("relation OID"))?;
    let field = Field::new("tuple marker");
    let mut offset = r.pos;
    let mut marker = r.u8(field)?;
    let old = match marker {
        b'K' | b'O' => {
            let old = old_tuple(r, marker)?;
            offset = r.pos;
            marker = r.u8(field)?;
            Some(old)
        }
        _ => None,
    };
    if marker != b'N' {
        let expected = if old.is_some() {
            "'N'"
        } else {
            "'K', 'O' or 'N'"
        };
        return Err(r.unexpected(field, offset, marker, expected));
    }
    Ok(Update {
        xid,
        relation,
        old,
        new: tuple(r, Side::New)?,
    })
}

fn delete(r: &mut Reader, xid: Option<u32>) -> Result<Delete, DecodeError> {
    let relation = r.u32(Field::new("relation OID"))?;
    let field = Field::new("tuple marker");
    let offset = r.pos;
    let old = match r.u8(field)? {
        marker @ (b'K' | b'O') => old_tuple(r, marker)?,
        byte => return Err(r.unexpected(field, offset, byte, "'K' or 'O'")),
    };
    Ok(Delete { xid, relation, old })
}

/// Reads the tuple after a 'K' or 'O' marker the caller has already checked.
fn old_tuple(r: &mut Reader, marker: u8) -> Result<OldTuple, DecodeError> {
    let values = tuple(r, Side::Old)?;
    Ok(if marker == b'O' {
        OldTuple::Full(values)
    } else {
        OldTuple::Key(values)
    })
}

fn truncate(r: &mut Reader, xid: Option<u32>) -> Result<Truncate, DecodeError> {
    // Unlike everywhere else, the count comes before the flags it doesn't describe.
    let count = r.len32(Field::new("relation count"))?;
    let options = r.u8(Field::new("options"))?;
    let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
    for i in 0..count {
        relations.push(r.u32(Field::nth("relation", i, "OID"))?);
    }
    Ok(Truncate {
        xid,
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relations,
    })
}

fn logical_message(r: &mut Reader, xid: Option<u32>) -> Result<LogicalMessage, DecodeError> {
    let flags = r.u8(Field::new("flags"))?;
    let lsn = r.lsn(Field::new("message LSN"))?;
    let prefix = r.cstring(Field::new("prefix"))?;
    let len = r.len32(Field::new("content length"))?;
    Ok(LogicalMessage {
        xid,
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content: r.bytes(len, Field::new("content"))?,
    })
}

fn stream_start(r: &mut Reader) -> Result<StreamStart, DecodeError> {
    Ok(StreamStart {
        xid: r.u32(Field::new("xid"))?,
        first_segment: r.u8(Field::new("first segment flag"))? != 0,
    })
}

fn stream_commit(r: &mut Reader) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: r.u32(Field::new("xid"))?,
        flags: r.u8(Field::new("flags"))?,
        commit_lsn: r.lsn(Field::new("commit LSN"))?,
        end_lsn: r.lsn(Field::new("end LSN"))?,
        commit_time: r.i64(Field::new("commit timestamp"))?,
    })
}

fn stream_abort(r: &mut Reader) -> Result<StreamAbort, DecodeError> {
    Ok(StreamAbort {
        xid: r.u32(Field::new("xid"))?,
        subxid: r.u32(Field::new("subtransaction xid"))?,
    })
}

/// Which tuple of a row message is being read; Update has both, so errors must say which.
#[derive(Clone, Copy)]
enum Side {
    Old,
    New,
}

impl Side {
    fn column_count(self) -> Field {
        Field::new(match self {
            Side::Old => "old tuple column count",
            Side::New => "new tuple column count",
        })
    }

    fn column(self, index: usize, name: &'static str) -> Field {
        let item = match self {
            Side::Old => "old tuple column",
            Side::New => "new tuple column",
        };
        Field::nth(item, index, name)
    }
}

fn tuple(r: &mut Reader, side: Side) -> Result<Tuple, DecodeError> {
    let count = r.count16(side.column_count())?;
    // Each column takes at least its one kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for i in 0..count {
        let field = side.column(i, "kind");
        let offset = r.pos;
        let value = match r.u8(field)? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = r.len32(side.column(i, "length"))?;
                let bytes = r.bytes(len, side.column(i, "value"))?;
                if kind == b't' {
                    Datum::Text(bytes)
                } else {
                    Datum::Binary(bytes)
                }
            }
            byte => return Err(r.unexpected(field, offset, byte, "'n', 'u', 't' or 'b'")),
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

/// A cursor over one message. Invariant: `pos <= buf.len()`.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, field: Field, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            field,
            offset: self.pos,
            needed,
            left: self.remaining(),
        }
    }

    fn unexpected(
        &self,
        field: Field,
        offset: usize,
        byte: u8,
        expected: &'static str,
    ) -> DecodeError {
        DecodeError::UnexpectedByte {
            message: self.message,
            field,
            offset,
            byte,
            expected,
        }
    }

    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], DecodeError> {
        let chunk = self
            .buf
            .get(self.pos..)
            .and_then(<[u8]>::first_chunk::<N>)
            .copied()
            .ok_or_else(|| self.truncated(field, N))?;
        self.pos += N;
        Ok(chunk)
    }

    fn u8(&mut self, field: Field) -> Result<u8, DecodeError> {
        let [b] = self.array(field)?;
        Ok(b)
    }

    fn i16(&mut self, field: Field) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: Field) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    /// OIDs and xids are unsigned 32-bit on the server; reading them as i32 would show
    /// large ones as negative.
    fn u32(&mut self, field: Field) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i64(&mut self, field: Field) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, field: Field) -> Result<Lsn, DecodeError> {
        self.array(field).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    fn negative(&self, field: Field, offset: usize, value: i32) -> DecodeError {
        DecodeError::NegativeLength {
            message: self.message,
            field,
            offset,
            value,
        }
    }

    /// An Int16 count (columns), which the protocol sends signed.
    fn count16(&mut self, field: Field) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| self.negative(field, offset, n.into()))
    }

    /// An Int32 length or count, which the protocol sends signed.
    fn len32(&mut self, field: Field) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i32(field)?;
        usize::try_from(n).map_err(|_| self.negative(field, offset, n))
    }

    /// `n` bytes as a slice of the input, sharing its allocation.
    fn bytes(&mut self, n: usize, field: Field) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(field, n));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// A NUL-terminated string. Names come from the catalog in the server encoding, which is
    /// UTF-8 almost always; lossy decoding keeps a stray byte from stopping replication.
    fn cstring(&mut self, field: Field) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated {
                message: self.message,
                field,
                offset: self.pos,
            })?;
        let s = String::from_utf8_lossy(rest.get(..len).unwrap_or_default()).into_owned();
        self.pos += len + 1;
        Ok(s)
    }
}

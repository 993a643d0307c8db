//! The replication connection: our own client for Postgres' streaming replication protocol,
//! on `postgres-protocol` framing and tokio (no released tokio-postgres speaks it).
//!
//! [`ReplicationConnection`] connects with `replication=database`, authenticates (trust,
//! cleartext, md5, SCRAM-SHA-256 with channel binding under TLS) and runs the replication
//! commands; [`ReplicationConnection::start_replication`] turns it into a
//! [`ReplicationStream`] of XLogData and keepalive messages, which answers keepalives and sends
//! standby status updates on its own. Bytes only: decoding pgoutput is `source::pgoutput`'s job.

mod error;
mod stream;
mod wire;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;

pub use error::ReplicationError;
pub use stream::{ReplicationMessage, ReplicationStream, DEFAULT_STATUS_INTERVAL};
pub use wire::{AuthMethod, SESSION_SETTINGS};

use self::error::server_error;
use self::wire::{log_notice, Frame, Session, Wire};
use crate::pg::conninfo::{ConnInfo, Target};
use crate::pg::error::ServerMessage;
use crate::pg::tls::{self, OpenError, TlsConnector};
use crate::pg::Lsn;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier (a 64-bit number, as text).
    pub systemid: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's name.
    pub slot_name: String,
    /// The position from which the slot's changes start: streaming from here loses nothing.
    pub consistent_point: Lsn,
    /// The output plugin (`pgoutput`).
    pub output_plugin: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The position from which the slot's changes start: what committed before it is in
    /// the snapshot, what commits after it is streamed.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// A connection in replication mode, before streaming starts.
pub struct ReplicationConnection {
    wire: Wire,
    session: Session,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.wire.target)
            .field("user", &self.wire.user)
            .field("tls", &self.wire.is_tls())
            .field("auth", &self.session.auth)
            .finish()
    }
}

impl ReplicationConnection {
    /// Connects, negotiates TLS per `sslmode` and authenticates. Tries each host in turn,
    /// each within `connect_timeout` if one is set; reports the last failure.
    pub async fn connect(info: &ConnInfo) -> Result<Self, ReplicationError> {
        let tls = TlsConnector::new(info).map_err(ReplicationError::TlsSetup)?;
        let mut last = None;
        for target in info.targets() {
            let attempt = Self::connect_one(info, target, &tls);
            let result = match info.connect_timeout() {
                Some(timeout) => {
                    tokio::time::timeout(timeout, attempt)
                        .await
                        .unwrap_or_else(|_| {
                            Err(ReplicationError::Timeout {
                                target: target.to_string(),
                                timeout,
                            })
                        })
                }
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(target = %target, error = %e, "replication connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ReplicationError::InvalidInput {
            what: "connection string",
            message: "it names no host".into(),
        }))
    }

    async fn connect_one(
        info: &ConnInfo,
        target: &Target,
        tls: &TlsConnector,
    ) -> Result<Self, ReplicationError> {
        let target_s = target.to_string();
        let stream = tls::open(target, info, tls).await.map_err(|e| match e {
            OpenError::Connect(source) => ReplicationError::Connect {
                target: target_s.clone(),
                source,
            },
            OpenError::Tls(source) => ReplicationError::Tls {
                target: target_s.clone(),
                source,
            },
        })?;
        let mut wire = Wire::new(stream, target_s, info.user().to_owned());
        let session = wire.startup(info).await?;
        tracing::debug!(
            target = %wire.target,
            tls = wire.is_tls(),
            auth = ?session.auth,
            server_version = session.server_version.as_deref().unwrap_or("?"),
            "replication connection established"
        );
        let mut connection = ReplicationConnection { wire, session };
        if connection.session.server_encoding.as_deref() == Some("SQL_ASCII") {
            // A SQL_ASCII database holds bytes in no declared encoding, and converting them
            // to UTF8 makes the walsender end the stream at the first byte above 0x7F, for
            // good (it is retried on every start). Read them as they are: the decoder and
            // the value converter decode lossily, so such a byte becomes U+FFFD.
            connection
                .simple_query("SET client_encoding = 'SQL_ASCII'")
                .await?;
        }
        Ok(connection)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    /// How the server authenticated us.
    pub fn authentication(&self) -> AuthMethod {
        self.session.auth
    }

    /// The server's `server_version`, e.g. `15.4 (Debian 15.4-1)`.
    pub fn server_version(&self) -> Option<&str> {
        self.session.server_version.as_deref()
    }

    /// Runs `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        const CONTEXT: &str = "IDENTIFY_SYSTEM";
        let rows = self.simple_query(CONTEXT).await?;
        let row = single_row(CONTEXT, rows, 4)?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let bad = |got: String| ReplicationError::Protocol {
            context: CONTEXT.into(),
            expected: "systemid, timeline, xlogpos and dbname",
            got,
        };
        let timeline = field(1)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(format!("timeline {:?}", field(1))))?;
        let xlogpos = field(2)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(format!("xlogpos {:?}", field(2))))?;
        Ok(SystemInfo {
            systemid: field(0).ok_or_else(|| bad("no systemid".into()))?,
            timeline,
            xlogpos,
            dbname: field(3),
        })
    }

    /// Runs a command with the simple query protocol and returns its rows as text. For small
    /// results: everything is collected in memory. Errors carry the SQLSTATE.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        let context = command_name(sql);
        frontend::query(sql, self.wire.out()).map_err(|e| ReplicationError::InvalidInput {
            what: "query",
            message: e.to_string(),
        })?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.wire.read_frame(&context).await? {
                Frame::Message(Message::DataRow(row)) => rows.push(text_row(&context, &row)?),
                Frame::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::ParameterStatus(_),
                ) => {}
                Frame::Message(Message::NoticeResponse(n)) => log_notice(&n),
                Frame::Message(Message::ErrorResponse(body)) => {
                    // Keep reading: the connection is usable again after ReadyForQuery.
                    error = Some(server_error(
                        ServerMessage::parse(&body),
                        &context,
                        &self.wire.user,
                    ));
                }
                Frame::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                other => {
                    return Err(ReplicationError::Protocol {
                        context,
                        expected: "rows, CommandComplete or ReadyForQuery (COPY is not supported \
                                   by simple_query)",
                        got: other.describe(),
                    })
                }
            }
        }
    }

    /// Creates a logical slot for pgoutput (`CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL
    /// pgoutput NOEXPORT_SNAPSHOT`). A temporary slot disappears with this connection.
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<SlotInfo, ReplicationError> {
        let row = self
            .create_slot_row(name, temporary, "NOEXPORT_SNAPSHOT")
            .await?;
        let field = |i: usize| row.get(i).cloned().flatten();
        Ok(SlotInfo {
            slot_name: field(0).unwrap_or_else(|| name.to_owned()),
            consistent_point: consistent_point(&row)?,
            output_plugin: field(3),
        })
    }

    /// Creates a logical slot for pgoutput (temporary: gone with this connection) and
    /// exports the snapshot it starts from (`… LOGICAL pgoutput EXPORT_SNAPSHOT`). The
    /// snapshot stays importable (`SET TRANSACTION SNAPSHOT`) only while this connection
    /// stays open and runs no other command; the transaction that imports it sees exactly
    /// what the slot does not stream.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        let row = self
            .create_slot_row(slot, temporary, "EXPORT_SNAPSHOT")
            .await?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| ReplicationError::Protocol {
                context: CREATE_SLOT.into(),
                expected: "a snapshot_name",
                got: "NULL".into(),
            })?;
        Ok(CreatedSlot {
            consistent_point: consistent_point(&row)?,
            snapshot,
        })
    }

    /// Runs `CREATE_REPLICATION_SLOT` with the given snapshot action and returns its row:
    /// slot_name, consistent_point, snapshot_name, output_plugin.
    async fn create_slot_row(
        &mut self,
        name: &str,
        temporary: bool,
        snapshot_action: &str,
    ) -> Result<Vec<Option<String>>, ReplicationError> {
        // The pre-15 spelling of the options: still accepted by 15+, and needed by 10–14.
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput {snapshot_action}",
            quote_ident("slot name", name)?,
            if temporary { " TEMPORARY" } else { "" }
        );
        let rows = self
            .simple_query(&sql)
            .await
            .map_err(|e| recontext(e, CREATE_SLOT))?;
        single_row(CREATE_SLOT, rows, 2)
    }

    /// Starts logical streaming from `slot` at `start` with the given plugin options, e.g.
    /// `[("proto_version", "1"), ("publication_names", "\"p\"")]`. Option names and values
    /// are quoted here; pass them as they should arrive.
    ///
    /// `start` also seeds the positions reported in status updates until
    /// [`ReplicationStream::acknowledge`] moves them.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream, ReplicationError> {
        const CONTEXT: &str = "START_REPLICATION";
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start}",
            quote_ident("slot name", slot)?
        );
        if !options.is_empty() {
            let mut list = Vec::with_capacity(options.len());
            for (name, value) in options {
                list.push(format!(
                    "{} {}",
                    quote_ident("option name", name)?,
                    quote_literal("option value", value)?
                ));
            }
            sql.push_str(&format!(" ({})", list.join(", ")));
        }
        frontend::query(&sql, self.wire.out()).map_err(|e| ReplicationError::InvalidInput {
            what: "START_REPLICATION",
            message: e.to_string(),
        })?;
        self.wire.flush().await?;
        loop {
            match self.wire.read_frame(CONTEXT).await? {
                Frame::CopyBothResponse => break,
                Frame::Message(Message::NoticeResponse(n)) => log_notice(&n),
                Frame::Message(Message::ParameterStatus(_)) => {}
                Frame::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(
                        ServerMessage::parse(&body),
                        CONTEXT,
                        &self.wire.user,
                    ));
                }
                other => {
                    return Err(ReplicationError::Protocol {
                        context: CONTEXT.into(),
                        expected: "CopyBothResponse or ErrorResponse",
                        got: other.describe(),
                    })
                }
            }
        }
        tracing::debug!(slot, %start, "replication streaming started");
        Ok(ReplicationStream::new(self.wire, start))
    }

    /// Ends the session politely (Terminate). Dropping the connection also ends it.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        self.wire.terminate().await
    }
}

const CREATE_SLOT: &str = "CREATE_REPLICATION_SLOT";

/// The consistent_point of a `CREATE_REPLICATION_SLOT` row.
fn consistent_point(row: &[Option<String>]) -> Result<Lsn, ReplicationError> {
    let field = row.get(1).cloned().flatten();
    field
        .as_deref()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ReplicationError::Protocol {
            context: CREATE_SLOT.into(),
            expected: "a consistent_point LSN",
            got: format!("{field:?}"),
        })
}

/// The command's first word(s), to say what failed without quoting its arguments.
fn command_name(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or("empty query")
        .to_owned()
}

fn recontext(e: ReplicationError, context: &str) -> ReplicationError {
    match e {
        ReplicationError::Server {
            code,
            message,
            detail,
            hint,
            ..
        } => ReplicationError::Server {
            context: context.to_owned(),
            code,
            message,
            detail,
            hint,
        },
        other => other,
    }
}

fn single_row(
    context: &str,
    mut rows: Vec<Vec<Option<String>>>,
    min_columns: usize,
) -> Result<Vec<Option<String>>, ReplicationError> {
    match rows.len() {
        1 if rows[0].len() >= min_columns => Ok(rows.remove(0)),
        n => Err(ReplicationError::Protocol {
            context: context.to_owned(),
            expected: "one row",
            got: format!("{n} rows of {} columns", rows.first().map_or(0, Vec::len)),
        }),
    }
}

fn text_row(context: &str, row: &DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let bad = |got: String| ReplicationError::Protocol {
        context: context.to_owned(),
        expected: "a DataRow of UTF-8 text columns",
        got,
    };
    let buf = row.buffer();
    let mut ranges = row.ranges();
    let mut out = Vec::new();
    while let Some(range) = ranges.next().map_err(|e| bad(e.to_string()))? {
        out.push(match range {
            None => None,
            Some(r) => {
                let bytes = buf
                    .get(r)
                    .ok_or_else(|| bad("a column past the row's end".into()))?;
                Some(
                    std::str::from_utf8(bytes)
                        .map_err(|e| bad(e.to_string()))?
                        .to_owned(),
                )
            }
        });
    }
    Ok(out)
}

/// Double-quotes an identifier for the replication grammar (`"` doubled).
fn quote_ident(what: &'static str, s: &str) -> Result<String, ReplicationError> {
    check_sendable(what, s)?;
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// Single-quotes a string literal for the replication grammar (`'` doubled; backslashes are
/// literal there).
fn quote_literal(what: &'static str, s: &str) -> Result<String, ReplicationError> {
    check_sendable(what, s)?;
    Ok(format!("'{}'", s.replace('\'', "''")))
}

fn check_sendable(what: &'static str, s: &str) -> Result<(), ReplicationError> {
    if s.contains('\0') {
        return Err(ReplicationError::InvalidInput {
            what,
            message: format!("{s:?} contains a NUL byte"),
        });
    }
    if s.is_empty() {
        return Err(ReplicationError::InvalidInput {
            what,
            message: "it is empty".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("x", "slot").unwrap(), "\"slot\"");
        assert_eq!(quote_ident("x", "a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("x", "\"p\"").unwrap(), "'\"p\"'");
        assert_eq!(quote_literal("x", "it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("x", "a\\b").unwrap(), "'a\\b'");
        assert!(quote_literal("x", "a\0b").is_err());
        assert!(quote_ident("x", "").is_err());
    }

    #[test]
    fn command_name_is_the_first_word() {
        assert_eq!(command_name("IDENTIFY_SYSTEM"), "IDENTIFY_SYSTEM");
        assert_eq!(command_name("  SELECT 1"), "SELECT");
        assert_eq!(command_name(""), "empty query");
    }
}

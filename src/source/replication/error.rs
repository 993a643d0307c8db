//! What can go wrong on a replication connection, each with what walhook was doing and,
//! where there is one, the fix. No variant ever holds the password.

use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorResponseBody;

use crate::pg::tls::TlsError;

/// An error on a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The TCP or Unix-socket connection could not be made.
    #[error(
        "could not connect to {target}: {source}; is Postgres running there and accepting \
         connections (listen_addresses, port, firewall)?"
    )]
    Connect {
        /// The server, `host:port` or the socket path; never the password.
        target: String,
        /// The socket error.
        source: io::Error,
    },
    /// `connect_timeout` ran out.
    #[error("connecting to {target} timed out after {}s (connect_timeout)", timeout.as_secs())]
    Timeout {
        /// The server.
        target: String,
        /// The limit that ran out.
        timeout: Duration,
    },
    /// The TLS settings (CA file, client certificate) could not be loaded.
    #[error("{0}")]
    TlsSetup(TlsError),
    /// TLS negotiation with the server failed.
    #[error("TLS with {target} failed: {source}")]
    Tls {
        /// The server.
        target: String,
        /// What went wrong.
        source: TlsError,
    },
    /// The server refused the credentials, or asked for a password we do not have.
    #[error("{message}")]
    Auth {
        /// The role.
        user: String,
        /// The server's words, or ours for a missing password, with the fix.
        message: String,
    },
    /// The server answered with an ErrorResponse.
    #[error(
        "{context}: {message} (SQLSTATE {code}){}{}",
        detail_and_hint(detail, hint),
        fix_for(code, message)
    )]
    Server {
        /// What walhook was doing, e.g. `START_REPLICATION`.
        context: String,
        /// SQLSTATE, e.g. `55006` (slot is active) or `42704` (slot does not exist).
        code: String,
        /// The primary message.
        message: String,
        /// DETAIL, if the server gave one.
        detail: Option<String>,
        /// HINT, if the server gave one.
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol error during {context}: expected {expected}, got {got}")]
    Protocol {
        /// What walhook was doing.
        context: String,
        /// What the protocol allows here.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// The connection broke after it was established.
    #[error("connection to {target} lost: {source}")]
    Io {
        /// The server.
        target: String,
        /// The socket error (`UnexpectedEof` when the server closed it).
        source: io::Error,
    },
    /// An argument cannot be sent (e.g. it contains a NUL byte).
    #[error("invalid {what}: {message}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        message: String,
    },
}

impl ReplicationError {
    /// The SQLSTATE of a server error, e.g. `"55006"`.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether reconnecting later may succeed: the network, a restarting server, a slot
    /// another process holds right now. Bad credentials, a missing slot or a protocol
    /// violation will not fix themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Timeout { .. }
            | ReplicationError::Io { .. } => true,
            ReplicationError::Server { code, .. } => {
                // 55006 slot in use, 57P0x server shutting down or starting up, 53300 too
                // many connections, class 08 connection exceptions.
                matches!(
                    code.as_str(),
                    "55006" | "57P01" | "57P02" | "57P03" | "53300"
                ) || code.starts_with("08")
            }
            _ => false,
        }
    }

    /// Whether TLS failed because the server certificate did not verify.
    pub fn is_certificate_error(&self) -> bool {
        matches!(self, ReplicationError::Tls { source, .. } if source.is_certificate_error())
    }
}

/// The fields of an ErrorResponse that walhook uses.
#[derive(Debug, Default)]
pub(crate) struct ServerMessage {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl ServerMessage {
    /// Reads the fields of an ErrorResponse or NoticeResponse body.
    pub(crate) fn parse(body: &ErrorResponseBody) -> ServerMessage {
        let mut out = ServerMessage::default();
        let mut fields = body.fields();
        // A malformed field list still leaves whatever was read before it; the error itself
        // is what the user needs to see.
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => out.code = value,
                b'M' => out.message = value,
                b'D' => out.detail = Some(value),
                b'H' => out.hint = Some(value),
                _ => {}
            }
        }
        out
    }

    /// Turns the message into the error for `context`; authentication failures become `Auth`.
    pub(crate) fn into_error(self, context: &str, user: &str) -> ReplicationError {
        // Class 28 is "invalid authorization specification": wrong password, no pg_hba entry.
        if self.code.starts_with("28") {
            return ReplicationError::Auth {
                user: user.to_owned(),
                message: auth_message(&self.message, user),
            };
        }
        ReplicationError::Server {
            context: context.to_owned(),
            code: self.code,
            message: self.message,
            detail: self.detail,
            hint: self.hint,
        }
    }
}

/// The server's authentication failure, with the fix appended.
pub(crate) fn auth_message(server_message: &str, user: &str) -> String {
    if server_message.contains("pg_hba.conf") {
        format!(
            "{server_message}; add a pg_hba.conf line that lets user {user} connect from here \
             (a logical replication connection matches the database name, not the keyword \
             `replication`) and reload Postgres"
        )
    } else if server_message.contains("password") {
        format!("{server_message}; check the user and password in the connection string")
    } else if server_message.contains("does not exist") {
        format!("{server_message}; create the role, or fix user in the connection string")
    } else {
        server_message.to_owned()
    }
}

/// The error for a server that wants a password the connection string does not have.
pub(crate) fn missing_password_message(user: &str) -> String {
    format!(
        "the server asks for a password for user {user} but the connection string has none; \
         add password=… to it (or ${{VAR}} in the config to take it from the environment)"
    )
}

/// `: detail; hint: …` when the server gave them.
pub(crate) fn detail_and_hint(detail: &Option<String>, hint: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(d) = detail {
        out.push_str(": ");
        out.push_str(d);
    }
    if let Some(h) = hint {
        out.push_str("; hint: ");
        out.push_str(h);
    }
    out
}

/// What to do about the server errors a CDC daemon meets, appended to the server's words.
pub(crate) fn fix_for(code: &str, message: &str) -> &'static str {
    match code {
        "55006" => {
            "; another client (another walhook?) is streaming from this slot: stop it, or wait \
             for it to disconnect; walhook retries"
        }
        "42704" if message.contains("replication slot") => {
            "; the slot is gone: if it was dropped behind walhook's back, changes since then are \
             lost; recreate it deliberately with `walhook setup --recreate-slot`"
        }
        "42704" if message.contains("publication") => {
            "; create the publication (walhook setup does), or fix its name in the config"
        }
        "42501" => {
            "; the role needs the REPLICATION attribute: ALTER ROLE … REPLICATION (or connect as \
             a superuser)"
        }
        "55000" if message.contains("wal_level") => {
            "; set wal_level = logical in postgresql.conf and restart Postgres"
        }
        "53400" => {
            "; raise max_replication_slots / max_wal_senders in postgresql.conf (restart \
             needed), or drop unused slots"
        }
        "53300" => "; raise max_wal_senders or max_connections, or close idle connections",
        "3D000" => "; create the database, or fix dbname in the connection string",
        _ => "",
    }
}

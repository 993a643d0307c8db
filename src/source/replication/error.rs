//! What can go wrong on a replication connection, each with what walhook was doing and,
//! where there is one, the fix. No variant ever holds the password.

use std::io;
use std::time::Duration;

use crate::pg::error::{auth_message, detail_and_hint, fix_for, ServerMessage};
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

/// Turns a server's ErrorResponse into the error for `context`; authentication failures
/// become `Auth`.
pub(crate) fn server_error(msg: ServerMessage, context: &str, user: &str) -> ReplicationError {
    // Class 28 is "invalid authorization specification": wrong password, no pg_hba entry.
    if msg.code.starts_with("28") {
        return ReplicationError::Auth {
            user: user.to_owned(),
            message: auth_message(&msg.message, user),
        };
    }
    ReplicationError::Server {
        context: context.to_owned(),
        code: msg.code,
        message: msg.message,
        detail: msg.detail,
        hint: msg.hint,
    }
}

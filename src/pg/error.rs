//! Presenting what a Postgres server (or the way to it) said: the server's words with its
//! DETAIL and HINT, and the fix for the errors walhook users meet, appended. Both the
//! replication connection and ordinary SQL connections present errors through here; no
//! message ever quotes the password.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorResponseBody;

use super::tls::TlsError;

/// Why an ordinary SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings (CA file, client certificate) could not be loaded.
    #[error("{0}")]
    TlsSetup(TlsError),
    /// TLS negotiation with the server failed.
    #[error("TLS with {target} failed: {source}")]
    Tls {
        /// The server, `host:port`.
        target: String,
        /// What went wrong.
        source: TlsError,
    },
    /// The server refused the credentials.
    #[error("{message}")]
    Auth {
        /// The role.
        user: String,
        /// The server's message, or ours when the password is missing, with the fix.
        message: String,
    },
    /// The server reported an error during startup (e.g. the database does not exist).
    #[error(
        "connecting to {target}: {message} (SQLSTATE {code}){}{}",
        detail_and_hint(detail, hint),
        fix_for(code, message)
    )]
    Server {
        /// The server, `host:port`.
        target: String,
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
        /// DETAIL, if any.
        detail: Option<String>,
        /// HINT, if any.
        hint: Option<String>,
    },
    /// A bounded wait for the connection ran out (see [`crate::pg::client::Reconnecting`]).
    #[error("no answer within {}", seconds_or_millis(*wait))]
    Timeout {
        /// The bound.
        wait: std::time::Duration,
    },
    /// Anything else tokio-postgres reported (unreachable host, timeout, …).
    #[error("could not connect to {target}: {}", error_chain(source))]
    Postgres {
        /// The server, `host:port`.
        target: String,
        /// The error.
        source: tokio_postgres::Error,
    },
}

/// An error and its causes, `: `-separated (tokio-postgres puts the useful part in the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `10s`, or `300ms` for a wait under whole seconds.
fn seconds_or_millis(wait: std::time::Duration) -> String {
    if wait.subsec_nanos() == 0 {
        format!("{}s", wait.as_secs())
    } else {
        format!("{}ms", wait.as_millis())
    }
}

/// The server's message with detail and hint, or for client-side failures (a dropped
/// connection) the whole error chain.
pub fn server_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} (SQLSTATE {}){}",
            db.message(),
            db.code().code(),
            detail_and_hint(
                &db.detail().map(str::to_owned),
                &db.hint().map(str::to_owned)
            )
        ),
        None => error_chain(error),
    }
}

/// Only the server's primary message (tokio-postgres's own text for a refused statement is
/// "db error"), or the error itself when the server said nothing.
pub fn server_words(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
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

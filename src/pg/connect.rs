//! Ordinary SQL connections (tokio-postgres) with the same `sslmode` rules as the
//! replication connection: one target at a time, each failure turned into a [`ConnectError`]
//! that says what to fix.

use std::io;

use tokio::task::JoinHandle;

use super::conninfo::{ConnInfo, Host, SslMode, Target};
use super::error::{auth_message, error_chain, missing_password_message, ConnectError};
use super::tls::{TlsConnector, TlsError};

/// Opens an ordinary SQL connection with the same `sslmode` rules as the replication
/// connection, spawns its connection task, and returns the client. Tries each host in turn.
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, ConnectError> {
    connect_sql_watched(info)
        .await
        .map(|(client, _ended)| client)
}

/// [`connect_sql`], and a handle that completes the moment the connection ends: with the
/// error it ended with, or `None` when it closed cleanly (the client was dropped, or the
/// server closed the socket without a word).
pub async fn connect_sql_watched(
    info: &ConnInfo,
) -> Result<(tokio_postgres::Client, JoinHandle<Option<String>>), ConnectError> {
    let tls = TlsConnector::new(info).map_err(ConnectError::TlsSetup)?;
    let mut last = None;
    for target in info.targets() {
        let config = single_target_config(info, target);
        match config.connect(tls.clone()).await {
            Ok((client, connection)) => {
                let target = target.to_string();
                let ended = tokio::spawn(async move {
                    match connection.await {
                        Ok(()) => None,
                        Err(e) => {
                            tracing::warn!(%target, error = %e, "SQL connection ended with an error");
                            Some(e.to_string())
                        }
                    }
                });
                return Ok((client, ended));
            }
            Err(e) => {
                let e = classify(info, target, e);
                tracing::debug!(%target, error = %e, "connection attempt failed");
                last = Some(e);
            }
        }
    }
    // `targets()` is never empty (conninfo falls back to a default host), so `last` is set.
    Err(last.unwrap_or_else(|| ConnectError::TlsSetup(TlsError::NoSystemRoots)))
}

/// A tokio-postgres config for one target, so each host gets its own `sslmode` (Unix sockets
/// never use TLS) and its own error.
fn single_target_config(info: &ConnInfo, target: &Target) -> tokio_postgres::Config {
    use tokio_postgres::config::SslMode as PgSslMode;
    let base = info.config();
    let mut c = tokio_postgres::Config::new();
    c.user(info.user())
        .dbname(info.dbname())
        .application_name(info.application_name())
        .port(target.port)
        .keepalives(base.get_keepalives())
        .keepalives_idle(base.get_keepalives_idle())
        .target_session_attrs(base.get_target_session_attrs())
        .channel_binding(base.get_channel_binding());
    if let Some(pw) = info.password() {
        c.password(pw);
    }
    if let Some(options) = info.options() {
        c.options(options);
    }
    match &target.host {
        Host::Tcp(name) => c.host(name),
        Host::Unix(dir) => c.host_path(dir),
    };
    if let Some(addr) = target.hostaddr {
        c.hostaddr(addr);
    }
    if let Some(t) = info.connect_timeout() {
        c.connect_timeout(t);
    }
    if let Some(t) = base.get_tcp_user_timeout() {
        c.tcp_user_timeout(*t);
    }
    if let Some(t) = base.get_keepalives_interval() {
        c.keepalives_interval(t);
    }
    if let Some(n) = base.get_keepalives_retries() {
        c.keepalives_retries(n);
    }
    c.ssl_mode(match info.sslmode() {
        _ if target.is_unix() => PgSslMode::Disable,
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    c
}

fn classify(info: &ConnInfo, target: &Target, e: tokio_postgres::Error) -> ConnectError {
    use std::error::Error as _;
    let target_s = target.to_string();
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_owned();
        if code.starts_with("28") {
            return ConnectError::Auth {
                user: info.user().to_owned(),
                message: auth_message(db.message(), info.user()),
            };
        }
        return ConnectError::Server {
            target: target_s,
            code,
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
        };
    }
    if e.source().is_some_and(|s| s.is::<TlsError>()) {
        let source = match e.into_source().map(|s| s.downcast::<TlsError>()) {
            Some(Ok(tls)) => *tls,
            // Checked just above; keep the text should tokio-postgres ever re-wrap it.
            Some(Err(other)) => TlsError::Handshake {
                source: io::Error::other(other),
            },
            None => TlsError::Handshake {
                source: io::Error::other("TLS failed"),
            },
        };
        return ConnectError::Tls {
            target: target_s,
            source,
        };
    }
    // tokio-postgres reports these two as plain strings; match them to give the typed error.
    let text = error_chain(&e);
    if text.contains("password missing") {
        return ConnectError::Auth {
            user: info.user().to_owned(),
            message: missing_password_message(info.user()),
        };
    }
    if text.contains("server does not support TLS") {
        return ConnectError::Tls {
            target: target_s,
            source: TlsError::NotSupported {
                mode: info.sslmode(),
            },
        };
    }
    ConnectError::Postgres {
        target: target_s,
        source: e,
    }
}

//! One active `walhook run` per outbox schema and slot; the others wait as standbys.
//!
//! The active process holds a session-level advisory lock on a connection of its own to the
//! outbox database, for as long as it lives. A second process on the same config finds the
//! lock taken, says so once, and tries again every second; when the active process dies its
//! connection closes, Postgres releases the lock, and the standby takes over.
//!
//! The lock is what makes "never two actives" true, so the active process watches its lock
//! connection. When it ends (the outbox restarted, the network dropped), the process tries to
//! take the lock again on a new connection as soon as the outbox answers: while the outbox is
//! unreachable nobody can capture or deliver through it, so nothing is lost by waiting, and a
//! Postgres restart does not end the daemon (SPEC §8). If another process holds the lock by
//! then, [`ActiveLock::lost`] reports it and `run` exits with an error, for a supervisor to
//! restart it as a standby.
//!
//! In a network partition the server notices the dead client only through TCP keepalives;
//! the lock session asks for them (about 25 s), while the client gives up after at most
//! 12 s without an answer — so the old active has stopped before the lock is free.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::startup::StartupError;
use crate::pg;
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::server_message;
use crate::source::setup::advisory_key;

/// How often a standby tries to take the lock.
pub(super) const RETRY: Duration = Duration::from_secs(1);

/// How long an active process whose lock connection broke waits before taking the lock
/// again: longer than a standby's [`RETRY`].
const YIELD: Duration = Duration::from_millis(2_500);

/// How often the active process checks that its lock connection answers…
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// …and how long it waits for the answer before it stops being active.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server-side settings of the lock session: notice a vanished client (and free the lock)
/// after about 25 s of silence, later than the client gives up (`PROBE_EVERY` +
/// `PROBE_TIMEOUT`). Ignored where the platform or the server version lacks them.
const SESSION_SETTINGS: [&str; 5] = [
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 30000",
    // A server-wide idle_session_timeout (14+) must not end the lock session.
    "SET idle_session_timeout = 0",
];

/// The lock of the active process. Dropping it closes the connection and frees the lock.
pub(super) struct ActiveLock {
    client: Client,
    ended: JoinHandle<Option<String>>,
    outbox: ConnInfo,
    key: i64,
    /// `<schema>/<slot>`, for messages.
    pub(super) what: String,
    /// How long this process waited as a standby (zero when the lock was free at once).
    pub(super) waited: Duration,
}

/// What the lock is on: the outbox schema and the slot of this config.
pub(super) fn lock_name(schema: &str, slot: &str) -> String {
    format!("{schema}/{slot}")
}

/// Takes the lock, waiting as a standby while another process holds it. Fails only when the
/// outbox cannot be reached at first (as `run` would fail anyway); a standby that loses its
/// connection later reconnects. The caller stops waiting on a signal by dropping the future.
pub(super) async fn acquire(outbox: &ConnInfo, what: &str) -> Result<ActiveLock, StartupError> {
    let key = advisory_key("active", what);
    let started = Instant::now();
    let mut standby = false;
    let mut reconnect = RETRY;
    loop {
        let (client, ended) = match lock_session(outbox).await {
            Ok(connection) => connection,
            Err(e) if !standby => return Err(e.into()),
            Err(e) => {
                tracing::warn!("standby: {e}; trying again in {reconnect:?}");
                tokio::time::sleep(reconnect).await;
                reconnect = (reconnect * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            let taken = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map(|row| row.get::<_, bool>(0));
            match taken {
                Ok(true) => {
                    let waited = if standby {
                        started.elapsed()
                    } else {
                        Duration::ZERO
                    };
                    return Ok(ActiveLock {
                        client,
                        ended,
                        outbox: outbox.clone(),
                        key,
                        what: what.to_owned(),
                        waited,
                    });
                }
                Ok(false) => {
                    if !standby {
                        tracing::info!(
                            "standby: another walhook holds {what}; waiting to take over"
                        );
                        standby = true;
                    }
                    reconnect = RETRY;
                }
                Err(e) if !standby => {
                    return Err(StartupError::Lock {
                        what: what.to_owned(),
                        message: server_message(&e),
                    })
                }
                Err(e) => {
                    tracing::warn!(
                        "standby: the connection to the outbox failed ({}); reconnecting",
                        server_message(&e)
                    );
                    break;
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// A connection for the lock, with the session settings that free the lock promptly when
/// this process vanishes.
async fn lock_session(
    outbox: &ConnInfo,
) -> Result<(Client, JoinHandle<Option<String>>), pg::ConnectError> {
    let (client, ended) = pg::connect_sql_watched(outbox).await?;
    for setting in SESSION_SETTINGS {
        if let Err(e) = client.batch_execute(setting).await {
            tracing::debug!("lock session: {setting}: {}", server_message(&e));
        }
    }
    Ok((client, ended))
}

impl ActiveLock {
    /// Completes when another process holds the lock: the lock connection ended (or did not
    /// answer) and, once the outbox answered again, the lock was taken. Returns why.
    pub(super) async fn lost(&mut self) -> String {
        loop {
            let reason = self.connection_lost().await;
            tracing::warn!(
                "the connection holding the active lock on {} ended ({reason}); taking the \
                 lock again as soon as the outbox answers",
                self.what
            );
            // A standby tries every RETRY: give it the first chance, so that a process whose
            // lock connection broke yields to one that was waiting.
            tokio::time::sleep(YIELD).await;
            loop {
                let Ok((client, ended)) = lock_session(&self.outbox).await else {
                    tokio::time::sleep(RETRY).await;
                    continue;
                };
                match client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key])
                    .await
                {
                    Ok(row) if row.get::<_, bool>(0) => {
                        tracing::info!("active: took the lock on {} again", self.what);
                        self.client = client;
                        self.ended = ended;
                        break;
                    }
                    Ok(_) => return format!("{reason}; another walhook holds it now"),
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
            }
        }
    }

    /// Completes when the lock connection ended, failed, or did not answer within
    /// `PROBE_TIMEOUT`. Returns why.
    async fn connection_lost(&mut self) -> String {
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = &mut self.ended => {
                    return match ended {
                        Ok(Some(error)) => error,
                        _ => "the connection was closed".to_owned(),
                    };
                }
                _ = probe.tick() => {
                    match tokio::time::timeout(PROBE_TIMEOUT, self.client.simple_query("SELECT 1"))
                        .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return server_message(&e),
                        Err(_) => return format!("no answer within {PROBE_TIMEOUT:?}"),
                    }
                }
            }
        }
    }
}

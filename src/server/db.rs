//! The admin API's connection to the outbox: one connection, opened on first use and again
//! after it was lost, shared by the calls one at a time (they are few and short), with a
//! bound on every wait so that an unreachable database gives an error, not a hung call.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio::time::timeout;
use tokio_postgres::Client;

use super::api::ApiError;
use crate::pg::conninfo::ConnInfo;
use crate::pg::Reconnecting;

/// How long a call waits for the connection, for connecting, and for one database step.
pub(super) const DB_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbox connection of the admin API.
pub(super) struct OutboxDb {
    client: Mutex<Reconnecting>,
}

/// The connection, held by one call.
pub(super) struct Conn<'a>(MutexGuard<'a, Reconnecting>);

impl Conn<'_> {
    /// The client.
    pub(super) fn client(&mut self) -> &mut Client {
        self.0.current().expect("connected when handed out")
    }
}

impl OutboxDb {
    /// Connects on first use.
    pub(super) fn new(info: ConnInfo) -> Self {
        OutboxDb {
            client: Mutex::new(Reconnecting::bounded(info, DB_TIMEOUT)),
        }
    }

    /// The connection, opened (again) when needed.
    pub(super) async fn conn(&self) -> Result<Conn<'_>, ApiError> {
        let mut guard = timeout(DB_TIMEOUT, self.client.lock()).await.map_err(|_| {
            ApiError::database(format!(
                "the outbox connection is busy with another call for more than {}s",
                DB_TIMEOUT.as_secs()
            ))
        })?;
        guard
            .get()
            .await
            .map_err(|e| ApiError::database(format!("connecting to the outbox: {e}")))?;
        Ok(Conn(guard))
    }
}

/// `step` within [`DB_TIMEOUT`]; `what` names it in the error.
pub(super) async fn timed<T>(
    what: &str,
    step: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    timeout(DB_TIMEOUT, step).await.unwrap_or_else(|_| {
        Err(ApiError::database(format!(
            "{what}: the outbox did not answer within {}s",
            DB_TIMEOUT.as_secs()
        )))
    })
}

//! One reconnecting SQL connection, for the long-lived tasks that talk to a database now and
//! then (the admin API, the sampler, retention, the dispatcher's queues): opened on first
//! use, opened again once tokio-postgres reports it closed or the owner [`reset`]s it after
//! an error, and — when given a bound — never waiting longer than that for a connection, so
//! an unreachable database gives an error instead of a hung task.
//!
//! It holds either a bare [`Client`] or what the owner builds on one (prepared statements,
//! a queue): anything that can say whether its connection is closed ([`Session`]). It does
//! not retry by itself; each owner already has its own rhythm (the next call, sample or run).
//!
//! [`reset`]: Reconnecting::reset

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Client;

use super::connect::connect_sql;
use super::conninfo::ConnInfo;
use super::error::ConnectError;

/// Something built on one SQL connection, which knows when that connection is gone.
pub trait Session {
    /// Whether the connection underneath has closed (the server went away, the socket broke).
    fn is_closed(&self) -> bool;
}

impl Session for Client {
    fn is_closed(&self) -> bool {
        Client::is_closed(self)
    }
}

/// A session shared by handing out clones (the dispatcher's queues).
impl<T: Session + ?Sized> Session for std::sync::Arc<T> {
    fn is_closed(&self) -> bool {
        T::is_closed(self)
    }
}

/// Why [`Reconnecting::get_with`] has no session: connecting failed, or building on the new
/// connection did.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E> {
    /// The connection could not be opened (or not within the bound).
    #[error(transparent)]
    Connect(ConnectError),
    /// The connection opened, but what is built on it failed.
    #[error(transparent)]
    Setup(E),
}

/// A connection (or a [`Session`] built on one) opened when first needed and again after it
/// was lost.
pub struct Reconnecting<T = Client> {
    info: ConnInfo,
    wait: Option<Duration>,
    current: Option<T>,
}

impl<T: Session> Reconnecting<T> {
    /// Connects to `info` on first use, waiting as long as connecting takes (tokio-postgres's
    /// own `connect_timeout` still applies).
    pub fn new(info: ConnInfo) -> Self {
        Reconnecting {
            info,
            wait: None,
            current: None,
        }
    }

    /// As [`Reconnecting::new`], and gives up on connecting (and on building the session)
    /// after `wait` with [`ConnectError::Timeout`].
    pub fn bounded(info: ConnInfo, wait: Duration) -> Self {
        Reconnecting {
            wait: Some(wait),
            ..Reconnecting::new(info)
        }
    }

    /// The session held now, if any; its connection may have closed since it was handed out
    /// (using it then fails like any closed client), [`Reconnecting::get_with`] checks.
    pub fn current(&mut self) -> Option<&mut T> {
        self.current.as_mut()
    }

    /// Forgets the session, so the next use connects again: for an error that may have left
    /// the connection unusable even though tokio-postgres has not noticed yet.
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// The open session; when there is none or its connection closed, connects and builds a
    /// new one with `setup`.
    pub async fn get_with<F, Fut, E>(&mut self, setup: F) -> Result<&mut T, OpenError<E>>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.current.as_ref().is_none_or(Session::is_closed) {
            self.current = None;
            let info = &self.info;
            let open = async move {
                let client = connect_sql(info).await.map_err(OpenError::Connect)?;
                setup(client).await.map_err(OpenError::Setup)
            };
            let session = match self.wait {
                Some(wait) => tokio::time::timeout(wait, open)
                    .await
                    .unwrap_or(Err(OpenError::Connect(ConnectError::Timeout { wait })))?,
                None => open.await?,
            };
            self.current = Some(session);
        }
        Ok(self.current.as_mut().expect("opened above"))
    }
}

impl Reconnecting<Client> {
    /// The open client, connected (again) when needed.
    pub async fn get(&mut self) -> Result<&mut Client, ConnectError> {
        let got = self
            .get_with(|client| async { Ok::<_, std::convert::Infallible>(client) })
            .await;
        got.map_err(|e| match e {
            OpenError::Connect(e) => e,
            OpenError::Setup(never) => match never {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn backend_pid(client: &Client) -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn a_client_whose_connection_the_server_ended_connects_again_on_next_use() {
        let info = ConnInfo::parse(&crate::ephemeral::unit_test_database()).unwrap();
        let mut db = Reconnecting::new(info.clone());
        assert!(db.current().is_none(), "connects only on first use");
        let first = backend_pid(db.get().await.unwrap()).await;
        assert_eq!(backend_pid(db.get().await.unwrap()).await, first, "kept");

        let admin = connect_sql(&info).await.unwrap();
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&first])
            .await
            .unwrap();
        for _ in 0..200 {
            if db.current().is_some_and(|c| c.is_closed()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            db.current().is_some_and(|c| c.is_closed()),
            "never saw it close"
        );
        let second = backend_pid(db.get().await.unwrap()).await;
        assert_ne!(second, first);

        db.reset();
        assert!(db.current().is_none());
        assert_ne!(backend_pid(db.get().await.unwrap()).await, second);
    }

    #[tokio::test]
    async fn a_bounded_client_gives_up_on_a_server_that_never_answers() {
        // Accepts the socket and then says nothing, like a host behind a stuck proxy.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                sockets.push(socket);
            }
        });
        let info = ConnInfo::parse(&format!(
            "host=127.0.0.1 port={port} user=u dbname=d sslmode=disable"
        ))
        .unwrap();
        let mut db = Reconnecting::bounded(info, Duration::from_millis(300));
        let e = db.get().await.unwrap_err();
        assert!(matches!(e, ConnectError::Timeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), "no answer within 300ms");
        assert!(db.current().is_none());
        held.abort();
    }

    #[tokio::test]
    async fn what_is_built_on_the_connection_fails_as_its_own_error() {
        let info = ConnInfo::parse(&crate::ephemeral::unit_test_database()).unwrap();
        let mut db: Reconnecting<Client> = Reconnecting::new(info);
        let e = db
            .get_with(|_client| async { Err::<Client, _>("no statements prepared") })
            .await
            .unwrap_err();
        assert!(
            matches!(e, OpenError::Setup("no statements prepared")),
            "{e:?}"
        );
        assert!(db.current().is_none());
    }
}

//! The accept loop of the HTTP server, bounded so that clients cannot take what deliveries
//! need: at most [`connection_cap`] at once (more are closed at once), and a client that
//! does not finish its request headers within [`HEADER_READ_TIMEOUT`] is cut off. Measured
//! before (issue 12): 1,100 half-sent requests held 1,100 file descriptors, and deliveries
//! then failed with "Too many open files". `axum::serve` offers neither bound, hence this
//! loop over hyper's own connection builder.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Connections served at once, at most. Prometheus, an operator's browser and a few scripts
/// need a handful; the rest of the process's descriptors stay for deliveries and Postgres.
const MAX_CONNECTIONS: usize = 256;

/// The cap for this process: a quarter of its open-file limit, so the listener can never
/// take what deliveries need, within 16 and [`MAX_CONNECTIONS`].
fn connection_cap() -> usize {
    crate::os::open_file_limit().map_or(MAX_CONNECTIONS, |limit| {
        usize::try_from(limit / 4)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(16, MAX_CONNECTIONS)
    })
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections get to finish after a shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(5);

/// Completes when `shutdown` is true (without holding its lock guard across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: &mut watch::Receiver<bool>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(connection_cap()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and the like: wait for descriptors rather than spin.
                        tracing::warn!("http server: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over the cap the connection is closed at once: it costs nothing to hold.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let mut stop = shutdown.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = stopped(&mut stop) => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(shutdown) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

//! The one HTTP/1 accept loop, for the admin server, the demo's receiver and
//! `walhook receive`: hyper's connection builder on a listener, with an optional cap on
//! connections served at once, an optional deadline for request headers, and a drain when
//! the loop is told to stop. `axum::serve` offers neither bound (issue 12: 1,100 half-sent
//! requests held 1,100 file descriptors), hence this loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Largest request body the receivers (`walhook receive`, the demo's) accept; larger ones
/// get 413 (walhook's batches stay far below).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// The bounds and socket options of one server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Answer without Nagle's delay (the benchmark's receiver: a 204 must not wait 40 ms
    /// for the next segment).
    pub nodelay: bool,
    /// Connections served at once; more are closed at once. `None`: no cap.
    pub connections: Option<usize>,
    /// How long a client may take to send its request headers. `None`: as long as it likes.
    pub header_read_timeout: Option<Duration>,
    /// How long open connections get to finish once `until` completed; zero closes them.
    pub drain: Duration,
}

/// Completes when `stop` is true (without holding its lock guard across an await, which
/// would make the connection's future not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves the services `make` gives, one per connection, on `listener` until `until`
/// completes, then lets open connections finish for `limits.drain`.
pub async fn serve<S, B>(
    listener: TcpListener,
    make: impl Fn() -> S,
    until: impl Future<Output = ()>,
    limits: Limits,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = limits.connections.map(|n| Arc::new(Semaphore::new(n)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(until);
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
                let slot = match &slots {
                    None => None,
                    Some(slots) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => Some(slot),
                        Err(_) => continue,
                    },
                };
                if limits.nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let service = make();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    if let Some(timeout) = limits.header_read_timeout {
                        builder.timer(TokioTimer::new()).header_read_timeout(timeout);
                    }
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    // A client that hangs up mid-request is normal: the result is not an error
                    // of ours.
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
            () = &mut until => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

//! The HTTP server's bounds, so that clients cannot take what deliveries need: at most
//! [`connection_cap`] connections at once (more are closed at once), and a client that does
//! not finish its request headers within [`HEADER_READ_TIMEOUT`] is cut off. Measured before
//! (issue 12): 1,100 half-sent requests held 1,100 file descriptors, and deliveries then
//! failed with "Too many open files". The loop itself is [`crate::http::serve`].

use std::time::Duration;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{self, Limits};

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

/// Serves `app` on `listener` until `shutdown` turns true.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: &mut watch::Receiver<bool>,
) {
    let limits = Limits {
        connections: Some(connection_cap()),
        header_read_timeout: Some(HEADER_READ_TIMEOUT),
        drain: DRAIN,
        nodelay: false,
    };
    let until = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    http::serve(
        listener,
        || TowerToHyperService::new(app.clone()),
        until,
        limits,
    )
    .await;
}

//! The HTTP server of `walhook run` (SPEC §7): `/metrics`, `/healthz`, `/readyz` and the
//! admin API under `/api/v1`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::daemon::sampler::{Health, Sample};
use crate::metrics::Metrics;

/// What the handlers read.
pub struct ServerState {
    /// The registry behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// The latest status sample.
    pub sample: watch::Receiver<Arc<Sample>>,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[error("http.listen {addr}: cannot listen: {source}")]
pub struct ServeError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `addr` and serves until `shutdown` turns true. Returns the bound address (useful
/// with port 0) once listening.
pub async fn spawn(
    addr: SocketAddr,
    state: ServerState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError { addr, source })?;
    let app = router(Arc::new(state));
    tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!("http server: {e}");
        }
    });
    Ok(bound)
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "alive"})).into_response()
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    match state.health.ready() {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unready", "problems": problems})),
        )
            .into_response(),
    }
}

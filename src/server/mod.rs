//! The HTTP server of `walhook run` (SPEC §7): `/metrics`, `/healthz`, `/readyz` and the
//! admin API under `/api/v1` (`api`: the handlers, `auth`: `http.admin_token`, `db`: its
//! outbox connection, `origin`: the Host and cross-site checks, `view`: what a subscription
//! shows of itself).

mod answers;
mod api;
mod auth;
mod db;
mod listener;
mod origin;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::config::Config;
use crate::delivery::network::NetworkPolicy;
use crate::health::{Health, Sample};
use crate::metrics::Metrics;
use crate::pg::conninfo::ConnInfo;

/// What the handlers read.
pub struct ServerState {
    /// The registry behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// The latest status sample.
    pub sample: watch::Receiver<Arc<Sample>>,
    /// The running config, replaced when a reload is applied: subscriptions and
    /// `http.admin_token` as they are now.
    pub config: watch::Receiver<Arc<Config>>,
    /// The configured `http.listen`: off loopback, every admin API call needs the token.
    pub listen: SocketAddr,
    /// The outbox database (pause, resume, replay, the delivery log).
    pub outbox: ConnInfo,
    /// The outbox schema.
    pub schema: String,
    /// The HTTP client for test events (redirects off, proxies ignored, `policy` applied).
    pub http: reqwest::Client,
    /// The network policy of `delivery.allow_networks`.
    pub policy: NetworkPolicy,
}

/// The state behind every route: the inputs, and the admin API's outbox connection.
pub(crate) struct App {
    state: ServerState,
    db: db::OutboxDb,
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
    let db = db::OutboxDb::new(state.outbox.clone());
    let app = router(Arc::new(App { state, db }));
    tokio::spawn(async move {
        listener::serve(listener, app, &mut shutdown).await;
    });
    Ok(bound)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api::router(app.clone()))
        .layer(axum::middleware::from_fn(origin::guard))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let state = &app.state;
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

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.state.health.ready() {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unready", "problems": problems})),
        )
            .into_response(),
    }
}

//! The admin API under `/api/v1` (SPEC §7): status, subscriptions, the delivery log, test
//! events, pause and resume, replay, backfills. Answers are JSON; errors are
//! `{"error": "…"}` with a fitting status: 400 for a bad parameter (named, with where it
//! was), 404 for an unknown subscription or delivery (with the closest name), 401/403 for
//! the token (`auth`), 409 for a backfill already running, 500 when a database fails (with
//! its message).
//!
//! The handlers call the library functions the commands call too: `outbox::log::list` for
//! the log, `outbox::replay::replay` for replays, `outbox::state` for pause and resume,
//! `delivery::test_event::send_test` for test events, `outbox::backfill_ask` and
//! `outbox::backfill` for backfills; each answer is a type of `answers`. No answer carries a
//! secret: subscriptions show auth by type, headers by name, secrets by count, URLs with
//! credentials hidden (`view`), and what a receiver echoes back of a request's credentials
//! is scrubbed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::{json, Map, Value};

use super::answers::{
    BackfillAnswer, BackfillsAnswer, DeliveryLogAnswer, PauseAnswer, ReplayDeliveryAnswer,
    ReplaySubscriptionAnswer, ResumeAnswer, SlotView, StateView, StatusAnswer, SubscriptionAnswer,
    SubscriptionStatus, SubscriptionsAnswer, TestAnswer, TestRequest,
};
use super::db::{timed, DB_TIMEOUT};
use super::view::{self, StoppedMap};
use super::{auth, App};
use crate::config::Config;
use crate::delivery::test_event::{self as test, TestError};
use crate::outbox::backfill::{self, RequestError, RequestedBy};
use crate::outbox::backfill_ask::{self, AskError};
use crate::outbox::log::{self, parse_since, Filter, Status};
use crate::outbox::replay::{self, known, ReplayError, Replayed, Target};
use crate::outbox::{state, StoreError};
use crate::suggest::did_you_mean;

/// Rows of the delivery log per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 50;

/// The most rows one page may have.
const MAX_LIMIT: u32 = 1_000;

/// How long the status and the subscription list wait for the subscriptions' state.
const STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The admin API's routes, behind the token check.
pub(super) fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/status", get(status))
        .route("/subscriptions", get(subscriptions))
        .route("/subscriptions/{name}/test", post(test_event))
        .route("/subscriptions/{name}/pause", post(pause))
        .route("/subscriptions/{name}/resume", post(resume))
        .route("/subscriptions/{name}/replay", post(replay_subscription))
        .route("/subscriptions/{name}/backfill", post(ask_backfill))
        .route("/backfills", get(backfills))
        .route("/deliveries", get(delivery_log))
        .route("/deliveries/{id}/replay", post(replay_delivery))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(app, auth::require))
}

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: a bad parameter; `message` names it and where it was.
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 for the query parameter `name`.
    fn bad_param(name: &str, message: impl std::fmt::Display) -> Self {
        ApiError::bad_request(format!("query parameter {name}: {message}"))
    }

    /// 404: an unknown subscription, delivery or endpoint.
    pub(super) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 401: the token is missing or wrong.
    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the call needs a token and none is configured.
    pub(super) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 500: the database failed; `message` says what was being done and why it failed.
    pub(super) fn database(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.message}));
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"walhook\"")],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

impl From<StoreError> for ApiError {
    /// A 500 naming what was being done.
    fn from(e: StoreError) -> Self {
        ApiError::database(e.to_string())
    }
}

/// The endpoints, for the 404 and 405 answers.
const ENDPOINTS: &str = "GET /api/v1/status, GET /api/v1/subscriptions, \
    GET /api/v1/deliveries, GET /api/v1/backfills, \
    POST /api/v1/subscriptions/{name}/test|pause|resume|replay|backfill, \
    POST /api/v1/deliveries/{id}/replay";

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no admin API endpoint {method} /api/v1{}; the endpoints are {ENDPOINTS}",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on /api/v1{}: reads are GET, actions are POST \
             ({ENDPOINTS})",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Reads

/// `GET /api/v1/status`.
async fn status(State(app): State<Arc<App>>) -> Result<Json<StatusAnswer>, ApiError> {
    let config = app.state.config.borrow().clone();
    let sample = app.state.sample.borrow().clone();
    let health = &app.state.health;
    let replication_connected = health.replication_connected.load(AtomicOrdering::Relaxed);
    let outbox_writable = health.outbox_writable.load(AtomicOrdering::Relaxed);
    // The sample is at most a few seconds old; pause and resume show at once.
    let stopped = stopped_subscriptions(&app).await;

    let mut names: Vec<&str> = config.subscription_names();
    let mut others: Vec<&str> = sample.backlog.keys().map(String::as_str).collect();
    if let Ok(stopped) = &stopped {
        others.extend(stopped.keys().map(String::as_str));
    }
    others.sort_unstable();
    others.dedup();
    others.retain(|name| config.subscription(name).is_none());
    names.extend(others);

    let subscriptions = names
        .into_iter()
        .map(|name| {
            let sub = config.subscription(name);
            let backlog = sample.backlog.get(name).cloned().unwrap_or_default();
            SubscriptionStatus {
                name: name.to_owned(),
                configured: sub.is_some(),
                state: subscription_state(sub, name, &stopped),
                pending: backlog.pending,
                dead: backlog.dead,
                oldest_pending_seconds: backlog.oldest_pending_seconds,
                rate_limit: sub.and_then(view::rate_limit),
            }
        })
        .collect();

    let slot = sample.slot.as_ref();
    Ok(Json(StatusAnswer {
        version: env!("CARGO_PKG_VERSION"),
        ready: replication_connected && outbox_writable,
        replication_connected,
        outbox_writable,
        sampled_at: sample.taken_at.map(crate::time::rfc3339),
        slot: SlotView {
            name: config.source.slot.clone(),
            found: slot.is_some(),
            active: slot.map(|s| s.active),
            retained_wal_bytes: slot.map(|s| s.retained_wal_bytes),
            lag_bytes: slot.map(|s| s.lag_bytes),
            confirmed_flush_lsn: slot.and_then(|s| s.confirmed_flush_lsn.clone()),
        },
        checkpoint_lsn: sample.checkpoint_lsn.clone(),
        subscriptions,
        outbox_error: stopped.err().map(|e| e.message),
    }))
}

/// `GET /api/v1/subscriptions`.
async fn subscriptions(State(app): State<Arc<App>>) -> Result<Json<SubscriptionsAnswer>, ApiError> {
    let config = app.state.config.borrow().clone();
    let stopped = stopped_subscriptions(&app).await;
    let subscriptions = config
        .subscriptions
        .iter()
        .map(|sub| SubscriptionAnswer {
            settings: view::settings(sub),
            state: subscription_state(Some(sub), &sub.name, &stopped),
        })
        .collect();
    Ok(Json(SubscriptionsAnswer {
        subscriptions,
        outbox_error: stopped.err().map(|e| e.message),
    }))
}

/// The state of one subscription; `unknown` when the outbox could not be read.
fn subscription_state(
    sub: Option<&crate::config::SubscriptionConfig>,
    name: &str,
    stopped: &Result<StoppedMap, ApiError>,
) -> StateView {
    match stopped {
        Ok(stopped) => view::state(sub, stopped.get(name)),
        Err(e) => StateView {
            state: "unknown",
            reason: Some(format!("the outbox could not be read: {}", e.message)),
            since: None,
        },
    }
}

/// Every row of `subscription_state`. Within [`STATE_TIMEOUT`]: the status answers with what
/// it knows when the outbox does not.
async fn stopped_subscriptions(app: &App) -> Result<StoppedMap, ApiError> {
    tokio::time::timeout(STATE_TIMEOUT, read_stopped(app))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::database(format!(
                "the outbox did not answer within {}s",
                STATE_TIMEOUT.as_secs()
            )))
        })
}

async fn read_stopped(app: &App) -> Result<StoppedMap, ApiError> {
    let mut conn = app.db.conn().await?;
    let schema = &app.state.schema;
    timed("reading the subscriptions' state", async {
        Ok(state::all(conn.client(), schema).await?)
    })
    .await
}

/// `GET /api/v1/deliveries?subscription=&status=&since=&limit=&before_id=`: newest first;
/// `next` is the `before_id` of the next page, `null` on the last one.
async fn delivery_log(
    State(app): State<Arc<App>>,
    uri: Uri,
) -> Result<Json<DeliveryLogAnswer>, ApiError> {
    let params = query_params(
        &uri,
        &["subscription", "status", "since", "limit", "before_id"],
    )?;
    let status = params
        .get("status")
        .map(|text| parse_status(text))
        .transpose()?;
    let since = params
        .get("since")
        .map(|text| parse_since(text).map_err(|e| ApiError::bad_param("since", e)))
        .transpose()?;
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_param(
                    "limit",
                    format!("{text:?} is not a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let before_id = params
        .get("before_id")
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                ApiError::bad_param(
                    "before_id",
                    format!(
                        "{text:?} is not a delivery id (a whole number: the `next` of the \
                         page before)"
                    ),
                )
            })
        })
        .transpose()?;
    let config = app.state.config.borrow().clone();
    let schema = &app.state.schema;
    let filter = Filter {
        subscription: params.get("subscription").cloned(),
        status,
        since,
        before_id,
    };
    let mut conn = app.db.conn().await?;
    if let Some(name) = &filter.subscription {
        if config.subscription(name).is_none() {
            let configured = config.subscription_names();
            timed("reading the outbox", async {
                known(conn.client(), schema, name, &configured)
                    .await
                    .map_err(replay_error)
            })
            .await?;
        }
    }
    let rows = timed("reading the delivery log", async {
        Ok(log::list(conn.client(), schema, &filter, limit).await?)
    })
    .await?;
    let next = if rows.len() == limit as usize {
        rows.last().map(|d| d.id)
    } else {
        None
    };
    Ok(Json(DeliveryLogAnswer {
        deliveries: rows,
        next,
    }))
}

// ---------------------------------------------------------------------------------------
// Actions

/// `POST /api/v1/subscriptions/{name}/test`, optionally with `{"key": {...}}` to send a real
/// row: one signed test event now, recorded in the attempt log with trigger `test`.
async fn test_event(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<TestAnswer>, ApiError> {
    let config = app.state.config.borrow().clone();
    let sub = test::find(&config, &name).map_err(test_error)?;
    let key = test_key(&body)?;
    // The request is bounded by the subscription's timeout; the database steps by theirs.
    let sent = tokio::time::timeout(
        sub.timeout + DB_TIMEOUT * 3,
        test::send_test(
            &config,
            sub,
            key,
            &app.state.http,
            &app.state.policy,
            |_, _, _| {},
        ),
    )
    .await
    .map_err(|_| ApiError::database("the test event did not finish in time"))?
    .map_err(test_error)?;
    let a = &sent.attempt;
    tracing::info!(
        subscription = %name,
        status = a.status,
        "admin API: test event {} sent",
        sent.event_id
    );
    let event = if sent.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&sent.body).unwrap_or(Value::Null)
    };
    let (method, url) = match &sent.target {
        Some(t) => (t.method.as_str().into(), t.url.clone()),
        None => (sub.method.to_json(), sub.url.to_string()),
    };
    Ok(Json(TestAnswer {
        subscription: name,
        event_id: sent.event_id.clone(),
        request: TestRequest {
            method,
            url: crate::config::redact_webhook_url(&url),
            content_type: (!sent.body.is_empty()).then(|| sub.content_type.clone()),
            body: String::from_utf8_lossy(&sent.body).into_owned(),
            signatures: sub.secrets.len(),
            auth: view::auth_type(sub),
            headers: view::header_names(sub),
        },
        event,
        status: a.status,
        success: sent.succeeded(),
        latency_ms: u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX),
        error: a.error.as_deref().map(|e| view::scrub(sub, e)),
        response_excerpt: view::scrub(sub, &a.response_excerpt),
        recorded: sent.not_recorded.is_none(),
        note: sent.not_recorded.clone(),
    }))
}

/// The optional body of a test call: nothing, or `{"key": {column: value, …}}`.
fn test_key(body: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let bad = |message: String| {
        ApiError::bad_request(format!(
            "request body: {message}; send nothing for sample values, or \
             {{\"key\": {{\"id\": 1}}}} for the row with that key"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("not a JSON object".into()));
    };
    if let Some(other) = fields.keys().find(|k| k.as_str() != "key") {
        return Err(bad(format!("unknown field {other:?}")));
    }
    match fields.remove("key") {
        None | Some(Value::Null) => Ok(None),
        Some(key) => test::key_object(key)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
    }
}

fn test_error(e: TestError) -> ApiError {
    match e {
        TestError::UnknownSubscription { .. } => ApiError::not_found(e.to_string()),
        TestError::BadKey(message) => {
            ApiError::bad_request(format!("request body: key: {message}"))
        }
        TestError::Failed(message) => ApiError::database(message),
    }
}

/// `POST /api/v1/subscriptions/{name}/pause`: the worker stops sending within a second
/// (requests in flight finish); new events are still captured and wait with the pending
/// deliveries. A replay does not end a pause; resume does.
async fn pause(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<PauseAnswer>, ApiError> {
    let config = app.state.config.borrow().clone();
    let Some(sub) = config.subscription(&name) else {
        return Err(unknown_subscription(&config, &name));
    };
    let mut conn = app.db.conn().await?;
    let schema = &app.state.schema;
    let state::Paused { previous, now } = timed("pausing the subscription", async {
        Ok(state::pause(conn.client(), schema, &name).await?)
    })
    .await?;
    let already = previous.as_ref().is_some_and(state::Stopped::is_pause);
    let mut message = if already {
        format!(
            "subscription {name:?} was already {}; nothing changed",
            now.reason
        )
    } else {
        tracing::info!(subscription = %name, "admin API: subscription paused");
        format!(
            "subscription {name:?} is paused: a running walhook stops sending within a second \
             (requests in flight finish); new events are still captured and wait with the \
             pending deliveries until POST /api/v1/subscriptions/{name}/resume"
        )
    };
    if let Some(deactivated) = previous.as_ref().filter(|p| !p.is_pause()) {
        message.push_str(&format!(
            "; it had been deactivated ({}), which resuming ends too",
            deactivated.reason
        ));
    }
    if !sub.active {
        message.push_str("; note that it has active = false in the config");
    }
    Ok(Json(PauseAnswer {
        subscription: name,
        state: "paused",
        reason: now.reason,
        since: now.since,
        already_paused: already,
        message,
    }))
}

/// `POST /api/v1/subscriptions/{name}/resume`: ends a pause, or a deactivation by 410 Gone.
async fn resume(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<ResumeAnswer>, ApiError> {
    let config = app.state.config.borrow().clone();
    let sub = config.subscription(&name);
    let schema = &app.state.schema;
    let mut conn = app.db.conn().await?;
    let removed = timed("resuming the subscription", async {
        Ok(state::resume(conn.client(), schema, &name).await?)
    })
    .await?;
    if removed.is_none() && sub.is_none() {
        let configured = config.subscription_names();
        timed("reading the outbox", async {
            known(conn.client(), schema, &name, &configured)
                .await
                .map_err(replay_error)
        })
        .await?;
    }
    let message = match (&removed, sub) {
        (None, _) => {
            format!("subscription {name:?} was neither paused nor deactivated; nothing changed")
        }
        (Some(reason), Some(sub)) if sub.active => format!(
            "subscription {name:?} is active again (it was {}): a running walhook resumes \
             sending its pending deliveries within a second",
            stopped_phrase(reason)
        ),
        (Some(reason), Some(_)) => format!(
            "subscription {name:?} is switched back on (it was {}), but it has active = false \
             in the config: nothing is sent until it is active",
            stopped_phrase(reason)
        ),
        (Some(reason), None) => format!(
            "subscription {name:?} is switched back on (it was {}), but it is not in the \
             config: its deliveries wait until it is added back",
            stopped_phrase(reason)
        ),
    };
    if removed.is_some() {
        tracing::info!(subscription = %name, "admin API: subscription resumed");
    }
    Ok(Json(ResumeAnswer {
        subscription: name,
        resumed: removed.is_some(),
        previous_reason: removed.map(|stopped| stopped.reason),
        state: view::state(sub, None),
        message,
    }))
}

/// `paused through the admin API at …`, or `deactivated (the receiver answered 410 …)`.
fn stopped_phrase(stopped: &state::Stopped) -> String {
    if stopped.is_pause() {
        stopped.reason.clone()
    } else {
        format!("deactivated: {}", stopped.reason)
    }
}

/// `POST /api/v1/deliveries/{id}/replay`: the delivery is pending again, due now, with the
/// same event id.
async fn replay_delivery(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<ReplayDeliveryAnswer>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "path /api/v1/deliveries/{{id}}/replay: {id:?} is not a delivery id (a whole \
             number, the `id` of GET /api/v1/deliveries)"
        ))
    })?;
    let target = Target::Id(id);
    let (config, replayed) = run_replay(&app, &target).await?;
    let (event_id, was) = replayed.single.clone().unwrap_or_default();
    Ok(Json(ReplayDeliveryAnswer {
        delivery_id: id,
        message: replay::summary(&config, &target, &replayed),
        subscription: replayed.subscription,
        event_id,
        was,
        replayed: replayed.count,
        reactivated: replayed.reactivated,
        paused: replayed.paused,
    }))
}

/// `POST /api/v1/subscriptions/{name}/replay?status=dead[&since=]`: every dead (or
/// delivered) delivery of the subscription again, same event ids; also switches a
/// subscription deactivated by 410 Gone back on (a pause stays).
async fn replay_subscription(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Json<ReplaySubscriptionAnswer>, ApiError> {
    let params = query_params(&uri, &["status", "since"])?;
    text_for_postgres(&name)
        .map_err(|e| ApiError::bad_request(format!("subscription name: {e}")))?;
    let status = match params.get("status") {
        None => {
            return Err(ApiError::bad_param(
                "status",
                format!(
                    "missing: status=dead re-sends the deliveries that gave up, \
                     status=delivered the ones already delivered, e.g. \
                     POST /api/v1/subscriptions/{name}/replay?status=dead"
                ),
            ))
        }
        Some(text) => parse_status(text)?,
    };
    if status == Status::Pending {
        return Err(ApiError::bad_param(
            "status",
            format!(
                "pending deliveries are still queued and need no replay (POST \
                 /api/v1/subscriptions/{name}/resume switches a paused or deactivated \
                 subscription back on; POST /api/v1/deliveries/{{id}}/replay makes one \
                 pending delivery due now)"
            ),
        ));
    }
    let since = params
        .get("since")
        .map(|text| parse_since(text).map_err(|e| ApiError::bad_param("since", e)))
        .transpose()?;
    let target = Target::Subscription {
        name: name.clone(),
        status,
        since: since.clone(),
    };
    let (config, replayed) = run_replay(&app, &target).await?;
    Ok(Json(ReplaySubscriptionAnswer {
        subscription: name,
        status: status.as_str(),
        since: params.get("since").cloned(),
        message: replay::summary(&config, &target, &replayed),
        replayed: replayed.count,
        reactivated: replayed.reactivated,
        paused: replayed.paused,
    }))
}

/// Runs `replay()` on the admin API's connection with the running config.
async fn run_replay(app: &App, target: &Target) -> Result<(Arc<Config>, Replayed), ApiError> {
    let config = app.state.config.borrow().clone();
    let mut conn = app.db.conn().await?;
    let replayed = timed("replaying", async {
        replay::replay(conn.client(), &app.state.schema, target, &config)
            .await
            .map_err(replay_error)
    })
    .await?;
    tracing::info!(
        subscription = %replayed.subscription,
        deliveries = replayed.count,
        "admin API: replayed"
    );
    Ok((config, replayed))
}

fn replay_error(e: ReplayError) -> ApiError {
    match e {
        ReplayError::UnknownSubscription { .. } => ApiError::not_found(e.to_string()),
        ReplayError::UnknownDelivery(id) => ApiError::not_found(format!(
            "no delivery with id {id} in the outbox (GET /api/v1/deliveries lists them)"
        )),
        ReplayError::Failed(message) => ApiError::database(message),
    }
}

/// How long asking for a backfill may take: connecting to the source and trying the
/// condition there, then the request row.
const BACKFILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `POST /api/v1/subscriptions/{name}/backfill`, optionally with `{"where": "SQL"}`: asks
/// the daemon to send the rows that exist (202); the condition is tried on the source
/// first.
async fn ask_backfill(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<BackfillAnswer>), ApiError> {
    let filter = backfill_filter(&body)?;
    let config = app.state.config.borrow().clone();
    // The source first, without holding the outbox connection the other calls share.
    let checked = tokio::time::timeout(
        BACKFILL_TIMEOUT,
        backfill_ask::check(&config, &name, filter.as_deref()),
    )
    .await
    .map_err(|_| {
        ApiError::database(format!(
            "the source did not answer within {}s",
            BACKFILL_TIMEOUT.as_secs()
        ))
    })?
    .map_err(ask_error)?;
    let mut conn = app.db.conn().await?;
    let schema = &app.state.schema;
    let asked = timed("asking for the backfill", async {
        checked
            .request(conn.client(), schema, RequestedBy::Api)
            .await
            .map_err(ask_error)
    })
    .await?;
    tracing::info!(
        subscription = %name,
        backfill = asked.backfill.id,
        "admin API: backfill requested"
    );
    let message = format!(
        "{}; a running walhook starts it within seconds (progress: GET /api/v1/backfills)",
        asked.summary()
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(BackfillAnswer {
            table: asked.table.to_string(),
            expected_rows: asked.rows_estimate,
            backfill: asked.backfill,
            message,
        }),
    ))
}

/// The optional body of a backfill call: nothing, or `{"where": "SQL"}`.
fn backfill_filter(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let bad = |message: String| {
        ApiError::bad_request(format!(
            "request body: {message}; send nothing for every row, or \
             {{\"where\": \"id > 1000\"}} for the rows passing a condition"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("not a JSON object".into()));
    };
    if let Some(other) = fields.keys().find(|k| k.as_str() != "where") {
        return Err(bad(format!(
            "unknown field {other:?}{}",
            did_you_mean(other, ["where"])
        )));
    }
    match fields.remove("where") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(filter)) => {
            text_for_postgres(&filter)
                .map_err(|e| ApiError::bad_request(format!("request body: where: {e}")))?;
            Ok(Some(filter))
        }
        Some(other) => Err(bad(format!("where is {other}, not a string of SQL"))),
    }
}

fn ask_error(e: AskError) -> ApiError {
    match e {
        AskError::UnknownSubscription { .. } => ApiError::not_found(e.to_string()),
        AskError::Inactive(_)
        | AskError::TooOld(_)
        | AskError::Request(RequestError::AlreadyRunning { .. }) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        AskError::Filter(_) => ApiError::bad_request(e.to_string()),
        AskError::Source(_) | AskError::Request(RequestError::Store(_)) => {
            ApiError::database(e.to_string())
        }
    }
}

/// `GET /api/v1/backfills`: every backfill, newest first.
async fn backfills(State(app): State<Arc<App>>) -> Result<Json<BackfillsAnswer>, ApiError> {
    let mut conn = app.db.conn().await?;
    let schema = &app.state.schema;
    let backfills = timed("reading the backfills", async {
        Ok(backfill::list(conn.client(), schema).await?)
    })
    .await?;
    Ok(Json(BackfillsAnswer { backfills }))
}

// ---------------------------------------------------------------------------------------
// Parameters

/// The query parameters, each at most once and all among `allowed`.
fn query_params(uri: &Uri, allowed: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))?;
    let mut params = BTreeMap::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?}: this call takes {}{}",
                allowed.join(", "),
                did_you_mean(&name, allowed.iter().copied())
            )));
        }
        if params.contains_key(&name) {
            return Err(ApiError::bad_param(&name, "given more than once"));
        }
        text_for_postgres(&value).map_err(|e| ApiError::bad_param(&name, e))?;
        params.insert(name, value);
    }
    Ok(params)
}

/// Refuses text Postgres cannot hold (a NUL byte), which would otherwise fail the query as a
/// database error; other control characters cannot name anything of ours either.
fn text_for_postgres(value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{value:?} holds the control character {:?}, which no name or value here contains",
            c
        )),
        None => Ok(()),
    }
}

fn parse_status(text: &str) -> Result<Status, ApiError> {
    match text {
        "pending" => Ok(Status::Pending),
        "delivered" => Ok(Status::Delivered),
        "dead" => Ok(Status::Dead),
        _ => Err(ApiError::bad_param(
            "status",
            format!(
                "{text:?} is not a delivery status; expected pending, delivered or dead{}",
                did_you_mean(text, ["pending", "delivered", "dead"])
            ),
        )),
    }
}

/// 404 for a name that is not a configured subscription.
fn unknown_subscription(config: &Config, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "unknown subscription {name:?}: not in the config{}",
        did_you_mean(name, config.subscription_names())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_known_and_single() {
        let uri: Uri = "/deliveries?status=dead&limit=5".parse().unwrap();
        let params = query_params(&uri, &["status", "limit"]).unwrap();
        assert_eq!(params["status"], "dead");
        let uri: Uri = "/deliveries?stauts=dead".parse().unwrap();
        let e = query_params(&uri, &["status", "limit"]).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("did you mean \"status\""),
            "{}",
            e.message
        );
        let uri: Uri = "/deliveries?limit=1&limit=2".parse().unwrap();
        let e = query_params(&uri, &["limit"]).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
    }

    #[test]
    fn test_bodies_are_empty_or_a_key() {
        assert_eq!(test_key(b"").unwrap(), None);
        assert_eq!(test_key(b" \n").unwrap(), None);
        assert_eq!(test_key(b"{}").unwrap(), None);
        let key = test_key(br#"{"key": {"id": 7}}"#).unwrap().unwrap();
        assert_eq!(key["id"], 7);
        assert!(test_key(br#"{"kye": {"id": 7}}"#).is_err());
        assert!(test_key(br#"{"key": 7}"#).is_err());
        assert!(test_key(b"nope").is_err());
    }

    #[test]
    fn backfill_bodies_are_empty_or_a_where() {
        assert_eq!(backfill_filter(b"").unwrap(), None);
        assert_eq!(backfill_filter(br#"{"where": null}"#).unwrap(), None);
        assert_eq!(
            backfill_filter(br#"{"where": "id > 3"}"#)
                .unwrap()
                .as_deref(),
            Some("id > 3")
        );
        let e = backfill_filter(br#"{"wehre": "id > 3"}"#).unwrap_err();
        assert!(
            e.message.contains("did you mean \"where\""),
            "{}",
            e.message
        );
        assert!(backfill_filter(br#"{"where": 3}"#).is_err());
        assert!(backfill_filter(b"id > 3").is_err());
    }

    #[test]
    fn statuses_suggest_the_closest() {
        let e = parse_status("daed").unwrap_err();
        assert!(e.message.contains("did you mean \"dead\""), "{}", e.message);
    }
}

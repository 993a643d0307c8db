//! The admin API's answers as types (SPEC §7): each endpoint's JSON is one of these,
//! serialised with its fields in this order. `view` fills the parts that show a
//! subscription; the handlers in `api` fill the rest.

use serde::Serialize;
use serde_json::{Map, Value};

/// A subscription's state: `active`, `paused`, `deactivated`, `inactive`, `removed`, or
/// `unknown` when the outbox could not be read.
#[derive(Clone, Debug, Serialize)]
pub(super) struct StateView {
    /// The state.
    pub state: &'static str,
    /// Why, when it is not active.
    pub reason: Option<String>,
    /// Since when (RFC 3339), for a pause or a deactivation.
    pub since: Option<String>,
}

/// `{"per_second", "burst"}` of a rate limit.
#[derive(Clone, Debug, Serialize)]
pub(super) struct RateLimitView {
    /// Requests per second.
    pub per_second: f64,
    /// Requests at once after a quiet spell.
    pub burst: u32,
}

/// `{"max_events", "max_wait"}` of a batching subscription.
#[derive(Clone, Debug, Serialize)]
pub(super) struct BatchView {
    /// Events per request, at most.
    pub max_events: usize,
    /// How long a batch waits to fill, as a duration.
    pub max_wait: String,
}

/// A subscription's settings, never a secret: the URL with credentials hidden, auth by
/// type, headers by name, secrets by count.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Settings {
    pub name: String,
    pub object: String,
    pub table: String,
    pub operations: Vec<&'static str>,
    pub watch: Option<Vec<String>>,
    pub when: Option<String>,
    pub event_type: Option<String>,
    /// Operation → event type.
    pub event_types: Map<String, Value>,
    pub url: String,
    pub url_template: bool,
    /// One method, or one per operation.
    pub method: Value,
    pub content_type: String,
    pub template: bool,
    pub signed: bool,
    pub secrets: usize,
    pub auth: Option<&'static str>,
    pub headers: Vec<String>,
    pub batch: Option<BatchView>,
    pub rate_limit: Option<RateLimitView>,
    /// The effective cap: the default when the subscription sets none.
    pub max_in_flight: usize,
    pub ordering: &'static str,
    pub active: bool,
    pub timeout: String,
    pub retry_schedule: Vec<String>,
    pub dead_on_status: Vec<u16>,
}

/// One subscription of `GET /subscriptions`.
#[derive(Debug, Serialize)]
pub(super) struct SubscriptionAnswer {
    #[serde(flatten)]
    pub settings: Settings,
    #[serde(flatten)]
    pub state: StateView,
}

/// `GET /subscriptions`.
#[derive(Debug, Serialize)]
pub(super) struct SubscriptionsAnswer {
    pub subscriptions: Vec<SubscriptionAnswer>,
    /// Why the states are unknown, when the outbox could not be read.
    pub outbox_error: Option<String>,
}

/// One subscription of `GET /status`.
#[derive(Debug, Serialize)]
pub(super) struct SubscriptionStatus {
    pub name: String,
    /// In the config (else only in the outbox).
    pub configured: bool,
    #[serde(flatten)]
    pub state: StateView,
    pub pending: i64,
    pub dead: i64,
    pub oldest_pending_seconds: f64,
    pub rate_limit: Option<RateLimitView>,
}

/// The slot in `GET /status`.
#[derive(Debug, Serialize)]
pub(super) struct SlotView {
    pub name: String,
    pub found: bool,
    pub active: Option<bool>,
    pub retained_wal_bytes: Option<i64>,
    pub lag_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
}

/// `GET /status`.
#[derive(Debug, Serialize)]
pub(super) struct StatusAnswer {
    pub version: &'static str,
    pub ready: bool,
    pub replication_connected: bool,
    pub outbox_writable: bool,
    pub sampled_at: Option<String>,
    pub slot: SlotView,
    pub checkpoint_lsn: Option<String>,
    pub subscriptions: Vec<SubscriptionStatus>,
    pub outbox_error: Option<String>,
}

/// `GET /deliveries`: a page, newest first.
#[derive(Debug, Serialize)]
pub(super) struct DeliveryLogAnswer {
    /// Rows of the `deliveries` view.
    pub deliveries: Vec<crate::outbox::log::Delivery>,
    /// The `before_id` of the next page; `null` on the last one.
    pub next: Option<i64>,
}

/// The request of a test event, as sent but for secrets.
#[derive(Debug, Serialize)]
pub(super) struct TestRequest {
    pub method: Value,
    pub url: String,
    pub content_type: Option<String>,
    pub body: String,
    pub signatures: usize,
    pub auth: Option<&'static str>,
    pub headers: Vec<String>,
}

/// `POST /subscriptions/{name}/test`.
#[derive(Debug, Serialize)]
pub(super) struct TestAnswer {
    pub subscription: String,
    pub event_id: String,
    pub request: TestRequest,
    /// The body as JSON, when it is JSON.
    pub event: Value,
    pub status: Option<u16>,
    pub success: bool,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub response_excerpt: String,
    /// Whether the attempt log has it.
    pub recorded: bool,
    /// Why not, when it has not.
    pub note: Option<String>,
}

/// `POST /subscriptions/{name}/pause`.
#[derive(Debug, Serialize)]
pub(super) struct PauseAnswer {
    pub subscription: String,
    pub state: &'static str,
    pub reason: String,
    pub since: String,
    pub already_paused: bool,
    pub message: String,
}

/// `POST /subscriptions/{name}/resume`.
#[derive(Debug, Serialize)]
pub(super) struct ResumeAnswer {
    pub subscription: String,
    pub resumed: bool,
    pub previous_reason: Option<String>,
    #[serde(flatten)]
    pub state: StateView,
    pub message: String,
}

/// `POST /deliveries/{id}/replay`.
#[derive(Debug, Serialize)]
pub(super) struct ReplayDeliveryAnswer {
    pub delivery_id: i64,
    pub subscription: String,
    pub event_id: String,
    pub was: String,
    pub replayed: u64,
    pub reactivated: bool,
    pub paused: Option<String>,
    pub message: String,
}

/// `POST /subscriptions/{name}/replay`.
#[derive(Debug, Serialize)]
pub(super) struct ReplaySubscriptionAnswer {
    pub subscription: String,
    pub status: &'static str,
    pub since: Option<String>,
    pub replayed: u64,
    pub reactivated: bool,
    pub paused: Option<String>,
    pub message: String,
}

/// `POST /subscriptions/{name}/backfill`: the request row, and what the source said.
#[derive(Debug, Serialize)]
pub(super) struct BackfillAnswer {
    #[serde(flatten)]
    pub backfill: crate::outbox::backfill::Backfill,
    /// The subscription's table, `schema.table`.
    pub table: String,
    /// The planner's estimate now (the row's `rows_estimate` is the daemon's, once started).
    pub expected_rows: Option<i64>,
    pub message: String,
}

/// `GET /backfills`: every backfill, newest first.
#[derive(Debug, Serialize)]
pub(super) struct BackfillsAnswer {
    pub backfills: Vec<crate::outbox::backfill::Backfill>,
}

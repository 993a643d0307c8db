//! The validated configuration: what the rest of walhook reads.
//!
//! Every value here has been checked and every default applied; nothing in this file parses.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;

use super::net::AllowedNetwork;
use super::secret::{Secret, SigningSecret, WebhookUrl};
use crate::pg::ConnInfo;
pub use crate::pg::TableName;

/// The whole configuration file, validated and with defaults applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[source]`: the database whose WAL is read.
    pub source: SourceConfig,
    /// `[outbox]`: where events are stored before delivery.
    pub outbox: OutboxConfig,
    /// `[http]`: metrics, health and admin API.
    pub http: HttpConfig,
    /// `[delivery]`: defaults for every subscription and process-wide limits.
    pub delivery: DeliveryConfig,
    /// `[objects.NAME]` in file order.
    pub objects: IndexMap<String, ObjectConfig>,
    /// `[[subscriptions]]` in file order.
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// `[source]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Connection URL (may hold a password); `WALHOOK_SOURCE_URL` overrides the file.
    pub url: Secret,
    /// `url` parsed, once at load: what every command connects with.
    pub conninfo: ConnInfo,
    /// Logical replication slot; default `walhook`.
    pub slot: String,
    /// Publication walhook manages; default `walhook`.
    pub publication: String,
    /// Warn when the slot retains more WAL than this many bytes; default 20 GB.
    pub max_retained_wal: u64,
    /// Interval of keep-alive progress on an idle slot; default 30 s.
    pub heartbeat: Duration,
    /// At most this many rows a second read by backfills (SPEC §3b); `None`: unlimited.
    pub backfill_rows_per_second: Option<u32>,
}

/// `[outbox]`.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Outbox database; `None` means the source database.
    pub url: Option<Secret>,
    /// `url` parsed, once at load; `None` means the source database (see
    /// [`Config::outbox_conninfo`]).
    pub conninfo: Option<ConnInfo>,
    /// Schema walhook owns; default `walhook`.
    pub schema: String,
    /// Delivered/dead rows older than this are removed; default 30 days.
    pub retention: Duration,
    /// A document event whose body is bigger than this many bytes is recorded dead for its
    /// subscriptions; default 1 MiB, at least 1 KiB.
    pub max_event_bytes: u64,
}

/// `outbox.max_event_bytes` when it is left out: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1 << 20;

/// The smallest `outbox.max_event_bytes` accepted: 1 KiB.
pub const MIN_MAX_EVENT_BYTES: u64 = 1 << 10;

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address; default `127.0.0.1:9187`.
    pub listen: SocketAddr,
    /// Bearer token for admin API write calls (and all calls off loopback).
    pub admin_token: Option<Secret>,
}

/// `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Whole-request timeout; default 15 s.
    pub timeout: Duration,
    /// Delays between attempts; N delays mean N + 1 attempts, then the delivery is dead.
    pub retry_schedule: Vec<Duration>,
    /// Requests in flight across all subscriptions; default 256.
    pub max_in_flight: usize,
    /// Private networks and hosts subscribers may resolve to (SPEC §6).
    pub allow_networks: Vec<AllowedNetwork>,
    /// How long shutdown waits for in-flight requests; default 30 s.
    pub shutdown_timeout: Duration,
}

/// The default retry schedule of SPEC §2: about three days in nine retries.
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3_600),
    Duration::from_secs(5 * 3_600),
    Duration::from_secs(10 * 3_600),
    Duration::from_secs(14 * 3_600),
    Duration::from_secs(20 * 3_600),
    Duration::from_secs(24 * 3_600),
];

/// A business object: a table and how its rows are keyed and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectConfig {
    /// `name = …`: the `object` in events and the default event type prefix (may contain
    /// dots, `account.invoice`); `None` means the object's config key.
    pub name: Option<String>,
    /// The table the rows come from.
    pub table: TableName,
    /// Key columns; `None` means the table's primary key.
    pub key: Option<Vec<String>>,
    /// Columns included in events; `None` means every column.
    pub fields: Option<Vec<String>>,
    /// `keep_state = true`: walhook keeps each row's fields in the outbox (SPEC §3a), so
    /// `previous`, `changed` and `watch` need no REPLICA IDENTITY FULL. Always true for a
    /// document (an object with `children`).
    pub keep_state: bool,
    /// `[[objects.NAME.children]]` in file order; non-empty makes the object a document.
    pub children: Vec<ChildConfig>,
}

impl ObjectConfig {
    /// Whether the object is a document: a header with collections of child rows.
    pub fn is_document(&self) -> bool {
        !self.children.is_empty()
    }

    /// Whether walhook keeps this object's state (every document, and `keep_state = true`).
    pub fn keeps_state(&self) -> bool {
        self.keep_state || self.is_document()
    }

    /// Its tables: the header's, then each collection's.
    pub fn tables(&self) -> impl Iterator<Item = &TableName> {
        std::iter::once(&self.table).chain(self.children.iter().map(|c| &c.table))
    }
}

/// One collection of a document: `[[objects.NAME.children]]` (SPEC §3a).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildConfig {
    /// The property in `values` holding the collection (`invoice_lines`).
    pub name: String,
    /// The child table.
    pub table: TableName,
    /// Child columns holding the parent's key, in the parent key's order.
    pub parent_key: Vec<String>,
    /// The child's key columns; `None` means the child table's primary key.
    pub key: Option<Vec<String>>,
    /// Columns of each element; `None` means every column.
    pub fields: Option<Vec<String>>,
    /// Order of the array; `None` means the child key.
    pub order_by: Option<Vec<String>>,
}

/// The object a subscription receives events for, named or made from `table = …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedObject {
    /// The name events carry as `object`: the object's `name = …` when set, else the
    /// `[objects.NAME]` key, or for `table = …` the table name as `schema.table`.
    pub name: String,
    /// The `[objects.NAME]` key (for `table = …` the table name), for messages that point
    /// into the config file.
    pub config_key: String,
    /// True when the subscription named a table rather than an object.
    pub unnamed: bool,
    /// Table, key and fields.
    pub config: ObjectConfig,
}

/// One `[[subscriptions]]` entry with `[delivery]` defaults already applied.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// The object whose changes this subscription receives.
    pub object: ResolvedObject,
    /// Operations that fire; default all three, in create/update/delete order.
    pub operations: Vec<Operation>,
    /// `truncate` is listed in `operations`: a TRUNCATE of the table is an event (SPEC §3).
    pub truncate: bool,
    /// An update fires only if one of these fields changed; `None` means any field.
    pub watch: Option<Vec<String>>,
    /// Filter expression over `values`, `previous` and `operation` (not yet parsed).
    pub when: Option<String>,
    /// Where `when` is written (`walhook.toml:14: subscriptions[0].when`), for its errors;
    /// empty for a config not read from a file.
    pub when_at: String,
    /// Fixed event type; `None` means `<object>.<created|updated|deleted>`.
    pub event_type: Option<String>,
    /// Subscriber URL (http or https, with a host); prints as written in the file. With
    /// [`SubscriptionConfig::url_template`] it holds `{{ … }}` and is rendered per event.
    pub url: WebhookUrl,
    /// The URL contains `{{ … }}`: it is a template rendered per event (SPEC §4a).
    pub url_template: bool,
    /// Where `url` is written (`walhook.toml:14: subscriptions[0].url`), for render errors;
    /// empty for a config not read from a file.
    pub url_at: String,
    /// One method, or one per operation; default `POST`.
    pub method: Methods,
    /// `Content-Type` of requests with a body, sent exactly as given; default
    /// `application/json`.
    pub content_type: String,
    /// `template` or `template_file`: renders the body; `None` sends the envelope.
    pub template: Option<TemplateText>,
    /// Answers that mean the data is wrong: the delivery is dead after that attempt.
    pub dead_on_status: Vec<u16>,
    /// Signing secrets; several while rotating keys, none to send unsigned.
    pub secrets: Vec<SigningSecret>,
    /// Authentication added to every request.
    pub auth: Option<Auth>,
    /// Custom headers in file order; values are secret because they often carry keys.
    pub headers: Vec<(String, Secret)>,
    /// Batching; `None` sends one event per request.
    pub batch: Option<BatchConfig>,
    /// Token bucket; `None` means unlimited.
    pub rate_limit: Option<RateLimit>,
    /// This subscription's own in-flight cap; `None` means only the global cap applies.
    pub max_in_flight: Option<usize>,
    /// Per-key ordering or none; default per key.
    pub ordering: Ordering,
    /// Inactive subscriptions receive no events; default true.
    pub active: bool,
    /// Backfill it when a running daemon first sees it (SPEC §3b); default false.
    pub backfill: bool,
    /// Request timeout (`[delivery]` value unless overridden).
    pub timeout: Duration,
    /// Retry delays (`[delivery]` value unless overridden).
    pub retry_schedule: Vec<Duration>,
}

impl SubscriptionConfig {
    /// Whether changes of kind `operation` can fire this subscription.
    pub fn fires_on(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    /// The event type for an event of `operation`: the configured one or the default.
    pub fn event_type_for(&self, operation: Operation) -> String {
        match &self.event_type {
            Some(fixed) => fixed.clone(),
            None => format!("{}.{}", self.object.name, operation.past_tense()),
        }
    }

    /// Whether request bodies are JSON by their `content_type` (see [`is_json_media_type`]).
    pub fn sends_json(&self) -> bool {
        is_json_media_type(&self.content_type)
    }
}

/// Whether a `Content-Type` names JSON: `application/json`, or any `…/json` or `…+json`
/// type, with or without parameters (`; charset=utf-8`); case-insensitive as RFC 9110 says.
pub fn is_json_media_type(content_type: &str) -> bool {
    media_subtype_is(content_type, "json")
}

/// Whether a `Content-Type` names XML: `application/xml`, `text/xml` or any `…+xml` type,
/// with or without parameters; a template's values are then XML-escaped (SPEC §4a).
pub fn is_xml_media_type(content_type: &str) -> bool {
    media_subtype_is(content_type, "xml")
}

/// Whether the media type's subtype is `suffix` or ends in `+suffix`, ignoring parameters
/// and case.
fn media_subtype_is(content_type: &str, suffix: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some((kind, subtype)) => {
            !kind.is_empty() && (subtype == suffix || subtype.ends_with(&format!("+{suffix}")))
        }
        None => false,
    }
}

/// A template's text and where it was written, for its compile and render errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateText {
    /// The template source.
    pub text: String,
    /// Where it comes from.
    pub origin: TemplateOrigin,
}

/// Where a template was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// `template = …` in the config file.
    Inline {
        /// `walhook.toml:23: subscriptions[0].template`, like `when_at`; empty for a config
        /// not read from a file.
        at: String,
        /// The config-file line that holds the template's line 1: the key's line, or the
        /// next one for a multi-line string that starts with a line break (TOML drops it).
        first_line: usize,
    },
    /// `template_file = …`, read when the config loads.
    File {
        /// The path as written in the config.
        path: String,
        /// The path read (relative paths are taken from the config file's directory).
        resolved: PathBuf,
        /// `walhook.toml:23: subscriptions[0].template_file`.
        at: String,
    },
}

/// `method`: one for every request, or one per operation (SPEC §4a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `method = "PUT"`: the same method for every event.
    Single(Method),
    /// `method = { create = "POST", … }`. Validation makes sure every operation the
    /// subscription fires on has one.
    PerOperation {
        /// For `create` events.
        create: Option<Method>,
        /// For `update` events.
        update: Option<Method>,
        /// For `delete` events.
        delete: Option<Method>,
        /// For `truncate` events.
        truncate: Option<Method>,
    },
}

impl Methods {
    /// The method of an event of `operation`. An operation the map leaves out cannot fire
    /// (validation refuses that); `POST` stands in.
    pub fn for_operation(&self, operation: Operation) -> Method {
        match *self {
            Methods::Single(method) => method,
            Methods::PerOperation {
                create,
                update,
                delete,
                ..
            } => match operation {
                Operation::Create => create,
                Operation::Update => update,
                Operation::Delete => delete,
                // A read tells the receiver of a row it does not have yet.
                Operation::Read => create,
            }
            .unwrap_or(Method::Post),
        }
    }

    /// The method of a truncate event (`POST` when the map leaves it out, which validation
    /// refuses for a subscription that fires on truncate).
    pub fn for_truncate(&self) -> Method {
        match *self {
            Methods::Single(method) => method,
            Methods::PerOperation { truncate, .. } => truncate.unwrap_or(Method::Post),
        }
    }

    /// The one method of every request, or `None` for a map per operation.
    pub fn single(&self) -> Option<Method> {
        match *self {
            Methods::Single(method) => Some(method),
            Methods::PerOperation { .. } => None,
        }
    }

    /// The operations a map names with their methods, in create/update/delete/truncate
    /// order; empty for a single method.
    pub fn per_operation(&self) -> Vec<(&'static str, Method)> {
        match *self {
            Methods::Single(_) => Vec::new(),
            Methods::PerOperation {
                create,
                update,
                delete,
                truncate,
            } => [
                ("create", create),
                ("update", update),
                ("delete", delete),
                ("truncate", truncate),
            ]
            .into_iter()
            .filter_map(|(name, method)| method.map(|m| (name, m)))
            .collect(),
        }
    }

    /// As the API and the console show it: `"POST"`, or `{"create":"POST",…}`.
    pub fn to_json(&self) -> serde_json::Value {
        match self.single() {
            Some(method) => method.as_str().into(),
            None => self
                .per_operation()
                .into_iter()
                .map(|(name, m)| (name.to_owned(), serde_json::Value::from(m.as_str())))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

impl fmt::Display for Methods {
    /// `POST`, or `create=POST, update=PUT, delete=DELETE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.single() {
            Some(method) => f.write_str(method.as_str()),
            None => {
                let parts: Vec<String> = self
                    .per_operation()
                    .into_iter()
                    .map(|(name, m)| format!("{name}={}", m.as_str()))
                    .collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// A row change kind, as named in the config and in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// A row was inserted.
    Create,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// A backfill read a row that already existed (SPEC §3b). Never listed in `operations`:
    /// read events go to the subscription that asked for the backfill.
    Read,
}

impl Operation {
    /// The operations a subscription lists, in their canonical order (reads come only from
    /// a backfill).
    pub const ALL: [Operation; 3] = [Operation::Create, Operation::Update, Operation::Delete];

    /// `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Read => "read",
        }
    }

    /// `created`, `updated`, `deleted` or `read`, as used in default event types.
    pub fn past_tense(self) -> &'static str {
        match self {
            Operation::Create => "created",
            Operation::Update => "updated",
            Operation::Delete => "deleted",
            Operation::Read => "read",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP method of a subscription (SPEC §4a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The body (the event, a batch or the rendered template).
    Post,
    /// The body, to replace a resource.
    Put,
    /// The body, to amend a resource.
    Patch,
    /// The body, to remove a resource.
    Delete,
    /// A ping without body.
    Get,
}

impl Method {
    /// Every method, in the order error messages list them.
    pub const ALL: [Method; 5] = [
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Get,
    ];

    /// The method as sent: `POST`, `PUT`, `PATCH`, `DELETE` or `GET`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Get => "GET",
        }
    }

    /// The method named `text` exactly (upper case, as sent).
    pub fn parse(text: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// Whether requests carry a body: every method but GET.
    pub fn has_body(self) -> bool {
        self != Method::Get
    }
}

/// Where one event goes when its subscription routes per event (a `url` with `{{ … }}` or a
/// `method` per operation): rendered at capture and stored with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The rendered URL (checked by the network policy when it is sent, like any URL).
    pub url: String,
    /// The method for this event's operation.
    pub method: Method,
}

/// Delivery ordering of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Events of one row key arrive in commit order.
    Key,
    /// No ordering guarantee.
    None,
}

/// Authentication of webhook requests. Credentials are [`Secret`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A custom header carrying a credential.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: Secret,
    },
}

/// `batch = { max_events, max_wait }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// At most this many events per request; default 100.
    pub max_events: usize,
    /// Send a partial batch after waiting this long; default 500 ms.
    pub max_wait: Duration,
}

/// `rate_limit = { per_second, burst }`, a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Refill rate in requests per second (may be fractional).
    pub per_second: f64,
    /// Bucket size; default `per_second` rounded up.
    pub burst: u32,
}

/// `a.x, b.y`, or `no tables`, for messages.
pub fn table_list(tables: &[TableName]) -> String {
    if tables.is_empty() {
        return "no tables".into();
    }
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

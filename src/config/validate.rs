//! Turns the raw file into a [`Config`]: checks every value, applies defaults, and collects
//! every problem with its key path instead of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use indexmap::IndexMap;

use super::document::{child_index, child_key, Document};
use super::error::Finding;
use super::model::{
    ChildConfig, Config, DeliveryConfig, HttpConfig, ObjectConfig, OutboxConfig, SourceConfig,
    TableName, DEFAULT_MAX_EVENT_BYTES, DEFAULT_RETRY_SCHEDULE, MIN_MAX_EVENT_BYTES,
};
use super::net::parse_allowed_network;
use super::raw::{
    RawChild, RawConfig, RawDelivery, RawDuration, RawHttp, RawObject, RawOutbox, RawSize,
    RawSource,
};
use super::secret::{redact_postgres_url, Secret};
use super::subscription::check_subscription;
use super::units::{parse_duration, parse_size};
use crate::pg::ConnInfo;

/// Builds the validated config, or returns every finding in file order.
///
/// `url_override` is `WALHOOK_SOURCE_URL` when set; it replaces `source.url`.
pub(crate) fn validate(
    raw: RawConfig,
    doc: &Document<'_>,
    url_override: Option<String>,
) -> Result<Config, Vec<Finding>> {
    let mut checker = Checker {
        doc,
        findings: Vec::new(),
    };
    let source = checker.source(raw.source.unwrap_or_default(), url_override);
    let outbox = checker.outbox(raw.outbox.unwrap_or_default());
    let http = checker.http(raw.http.unwrap_or_default());
    let delivery = checker.delivery(raw.delivery.unwrap_or_default());
    let mut objects = IndexMap::new();
    for (name, object) in raw.objects.map(|o| o.0).unwrap_or_default() {
        let config = checker.object(&name, object);
        objects.insert(name, config);
    }
    let mut first_use = HashMap::new();
    let subscriptions = raw
        .subscriptions
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, sub)| {
            check_subscription(&mut checker, i, sub, &objects, &delivery, &mut first_use)
        })
        .collect();

    match source {
        // No finding means the source URL parsed, so the source is there.
        Some(source) if checker.findings.is_empty() => Ok(Config {
            source,
            outbox,
            http,
            delivery,
            objects,
            subscriptions,
        }),
        _ => {
            let mut findings = checker.findings;
            // Stable sort: problems on one line keep the order in which they were found.
            findings.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
            Err(findings)
        }
    }
}

/// Collects findings and offers the checks shared by several sections.
pub(crate) struct Checker<'d, 'a> {
    pub(crate) doc: &'d Document<'a>,
    pub(crate) findings: Vec<Finding>,
}

impl Checker<'_, '_> {
    /// Records a problem at `path`.
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        let finding = self.doc.finding(path, message);
        self.findings.push(finding);
    }

    /// A duration value, or `default` when absent (or invalid, after recording why).
    pub(crate) fn duration(
        &mut self,
        raw: Option<&RawDuration>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let (shown, parsed) = match raw {
            None => return default,
            Some(RawDuration::Text(text)) => (format!("{text:?}"), parse_duration(text)),
            Some(RawDuration::Number(n)) => (n.to_string(), parse_duration(&n.to_string())),
        };
        parsed.unwrap_or_else(|reason| {
            self.error(path, format!("invalid duration {shown}: {reason}"));
            default
        })
    }

    /// A duration that must be greater than zero.
    pub(crate) fn positive_duration(
        &mut self,
        raw: Option<&RawDuration>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let value = self.duration(raw, path, default);
        if value.is_zero() && raw.is_some() {
            self.error(path, "must be greater than 0");
        }
        value
    }

    /// A list of durations such as `retry_schedule`.
    pub(crate) fn durations(&mut self, raw: &[RawDuration], path: &str) -> Vec<Duration> {
        raw.iter()
            .enumerate()
            .map(|(i, d)| self.duration(Some(d), &child_index(path, i), Duration::ZERO))
            .collect()
    }

    /// A count that must be at least 1.
    pub(crate) fn count(&mut self, value: i64, path: &str) -> usize {
        if value < 1 {
            self.error(path, format!("must be at least 1, found {value}"));
            return 1;
        }
        usize::try_from(value).unwrap_or(usize::MAX)
    }

    /// A user-chosen name (object, subscription): `[a-z0-9_-]+`.
    pub(crate) fn name(&mut self, name: &str, what: &str, path: &str) {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            self.error(
                path,
                format!(
                    "invalid {what} name {name:?}; use lower-case letters, digits, _ and - only"
                ),
            );
        }
    }

    /// A list of column names: not empty when given, no empty or repeated entries.
    pub(crate) fn columns(
        &mut self,
        list: Option<Vec<String>>,
        path: &str,
        when_empty: &str,
    ) -> Option<Vec<String>> {
        let list = list?;
        if list.is_empty() {
            self.error(path, format!("must not be empty; {when_empty}"));
        }
        for (i, column) in list.iter().enumerate() {
            let item = child_index(path, i);
            if column.is_empty() {
                self.error(&item, "column name must not be empty");
            } else if list[..i].contains(column) {
                self.error(&item, format!("{column:?} is listed twice"));
            }
        }
        Some(list)
    }

    /// `[source]`; `None` when its URL is missing or does not parse (a finding says which).
    fn source(&mut self, raw: RawSource, url_override: Option<String>) -> Option<SourceConfig> {
        let (url, conninfo) = match (url_override, raw.url) {
            (Some(url), _) => {
                let conninfo = ConnInfo::parse_url(&url).map_err(|e| {
                    let finding = self.doc.file_finding(
                        "source.url (from WALHOOK_SOURCE_URL)",
                        format!(
                            "invalid Postgres URL {:?}: {}",
                            redact_postgres_url(&url),
                            e.reason()
                        ),
                    );
                    self.findings.push(finding);
                });
                (url, conninfo.ok())
            }
            (None, Some(url)) => {
                let conninfo = self.postgres_url(&url, "source.url");
                (url, conninfo)
            }
            (None, None) => {
                self.error(
                    "source",
                    "missing key \"url\"; set it here or in the WALHOOK_SOURCE_URL environment variable",
                );
                (String::new(), None)
            }
        };
        let slot = raw.slot.unwrap_or_else(|| "walhook".to_owned());
        let slot_ok = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !slot_ok {
            self.error(
                "source.slot",
                format!(
                    "invalid slot name {slot:?}; use lower-case letters, digits and _ (at most 63)"
                ),
            );
        }
        let publication = raw.publication.unwrap_or_else(|| "walhook".to_owned());
        self.identifier(&publication, "source.publication", false);
        let max_retained_wal = match raw.max_retained_wal {
            None => 20_000_000_000,
            Some(size) => self.size(&size, "source.max_retained_wal"),
        };
        let heartbeat = self.positive_duration(
            raw.heartbeat.as_ref(),
            "source.heartbeat",
            Duration::from_secs(30),
        );
        let backfill_rows_per_second = raw.backfill_rows_per_second.and_then(|n| {
            match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.error(
                        "source.backfill_rows_per_second",
                        format!(
                            "must be a whole number from 1 to {}, got {n}; leave it out for no limit",
                            u32::MAX
                        ),
                    );
                    None
                }
            }
        });
        Some(SourceConfig {
            url: Secret::new(url),
            conninfo: conninfo?,
            slot,
            publication,
            max_retained_wal,
            heartbeat,
            backfill_rows_per_second,
        })
    }

    fn outbox(&mut self, raw: RawOutbox) -> OutboxConfig {
        let conninfo = raw
            .url
            .as_deref()
            .and_then(|url| self.postgres_url(url, "outbox.url"));
        let schema = raw.schema.unwrap_or_else(|| "walhook".to_owned());
        self.identifier(&schema, "outbox.schema", true);
        let retention = self.positive_duration(
            raw.retention.as_ref(),
            "outbox.retention",
            Duration::from_secs(30 * 86_400),
        );
        let max_event_bytes = match &raw.max_event_bytes {
            None => DEFAULT_MAX_EVENT_BYTES,
            Some(size) => {
                let path = "outbox.max_event_bytes";
                match self.checked_size(size, path) {
                    Some(bytes) if bytes < MIN_MAX_EVENT_BYTES => {
                        self.error(
                            path,
                            format!(
                                "must be at least 1KiB ({MIN_MAX_EVENT_BYTES} bytes), found \
                                 {bytes} bytes; leave it out for 1MiB"
                            ),
                        );
                        DEFAULT_MAX_EVENT_BYTES
                    }
                    Some(bytes) => bytes,
                    None => DEFAULT_MAX_EVENT_BYTES,
                }
            }
        };
        OutboxConfig {
            url: raw.url.map(Secret::new),
            conninfo,
            schema,
            retention,
            max_event_bytes,
        }
    }

    fn http(&mut self, raw: RawHttp) -> HttpConfig {
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 9187));
        let listen = match raw.listen {
            None => default_listen,
            Some(text) => text.parse().unwrap_or_else(|_| {
                self.error(
                    "http.listen",
                    format!("invalid listen address {text:?}; expected IP:port such as \"127.0.0.1:9187\""),
                );
                default_listen
            }),
        };
        if raw.admin_token.as_deref() == Some("") {
            self.error("http.admin_token", "must not be empty");
        }
        HttpConfig {
            listen,
            admin_token: raw.admin_token.map(Secret::new),
        }
    }

    fn delivery(&mut self, raw: RawDelivery) -> DeliveryConfig {
        let timeout = self.positive_duration(
            raw.timeout.as_ref(),
            "delivery.timeout",
            Duration::from_secs(15),
        );
        let retry_schedule = match &raw.retry_schedule {
            None => DEFAULT_RETRY_SCHEDULE.to_vec(),
            Some(list) => self.durations(list, "delivery.retry_schedule"),
        };
        let max_in_flight = self.count(raw.max_in_flight.unwrap_or(256), "delivery.max_in_flight");
        let allow_networks = raw
            .allow_networks
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                parse_allowed_network(entry)
                    .map_err(|reason| {
                        let path = child_index("delivery.allow_networks", i);
                        self.error(&path, format!("invalid network {entry:?}: {reason}"));
                    })
                    .ok()
            })
            .collect();
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout.as_ref(),
            "delivery.shutdown_timeout",
            Duration::from_secs(30),
        );
        DeliveryConfig {
            timeout,
            retry_schedule,
            max_in_flight,
            allow_networks,
            shutdown_timeout,
        }
    }

    fn object(&mut self, name: &str, raw: RawObject) -> ObjectConfig {
        let path = child_key("objects", name);
        self.name(name, "object", &path);
        let table = match raw.table {
            Some(text) => self.table(&text, &child_key(&path, "table")),
            None => {
                self.error(&path, "missing key \"table\"");
                placeholder_table()
            }
        };
        if let Some(display) = &raw.name {
            if display.is_empty() || display.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    &child_key(&path, "name"),
                    "must be non-empty and contain no whitespace; leave it out to use the object's key",
                );
            }
        }
        let key = self.columns(
            raw.key,
            &child_key(&path, "key"),
            "leave it out to use the primary key",
        );
        let fields = self.columns(
            raw.fields,
            &child_key(&path, "fields"),
            "leave it out to include every column",
        );
        let header = Header {
            path: &path,
            table: &table,
            key: key.as_deref(),
            fields: fields.as_deref(),
        };
        let children = match raw.children {
            None => Vec::new(),
            Some(list) => {
                let at = child_key(&path, "children");
                if list.is_empty() {
                    self.error(
                        &at,
                        "must not be empty; leave it out for an object without collections",
                    );
                }
                self.children(&header, list)
            }
        };
        if raw.keep_state == Some(false) && !children.is_empty() {
            self.error(
                &child_key(&path, "keep_state"),
                "documents always keep state (an object with children needs its rows' last \
                 values to build every event); leave keep_state out",
            );
        }
        ObjectConfig {
            name: raw.name,
            table,
            key,
            fields,
            keep_state: raw.keep_state.unwrap_or(false),
            children,
        }
    }

    /// A document's `[[objects.NAME.children]]`, checked against the header and each other.
    fn children(&mut self, header: &Header<'_>, list: Vec<RawChild>) -> Vec<ChildConfig> {
        let at = child_key(header.path, "children");
        let mut children: Vec<ChildConfig> = Vec::with_capacity(list.len());
        // Where each accepted collection name and child table was first written.
        let mut names: Vec<(String, String)> = Vec::new();
        let mut tables: Vec<(TableName, String)> = Vec::new();
        for (i, raw) in list.into_iter().enumerate() {
            let path = child_index(&at, i);
            let child = self.child(header, &path, raw);
            if !child.name.is_empty() {
                let name_at = child_key(&path, "name");
                match names.iter().find(|(n, _)| *n == child.name) {
                    Some((_, first)) => {
                        let message = format!(
                            "duplicate collection name {:?}{}",
                            child.name,
                            self.first_at(first)
                        );
                        self.error(&name_at, message);
                    }
                    None => names.push((child.name.clone(), name_at)),
                }
            }
            if child.table != placeholder_table() && child.table != *header.table {
                let table_at = child_key(&path, "table");
                match tables.iter().find(|(t, _)| *t == child.table) {
                    Some((_, first)) => {
                        let message = format!(
                            "table {} is already the table of another collection of this \
                             object{}; a row of it would belong to both",
                            child.table,
                            self.first_at(first)
                        );
                        self.error(&table_at, message);
                    }
                    None => tables.push((child.table.clone(), table_at)),
                }
            }
            children.push(child);
        }
        children
    }

    /// One child collection at `path`.
    fn child(&mut self, header: &Header<'_>, path: &str, raw: RawChild) -> ChildConfig {
        let name = match raw.name {
            None => {
                self.error(path, "missing key \"name\" (the property in values)");
                String::new()
            }
            Some(name) => {
                let name_at = child_key(path, "name");
                let mut chars = name.chars();
                let valid = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    self.error(
                        &name_at,
                        format!(
                            "invalid collection name {name:?}; use lower-case letters, digits \
                             and _, not starting with a digit"
                        ),
                    );
                } else if header.fields.is_some_and(|f| f.contains(&name)) {
                    self.error(
                        &name_at,
                        format!(
                            "{name:?} is also a field of the header ({}.fields): both would be \
                             values.{name}; give the collection another name",
                            header.path
                        ),
                    );
                }
                name
            }
        };
        let table_at = child_key(path, "table");
        let table = match raw.table {
            None => {
                self.error(path, "missing key \"table\"");
                placeholder_table()
            }
            Some(text) => {
                let table = self.table(&text, &table_at);
                if table != placeholder_table() && table == *header.table {
                    self.error(
                        &table_at,
                        format!(
                            "{table} is the header's own table; a collection holds rows of \
                             another table that point at the header"
                        ),
                    );
                }
                table
            }
        };
        let parent_key_at = child_key(path, "parent_key");
        let parent_key = match raw.parent_key {
            None => {
                self.error(
                    path,
                    "missing key \"parent_key\"; list the child columns that hold the \
                     header's key, in key order",
                );
                Vec::new()
            }
            Some(list) => {
                let list = self
                    .columns(
                        Some(list),
                        &parent_key_at,
                        "list the child columns that hold the header's key, in key order",
                    )
                    .unwrap_or_default();
                if let Some(key) = header.key.filter(|k| !k.is_empty()) {
                    if !list.is_empty() && list.len() != key.len() {
                        self.error(
                            &parent_key_at,
                            format!(
                                "has {} column(s) but {}.key has {}; list one child column for \
                                 each header key column, in the same order",
                                list.len(),
                                header.path,
                                key.len()
                            ),
                        );
                    }
                }
                list
            }
        };
        ChildConfig {
            name,
            table,
            parent_key,
            key: self.columns(
                raw.key,
                &child_key(path, "key"),
                "leave it out to use the child table's primary key",
            ),
            fields: self.columns(
                raw.fields,
                &child_key(path, "fields"),
                "leave it out to include every column",
            ),
            order_by: self.columns(
                raw.order_by,
                &child_key(path, "order_by"),
                "leave it out to order by the child key",
            ),
        }
    }

    /// ` (first used at line N)` for the key at `path`, or nothing outside a file.
    fn first_at(&self, path: &str) -> String {
        self.doc
            .line_of(path)
            .map_or_else(String::new, |line| format!(" (first used at line {line})"))
    }

    /// A table name; on error records it and returns a placeholder.
    pub(crate) fn table(&mut self, text: &str, path: &str) -> TableName {
        text.parse().unwrap_or_else(|reason: String| {
            self.error(path, reason);
            placeholder_table()
        })
    }

    fn size(&mut self, raw: &RawSize, path: &str) -> u64 {
        self.checked_size(raw, path).unwrap_or(0)
    }

    /// A size in bytes, or `None` after recording why it is not one.
    fn checked_size(&mut self, raw: &RawSize, path: &str) -> Option<u64> {
        let (shown, parsed) = match raw {
            RawSize::Text(text) => (format!("{text:?}"), parse_size(text)),
            RawSize::Bytes(n) => (
                n.to_string(),
                u64::try_from(*n).map_err(|_| "must not be negative".to_owned()),
            ),
        };
        parsed
            .map_err(|reason| self.error(path, format!("invalid size {shown}: {reason}")))
            .ok()
    }

    /// How a URL at `path` may be shown: as written (variables unexpanded), password hidden.
    pub(crate) fn display_url(&self, url: &str, path: &str) -> String {
        redact_postgres_url(self.doc.written(path).unwrap_or(url))
    }

    /// The connection a Postgres URL at `path` names, parsed once here so every command
    /// connects with what the config accepted; `None` after recording why not.
    fn postgres_url(&mut self, url: &str, path: &str) -> Option<ConnInfo> {
        match ConnInfo::parse_url(url) {
            Ok(conninfo) => Some(conninfo),
            Err(e) => {
                let message = format!(
                    "invalid Postgres URL {:?}: {}",
                    self.display_url(url, path),
                    e.reason()
                );
                self.error(path, message);
                None
            }
        }
    }

    /// A Postgres identifier walhook creates (schema, publication): 1 to 63 bytes, no NUL,
    /// and for a schema not Postgres's reserved `pg_` prefix — each would pass here and fail
    /// at the first `CREATE`.
    fn identifier(&mut self, name: &str, path: &str, is_schema: bool) {
        if name.is_empty() || name.len() > 63 {
            self.error(path, "must be 1 to 63 bytes long (a Postgres identifier)");
        } else if name.contains('\0') {
            self.error(path, "must not contain a NUL character");
        } else if is_schema && name.starts_with("pg_") {
            self.error(
                path,
                format!("{name:?} starts with \"pg_\", which Postgres reserves for system schemas"),
            );
        }
    }
}

/// What a document's children are checked against: its header object.
struct Header<'h> {
    /// `objects.NAME`.
    path: &'h str,
    table: &'h TableName,
    key: Option<&'h [String]>,
    fields: Option<&'h [String]>,
}

/// Stands in for an invalid table name so checking can go on; never returned to callers.
pub(crate) fn placeholder_table() -> TableName {
    TableName {
        schema: String::new(),
        name: String::new(),
    }
}

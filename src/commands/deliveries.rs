//! `walhook deliveries`: the delivery log, newest first, read from the outbox view
//! `<schema>.deliveries` (SPEC §1, §5). Every filter is a bind parameter.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::outbox::{since_condition, Since, Status};
use super::replay::{known_in_outbox, ReplayError};
use crate::config::Config;
use crate::pg::quote_ident;

/// How much of `last_error` the table shows.
const ERROR_WIDTH: usize = 60;

/// The filters and output form of one `walhook deliveries` call.
#[derive(Clone, Debug)]
pub struct DeliveriesOptions {
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only deliveries created at or after this.
    pub since: Option<Since>,
    /// At most this many rows.
    pub limit: u32,
    /// One JSON object per line instead of a table.
    pub json: bool,
}

/// Why the delivery log could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    /// The name is neither in the config nor in the outbox (exit 2): `replay`'s own error,
    /// found by the same check.
    #[error(transparent)]
    UnknownSubscription(ReplayError),
    /// The outbox could not be read (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl DeliveriesError {
    /// The exit code of SPEC §1: a bad name is a usage error (2), anything else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            DeliveriesError::UnknownSubscription(_) => 2,
            DeliveriesError::Failed(_) => 1,
        }
    }
}

/// Which deliveries to read: the filters of `walhook deliveries` and the admin API's
/// `GET /api/v1/deliveries`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only deliveries created at or after this.
    pub since: Option<Since>,
    /// Only deliveries with a smaller id (the page after one ending at this id).
    pub before_id: Option<i64>,
}

impl Filter {
    /// The bind parameters of [`filters`], `$1` to `$5`.
    fn params(&self) -> FilterParams {
        let (since_at, since_micros) = Since::params(self.since.as_ref());
        FilterParams {
            subscription: self.subscription.clone(),
            status: self.status.map(|s| s.as_str().to_owned()),
            since_at,
            since_micros,
            before_id: self.before_id,
        }
    }
}

/// Owned values of the filter parameters, for the lifetime of a query.
struct FilterParams {
    subscription: Option<String>,
    status: Option<String>,
    since_at: Option<String>,
    since_micros: Option<i64>,
    before_id: Option<i64>,
}

impl FilterParams {
    fn refs(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.subscription,
            &self.status,
            &self.since_at,
            &self.since_micros,
            &self.before_id,
        ]
    }
}

/// Up to `limit` rows of the view `<schema>.deliveries` that pass `filter`, newest (highest
/// id) first.
pub async fn list(
    db: &Client,
    schema: &str,
    filter: &Filter,
    limit: u32,
) -> Result<Vec<Delivery>, DeliveriesError> {
    let view = format!("{}.deliveries", quote_ident(schema));
    let params = filter.params();
    let limit = i64::from(limit);
    let mut refs: Vec<&(dyn ToSql + Sync)> = params.refs().to_vec();
    refs.push(&limit);
    let rows = db
        .query(
            &format!(
                "SELECT {} FROM {view} {} ORDER BY id DESC LIMIT $6",
                columns(),
                filters()
            ),
            &refs,
        )
        .await
        .map_err(|e| DeliveriesError::Failed(format!("reading {view}: {e}")))?;
    Ok(rows.iter().map(Delivery::from_row).collect())
}

/// How many deliveries that pass `filter` each status has.
async fn counts(
    db: &Client,
    schema: &str,
    filter: &Filter,
) -> Result<Vec<(String, i64)>, DeliveriesError> {
    let view = format!("{}.deliveries", quote_ident(schema));
    let params = filter.params();
    let rows = db
        .query(
            &format!(
                "SELECT status, count(*) FROM {view} {} GROUP BY status",
                filters()
            ),
            &params.refs(),
        )
        .await
        .map_err(|e| DeliveriesError::Failed(format!("reading {view}: {e}")))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The view's columns, timestamps as RFC 3339 text in UTC and `key` as JSON text.
fn columns() -> String {
    format!(
        "id, subscription, event_id, event_type, object, key::text, status, attempts, {}, \
         last_status_code, last_error, {}, {}",
        rfc3339("next_attempt_at"),
        rfc3339("created_at"),
        rfc3339("delivered_at")
    )
}

/// The filters, numbered from `$1`: subscription, status, since (timestamptz), since (µs
/// ago), before id.
fn filters() -> String {
    format!(
        "WHERE ($1::text IS NULL OR subscription = $1) \
         AND ($2::text IS NULL OR status = $2) AND {} \
         AND ($5::bigint IS NULL OR id < $5)",
        since_condition("created_at", 3, 4)
    )
}

/// Prints the delivery log.
pub async fn run(config: &Config, options: &DeliveriesOptions) -> Result<(), DeliveriesError> {
    let db = super::outbox::connect(config, "deliveries")
        .await
        .map_err(DeliveriesError::Failed)?;
    let schema = &config.outbox.schema;
    if let Some(name) = &options.subscription {
        check_known(config, &db, name).await?;
    }
    let filter = Filter {
        subscription: options.subscription.clone(),
        status: options.status,
        since: options.since.clone(),
        before_id: None,
    };
    let deliveries = list(&db, schema, &filter, options.limit).await?;

    if options.json {
        for delivery in &deliveries {
            println!("{}", delivery.to_json());
        }
    } else {
        print!("{}", table(&deliveries));
        let counts = counts(&db, schema, &filter).await?;
        let count = |status: &str| {
            counts
                .iter()
                .find(|(name, _)| name == status)
                .map_or(0, |(_, n)| *n)
        };
        println!(
            "{} shown (limit {}); pending {}, delivered {}, dead {} for these filters",
            deliveries.len(),
            options.limit,
            count("pending"),
            count("delivered"),
            count("dead")
        );
    }
    Ok(())
}

/// A name that is neither configured nor in the outbox is a typo, not an empty log.
async fn check_known(
    config: &Config,
    db: &tokio_postgres::Client,
    name: &str,
) -> Result<(), DeliveriesError> {
    let configured: Vec<&str> = config
        .subscriptions
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if configured.contains(&name) {
        return Ok(());
    }
    let schema = quote_ident(&config.outbox.schema);
    known_in_outbox(db, &schema, name, &configured)
        .await
        .map_err(|e| match e {
            ReplayError::Failed(message) => DeliveriesError::Failed(message),
            unknown => DeliveriesError::UnknownSubscription(unknown),
        })
}

/// SQL giving a timestamptz column as RFC 3339 text in UTC, microsecond precision.
fn rfc3339(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS {column}")
}

/// One row of the `deliveries` view.
#[derive(Debug)]
pub struct Delivery {
    /// The delivery's id.
    pub id: i64,
    subscription: String,
    event_id: String,
    event_type: String,
    object: String,
    key: String,
    status: String,
    attempts: i32,
    next_attempt_at: String,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

impl Delivery {
    /// Reads a row selected with [`columns`].
    fn from_row(row: &Row) -> Delivery {
        Delivery {
            id: row.get(0),
            subscription: row.get(1),
            event_id: row.get(2),
            event_type: row.get(3),
            object: row.get(4),
            key: row.get(5),
            status: row.get(6),
            attempts: row.get(7),
            next_attempt_at: row.get(8),
            last_status_code: row.get(9),
            last_error: row.get(10),
            created_at: row.get(11),
            delivered_at: row.get(12),
        }
    }

    /// Exactly the view's columns, in its order; `key` as the JSON it holds.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), self.id.into());
        map.insert("subscription".into(), self.subscription.clone().into());
        map.insert("event_id".into(), self.event_id.clone().into());
        map.insert("event_type".into(), self.event_type.clone().into());
        map.insert("object".into(), self.object.clone().into());
        let key = serde_json::from_str(&self.key).unwrap_or_else(|_| self.key.clone().into());
        map.insert("key".into(), key);
        map.insert("status".into(), self.status.clone().into());
        map.insert("attempts".into(), self.attempts.into());
        map.insert(
            "next_attempt_at".into(),
            self.next_attempt_at.clone().into(),
        );
        map.insert("last_status_code".into(), self.last_status_code.into());
        map.insert("last_error".into(), self.last_error.clone().into());
        map.insert("created_at".into(), self.created_at.clone().into());
        map.insert("delivered_at".into(), self.delivered_at.clone().into());
        Value::Object(map)
    }

    /// The cells of the human table, in [`HEADER`] order.
    fn cells(&self) -> [String; 11] {
        [
            self.id.to_string(),
            self.subscription.clone(),
            self.event_id.clone(),
            self.event_type.clone(),
            self.key.clone(),
            self.status.clone(),
            self.attempts.to_string(),
            if self.status == "pending" {
                seconds(&self.next_attempt_at)
            } else {
                "-".into()
            },
            self.last_status_code
                .map_or_else(|| "-".into(), |code| code.to_string()),
            self.last_error
                .as_deref()
                .map_or_else(|| "-".into(), |e| truncate(e, ERROR_WIDTH)),
            seconds(&self.created_at),
        ]
    }
}

/// The human table's column titles.
const HEADER: [&str; 11] = [
    "ID",
    "SUBSCRIPTION",
    "EVENT_ID",
    "EVENT_TYPE",
    "KEY",
    "STATUS",
    "ATTEMPTS",
    "NEXT_ATTEMPT_AT",
    "LAST_STATUS",
    "LAST_ERROR",
    "CREATED_AT",
];

/// An aligned table with a header line, or a one-line note when there are no rows.
fn table(deliveries: &[Delivery]) -> String {
    if deliveries.is_empty() {
        return "no deliveries\n".into();
    }
    let rows: Vec<[String; 11]> = deliveries.iter().map(Delivery::cells).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An RFC 3339 timestamp to the second: `2026-01-31T08:00:00Z`.
fn seconds(timestamp: &str) -> String {
    match timestamp.get(..19) {
        Some(prefix) => format!("{prefix}Z"),
        None => timestamp.to_owned(),
    }
}

/// At most `max` characters of `text` on one line, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    // On one line; errors quote receivers, so anything else is escaped.
    let flat = super::terminal::printable(&text.replace(['\n', '\t'], " "), false);
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_to_one_short_line() {
        assert_eq!(truncate("short", 60), "short");
        let cut = truncate(&format!("line\n{}", "x".repeat(100)), 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.starts_with("line x") && cut.ends_with('…'));
        assert_eq!(truncate("a\u{1b}[2Jb", 60), "a\\u{1b}[2Jb");
    }
}

//! `walhook deliveries`: the delivery log, newest first, read from the outbox view
//! `<schema>.deliveries` (SPEC §1, §5). Every filter is a bind parameter.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::config::Config;
use crate::pg::quote_ident;
use crate::source::conninfo::ConnInfo;
use crate::source::tls;

/// How much of `last_error` the table shows.
const ERROR_WIDTH: usize = 60;

/// A delivery status, as stored in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not delivered yet; retried at `next_attempt_at`.
    Pending,
    /// Answered 2xx.
    Delivered,
    /// Gave up; kept for `replay`.
    Dead,
}

impl Status {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
        }
    }
}

/// The lower bound of `--since`: an instant, or a duration before now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// An RFC 3339 timestamp, passed to Postgres as `timestamptz`.
    At(String),
    /// This long ago.
    Ago(Duration),
}

/// Parses `--since`: a duration such as `2h` ("ago") or an RFC 3339 timestamp.
pub fn parse_since(text: &str) -> Result<Since, String> {
    let text = text.trim();
    if let Ok(ago) = crate::config::parse_duration(text) {
        return Ok(Since::Ago(ago));
    }
    if is_rfc3339(text) {
        return Ok(Since::At(text.to_owned()));
    }
    Err(format!(
        "{text:?} is neither a duration (e.g. \"2h\", \"30m\") nor an RFC 3339 timestamp \
         (e.g. \"2026-01-31T08:00:00Z\")"
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `t` and a space are accepted for `T`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10))
        || !matches!(b[10], b'T' | b't' | b' ')
        || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

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

/// Why the delivery log could not be read (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveriesError(String);

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

/// The filters, numbered from `$1`: subscription, status, since (timestamptz), since (µs ago).
const WHERE: &str = "WHERE ($1::text IS NULL OR subscription = $1) \
    AND ($2::text IS NULL OR status = $2) \
    AND ($3::text IS NULL OR created_at >= $3::timestamptz) \
    AND ($4::bigint IS NULL OR created_at >= now() - $4::bigint * interval '1 microsecond')";

/// Prints the delivery log.
pub async fn run(config: &Config, options: &DeliveriesOptions) -> Result<(), DeliveriesError> {
    let (url, key) = match &config.outbox.url {
        Some(url) => (url.expose(), "outbox.url"),
        None => (config.source.url.expose(), "source.url"),
    };
    let db = connect(url, key).await?;
    let schema = &config.outbox.schema;
    let view = format!("{}.deliveries", quote_ident(schema));
    let exists: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&view])
        .await
        .map_err(|e| DeliveriesError(format!("reading the outbox: {e}")))?
        .get(0);
    if !exists {
        return Err(DeliveriesError(format!(
            "the outbox schema {schema} does not exist yet: run `walhook setup`"
        )));
    }

    let subscription = options.subscription.clone();
    let status = options.status.map(|s| s.as_str().to_owned());
    let (since_at, since_micros) = match &options.since {
        None => (None, None),
        Some(Since::At(at)) => (Some(at.clone()), None),
        Some(Since::Ago(ago)) => (
            None,
            Some(i64::try_from(ago.as_micros()).unwrap_or(i64::MAX)),
        ),
    };
    let limit = i64::from(options.limit);
    let params: [&(dyn ToSql + Sync); 5] =
        [&subscription, &status, &since_at, &since_micros, &limit];

    let rows = db
        .query(
            &format!(
                "SELECT {} FROM {view} {WHERE} ORDER BY id DESC LIMIT $5",
                columns()
            ),
            &params,
        )
        .await
        .map_err(|e| DeliveriesError(format!("reading {view}: {e}")))?;
    let counts = db
        .query(
            &format!("SELECT status, count(*) FROM {view} {WHERE} GROUP BY status"),
            &params[..4],
        )
        .await
        .map_err(|e| DeliveriesError(format!("reading {view}: {e}")))?;

    let deliveries: Vec<Delivery> = rows.iter().map(Delivery::from_row).collect();
    if options.json {
        for delivery in &deliveries {
            println!("{}", delivery.to_json());
        }
    } else {
        print!("{}", table(&deliveries));
        let count = |status: &str| {
            counts
                .iter()
                .find(|row| row.get::<_, String>(0) == status)
                .map_or(0, |row| row.get::<_, i64>(1))
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
    if let Some(name) = &options.subscription {
        let configured = config.subscriptions.iter().any(|s| &s.name == name);
        if !configured && deliveries.is_empty() {
            eprintln!(
                "note: no subscription {name:?} in the config{}",
                crate::suggest::did_you_mean(
                    name,
                    config.subscriptions.iter().map(|s| s.name.as_str())
                )
            );
        }
    }
    Ok(())
}

/// A SQL connection; errors name the config key and never the URL (it may hold a password).
async fn connect(url: &str, key: &str) -> Result<Client, DeliveriesError> {
    let info = ConnInfo::parse(url).map_err(|e| DeliveriesError(format!("{key}: {e}")))?;
    tls::connect_sql(&info)
        .await
        .map_err(|e| DeliveriesError(format!("{key}: {e}")))
}

/// SQL giving a timestamptz column as RFC 3339 text in UTC, microsecond precision.
fn rfc3339(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS {column}")
}

/// One row of the `deliveries` view.
#[derive(Debug)]
struct Delivery {
    id: i64,
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
    fn to_json(&self) -> Value {
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
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
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
    fn since_takes_a_duration_ago_or_an_rfc3339_timestamp() {
        assert_eq!(parse_since("2h"), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(
            parse_since("2026-01-31T08:00:00Z"),
            Ok(Since::At("2026-01-31T08:00:00Z".into()))
        );
        assert!(parse_since("2026-01-31T08:00:00.123+02:00").is_ok());
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2026-01-31").is_err());
        assert!(parse_since("2026-01-31T08:00:00").is_err());
    }

    #[test]
    fn long_errors_are_cut_to_one_short_line() {
        assert_eq!(truncate("short", 60), "short");
        let cut = truncate(&format!("line\n{}", "x".repeat(100)), 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.starts_with("line x") && cut.ends_with('…'));
    }
}

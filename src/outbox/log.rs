//! The delivery log: the view `<schema>.deliveries` read through filters (subscription,
//! status, `--since`, a page boundary), for `walhook deliveries` and the admin API, and the
//! check that a subscription name is known to the outbox. Every filter is a bind parameter.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row};

use super::StoreError;
use crate::config::format_duration;
use crate::pg::quote_ident;
use crate::pg::sql::{rfc3339 as rfc3339_text, Precision};

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

impl Since {
    /// The two bind parameters of [`since_condition`]: the timestamp, or microseconds ago.
    pub fn params(since: Option<&Since>) -> (Option<String>, Option<i64>) {
        match since {
            None => (None, None),
            Some(Since::At(at)) => (Some(at.clone()), None),
            Some(Since::Ago(ago)) => (
                None,
                Some(i64::try_from(ago.as_micros()).unwrap_or(i64::MAX)),
            ),
        }
    }

    /// For messages: `since 2026-01-31T08:00:00Z` or `in the last 2h`.
    pub fn describe(&self) -> String {
        match self {
            Since::At(at) => format!("since {at}"),
            Since::Ago(ago) => format!("in the last {}", format_duration(*ago)),
        }
    }
}

/// Parses `--since`: a duration such as `2h` ("ago") or an RFC 3339 timestamp.
pub fn parse_since(text: &str) -> Result<Since, String> {
    let text = text.trim();
    if let Ok(ago) = crate::config::parse_duration(text) {
        // Postgres' timestamps end in 4713 BC: a longer look back would fail in the query.
        if ago > MAX_SINCE {
            return Err(format!(
                "{text:?} reaches back further than {} (the outbox is not that old)",
                format_duration(MAX_SINCE)
            ));
        }
        return Ok(Since::Ago(ago));
    }
    if looks_like_rfc3339(text) {
        // Postgres' timestamptz starts at 4713 BC but RFC 3339 at year 1; jiff checks the
        // fields (month, day, leap years, offset).
        if crate::time::parse_rfc3339(text).is_none()
            || text.starts_with("0000")
            || !offset_within_postgres_range(text)
        {
            return Err(format!(
                "{text:?} is not a real date and time (month, day, hour, minute, second or \
                 offset out of range)"
            ));
        }
        return Ok(Since::At(text.to_owned()));
    }
    Err(format!(
        "{text:?} is neither a duration (e.g. \"2h\", \"30m\") nor an RFC 3339 timestamp \
         (e.g. \"2026-01-31T08:00:00Z\")"
    ))
}

/// SQL keeping rows whose `column` (a delivery's `created_at`, qualified as the query needs)
/// is at or after `--since`, given as the bind parameters `$at` (timestamptz text) and
/// `$ago` (microseconds) of [`Since::params`].
pub fn since_condition(column: &str, at: usize, ago: usize) -> String {
    format!(
        "(${at}::text IS NULL OR {column} >= ${at}::timestamptz) \
         AND (${ago}::bigint IS NULL \
              OR {column} >= now() - ${ago}::bigint * interval '1 microsecond')"
    )
}

/// The longest `--since` duration: a thousand years.
const MAX_SINCE: Duration = Duration::from_secs(1000 * 365 * 86_400);

/// Postgres takes UTC offsets up to ±15:59; jiff up to ±25:59.
fn offset_within_postgres_range(text: &str) -> bool {
    let b = text.as_bytes();
    match &b[b.len() - 6..] {
        [b'+' | b'-', h1, h2, b':', ..] => (h1 - b'0') * 10 + (h2 - b'0') <= 15,
        _ => true,
    }
}

/// The shape `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (`t` and a space accepted for `T`),
/// before its fields are checked: what is not even shaped so is neither a time nor a
/// duration.
fn looks_like_rfc3339(text: &str) -> bool {
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
) -> Result<Vec<Delivery>, StoreError> {
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
        .map_err(StoreError::at(format!("reading {view}")))?;
    Ok(rows.iter().map(Delivery::from_row).collect())
}

/// How many deliveries that pass `filter` each status has.
pub async fn counts(
    db: &Client,
    schema: &str,
    filter: &Filter,
) -> Result<Vec<(String, i64)>, StoreError> {
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
        .map_err(StoreError::at(format!("reading {view}")))?;
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

/// One row of the `deliveries` view; serialised as the view's columns in its order, `key` as
/// the JSON it holds.
#[derive(Debug, serde::Serialize)]
pub struct Delivery {
    /// The delivery's id.
    pub id: i64,
    /// The view's column of that name.
    pub subscription: String,
    /// The view's column of that name.
    pub event_id: String,
    /// The view's column of that name.
    pub event_type: String,
    /// The view's column of that name.
    pub object: String,
    /// The view's column of that name.
    #[serde(serialize_with = "key_as_json")]
    pub key: String,
    /// The view's column of that name.
    pub status: String,
    /// The view's column of that name.
    pub attempts: i32,
    /// The view's column of that name.
    pub next_attempt_at: String,
    /// The view's column of that name.
    pub last_status_code: Option<i32>,
    /// The view's column of that name.
    pub last_error: Option<String>,
    /// The view's column of that name.
    pub created_at: String,
    /// The view's column of that name.
    pub delivered_at: Option<String>,
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
        serde_json::to_value(self).expect("a delivery row serialises")
    }
}

/// The key text (`jsonb` as text) as the JSON value it holds.
fn key_as_json<S: serde::Serializer>(key: &str, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    match serde_json::from_str::<Value>(key) {
        Ok(value) => value.serialize(serializer),
        Err(_) => key.serialize(serializer),
    }
}

/// SQL giving a timestamptz column as RFC 3339 text in UTC under its own name.
fn rfc3339(column: &str) -> String {
    format!("{} AS {column}", rfc3339_text(column, Precision::Micros))
}

/// `None` when `name` has deliveries or a state in the outbox; otherwise the hint naming the
/// closest configured or stored name (`; did you mean "x"?`, or empty).
pub async fn unknown_subscription(
    db: &impl GenericClient,
    schema: &str,
    name: &str,
    configured: &[&str],
) -> Result<Option<String>, StoreError> {
    let s = quote_ident(schema);
    let what = "reading the outbox";
    let known: bool = db
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.delivery WHERE subscription = $1) \
                     OR EXISTS (SELECT 1 FROM {s}.subscription_state WHERE subscription = $1)"
            ),
            &[&name],
        )
        .await
        .map_err(StoreError::at(what))?
        .get(0);
    if known {
        return Ok(None);
    }
    // Only on this error path: the names of subscriptions no longer configured.
    let stored: Vec<String> = db
        .query(
            &format!(
                "SELECT DISTINCT subscription FROM {s}.delivery \
                 UNION SELECT subscription FROM {s}.subscription_state"
            ),
            &[],
        )
        .await
        .map_err(StoreError::at(what))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let candidates = configured
        .iter()
        .copied()
        .chain(stored.iter().map(String::as_str));
    Ok(Some(crate::suggest::did_you_mean(name, candidates)))
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
        // Bounded, so that the query cannot overflow.
        assert!(parse_since("300000d").is_ok());
        for text in [
            "99999999999d",
            "2026-13-01T08:00:00Z",
            "2026-02-30T08:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-01-31T24:00:00Z",
            "2026-01-31T08:00:00+99:00",
            "2026-01-31T08:00:00+16:00",
        ] {
            assert!(parse_since(text).is_err(), "{text}");
        }
        assert!(parse_since("2024-02-29T23:59:60+14:00").is_ok());
    }

    #[test]
    fn since_reads_back_the_way_it_was_written() {
        assert_eq!(parse_since("2h").unwrap().describe(), "in the last 2h");
        assert_eq!(parse_since("90m").unwrap().describe(), "in the last 1h30m");
        assert_eq!(
            parse_since("1d 250ms").unwrap().describe(),
            "in the last 1d250ms"
        );
        assert_eq!(
            parse_since("2026-01-31T08:00:00Z").unwrap().describe(),
            "since 2026-01-31T08:00:00Z"
        );
    }
}

//! What the commands that read or change the outbox share (`deliveries`, `replay`): the
//! delivery statuses, the `--since` filter, and the connection to the configured outbox.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{format_duration, Config};
use crate::pg;
use crate::pg::quote_ident;

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
    if is_rfc3339(text) {
        if !fields_in_range(text.as_bytes()) {
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

/// Whether the fields of an [`is_rfc3339`] text name a real instant Postgres accepts.
fn fields_in_range(b: &[u8]) -> bool {
    let num = |at: usize, len: usize| {
        b[at..at + len]
            .iter()
            .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(5, 2), num(8, 2));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    let offset_ok = match &b[b.len() - 6..] {
        [b'+' | b'-', ..] => num(b.len() - 5, 2) <= 15 && num(b.len() - 2, 2) <= 59,
        _ => true,
    };
    year >= 1
        && (1..=days).contains(&day)
        && num(11, 2) <= 23
        && num(14, 2) <= 59
        && num(17, 2) <= 60
        && offset_ok
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

/// A connection to the outbox (`outbox.url`, else `source.url`) whose schema holds
/// `relation`, a table or view of the migrations. Errors name the config key, never the URL
/// (it may hold a password), and say to run `walhook setup` before the schema exists.
pub async fn connect(config: &Config, relation: &str) -> Result<Client, String> {
    let key = config.outbox_key();
    let db = pg::connect_sql(config.outbox_conninfo())
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    let schema = &config.outbox.schema;
    let name = format!("{}.{}", quote_ident(schema), quote_ident(relation));
    let exists: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(|e| format!("reading the outbox: {e}"))?
        .get(0);
    if !exists {
        return Err(format!(
            "the outbox schema {schema} does not exist yet: run `walhook setup`"
        ));
    }
    Ok(db)
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

//! SQL fragments statements share: a timestamp as RFC 3339 text, done by Postgres (the
//! outbox's log and state, a source column in a test event).

/// How much of a second a timestamp's text keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// `2026-11-23T10:00:00Z`: for text people read in a sentence.
    Seconds,
    /// `2026-11-23T10:00:00.123456Z`: for fields of the log and the API.
    Micros,
}

/// SQL giving the `timestamptz` expression `expr` as RFC 3339 text in UTC, done by Postgres
/// so that the text is the stored instant whatever the session's time zone.
pub fn rfc3339(expr: &str, precision: Precision) -> String {
    let fraction = match precision {
        Precision::Seconds => "",
        Precision::Micros => ".US",
    };
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS{fraction}\"Z\"')")
}

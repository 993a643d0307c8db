//! Points in time as walhook writes and reads them: Postgres' clock (µs since 2000-01-01),
//! RFC 3339 in UTC, HTTP dates (`Retry-After`), and the one copy of proleptic Gregorian
//! day arithmetic they rest on.
//!
//! The day arithmetic is written by hand on purpose: Postgres dates reach 5874897 AD and
//! timestamps 294276 AD, both back into BC, and `source::value` must print what Postgres
//! prints for all of them; the kept calendar libraries (jiff, chrono, time) stop at year
//! 9999 (jiff at ±9999). RFC 3339 parsing, which only ever sees 4-digit years, is jiff's.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to Postgres' epoch, 2000-01-01 00:00:00 UTC.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// Microseconds from the Unix epoch to Postgres' epoch.
pub const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECS * 1_000_000;

/// Microseconds since the Unix epoch of `time` (negative before 1970), saturating at the
/// ends of `i64`.
pub fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// `time` on Postgres' clock: microseconds since 2000-01-01 UTC (a `timestamptz` on the
/// wire, the replication protocol's clock, a commit time).
pub fn pg_micros(time: SystemTime) -> i64 {
    unix_micros(time).saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// Now on Postgres' clock.
pub fn pg_now_micros() -> i64 {
    pg_micros(SystemTime::now())
}

/// Postgres' clock (µs since 2000-01-01 UTC) as RFC 3339 in UTC with six fraction digits:
/// `2026-11-22T10:15:30.123456Z`. Total over `i64`: beyond year 9999 the year simply has
/// more digits.
pub fn pg_micros_to_rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let frac = micros.rem_euclid(1_000_000);
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// Whole seconds since the Unix epoch (0 before it), as signatures and HTTP dates count.
pub fn unix_secs(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `time` as RFC 3339 in UTC, to the microsecond.
pub fn rfc3339(time: SystemTime) -> String {
    pg_micros_to_rfc3339(pg_micros(time))
}

/// An RFC 3339 timestamp (`2026-01-31T08:00:00Z`, `2026-01-31T09:00:00.5+01:00`) as a
/// point in time; `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let at: jiff::Timestamp = text.trim().parse().ok()?;
    SystemTime::try_from(at).ok()
}

/// An HTTP-date (RFC 9110 §5.6.7, formerly RFC 7231 §7.1.1.1) as unix seconds: the
/// IMF-fixdate every sender must use, or one of the obsolete RFC 850 and asctime forms
/// recipients must still accept. `now` (unix seconds) resolves the two-digit years of
/// RFC 850.
///
/// Not `httpdate`: it reads a two-digit year as 1970–2069 where the RFC asks for "not more
/// than 50 years ahead", refuses a date before 1970 (which here means "retry now") and one
/// whose weekday does not match its date (the weekday is redundant, and the RFC's grammar
/// does not tie them), and refuses the leap second the format can express.
pub fn parse_http_date(text: &str, now: i64) -> Option<i64> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    // RFC 850 years have two digits; they are resolved once the whole date is known.
    let (year, two_digit_year, month, day, time) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [weekday, day, month, year, time, "GMT"]
            if weekday
                .strip_suffix(',')
                .is_some_and(|name| SHORT_WEEKDAYS.contains(&name)) =>
        {
            let (month, day) = (month_number(month)?, digits(day, 2)?);
            (digits(year, 4)?, false, month, day, *time)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [weekday, date, time, "GMT"]
            if weekday
                .strip_suffix(',')
                .is_some_and(|name| LONG_WEEKDAYS.contains(&name)) =>
        {
            let mut fields = date.split('-');
            let (Some(day), Some(month), Some(year), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return None;
            };
            let (month, day) = (month_number(month)?, digits(day, 2)?);
            (digits(year, 2)?, true, month, day, *time)
        }
        // Sun Nov  6 08:49:37 1994
        [weekday, month, day, time, year] if SHORT_WEEKDAYS.contains(weekday) => {
            let day = digits(day, 1).or_else(|| digits(day, 2))?;
            (digits(year, 4)?, false, month_number(month)?, day, *time)
        }
        _ => return None,
    };
    let mut clock = time.split(':');
    let (Some(hour), Some(minute), Some(second), None) =
        (clock.next(), clock.next(), clock.next(), clock.next())
    else {
        return None;
    };
    let (hour, minute, second) = (digits(hour, 2)?, digits(minute, 2)?, digits(second, 2)?);
    // 60 allows a leap second, which the format can express.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds_of_day = hour * 3_600 + minute * 60 + second;
    let year = if two_digit_year {
        rfc850_year(year, month, day, seconds_of_day, now)
    } else {
        year
    };
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    Some(unix_seconds(year, month, day, seconds_of_day))
}

/// A two-digit year that would put the date more than 50 years in the future means the
/// most recent past year with those last two digits; so the year is the one with those
/// digits in the century that ends 50 years from `now`.
fn rfc850_year(two_digits: i64, month: i64, day: i64, seconds_of_day: i64, now: i64) -> i64 {
    let (now_year, now_month, now_day) = civil_from_days(now.div_euclid(86_400));
    let limit = unix_seconds(now_year + 50, now_month, now_day, now.rem_euclid(86_400));
    let at = |year| unix_seconds(year, month, day, seconds_of_day);
    let mut year = now_year - now_year.rem_euclid(100) + two_digits;
    if at(year) > limit {
        year -= 100;
    } else if at(year + 100) <= limit {
        year += 100;
    }
    year
}

const SHORT_WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Exactly `len` ASCII digits as a number.
fn digits(text: &str, len: usize) -> Option<i64> {
    if text.len() != len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// 1 for `Jan` … 12 for `Dec` (case-sensitive, as the grammar is).
fn month_number(name: &str) -> Option<i64> {
    MONTHS
        .iter()
        .position(|month| *month == name)
        .and_then(|index| i64::try_from(index + 1).ok())
}

/// Unix seconds of a UTC date and time of day.
pub fn unix_seconds(year: i64, month: i64, day: i64, seconds_of_day: i64) -> i64 {
    days_from_civil(year, month, day) * 86_400 + seconds_of_day
}

/// Whether `year` (proleptic Gregorian, astronomical: 0 is 1 BC) has a 29 February.
pub fn is_leap_year(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

/// Days in `month` (1–12) of `year`.
pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`,
/// exact for any year an `i64` day count holds).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12; // March is 0, so the leap day ends the year
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian `(year, month, day)` of a day count since 1970-01-01 (Hinnant's
/// `civil_from_days`, the inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March is 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `Sun, 06 Nov 1994 08:49:37 GMT`, the RFC's example date.
    const RFC_EXAMPLE: i64 = 784_111_777;

    #[test]
    fn calendar_conversions_round_trip() {
        for days in [-719_468, -1, 0, 59, 10_956, 19_782, 20_513, 2_932_896] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(
                days_from_civil(year, month, day),
                days,
                "{year}-{month}-{day}"
            );
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn civil_day_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        for days in [-719_162, -1, 0, 11_016, 11_017, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn civil_days_reach_the_ends_of_postgres_dates() {
        // date's range: 4714-11-24 BC (astronomical -4713) to 5874897-12-31.
        for (y, m, d) in [(-4713, 11, 24), (5_874_897, 12, 31), (294_276, 12, 31)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert!(is_leap_year(0) && is_leap_year(-4) && !is_leap_year(-100));
    }

    #[test]
    fn commit_times_print_as_utc_rfc3339_with_microseconds() {
        assert_eq!(pg_micros_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        // 2026-11-22T10:15:30.123456Z
        let unix = 1_795_342_530_i64;
        let micros = (unix - 946_684_800) * 1_000_000 + 123_456;
        assert_eq!(pg_micros_to_rfc3339(micros), "2026-11-22T10:15:30.123456Z");
        assert_eq!(pg_micros_to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            pg_micros_to_rfc3339((951_782_400_i64 - 946_684_800) * 1_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn system_times_print_and_parse_as_rfc3339() {
        let time = UNIX_EPOCH + Duration::from_micros(1_795_342_530_123_456);
        assert_eq!(rfc3339(time), "2026-11-22T10:15:30.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(parse_rfc3339("2026-11-22T10:15:30.123456Z"), Some(time));
        assert_eq!(
            parse_rfc3339("2026-11-22T11:15:30.123456+01:00"),
            Some(time)
        );
        for garbage in ["", "2026-11-22", "2026-02-30T00:00:00Z", "yesterday"] {
            assert_eq!(parse_rfc3339(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn postgres_clock_counts_from_2000() {
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(pg_micros(y2k), 0);
        assert_eq!(pg_micros(UNIX_EPOCH), -PG_EPOCH_UNIX_MICROS);
        assert_eq!(pg_micros(y2k + Duration::from_micros(7)), 7);
    }

    #[test]
    fn clock_is_after_2020() {
        // 2020-01-01 is 631152000 s after 2000-01-01.
        assert!(pg_now_micros() > 631_152_000_000_000);
    }

    #[test]
    fn the_fixed_now_is_the_date_it_claims() {
        assert_eq!(
            parse_http_date("Sun, 01 Mar 2026 12:00:00 GMT", 0),
            Some(1_772_366_400)
        );
    }

    #[test]
    fn http_dates_parse_in_all_three_rfc_7231_formats() {
        let now = 1_772_366_400;
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun Nov 06 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text, now), Some(RFC_EXAMPLE), "{text}");
        }
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT", now),
            Some(1_709_251_199)
        );
        assert_eq!(parse_http_date("Mon, 29 Feb 2100 00:00:00 GMT", now), None);
    }

    #[test]
    fn a_two_digit_year_more_than_fifty_years_ahead_is_in_the_past() {
        let now = 1_772_366_400; // 2026
        let year_of = |text: &str| {
            let seconds = parse_http_date(text, now).unwrap();
            civil_from_days(seconds.div_euclid(86_400)).0
        };
        assert_eq!(year_of("Friday, 01-Mar-30 00:00:00 GMT"), 2030);
        // Exactly 50 years ahead is not "more than" 50 years; a second later is.
        assert_eq!(year_of("Sunday, 01-Mar-76 12:00:00 GMT"), 2076);
        assert_eq!(year_of("Sunday, 01-Mar-76 12:00:01 GMT"), 1976);
        assert_eq!(year_of("Tuesday, 01-Mar-77 00:00:00 GMT"), 1977);
        assert_eq!(year_of("Wednesday, 01-Mar-00 00:00:00 GMT"), 2000);
    }
}

//! Humane durations (`"250ms"`, `"1h30m"`) and sizes (`"512MB"`, `"64KiB"`).
//!
//! Hand-written because the grammar is tiny and the error messages matter more than
//! generality: each error says what was wrong and how to write it instead.

use std::fmt::Write as _;
use std::time::Duration;

/// Units a duration may use, longest spelling first so `ms` wins over `m`.
const DURATION_UNITS: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Units a size may use. KB/MB/… are decimal (SI) and KiB/MiB/… binary, as the names say.
const SIZE_UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Parses a duration such as `"15s"`, `"250ms"`, `"1.5h"` or `"1h30m"`.
///
/// Units: `ms`, `s`, `m`, `h`, `d`; spaces may separate numbers and units. Several
/// number–unit groups add up. A number without a unit is refused because `"15"` could mean
/// seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. \"15s\"".into());
    }
    let mut rest = trimmed;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let (number, after_number) = split_number(rest)
            .ok_or_else(|| format!("expected a number before {:?}", first_word(rest)))?;
        let after_number = after_number.trim_start();
        let unit_len = after_number
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after_number.len());
        let unit = &after_number[..unit_len];
        if unit.is_empty() {
            return Err(format!(
                "{number} has no unit; write e.g. \"{number}s\" (units: ms, s, m, h, d)"
            ));
        }
        let scale = DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| format!("unknown unit {unit:?}; use ms, s, m, h or d"))?;
        total_nanos = total_nanos
            .checked_add(scaled(number, scale).ok_or("too large")?)
            .ok_or("too large")?;
        rest = after_number[unit_len..].trim_start();
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| "too large")?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Parses a size such as `"512MB"`, `"20 GB"`, `"64KiB"` or `"1048576"` (plain bytes).
///
/// Units are case-insensitive; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty size; write e.g. \"512MB\"".into());
    }
    let (number, after_number) = split_number(trimmed)
        .ok_or_else(|| format!("expected a number before {:?}", first_word(trimmed)))?;
    let unit = after_number.trim_start().to_ascii_lowercase();
    let scale = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| {
                format!("unknown unit {unit:?}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
            })?
    };
    if unit.is_empty() && number.fraction.is_some() {
        return Err("a byte count must be a whole number".into());
    }
    let bytes = scaled(number, scale).ok_or("too large")?;
    u64::try_from(bytes).map_err(|_| "too large".into())
}

/// A decimal number as written: integer digits and optional fraction digits.
#[derive(Clone, Copy)]
struct Number<'a> {
    whole: &'a str,
    fraction: Option<&'a str>,
}

impl std::fmt::Display for Number<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fraction {
            Some(fraction) => write!(f, "{}.{}", self.whole, fraction),
            None => f.write_str(self.whole),
        }
    }
}

/// Splits a leading `123` or `1.5` off `text`; `None` if it does not start with a digit.
fn split_number(text: &str) -> Option<(Number<'_>, &str)> {
    let whole_len = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if whole_len == 0 {
        return None;
    }
    let whole = &text[..whole_len];
    let rest = &text[whole_len..];
    if let Some(after_dot) = rest.strip_prefix('.') {
        let fraction_len = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        if fraction_len == 0 {
            return None;
        }
        let number = Number {
            whole,
            fraction: Some(&after_dot[..fraction_len]),
        };
        return Some((number, &after_dot[fraction_len..]));
    }
    Some((
        Number {
            whole,
            fraction: None,
        },
        rest,
    ))
}

/// `number × scale` in exact integer arithmetic (fractions are truncated at the last unit).
fn scaled(number: Number<'_>, scale: u128) -> Option<u128> {
    let whole: u128 = number.whole.parse().ok()?;
    let mut total = whole.checked_mul(scale)?;
    if let Some(fraction) = number.fraction {
        // More than 30 fraction digits cannot change the result but would overflow 10^n.
        let digits = &fraction[..fraction.len().min(30)];
        let numerator: u128 = digits.parse().ok()?;
        let denominator = 10u128.pow(digits.len() as u32);
        total = total.checked_add(numerator.checked_mul(scale)? / denominator)?;
    }
    Some(total)
}

/// The first whitespace-delimited word, for error messages about unparseable input.
fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or(text)
}

/// A byte count for people: `512 B`, `1.5 MB` (powers of 1024, like Postgres' own
/// `pg_size_pretty`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration the way the config and `--since` take it: `2h`, `1h30m`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= scale {
            let _ = write!(out, "{}{unit}", millis / scale);
            millis %= scale;
        }
    }
    if millis > 0 {
        let _ = write!(out, "{millis}ms");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_combine_and_take_fractions() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration::from_secs(5_405)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 15s "), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15 s"), Ok(Duration::from_secs(15)));
    }

    #[test]
    fn durations_reject_what_is_ambiguous_or_wrong() {
        assert_eq!(
            parse_duration("15"),
            Err("15 has no unit; write e.g. \"15s\" (units: ms, s, m, h, d)".into())
        );
        assert_eq!(
            parse_duration("15 parsecs"),
            Err("unknown unit \"parsecs\"; use ms, s, m, h or d".into())
        );
        assert_eq!(
            parse_duration("S"),
            Err("expected a number before \"S\"".into())
        );
        assert_eq!(
            parse_duration("-5s"),
            Err("expected a number before \"-5s\"".into())
        );
        assert_eq!(
            parse_duration("1.s"),
            Err("expected a number before \"1.s\"".into())
        );
        assert_eq!(
            parse_duration(""),
            Err("empty duration; write e.g. \"15s\"".into())
        );
        assert_eq!(
            parse_duration("1h30"),
            Err("30 has no unit; write e.g. \"30s\" (units: ms, s, m, h, d)".into())
        );
        assert_eq!(
            parse_duration("99999999999999999999999d"),
            Err("too large".into())
        );
    }

    #[test]
    fn sizes_in_decimal_and_binary_units() {
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("20GB"), Ok(20_000_000_000));
        assert_eq!(parse_size("20 gb"), Ok(20_000_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("4096"), Ok(4_096));
    }

    #[test]
    fn sizes_reject_bad_input() {
        assert_eq!(
            parse_size("12 parsecs"),
            Err("unknown unit \"parsecs\"; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB".into())
        );
        assert_eq!(
            parse_size("GB"),
            Err("expected a number before \"GB\"".into())
        );
        assert_eq!(
            parse_size("1.5"),
            Err("a byte count must be a whole number".into())
        );
        assert_eq!(
            parse_size(""),
            Err("empty size; write e.g. \"512MB\"".into())
        );
        assert_eq!(parse_size("99999999999TiB"), Err("too large".into()));
    }
}

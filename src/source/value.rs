//! Column text → JSON, per the type mapping of SPEC §3.
//!
//! pgoutput sends every column as the type's text output. The replication session pins the
//! GUCs that shape that text (`DateStyle=ISO, MDY`, `TimeZone=UTC`, `bytea_output=hex`,
//! `extra_float_digits=1`, `IntervalStyle=postgres`), so the forms parsed here are fixed.
//! Nothing here fails: text that does not parse as its kind is passed on as a string, because
//! an event with one odd value beats no event.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::{Number, Value};

use super::types::TypeKind;
use crate::time;

/// Converts one column's text output into JSON per SPEC §3.
pub fn text_to_json(kind: &TypeKind, text: &[u8]) -> Value {
    match kind {
        TypeKind::Bool => match text {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => string(text),
        },
        TypeKind::Integer => integer(text).map_or_else(|| string(text), Value::Number),
        TypeKind::Float => float(text),
        TypeKind::Numeric | TypeKind::Text => string(text),
        TypeKind::Json => serde_json::from_slice(text).unwrap_or_else(|_| string(text)),
        TypeKind::TimestampTz => rfc3339_utc(text).map_or_else(|| string(text), Value::String),
        TypeKind::Bytea => bytea(text).map_or_else(|| string(text), Value::String),
        TypeKind::Array { element, delimiter } => {
            parse_array(element, *delimiter, text).unwrap_or_else(|| string(text))
        }
    }
}

/// The text as a JSON string, replacing invalid UTF-8 rather than failing.
fn string(text: &[u8]) -> Value {
    Value::String(match std::str::from_utf8(text) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(text).into_owned(),
    })
}

/// `-?[0-9]+` that fits i64 or u64, parsed straight from the bytes.
fn integer(text: &[u8]) -> Option<Number> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    if !negative {
        Some(Number::from(magnitude))
    } else if magnitude <= i64::MIN.unsigned_abs() {
        // 2^63 casts to i64::MIN, whose wrapping negation is itself: exactly what is wanted.
        Some(Number::from((magnitude as i64).wrapping_neg()))
    } else {
        None
    }
}

/// A finite float as a JSON number; `NaN`, `Infinity`, `-Infinity` (not JSON) as strings.
fn float(text: &[u8]) -> Value {
    let Ok(s) = std::str::from_utf8(text) else {
        return string(text);
    };
    match s.parse::<f64>() {
        Ok(f) => Number::from_f64(f).map_or_else(|| Value::String(s.to_owned()), Value::Number),
        Err(_) => Value::String(s.to_owned()),
    }
}

/// `bytea` text (hex `\x..`, or the legacy escape format) as standard padded base64.
fn bytea(text: &[u8]) -> Option<String> {
    let bytes = match text.strip_prefix(b"\\x") {
        Some(hex) => decode_hex(hex)?,
        // Escape format prints a literal backslash as `\\`, so `\x` can only mean hex.
        None => decode_bytea_escape(text)?,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// `bytea_output=escape`: `\\` is a backslash, `\ooo` an octal byte, anything else literal.
fn decode_bytea_escape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            out.push(b);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', tail @ ..] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `timestamptz` text (`2026-11-22 10:15:30.123456+00`) as RFC 3339 UTC
/// (`2026-11-22T10:15:30.123456Z`); `None` for anything RFC 3339 cannot say the same way
/// (`infinity`, BC years, years past 9999) or that is not of that shape.
fn rfc3339_utc(text: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(text).ok()?;
    let b = s.as_bytes();
    if b.len() < 22
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b' ' && b[10] != b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if year == 0
        || !(1..=12).contains(&month)
        || day == 0
        || i64::from(day) > time::days_in_month(year.into(), month.into())
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }

    // Optional fraction, kept as printed: Postgres already trims its trailing zeros.
    let mut pos = 19;
    if b[pos] == b'.' {
        let len = b[pos + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if len == 0 {
            return None;
        }
        pos += 1 + len;
    }
    let fraction = &s[19..pos];

    // Offset: ±HH, ±HH:MM or ±HH:MM:SS (historical zones have seconds), then the end, so a
    // trailing ` BC` keeps the text as is.
    let sign: i64 = match b.get(pos)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut offset = 0;
    let mut unit = 3600;
    let mut rest = &b[pos + 1..];
    loop {
        let [h, l, tail @ ..] = rest else {
            return None;
        };
        let part = digits(&[*h, *l])?;
        let max = if unit == 3600 { 23 } else { 59 };
        if part > max {
            return None;
        }
        offset += i64::from(part) * unit;
        match tail {
            [] => break,
            [b':', tail @ ..] if unit > 1 => {
                rest = tail;
                unit /= 60;
            }
            _ => return None,
        }
    }

    let mut out = String::with_capacity(21 + fraction.len());
    if offset == 0 {
        // The session runs in UTC, so this is the path every real value takes.
        out.push_str(&s[..10]);
        out.push('T');
        out.push_str(&s[11..19]);
    } else {
        let local = time::days_from_civil(year.into(), month.into(), day.into()) * 86_400
            + i64::from(hour) * 3600
            + i64::from(minute) * 60
            + i64::from(second);
        let utc = local - sign * offset;
        let (days, secs) = (utc.div_euclid(86_400), utc.rem_euclid(86_400));
        let (year, month, day) = time::civil_from_days(days);
        if !(1..=9999).contains(&year) {
            return None;
        }
        use std::fmt::Write as _;
        let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
        write!(
            out,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}"
        )
        .ok()?;
    }
    out.push_str(fraction);
    out.push('Z');
    Some(out)
}

/// ASCII decimal digits as a number; `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Postgres allows at most 6 dimensions (MAXDIM); deeper nesting is not array output.
const MAX_DIMS: usize = 6;

/// Array text (`{1,2,NULL}`, `{{"a b",c},{NULL,"NULL"}}`, `[0:1]={7,8}`) as nested JSON
/// arrays; `None` if it is not well-formed array output.
fn parse_array(element: &TypeKind, delimiter: u8, text: &[u8]) -> Option<Value> {
    let mut p = ArrayParser {
        text,
        pos: 0,
        delimiter,
        element,
    };
    p.skip_whitespace();
    if p.peek() == Some(b'[') {
        p.skip_bounds()?;
    }
    p.skip_whitespace();
    let value = p.array(1)?;
    p.skip_whitespace();
    (p.pos == text.len()).then_some(value)
}

/// A cursor over array text; elements become JSON via `element`'s own conversion.
struct ArrayParser<'a> {
    text: &'a [u8],
    pos: usize,
    delimiter: u8,
    element: &'a TypeKind,
}

impl<'a> ArrayParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.bump()? == want).then_some(())
    }

    /// Whitespace array_in ignores between tokens (array_out never writes it); never the
    /// delimiter, in case a type uses a blank for that.
    fn is_space(&self, b: u8) -> bool {
        b != self.delimiter && matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| self.is_space(b)) {
            self.pos += 1;
        }
    }

    /// Skips the `[lb:ub]...=` decoration printed when a lower bound is not 1; JSON arrays
    /// start at 0 regardless, so the bounds carry nothing walhook keeps.
    fn skip_bounds(&mut self) -> Option<()> {
        while self.peek() == Some(b'[') {
            self.pos += 1;
            self.skip_bound()?;
            if self.peek() == Some(b':') {
                self.pos += 1;
                self.skip_bound()?;
            }
            self.expect(b']')?;
        }
        self.expect(b'=')
    }

    fn skip_bound(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        (self.pos > start).then_some(())
    }

    /// One `{...}` level: all sub-arrays or all elements, as Postgres arrays are rectangular.
    fn array(&mut self, dims: usize) -> Option<Value> {
        if dims > MAX_DIMS {
            return None;
        }
        self.expect(b'{')?;
        self.skip_whitespace();
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(Value::Array(items));
        }
        let nested = self.peek() == Some(b'{');
        loop {
            self.skip_whitespace();
            let item = if nested {
                self.array(dims + 1)?
            } else {
                self.element()?
            };
            items.push(item);
            self.skip_whitespace();
            match self.bump()? {
                b'}' => return Some(Value::Array(items)),
                b if b == self.delimiter => {}
                _ => return None,
            }
        }
    }

    /// One element: quoted (with backslash escapes), or bare, where `NULL` means null.
    fn element(&mut self) -> Option<Value> {
        let text = match self.peek()? {
            b'"' => self.quoted()?,
            b'{' => return None,
            _ => {
                let text = self.bare()?;
                // Only an unescaped bare NULL is null: `"NULL"` and `\NULL` are the string.
                if matches!(&text, Cow::Borrowed(t) if t.eq_ignore_ascii_case(b"NULL")) {
                    return Some(Value::Null);
                }
                text
            }
        };
        Some(text_to_json(self.element, &text))
    }

    /// `"..."` with `\x` meaning `x`; borrows the input unless there is an escape to undo.
    fn quoted(&mut self) -> Option<Cow<'a, [u8]>> {
        self.expect(b'"')?;
        let text: &'a [u8] = self.text;
        let rest = &text[self.pos..];
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] == b'"' {
            self.pos += end + 1;
            return Some(Cow::Borrowed(&rest[..end]));
        }
        let mut owned = rest[..end].to_vec();
        self.pos += end;
        loop {
            match self.bump()? {
                b'"' => return Some(Cow::Owned(owned)),
                b'\\' => owned.push(self.bump()?),
                b => owned.push(b),
            }
        }
    }

    /// An unquoted element up to the delimiter or `}`, trailing whitespace trimmed. A bare
    /// `NULL` spelled with an escape (`\NULL`) is the string, so escapes yield `Owned`.
    fn bare(&mut self) -> Option<Cow<'a, [u8]>> {
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        // Length of the element once trailing unescaped whitespace is dropped.
        let mut keep = 0;
        loop {
            let b = self.peek()?;
            if b == self.delimiter || b == b'}' {
                break;
            }
            if b == b'{' || b == b'"' {
                return None;
            }
            self.pos += 1;
            if b == b'\\' {
                let escaped = self.bump()?;
                let buf = owned.get_or_insert_with(|| self.text[start..self.pos - 2].to_vec());
                buf.push(escaped);
                keep = buf.len();
            } else {
                let len = match &mut owned {
                    Some(buf) => {
                        buf.push(b);
                        buf.len()
                    }
                    None => self.pos - start,
                };
                if !self.is_space(b) {
                    keep = len;
                }
            }
        }
        if self.pos == start {
            return None;
        }
        Some(match owned {
            Some(mut buf) => {
                buf.truncate(keep);
                Cow::Owned(buf)
            }
            None => {
                let text: &'a [u8] = self.text;
                Cow::Borrowed(&text[start..start + keep])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn conv(kind: &TypeKind, text: &str) -> Value {
        text_to_json(kind, text.as_bytes())
    }

    fn array_of(element: TypeKind) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(conv(&TypeKind::Bool, "t"), json!(true));
        assert_eq!(conv(&TypeKind::Bool, "f"), json!(false));
        assert_eq!(conv(&TypeKind::Bool, "maybe"), json!("maybe"));
    }

    #[test]
    fn integers() {
        let k = TypeKind::Integer;
        assert_eq!(conv(&k, "0"), json!(0));
        assert_eq!(conv(&k, "-32768"), json!(-32768));
        assert_eq!(conv(&k, "2147483647"), json!(2_147_483_647));
        assert_eq!(conv(&k, "9223372036854775807"), json!(i64::MAX));
        assert_eq!(conv(&k, "-9223372036854775808"), json!(i64::MIN));
        // xid8 / oid range beyond i64 still fits u64
        assert_eq!(conv(&k, "18446744073709551615"), json!(u64::MAX));
        assert_eq!(
            conv(&k, "18446744073709551616"),
            json!("18446744073709551616")
        );
        assert_eq!(
            conv(&k, "-9223372036854775809"),
            json!("-9223372036854775809")
        );
        assert_eq!(conv(&k, ""), json!(""));
        assert_eq!(conv(&k, "-"), json!("-"));
        assert_eq!(conv(&k, "12a"), json!("12a"));
        assert_eq!(conv(&k, "1.5"), json!("1.5"));
    }

    #[test]
    fn numerics_stay_strings() {
        let k = TypeKind::Numeric;
        assert_eq!(
            conv(&k, "123456789012345678901234567890.123"),
            json!("123456789012345678901234567890.123")
        );
        assert_eq!(conv(&k, "120.00"), json!("120.00"));
        assert_eq!(conv(&k, "NaN"), json!("NaN"));
        assert_eq!(conv(&k, "Infinity"), json!("Infinity"));
        assert_eq!(conv(&k, "-Infinity"), json!("-Infinity"));
    }

    #[test]
    fn floats() {
        let k = TypeKind::Float;
        assert_eq!(conv(&k, "1.5"), json!(1.5));
        assert_eq!(conv(&k, "-0.25"), json!(-0.25));
        assert_eq!(conv(&k, "1.5e+300"), json!(1.5e300));
        assert_eq!(conv(&k, "1e-320"), json!(1e-320));
        assert_eq!(conv(&k, "3.4028235e+38"), json!(3.402_823_5e38));
        assert_eq!(conv(&k, "0.1").to_string(), "0.1");
        assert_eq!(conv(&k, "42"), json!(42.0));
        assert_eq!(conv(&k, "NaN"), json!("NaN"));
        assert_eq!(conv(&k, "Infinity"), json!("Infinity"));
        assert_eq!(conv(&k, "-Infinity"), json!("-Infinity"));
        assert_eq!(conv(&k, "abc"), json!("abc"));
    }

    #[test]
    fn text_types_and_text_rendered_types() {
        let k = TypeKind::Text;
        assert_eq!(conv(&k, "INV-42"), json!("INV-42"));
        assert_eq!(conv(&k, ""), json!(""));
        assert_eq!(conv(&k, "héllo ✓"), json!("héllo ✓"));
        assert_eq!(
            conv(&k, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(conv(&k, "1 day 02:03:04"), json!("1 day 02:03:04"));
        assert_eq!(conv(&k, "[1,10)"), json!("[1,10)"));
        assert_eq!(conv(&k, "$1,234.50"), json!("$1,234.50"));
        assert_eq!(conv(&k, "(1,\"a b\")"), json!("(1,\"a b\")"));
        // date/time types are rendered as Postgres prints them
        assert_eq!(
            conv(&k, "2026-11-22 10:15:30.5"),
            json!("2026-11-22 10:15:30.5")
        );
        assert_eq!(conv(&k, "10:15:30+02"), json!("10:15:30+02"));
        assert_eq!(
            text_to_json(&k, b"bad \xff byte"),
            json!("bad \u{fffd} byte")
        );
    }

    #[test]
    fn json_is_embedded_in_order() {
        let k = TypeKind::Json;
        let v = conv(
            &k,
            r#"{"z": 1, "a": {"y": [1, 2.5, null], "b": "x"}, "m": true}"#,
        );
        assert_eq!(
            v,
            json!({"z": 1, "a": {"y": [1, 2.5, null], "b": "x"}, "m": true})
        );
        assert_eq!(
            v.to_string(),
            r#"{"z":1,"a":{"y":[1,2.5,null],"b":"x"},"m":true}"#
        );
        assert_eq!(conv(&k, "42"), json!(42));
        assert_eq!(conv(&k, "\"s\""), json!("s"));
        assert_eq!(conv(&k, "{not json"), json!("{not json"));
    }

    #[test]
    fn timestamptz_to_rfc3339_utc() {
        let k = TypeKind::TimestampTz;
        let cases = [
            (
                "2026-11-22 10:15:30.123456+00",
                "2026-11-22T10:15:30.123456Z",
            ),
            ("2026-11-22 10:15:30+00", "2026-11-22T10:15:30Z"),
            ("2026-11-22 10:15:30.5+00", "2026-11-22T10:15:30.5Z"),
            ("2026-11-22 10:15:30+00:00", "2026-11-22T10:15:30Z"),
            ("2026-11-22 10:15:30-00", "2026-11-22T10:15:30Z"),
            ("2026-11-22 10:15:30.25+02", "2026-11-22T08:15:30.25Z"),
            ("2026-11-22 10:15:30+05:30", "2026-11-22T04:45:30Z"),
            ("2026-12-31 23:30:00-01", "2027-01-01T00:30:00Z"),
            ("2024-03-01 00:10:00+01", "2024-02-29T23:10:00Z"),
            ("1883-11-18 12:00:00-07:52:58", "1883-11-18T19:52:58Z"),
            ("0001-01-01 00:00:00+00", "0001-01-01T00:00:00Z"),
        ];
        for (pg, want) in cases {
            assert_eq!(conv(&k, pg), json!(want), "{pg}");
        }
        let kept = [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "0001-01-01 00:30:00+01",  // UTC would be 1 BC
            "10000-01-01 00:00:00+00", // RFC 3339 has 4-digit years
            "2026-02-30 10:15:30+00",
            "2026-11-22 10:15:30.+00",
            "2026-11-22 10:15:30",
            "2026-11-22 10:15:30+0",
            "2026-11-22 10:15:30+00:",
        ];
        for pg in kept {
            assert_eq!(conv(&k, pg), json!(pg), "{pg}");
        }
    }

    #[test]
    fn bytea_to_base64() {
        let k = TypeKind::Bytea;
        assert_eq!(conv(&k, r"\x48656c6c6f"), json!("SGVsbG8="));
        assert_eq!(conv(&k, r"\x"), json!(""));
        assert_eq!(conv(&k, r"\xDEADBEEF"), json!("3q2+7w=="));
        assert_eq!(conv(&k, r"\x4"), json!(r"\x4"));
        assert_eq!(conv(&k, r"\xzz"), json!(r"\xzz"));
        // bytea_output=escape, should a session ever use it
        assert_eq!(conv(&k, r"Hi\000\\\377"), json!("SGkAXP8="));
        assert_eq!(conv(&k, r"bad\9"), json!(r"bad\9"));
    }

    #[test]
    fn arrays_of_scalars() {
        assert_eq!(
            conv(&array_of(TypeKind::Integer), "{1,2,NULL}"),
            json!([1, 2, null])
        );
        assert_eq!(
            conv(&array_of(TypeKind::Bool), "{t,f,NULL}"),
            json!([true, false, null])
        );
        assert_eq!(
            conv(&array_of(TypeKind::Float), "{1.5,NaN,-Infinity}"),
            json!([1.5, "NaN", "-Infinity"])
        );
        assert_eq!(
            conv(&array_of(TypeKind::Numeric), "{1.10,NaN}"),
            json!(["1.10", "NaN"])
        );
        assert_eq!(conv(&array_of(TypeKind::Integer), "{}"), json!([]));
        assert_eq!(conv(&array_of(TypeKind::Text), "{\"\"}"), json!([""]));
    }

    #[test]
    fn arrays_of_text_quoting() {
        let k = array_of(TypeKind::Text);
        assert_eq!(
            conv(&k, r#"{{"a b","c\"d"},{NULL,"NULL"}}"#),
            json!([["a b", "c\"d"], [null, "NULL"]])
        );
        assert_eq!(
            conv(&k, r#"{"back\\slash","{braces}","com,ma",null}"#),
            json!(["back\\slash", "{braces}", "com,ma", null])
        );
        assert_eq!(conv(&k, r"{\NULL,a\,b}"), json!(["NULL", "a,b"]));
        assert_eq!(conv(&k, "{ a , b }"), json!(["a", "b"]));
        // composite elements are quoted text
        assert_eq!(
            conv(&k, r#"{"(1,2)","(3,4)","(5,\"x y\")"}"#),
            json!(["(1,2)", "(3,4)", "(5,\"x y\")"])
        );
    }

    #[test]
    fn arrays_with_bounds_and_dimensions() {
        let k = array_of(TypeKind::Integer);
        assert_eq!(conv(&k, "[0:1]={7,8}"), json!([7, 8]));
        assert_eq!(conv(&k, "[-2:-1]={7,8}"), json!([7, 8]));
        assert_eq!(
            conv(&k, "[0:1][1:2]={{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(
            conv(&k, "{{{1},{2}},{{3},{NULL}}}"),
            json!([[[1], [2]], [[3], [null]]])
        );
        assert_eq!(conv(&k, "{{{{{{1}}}}}}"), json!([[[[[[1]]]]]]));
        assert_eq!(conv(&k, "{{{{{{{1}}}}}}}"), json!("{{{{{{{1}}}}}}}"));
    }

    #[test]
    fn arrays_of_other_kinds() {
        let boxes = TypeKind::Array {
            element: Box::new(TypeKind::Text),
            delimiter: b';',
        };
        assert_eq!(
            conv(&boxes, "{(1,1),(0,0);(3,3),(2,2)}"),
            json!(["(1,1),(0,0)", "(3,3),(2,2)"])
        );
        assert_eq!(
            conv(
                &array_of(TypeKind::TimestampTz),
                r#"{"2026-11-22 10:15:30.5+00",infinity,NULL}"#
            ),
            json!(["2026-11-22T10:15:30.5Z", "infinity", null])
        );
        assert_eq!(
            conv(&array_of(TypeKind::Bytea), r#"{"\\x48656c6c6f",NULL}"#),
            json!(["SGVsbG8=", null])
        );
        assert_eq!(
            conv(
                &array_of(TypeKind::Json),
                r#"{"{\"b\": 1, \"a\": [2]}",NULL,"\"s\""}"#
            ),
            json!([{"b": 1, "a": [2]}, null, "s"])
        );
        // an array whose elements are themselves arrays (arrays of domains over arrays)
        assert_eq!(
            conv(&array_of(array_of(TypeKind::Integer)), r#"{"{1,2}","{3}"}"#),
            json!([[1, 2], [3]])
        );
    }

    #[test]
    fn malformed_arrays_are_text() {
        let k = array_of(TypeKind::Integer);
        for bad in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{,}",
            "{1}x",
            "{1,{2}}",
            "{{1},2}",
            "{\"a}",
            "[0:1]{1}",
            "[a:1]={1}",
            "1,2",
            "{1\"2}",
            "{1,2}}",
        ] {
            assert_eq!(conv(&k, bad), json!(bad), "{bad:?}");
        }
        assert_eq!(text_to_json(&k, b"{1,\xff}"), json!([1, "\u{fffd}"]));
    }

    /// Quotes an element the way array_out does.
    fn pg_quote(s: &str) -> String {
        let needs = s.is_empty()
            || s.eq_ignore_ascii_case("NULL")
            || s.bytes().any(|b| b"{},\"\\ \t\n\r\x0b\x0c".contains(&b));
        if !needs {
            return s.to_owned();
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    fn all_kinds() -> Vec<TypeKind> {
        let scalars = [
            TypeKind::Bool,
            TypeKind::Integer,
            TypeKind::Float,
            TypeKind::Numeric,
            TypeKind::Json,
            TypeKind::TimestampTz,
            TypeKind::Bytea,
            TypeKind::Text,
        ];
        let mut kinds = scalars.to_vec();
        for s in &scalars {
            kinds.push(array_of(s.clone()));
            kinds.push(TypeKind::Array {
                element: Box::new(s.clone()),
                delimiter: b';',
            });
        }
        kinds.push(array_of(array_of(TypeKind::Integer)));
        kinds
    }

    /// Feeds real server text output through `text_to_json`, under the session GUCs walhook
    /// sets, on a throw-away cluster.
    #[tokio::test]
    async fn against_postgres_text_output() {
        use crate::source::types::builtin_kind;
        let conninfo = crate::ephemeral::unit_test_database();
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; \
                 SET IntervalStyle = postgres; SET bytea_output = hex; \
                 SET extra_float_digits = 1",
            )
            .await
            .unwrap();
        let cases: &[(&str, u32, Value)] = &[
            ("true", 16, json!(true)),
            ("(-32768)::int2", 21, json!(-32768)),
            ("9223372036854775807::int8", 20, json!(i64::MAX)),
            ("4294967295::oid", 26, json!(4_294_967_295u64)),
            ("'18446744073709551615'::xid8", 5069, json!(u64::MAX)),
            ("0.1::float4", 700, json!(0.1)),
            ("1.5e300::float8", 701, json!(1.5e300)),
            ("'-Infinity'::float8", 701, json!("-Infinity")),
            ("'NaN'::float4", 700, json!("NaN")),
            (
                "123456789012345678901234567890.123::numeric",
                1700,
                json!("123456789012345678901234567890.123"),
            ),
            ("'NaN'::numeric", 1700, json!("NaN")),
            (
                "'{\"z\": 1, \"a\": {\"y\": [1, 2.5]}}'::jsonb",
                3802,
                json!({"z": 1, "a": {"y": [1, 2.5]}}),
            ),
            (
                "'2026-11-22 10:15:30.123456+00'::timestamptz",
                1184,
                json!("2026-11-22T10:15:30.123456Z"),
            ),
            (
                "'2026-11-22 12:15:30+02'::timestamptz",
                1184,
                json!("2026-11-22T10:15:30Z"),
            ),
            ("'infinity'::timestamptz", 1184, json!("infinity")),
            (
                "'0044-03-15 12:00+00 BC'::timestamptz",
                1184,
                json!("0044-03-15 12:00:00+00 BC"),
            ),
            (
                "'2026-11-22 10:15:30.5'::timestamp",
                1114,
                json!("2026-11-22 10:15:30.5"),
            ),
            ("'2026-11-22'::date", 1082, json!("2026-11-22")),
            ("'10:15:30+02'::timetz", 1266, json!("10:15:30+02")),
            ("'1 day 02:03:04'::interval", 1186, json!("1 day 02:03:04")),
            ("'Hello'::bytea", 17, json!("SGVsbG8=")),
            ("ARRAY[1,2,NULL]::int4[]", 1007, json!([1, 2, null])),
            (
                "ARRAY[['a b','c\"d'],[NULL,'NULL']]",
                1009,
                json!([["a b", "c\"d"], [null, "NULL"]]),
            ),
            ("'{}'::int4[]", 1007, json!([])),
            ("'[0:1]={7,8}'::int4[]", 1007, json!([7, 8])),
            (
                "ARRAY[ROW(1,2),ROW(3,4)]::text[]",
                1009,
                json!(["(1,2)", "(3,4)"]),
            ),
            (
                "ARRAY['((1,1),(0,0))'::box, '((3,3),(2,2))']",
                1020,
                json!(["(1,1),(0,0)", "(3,3),(2,2)"]),
            ),
            ("ARRAY['Hi'::bytea, NULL]", 1001, json!(["SGk=", null])),
            ("ARRAY['{\"b\": [1]}'::jsonb]", 3807, json!([{"b": [1]}])),
            (
                "ARRAY['2026-11-22 10:15:30+00'::timestamptz]",
                1185,
                json!(["2026-11-22T10:15:30Z"]),
            ),
            (
                "ARRAY[1.10, 'NaN']::numeric[]",
                1231,
                json!(["1.10", "NaN"]),
            ),
            (
                "ARRAY['back\\slash', '', ' x ']",
                1009,
                json!(["back\\slash", "", " x "]),
            ),
        ];
        for (expr, oid, want) in cases {
            let messages = client
                .simple_query(&format!("SELECT {expr}"))
                .await
                .unwrap();
            let text = messages
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap();
            let kind = builtin_kind(*oid).unwrap();
            assert_eq!(
                &text_to_json(&kind, text.as_bytes()),
                want,
                "{expr} printed {text}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(text in proptest::collection::vec(any::<u8>(), 0..64)) {
            for kind in all_kinds() {
                let _ = text_to_json(&kind, &text);
            }
        }

        #[test]
        fn never_panics_on_array_like_text(text in r#"(\[-?[0-9]:[0-9]\]=)?[{}",;\\ NUL0-9a-z+:.-]{0,40}"#) {
            for kind in all_kinds() {
                let _ = text_to_json(&kind, text.as_bytes());
            }
        }

        #[test]
        fn integers_round_trip(n in any::<i64>()) {
            prop_assert_eq!(text_to_json(&TypeKind::Integer, n.to_string().as_bytes()), json!(n));
        }

        #[test]
        fn unsigned_integers_round_trip(n in any::<u64>()) {
            prop_assert_eq!(text_to_json(&TypeKind::Integer, n.to_string().as_bytes()), json!(n));
        }

        #[test]
        fn finite_floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            prop_assert_eq!(text_to_json(&TypeKind::Float, f.to_string().as_bytes()), json!(f));
        }

        #[test]
        fn text_arrays_round_trip(
            items in proptest::collection::vec(proptest::option::of(".{0,8}"), 0..6)
        ) {
            let body: Vec<String> = items
                .iter()
                .map(|i| i.as_deref().map_or_else(|| "NULL".to_owned(), pg_quote))
                .collect();
            let text = format!("{{{}}}", body.join(","));
            prop_assert_eq!(
                text_to_json(&array_of(TypeKind::Text), text.as_bytes()),
                json!(items)
            );
        }

        #[test]
        fn offsets_convert_like_utc(
            secs in -62_135_596_800i64 + 86_400..253_402_300_799 - 86_400,
            offset_min in -15 * 60i64..=15 * 60,
            micros in proptest::option::of(1u32..1_000_000),
        ) {
            let fmt = |t: i64, off: i64| {
                let (days, s) = (t.div_euclid(86_400), t.rem_euclid(86_400));
                let (y, m, d) = time::civil_from_days(days);
                let frac = micros.map_or(String::new(), |u| {
                    format!(".{u:06}").trim_end_matches('0').to_owned()
                });
                let sign = if off < 0 { '-' } else { '+' };
                let (oh, om) = (off.abs() / 60, off.abs() % 60);
                format!(
                    "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac}{sign}{oh:02}:{om:02}",
                    s / 3600, s / 60 % 60, s % 60
                )
            };
            let utc = text_to_json(&TypeKind::TimestampTz, fmt(secs, 0).as_bytes());
            let local = fmt(secs + offset_min * 60, offset_min);
            prop_assert_eq!(text_to_json(&TypeKind::TimestampTz, local.as_bytes()), utc.clone());
            let s = utc.as_str().unwrap();
            prop_assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{}", s);
        }
    }
}

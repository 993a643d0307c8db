//! Rules for the HTTP headers a user may configure.

/// Headers walhook sets itself (SPEC §4); configured headers may not replace them.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "idempotency-key",
    "user-agent",
    "host",
    "content-type",
    "content-length",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the request: the HTTP
/// client manages them, and a configured one would corrupt framing or be dropped.
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks a header name: an RFC 7230 token that walhook does not reserve.
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!(
            "invalid header name {name:?}; use letters, digits and !#$%&'*+-.^_`|~"
        ));
    }
    if RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "header {name:?} is set by walhook and cannot be overridden"
        ));
    }
    if HOP_BY_HOP_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "header {name:?} belongs to the connection, which the HTTP client manages; it cannot be configured"
        ));
    }
    Ok(())
}

/// Checks a header value: visible characters, spaces and tabs only. The error never quotes
/// the value, which may be a credential.
pub(crate) fn check_header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("header value contains a line break or other control character".into());
    }
    Ok(())
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(check_header_name("X-Tenant"), Ok(()));
        assert_eq!(check_header_name("Authorization"), Ok(()));
        assert!(check_header_name("X Tenant").is_err());
        assert!(check_header_name("X:Y").is_err());
        assert!(check_header_name("").is_err());
        assert_eq!(
            check_header_name("USER-AGENT"),
            Err("header \"USER-AGENT\" is set by walhook and cannot be overridden".into())
        );
        for hop in [
            "Transfer-Encoding",
            "connection",
            "TE",
            "Upgrade",
            "Keep-Alive",
        ] {
            assert!(
                check_header_name(hop)
                    .unwrap_err()
                    .contains("belongs to the connection"),
                "{hop}"
            );
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(check_header_value("42"), Ok(()));
        assert_eq!(check_header_value("a\tb c"), Ok(()));
        assert!(check_header_value("a\r\nX-Evil: 1").is_err());
    }
}

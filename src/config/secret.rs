//! Values that must never be printed: passwords, tokens, signing keys.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

/// A secret string. `Debug` and `Display` print `***`; use [`Secret::expose`] where the
/// value is really needed (a connection, a request header).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value so that it cannot be printed by accident.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself; call only to hand it to the code that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A Standard Webhooks signing secret (`whsec_` + base64), already decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    text: Secret,
    key: Vec<u8>,
}

/// The prefix Standard Webhooks puts before the base64 key.
pub(crate) const SIGNING_SECRET_PREFIX: &str = "whsec_";

/// Standard base64; padding optional because secrets are often copied without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl SigningSecret {
    /// Parses `whsec_<base64>`. The error never contains the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text.strip_prefix(SIGNING_SECRET_PREFIX).ok_or_else(|| {
            "must start with \"whsec_\" followed by a base64 key (Standard Webhooks format)"
                .to_owned()
        })?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| "the part after \"whsec_\" is not valid base64".to_owned())?;
        if key.is_empty() {
            return Err("the key after \"whsec_\" is empty".to_owned());
        }
        Ok(SigningSecret {
            text: Secret::new(text),
            key,
        })
    }

    /// The decoded key bytes: the HMAC-SHA256 key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The secret as written (`whsec_…`).
    pub fn expose(&self) -> &str {
        self.text.expose()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A subscriber URL. Webhook URLs often embed tokens (`…/hooks/${TOKEN}`), so `Display` and
/// `Debug` show it as written in the file — variables unexpanded, password hidden — and
/// [`WebhookUrl::expose`] gives the URL to send to.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    shown: String,
}

impl WebhookUrl {
    /// A URL and the form in which it may be shown.
    pub fn new(url: impl Into<String>, shown: impl Into<String>) -> Self {
        WebhookUrl {
            url: url.into(),
            shown: shown.into(),
        }
    }

    /// The URL itself, with variables expanded; use it to send requests.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Replaces passwords in a Postgres URL (or `key=value` connection string) with `***`.
///
/// Covers `scheme://user:password@host` and `password=` parameters, the two places libpq
/// accepts a password. Text that is neither is returned unchanged.
pub fn redact_postgres_url(url: &str) -> String {
    let mut out = redact_userinfo(url);
    let mut search_from = 0;
    while let Some(found) = find_password_param(&out[search_from..]) {
        let value_start = search_from + found;
        let value_len = out[value_start..]
            .find(['&', ' ', '#'])
            .unwrap_or(out.len() - value_start);
        out.replace_range(value_start..value_start + value_len, "***");
        search_from = value_start + 3;
    }
    out
}

/// `scheme://user:password@…` → `scheme://user:***@…`.
fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    // A password that was not percent-encoded may hold '@', '/', '?' or '#', so the user
    // info ends at the last '@' anywhere; a query holding '@' makes this hide too much,
    // never too little.
    let authority = &url[authority_start..];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start + colon + 1]);
    out.push_str("***");
    out.push_str(&url[authority_start + at..]);
    out
}

/// Offset of the value of the next `password=` parameter (after `?`, `&` or whitespace).
fn find_password_param(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find("password=") {
        let at = from + pos;
        let boundary = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == '?' || c == '&' || c.is_whitespace());
        if boundary {
            return Some(at + "password=".len());
        }
        from = at + 1;
    }
    None
}

/// A subscriber URL (as the config shows it, or as a template rendered it) with what may
/// be a credential hidden: the whole userinfo, and every query value that is not just a
/// `${VAR}` reference. `https://u:p@h/x?token=abc&t=${T}` → `https://***@h/x?token=***&t=${T}`.
pub fn redact_webhook_url(shown: &str) -> String {
    let (before_fragment, fragment) = match shown.find('#') {
        Some(at) => shown.split_at(at),
        None => (shown, ""),
    };
    let (before_query, query) = match before_fragment.find('?') {
        Some(at) => (&before_fragment[..at], Some(&before_fragment[at + 1..])),
        None => (before_fragment, None),
    };
    let mut out = match before_query.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let rest = &before_query[authority_start..];
            let authority_len = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_len].rfind('@') {
                Some(at) => format!("{}***{}", &before_query[..authority_start], &rest[at..]),
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((_, value)) if value.is_empty() || is_variable(value) => pair.to_owned(),
                Some((name, _)) => format!("{name}=***"),
                None if pair.is_empty() || is_variable(pair) => pair.to_owned(),
                None => "***".to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

/// `${NAME}` and nothing else: the name of a variable, not its value.
fn is_variable(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_and_query_values_but_keep_variable_names() {
        assert_eq!(
            redact_webhook_url("https://u:p@h.example/x?token=abc&t=${T}&empty=&flag"),
            "https://***@h.example/x?token=***&t=${T}&empty=&***"
        );
        assert_eq!(
            redact_webhook_url("https://tok@h.example:8443/hooks/${TOKEN}"),
            "https://***@h.example:8443/hooks/${TOKEN}"
        );
        assert_eq!(
            redact_webhook_url("http://127.0.0.1:9/hooks#frag"),
            "http://127.0.0.1:9/hooks#frag"
        );
        assert_eq!(redact_webhook_url("${PARTNER_URL}"), "${PARTNER_URL}");
        // An '@' in the path is no userinfo.
        assert_eq!(
            redact_webhook_url("https://h.example/a@b?x=1"),
            "https://h.example/a@b?x=***"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
        let signing = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{signing:?}"), "***");
        assert_eq!(signing.key().len(), 24);
    }

    #[test]
    fn signing_secrets_need_prefix_and_base64() {
        assert_eq!(SigningSecret::parse("whsec_AAE").unwrap().key(), &[0, 1]);
        assert_eq!(SigningSecret::parse("whsec_AAE=").unwrap().key(), &[0, 1]);
        assert!(SigningSecret::parse("secret")
            .unwrap_err()
            .starts_with("must start"));
        assert!(SigningSecret::parse("whsec_!!")
            .unwrap_err()
            .contains("base64"));
        assert!(SigningSecret::parse("whsec_")
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_postgres_url("postgres://walhook:s3cr%40t@erp-db:5432/erp?sslmode=require"),
            "postgres://walhook:***@erp-db:5432/erp?sslmode=require"
        );
        assert_eq!(
            redact_postgres_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        for mangled in [
            "postgres://u:p#ss@h/db",
            "postgres://u:p/ss@h/db",
            "postgres://u:p?ss@h/db",
        ] {
            assert_eq!(
                redact_postgres_url(mangled),
                "postgres://u:***@h/db",
                "{mangled}"
            );
        }
        assert_eq!(
            redact_postgres_url("postgres://u@h/db"),
            "postgres://u@h/db"
        );
        assert_eq!(redact_postgres_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_postgres_url("postgresql://h/db?user=u&password=p&sslmode=disable"),
            "postgresql://h/db?user=u&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_postgres_url("host=h password=p dbname=x"),
            "host=h password=*** dbname=x"
        );
        assert_eq!(
            redact_postgres_url("postgres://h/db?xpassword=1"),
            "postgres://h/db?xpassword=1"
        );
    }
}

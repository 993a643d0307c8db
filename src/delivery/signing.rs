//! Standard Webhooks signatures (SPEC §4): `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`, one signature per secret while keys rotate.
//!
//! The daemon signs with [`signature_header`]; `walhook receive` checks with [`verify`].

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use hyper::header::HeaderMap;

use crate::config::SigningSecret;

type HmacSha256 = Hmac<Sha256>;

/// The only signature scheme walhook writes and accepts: symmetric HMAC-SHA256.
const VERSION: &str = "v1";

/// Length of an HMAC-SHA256 tag; a decoded signature of any other length is garbled.
const TAG_LEN: usize = 32;

/// Why [`verify`] rejected a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The `webhook-signature` header is empty or only whitespace.
    #[error("the webhook-signature header is empty")]
    MissingSignature,
    /// `webhook-timestamp` is further in the past than the tolerance allows (a replay?).
    #[error("the webhook-timestamp is {age} s old, more than the {tolerance} s tolerance")]
    TimestampTooOld {
        /// Seconds between the timestamp and now.
        age: u64,
        /// The tolerance in seconds.
        tolerance: u64,
    },
    /// `webhook-timestamp` is further in the future than the tolerance allows (clock skew?).
    #[error(
        "the webhook-timestamp is {ahead} s in the future, more than the {tolerance} s tolerance"
    )]
    TimestampTooNew {
        /// Seconds between now and the timestamp.
        ahead: u64,
        /// The tolerance in seconds.
        tolerance: u64,
    },
    /// A `v1,` signature is not base64 of a 32-byte HMAC-SHA256 (truncated or garbled), and
    /// no other signature in the header matched.
    #[error("the webhook-signature header holds a malformed v1 signature")]
    MalformedSignature,
    /// The header holds no `v1,` signature at all (e.g. only `v2,…` or `v1a,…`).
    #[error("the webhook-signature header holds no v1 signature")]
    UnsupportedVersion,
    /// Well-formed `v1,` signatures, none made with any of the configured secrets.
    #[error("no signature in the webhook-signature header matches a configured secret")]
    NoMatch,
}

/// The `v1,<base64>` signature of one request made with one secret.
///
/// A GET ping has no body: pass `b""`, so the signed content is `{id}.{timestamp}.`.
pub fn signature(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, id, timestamp, body).finalize().into_bytes();
    format!("{VERSION},{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: one signature per secret, space-separated, so a
/// receiver holding either the old or the new key accepts it while keys rotate. `None` when
/// the subscription has no secret and is sent unsigned.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| signature(secret, id, timestamp, body))
        .collect();
    Some(signatures.join(" "))
}

/// Checks a received request: accepts it when its timestamp is within `tolerance` of `now`
/// (unix seconds) and any `v1,` signature in `header` matches any of `secrets`.
///
/// Signatures of other versions are skipped, as Standard Webhooks asks of receivers, so a
/// sender may add schemes later. Comparison is constant-time.
pub fn verify(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if header.trim().is_empty() {
        return Err(VerifyError::MissingSignature);
    }
    check_timestamp(timestamp, now, tolerance)?;

    let mut saw_v1 = false;
    let mut saw_malformed = false;
    for entry in header.split_ascii_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            saw_malformed = true;
            continue;
        };
        if version != VERSION {
            continue;
        }
        let tag = match STANDARD.decode(encoded) {
            Ok(tag) if tag.len() == TAG_LEN => tag,
            _ => {
                saw_malformed = true;
                continue;
            }
        };
        saw_v1 = true;
        // A fresh MAC per secret: verify_slice consumes it, and compares in constant time.
        if secrets
            .iter()
            .any(|secret| mac(secret, id, timestamp, body).verify_slice(&tag).is_ok())
        {
            return Ok(());
        }
    }
    // Name the most specific problem: a wrong key beats a garbled entry beside it.
    Err(if saw_v1 {
        VerifyError::NoMatch
    } else if saw_malformed {
        VerifyError::MalformedSignature
    } else {
        VerifyError::UnsupportedVersion
    })
}

/// Rejects timestamps more than `tolerance` away from `now`, either way.
fn check_timestamp(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    // i128: a hostile timestamp such as i64::MIN must not overflow the subtraction.
    let skew = i128::from(now) - i128::from(timestamp);
    let limit = tolerance.as_secs();
    let magnitude = u64::try_from(skew.unsigned_abs()).unwrap_or(u64::MAX);
    if magnitude <= limit {
        Ok(())
    } else if skew > 0 {
        Err(VerifyError::TimestampTooOld {
            age: magnitude,
            tolerance: limit,
        })
    } else {
        Err(VerifyError::TimestampTooNew {
            ahead: magnitude,
            tolerance: limit,
        })
    }
}

/// HMAC-SHA256 over `{id}.{timestamp}.{body}`, fed in pieces so the body is never copied.
fn mac(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.key()).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The outcome of checking one request's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A signature matched a configured secret.
    Verified,
    /// No `--secret` was given, so nothing was checked.
    Unchecked,
    /// Verification failed; the one-line reason (never contains a secret).
    Rejected(String),
}

/// Checks the Standard Webhooks headers of a request against `secrets` at `now` (unix s).
pub fn check_request(
    secrets: &[SigningSecret],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Verdict {
    if secrets.is_empty() {
        return Verdict::Unchecked;
    }
    let header = |name: &str| -> Result<&str, String> {
        match headers.get(name) {
            None => Err(format!("missing {name} header")),
            Some(value) => value
                .to_str()
                .map_err(|_| format!("the {name} header is not printable ASCII")),
        }
    };
    let result = (|| {
        let id = header("webhook-id")?;
        let timestamp = header("webhook-timestamp")?;
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| "the webhook-timestamp header is not unix seconds".to_owned())?;
        let signature = header("webhook-signature")?;
        verify(secrets, id, timestamp, body, signature, now, tolerance).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Verdict::Verified,
        Err(reason) => Verdict::Rejected(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference test vector.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const EXPECTED: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const TOLERANCE: Duration = Duration::from_secs(5 * 60);

    fn secret(text: &str) -> SigningSecret {
        SigningSecret::parse(text).unwrap()
    }

    fn check(secrets: &[SigningSecret], header: &str) -> Result<(), VerifyError> {
        verify(secrets, ID, TIMESTAMP, BODY, header, TIMESTAMP, TOLERANCE)
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        assert_eq!(signature(&secret(SECRET), ID, TIMESTAMP, BODY), EXPECTED);
    }

    #[test]
    fn a_get_ping_is_signed_over_an_empty_body() {
        // HMAC-SHA256 of "msg_….1649367553." computed independently.
        let ping = signature(&secret(SECRET), ID, TIMESTAMP, b"");
        assert_eq!(ping, "v1,6cbczhS31q83Zdm/V683g4djRU169SlQvXyea0gV7vo=");
        assert_eq!(
            verify(
                &[secret(SECRET)],
                ID,
                TIMESTAMP,
                b"",
                &ping,
                TIMESTAMP,
                TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn a_subscription_without_secret_sends_no_signature_header() {
        assert_eq!(signature_header(&[], ID, TIMESTAMP, BODY), None);
    }

    #[test]
    fn a_single_secret_gives_a_single_signature() {
        assert_eq!(
            signature_header(&[secret(SECRET)], ID, TIMESTAMP, BODY).as_deref(),
            Some(EXPECTED)
        );
    }

    #[test]
    fn while_rotating_keys_each_secret_adds_a_signature() {
        let secrets = [secret(SECRET), secret(OTHER_SECRET)];
        let header = signature_header(&secrets, ID, TIMESTAMP, BODY).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], EXPECTED);
        assert_eq!(
            parts[1],
            signature(&secret(OTHER_SECRET), ID, TIMESTAMP, BODY)
        );
    }

    #[test]
    fn a_receiver_accepts_the_test_vector() {
        assert_eq!(check(&[secret(SECRET)], EXPECTED), Ok(()));
    }

    #[test]
    fn a_receiver_with_either_old_or_new_key_accepts_a_rotating_sender() {
        let header =
            signature_header(&[secret(SECRET), secret(OTHER_SECRET)], ID, TIMESTAMP, BODY).unwrap();
        assert_eq!(check(&[secret(SECRET)], &header), Ok(()));
        assert_eq!(check(&[secret(OTHER_SECRET)], &header), Ok(()));
    }

    #[test]
    fn a_receiver_holding_both_keys_accepts_a_sender_with_either() {
        let both = [secret(OTHER_SECRET), secret(SECRET)];
        assert_eq!(check(&both, EXPECTED), Ok(()));
    }

    #[test]
    fn a_receiver_skips_unknown_versions_beside_a_good_signature() {
        let header = format!("v2,abc v1a,{} {EXPECTED}", &EXPECTED[3..]);
        assert_eq!(check(&[secret(SECRET)], &header), Ok(()));
    }

    #[test]
    fn an_empty_signature_header_is_rejected() {
        assert_eq!(
            check(&[secret(SECRET)], ""),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            check(&[secret(SECRET)], "  "),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn a_truncated_or_garbled_signature_is_rejected() {
        let truncated_base64 = &EXPECTED[..EXPECTED.len() - 4]; // still valid base64, 30 bytes
        let cut_mid_quantum = &EXPECTED[..EXPECTED.len() - 2];
        for header in [
            truncated_base64,
            cut_mid_quantum,
            "v1,",
            "v1,not base64!",
            "v1,@@@@",
            "v1",
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ] {
            assert_eq!(
                check(&[secret(SECRET)], header),
                Err(VerifyError::MalformedSignature),
                "{header:?}"
            );
        }
    }

    #[test]
    fn a_signature_with_another_version_prefix_is_rejected() {
        let tag = &EXPECTED[3..];
        for prefix in ["v2", "v1a", "V1", "v0"] {
            let header = format!("{prefix},{tag}");
            assert_eq!(
                check(&[secret(SECRET)], &header),
                Err(VerifyError::UnsupportedVersion),
                "{header}"
            );
        }
    }

    #[test]
    fn a_signature_made_with_another_secret_is_rejected() {
        assert_eq!(
            check(&[secret(OTHER_SECRET)], EXPECTED),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(check(&[], EXPECTED), Err(VerifyError::NoMatch));
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_is_rejected() {
        let secrets = [secret(SECRET)];
        let tampered_body = br#"{"email":"evil@example.com","username":"test_user"}"#;
        assert_eq!(
            verify(
                &secrets,
                ID,
                TIMESTAMP,
                tampered_body,
                EXPECTED,
                TIMESTAMP,
                TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &secrets,
                "msg_other",
                TIMESTAMP,
                BODY,
                EXPECTED,
                TIMESTAMP,
                TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &secrets,
                ID,
                TIMESTAMP + 1,
                BODY,
                EXPECTED,
                TIMESTAMP,
                TOLERANCE
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_wrong_secret_is_reported_even_beside_a_garbled_entry() {
        let header = format!("v1,garbled {EXPECTED}");
        assert_eq!(
            check(&[secret(OTHER_SECRET)], &header),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_rejected_even_when_correctly_signed() {
        let secrets = [secret(SECRET)];
        let later = TIMESTAMP + 301;
        assert_eq!(
            verify(&secrets, ID, TIMESTAMP, BODY, EXPECTED, later, TOLERANCE),
            Err(VerifyError::TimestampTooOld {
                age: 301,
                tolerance: 300
            })
        );
        // Exactly at the tolerance is still fine.
        assert_eq!(
            verify(
                &secrets,
                ID,
                TIMESTAMP,
                BODY,
                EXPECTED,
                TIMESTAMP + 300,
                TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn a_timestamp_from_the_future_is_rejected() {
        let earlier = TIMESTAMP - 301;
        assert_eq!(
            verify(
                &[secret(SECRET)],
                ID,
                TIMESTAMP,
                BODY,
                EXPECTED,
                earlier,
                TOLERANCE
            ),
            Err(VerifyError::TimestampTooNew {
                ahead: 301,
                tolerance: 300
            })
        );
    }

    #[test]
    fn an_absurd_timestamp_does_not_overflow() {
        assert!(matches!(
            verify(
                &[secret(SECRET)],
                ID,
                i64::MIN,
                BODY,
                EXPECTED,
                i64::MAX,
                TOLERANCE
            ),
            Err(VerifyError::TimestampTooOld { .. })
        ));
    }

    #[test]
    fn errors_never_echo_the_secret_or_signature() {
        let err = check(&[secret(OTHER_SECRET)], EXPECTED).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains(&EXPECTED[3..]));
        assert!(!text.contains(OTHER_SECRET));
    }
}

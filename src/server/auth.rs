//! `http.admin_token` (SPEC §2, §6): write calls (anything but GET and HEAD) need
//! `Authorization: Bearer <token>`; when `http.listen` is not a loopback address, every
//! admin API call does. Without a configured token those calls are refused (403) with what
//! to set. `/metrics`, `/healthz` and `/readyz` are outside this layer.
//!
//! The token is read from the running config on every call, so a reload changes it. It is
//! compared in constant time (SHA-256 of both sides, then every byte), and never logged or
//! echoed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::api::ApiError;
use super::App;

/// Lets the request through when it needs no token or carries the right one.
pub(super) async fn require(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    let listen = app.state.listen;
    let loopback = listen.ip().to_canonical().is_loopback();
    if !write && loopback {
        return next.run(request).await;
    }
    let token = app.state.config.borrow().http.admin_token.clone();
    let Some(token) = token else {
        let why = if write {
            "write calls to the admin API need http.admin_token".to_owned()
        } else {
            format!(
                "http.listen {listen} is not a loopback address, so every admin API call \
                 needs http.admin_token"
            )
        };
        return ApiError::forbidden(format!(
            "{why}, and none is set: add admin_token = \"${{WALHOOK_ADMIN_TOKEN}}\" to [http] \
             (the config reloads without a restart) and send Authorization: Bearer <token>"
        ))
        .into_response();
    };
    match bearer(request.headers()) {
        Some(given) if same(given, token.expose()) => next.run(request).await,
        Some(_) => ApiError::unauthorized(
            "wrong admin token: Authorization: Bearer <token> must carry http.admin_token",
        )
        .into_response(),
        None => {
            let call = if write {
                "write calls"
            } else {
                "calls off loopback"
            };
            ApiError::unauthorized(format!(
                "missing Authorization: Bearer <token> header: admin API {call} need \
                 http.admin_token"
            ))
            .into_response()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `given` equals `expected`, in time that depends on neither (nor their lengths).
fn same(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same("s3cret-token", "s3cret-token"));
        assert!(!same("s3cret-token", "s3cret-tokem"));
        assert!(!same("s3cret", "s3cret-token"));
        assert!(!same("", "x"));
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}

//! `walhook receive`: a small local webhook receiver for development (SPEC §1).
//!
//! Listens for HTTP, checks Standard Webhooks signatures with [`signing::verify`] and prints
//! one readable block per request to stdout. Needs no config file.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::config::SigningSecret;
use crate::delivery::signing::{check_request, Verdict};

use crate::http::MAX_BODY;
use crate::os::emit;

/// The address `walhook receive` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Parses a `--listen` value early, so a typo is a usage error rather than a bind failure.
pub fn parse_listen(text: &str) -> Result<String, String> {
    text.parse::<SocketAddr>()
        .map(|_| text.to_owned())
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:8080".to_owned())
}

/// How much of a body that is not JSON is printed: enough to see what it is.
const MAX_RAW_PRINT: usize = 64 * 1024;

/// What `walhook receive` was asked to do.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    pub listen: String,
    /// Secrets to verify with; empty means signatures are not checked.
    pub secrets: Vec<SigningSecret>,
    /// Status answered for accepted requests.
    pub status: StatusCode,
    /// How far `webhook-timestamp` may be from now.
    pub tolerance: Duration,
}

/// Serves until SIGINT or SIGTERM; an error only when the address cannot be bound.
pub async fn run(options: ReceiveOptions) -> std::io::Result<()> {
    // Before anything is announced: a signal right after "listening" must stop us cleanly.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let listener = TcpListener::bind(&options.listen).await?;
    let addr = listener.local_addr()?;
    let checking = match options.secrets.len() {
        0 => "signatures not checked: no --secret".to_owned(),
        1 => "verifying signatures with 1 secret".to_owned(),
        n => format!("verifying signatures with {n} secrets"),
    };
    // First line on stdout, so scripts (and our tests) can learn a port picked with `:0`.
    emit(&format!(
        "walhook receive: listening on http://{addr} ({checking})\n"
    ));

    let state = Arc::new(options);
    let make = || {
        let state = Arc::clone(&state);
        service_fn(move |req| handle(req, Arc::clone(&state)))
    };
    // On a signal, open connections are simply closed (no drain).
    let until = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    crate::http::serve(listener, make, until, crate::http::Limits::default()).await;
    emit("walhook receive: stopped\n");
    Ok(())
}

/// Answers one request and prints its block.
async fn handle(
    req: Request<Incoming>,
    options: Arc<ReceiveOptions>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut block = format!(
        "── {} {}\n   webhook-id: {}\n",
        parts.method,
        parts.uri,
        parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    );
    // What a subscription's `auth` sent, so its configuration can be checked by eye.
    for (name, value) in &parts.headers {
        if name == hyper::header::AUTHORIZATION {
            let value = String::from_utf8_lossy(value.as_bytes());
            let _ = writeln!(
                block,
                "   authorization: {}",
                super::terminal::printable(&value, false)
            );
        }
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let (status, reason) = if e.downcast_ref::<LengthLimitError>().is_some() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is larger than 10 MiB".to_owned(),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                )
            };
            let _ = writeln!(block, "   ✗ {} {reason}\n", status.as_u16());
            emit(&block);
            return Ok(text_response(status, &reason));
        }
    };

    let verdict = check_request(
        &options.secrets,
        &parts.headers,
        &body,
        crate::time::unix_secs(std::time::SystemTime::now()),
        options.tolerance,
    );
    let response = match &verdict {
        Verdict::Verified => {
            block.push_str("   ✓ signature verified\n");
            text_response(options.status, "")
        }
        Verdict::Unchecked => {
            block.push_str("   unsigned check skipped: no --secret\n");
            text_response(options.status, "")
        }
        Verdict::Rejected(reason) => {
            let _ = writeln!(block, "   ✗ 401 {reason}");
            text_response(StatusCode::UNAUTHORIZED, reason)
        }
    };
    let _ = writeln!(block, "   answered {}", response.status().as_u16());
    describe_body(&mut block, &body);
    block.push('\n');
    emit(&block);
    Ok(response)
}

/// Appends the body: pretty JSON when it parses (saying how big a batch is), else the text.
fn describe_body(block: &mut String, body: &[u8]) {
    if body.is_empty() {
        block.push_str("   (no body)\n");
        return;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            if let serde_json::Value::Array(events) = &json {
                let noun = if events.len() == 1 { "event" } else { "events" };
                let _ = writeln!(block, "   batch of {} {noun}", events.len());
            }
            let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
            indent(block, &pretty);
        }
        Err(_) => {
            let shown = &body[..body.len().min(MAX_RAW_PRINT)];
            // A stray ESC in a body must not drive the terminal.
            let text = super::terminal::printable(&String::from_utf8_lossy(shown), true);
            indent(block, &text);
            if body.len() > shown.len() {
                let _ = writeln!(block, "   … {} more bytes", body.len() - shown.len());
            }
        }
    }
}

/// Appends `text` indented under the block's header.
fn indent(block: &mut String, text: &str) {
    for line in text.lines() {
        block.push_str("   ");
        block.push_str(line);
        block.push('\n');
    }
}

/// A plain-text response; a non-empty reason gets a trailing newline, for curl users.
fn text_response(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = if reason.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(format!("{reason}\n"))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().unwrap());
    response
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderMap;

    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn missing_headers_are_named() {
        let secrets = [SigningSecret::parse(SECRET).unwrap()];
        let tol = Duration::from_secs(300);
        assert_eq!(
            check_request(&secrets, &headers(&[]), b"", 0, tol),
            Verdict::Rejected("missing webhook-id header".into())
        );
        assert_eq!(
            check_request(
                &secrets,
                &headers(&[("webhook-id", "x"), ("webhook-timestamp", "soon")]),
                b"",
                0,
                tol
            ),
            Verdict::Rejected("the webhook-timestamp header is not unix seconds".into())
        );
        assert_eq!(
            check_request(
                &secrets,
                &headers(&[("webhook-id", "x"), ("webhook-timestamp", "0")]),
                b"",
                0,
                tol
            ),
            Verdict::Rejected("missing webhook-signature header".into())
        );
    }

    #[test]
    fn without_secrets_nothing_is_checked() {
        let verdict = check_request(&[], &headers(&[]), b"", 0, Duration::ZERO);
        assert_eq!(verdict, Verdict::Unchecked);
    }

    #[test]
    fn batches_are_counted_and_json_is_pretty() {
        let mut block = String::new();
        describe_body(&mut block, br#"[{"a":1},{"a":2}]"#);
        assert!(block.starts_with("   batch of 2 events\n"), "{block}");
        assert!(block.contains("\"a\": 1"), "{block}");
    }

    #[test]
    fn control_characters_in_raw_bodies_are_escaped() {
        let mut block = String::new();
        describe_body(&mut block, b"hi\x1b[31m");
        assert_eq!(block, "   hi\\u{1b}[31m\n");
    }
}

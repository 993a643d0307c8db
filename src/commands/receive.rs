//! `walhook receive`: a small local webhook receiver for development (SPEC §1).
//!
//! Listens for HTTP, checks Standard Webhooks signatures with [`signing::verify`] and prints
//! one readable block per request to stdout. Needs no config file.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::SigningSecret;
use crate::delivery::signing;

/// Largest request body accepted; larger ones get 413 (walhook's batches stay far below).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

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
pub fn check(
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
        signing::verify(secrets, id, timestamp, body, signature, now, tolerance)
            .map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Verdict::Verified,
        Err(reason) => Verdict::Rejected(reason),
    }
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
    // Aborted when dropped: on a signal, open connections are simply closed.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually out of file descriptors: back off rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = Arc::clone(&state);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
                    // Clients that hang up mid-request are normal during development.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
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

    let verdict = check(
        &options.secrets,
        &parts.headers,
        &body,
        unix_now(),
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

/// Writes a whole block at once under the stdout lock, so concurrent requests don't interleave.
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) must not take the receiver down.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Seconds since the Unix epoch, for checking a signature's timestamp.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
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
            check(&secrets, &headers(&[]), b"", 0, tol),
            Verdict::Rejected("missing webhook-id header".into())
        );
        assert_eq!(
            check(
                &secrets,
                &headers(&[("webhook-id", "x"), ("webhook-timestamp", "soon")]),
                b"",
                0,
                tol
            ),
            Verdict::Rejected("the webhook-timestamp header is not unix seconds".into())
        );
        assert_eq!(
            check(
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
        let verdict = check(&[], &headers(&[]), b"", 0, Duration::ZERO);
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

//! Sends one webhook request and records what happened (SPEC §4): the status, or the error,
//! and a bounded excerpt of the response.

use std::error::Error as StdError;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{LOCATION, RETRY_AFTER};
use tokio::time::timeout_at;

use super::network::{self, NetworkPolicy};
use super::policy::{self, Outcome, Verdict};
use super::request;
use crate::config::{Auth, SubscriptionConfig, Target};

/// How much of a response body is read; the rest is never pulled off the socket, so a huge
/// (or endless) body cannot exhaust memory.
pub const READ_LIMIT: usize = 64 * 1024;

/// How much of the body read is kept in the attempt log.
pub const EXCERPT_LIMIT: usize = 16 * 1024;

/// Stands in for a configured duration too large to add to a point in time.
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// One HTTP attempt and its result.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the request started.
    pub started_at: SystemTime,
    /// Until the response body was read (or the request failed).
    pub duration: Duration,
    /// The HTTP status, `None` when no response arrived.
    pub status: Option<u16>,
    /// What went wrong, without the URL (which may carry a token); for a 3xx, the location.
    pub error: Option<String>,
    /// Up to [`EXCERPT_LIMIT`] bytes of the response body, as lossy UTF-8.
    pub response_excerpt: String,
    /// The `Location` header of a response.
    pub location: Option<String>,
    /// The raw `Retry-After` header of a response.
    pub retry_after: Option<String>,
    /// What the result means for the delivery and its subscription.
    pub verdict: Verdict,
}

/// Sends `body` as event (or batch) `id` to `sub` (at the event's `target` when it has one),
/// once: checks the URL actually sent against `policy`,
/// limits the whole request to `sub.timeout`, and never follows a redirect (`client` is
/// expected to come from [`network::http_client`]).
pub async fn send(
    client: &reqwest::Client,
    policy: &NetworkPolicy,
    sub: &SubscriptionConfig,
    target: Option<&Target>,
    id: &str,
    body: &[u8],
) -> Attempt {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let mut attempt = Attempt {
        started_at,
        duration: Duration::ZERO,
        status: None,
        error: None,
        response_excerpt: String::new(),
        location: None,
        retry_after: None,
        verdict: policy::classify(None, None, &[], started_at),
    };
    if target.is_none() && sub.url_template {
        // The template as written is no address: sending to it would reach a URL with the
        // braces percent-encoded. Only an event stored before `url` became a template (or
        // one capture could not route) gets here, and no retry can change that.
        attempt.error = Some(
            "the url is a template and this event was stored without a rendered URL \
             (it was captured before the url became a template); not sent"
                .to_owned(),
        );
        attempt.verdict = Verdict::DEAD;
        return attempt;
    }
    let (url, _) = request::destination(sub, target);
    if let Err(error) = network::check_url(url, policy) {
        attempt.error = Some(error.to_string());
        return attempt;
    }
    let timestamp = crate::time::unix_secs(started_at);
    // One deadline for connecting, the headers and the body alike.
    // A timeout too large to add is as good as none.
    let deadline = tokio::time::Instant::from_std(
        start.checked_add(sub.timeout).unwrap_or(start + FAR_FUTURE),
    );
    let request = request::build(client, sub, target, id, body, timestamp).send();
    let mut response = match timeout_at(deadline, request).await {
        Err(_) => {
            attempt.error = Some(timed_out(sub.timeout));
            attempt.duration = start.elapsed();
            return attempt;
        }
        Ok(Err(error)) => {
            attempt.error = Some(describe(error));
            attempt.duration = start.elapsed();
            return attempt;
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
    };
    attempt.status = Some(status.as_u16());
    attempt.location = header(LOCATION);
    attempt.retry_after = header(RETRY_AFTER);
    if status.is_redirection() {
        let to = attempt
            .location
            .as_deref()
            .unwrap_or("(no Location header)");
        attempt.error = Some(format!("redirect to {to}: not followed"));
    }
    let mut read = Vec::new();
    while read.len() < READ_LIMIT {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => read.extend_from_slice(&chunk),
            Ok(Ok(None)) => break,
            // The receiver has already answered with a status, which decides the outcome; a
            // body cut short only shortens the excerpt.
            Ok(Err(error)) => {
                tracing::debug!(error = %describe(error), "response body cut short");
                break;
            }
            Err(_) => {
                tracing::debug!("response body not finished within the timeout");
                break;
            }
        }
    }
    // Dropping the response here closes the connection instead of draining what is left.
    drop(response);
    attempt.response_excerpt = excerpt(&read);
    // A receiver may echo the request: nothing it sent back leaves here with a credential.
    // Most answers (a 204, an empty 200) carry no text, and then the secrets are not gathered.
    let received_text = !attempt.response_excerpt.is_empty()
        || attempt.error.is_some()
        || attempt.location.is_some();
    if received_text {
        let secrets = secrets_of(sub, url);
        attempt.response_excerpt = scrub(&attempt.response_excerpt, &secrets);
        attempt.error = attempt.error.map(|e| scrub(&e, &secrets));
        attempt.location = attempt.location.map(|l| scrub(&l, &secrets));
    }
    attempt.duration = start.elapsed();
    attempt.verdict = policy::classify(
        attempt.status,
        attempt.retry_after.as_deref(),
        &sub.dead_on_status,
        SystemTime::now(),
    );
    if let (Outcome::Dead, Some(status)) = (attempt.verdict.outcome, attempt.status) {
        attempt.error = Some(format!(
            "{status} is in dead_on_status: dead after this attempt, not retried"
        ));
    }
    attempt
}

/// Secrets shorter than this are not scrubbed: replacing every `1` or `en` of a body would
/// hide the body, and a credential that short protects nothing.
const MIN_SCRUBBED: usize = 4;

/// Every credential the request carries, as the receiver may echo it: the signing secrets,
/// the auth token, the basic password and its base64 `user:pass`, custom header values, and
/// the URL's password and query values (raw and percent-decoded). Longest first, so a value inside another goes too.
fn secrets_of(sub: &SubscriptionConfig, url: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut secrets = Vec::new();
    for secret in &sub.secrets {
        let whole = secret.expose();
        secrets.push(whole.to_owned());
        if let Some(key) = whole.strip_prefix("whsec_") {
            secrets.push(key.to_owned());
        }
    }
    match &sub.auth {
        Some(Auth::Bearer { token }) => secrets.push(token.expose().to_owned()),
        Some(Auth::Basic { username, password }) => {
            secrets.push(password.expose().to_owned());
            secrets.push(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose())),
            );
        }
        Some(Auth::Header { value, .. }) => secrets.push(value.expose().to_owned()),
        None => {}
    }
    for (_, value) in &sub.headers {
        secrets.push(value.expose().to_owned());
    }
    if let Ok(url) = reqwest::Url::parse(url) {
        if let Some(password) = url.password() {
            secrets.push(password.to_owned());
        }
        if let Some(query) = url.query() {
            for pair in query.split('&') {
                if let Some((_, raw)) = pair.split_once('=') {
                    secrets.push(raw.to_owned());
                }
            }
        }
        for (_, value) in url.query_pairs() {
            secrets.push(value.into_owned());
        }
    }
    secrets.retain(|s| s.len() >= MIN_SCRUBBED);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// `text` with every credential of `sub` (see `secrets_of`) replaced by `***`: for text a
/// receiver sent that was stored before attempts were scrubbed in the sender.
pub fn scrubbed(sub: &SubscriptionConfig, text: &str) -> String {
    scrub(text, &secrets_of(sub, sub.url.expose()))
}

/// `text` with every occurrence of each of `secrets` replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// The first [`EXCERPT_LIMIT`] bytes as text; invalid UTF-8 and NUL bytes (which Postgres
/// `text` cannot hold) become U+FFFD, and the result is cut back to the limit on a character
/// boundary (replacement characters are longer).
pub fn excerpt(body: &[u8]) -> String {
    let mut text =
        String::from_utf8_lossy(&body[..body.len().min(EXCERPT_LIMIT)]).replace('\0', "\u{FFFD}");
    if text.len() > EXCERPT_LIMIT {
        let mut end = EXCERPT_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn timed_out(limit: Duration) -> String {
    format!("timed out after {} ms", limit.as_millis())
}

/// A client error with its causes, never its URL (whose path or query may hold a token).
fn describe(error: reqwest::Error) -> String {
    if let Some(refused) = network::policy_error(&error) {
        return refused.to_string();
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timeout)");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{AllowedNetwork, Secret, SubscriptionConfig};
    use crate::delivery::request::tests::subscription;

    fn policy() -> NetworkPolicy {
        NetworkPolicy::new(&[AllowedNetwork::Cidr("127.0.0.0/8".parse().unwrap())])
    }

    /// A server answering every connection with `response` after reading the request head;
    /// `None` accepts and never answers.
    async fn server(response: Option<Vec<u8>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    match response {
                        Some(response) => {
                            // The client may hang up early (huge bodies): that is the point.
                            let _ = socket.write_all(&response).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        addr
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn sub_for(addr: SocketAddr) -> SubscriptionConfig {
        let mut sub = subscription(&format!("http://{addr}/hook?token=sekrit"));
        sub.timeout = Duration::from_millis(300);
        sub
    }

    async fn send_to(sub: &SubscriptionConfig) -> Attempt {
        let client = network::http_client(policy()).unwrap();
        send(&client, &policy(), sub, None, "evt_1", b"{}").await
    }

    #[tokio::test]
    async fn a_2xx_is_delivered() {
        let addr = server(Some(response("200 OK", "", b"thanks"))).await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.verdict.outcome, Outcome::Delivered);
        assert_eq!(attempt.response_excerpt, "thanks");
        assert_eq!(attempt.error, None);
    }

    #[tokio::test]
    async fn an_echoing_receiver_gets_no_credential_into_the_attempt() {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("ann:basic-pw-9");
        let echoed = format!(
            "Authorization: Bearer bearer-tok-1\r\nAuthorization: Basic {basic}\r\n\
             X-Api-Key: header-key-2\r\nGET /hook?token=sekrit&x=a%20b%20c HTTP/1.1 pw=url-pw-3"
        );
        let addr = server(Some(response(
            "302 Found",
            "location: http://other.example/?token=sekrit&key=header-key-2\r\n",
            echoed.as_bytes(),
        )))
        .await;
        let mut sub = sub_for(addr);
        sub.url = crate::config::WebhookUrl::new(
            format!("http://ann:url-pw-3@{addr}/hook?token=sekrit&x=a%20b%20c"),
            "shown",
        );
        sub.headers = vec![("X-Api-Key".into(), Secret::new("header-key-2"))];
        for auth in [
            Auth::Bearer {
                token: Secret::new("bearer-tok-1"),
            },
            Auth::Basic {
                username: "ann".into(),
                password: Secret::new("basic-pw-9"),
            },
        ] {
            sub.auth = Some(auth);
            let attempt = send_to(&sub).await;
            let seen = format!(
                "{} {:?} {:?}",
                attempt.response_excerpt, attempt.error, attempt.location
            );
            for secret in ["sekrit", "header-key-2", "url-pw-3", "a b c", "a%20b%20c"] {
                assert!(!seen.contains(secret), "{secret} in {seen}");
            }
            let own = match &sub.auth {
                Some(Auth::Bearer { .. }) => ["bearer-tok-1".to_owned()],
                _ => [basic.clone()],
            };
            assert!(!seen.contains(&own[0]), "{} in {seen}", own[0]);
            assert!(
                attempt
                    .error
                    .as_deref()
                    .unwrap()
                    .starts_with("redirect to http://other.example/?token=***&key=***"),
                "{seen}"
            );
        }
    }

    #[tokio::test]
    async fn a_500_is_retried() {
        let addr = server(Some(response("500 Internal Server Error", "", b"oops"))).await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.status, Some(500));
        assert_eq!(attempt.verdict.outcome, Outcome::Retry);
        assert_eq!(attempt.response_excerpt, "oops");
    }

    #[tokio::test]
    async fn a_429_keeps_retry_after() {
        let addr = server(Some(response(
            "429 Too Many Requests",
            "retry-after: 7\r\n",
            b"",
        )))
        .await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.retry_after.as_deref(), Some("7"));
        assert_eq!(
            attempt.verdict,
            Verdict::slow_down(Some(Duration::from_secs(7)))
        );
    }

    #[tokio::test]
    async fn a_hanging_server_times_out_within_the_timeout() {
        let addr = server(None).await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.verdict.outcome, Outcome::Retry);
        let error = attempt.error.unwrap();
        assert!(error.contains("timed out after 300 ms"), "{error}");
        assert!(attempt.duration >= Duration::from_millis(300));
        assert!(
            attempt.duration < Duration::from_secs(2),
            "{:?}",
            attempt.duration
        );
    }

    #[tokio::test]
    async fn a_huge_body_is_read_only_in_part() {
        let body = vec![b'x'; 5 * 1024 * 1024];
        let addr = server(Some(response("200 OK", "", &body))).await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.verdict.outcome, Outcome::Delivered);
        assert_eq!(attempt.response_excerpt.len(), EXCERPT_LIMIT);
    }

    #[tokio::test]
    async fn connection_refused_is_an_error_without_the_url() {
        // Bind and drop: the port is (almost certainly) closed now.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.verdict.outcome, Outcome::Retry);
        let error = attempt.error.unwrap();
        assert!(!error.contains("sekrit"), "{error}");
        assert!(error.to_lowercase().contains("connect"), "{error}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_names_the_location() {
        let addr = server(Some(response(
            "302 Found",
            "location: http://127.0.0.1:1/elsewhere\r\n",
            b"",
        )))
        .await;
        let attempt = send_to(&sub_for(addr)).await;
        assert_eq!(attempt.status, Some(302));
        assert_eq!(attempt.verdict.outcome, Outcome::Retry);
        assert_eq!(
            attempt.location.as_deref(),
            Some("http://127.0.0.1:1/elsewhere")
        );
        assert_eq!(
            attempt.error.as_deref(),
            Some("redirect to http://127.0.0.1:1/elsewhere: not followed")
        );
    }

    #[tokio::test]
    async fn the_network_policy_checks_the_url_of_the_target_not_the_configured_one() {
        // The configured URL is allowed (loopback is, here); the event's rendered URL is a
        // cloud-metadata address, which is always refused before anything is sent.
        let sub = sub_for("127.0.0.1:9".parse().unwrap());
        let target = Target {
            url: "http://169.254.169.254/latest/meta-data".into(),
            method: crate::config::Method::Put,
        };
        let client = network::http_client(policy()).unwrap();
        let attempt = send(&client, &policy(), &sub, Some(&target), "evt_1", b"{}").await;
        assert_eq!(attempt.status, None);
        let error = attempt.error.unwrap();
        assert!(error.contains("169.254.169.254"), "{error}");
    }

    #[tokio::test]
    async fn an_event_without_a_rendered_url_under_a_url_template_is_dead_and_not_sent() {
        let mut sub = subscription("http://127.0.0.1:9/orders/{{ key.id }}");
        sub.url_template = true;
        let attempt = send_to(&sub).await;
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.verdict.outcome, Outcome::Dead);
        assert!(
            attempt
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("the url is a template")),
            "{:?}",
            attempt.error
        );
    }

    #[tokio::test]
    async fn a_status_in_dead_on_status_is_dead_with_the_reason() {
        let addr = server(Some(response("400 Bad Request", "", b"bad data"))).await;
        let mut sub = sub_for(addr);
        sub.dead_on_status = vec![400, 422];
        let attempt = send_to(&sub).await;
        assert_eq!(attempt.status, Some(400));
        assert_eq!(attempt.verdict.outcome, Outcome::Dead);
        assert_eq!(
            attempt.error.as_deref(),
            Some("400 is in dead_on_status: dead after this attempt, not retried")
        );
    }

    #[tokio::test]
    async fn a_refused_address_is_not_contacted() {
        let sub = sub_for("127.0.0.1:9".parse().unwrap());
        let client = network::http_client(NetworkPolicy::default()).unwrap();
        let attempt = send(
            &client,
            &NetworkPolicy::default(),
            &sub,
            None,
            "evt_1",
            b"{}",
        )
        .await;
        assert_eq!(attempt.status, None);
        let error = attempt.error.unwrap();
        assert!(error.contains("127.0.0.1"), "{error}");
        assert!(!error.contains("sekrit"), "{error}");
    }

    #[test]
    fn nul_bytes_in_the_excerpt_become_replacement_characters() {
        assert_eq!(excerpt(b"bad\0body"), "bad\u{FFFD}body");
        let text = excerpt(&vec![0u8; 2 * EXCERPT_LIMIT]);
        assert!(text.len() <= EXCERPT_LIMIT && !text.contains('\0'));
    }

    #[test]
    fn the_excerpt_stays_within_the_limit_even_for_invalid_utf8() {
        let body = vec![0xFFu8; 2 * EXCERPT_LIMIT];
        let text = excerpt(&body);
        assert!(text.len() <= EXCERPT_LIMIT);
        assert!(text.starts_with('\u{FFFD}'));
    }
}

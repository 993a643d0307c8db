//! `walhook test SUBSCRIPTION [--key JSON]`: sends one signed test event now
//! ([`crate::delivery::test_event`]) and prints the request and the response (SPEC §1, §5).
//!
//! The event is an `update` of the subscription's object: the real row with `--key`, or
//! sample values made from the table's columns, rendered by the subscription's templates
//! as a real event would be. It is sent once and never retried.

use super::terminal::printable;
use crate::config::{redact_webhook_url, Auth, Config, Operation, SubscriptionConfig, Target};
use crate::delivery::network::{self, NetworkPolicy};
use crate::delivery::sender::Attempt;
use crate::delivery::test_event::{find, parse_key, send_test, TestError};

/// How much of the request and response bodies is printed.
const PRINT_LIMIT: usize = 1024;

/// Sends the test event; `Ok(true)` when the receiver answered 2xx.
pub async fn run(config: &Config, name: &str, key: Option<&str>) -> Result<bool, TestError> {
    let sub = find(config, name)?;
    let key = key.map(parse_key).transpose()?;
    let policy = NetworkPolicy::new(&config.delivery.allow_networks);
    let client = network::http_client(policy.clone())
        .map_err(|e| TestError::Failed(format!("HTTP client: {}", e.without_url())))?;
    let sent = send_test(config, sub, key, &client, &policy, |id, body, target| {
        print_request(sub, id, body, target)
    })
    .await?;
    print_response(&sent.attempt);
    if let Some(note) = &sent.not_recorded {
        println!("note: {note}");
    }
    Ok(sent.succeeded())
}

/// The request as sent, except secrets: auth and custom headers by name only, and a
/// rendered URL with its credentials hidden.
fn print_request(sub: &SubscriptionConfig, id: &str, body: &[u8], target: Option<&Target>) {
    match target {
        Some(target) => println!(
            "request: {} {}",
            target.method.as_str(),
            printable(&redact_webhook_url(&target.url), false)
        ),
        None => println!(
            "request: {} {}",
            sub.method.for_operation(Operation::Update).as_str(),
            sub.url
        ),
    }
    if !body.is_empty() {
        println!("  Content-Type: {}", sub.content_type);
    }
    println!("  webhook-id: {id}");
    match sub.secrets.len() {
        0 => println!("  webhook-signature: (none: the subscription has no secret)"),
        1 => println!("  webhook-signature: (1 signature)"),
        n => println!("  webhook-signature: ({n} signatures)"),
    }
    match &sub.auth {
        None => {}
        Some(Auth::Bearer { .. }) => println!("  Authorization: Bearer (hidden)"),
        Some(Auth::Basic { .. }) => println!("  Authorization: Basic (hidden)"),
        Some(Auth::Header { name, .. }) => println!("  {name}: (hidden)"),
    }
    for (name, _) in &sub.headers {
        println!("  {name}: (hidden)");
    }
    if !body.is_empty() {
        println!(
            "  body: {}",
            printable(&clip(&String::from_utf8_lossy(body)), false)
        );
    }
}

/// Status, latency and the start of the body, or the error.
fn print_response(attempt: &Attempt) {
    let ms = attempt.duration.as_millis();
    match attempt.status {
        Some(status) => println!("response: status {status} in {ms} ms"),
        None => println!("response: none after {ms} ms"),
    }
    // Both are the receiver's words (the error may quote a Location): printed escaped.
    if let Some(error) = &attempt.error {
        println!("  error: {}", printable(error, false));
    }
    if !attempt.response_excerpt.is_empty() {
        println!(
            "  body: {}",
            printable(&clip(&attempt.response_excerpt), false)
        );
    }
}

/// At most [`PRINT_LIMIT`] bytes of `text`, cut on a character boundary.
fn clip(text: &str) -> String {
    if text.len() <= PRINT_LIMIT {
        return text.to_owned();
    }
    let mut end = PRINT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(PRINT_LIMIT);
        let clipped = clip(&long);
        assert!(clipped.len() < PRINT_LIMIT + 40);
        assert!(clipped.ends_with("bytes in all)"));
    }
}

//! `walhook receive`: a real process on a free loopback port, real signed requests.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support;

use support::Receiver;
use walhook::config::SigningSecret;
use walhook::delivery::signing::signature_header;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn secret(text: &str) -> SigningSecret {
    SigningSecret::parse(text).unwrap()
}

/// POSTs `body` with the given Standard Webhooks headers; status and response body.
async fn post(
    receiver: &Receiver,
    id: &str,
    timestamp: i64,
    signature: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/hooks/erp", receiver.base))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("webhook-signature", signature);
    }
    let response = request.send().await.expect("send to walhook receive");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A correctly signed event, and its signature header.
fn signed(id: &str, timestamp: i64, body: &str) -> String {
    signature_header(&[secret(SECRET)], id, timestamp, body.as_bytes()).unwrap()
}

const EVENT: &str = r#"{"type":"invoice.posted","data":{"number":"INV/2024/0001"}}"#;

#[tokio::test]
async fn a_correctly_signed_event_is_accepted_and_printed() {
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let ts = now();
    let (status, _) = post(
        &receiver,
        "evt_good",
        ts,
        Some(&signed("evt_good", ts, EVENT)),
        EVENT,
    )
    .await;
    assert_eq!(status, 200);
    let out = receiver.output_until("INV/2024/0001", Duration::from_secs(5));
    assert!(out.contains("POST /hooks/erp"), "{out}");
    assert!(out.contains("evt_good"), "{out}");
    assert!(out.contains("signature verified"), "{out}");
    assert!(
        out.contains("\"type\": \"invoice.posted\""),
        "pretty JSON: {out}"
    );
    assert!(!out.contains(SECRET), "the secret leaked: {out}");
    assert_eq!(receiver.terminate(), 0);
}

#[tokio::test]
async fn bad_signatures_get_401_with_a_reason() {
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let ts = now();
    let good = signed("evt_1", ts, EVENT);
    let tag = good.strip_prefix("v1,").unwrap();
    let truncated = &good[..good.len() - 4];
    let other = signature_header(&[secret(OTHER_SECRET)], "evt_1", ts, EVENT.as_bytes()).unwrap();
    let cases = [
        ("empty", "".to_owned(), "empty"),
        ("truncated", truncated.to_owned(), "malformed"),
        ("v2 prefix", format!("v2,{tag}"), "no v1 signature"),
        ("v1a prefix", format!("v1a,{tag}"), "no v1 signature"),
        ("other secret", other, "matches"),
    ];
    for (what, header, reason) in cases {
        let (status, body) = post(&receiver, "evt_1", ts, Some(&header), EVENT).await;
        assert_eq!(status, 401, "{what}");
        assert!(body.contains(reason), "{what}: {body:?}");
        assert_eq!(body.lines().count(), 1, "{what}: one line: {body:?}");
    }
    let (status, body) = post(&receiver, "evt_1", ts, None, EVENT).await;
    assert_eq!(status, 401);
    assert!(body.contains("missing webhook-signature"), "{body:?}");
    // The same body signed correctly still passes: the receiver did not get stuck.
    let (status, _) = post(&receiver, "evt_1", ts, Some(&good), EVENT).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stale_timestamp_is_rejected() {
    let receiver = Receiver::start(&["--secret", SECRET], None);
    let stale = now() - 10 * 60;
    let header = signed("evt_old", stale, EVENT);
    let (status, body) = post(&receiver, "evt_old", stale, Some(&header), EVENT).await;
    assert_eq!(status, 401);
    assert!(body.contains("old"), "{body:?}");
    let out = receiver.output_until("evt_old", Duration::from_secs(5));
    assert!(out.contains("POST /hooks/erp"), "{out}");
}

#[tokio::test]
async fn the_standard_webhooks_test_vector_is_accepted_with_a_long_tolerance() {
    let receiver = Receiver::start(
        &[
            "--secret",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "--tolerance",
            "3650d",
        ],
        None,
    );
    let (status, _) = post(
        &receiver,
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1_649_367_553,
        Some("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="),
        r#"{"email":"test@example.com","username":"test_user"}"#,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_a_secret_everything_is_accepted_with_the_chosen_status() {
    let receiver = Receiver::start(&["--status", "503"], None);
    let batch = format!("[{EVENT},{EVENT}]");
    let (status, _) = post(&receiver, "batch_1", now(), None, &batch).await;
    assert_eq!(status, 503);
    let out = receiver.output_until("batch of 2 events", Duration::from_secs(5));
    assert!(out.contains("unsigned check skipped: no --secret"), "{out}");
    assert!(out.contains("batch_1"), "{out}");
    assert!(out.contains("answered 503"), "{out}");
}

#[tokio::test]
async fn the_authorization_a_subscription_sent_is_shown_with_the_answer() {
    let receiver = Receiver::start(&[], None);
    let response = reqwest::Client::new()
        .post(format!("{}/hooks/erp", receiver.base))
        .header("authorization", "Bearer workshop-token")
        .header("webhook-id", "evt_auth")
        .body(EVENT)
        .send()
        .await
        .expect("send to walhook receive");
    assert_eq!(response.status().as_u16(), 200);
    let out = receiver.output_until("INV/2024/0001", Duration::from_secs(5));
    assert!(
        out.contains("authorization: Bearer workshop-token"),
        "{out}"
    );
    assert!(out.contains("answered 200"), "{out}");
}

#[tokio::test]
async fn the_secret_defaults_to_the_environment() {
    let receiver = Receiver::start(&[], Some(SECRET));
    let ts = now();
    let (status, _) = post(&receiver, "evt_env", ts, None, EVENT).await;
    assert_eq!(status, 401);
    let header = signed("evt_env", ts, EVENT);
    let (status, _) = post(&receiver, "evt_env", ts, Some(&header), EVENT).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_over_10_mib_gets_413() {
    let receiver = Receiver::start(&[], None);
    let huge = "x".repeat(10 * 1024 * 1024 + 1);
    let (status, _) = post(&receiver, "evt_big", now(), None, &huge).await;
    assert_eq!(status, 413);
}

#[test]
fn sigterm_exits_0() {
    let receiver = Receiver::start(&["--secret", SECRET], None);
    assert_eq!(receiver.terminate(), 0);
}

#[test]
fn a_malformed_secret_is_a_usage_error_that_does_not_echo_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(["receive", "--listen", "127.0.0.1:0", "--secret", "hunter2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--secret"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn other_commands_still_need_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .arg("check")
        .current_dir(dir.path())
        .env_remove("WALHOOK_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

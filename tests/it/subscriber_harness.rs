//! The in-test webhook subscriber (tests/it/support/subscriber.rs) against a plain HTTP client.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support;

use support::{verify, Reply, Subscriber};
use walhook::config::SigningSecret;
use walhook::delivery::signing::signature_header;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// POSTs `body`; status and response body, or the client error.
fn post(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> Result<(u16, String), reqwest::Error> {
    rt.block_on(async {
        let response = client.post(url).body(body.to_owned()).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    })
}

#[test]
fn default_reply_is_204_and_the_request_is_recorded() {
    let sub = Subscriber::start();
    assert!(sub
        .url("hooks")
        .ends_with(&format!(":{}/hooks", sub.port())));
    let rt = runtime();
    let status = rt.block_on(async {
        client()
            .post(sub.url("/hooks?tenant=42"))
            .header("X-Custom", "Value")
            .header("content-type", "application/json")
            .body(r#"{"id":"evt_1"}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 204);

    let seen = sub.wait_for(1, Duration::from_secs(2));
    assert_eq!(seen.len(), 1);
    let first = &seen[0];
    assert_eq!(first.index, 0);
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/hooks?tenant=42");
    assert_eq!(first.header("x-custom"), Some("Value"));
    assert_eq!(first.header("X-CUSTOM"), Some("Value"));
    assert!(first.headers.iter().any(|(n, _)| n == "x-custom"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("missing"), None);
    assert_eq!(first.body, br#"{"id":"evt_1"}"#);
    assert_eq!(sub.count(), 1);
    assert_eq!(sub.requests().len(), 1);
}

#[test]
fn a_sequence_of_replies_then_the_last_repeats() {
    let sub = Subscriber::start();
    sub.respond_with_sequence(vec![
        Reply::status(500).body("boom"),
        Reply::status(200).header("X-Answer", "yes").body("fine"),
    ]);
    let rt = runtime();
    let client = client();
    let url = sub.url("/");
    assert_eq!(post(&rt, &client, &url, "").unwrap(), (500, "boom".into()));
    let header = rt.block_on(async {
        let response = client.post(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.headers()["x-answer"].to_str().unwrap().to_owned()
    });
    assert_eq!(header, "yes");
    assert_eq!(post(&rt, &client, &url, "").unwrap(), (200, "fine".into()));
    assert_eq!(sub.count(), 3);
}

#[test]
fn respond_sees_the_request() {
    let sub = Subscriber::start();
    sub.respond(|seen| {
        if seen.path == "/gone" {
            Reply::status(410)
        } else {
            Reply::status(429).header("Retry-After", "1")
        }
    });
    let rt = runtime();
    let client = client();
    assert_eq!(post(&rt, &client, &sub.url("/gone"), "").unwrap().0, 410);
    assert_eq!(post(&rt, &client, &sub.url("/x"), "").unwrap().0, 429);
}

#[test]
fn after_delays_the_answer() {
    let sub = Subscriber::start();
    sub.respond(|_| Reply::status(200).after(Duration::from_millis(300)));
    let rt = runtime();
    let started = Instant::now();
    assert_eq!(post(&rt, &client(), &sub.url("/"), "").unwrap().0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A client with a shorter timeout gives up: a hanging receiver.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = post(&rt, &impatient, &sub.url("/"), "").unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // The request was recorded on arrival, before the answer.
    assert_eq!(sub.count(), 2);
}

#[test]
fn max_concurrent_counts_requests_waiting_for_their_reply_together() {
    let sub = Subscriber::start();
    sub.respond(|_| Reply::status(204).after(Duration::from_millis(300)));
    let rt = runtime();
    let client = client();
    let url = sub.url("/");
    assert_eq!(sub.max_concurrent(), 0);
    post(&rt, &client, &url, "").unwrap();
    assert_eq!(sub.max_concurrent(), 1, "one at a time");
    rt.block_on(async {
        let three = (0..3).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.post(url).send().await.map(|r| r.status()) })
        });
        for request in three.collect::<Vec<_>>() {
            assert_eq!(request.await.unwrap().unwrap(), 204);
        }
    });
    assert_eq!(sub.max_concurrent(), 3, "three together");
}

#[test]
fn hang_up_closes_without_a_response() {
    let sub = Subscriber::start();
    sub.respond_with_sequence(vec![Reply::hang_up(), Reply::status(200)]);
    let rt = runtime();
    let client = client();
    let err = post(&rt, &client, &sub.url("/"), "{}").unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    assert_eq!(post(&rt, &client, &sub.url("/"), "{}").unwrap().0, 200);
    assert_eq!(sub.count(), 2);
}

#[test]
fn stop_refuses_and_drops_connections_restart_listens_again() {
    let sub = Subscriber::start();
    let port = sub.port();
    let rt = runtime();
    let client = client();
    assert_eq!(post(&rt, &client, &sub.url("/a"), "").unwrap().0, 204);
    // An idle open connection, as a keep-alive pool holds.
    let mut open = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    sub.stop();
    assert!(!sub.is_running());
    sub.stop(); // twice is fine
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 16];
    match open.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes from a stopped subscriber"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "still open"),
    }
    // The client's pooled connection is gone too: it cannot get through.
    let err = post(&rt, &client, &sub.url("/b"), "").unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    sub.restart();
    assert_eq!(sub.port(), port);
    assert_eq!(post(&rt, &client, &sub.url("/c"), "").unwrap().0, 204);
    let paths: Vec<String> = sub.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/a", "/c"]);
}

#[test]
fn stop_cuts_a_request_waiting_for_its_reply() {
    let sub = Subscriber::start();
    sub.respond(|_| Reply::status(200).after(Duration::from_secs(30)));
    let rt = runtime();
    let client = client();
    let url = sub.url("/");
    let pending = rt.spawn(async move { client.post(url).send().await });
    sub.wait_for(1, Duration::from_secs(2));
    let started = Instant::now();
    sub.stop();
    let result = rt.block_on(pending).unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn event_ids_of_objects_arrays_and_empty_bodies() {
    let sub = Subscriber::start();
    let rt = runtime();
    let client = client();
    let url = sub.url("/");
    post(&rt, &client, &url, r#"{"id":"evt_a","type":"x"}"#).unwrap();
    post(&rt, &client, &url, r#"[{"id":"evt_b"},{"id":"evt_c"}]"#).unwrap();
    rt.block_on(async { client.get(&url).send().await })
        .unwrap();
    let seen = sub.wait_for(3, Duration::from_secs(2));
    assert_eq!(seen[0].event_ids(), ["evt_a"]);
    assert_eq!(seen[1].event_ids(), ["evt_b", "evt_c"]);
    assert!(seen[2].event_ids().is_empty());
    assert_eq!(seen[2].method, "GET");
    assert_eq!(sub.all_event_ids(), ["evt_a", "evt_b", "evt_c"]);
}

#[test]
#[should_panic(expected = "expected 2 request(s)")]
fn wait_for_says_what_arrived() {
    let sub = Subscriber::start();
    let rt = runtime();
    post(&rt, &client(), &sub.url("/only"), "").unwrap();
    sub.wait_for(2, Duration::from_millis(200));
}

#[test]
fn verify_checks_signatures_post_and_get() {
    let sub = Subscriber::start();
    let rt = runtime();
    let client = client();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let secrets = [SigningSecret::parse(SECRET).unwrap()];
    let body = r#"{"id":"evt_1"}"#;
    let signed_post = signature_header(&secrets, "evt_1", now, body.as_bytes()).unwrap();
    let signed_get = signature_header(&secrets, "evt_2", now, b"").unwrap();
    rt.block_on(async {
        client
            .post(sub.url("/"))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", &signed_post)
            .body(body)
            .send()
            .await
            .unwrap();
        client
            .get(sub.url("/"))
            .header("webhook-id", "evt_2")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", &signed_get)
            .send()
            .await
            .unwrap();
        // Signed over another body.
        client
            .post(sub.url("/"))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", &signed_post)
            .body("{}")
            .send()
            .await
            .unwrap();
        client.post(sub.url("/")).send().await.unwrap();
    });
    let seen = sub.wait_for(4, Duration::from_secs(2));
    assert_eq!(verify(&seen[0], SECRET), Ok(()));
    assert_eq!(verify(&seen[1], SECRET), Ok(()));
    assert!(verify(&seen[0], OTHER_SECRET)
        .unwrap_err()
        .contains("matches"));
    assert!(verify(&seen[2], SECRET).is_err());
    assert!(verify(&seen[3], SECRET)
        .unwrap_err()
        .contains("no webhook-id"));
}

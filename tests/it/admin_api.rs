//! The admin API of `walhook run` (SPEC §6, §7) against a real daemon and a programmable
//! receiver: the token rules (writes need it; off loopback every call does), status and
//! subscriptions without a secret in sight, the delivery log with paging, pause and resume,
//! both replays, the test event, and unknown names answered with a suggestion.

use crate::support;
use support::{Sub, Toml};

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{start_daemon, wait_until, ConfigFile, Daemon, Reply, Subscriber, TestDb};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_TOKEN: &str = "admin-token-s3cret-value";
const AUTH_TOKEN: &str = "bearer-token-s3cret-value";
const HEADER_VALUE: &str = "tenant-header-s3cret-value";
const URL_TOKEN: &str = "url-query-s3cret-value";

/// Every secret of the configs below: none may appear in an answer.
const SECRETS: [&str; 5] = [SECRET, ADMIN_TOKEN, AUTH_TOKEN, HEADER_VALUE, URL_TOKEN];

/// Rows 1–5, each at `n = 0`.
const LEDGER: &str = "
CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 5) g;
";

/// A config with subscription `flow` on `url`, with auth, a custom header and a token in
/// the URL; `http` is the `[http]` table's body.
fn config(db: &TestDb<'_>, url: &str, http: &str) -> ConfigFile {
    Toml::new(db)
        .table("ledger", "public.ledger")
        .subscription(
            Sub::new("flow", "ledger", &format!("{url}?token={URL_TOKEN}"))
                .secret(SECRET)
                .with(&format!(
                    "auth = {{ type = \"bearer\", token = \"{AUTH_TOKEN}\" }}\n\
                     headers = {{ \"X-Tenant\" = \"{HEADER_VALUE}\" }}\n\
                     rate_limit = {{ per_second = 50, burst = 60 }}\n\
                     retry_schedule = [\"100ms\"]\n\
                     timeout = \"3s\""
                )),
        )
        .tail(&format!("[http]\n{http}"))
        .write()
}

/// `listen` on loopback with the admin token.
fn with_token() -> String {
    format!("listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"")
}

/// A daemon, its receiver and a client for its admin API.
struct Harness {
    db: TestDb<'static>,
    subscriber: Subscriber,
    daemon: Daemon,
    config: ConfigFile,
    base: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// One answer of the API.
#[derive(Debug)]
struct Answer {
    status: u16,
    json: Value,
    text: String,
    www_authenticate: Option<String>,
}

impl Answer {
    /// The `error` message of an error answer.
    fn error(&self) -> &str {
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {}", self.text))
    }
}

impl Harness {
    /// Starts the daemon with `http` as the `[http]` table and waits until it captures.
    fn start(http: &str) -> Harness {
        let db = TestDb::new(LEDGER);
        let subscriber = Subscriber::start();
        let config = config(&db, &subscriber.url("/hooks"), http);
        let daemon = start_daemon(&config);
        let base = format!("http://127.0.0.1:{}", port(&daemon.log_text()));
        Harness {
            db,
            subscriber,
            daemon,
            config,
            base,
            rt: tokio::runtime::Runtime::new().unwrap(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = self.rt.block_on(async {
            let mut request = self.client.request(method, &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_owned());
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let www_authenticate = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let text = response.text().await.unwrap();
            (status, text, www_authenticate)
        });
        let (status, text, www_authenticate) = answer;
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{url} answered with a secret ({secret}): {text}"
            );
        }
        let json = if path.starts_with("/api/") {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text:?}"))
        } else {
            Value::Null
        };
        Answer {
            status,
            json,
            text,
            www_authenticate,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, token, None)
    }

    fn post(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("POST", path, token, None)
    }

    /// A GET or POST that must answer 200; its JSON.
    fn ok(&self, method: &str, path: &str) -> Value {
        let answer = self.call(method, path, Some(ADMIN_TOKEN), None);
        assert_eq!(
            answer.status,
            200,
            "{method} {path}: {}\nlog:\n{}",
            answer.text,
            self.daemon.log_text()
        );
        answer.json
    }

    /// `GET /api/v1/deliveries?query`, the rows.
    fn deliveries(&self, query: &str) -> Vec<Value> {
        self.ok("GET", &format!("/api/v1/deliveries?{query}"))["deliveries"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `GET /api/v1/deliveries?query` lists `n` rows; returns them.
    fn wait_deliveries(&self, query: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.deliveries(query);
            if rows.len() == n {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} deliveries for {query:?} within {within:?}, got {rows:?}\nlog:\n{}",
                self.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One update of row `id`: one event for `flow`.
    fn touch(&self, id: i32) {
        self.db
            .sql(&format!("UPDATE ledger SET n = n + 1 WHERE id = {id}"));
    }
}

/// The port of `http server listening on ADDR:PORT` in the log.
fn port(log: &str) -> u16 {
    let after = log
        .split("http server listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no listening line in the log:\n{log}"));
    let addr = after.split_whitespace().next().unwrap();
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn on_loopback_reads_are_open_and_writes_need_the_token() {
    let h = Harness::start(&with_token());

    // Reads need no token on loopback.
    let status = h.get("/api/v1/status", None);
    assert_eq!(status.status, 200, "{}", status.text);
    let status = status.json;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["slot"]["name"]
        .as_str()
        .unwrap()
        .starts_with("slot_"));
    assert_eq!(status["outbox_error"], Value::Null);
    let flow = &status["subscriptions"][0];
    assert_eq!(flow["name"], "flow", "{status}");
    assert_eq!(flow["state"], "active", "{status}");
    assert_eq!(flow["configured"], true);
    assert_eq!(flow["rate_limit"]["per_second"], 50.0);
    assert_eq!(flow["rate_limit"]["burst"], 60);
    // The sampler fills in the slot and the checkpoint within a few seconds.
    wait_until(Duration::from_secs(20), "the status shows the slot", || {
        let status = h.ok("GET", "/api/v1/status");
        status["slot"]["found"] == true
            && status["slot"]["active"] == true
            && status["replication_connected"] == true
            && status["outbox_writable"] == true
            && status["slot"]["retained_wal_bytes"].is_i64()
            && status["slot"]["confirmed_flush_lsn"].is_string()
    });

    let subs = h.get("/api/v1/subscriptions", None);
    assert_eq!(subs.status, 200, "{}", subs.text);
    let flow = &subs.json["subscriptions"][0];
    assert_eq!(flow["name"], "flow");
    assert_eq!(flow["object"], "ledger");
    assert_eq!(flow["table"], "public.ledger");
    assert_eq!(
        flow["operations"],
        serde_json::json!(["create", "update", "delete"])
    );
    assert_eq!(flow["event_types"]["update"], "ledger.updated");
    assert_eq!(flow["method"], "POST");
    assert_eq!(flow["content_type"], "application/json");
    assert_eq!(flow["dead_on_status"], serde_json::json!([]));
    assert_eq!(flow["auth"], "bearer");
    assert_eq!(flow["headers"], serde_json::json!(["X-Tenant"]));
    assert_eq!(flow["signed"], true);
    assert_eq!(flow["secrets"], 1);
    assert_eq!(flow["ordering"], "key");
    assert_eq!(flow["active"], true);
    assert_eq!(flow["timeout"], "3s");
    assert_eq!(flow["retry_schedule"], serde_json::json!(["100ms"]));
    assert_eq!(flow["state"], "active");
    let url = flow["url"].as_str().unwrap();
    assert!(url.ends_with("/hooks?token=***"), "{url}");

    assert_eq!(h.get("/api/v1/deliveries", None).status, 200);

    // Writes need the token: 401 without it or with a wrong one, whatever the call.
    for path in [
        "/api/v1/subscriptions/flow/pause",
        "/api/v1/subscriptions/flow/resume",
        "/api/v1/subscriptions/flow/test",
        "/api/v1/subscriptions/flow/replay?status=dead",
        "/api/v1/deliveries/1/replay",
    ] {
        let missing = h.post(path, None);
        assert_eq!(missing.status, 401, "{path}: {}", missing.text);
        assert!(
            missing.error().contains("Authorization: Bearer"),
            "{}",
            missing.text
        );
        assert_eq!(
            missing.www_authenticate.as_deref(),
            Some("Bearer realm=\"walhook\"")
        );
        let wrong = h.post(path, Some("not-the-token"));
        assert_eq!(wrong.status, 401, "{path}: {}", wrong.text);
        assert!(
            wrong.error().contains("wrong admin token"),
            "{}",
            wrong.text
        );
    }
    // Nothing was paused by the refused calls.
    assert_eq!(
        h.ok("GET", "/api/v1/status")["subscriptions"][0]["state"],
        "active"
    );

    // Health and metrics stay open.
    assert_eq!(h.get("/healthz", None).status, 200);
    assert_eq!(h.get("/metrics", None).status, 200);

    // Unknown endpoints and methods answer JSON too.
    let nowhere = h.get("/api/v1/nowhere", None);
    assert_eq!(nowhere.status, 404, "{}", nowhere.text);
    assert!(
        nowhere.error().contains("/api/v1/nowhere"),
        "{}",
        nowhere.text
    );
    let wrong_method = h.get("/api/v1/subscriptions/flow/pause", None);
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text);
}

#[test]
fn without_an_admin_token_writes_are_refused_with_what_to_set() {
    let h = Harness::start("listen = \"127.0.0.1:0\"");
    assert_eq!(h.get("/api/v1/status", None).status, 200);
    let refused = h.post("/api/v1/subscriptions/flow/pause", Some("anything"));
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.error().contains("http.admin_token"),
        "{}",
        refused.text
    );
    assert_eq!(
        h.get("/api/v1/status", None).json["subscriptions"][0]["state"],
        "active"
    );

    // Setting a token takes effect with the reload, no restart.
    let text = std::fs::read_to_string(&h.config.path).unwrap();
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\""),
    );
    std::fs::write(&h.config.path, text).unwrap();
    h.daemon.signal("HUP");
    wait_until(
        Duration::from_secs(20),
        "the reloaded token is accepted",
        || {
            h.post("/api/v1/subscriptions/flow/pause", Some(ADMIN_TOKEN))
                .status
                == 200
        },
    );
    assert_eq!(
        h.post("/api/v1/subscriptions/flow/resume", None).status,
        401
    );
}

#[test]
fn off_loopback_every_api_call_needs_the_token() {
    let h = Harness::start(&format!(
        "listen = \"0.0.0.0:0\"\nadmin_token = \"{ADMIN_TOKEN}\""
    ));
    assert!(h
        .daemon
        .log_text()
        .contains("http server listening on 0.0.0.0:"));
    for path in [
        "/api/v1/status",
        "/api/v1/subscriptions",
        "/api/v1/deliveries",
    ] {
        let missing = h.get(path, None);
        assert_eq!(missing.status, 401, "{path}: {}", missing.text);
        assert_eq!(h.get(path, Some("wrong")).status, 401, "{path}");
        assert_eq!(h.get(path, Some(ADMIN_TOKEN)).status, 200, "{path}");
    }
    assert_eq!(h.post("/api/v1/subscriptions/flow/pause", None).status, 401);
    // Not the admin API: open as before.
    assert_eq!(h.get("/healthz", None).status, 200);
    // (Ready or not yet: either way no token is asked for.)
    assert!([200, 503].contains(&h.get("/readyz", None).status));
    assert_eq!(h.get("/metrics", None).status, 200);
}

#[test]
fn pause_holds_deliveries_back_and_resume_sends_them() {
    let h = Harness::start(&with_token());
    h.touch(1);
    h.subscriber.wait_for(1, Duration::from_secs(20));
    h.wait_deliveries("status=delivered", 1, Duration::from_secs(10));

    let paused = h.ok("POST", "/api/v1/subscriptions/flow/pause");
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["already_paused"], false);
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("paused through the admin API at 20"),
        "{reason}"
    );
    let again = h.ok("POST", "/api/v1/subscriptions/flow/pause");
    assert_eq!(again["already_paused"], true, "{again}");
    assert_eq!(again["reason"], reason);

    // The worker looks at least once a second.
    std::thread::sleep(Duration::from_millis(1_500));
    for id in 2..=4 {
        h.touch(id);
    }
    h.wait_deliveries("status=pending", 3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.subscriber.count(), 1, "a paused subscription sent");
    assert_eq!(h.deliveries("status=pending").len(), 3);

    let status = h.ok("GET", "/api/v1/status");
    let flow = &status["subscriptions"][0];
    assert_eq!(flow["state"], "paused", "{status}");
    assert_eq!(flow["reason"], reason);
    assert!(flow["since"].is_string());
    let subs = h.ok("GET", "/api/v1/subscriptions");
    assert_eq!(subs["subscriptions"][0]["state"], "paused");

    // A replay does not end a pause.
    let replayed = h.ok("POST", "/api/v1/subscriptions/flow/replay?status=dead");
    assert_eq!(replayed["replayed"], 0);
    assert_eq!(replayed["paused"], reason, "{replayed}");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(h.subscriber.count(), 1, "a replay ended the pause");

    let resumed = h.ok("POST", "/api/v1/subscriptions/flow/resume");
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["state"], "active");
    assert_eq!(resumed["previous_reason"], reason);
    h.subscriber.wait_for(4, Duration::from_secs(20));
    h.wait_deliveries("status=delivered", 4, Duration::from_secs(10));
    let resumed = h.ok("POST", "/api/v1/subscriptions/flow/resume");
    assert_eq!(resumed["resumed"], false, "{resumed}");

    // The log pages newest first, `next` leading to the older rows.
    let first = h.ok("GET", "/api/v1/deliveries?limit=3");
    let rows = first["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let next = first["next"].as_i64().expect("a next cursor");
    assert_eq!(next, ids[2]);
    let second = h.ok(
        "GET",
        &format!("/api/v1/deliveries?limit=3&before_id={next}"),
    );
    let older = second["deliveries"].as_array().unwrap();
    assert_eq!(older.len(), 1, "{second}");
    assert!(older[0]["id"].as_i64().unwrap() < next);
    assert_eq!(second["next"], Value::Null);
    for column in [
        "id",
        "subscription",
        "event_id",
        "event_type",
        "object",
        "key",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    ] {
        assert!(
            older[0].get(column).is_some(),
            "{column} missing: {}",
            older[0]
        );
    }
    assert_eq!(older[0]["key"]["id"], 1);
    assert_eq!(older[0]["subscription"], "flow");
}

#[test]
fn replays_resend_dead_deliveries_with_the_same_event_id() {
    let h = Harness::start(&with_token());
    h.subscriber.respond(|_| Reply::status(500));
    h.touch(1);
    let dead = h.wait_deliveries("status=dead", 1, Duration::from_secs(30));
    let id = dead[0]["id"].as_i64().unwrap();
    let event_id = dead[0]["event_id"].as_str().unwrap().to_owned();
    assert_eq!(dead[0]["attempts"], 2, "{dead:?}");
    assert_eq!(dead[0]["last_status_code"], 500);
    let before = h.subscriber.count();

    h.subscriber.respond(|_| Reply::status(204));
    let replayed = h.ok("POST", &format!("/api/v1/deliveries/{id}/replay"));
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert_eq!(replayed["event_id"], event_id.as_str());
    assert_eq!(replayed["was"], "dead");
    assert_eq!(replayed["subscription"], "flow");
    let seen = h.subscriber.wait_for(before + 1, Duration::from_secs(20));
    assert_eq!(seen[before].event_ids(), vec![event_id.clone()]);
    h.wait_deliveries("status=delivered", 1, Duration::from_secs(10));

    // A subscription's dead deliveries.
    h.subscriber.respond(|_| Reply::status(500));
    h.touch(2);
    let dead = h.wait_deliveries("status=dead", 1, Duration::from_secs(30));
    let event_id = dead[0]["event_id"].as_str().unwrap().to_owned();
    let before = h.subscriber.count();
    h.subscriber.respond(|_| Reply::status(204));
    let bad = h.post("/api/v1/subscriptions/flow/replay", Some(ADMIN_TOKEN));
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.error().contains("status=dead"), "{}", bad.text);
    let bad = h.post(
        "/api/v1/subscriptions/flow/replay?status=pending",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = h.post(
        "/api/v1/subscriptions/flow/replay?status=dead&since=yesterday",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(
        bad.error().starts_with("query parameter since:"),
        "{}",
        bad.text
    );

    let replayed = h.ok(
        "POST",
        "/api/v1/subscriptions/flow/replay?status=dead&since=1h",
    );
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert_eq!(replayed["status"], "dead");
    let seen = h.subscriber.wait_for(before + 1, Duration::from_secs(20));
    assert_eq!(seen[before].event_ids(), vec![event_id]);
    h.wait_deliveries("status=delivered", 2, Duration::from_secs(10));
    assert!(h.deliveries("status=dead").is_empty());
}

#[test]
fn the_test_endpoint_sends_a_signed_event_and_answers_with_the_receivers_reply() {
    let h = Harness::start(&with_token());
    // A receiver that echoes the request's headers: their credentials must not come back.
    h.subscriber.respond(|seen| {
        let headers: Vec<String> = seen
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        Reply::status(202).body(format!("{}\n{}", seen.path, headers.join("\n")))
    });
    let answer = h.ok("POST", "/api/v1/subscriptions/flow/test");
    assert_eq!(answer["status"], 202, "{answer}");
    assert_eq!(answer["success"], true);
    assert!(answer["latency_ms"].is_u64());
    let event_id = answer["event_id"].as_str().unwrap();
    assert!(event_id.starts_with("evt_test_"), "{event_id}");
    assert_eq!(answer["event"]["type"], "ledger.updated");
    assert_eq!(answer["recorded"], true);
    let excerpt = answer["response_excerpt"].as_str().unwrap();
    assert!(excerpt.contains("x-tenant: ***"), "{excerpt}");
    assert!(excerpt.contains("authorization: Bearer ***"), "{excerpt}");

    let seen = h.subscriber.wait_for(1, Duration::from_secs(5));
    assert_eq!(seen[0].event_ids(), vec![event_id.to_owned()]);
    support::verify(&seen[0], SECRET).unwrap();
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("Bearer {AUTH_TOKEN}"))
    );
    let attempts =
        h.db.sql("SELECT delivery_id IS NULL, trigger, status_code FROM walhook.attempts");
    assert_eq!(attempts.trim(), "t|test|202", "{attempts}");

    // A real row by key.
    h.subscriber
        .respond(|_| Reply::status(503).body("not today"));
    let answer = h.call(
        "POST",
        "/api/v1/subscriptions/flow/test",
        Some(ADMIN_TOKEN),
        Some(r#"{"key": {"id": 3}}"#),
    );
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["status"], 503);
    assert_eq!(answer.json["success"], false);
    assert_eq!(answer.json["response_excerpt"], "not today");
    assert_eq!(answer.json["event"]["key"]["id"], 3);
    assert_eq!(answer.json["event"]["values"]["n"], 0);
    // Test events are never retried and are no deliveries.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.subscriber.count(), 2);
    assert!(h.deliveries("").is_empty());

    let bad = h.call(
        "POST",
        "/api/v1/subscriptions/flow/test",
        Some(ADMIN_TOKEN),
        Some(r#"{"key": {"nope": 3}}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(
        bad.error().contains("did you mean \"n\"") || bad.error().contains("nope"),
        "{}",
        bad.text
    );
}

impl Harness {
    /// `method path` with extra headers (e.g. `Host`, `Origin`): the status and the body.
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.rt.block_on(async {
            let mut request = self.client.request(method, &url).bearer_auth(ADMIN_TOKEN);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        })
    }
}

#[test]
fn a_page_rebinding_its_name_to_loopback_is_refused_by_host() {
    let h = Harness::start(&with_token());
    let port = h.base.rsplit(':').next().unwrap().to_owned();
    for path in [
        "/api/v1/status",
        "/metrics",
        "/readyz",
        "/api/v1/deliveries",
    ] {
        for host in ["evil.example".to_owned(), format!("evil.example:{port}")] {
            let (status, body) = h.raw("GET", path, &[("host", &host)]);
            assert_eq!(status, 421, "{path} Host {host}: {body}");
            assert!(body.contains("DNS rebinding"), "{body}");
        }
    }
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
    ] {
        let (status, body) = h.raw("GET", "/api/v1/status", &[("host", &host)]);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
}

#[test]
fn a_cross_site_write_call_is_refused_even_with_the_token() {
    let h = Harness::start(&with_token());
    let pause = "/api/v1/subscriptions/flow/pause";
    let evil: &[&[(&str, &str)]] = &[
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
    ];
    for headers in evil {
        let (status, body) = h.raw("POST", pause, headers);
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(body.contains("from a web page"), "{body}");
    }
    let paused = h.db.sql("SELECT count(*) FROM walhook.subscription_state");
    assert_eq!(paused.trim(), "0", "a refused call paused: {paused}");
    // The same origin, and a plain client, still pause.
    let origin = h.base.clone();
    let (status, body) = h.raw(
        "POST",
        pause,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.raw("POST", "/api/v1/subscriptions/flow/resume", &[]);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn unknown_names_and_bad_parameters_say_what_and_where() {
    let h = Harness::start(&with_token());
    for (method, path) in [
        ("POST", "/api/v1/subscriptions/flwo/pause"),
        ("POST", "/api/v1/subscriptions/flwo/resume"),
        ("POST", "/api/v1/subscriptions/flwo/test"),
        ("POST", "/api/v1/subscriptions/flwo/replay?status=dead"),
        ("GET", "/api/v1/deliveries?subscription=flwo"),
    ] {
        let answer = h.call(method, path, Some(ADMIN_TOKEN), None);
        assert_eq!(answer.status, 404, "{path}: {}", answer.text);
        assert!(
            answer.error().contains("\"flwo\"")
                && answer.error().contains("did you mean \"flow\"?"),
            "{path}: {}",
            answer.text
        );
    }
    let answer = h.post("/api/v1/deliveries/999999/replay", Some(ADMIN_TOKEN));
    assert_eq!(answer.status, 404, "{}", answer.text);
    assert!(answer.error().contains("999999"), "{}", answer.text);

    for (path, needle) in [
        ("/api/v1/deliveries?status=daed", "did you mean \"dead\""),
        ("/api/v1/deliveries?limit=0", "query parameter limit"),
        ("/api/v1/deliveries?limit=lots", "query parameter limit"),
        (
            "/api/v1/deliveries?before_id=x",
            "query parameter before_id",
        ),
        ("/api/v1/deliveries?since=soon", "query parameter since"),
        (
            "/api/v1/deliveries?since=99999999999d",
            "query parameter since",
        ),
        (
            "/api/v1/deliveries?since=2026-02-30T08:00:00Z",
            "query parameter since",
        ),
        (
            "/api/v1/deliveries?subscription=%00",
            "query parameter subscription",
        ),
        ("/api/v1/deliveries?status=%00", "query parameter status"),
        (
            "/api/v1/deliveries?subscriptoin=flow",
            "did you mean \"subscription\"",
        ),
    ] {
        let answer = h.get(path, None);
        assert_eq!(answer.status, 400, "{path}: {}", answer.text);
        assert!(answer.error().contains(needle), "{path}: {}", answer.text);
    }
    for path in [
        "/api/v1/subscriptions/flow/replay?status=dead&since=99999999999d",
        "/api/v1/subscriptions/%00/replay?status=dead",
    ] {
        let answer = h.post(path, Some(ADMIN_TOKEN));
        assert_eq!(answer.status, 400, "{path}: {}", answer.text);
    }
    let answer = h.post("/api/v1/deliveries/abc/replay", Some(ADMIN_TOKEN));
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(answer.error().contains("\"abc\""), "{}", answer.text);
}

#[test]
fn a_subscription_switched_off_by_410_shows_so_and_resume_switches_it_back_on() {
    let h = Harness::start(&with_token());
    h.subscriber.respond(|_| Reply::status(410));
    h.touch(1);
    h.subscriber.wait_for(1, Duration::from_secs(20));
    let mut flow = Value::Null;
    wait_until(Duration::from_secs(10), "the status shows the 410", || {
        flow = h.ok("GET", "/api/v1/status")["subscriptions"][0].clone();
        flow["state"] == "deactivated"
    });
    let reason = flow["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("410 Gone"), "{flow}");
    let event_id = h.subscriber.requests()[0].event_ids()[0].clone();

    h.subscriber.respond(|_| Reply::status(204));
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(h.subscriber.count(), 1, "a deactivated subscription sent");
    let resumed = h.ok("POST", "/api/v1/subscriptions/flow/resume");
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["previous_reason"], reason.as_str());
    let seen = h.subscriber.wait_for(2, Duration::from_secs(20));
    assert_eq!(seen[1].event_ids(), vec![event_id]);
    h.wait_deliveries("status=delivered", 1, Duration::from_secs(10));
    assert_eq!(
        h.ok("GET", "/api/v1/subscriptions")["subscriptions"][0]["state"],
        "active"
    );
}

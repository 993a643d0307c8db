//! The daemon's own HTTP server (SPEC §7) from a test: its address from the log, and GETs
//! with a plain client on a small runtime of its own.

use std::time::Duration;

use super::{wait_until, Daemon};

/// A client for one daemon's `http.listen`.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Http {
    /// Waits until the daemon logs where it listens, then talks to it there.
    pub fn of(daemon: &Daemon) -> Http {
        const LINE: &str = "http server listening on ";
        let mut addr = None;
        wait_until(Duration::from_secs(30), "the http server listens", || {
            let log = daemon.log_text();
            addr = log.split_once(LINE).map(|(_, rest)| {
                rest.split_whitespace()
                    .next()
                    .expect("an address after the log line")
                    .to_owned()
            });
            addr.is_some()
        });
        Http::at(&format!("http://{}", addr.expect("found above")))
    }

    /// A client for `base` (`http://HOST:PORT`).
    pub fn at(base: &str) -> Http {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the HTTP client"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            base: base.to_owned(),
        }
    }

    /// GET `path`: status and body, or what went wrong.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let response = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .text()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
            Ok((status, body))
        })
    }

    /// `method path` with a bearer `token` and a JSON `body`, if given: status and body;
    /// panics when there is no response.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        self.runtime.block_on(async {
            let mut request = self.client.request(method, &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_owned());
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            (status, text)
        })
    }

    /// The status of GET `path`; panics when there is no response.
    pub fn status(&self, path: &str) -> u16 {
        self.get(path).unwrap_or_else(|e| panic!("{e}")).0
    }

    /// The text of `/metrics`; panics unless it answers 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }
}

/// The value of one series in Prometheus text, e.g.
/// `walhook_events_total{subscription="x"}`: the name and labels exactly as exported.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{series}: {value:?} is not a number"))
        })
    })
}

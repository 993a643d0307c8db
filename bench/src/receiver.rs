//! A fast local webhook receiver: answers 204 at once and counts what arrived.
//!
//! It does not verify signatures (the tests do that); the point is to cost walhook's
//! delivery as little CPU as a real receiver could, so the figures are walhook's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the receiver has seen so far.
#[derive(Default)]
pub struct Seen {
    requests: AtomicU64,
    events: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    /// Stock move id → when its 204 was sent (only when timing arrivals).
    arrivals: Mutex<HashMap<i64, Instant>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
    time_arrivals: bool,
}

impl Receiver {
    /// Listens on a free loopback port. With `time_arrivals`, every event's body is parsed
    /// and its arrival time kept under its `key.id`.
    pub async fn start(time_arrivals: bool) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let state = Arc::clone(&seen);
        let make = move || {
            let state = Arc::clone(&state);
            service_fn(move |req| handle(req, Arc::clone(&state), time_arrivals))
        };
        let limits = walhook::http::Limits {
            nodelay: true,
            ..Default::default()
        };
        // Until dropped: aborting the task closes every connection.
        let task = tokio::spawn(walhook::http::serve(
            listener,
            make,
            std::future::pending(),
            limits,
        ));
        Ok(Receiver {
            addr,
            seen,
            task,
            time_arrivals,
        })
    }

    /// The URL walhook delivers to.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Events received (each element of a batch counts).
    pub fn events(&self) -> u64 {
        self.seen.events.load(Ordering::Relaxed)
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    /// When the first and the last request were answered.
    pub fn first_and_last(&self) -> Option<(Instant, Instant)> {
        let first = (*self.seen.first.lock().expect("receiver lock"))?;
        let last = (*self.seen.last.lock().expect("receiver lock"))?;
        Some((first, last))
    }

    /// Arrival time of the event for stock move `id`, when timing arrivals.
    pub fn arrival(&self, id: i64) -> Option<Instant> {
        assert!(self.time_arrivals, "arrivals are timed only when asked for");
        self.seen
            .arrivals
            .lock()
            .expect("receiver lock")
            .get(&id)
            .copied()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every event object starts with its id (SPEC §3); counting this prefix counts events in
/// a single body and in a batch array alike, without parsing JSON.
const EVENT_START: &[u8] = b"{\"id\":\"evt_";

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    time_arrivals: bool,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    let events = body
        .windows(EVENT_START.len())
        .filter(|w| *w == EVENT_START)
        .count() as u64;
    let now = Instant::now();
    if time_arrivals {
        let mut arrivals = seen.arrivals.lock().expect("receiver lock");
        for id in stock_move_ids(&body) {
            arrivals.entry(id).or_insert(now);
        }
    }
    seen.first.lock().expect("receiver lock").get_or_insert(now);
    *seen.last.lock().expect("receiver lock") = Some(now);
    seen.requests.fetch_add(1, Ordering::Relaxed);
    seen.events.fetch_add(events, Ordering::Relaxed);
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Empty::new())
        .expect("static response"))
}

/// The `key.id` of every event in a body (one event or a batch array).
fn stock_move_ids(body: &[u8]) -> Vec<i64> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    let events = match value {
        serde_json::Value::Array(events) => events,
        one => vec![one],
    };
    events
        .iter()
        .filter_map(|e| e.get("key")?.get("id")?.as_i64())
        .collect()
}

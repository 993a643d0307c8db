//! A programmable webhook receiver for end-to-end delivery tests: an HTTP/1 server on
//! 127.0.0.1 that records every request and answers what the test tells it to.
//!
//! The tests are synchronous, so the server runs on a tokio runtime of its own (one worker
//! thread) and everything here blocks. Nothing in this API needs an async context, and it
//! may be used from one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use walhook::config::SigningSecret;
use walhook::delivery::signing;

/// How long `stop` waits for the server to close its sockets before failing the test.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `restart` keeps retrying a port that is still busy.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// How far a recorded `webhook-timestamp` may be from now for [`verify`].
const TOLERANCE: Duration = Duration::from_secs(300);

/// One request the subscriber received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path with query, e.g. `/hooks?x=1`.
    pub path: String,
    /// Headers in arrival order; names lower-case, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
    /// When its head arrived.
    pub at: Instant,
    /// Its position among all requests this subscriber received, from 0.
    pub index: usize,
}

impl Seen {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request #{} ({} {}) body is not JSON ({e}): {:?}",
                self.index,
                self.method,
                self.path,
                self.text()
            )
        })
    }

    /// The `id`s of the events in the body: one for an event object, one per element for a
    /// batch array, none for an empty body (a GET). Panics on a body that is neither.
    pub fn event_ids(&self) -> Vec<String> {
        if self.body.is_empty() {
            return Vec::new();
        }
        let id = |event: &serde_json::Value| -> String {
            event
                .get("id")
                .and_then(|id| id.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "request #{}: an event without a string \"id\": {event}",
                        self.index
                    )
                })
                .to_owned()
        };
        match self.json() {
            serde_json::Value::Array(events) => events.iter().map(id).collect(),
            event @ serde_json::Value::Object(_) => vec![id(&event)],
            other => panic!(
                "request #{}: body is neither an event nor a batch: {other}",
                self.index
            ),
        }
    }
}

/// What the subscriber answers to one request. Start with [`Reply::status`] (or
/// [`Reply::hang_up`]) and chain the rest.
#[derive(Debug, Clone)]
pub struct Reply {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Bytes,
    delay: Duration,
    hang_up: bool,
}

impl Default for Reply {
    /// 204 with an empty body, at once.
    fn default() -> Reply {
        Reply::status(204)
    }
}

impl Reply {
    /// Answers with this status and, unless [`Reply::body`] says otherwise, an empty body.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(code)
                .unwrap_or_else(|_| panic!("{code} is not an HTTP status")),
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            hang_up: false,
        }
    }

    /// Closes the connection without any response (after the delay, if any).
    pub fn hang_up() -> Reply {
        Reply {
            hang_up: true,
            ..Reply::default()
        }
    }

    /// Adds a response header (e.g. `Retry-After`, `Location`).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the response body.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Reply {
        self.body = Bytes::copy_from_slice(body.as_ref());
        self
    }

    /// Waits this long after the request arrived before answering (or hanging up): a slow
    /// receiver, or with a long delay one that hangs.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync + 'static>;

/// State shared by the test thread and the server tasks.
struct Shared {
    seen: Mutex<Vec<Seen>>,
    arrived: Condvar,
    responder: RwLock<Responder>,
    /// Requests being handled now: from the arrival of their head until the reply is handed
    /// to hyper (or the hang-up, or the connection going away).
    active: AtomicUsize,
    /// The most `active` ever was.
    max_active: AtomicUsize,
}

/// Counts one request as active while it lives.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: &Arc<Shared>) -> ActiveGuard {
        let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_active.fetch_max(now, Ordering::SeqCst);
        ActiveGuard(Arc::clone(shared))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The accept loop currently serving, if any.
struct Running {
    stop: oneshot::Sender<()>,
    stopped: mpsc::Receiver<()>,
}

/// A webhook receiver on `127.0.0.1:PORT`; see the module docs.
pub struct Subscriber {
    shared: Arc<Shared>,
    port: u16,
    running: Mutex<Option<Running>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Subscriber {
    /// Starts listening on a free port of 127.0.0.1, answering 204 to everything.
    pub fn start() -> Subscriber {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-subscriber")
            .enable_all()
            .build()
            .expect("start the subscriber's runtime");
        let default: Responder = Arc::new(|_: &Seen| Reply::default());
        let mut subscriber = Subscriber {
            shared: Arc::new(Shared {
                seen: Mutex::new(Vec::new()),
                arrived: Condvar::new(),
                responder: RwLock::new(default),
                active: AtomicUsize::new(0),
                max_active: AtomicUsize::new(0),
            }),
            port: 0,
            running: Mutex::new(None),
            runtime: Some(runtime),
        };
        let listener = subscriber
            .on_runtime(bind(0))
            .expect("bind the subscriber to 127.0.0.1:0");
        subscriber.port = listener.local_addr().expect("local address").port();
        subscriber.serve(listener);
        subscriber
    }

    /// The port it listens on (the same after [`Subscriber::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` followed by `path` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://127.0.0.1:{}{slash}{path}", self.port)
    }

    /// Answers every later request with `f(&request)`. Calls to `f` may run concurrently.
    pub fn respond(&self, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.shared.responder.write().unwrap() = Arc::new(f);
    }

    /// Answers the n-th request from now on with `replies[n]`, and every request after the
    /// last reply with the last reply again. "n-th" is the arrival order of
    /// [`Seen::index`].
    pub fn respond_with_sequence(&self, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "respond_with_sequence needs a reply");
        let first = self.count();
        self.respond(move |seen| {
            let n = seen.index.saturating_sub(first).min(replies.len() - 1);
            replies[n].clone()
        });
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived, then returns all of them; panics after
    /// `within` saying what did arrive.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        let mut seen = self.shared.seen.lock().unwrap();
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let list: Vec<String> = seen.iter().map(describe).collect();
                panic!(
                    "expected {n} request(s) on port {} within {within:?}, {} arrived{}",
                    self.port,
                    seen.len(),
                    if list.is_empty() {
                        String::new()
                    } else {
                        format!(":\n  {}", list.join("\n  "))
                    }
                );
            }
            seen = self.shared.arrived.wait_timeout(seen, left).unwrap().0;
        }
        seen.clone()
    }

    /// The event ids of every request body so far, flattened in arrival order (see
    /// [`Seen::event_ids`]).
    pub fn all_event_ids(&self) -> Vec<String> {
        self.requests().iter().flat_map(Seen::event_ids).collect()
    }

    /// The most requests it was handling at the same time so far: each counts from the
    /// arrival of its head until its reply is handed over (after any [`Reply::after`]
    /// delay). A sender's own count of requests in flight is never lower, since a request
    /// stays in flight until the reply reaches it.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// Whether it is currently listening.
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Stops listening and closes every open connection, so the next connection attempt is
    /// refused and pooled keep-alive connections break. Requests still waiting for their
    /// reply get none. Recorded requests stay. Does nothing when already stopped.
    pub fn stop(&self) {
        let Some(running) = self.running.lock().unwrap().take() else {
            return;
        };
        let _ = running.stop.send(());
        running
            .stopped
            .recv_timeout(STOP_TIMEOUT)
            .expect("the subscriber did not stop within 5 s");
    }

    /// Listens again on the same port after [`Subscriber::stop`], retrying for a few
    /// seconds while the port is still busy. Panics when already running.
    pub fn restart(&self) {
        assert!(!self.is_running(), "restart: the subscriber is running");
        let port = self.port;
        let listener = self
            .on_runtime(async move {
                let deadline = Instant::now() + REBIND_TIMEOUT;
                loop {
                    match bind(port).await {
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AddrInUse
                                && Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => return other,
                    }
                }
            })
            .unwrap_or_else(|e| panic!("rebind the subscriber to 127.0.0.1:{port}: {e}"));
        self.serve(listener);
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the subscriber's runtime")
    }

    /// Runs `future` on the subscriber's runtime and waits for it from any thread (unlike
    /// `block_on`, this works inside another runtime too).
    fn on_runtime<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.runtime().spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().expect("the subscriber's runtime went away")
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let shared = Arc::clone(&self.shared);
        self.runtime().spawn(async move {
            accept_loop(listener, shared, stop_rx).await;
            let _ = stopped_tx.send(());
        });
        *self.running.lock().unwrap() = Some(Running { stop, stopped });
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Close the sockets before the runtime goes, then drop it without blocking (a plain
        // drop would panic inside an async context). Not twice when a test already panics.
        if !std::thread::panicking() {
            self.stop();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Checks the Standard Webhooks signature of a recorded request with `secret` (`whsec_…`),
/// using walhook's own verifier and a 5 min timestamp tolerance. A GET is checked over an
/// empty body. The error says what is wrong.
pub fn verify(seen: &Seen, secret: &str) -> Result<(), String> {
    let secret = SigningSecret::parse(secret).map_err(|e| format!("bad secret: {e}"))?;
    let header = |name: &str| {
        seen.header(name)
            .ok_or_else(|| format!("request #{}: no {name} header", seen.index))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?.trim().parse().map_err(|_| {
        format!(
            "request #{}: webhook-timestamp is not unix seconds",
            seen.index
        )
    })?;
    let signature = header("webhook-signature")?;
    let body: &[u8] = if seen.method == "GET" {
        b""
    } else {
        &seen.body
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    signing::verify(&[secret], id, timestamp, body, signature, now, TOLERANCE)
        .map_err(|e| format!("request #{}: {e}", seen.index))
}

/// One line about a request, for failure messages.
fn describe(seen: &Seen) -> String {
    format!(
        "#{} {} {} webhook-id={} ({} bytes)",
        seen.index,
        seen.method,
        seen.path,
        seen.header("webhook-id").unwrap_or("-"),
        seen.body.len()
    )
}

/// A listener on 127.0.0.1:`port` with SO_REUSEADDR, so a restart is not refused by the
/// previous run's connections in TIME_WAIT.
async fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

/// Serves connections until `stop` fires (or its sender is dropped); then closes the
/// listener and every connection before returning.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&shared)));
                    // Errors are clients going away and our own hang-ups.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    drop(listener);
    // Aborts every connection task and waits until each has dropped its socket.
    connections.shutdown().await;
}

/// The error a handler returns to make hyper drop the connection without a response.
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hung up on purpose")
    }
}

impl std::error::Error for HangUp {}

/// Records one request, then answers it as the responder says.
async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, HangUp> {
    let at = Instant::now();
    let _active = ActiveGuard::new(&shared);
    let (parts, body) = req.into_parts();
    // A body cut short is recorded as far as it came.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let seen = {
        let mut all = shared.seen.lock().unwrap();
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            at,
            index: all.len(),
        };
        all.push(seen.clone());
        shared.arrived.notify_all();
        seen
    };
    let responder = Arc::clone(&shared.responder.read().unwrap());
    let reply = responder(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep_until((at + reply.delay).into()).await;
    }
    if reply.hang_up {
        return Err(HangUp);
    }
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for (name, value) in &reply.headers {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| panic!("bad header name {name:?}"));
        let value = hyper::header::HeaderValue::from_str(value)
            .unwrap_or_else(|_| panic!("bad header value {value:?}"));
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

//! `walhook demo`: the embedded default (SPEC §1).
//!
//! Starts a throw-away Postgres from the installed server binaries ([`crate::ephemeral`]),
//! loads the sample ERP of `sql/demo/`, writes a config with a few subscriptions to a
//! temporary directory, runs the daemon in-process ([`daemon::run_until`]) against a receiver
//! on loopback, performs the scripted [`story`] and prints each webhook as it arrives: event
//! type, key, the changed fields old → new, and whether the signature verified. Then stops
//! everything and removes the cluster and the config, unless `--keep`.

pub mod story;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, SigningSecret};
use crate::daemon::{self, DaemonError, RunOptions};
use crate::delivery::signing::{self, Verdict};
use crate::ephemeral::{self, EphemeralError, EphemeralPostgres};

/// The database the sample ERP lives in.
const DATABASE: &str = "erp";
/// Slot and publication of the demo daemon.
const SLOT: &str = "walhook_demo";
/// How long the story's webhooks may take to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long capture may take to start streaming.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The bearer token the `workshop` subscription sends and the receiver expects.
const WORKSHOP_TOKEN: &str = "demo-workshop-token";

/// What `walhook demo` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Keep everything running after the story, until Ctrl-C.
    pub keep: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No PostgreSQL server installation was found.
    #[error(
        "no PostgreSQL server binaries found: the demo starts a throw-away Postgres from the \
         locally installed server (initdb, pg_ctl, postgres) and needs nothing else.\n\
         Install the server package:\n  \
         Debian/Ubuntu: sudo apt-get install postgresql\n  \
         Fedora/RHEL:   sudo dnf install postgresql-server\n  \
         macOS:         brew install postgresql\n\
         or point WALHOOK_PG_BINDIR at the directory holding initdb and pg_ctl \
         (e.g. /usr/lib/postgresql/16/bin)"
    )]
    NoPostgres,
    /// The throw-away cluster failed.
    #[error("the throw-away Postgres: {0}")]
    Cluster(EphemeralError),
    /// Local files or sockets.
    #[error("{what}: {source}")]
    Io {
        /// What the demo was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The generated config did not load (a bug).
    #[error("the demo config: {0}")]
    Config(String),
    /// The daemon stopped with an error.
    #[error("walhook stopped: {0}")]
    Daemon(Box<DaemonError>),
    /// Ctrl-C or SIGTERM before the story ended.
    #[error("interrupted before the story ended; walhook stopped and everything was removed")]
    Interrupted,
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
}

impl From<DaemonError> for DemoError {
    fn from(e: DaemonError) -> Self {
        DemoError::Daemon(Box::new(e))
    }
}

impl From<EphemeralError> for DemoError {
    fn from(e: EphemeralError) -> Self {
        match e {
            EphemeralError::NoBinaries => DemoError::NoPostgres,
            other => DemoError::Cluster(other),
        }
    }
}

/// A subscription of the demo: where it is delivered and how it is checked.
struct Hook {
    secret: SigningSecret,
    bearer: Option<&'static str>,
}

/// One request as the receiver saw it, for the demo's bookkeeping.
struct Arrival {
    /// The event types in it; empty when rejected.
    types: Vec<String>,
}

/// Runs the demo; returns when the story is told (or, with `keep`, on Ctrl-C/SIGTERM).
pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| io("install a SIGTERM handler", source))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| io("install a SIGINT handler", source))?;
    ephemeral::find_bindir()?;
    say("▸ starting a throw-away Postgres from the installed server binaries …");
    let started = Instant::now();
    let cluster = blocking(|| {
        let pg = EphemeralPostgres::start(&ephemeral::Options::default())?;
        pg.create_database(DATABASE)?;
        pg.psql(DATABASE, story::SCHEMA)?;
        Ok::<_, EphemeralError>(pg)
    })
    .await?;
    let cluster = Arc::new(cluster);
    say(&format!(
        "▸ Postgres on 127.0.0.1:{} with the sample ERP (partners, invoices and lines, sales \
         orders, stock moves, work orders) in {:.1}s",
        cluster.port(),
        started.elapsed().as_secs_f64()
    ));

    // The receiver first: the config names its port.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| io("listen on 127.0.0.1", source))?;
    let receiver_addr = listener
        .local_addr()
        .map_err(|source| io("read the receiver's address", source))?;
    let admin_port = free_port()?;
    let mut hooks = HashMap::new();
    for name in SUBSCRIPTIONS {
        let bearer = (name == "workshop").then_some(WORKSHOP_TOKEN);
        let secret = SigningSecret::parse(&generate_secret()).map_err(DemoError::Config)?;
        hooks.insert(format!("/hooks/{name}"), Hook { secret, bearer });
    }
    let admin = Admin {
        port: admin_port,
        token: generate_admin_token(),
    };
    let text = config_text(&cluster.url(DATABASE), receiver_addr, &admin, &hooks);
    // In the cluster's directory, so a SIGKILL (which no cleanup survives) leaves nothing:
    // the cluster's watchdog removes both.
    let config_path = cluster.scratch_dir().join("walhook.toml");
    std::fs::write(&config_path, &text)
        .map_err(|source| io(&format!("write {}", config_path.display()), source))?;
    let config = Config::load(&config_path).map_err(|e| DemoError::Config(e.to_string()))?;

    let (stop, shutdown) = watch::channel(false);
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let receiver = tokio::spawn(serve(
        listener,
        Arc::new(hooks),
        arrivals_tx,
        shutdown.clone(),
    ));
    say(&format!(
        "▸ receiver on http://{receiver_addr}/hooks/…, verifying each subscription's whsec_ \
         signing secret"
    ));
    say(
        "▸ subscriptions: invoice-created (the invoice with its lines); invoice-lines (watch \
         invoice_lines); partner-sync (watch partner_id, old → new); invoice-posted (when state = 'posted'); stock-feed (batches); workshop (bearer auth)",
    );
    let run_options = RunOptions {
        config_path: config_path.clone(),
        no_setup: false,
    };
    let mut daemon = tokio::spawn(daemon::run_until(config, run_options, shutdown));

    let story = async {
        wait_until_streaming(&cluster, &mut daemon).await?;
        say("▸ walhook is capturing; the story begins\n");
        tell_story(&cluster, &mut arrivals).await?;
        if options.keep {
            keep_running(&cluster, &config_path, receiver_addr, &admin, &mut arrivals).await;
        }
        Ok::<_, DemoError>(())
    };
    // Ctrl-C or SIGTERM end the demo at any point, and everything is still cleaned up.
    let outcome = tokio::select! {
        outcome = story => outcome,
        _ = interrupt.recv() => interrupted(options.keep),
        _ = terminate.recv() => interrupted(options.keep),
    };

    let _ = stop.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(15), &mut daemon).await;
    receiver.abort();
    let daemon_result = match stopped {
        Ok(Ok(result)) => result.map_err(DemoError::from),
        Ok(Err(join)) => Err(DemoError::Config(format!("the daemon task failed: {join}"))),
        Err(_) => Err(DemoError::Timeout(
            "walhook did not stop within 15 s".to_owned(),
        )),
    };
    // The cluster and the config in its directory go when dropped, whatever happened.
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    outcome?;
    daemon_result?;
    say("\n▸ done: walhook stopped, the throw-away Postgres and the config are gone");
    Ok(())
}

/// Polls until the daemon's replication slot is being read and the invoice document is
/// seeded (a document's events begin at its seed: a step committed before it would be in
/// the seeded state, not an event); fails when the daemon ends. The slot is active only
/// once the migrations ran, so the second query always finds its table.
async fn wait_until_streaming(
    cluster: &Arc<EphemeralPostgres>,
    daemon: &mut tokio::task::JoinHandle<Result<(), DaemonError>>,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let queries = [
        format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}' AND active"),
        "SELECT count(*) FROM walhook.document_seed".to_owned(),
    ];
    let mut waiting = queries.iter().peekable();
    loop {
        let Some(query) = waiting.peek() else {
            return Ok(());
        };
        let pg = cluster.clone();
        let q = (*query).clone();
        let found = blocking(move || pg.psql(DATABASE, &q)).await?;
        if found.trim() == "1" {
            waiting.next();
            continue;
        }
        if daemon.is_finished() {
            return match daemon.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DemoError::Config(
                    "walhook stopped before it started capturing".to_owned(),
                )),
            };
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "walhook did not start capturing within {}s",
                READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs each step and waits until its webhooks have arrived.
async fn tell_story(
    cluster: &Arc<EphemeralPostgres>,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) -> Result<(), DemoError> {
    for (step, expected) in story::steps().into_iter().zip(story::EXPECTED) {
        say(&format!("● {}", step.title));
        let pg = cluster.clone();
        blocking(move || pg.psql(DATABASE, &step.sql)).await?;
        let mut missing: Vec<&str> = expected.to_vec();
        let deadline = Instant::now() + ARRIVAL_TIMEOUT;
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
                Ok(Some(arrival)) => {
                    for t in &arrival.types {
                        if let Some(i) = missing.iter().position(|m| m == t) {
                            missing.remove(i);
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    return Err(DemoError::Timeout(format!(
                        "these webhooks did not arrive within {}s: {}",
                        ARRIVAL_TIMEOUT.as_secs(),
                        missing.join(", ")
                    )))
                }
            }
        }
    }
    Ok(())
}

/// `--keep`: tell the user how to play, print what arrives until Ctrl-C or SIGTERM.
async fn keep_running(
    cluster: &EphemeralPostgres,
    config_path: &Path,
    receiver: SocketAddr,
    admin: &Admin,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) {
    say(&format!(
        "\n▸ still running (--keep); make changes by hand and watch them arrive:\n\
         \n  psql '{url}'\n    UPDATE account_invoice SET partner_id = 3 WHERE id = 1;\n\
         \n  config (edits apply without a restart): {config}\
         \n    a subscription you add with url = \"http://{receiver}/hooks/<any-name>\" is received too\
         \n  admin API: http://127.0.0.1:{port}/api/v1/status\
         \n    curl -X POST -H 'Authorization: Bearer {token}' \\\
         \n      http://127.0.0.1:{port}/api/v1/subscriptions/partner-sync/pause\
         \n  metrics:   http://127.0.0.1:{port}/metrics\
         \n\n  Ctrl-C stops walhook and removes the cluster and the config.\n",
        url = cluster.url(DATABASE),
        config = config_path.display(),
        port = admin.port,
        token = admin.token,
    ));
    // The receiver prints what arrives; this waits for the signal that ends the demo.
    while arrivals.recv().await.is_some() {}
    std::future::pending::<()>().await;
}

/// A signal: the normal end of `--keep`, an interruption of the story otherwise.
fn interrupted(keep: bool) -> Result<(), DemoError> {
    if keep {
        Ok(())
    } else {
        Err(DemoError::Interrupted)
    }
}

/// The demo's subscriptions, as its config names them.
const SUBSCRIPTIONS: [&str; 6] = [
    "invoice-created",
    "invoice-lines",
    "partner-sync",
    "invoice-posted",
    "stock-feed",
    "workshop",
];

/// The demo's config: four ways to subscribe to invoices, stock moves in batches, work
/// orders with bearer auth.
fn config_text(
    source_url: &str,
    receiver: SocketAddr,
    admin: &Admin,
    hooks: &HashMap<String, Hook>,
) -> String {
    let secret = |name: &str| hooks[&format!("/hooks/{name}")].secret.expose().to_owned();
    let url = |name: &str| format!("http://{receiver}/hooks/{name}");
    format!(
        r#"# Written by `walhook demo`; removed when the demo ends.
[source]
url = "{source_url}"
slot = "{SLOT}"
publication = "{SLOT}"

[outbox]
schema = "walhook"

[http]
listen = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"

[delivery]
timeout = "5s"
retry_schedule = ["1s", "5s", "30s"]
allow_networks = ["127.0.0.0/8"]
shutdown_timeout = "5s"

# An invoice is a document: one event per invoice and transaction, its lines nested.
[objects.invoice]
table = "public.account_invoice"
fields = ["number", "partner_id", "state", "amount_total"]

[[objects.invoice.children]]
name = "invoice_lines"
table = "public.account_invoice_line"
parent_key = ["invoice_id"]
fields = ["product", "quantity", "price_unit"]
order_by = ["id"]

[objects.stock_move]
table = "public.stock_move"
fields = ["product", "quantity", "location", "destination", "reference"]

[objects.work_order]
table = "public.work_order"

# Every new invoice.
[[subscriptions]]
name = "invoice-created"
object = "invoice"
operations = ["create"]
url = "{u1}"
secret = "{s1}"

# When a line is added, changed or removed: the whole invoice, the old lines in previous.
[[subscriptions]]
name = "invoice-lines"
object = "invoice"
operations = ["update"]
watch = ["invoice_lines"]
url = "{u6}"
secret = "{s6}"

# Only when the partner changes: old and new value (walhook keeps the invoice's state, so
# the table needs no REPLICA IDENTITY FULL).
[[subscriptions]]
name = "partner-sync"
object = "invoice"
operations = ["update"]
watch = ["partner_id"]
event_type = "invoice.partner-changed"
url = "{u2}"
secret = "{s2}"

# Only when an invoice is posted.
[[subscriptions]]
name = "invoice-posted"
object = "invoice"
operations = ["update"]
watch = ["state"]
when = "values.state == 'posted'"
event_type = "invoice.posted"
url = "{u3}"
secret = "{s3}"

# Stock moves as JSON arrays of up to 100 events.
[[subscriptions]]
name = "stock-feed"
object = "stock_move"
operations = ["create"]
batch = {{ max_events = 100, max_wait = "300ms" }}
url = "{u4}"
secret = "{s4}"

# Work order status, with a bearer token.
[[subscriptions]]
name = "workshop"
object = "work_order"
operations = ["update"]
watch = ["status"]
event_type = "work_order.status-changed"
auth = {{ type = "bearer", token = "{WORKSHOP_TOKEN}" }}
url = "{u5}"
secret = "{s5}"
"#,
        admin_port = admin.port,
        admin_token = admin.token,
        u1 = url("invoice-created"),
        s1 = secret("invoice-created"),
        u2 = url("partner-sync"),
        s2 = secret("partner-sync"),
        u3 = url("invoice-posted"),
        s3 = secret("invoice-posted"),
        u4 = url("stock-feed"),
        s4 = secret("stock-feed"),
        u5 = url("workshop"),
        s5 = secret("workshop"),
        u6 = url("invoice-lines"),
        s6 = secret("invoice-lines"),
    )
}

/// The built-in receiver: verifies each request against its subscription's secret (and
/// bearer token), prints one line per event and reports what arrived.
async fn serve(
    listener: TcpListener,
    hooks: Arc<HashMap<String, Hook>>,
    arrivals: mpsc::UnboundedSender<Arrival>,
    mut shutdown: watch::Receiver<bool>,
) {
    let make = || {
        let hooks = hooks.clone();
        let arrivals = arrivals.clone();
        service_fn(move |req| handle(req, hooks.clone(), arrivals.clone()))
    };
    let until = async move {
        let _ = shutdown.changed().await;
    };
    crate::http::serve(listener, make, until, crate::http::Limits::default()).await;
}

async fn handle(
    req: Request<Incoming>,
    hooks: Arc<HashMap<String, Hook>>,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let reply = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    };
    let hook = hooks.get(&path);
    if hook.is_none() && !path.starts_with("/hooks/") {
        say(&format!(
            "✗ {} {path}: not a /hooks/… path (404)",
            parts.method
        ));
        return reply(StatusCode::NOT_FOUND);
    }
    let body = match Limited::new(body, crate::http::MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            say(&format!("✗ {path}: could not read the body: {e}"));
            return reply(StatusCode::BAD_REQUEST);
        }
    };
    // A subscription the user added under --keep: its secret is theirs, so it is shown
    // without a check rather than refused.
    let Some(hook) = hook else {
        return accept(
            &path,
            &body,
            "your subscription: signature not checked",
            &arrivals,
        );
    };
    let verdict = signing::check_request(
        std::slice::from_ref(&hook.secret),
        &parts.headers,
        &body,
        crate::time::unix_secs(std::time::SystemTime::now()),
        Duration::from_secs(300),
    );
    if let Verdict::Rejected(reason) = verdict {
        say(&format!("✗ {path}: signature rejected: {reason} (401)"));
        let _ = arrivals.send(Arrival { types: Vec::new() });
        return reply(StatusCode::UNAUTHORIZED);
    }
    let mut checks = "signature verified".to_owned();
    if let Some(token) = hook.bearer {
        let sent = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(&format!("Bearer {token}")) {
            say(&format!("✗ {path}: missing or wrong bearer token (401)"));
            let _ = arrivals.send(Arrival { types: Vec::new() });
            return reply(StatusCode::UNAUTHORIZED);
        }
        checks.push_str(", bearer token ok");
    }
    accept(&path, &body, &checks, &arrivals)
}

/// Prints the events of an accepted request and answers 200 (400 for a body not JSON).
fn accept(
    path: &str,
    body: &[u8],
    checks: &str,
    arrivals: &mpsc::UnboundedSender<Arrival>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    };
    let events = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(events)) => events,
        Ok(event) => vec![event],
        Err(_) => {
            say(&format!("✗ {path}: the body is not JSON"));
            return reply(StatusCode::BAD_REQUEST);
        }
    };
    let total = events.len();
    let mut out = String::new();
    let mut types = Vec::new();
    for (n, event) in events.iter().enumerate() {
        let batch = (total > 1 || path.ends_with("stock-feed"))
            .then(|| format!("batch {}/{total}, ", n + 1));
        let _ = writeln!(
            out,
            "  {}  ({}{checks})",
            describe(event),
            batch.unwrap_or_default()
        );
        types.push(event["type"].as_str().unwrap_or("?").to_owned());
    }
    say(out.trim_end_matches('\n'));
    let _ = arrivals.send(Arrival { types });
    reply(StatusCode::OK)
}

/// One line for a person: `✓ type  object key  field: old → new`.
pub fn describe(event: &Value) -> String {
    let kind = event["type"].as_str().unwrap_or("?");
    let object = event["object"].as_str().unwrap_or("?");
    let key = compact(&event["key"]);
    let what = match event["operation"].as_str() {
        Some("update") => match event["changed"].as_array() {
            Some(changed) if !changed.is_empty() => changed
                .iter()
                .filter_map(Value::as_str)
                .map(|field| {
                    let (old, new) = (&event["previous"][field], &event["values"][field]);
                    match (old.as_array(), new.as_array()) {
                        (Some(old), Some(new)) => {
                            format!("{field}: {} → {}", old.len(), lines(new.len()))
                        }
                        _ => format!("{field}: {} → {}", compact(old), compact(new)),
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => "updated".to_owned(),
        },
        Some("delete") => "deleted".to_owned(),
        _ => match event["values"].as_object() {
            Some(values) => values
                .iter()
                .filter(|(field, _)| event["key"].get(field.as_str()).is_none())
                .map(|(field, value)| match value.as_array() {
                    Some(rows) => format!("{field}: {}", lines(rows.len())),
                    None => format!("{field}: {}", compact(value)),
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        },
    };
    format!("✓ {kind:<26} {object} {key}  {what}")
}

/// A collection's size, as a person says it.
fn lines(n: usize) -> String {
    match n {
        1 => "1 line".to_owned(),
        n => format!("{n} lines"),
    }
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Where the admin API listens and the token its write calls need.
struct Admin {
    port: u16,
    token: String,
}

/// A fresh Standard Webhooks signing secret.
fn generate_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A token for the admin API's write calls (pause, resume, replay), printed with `--keep`.
fn generate_admin_token() -> String {
    let key: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| io("find a free port on 127.0.0.1", source))
}

async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, DemoError>
where
    T: Send + 'static,
    E: Into<DemoError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DemoError::Config(format!("a background task failed: {e}")))?
        .map_err(Into::into)
}

fn io(what: &str, source: std::io::Error) -> DemoError {
    DemoError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Prints a line to stdout at once (concurrent requests must not interleave).
fn say(text: &str) {
    crate::os::emit(&format!("{text}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_shows_old_and_new() {
        let event = serde_json::json!({
            "type": "invoice.partner-changed", "object": "invoice", "operation": "update",
            "key": {"id": 1}, "values": {"partner_id": 2, "state": "draft"},
            "previous": {"partner_id": 1}, "changed": ["partner_id"]
        });
        let line = describe(&event);
        assert!(line.starts_with("✓ invoice.partner-changed"), "{line}");
        assert!(
            line.ends_with("invoice {\"id\":1}  partner_id: 1 → 2"),
            "{line}"
        );
    }

    #[test]
    fn a_changed_collection_shows_how_many_lines() {
        let event = serde_json::json!({
            "type": "invoice.updated", "object": "invoice", "operation": "update",
            "key": {"id": 1}, "values": {"state": "draft", "invoice_lines": [{}, {}, {}]},
            "previous": {"invoice_lines": [{}, {}]}, "changed": ["invoice_lines"]
        });
        let line = describe(&event);
        assert!(
            line.ends_with("invoice {\"id\":1}  invoice_lines: 2 → 3 lines"),
            "{line}"
        );
    }

    #[test]
    fn a_create_shows_its_values() {
        let event = serde_json::json!({
            "type": "stock_move.created", "object": "stock_move", "operation": "create",
            "key": {"id": 3}, "values": {"product": "Oak", "quantity": "20.000"}
        });
        let line = describe(&event);
        assert!(
            line.contains("product: \"Oak\", quantity: \"20.000\""),
            "{line}"
        );
    }

    #[test]
    fn without_postgres_the_package_to_install_is_named() {
        let message = DemoError::from(EphemeralError::NoBinaries).to_string();
        for needed in [
            "apt-get install postgresql",
            "brew install postgresql",
            "WALHOOK_PG_BINDIR",
        ] {
            assert!(message.contains(needed), "{message}");
        }
    }

    #[test]
    fn the_generated_config_loads() {
        let hooks: HashMap<String, Hook> = SUBSCRIPTIONS
            .iter()
            .map(|name| {
                let secret = SigningSecret::parse(&generate_secret()).unwrap();
                (
                    format!("/hooks/{name}"),
                    Hook {
                        secret,
                        bearer: None,
                    },
                )
            })
            .collect();
        let admin = Admin {
            port: 9187,
            token: generate_admin_token(),
        };
        let text = config_text(
            "postgres://postgres@127.0.0.1:5432/erp",
            "127.0.0.1:9999".parse().unwrap(),
            &admin,
            &hooks,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walhook.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.subscriptions.len(), SUBSCRIPTIONS.len());
    }
}

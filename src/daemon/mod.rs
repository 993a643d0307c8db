//! `walhook run`: the daemon. Takes the active lock (or waits as a standby while another
//! process holds it), prepares the database (migrations, publication, slot), then runs
//! capture sessions (replication → matcher → outbox) until a signal, reconnecting with
//! backoff when the connection drops, and applies config edits without a restart.

mod active;
mod backfill;
mod capture;
mod reload;
mod retention;
mod seed;
pub mod slot;
mod startup;

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::capture::document::Documents;
use crate::capture::matcher::{Matcher, MatcherError};
use std::sync::Arc;

use crate::config::Config;
use crate::delivery::network::{self, NetworkPolicy};
use crate::delivery::{self, DispatchError};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::pg::conninfo::ConnInfo;
use crate::server::{self, ServeError, ServerState};

pub use startup::StartupError;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Preparing the database or validating the config against it failed.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// A `when` expression does not compile.
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    /// A capture session failed in a way reconnecting cannot fix.
    #[error(transparent)]
    Session(#[from] capture::SessionError),
    /// The dispatcher could not start.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The HTTP server could not listen.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The connection holding the active lock ended and another process took the lock.
    #[error(
        "lost the active lock on {what} ({reason}): stopping, so that two walhooks are never \
         active at once; started again (a supervisor does that) walhook waits as a standby"
    )]
    LockLost {
        /// `<schema>/<slot>`.
        what: String,
        /// Why the connection ended.
        reason: String,
    },
}

impl DaemonError {
    /// Exit code per SPEC §1: 2 for a config the database cannot serve, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Matcher(_) => 2,
            DaemonError::Startup(e) if e.is_config_problem() => 2,
            _ => 1,
        }
    }
}

/// Options of `walhook run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file, watched for edits.
    pub config_path: PathBuf,
    /// Skip migrations, publication sync and slot creation (`--no-setup`).
    pub no_setup: bool,
}

/// How soon a capture session tries a slot again that another connection holds: after a
/// takeover, the previous process's walsender lets go of it within moments.
const SLOT_BUSY_RETRY: Duration = Duration::from_millis(500);

/// Runs the daemon until SIGTERM/SIGINT (Ok) or an unrecoverable error. While another
/// process is active for the same outbox schema and slot, waits as a standby: no capture, no
/// delivery, no HTTP server (two instances of one config may share a host).
pub async fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    run_until(config, options, spawn_signal_watch()).await
}

/// [`run`] with a shutdown of the caller's: the daemon stops (as on SIGTERM) when `shutdown`
/// turns true. `walhook demo` runs the daemon in-process this way.
pub async fn run_until(
    config: Config,
    options: RunOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    // A document subscription's `when` and templates compile now, as a row one's do (the
    // column types come from the catalog once capture starts).
    Documents::new(&config, &Default::default())?;
    crate::os::raise_open_file_limit();
    // SIGHUP would end a standby (its default action) before the reload watch exists.
    let hangup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    let matcher = Matcher::new(&config)?;
    let source = config.source.conninfo.clone();
    let outbox = config.outbox_conninfo().clone();
    let what = active::lock_name(&config.outbox.schema, &config.source.slot);
    let mut lock = tokio::select! {
        lock = active::acquire(&outbox, &what) => lock?,
        _ = shutdown.changed() => return Ok(()),
    };
    drop(hangup);
    let (config, matcher) = if lock.waited.is_zero() {
        tracing::info!("active: no other walhook holds {what}");
        (config, matcher)
    } else {
        tracing::info!(
            "active: took over {what} after {:.1}s as a standby",
            lock.waited.as_secs_f64()
        );
        // The file may have been edited (and the old active reloaded it) meanwhile.
        current_config(&options, config, matcher)
    };
    tokio::select! {
        result = run_active(config, matcher, source, outbox, options, shutdown) => result,
        reason = lock.lost() => Err(DaemonError::LockLost {
            what: lock.what.clone(),
            reason,
        }),
    }
}

/// The config file as it is now, for a standby that takes over; the config it started with
/// when the file no longer loads.
fn current_config(options: &RunOptions, started: Config, matcher: Matcher) -> (Config, Matcher) {
    let loaded = Config::load(&options.config_path).map_err(|e| e.to_string());
    let reread = loaded.and_then(|mut new| {
        reload::keep_connection_settings(&started, &mut new);
        Matcher::new(&new)
            .map(|m| (new, m))
            .map_err(|e| e.to_string())
    });
    match reread {
        Ok(current) => current,
        Err(e) => {
            tracing::error!(
                "the config file no longer loads; running with the config read at start:\n{e}"
            );
            (started, matcher)
        }
    }
}

/// The active process: HTTP server, database preparation, dispatcher and capture sessions.
async fn run_active(
    config: Config,
    mut matcher: Matcher,
    source: ConnInfo,
    outbox: ConnInfo,
    options: RunOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new());
    for sub in &config.subscriptions {
        metrics.know_subscription(&sub.name);
    }
    let health = Arc::new(Health::default());
    let samples = health::spawn(
        &config,
        source.clone(),
        outbox.clone(),
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    );
    // The running config: replaced when a reload is applied; the dispatcher and the admin
    // API read it.
    let running = Arc::new(watch::channel(Arc::new(config.clone())).0);
    let policy = NetworkPolicy::new(&config.delivery.allow_networks);
    let state = ServerState {
        metrics: metrics.clone(),
        health: health.clone(),
        sample: samples,
        config: running.subscribe(),
        listen: config.http.listen,
        outbox: outbox.clone(),
        schema: config.outbox.schema.clone(),
        http: network::http_client(policy.clone()).map_err(DispatchError::from)?,
        policy,
    };
    let listening = server::spawn(config.http.listen, state, shutdown.clone()).await?;
    tracing::info!("http server listening on {listening} (/metrics, /healthz, /readyz, /api/v1/…)");
    if !config.http.listen.ip().to_canonical().is_loopback() && config.http.admin_token.is_none() {
        tracing::warn!(
            "http.listen {} is not a loopback address and http.admin_token is not set: the \
             admin API refuses every call until a token is set",
            config.http.listen
        );
    }
    tokio::select! {
        prepared = startup::prepare(&config, &source, &outbox, !options.no_setup) => prepared?,
        _ = shutdown.changed() => return Ok(()),
    }
    // The migrations have just committed to the outbox: it is writable now, and a fresh
    // sample fills in the rest without waiting for the next tick.
    health.outbox_committed();
    health.sample_now.notify_one();

    let (dispatch, dispatcher) = delivery::dispatcher::spawn(
        running.clone(),
        outbox.clone(),
        metrics.clone(),
        shutdown.clone(),
    )?;
    let _retention = retention::spawn(
        outbox.clone(),
        dispatch.config(),
        metrics.clone(),
        shutdown.clone(),
    );
    // A few chunk reads' messages: the task has at most two under way.
    let (chunks_tx, mut chunks) = mpsc::channel(16);
    let _backfill = backfill::spawn(
        source.clone(),
        outbox.clone(),
        dispatch.config(),
        chunks_tx,
        shutdown.clone(),
    );
    let (reload_tx, mut reloads) = mpsc::channel::<Config>(4);
    let _watcher = reload::spawn(
        options.config_path.clone(),
        config.clone(),
        reload_tx,
        metrics.clone(),
    );

    let mut config = config;
    // A valid edit that arrived mid-transaction waits here for the transaction boundary,
    // across reconnects.
    let mut staged = None;
    let mut backoff = Duration::from_millis(200);
    let mut busy = 0u32;
    loop {
        let session = capture::Session {
            source: &source,
            outbox: &outbox,
            dispatch: &dispatch,
            metrics: &metrics,
            health: &health,
        };
        let outcome = session
            .run(
                &mut matcher,
                &mut config,
                &mut staged,
                capture::Inbox {
                    reloads: &mut reloads,
                    chunks: &mut chunks,
                    shutdown: &mut shutdown,
                },
                &mut backoff,
            )
            .await;
        let slot_busy = matches!(&outcome, Err(e) if e.is_slot_busy());
        let wait = match outcome {
            Ok(capture::Ended::Signal) => break,
            Ok(capture::Ended::Reseed) => {
                tracing::info!(
                    "a config edit changed what documents keep: seeding, then capturing"
                );
                continue;
            }
            Ok(capture::Ended::ServerClosed) => {
                tracing::warn!(
                    "the server ended the replication stream; reconnecting in {backoff:?}"
                );
                backoff
            }
            Err(e) if slot_busy => {
                // Soon after a takeover this is the previous process's connection on its
                // way out: try again at a short, steady pace, and say so without flooding
                // the log if something else keeps the slot.
                busy += 1;
                if busy <= 5 || busy.is_multiple_of(60) {
                    tracing::warn!("{e}; trying again in {SLOT_BUSY_RETRY:?}");
                }
                SLOT_BUSY_RETRY
            }
            Err(e) if e.is_transient() => {
                tracing::warn!("{e}; reconnecting in {backoff:?}");
                backoff
            }
            Err(e) => return Err(e.into()),
        };
        if !slot_busy {
            busy = 0;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // The dispatcher saw the same signal: it lets requests in flight finish.
    let _ = dispatcher.await;
    Ok(())
}

/// A channel that turns true on the first SIGTERM or SIGINT.
fn spawn_signal_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut sigint = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

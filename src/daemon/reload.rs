//! Config reload: a file watch and SIGHUP re-read the file; a valid edit goes to the capture
//! session, an invalid one is logged and the running config stays.
//!
//! The directory is watched rather than the file, because editors and config-management
//! tools replace files (write a temporary file, rename it over the old one), which ends a
//! watch on the file itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;

/// Edits arriving this close together are read once.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts watching `path`; each valid edit is sent on `reloads`. The returned watcher must
/// be kept alive for the watch to last.
pub(super) fn spawn(
    path: PathBuf,
    running: Config,
    reloads: mpsc::Sender<Config>,
    metrics: Arc<Metrics>,
) -> Option<notify::RecommendedWatcher> {
    let (tx, mut changed) = mpsc::channel::<()>(16);
    let file_name = path.file_name().map(|n| n.to_owned());
    let watcher = {
        let tx = tx.clone();
        let file_name = file_name.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == file_name.as_deref());
                if ours && !event.kind.is_access() {
                    let _ = tx.try_send(());
                }
            }
        })
    };
    let watcher = match watcher.and_then(|mut w| {
        w.watch(watch_dir(&path), RecursiveMode::NonRecursive)
            .map(|()| w)
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot watch the config file ({e}); SIGHUP still reloads it");
            None
        }
    };
    let mut sighup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    tokio::spawn(async move {
        let mut running = running;
        loop {
            tokio::select! {
                Some(()) = changed.recv() => {
                    // Let a burst of writes finish, then read once.
                    tokio::time::sleep(SETTLE).await;
                    while changed.try_recv().is_ok() {}
                }
                _ = sighup.recv() => tracing::info!("SIGHUP: reloading the config"),
            }
            match Config::load(&path) {
                Ok(mut new) => {
                    keep_connection_settings(&running, &mut new);
                    running = new.clone();
                    if reloads.send(new).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.reload_rejected();
                    tracing::error!("config reload rejected, the running config stays:\n{e}")
                }
            }
        }
    });
    drop(tx);
    watcher
}

fn watch_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Where walhook reads from and writes to cannot change under a running capture: those
/// keys keep their values until a restart, and a changed one is logged.
pub(super) fn keep_connection_settings(running: &Config, new: &mut Config) {
    let differs = new.source.url.expose() != running.source.url.expose()
        || new.source.slot != running.source.slot
        || new.source.publication != running.source.publication
        || new.outbox.schema != running.outbox.schema
        || new.outbox.url.as_ref().map(|u| u.expose())
            != running.outbox.url.as_ref().map(|u| u.expose());
    if differs {
        tracing::warn!(
            "[source] url/slot/publication and [outbox] url/schema take effect only after a restart"
        );
    }
    new.source = running.source.clone();
    new.outbox = running.outbox.clone();
}

//! Config reload: a file watch and SIGHUP re-read the file; a valid edit goes to the capture
//! session, an invalid one is logged and the running config stays.
//!
//! The directory is watched rather than the file, because editors and config-management
//! tools replace files (write a temporary file, rename it over the old one), which ends a
//! watch on the file itself. A subscription's `template_file` is part of the config: an
//! edit of one reloads too, so its directory is watched as well.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{Config, TemplateOrigin};
use crate::metrics::Metrics;

/// Edits arriving this close together are read once.
const SETTLE: Duration = Duration::from_millis(200);

/// A file whose edits reload the config: its directory (canonical, as watched) and name.
type WatchedFile = (PathBuf, OsString);

/// The config file and every `template_file` of `config`, by directory and name. A file
/// whose directory does not exist (yet) is left out; SIGHUP still reloads.
fn watched_files(path: &Path, config: &Config) -> BTreeSet<WatchedFile> {
    let templates =
        config
            .subscriptions
            .iter()
            .filter_map(|sub| match &sub.template.as_ref()?.origin {
                TemplateOrigin::File { resolved, .. } => Some(resolved.as_path()),
                TemplateOrigin::Inline { .. } => None,
            });
    std::iter::once(path)
        .chain(templates)
        .filter_map(|file| {
            let dir = std::fs::canonicalize(watch_dir(file)).ok()?;
            Some((dir, file.file_name()?.to_owned()))
        })
        .collect()
}

/// Whether a changed `path` is one of `files`.
fn is_watched(path: &Path, files: &BTreeSet<WatchedFile>) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    // Cheap first: most events in a watched directory are about other files.
    if !files.iter().any(|(_, watched)| watched == name) {
        return false;
    }
    std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .is_ok_and(|dir| files.contains(&(dir, name.to_owned())))
}

/// Watches the directory of every file in `files` not yet watched, recording it in `dirs`.
fn watch_dirs(
    watcher: &mut notify::RecommendedWatcher,
    files: &BTreeSet<WatchedFile>,
    dirs: &mut BTreeSet<PathBuf>,
) {
    for (dir, _) in files {
        if dirs.contains(dir) {
            continue;
        }
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                dirs.insert(dir.clone());
            }
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                "cannot watch for edits of the config or its templates ({e}); SIGHUP still reloads"
            ),
        }
    }
}

/// Keeps the file watch alive while held.
pub(super) type WatchGuard = Arc<Mutex<notify::RecommendedWatcher>>;

/// Starts watching `path` and the template files of `running`; each valid edit is sent on
/// `reloads`. The returned guard must be kept alive for the watch to last.
pub(super) fn spawn(
    path: PathBuf,
    running: Config,
    reloads: mpsc::Sender<Config>,
    metrics: Arc<Metrics>,
) -> Option<WatchGuard> {
    let (tx, mut changed) = mpsc::channel::<()>(16);
    let files = Arc::new(Mutex::new(watched_files(&path, &running)));
    let watcher = {
        let tx = tx.clone();
        let files = files.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.kind.is_access() {
                    return;
                }
                let files = files
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if event.paths.iter().any(|p| is_watched(p, &files)) {
                    let _ = tx.try_send(());
                }
            }
        })
    };
    let mut dirs = BTreeSet::new();
    let watcher = match watcher {
        Ok(mut w) => {
            let files = files
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            watch_dirs(&mut w, &files, &mut dirs);
            Some(Arc::new(Mutex::new(w)))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot watch the config file ({e}); SIGHUP still reloads it");
            None
        }
    };
    let mut sighup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    let task_watcher = watcher.clone();
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
                    // The new config may name other template files: watch those from now.
                    let now_watched = watched_files(&path, &new);
                    if let Some(watcher) = &task_watcher {
                        let mut w = watcher
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        watch_dirs(&mut w, &now_watched, &mut dirs);
                    }
                    *files
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = now_watched;
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

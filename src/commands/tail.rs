//! `walhook tail`: decoded change events as JSON lines on stdout; the `pg_recvlogical` of
//! walhook.
//!
//! tail writes nothing to the outbox. By default it reads through a TEMPORARY slot created
//! on its streaming connection: Postgres drops it when that connection ends, however tail
//! ends (SIGKILL, a closed terminal's SIGHUP), so tail can never leave a slot holding WAL.
//! The price: after a lost connection (a Postgres restart) the new slot starts at "now", so
//! tail says loudly on stderr that changes in the gap may be missing. `--slot NAME` reads
//! through a durable slot instead, which the user owns: created if missing, never dropped.
//!
//! With `--subscription S` tail shows what `run` would store for S instead of envelopes:
//! only the changes S fires on, rendered by its templates (SPEC §4a).
//!
//! When the configured publication does not exist, tail creates one of its own for the
//! configured tables and drops it on a normal exit. After a SIGKILL that publication stays
//! (a publication holds no WAL and costs nothing); `walhook check` lists such leftovers.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::capture::envelope::{envelope, serialise, truncate_fields};
use crate::capture::matcher::Matcher;
use crate::capture::reader::{CaptureError, ReaderOptions};
use crate::capture::{ChangeReader, Item, ObjectView, Relation};
use crate::config::{Config, TableName};
use crate::pg::conninfo::ConnInfo;
use crate::pg::error::server_words;
use crate::pg::{self, Lsn};
use crate::pg::{quote_ident, quote_table};
use crate::source::privileges::{self, Refusal, Role};
use crate::source::publication;
use crate::source::replication::ReplicationConnection;

/// Prefix of the slots and publications tail creates for itself.
pub const TAIL_PREFIX: &str = "walhook_tail_";

/// Why tail stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// `--subscription` names no subscription, or one whose templates do not compile.
    #[error("{0}")]
    Usage(String),
    /// Could not set up the slot or publication.
    #[error("{0}")]
    Setup(String),
    /// The role may not create what tail needs; found before anything was created.
    #[error(transparent)]
    Privileges(#[from] Refusal),
    /// Reading changes failed for good.
    #[error(transparent)]
    Capture(Box<CaptureError>),
    /// stdout failed for a reason other than the reader going away.
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
}

impl From<CaptureError> for TailError {
    fn from(e: CaptureError) -> Self {
        TailError::Capture(Box::new(e))
    }
}

/// Streams changes of the configured tables to stdout until a signal or a fatal error.
/// `durable_slot` is `--slot`: a permanent slot the user owns, used instead of a temporary one.
/// `subscription` is `--subscription`: only its table, and what it would be sent.
pub async fn run(
    config: &Config,
    durable_slot: Option<&str>,
    subscription: Option<&str>,
) -> Result<(), TailError> {
    let only;
    let (config, matcher) = match subscription {
        Some(name) => {
            only = only_subscription(config, name)?;
            let matcher =
                Matcher::new(&only).map_err(|e| TailError::Usage(e.problems.join("\n")))?;
            (&only, Some(matcher))
        }
        None => (config, None),
    };
    // Installed before anything is created, so that Ctrl-C during setup still cleans up
    // instead of killing the process and leaving a publication behind.
    let mut signals = Signals {
        interrupt: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
        terminate: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
    };
    let info = config.source.conninfo.clone();
    let catalog = pg::connect_sql(&info)
        .await
        .map_err(|e| TailError::Setup(e.to_string()))?;
    let tables = config.tables();
    refuse_missing_privileges(&catalog, config, &tables).await?;
    let suffix = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
    let publication = pick_publication(&catalog, config, &tables, &suffix).await?;
    let slot = match durable_slot {
        Some(name) => SlotKind::Durable(name.to_owned()),
        None => SlotKind::Temporary(format!("{TAIL_PREFIX}{suffix}")),
    };
    // Creating a slot waits for every open transaction on the server; let Ctrl-C end
    // that wait too.
    let ready = match &slot {
        SlotKind::Durable(name) => tokio::select! {
            created = ensure_durable_slot(&catalog, &info, name) => created.map(|()| true),
            () = signals.recv() => Ok(false),
        },
        SlotKind::Temporary(_) => Ok(true),
    };
    let result = match ready {
        Ok(true) => {
            let mut views = Views::new(config, matcher);
            stream(
                &info,
                &slot,
                &publication.name,
                &tables,
                &mut views,
                &mut signals,
            )
            .await
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    drop(catalog);
    cleanup(&info, &publication).await;
    result
}

/// Refuses, before anything is created, when the role may not stream (tail reads through a
/// replication slot, temporary or `--slot`) or, when the configured publication does not
/// exist, may not create tail's own for the tables. tail reads no table itself: the
/// changes come from the slot, and relation details from the catalog, so SELECT is not asked.
async fn refuse_missing_privileges(
    catalog: &tokio_postgres::Client,
    config: &Config,
    tables: &[TableName],
) -> Result<(), TailError> {
    let failed = |e: tokio_postgres::Error| {
        TailError::Setup(format!(
            "reading the role's privileges: {}",
            server_words(&e)
        ))
    };
    let role = Role::current(catalog).await.map_err(failed)?;
    if role.superuser {
        return Ok(());
    }
    let mut missing: Vec<_> = role
        .replication("stream changes: tail reads them through a replication slot")
        .into_iter()
        .collect();
    let configured = &config.source.publication;
    let exists = privileges::publication_owner(catalog, configured)
        .await
        .map_err(failed)?
        .is_some();
    if !exists {
        let blocked = format!(
            "tail cannot create a publication of its own for it (publication {configured:?} \
             does not exist)"
        );
        missing.extend(role.create_in_database(&format!(
            "tail's own publication (publication {configured:?} does not exist)"
        )));
        for table in tables {
            // A missing table is reported, with its own fix, when the publication is made.
            let Some(access) = privileges::table_access(catalog, table, configured)
                .await
                .map_err(failed)?
            else {
                continue;
            };
            if !access.owned {
                missing.push(privileges::publish(
                    &role, table, &access, configured, false, tables, &blocked,
                ));
            }
        }
    }
    Ok(Refusal::unless_empty(
        &role,
        "tail",
        "created no slot and no publication",
        missing,
    )?)
}

/// The slot tail reads through.
enum SlotKind {
    /// Created anew on every streaming connection and dropped by Postgres with it.
    Temporary(String),
    /// `--slot`: the user's, created if missing and never dropped.
    Durable(String),
}

impl SlotKind {
    fn name(&self) -> &str {
        match self {
            SlotKind::Temporary(name) | SlotKind::Durable(name) => name,
        }
    }
}

struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Waits for SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

struct Publication {
    name: String,
    created: bool,
}

async fn pick_publication(
    catalog: &tokio_postgres::Client,
    config: &Config,
    tables: &[TableName],
    suffix: &str,
) -> Result<Publication, TailError> {
    let configured = &config.source.publication;
    let exists = catalog
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[configured],
        )
        .await
        .map_err(|e| TailError::Setup(format!("looking up publication {configured:?}: {e}")))?
        .is_some();
    if exists {
        return Ok(Publication {
            name: configured.clone(),
            created: false,
        });
    }
    if tables.is_empty() {
        return Err(TailError::Setup(
            "the config names no tables (objects or subscriptions) to tail".into(),
        ));
    }
    // A table without replica identity in a publication makes UPDATE and DELETE on it
    // fail in the business application: never do that, not even for a minute of tail.
    for table in tables {
        publication::check_publishable(catalog, "(tail's own)", table)
            .await
            .map_err(|e| TailError::Setup(e.to_string()))?;
    }
    let name = format!("{TAIL_PREFIX}{suffix}");
    let list: Vec<String> = tables.iter().map(quote_table).collect();
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {}",
        quote_ident(&name),
        list.join(", ")
    );
    catalog.batch_execute(&sql).await.map_err(|e| {
        TailError::Setup(format!("creating publication {name}: {}", server_words(&e)))
    })?;
    Ok(Publication {
        name,
        created: true,
    })
}

/// Creates the `--slot` slot if it is missing. It is the user's: tail never drops it.
async fn ensure_durable_slot(
    catalog: &tokio_postgres::Client,
    info: &ConnInfo,
    slot: &str,
) -> Result<(), TailError> {
    let exists = catalog
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| TailError::Setup(format!("looking up slot {slot:?}: {}", server_words(&e))))?
        .is_some();
    if exists {
        return Ok(());
    }
    let mut connection = ReplicationConnection::connect(info)
        .await
        .map_err(|e| TailError::Setup(e.to_string()))?;
    connection
        .create_slot(slot, false)
        .await
        .map_err(|e| TailError::Setup(format!("creating replication slot {slot}: {e}")))?;
    tracing::warn!(
        slot,
        "created durable slot {slot:?} for --slot: it keeps WAL until it is read or dropped \
         (SELECT pg_drop_replication_slot('{slot}');)"
    );
    Ok(())
}

/// Drops the publication tail created, if it did. The catalog connection from the start may
/// have died with a server restart, so this uses a fresh connection and retries a while.
async fn cleanup(info: &ConnInfo, publication: &Publication) {
    if !publication.created {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match drop_publication(info, &publication.name).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("cleanup not done yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let name = &publication.name;
                tracing::error!(
                    "could not drop tail's publication {name:?} ({e}); drop it by hand: \
                     DROP PUBLICATION {};",
                    quote_ident(name)
                );
                return;
            }
        }
    }
}

async fn drop_publication(info: &ConnInfo, name: &str) -> Result<(), String> {
    let catalog = pg::connect_sql(info).await.map_err(|e| e.to_string())?;
    let sql = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name));
    catalog
        .batch_execute(&sql)
        .await
        .map_err(|e| server_words(&e))
}

/// Where the output stands, so a reconnect neither repeats nor skips a change.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Commit LSN of the last transaction printed completely.
    last_commit: Lsn,
    /// The transaction being printed when the connection dropped, and how many of its
    /// changes were printed.
    partial: Option<(Lsn, u32)>,
}

enum Stop {
    Signal,
    StdoutClosed,
    /// The server ended the stream, e.g. while shutting down: reconnect like after a drop.
    ServerEnded,
}

async fn stream(
    info: &ConnInfo,
    slot: &SlotKind,
    publication: &str,
    tables: &[TableName],
    views: &mut Views<'_>,
    signals: &mut Signals,
) -> Result<(), TailError> {
    let mut progress = Progress::default();
    let mut backoff = Duration::from_millis(100);
    let mut reconnect = false;
    loop {
        let options = ReaderOptions {
            slot: slot.name().to_owned(),
            publication: publication.to_owned(),
            skip_through: progress.last_commit,
        };
        let temporary = matches!(slot, SlotKind::Temporary(_));
        let connect = Connect {
            temporary,
            gap: temporary && reconnect,
        };
        reconnect = true;
        let outcome = tokio::select! {
            () = signals.recv() => Ok(Stop::Signal),
            r = read(info, &options, connect, tables, views, &mut progress, &mut backoff) => r,
        };
        match outcome {
            Ok(Stop::Signal) | Ok(Stop::StdoutClosed) => return Ok(()),
            Ok(Stop::ServerEnded) => {
                tracing::warn!(
                    "the server ended the replication stream; reconnecting in {backoff:?}"
                );
            }
            Err(TailError::Capture(e)) if e.is_transient() => {
                tracing::warn!("replication connection lost: {e}; reconnecting in {backoff:?}");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = signals.recv() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How [`read`] opens its stream.
#[derive(Debug, Clone, Copy)]
struct Connect {
    /// Create the slot as a TEMPORARY one on the streaming connection.
    temporary: bool,
    /// This is a new temporary slot after a lost one: what was committed in between is not
    /// in it, and the user must hear so.
    gap: bool,
}

async fn read(
    info: &ConnInfo,
    options: &ReaderOptions,
    connect: Connect,
    tables: &[TableName],
    views: &mut Views<'_>,
    progress: &mut Progress,
    backoff: &mut Duration,
) -> Result<Stop, TailError> {
    let mut reader = if connect.temporary {
        ChangeReader::start_temporary(info, options).await?
    } else {
        ChangeReader::start(info, options).await?
    };
    *backoff = Duration::from_millis(100);
    if connect.gap {
        // Said on stderr whatever the log level: the output has a hole the user cannot see.
        eprintln!(
            "WARNING: walhook tail reconnected on a new temporary slot: changes committed \
             while it was disconnected may be missing from this output (use `walhook tail \
             --slot NAME` for a durable slot that keeps them)"
        );
        progress.partial = None;
    }
    tracing::info!(slot = %options.slot, publication = %options.publication, "streaming changes");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut commit = None;
    let mut printed_in_txn = 0u32;
    let mut skip_in_txn = 0u32;
    while let Some(item) = reader.next().await? {
        let line = match item {
            Item::Begin(c) => {
                commit = Some(c);
                printed_in_txn = 0;
                skip_in_txn = match progress.partial {
                    Some((lsn, n)) if lsn == c.lsn => n,
                    _ => 0,
                };
                continue;
            }
            // A running daemon's backfill: its rows go to the outbox, not to tail.
            Item::Watermark { .. } => continue,
            Item::Keepalive { wal_end } => {
                // Nothing half-printed: the slot may move on while the tables are idle.
                if progress.partial.is_none() {
                    reader.acknowledge(wal_end);
                }
                continue;
            }
            Item::Commit { commit: c, end_lsn } => {
                if let Err(e) = out.flush() {
                    return stdout_error(e);
                }
                progress.last_commit = c.lsn;
                progress.partial = None;
                reader.acknowledge(end_lsn);
                continue;
            }
            Item::Change(change) => {
                if !watched(tables, &change.relation) {
                    continue;
                }
                let c = commit.expect("changes come inside a transaction");
                if let Some(matcher) = &mut views.matcher {
                    match routed_bodies(matcher, &change, c) {
                        Some(lines) => lines,
                        None => continue,
                    }
                } else {
                    let view = views.get(&change.relation);
                    let event_type = view.default_event_type(change.operation);
                    envelope(&change, view, &event_type, c)
                }
            }
            Item::Truncate(t) => {
                let c = commit.expect("truncates come inside a transaction");
                let mut lines = Vec::new();
                for (i, relation) in t.relations.iter().enumerate() {
                    if let Some(matcher) = &views.matcher {
                        for event in matcher.route_truncate(&t, i, c).events {
                            lines.extend(event.body);
                            lines.push(b'\n');
                        }
                    } else if watched(tables, relation) {
                        let view = views.get(relation);
                        lines.extend(serialise(truncate_fields(
                            relation,
                            view,
                            t.position + i as u32,
                            t.cascade,
                            t.restart_identity,
                            c,
                        )));
                        lines.push(b'\n');
                    }
                }
                lines.pop();
                if lines.is_empty() {
                    continue;
                }
                lines
            }
        };
        let c = commit.expect("inside a transaction");
        printed_in_txn += 1;
        if printed_in_txn <= skip_in_txn {
            continue;
        }
        if let Err(e) = out.write_all(&line).and_then(|()| out.write_all(b"\n")) {
            return stdout_error(e);
        }
        progress.partial = Some((c.lsn, printed_in_txn));
    }
    Ok(Stop::ServerEnded)
}

fn stdout_error(e: std::io::Error) -> Result<Stop, TailError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(Stop::StdoutClosed)
    } else {
        Err(TailError::Stdout(e))
    }
}

fn watched(tables: &[TableName], relation: &Relation) -> bool {
    tables
        .iter()
        .any(|t| t.schema == relation.schema && t.name == relation.name)
}

/// `config` with only subscription `name`, active, and its table: what `--subscription`
/// shows.
fn only_subscription(config: &Config, name: &str) -> Result<Config, TailError> {
    let sub = crate::delivery::test_event::find(config, name)
        .map_err(|e| TailError::Usage(e.to_string()))?;
    if sub.object.config.keeps_state() {
        return Err(TailError::Usage(format!(
            "subscription {name}: objects.{} keeps its state (a document or keep_state), and \
             its events are made from the state `walhook run` keeps, which tail does not \
             have; see them with `walhook run` (or `walhook deliveries`), or run tail \
             without --subscription for the row changes of its tables",
            sub.object.config_key
        )));
    }
    let mut sub = sub.clone();
    sub.active = true;
    let mut only = config.clone();
    only.objects
        .retain(|_, object| object.table == sub.object.config.table);
    only.subscriptions = vec![sub];
    Ok(only)
}

/// The bodies `matcher` would store for `change`, one per line, or `None` when none fires;
/// what cannot be evaluated or rendered is said on stderr.
fn routed_bodies(
    matcher: &mut Matcher,
    change: &crate::capture::RowChange,
    commit: crate::capture::Commit,
) -> Option<Vec<u8>> {
    let (events, problems) = matcher.route(change, commit);
    for problem in problems {
        eprintln!(
            "walhook tail: subscription {}: {} (key {}): {}",
            problem.subscription, problem.table, problem.key, problem.message
        );
    }
    let mut lines = Vec::new();
    for event in events.into_iter().filter(|e| !e.subscriptions.is_empty()) {
        if let Some(target) = &event.target {
            eprintln!(
                "walhook tail: {} {}",
                target.method.as_str(),
                crate::config::redact_webhook_url(&target.url)
            );
        }
        lines.extend(event.body);
        lines.push(b'\n');
    }
    lines.pop();
    (!lines.is_empty()).then_some(lines)
}

/// Object views per table, rebuilt when the table's description changes; with
/// `--subscription`, the matcher that routes and renders for it instead.
struct Views<'a> {
    config: &'a Config,
    cache: HashMap<u32, (Arc<Relation>, ObjectView)>,
    matcher: Option<Matcher>,
}

impl<'a> Views<'a> {
    fn new(config: &'a Config, matcher: Option<Matcher>) -> Self {
        Views {
            config,
            cache: HashMap::new(),
            matcher,
        }
    }

    fn get(&mut self, relation: &Arc<Relation>) -> &ObjectView {
        let fresh =
            matches!(self.cache.get(&relation.oid), Some((r, _)) if Arc::ptr_eq(r, relation));
        if !fresh {
            let view = self.build(relation);
            self.cache.insert(relation.oid, (relation.clone(), view));
        }
        &self.cache[&relation.oid].1
    }

    fn build(&self, relation: &Relation) -> ObjectView {
        let object = self
            .config
            .objects
            .iter()
            .find(|(_, o)| o.table.schema == relation.schema && o.table.name == relation.name);
        match object {
            Some((key, o)) => {
                let name = o.name.as_ref().unwrap_or(key);
                match ObjectView::resolve(name, relation, o.key.as_deref(), o.fields.as_deref()) {
                    Ok(view) => view,
                    Err(e) => {
                        // tail is a diagnostic tool: show the whole row rather than nothing.
                        tracing::warn!("{e}; showing every column");
                        let mut view = ObjectView::of_table(relation);
                        view.name.clone_from(name);
                        view
                    }
                }
            }
            None => ObjectView::of_table(relation),
        }
    }
}

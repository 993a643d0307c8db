//! The backfill figures (SPEC §3b, §9): a table's existing rows into the outbox by a fresh
//! walhook whose subscription has `backfill = true`, beside the source's own read of the
//! table and Debezium's incremental snapshot of the same rows; and walhook's peak RSS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::TryStreamExt;
use tokio_postgres::SimpleQueryMessage;

use crate::debezium;
use crate::process::{self, Walhook};
use crate::report::{mib, millis, rate, thousands, Row};
use crate::workload::{self, BACKFILL_SUBSCRIPTION, BACKFILL_TABLE};
use crate::{Bench, Db, INSTANCE, PAUSED_URL, SECRET};

/// How long walhook may run before its backfill appears in the outbox's `backfill` table.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a running backfill may go without a committed chunk and without walhook using
/// CPU: longer is a hang, not a result.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether and why not to run Debezium beside walhook.
pub enum Baseline {
    Debezium,
    Skipped(String),
}

/// One backfill by walhook, from its start to the outbox saying `done`.
struct Backfilled {
    /// walhook start → `state = 'done'` seen.
    took: Duration,
    /// The outbox's own `started_at` → `finished_at`.
    in_outbox: Duration,
    cpu: Duration,
    /// Postgres's CPU time meanwhile (the chunk reads, the walsender, the outbox writes).
    pg_cpu: Duration,
    peak_rss: u64,
}

impl Bench {
    /// The backfill of `rows` rows (with the source's read and Debezium beside it), then
    /// a fresh walhook's peak RSS backfilling `memory_rows` rows.
    pub(crate) async fn backfill(
        &self,
        rows: u64,
        memory_rows: u64,
        baseline: Baseline,
    ) -> Result<Vec<Row>> {
        eprintln!("backfill: a table of {} rows…", thousands(rows));
        let mut db = self.backfill_database("backfill", rows).await?;
        let read = db.read_whole_table(rows).await?;
        let big = self.backfill_once(&mut db, rows).await?;
        // The ceiling of any backfill into this outbox: Postgres inserting the same rows.
        let floor = db.rewrite_outbox().await?;
        let debezium = match baseline {
            Baseline::Debezium => {
                eprintln!("backfill: Debezium's incremental snapshot of the same table…");
                Ok(debezium::incremental_snapshot(
                    &db.url,
                    BACKFILL_TABLE,
                    rows,
                    &self.dir,
                )?)
            }
            Baseline::Skipped(why) => {
                eprintln!("backfill: Debezium skipped: {why}");
                Err(why)
            }
        };
        self.drop_database(db).await?;

        eprintln!("backfill: peak RSS on {} rows…", thousands(memory_rows));
        let mut db = self.backfill_database("backfill_rss", memory_rows).await?;
        let small = self.backfill_once(&mut db, memory_rows).await?;
        self.drop_database(db).await?;

        let compared = match &debezium {
            Ok(d) => format!(
                "{} incremental snapshot of the same table (embedded engine, JSON, offsets in \
                 memory, best chunk size {}; {}): **{} rows/s** ({:.1} s), walhook **{:.2}×** \
                 that",
                d.versions,
                d.chunk_size,
                d.trials,
                thousands(d.rows_per_second),
                d.seconds,
                (rows as f64 / big.took.as_secs_f64()) / d.rows_per_second.max(1) as f64
            ),
            Err(why) => format!("Debezium not measured: {why}"),
        };
        Ok(vec![
            Row {
                figure: "backfill into the outbox".into(),
                workload: format!(
                    "{} rows of one table (bigint key, integer, 2 texts, numeric, timestamptz), \
                     one subscription with `backfill = true`, delivery paused; walhook start → \
                     `done` in the outbox",
                    thousands(rows)
                ),
                measured: format!(
                    "**{} rows/s** ({}; the outbox's started_at → finished_at {}; CPU per row: \
                     walhook {:.1} µs, Postgres {:.1} µs); Postgres alone inserts the same outbox \
                     rows at {} rows/s; the source's own `SELECT` of every column `ORDER BY \
                     id`: {} ({} rows/s); {compared}",
                    rate(rows, big.took),
                    millis(big.took),
                    millis(big.in_outbox),
                    big.cpu.as_secs_f64() * 1e6 / rows as f64,
                    big.pg_cpu.as_secs_f64() * 1e6 / rows as f64,
                    rate(rows, floor),
                    millis(read),
                    rate(rows, read),
                ),
                target: "≥ 50,000 rows/s, faster than Debezium",
            },
            Row {
                figure: "peak RSS, backfill".into(),
                workload: format!(
                    "a backfill of {} rows by a fresh process, delivery paused (and of {} rows, \
                     above)",
                    thousands(memory_rows),
                    thousands(rows)
                ),
                measured: format!(
                    "**{}** ({} rows: {})",
                    mib(small.peak_rss),
                    thousands(rows),
                    mib(big.peak_rss)
                ),
                target: "≤ 64 MiB, flat in the table's size",
            },
        ])
    }

    /// A fresh database holding the backfill table with `rows` rows.
    async fn backfill_database(&self, name: &str, rows: u64) -> Result<Db> {
        let db = self.database(name).await?;
        db.client
            .batch_execute(&workload::backfill_table(rows))
            .await
            .context("creating the backfill table")?;
        db.client
            .batch_execute(workload::BACKFILL_VACUUM)
            .await
            .context("vacuuming the backfill table")?;
        Ok(db)
    }

    /// A fresh walhook backfilling the table of `db` into the outbox, delivery paused, until
    /// the outbox says done; checks every row is there once.
    async fn backfill_once(&self, db: &mut Db, rows: u64) -> Result<Backfilled> {
        let config = db.backfill_config(&self.dir)?;
        Walhook::command(&self.walhook, &config, &["setup"])?;
        walhook::outbox::state::pause(&mut db.outbox, INSTANCE, BACKFILL_SUBSCRIPTION).await?;
        let started = Instant::now();
        let pg_before = process::postgres_cpu();
        let mut walhook = self.run_walhook(&config, &db.name)?;
        let in_outbox = db.wait_backfilled(rows, &mut walhook).await?;
        let took = started.elapsed();
        let pg_cpu = process::postgres_cpu().saturating_sub(pg_before);
        let cpu = walhook.cpu_time()?;
        let peak_rss = walhook.peak_rss()?;
        walhook.stop()?;
        db.expect_outbox(INSTANCE, rows).await?;
        Ok(Backfilled {
            took,
            in_outbox,
            cpu,
            pg_cpu,
            peak_rss,
        })
    }
}

impl Db {
    fn backfill_config(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}_{INSTANCE}.toml", self.name));
        std::fs::write(
            &path,
            workload::backfill_config(
                &self.url,
                self.outbox_url.as_deref(),
                INSTANCE,
                PAUSED_URL,
                SECRET,
            ),
        )?;
        Ok(path)
    }

    /// One plain read of every row and column in key order (simple protocol, rows thrown
    /// away as they come) after one more to warm the cache; returns the second's time.
    async fn read_whole_table(&self, rows: u64) -> Result<Duration> {
        let mut took = Duration::ZERO;
        for _ in 0..2 {
            let started = Instant::now();
            let stream = self
                .client
                .simple_query_raw(workload::BACKFILL_SELECT)
                .await
                .context("reading the backfill table")?;
            let mut stream = std::pin::pin!(stream);
            let mut read = 0u64;
            while let Some(message) = stream.try_next().await? {
                if let SimpleQueryMessage::Row(_) = message {
                    read += 1;
                }
            }
            took = started.elapsed();
            ensure!(
                read == rows,
                "read {read} rows of the backfill table, expected {rows}"
            );
        }
        Ok(took)
    }

    /// Waits until the outbox's newest backfill of the subscription is `done` with `rows`
    /// rows; returns its started_at → finished_at. Fails when it does not appear, fails,
    /// or stalls.
    async fn wait_backfilled(&self, rows: u64, walhook: &mut Walhook) -> Result<Duration> {
        let query = format!(
            "SELECT state, rows, error, extract(epoch FROM finished_at - started_at)::float8 \
             FROM {INSTANCE}.backfill WHERE subscription = $1 ORDER BY id DESC LIMIT 1"
        );
        let started = Instant::now();
        let mut progress = (-1i64, Duration::ZERO, Instant::now());
        loop {
            let row = self
                .outbox
                .query_opt(&query, &[&BACKFILL_SUBSCRIPTION])
                .await
                .with_context(|| format!("reading {INSTANCE}.backfill"))?;
            walhook.check_running()?;
            let Some(row) = row else {
                ensure!(
                    started.elapsed() < START_TIMEOUT,
                    "no backfill of subscription {BACKFILL_SUBSCRIPTION} in {INSTANCE}.backfill \
                     {} s after walhook started: does this walhook backfill (`backfill = true`, \
                     SPEC §3b)?",
                    START_TIMEOUT.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let state: String = row.get(0);
            let done: i64 = row.get(1);
            match state.as_str() {
                "done" => {
                    ensure!(
                        done as u64 == rows,
                        "the backfill of {BACKFILL_SUBSCRIPTION} is done with {done} rows, \
                         expected {rows}"
                    );
                    let secs: Option<f64> = row.get(3);
                    return Ok(Duration::from_secs_f64(secs.unwrap_or(0.0).max(0.0)));
                }
                "running" => {}
                other => {
                    let error: Option<String> = row.get(2);
                    bail!(
                        "the backfill of {BACKFILL_SUBSCRIPTION} ended {other} after {done} rows: \
                         {}",
                        error.as_deref().unwrap_or("no error recorded")
                    );
                }
            }
            let cpu = walhook.cpu_time()?;
            if done != progress.0 || cpu != progress.1 {
                progress = (done, cpu, Instant::now());
            } else if progress.2.elapsed() > STALL_TIMEOUT {
                bail!(
                    "the backfill of {BACKFILL_SUBSCRIPTION} made no progress for {} s at {done} \
                     of {rows} rows",
                    STALL_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

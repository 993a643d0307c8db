//! The documents figure (SPEC §3a, §9): an invoice with its lines as one business document,
//! captured into the outbox as one event per touched invoice, beside the same number of
//! plain row changes on a plain object in a second database of the same run.
//!
//! Each kind has its database and walhooks of its own: the same tables in both, one object
//! configured in each (the `invoice` document with its `invoice_lines`, or the plain
//! `payment`), one subscription with delivery paused, so that only capture into the outbox
//! is measured. A document walhook is run once before the workload, to seed its state (of
//! the invoices that exist already) and stop; then the changes are generated, and a fresh
//! walhook is timed from its start to its checkpoint passing the workload's marker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::process::{self, Walhook};
use crate::report::{mib, millis, rate, thousands, Row};
use crate::workload::config_head;
use crate::{Bench, Db, Marker, INSTANCE, PAUSED_URL, SECRET};

/// Invoices (and payments) that exist before the workload, so that its first updates and
/// deletes have rows to change; the document walhook seeds them.
const PREFILLED: u64 = 1_000;
/// Changes per source transaction. The generator's cycle is ten changes long, and the ten
/// changes of a transaction touch ten different invoices: one event each.
const PER_TXN: u64 = 10;
/// How long a walhook may take to seed the document state of the prefilled invoices.
const SEED_TIMEOUT: Duration = Duration::from_secs(60);

/// The documents figure's tables and generators: invoices and their lines (the document),
/// and payments (the plain object beside it).
const SCHEMA: &str = r#"
CREATE TABLE invoice (
    id           bigint PRIMARY KEY,
    number       text,
    partner_id   int,
    state        text,
    amount_total numeric
);
CREATE TABLE invoice_line (
    id         bigint PRIMARY KEY,
    invoice_id bigint,
    sequence   int,
    product    text,
    quantity   numeric,
    price      numeric
);
-- An invoice's lines are found by its id, as an ERP does (deleting an invoice's lines).
CREATE INDEX invoice_line_invoice ON invoice_line (invoice_id);
CREATE TABLE payment (
    id         bigint PRIMARY KEY,
    invoice_id bigint,
    partner_id int,
    state      text,
    amount     numeric
);

-- Invoice `n` with `lines` lines; line k of invoice n has id n * 1000 + k.
CREATE PROCEDURE bench_invoice(n bigint, lines integer)
LANGUAGE sql AS $$
    INSERT INTO invoice (id, number, partner_id, state, amount_total)
    VALUES (n, 'INV-' || n, (n % 500)::int, 'draft', lines * 12.5);
    INSERT INTO invoice_line (id, invoice_id, sequence, product, quantity, price)
    SELECT n * 1000 + k, n, k * 10, 'product-' || ((n + k) % 1000), k, 12.5
    FROM generate_series(1, lines) k;
$$;

-- `changes` document changes, committed ten at a time. Each transaction of ten creates five
-- invoices with their lines, updates one line's quantity of two invoices and the state of
-- two more (all four created by the transaction before), and deletes the oldest invoice
-- with its lines: ten invoices touched, ten events.
CREATE PROCEDURE bench_documents(changes bigint, lines integer, prefilled bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i      bigint := 0;
    step   integer;
    base   bigint := prefilled;
    newest bigint := prefilled;
    oldest bigint := 0;
BEGIN
    -- Generating the workload is not what is measured: don't wait for a flush per commit.
    PERFORM set_config('synchronous_commit', 'off', false);
    WHILE i < changes LOOP
        step := (i % 10)::integer;
        IF step = 0 THEN
            base := newest;
        END IF;
        IF step < 5 THEN
            newest := newest + 1;
            CALL bench_invoice(newest, lines);
        ELSIF step < 7 THEN
            UPDATE invoice_line SET quantity = quantity + 1
            WHERE id = (base - (step - 5)) * 1000 + least(2, lines);
        ELSIF step < 9 THEN
            UPDATE invoice SET state = 'posted' WHERE id = base - (step - 5);
        ELSE
            oldest := oldest + 1;
            DELETE FROM invoice_line WHERE invoice_id = oldest;
            DELETE FROM invoice WHERE id = oldest;
        END IF;
        i := i + 1;
        IF i % 10 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END
$$;

-- The same cycle on payments, one row per change: five inserts, two updates of the amount,
-- two of the state, one delete of the oldest.
CREATE PROCEDURE bench_payments(changes bigint, prefilled bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i      bigint := 0;
    step   integer;
    base   bigint := prefilled;
    newest bigint := prefilled;
    oldest bigint := 0;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', false);
    WHILE i < changes LOOP
        step := (i % 10)::integer;
        IF step = 0 THEN
            base := newest;
        END IF;
        IF step < 5 THEN
            newest := newest + 1;
            INSERT INTO payment (id, invoice_id, partner_id, state, amount)
            VALUES (newest, newest, (newest % 500)::int, 'draft', 37.5);
        ELSIF step < 7 THEN
            UPDATE payment SET amount = amount + 1 WHERE id = base - (step - 5);
        ELSIF step < 9 THEN
            UPDATE payment SET state = 'posted' WHERE id = base - (step - 5);
        ELSE
            oldest := oldest + 1;
            DELETE FROM payment WHERE id = oldest;
        END IF;
        i := i + 1;
        IF i % 10 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END
$$;
"#;

/// The two kinds of object the figure captures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The `invoice` document with its `invoice_lines`.
    Document,
    /// The plain `payment` object: one event per row change.
    Plain,
}

impl Kind {
    fn database(self) -> &'static str {
        match self {
            Kind::Document => "documents",
            Kind::Plain => "documents_plain",
        }
    }

    /// The object, which is also its subscription's name.
    fn object(self) -> &'static str {
        match self {
            Kind::Document => "invoice",
            Kind::Plain => "payment",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Document => "documents",
            Kind::Plain => "plain rows beside documents",
        }
    }

    /// The object's section of the config.
    fn objects(self) -> &'static str {
        match self {
            Kind::Document => {
                r#"
[objects.invoice]
table = "public.invoice"
fields = ["number", "partner_id", "state", "amount_total"]

[[objects.invoice.children]]
name = "invoice_lines"
table = "public.invoice_line"
parent_key = ["invoice_id"]
fields = ["product", "quantity", "price"]
order_by = ["sequence", "id"]
"#
            }
            Kind::Plain => {
                r#"
[objects.payment]
table = "public.payment"
"#
            }
        }
    }

    /// The rows that exist before the workload.
    fn prefill(self, lines: u32) -> String {
        match self {
            Kind::Document => format!(
                "DO $$ BEGIN FOR n IN 1..{PREFILLED} LOOP CALL bench_invoice(n, {lines}); \
                 END LOOP; END $$"
            ),
            Kind::Plain => format!(
                "INSERT INTO payment (id, invoice_id, partner_id, state, amount) \
                 SELECT n, n, (n % 500)::int, 'draft', 37.5 FROM generate_series(1, {PREFILLED}) n"
            ),
        }
    }

    /// The generator's call (one statement, so that the procedure may commit).
    fn generate(self, changes: u64, lines: u32) -> String {
        match self {
            Kind::Document => format!("CALL bench_documents({changes}, {lines}, {PREFILLED})"),
            Kind::Plain => format!("CALL bench_payments({changes}, {PREFILLED})"),
        }
    }

    /// The marker transaction closing the workload: one more header (without lines) or
    /// payment, with a negative id; one event.
    fn marker(self) -> &'static str {
        match self {
            Kind::Document => {
                "INSERT INTO invoice (id, number, partner_id, state, amount_total) \
                 VALUES (-1, 'marker', 0, 'marker', 0)"
            }
            Kind::Plain => {
                "INSERT INTO payment (id, invoice_id, partner_id, state, amount) \
                 VALUES (-1, 0, 0, 'marker', 0)"
            }
        }
    }
}

/// One walhook draining the workload into the outbox.
struct Drain {
    took: Duration,
    cpu: Duration,
    pg_cpu: Duration,
    peak_rss: u64,
}

/// Every drain of one kind's workload, and what the document walhooks' seeds took.
struct Drains {
    runs: Vec<Drain>,
    seed: Option<Duration>,
    /// What walhook logged (warnings and errors), across every run.
    logged: Vec<String>,
}

impl Drains {
    /// The drain of median time.
    fn median(&self) -> &Drain {
        let mut sorted: Vec<&Drain> = self.runs.iter().collect();
        sorted.sort_by_key(|d| d.took);
        sorted[sorted.len() / 2]
    }

    /// Every drain's rate, fastest first.
    fn all(&self, events: u64) -> String {
        let mut sorted: Vec<&Drain> = self.runs.iter().collect();
        sorted.sort_by_key(|d| d.took);
        sorted
            .iter()
            .map(|d| rate(events, d.took))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn peak_rss(&self) -> u64 {
        self.runs.iter().map(|d| d.peak_rss).max().unwrap_or(0)
    }

    /// "walhook logged nothing", or how much and the first line.
    fn log_note(&self) -> String {
        match self.logged.first() {
            None => "walhook logged no warning or error".into(),
            Some(first) => format!(
                "walhook logged {} warning/error lines, the first: `{}`",
                self.logged.len(),
                first.chars().take(200).collect::<String>()
            ),
        }
    }
}

/// How many events of each operation `changes` changes of the generator's cycle make.
fn expected_operations(changes: u64) -> [(&'static str, u64); 3] {
    let (full, rest) = (changes / 10, changes % 10);
    [
        ("created", full * 5 + rest.min(5)),
        ("updated", full * 4 + rest.saturating_sub(5).min(4)),
        ("deleted", full),
    ]
}

impl Bench {
    /// `changes` document changes of invoices with `lines` lines, then as many plain row
    /// changes, each drained `repeat` times by a fresh walhook into the outbox.
    pub(crate) async fn documents(
        &self,
        changes: u64,
        lines: u32,
        repeat: usize,
    ) -> Result<Vec<Row>> {
        ensure!(
            (1..=999).contains(&lines),
            "--document-lines must be 1 to 999, not {lines}"
        );
        let events = changes + 1;
        let docs = self
            .documents_drains(Kind::Document, changes, lines, repeat)
            .await?;
        let plain = self
            .documents_drains(Kind::Plain, changes, lines, repeat)
            .await?;
        let (d, p) = (docs.median(), plain.median());
        let per_event = |t: Duration| t.as_secs_f64() * 1e6 / events as f64;
        // Source row changes per document change: a create inserts the header and its
        // lines, a delete removes both, the updates change one row.
        let row_changes = {
            let [(_, creates), (_, updates), (_, deletes)] = expected_operations(changes);
            (creates + deletes) * (1 + lines as u64) + updates + 1
        };
        let seed = docs.seed.map_or(String::new(), |s| {
            format!(
                "; seeding the {} invoices that existed before took {}",
                thousands(PREFILLED),
                millis(s)
            )
        });
        Ok(vec![
            Row {
                figure: "documents into the outbox".into(),
                workload: format!(
                    "{} document changes ({} source row changes) in {PER_TXN}-change \
                     transactions, each touching another invoice: ½ creates of an invoice with \
                     {lines} lines, ⅕ updates of one line's quantity, ⅕ of the header's state, \
                     ⅒ deletes of an invoice with its lines; REPLICA IDENTITY DEFAULT, one \
                     subscription, delivery paused; walhook start (state seeded) → all in the \
                     outbox",
                    thousands(events),
                    thousands(row_changes),
                ),
                measured: format!(
                    "**{} document events/s** ({}; median of {} drains: {} events/s; CPU per \
                     event: walhook {:.1} µs, Postgres {:.1} µs; peak RSS {}); **{:.2}** of the \
                     plain row rate below{seed}; {}",
                    rate(events, d.took),
                    millis(d.took),
                    docs.runs.len(),
                    docs.all(events),
                    per_event(d.cpu),
                    per_event(d.pg_cpu),
                    mib(docs.peak_rss()),
                    p.took.as_secs_f64() / d.took.as_secs_f64(),
                    docs.log_note(),
                ),
                target: "≥ 20,000 events/s",
            },
            Row {
                figure: "peak RSS, documents".into(),
                workload: format!(
                    "capturing the {} document changes above, a fresh process per drain",
                    thousands(events)
                ),
                measured: format!("**{}**", mib(docs.peak_rss())),
                target: "≤ 64 MiB",
            },
            Row {
                figure: "plain rows beside documents".into(),
                workload: format!(
                    "{} plain row changes of one table in {PER_TXN}-row transactions, the same \
                     cycle (½ inserts, ⅖ updates of one column, ⅒ deletes), one subscription, \
                     delivery paused; walhook start → all in the outbox",
                    thousands(events)
                ),
                measured: format!(
                    "**{} events/s** ({}; median of {} drains: {} events/s; CPU per event: \
                     walhook {:.1} µs, Postgres {:.1} µs; peak RSS {}); {}",
                    rate(events, p.took),
                    millis(p.took),
                    plain.runs.len(),
                    plain.all(events),
                    per_event(p.cpu),
                    per_event(p.pg_cpu),
                    mib(plain.peak_rss()),
                    plain.log_note(),
                ),
                target: "the documents row's comparison",
            },
        ])
    }

    /// One kind's database, `repeat` walhook instances set up (and seeded) before the
    /// workload, the workload, and each instance's drain in turn.
    async fn documents_drains(
        &self,
        kind: Kind,
        changes: u64,
        lines: u32,
        repeat: usize,
    ) -> Result<Drains> {
        let label = kind.label();
        let mut db = self.database_with(kind.database(), SCHEMA).await?;
        db.client
            .batch_execute(&kind.prefill(lines))
            .await
            .context("prefilling the documents figure's tables")?;
        db.client.batch_execute("ANALYZE").await?;

        let mut instances = Vec::new();
        let mut seeds = Vec::new();
        let mut logged = Vec::new();
        for i in 1..=repeat.max(1) {
            let instance = match i {
                1 => INSTANCE.to_owned(),
                i => format!("{INSTANCE}_{i}"),
            };
            let config = db.documents_config(&self.dir, &instance, kind)?;
            Walhook::command(&self.walhook, &config, &["setup"])?;
            walhook::outbox::state::pause(&mut db.outbox, &instance, kind.object()).await?;
            if kind == Kind::Document {
                eprintln!("{label}: seeding {instance}…");
                let log = format!("{}_{instance}_seed", db.name);
                let started = Instant::now();
                let mut walhook = self.run_walhook(&config, &log)?;
                db.wait_seeded(&instance, &mut walhook).await?;
                seeds.push(started.elapsed());
                walhook.stop()?;
                logged.extend(self.walhook_log(&log));
            }
            instances.push((instance, config));
        }

        eprintln!("{label}: generating {} changes…", thousands(changes));
        let generating = Instant::now();
        db.client
            .batch_execute(&kind.generate(changes, lines))
            .await
            .context("generating the documents figure's workload")?;
        eprintln!("{label}: generated in {}", millis(generating.elapsed()));
        let marker = db.marker_with(kind.marker()).await?;
        let events = changes + 1;

        let mut runs = Vec::new();
        for (instance, config) in &instances {
            eprintln!("{label}: walhook ({instance})…");
            let log = format!("{}_{instance}", db.name);
            let started = Instant::now();
            let pg_before = process::postgres_cpu();
            let mut walhook = self.run_walhook(config, &log)?;
            db.wait_captured(instance, &marker, &mut walhook).await?;
            let took = started.elapsed();
            let cpu = walhook.cpu_time()?;
            let pg_cpu = process::postgres_cpu().saturating_sub(pg_before);
            let peak_rss = walhook.peak_rss()?;
            walhook.stop()?;
            logged.extend(self.walhook_log(&log));
            eprintln!(
                "{label}: {instance}: {} events/s ({}), CPU walhook {}, Postgres {}, peak RSS {}",
                rate(events, took),
                millis(took),
                millis(cpu),
                millis(pg_cpu),
                mib(peak_rss)
            );
            db.expect_outbox(instance, events).await?;
            db.expect_operations(instance, kind, changes, lines).await?;
            db.print_table_stats(instance).await?;
            runs.push(Drain {
                took,
                cpu,
                pg_cpu,
                peak_rss,
            });
        }
        self.drop_database(db).await?;
        seeds.sort();
        Ok(Drains {
            runs,
            seed: seeds.get(seeds.len() / 2).copied(),
            logged,
        })
    }

    /// The lines of the log of the walhook run named `name` (see [`Bench::run_walhook`]).
    fn walhook_log(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Db {
    fn documents_config(&self, dir: &Path, instance: &str, kind: Kind) -> Result<PathBuf> {
        let path = dir.join(format!("{}_{instance}.toml", self.name));
        let mut config = config_head(&self.url, self.outbox_url.as_deref(), instance);
        config.push_str(kind.objects());
        let object = kind.object();
        config.push_str(&format!(
            "\n[[subscriptions]]\nname = \"{object}\"\nobject = \"{object}\"\n\
             url = \"{PAUSED_URL}\"\nsecret = \"{SECRET}\"\n"
        ));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// The marker transaction `sql`, with the WAL positions around its commit.
    async fn marker_with(&mut self, sql: &str) -> Result<Marker> {
        let tx = self.client.transaction().await?;
        tx.execute(sql, &[]).await?;
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

    /// Waits until `instance` has seeded the invoice document's state.
    async fn wait_seeded(&self, instance: &str, walhook: &mut Walhook) -> Result<()> {
        let query = format!("SELECT rows FROM {instance}.document_seed WHERE object = 'invoice'");
        let started = Instant::now();
        loop {
            // The table exists once walhook's outbox is migrated (setup did that).
            let row = self.outbox.query_opt(&query, &[]).await?;
            if let Some(row) = row {
                let rows: i64 = row.get(0);
                ensure!(rows > 0, "{instance} seeded the invoices with no rows");
                return Ok(());
            }
            walhook.check_running()?;
            if started.elapsed() > SEED_TIMEOUT {
                bail!(
                    "{instance} did not seed the invoice document within {} s",
                    SEED_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks the outbox holds the events the generator's cycle makes (and the marker's
    /// create), and that a created invoice carries its lines.
    async fn expect_operations(
        &self,
        instance: &str,
        kind: Kind,
        changes: u64,
        lines: u32,
    ) -> Result<()> {
        let object = kind.object();
        for (operation, expected) in expected_operations(changes) {
            let expected = expected + u64::from(operation == "created");
            let n: i64 = self
                .outbox
                .query_one(
                    &format!("SELECT count(*) FROM {instance}.event WHERE event_type = $1"),
                    &[&format!("{object}.{operation}")],
                )
                .await?
                .get(0);
            ensure!(
                n as u64 == expected,
                "{instance} holds {n} {object}.{operation} events, expected {expected}"
            );
        }
        if kind == Kind::Document {
            let first = PREFILLED + 1;
            let nested: Option<i32> = self
                .outbox
                .query_one(
                    &format!(
                        "SELECT jsonb_array_length(convert_from(body, 'UTF8')::jsonb \
                                -> 'values' -> 'invoice_lines') \
                         FROM {instance}.event WHERE event_type = 'invoice.created' \
                         AND key = $1"
                    ),
                    &[&format!("{{\"id\":{first}}}")],
                )
                .await
                .with_context(|| format!("reading the create event of invoice {first}"))?
                .get(0);
            ensure!(
                nested == Some(lines as i32),
                "the create event of invoice {first} nests {nested:?} lines, expected {lines}"
            );
        }
        Ok(())
    }

    /// Prints (to stderr) how Postgres reached the outbox's tables: a sequential scan or a
    /// table that grew unexpectedly points at a statement.
    async fn print_table_stats(&self, instance: &str) -> Result<()> {
        let rows = self
            .outbox
            .query(
                "SELECT relname, seq_scan, coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, \
                        n_tup_hot_upd, n_tup_del, pg_total_relation_size(relid) \
                 FROM pg_stat_user_tables WHERE schemaname = $1 \
                 AND (n_tup_ins + n_tup_upd + n_tup_del + seq_scan + coalesce(idx_scan, 0)) > 0 \
                 ORDER BY relname",
                &[&instance],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let n = |i: usize| row.get::<_, i64>(i);
            eprintln!(
                "  {instance}.{name}: seq_scan {}, idx_scan {}, inserted {}, updated {} \
                 ({} HOT), deleted {}, {}",
                n(1),
                n(2),
                n(3),
                n(4),
                n(5),
                n(6),
                mib(n(7) as u64)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::expected_operations;

    #[test]
    fn the_cycle_makes_one_event_per_change() {
        for changes in [0, 1, 5, 7, 9, 10, 19, 100_000] {
            let total: u64 = expected_operations(changes).iter().map(|(_, n)| n).sum();
            assert_eq!(total, changes, "{changes} changes");
        }
        assert_eq!(
            expected_operations(17),
            [("created", 10), ("updated", 6), ("deleted", 1)]
        );
    }
}

//! `walhook backfill` (SPEC §1, §3b): asks the running daemon to send the rows that already
//! exist (`SUBSCRIPTION [--where SQL]`), shows every backfill (`--status [--json]`, or a
//! progress line until none runs with `--follow`), and stops one (`--cancel`). The command
//! only asks: it inserts or changes the request row, and `walhook run` does the work.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use tokio_postgres::Client;

use super::deliveries::{seconds, truncate};
use super::terminal::{aligned, printable};
use crate::config::Config;
use crate::outbox::backfill::{self, Backfill, BackfillState, RequestedBy};
use crate::outbox::backfill_ask::{ask, AskError};
use crate::suggest::did_you_mean;
use crate::text::thousands;

/// How often `--follow` reads the progress.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// How much of a failed backfill's error the table shows.
const ERROR_WIDTH: usize = 60;

/// What one `walhook backfill` call does.
#[derive(Clone, Debug)]
pub enum BackfillCommand {
    /// `walhook backfill SUBSCRIPTION [--where SQL]`.
    Request {
        /// The subscription.
        subscription: String,
        /// `--where`.
        filter: Option<String>,
    },
    /// `walhook backfill --status [--json | --follow]`.
    Status {
        /// The list as a JSON array.
        json: bool,
        /// A progress line until no backfill runs.
        follow: bool,
    },
    /// `walhook backfill --cancel SUBSCRIPTION`.
    Cancel {
        /// The subscription.
        subscription: String,
    },
}

/// Why `walhook backfill` failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The request was refused (unknown or inactive subscription, bad `--where`, already
    /// running, the source or outbox failing).
    #[error(transparent)]
    Ask(#[from] AskError),
    /// `--cancel` found nothing running.
    #[error(
        "no backfill of {subscription:?} is running{hint}; `walhook backfill --status` lists them"
    )]
    NoneRunning {
        /// The subscription.
        subscription: String,
        /// `; did you mean "x"?` (among the configured and running ones), or empty.
        hint: String,
    },
    /// The outbox could not be read or changed.
    #[error("{0}")]
    Failed(String),
}

impl BackfillError {
    /// The exit code of SPEC §1: a bad name or condition is a usage error (2), anything else
    /// (already running, nothing to cancel, a database failing) 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackfillError::Ask(
                AskError::UnknownSubscription { .. }
                | AskError::Inactive(_)
                | AskError::Filter(_)
                | AskError::TooOld(_),
            ) => 2,
            _ => 1,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> BackfillError {
    BackfillError::Failed(e.to_string())
}

/// Runs one `walhook backfill` call.
pub async fn run(config: &Config, command: &BackfillCommand) -> Result<(), BackfillError> {
    let db = crate::outbox::open::open(config, "backfill")
        .await
        .map_err(BackfillError::Failed)?;
    let schema = &config.outbox.schema;
    match command {
        BackfillCommand::Request {
            subscription,
            filter,
        } => {
            let asked = ask(
                config,
                &db,
                subscription,
                filter.as_deref(),
                RequestedBy::Cli,
            )
            .await?;
            println!(
                "{}; the running daemon starts it within seconds (progress: walhook backfill \
                 --status)",
                printable(&asked.summary(), false)
            );
            Ok(())
        }
        BackfillCommand::Status { json: true, .. } => {
            let all = backfill::list(&db, schema).await.map_err(failed)?;
            let text = serde_json::to_string_pretty(&all).map_err(failed)?;
            println!("{text}");
            Ok(())
        }
        BackfillCommand::Status { follow: true, .. } => follow(&db, schema).await,
        BackfillCommand::Status { .. } => {
            let all = backfill::list(&db, schema).await.map_err(failed)?;
            print!("{}", table(&all));
            Ok(())
        }
        BackfillCommand::Cancel { subscription } => {
            match backfill::cancel(&db, schema, subscription)
                .await
                .map_err(failed)?
            {
                Some(b) => {
                    println!(
                        "backfill {} of {:?} cancelled after {} rows; the daemon stops before \
                         its next chunk (the rows already written are still delivered)",
                        b.id,
                        printable(&b.subscription, false),
                        thousands(b.rows)
                    );
                    Ok(())
                }
                None => {
                    let running = backfill::running(&db, schema).await.map_err(failed)?;
                    let mut names = config.subscription_names();
                    names.extend(running.iter().map(|b| b.subscription.as_str()));
                    let hint = if names.contains(&subscription.as_str()) {
                        String::new()
                    } else {
                        did_you_mean(subscription, names)
                    };
                    Err(BackfillError::NoneRunning {
                        subscription: subscription.clone(),
                        hint,
                    })
                }
            }
        }
    }
}

/// The `--status` table, newest first, or a note when nothing was ever backfilled.
fn table(all: &[Backfill]) -> String {
    if all.is_empty() {
        return "no backfills yet (walhook backfill SUBSCRIPTION asks for one)\n".into();
    }
    let rows: Vec<[String; 8]> = all.iter().map(cells).collect();
    aligned(
        [
            "ID",
            "SUBSCRIPTION",
            "STATE",
            "ROWS",
            "RATE",
            "STARTED",
            "FINISHED",
            "ERROR",
        ],
        &rows,
    )
}

fn cells(b: &Backfill) -> [String; 8] {
    [
        b.id.to_string(),
        printable(&b.subscription, false),
        b.state.as_str().to_owned(),
        rows(b),
        b.rows_per_second.map_or_else(
            || "-".into(),
            |r| format!("{}/s", thousands(r.round() as i64)),
        ),
        seconds(&b.started_at),
        b.finished_at.as_deref().map_or_else(|| "-".into(), seconds),
        b.error
            .as_deref()
            .map_or_else(|| "-".into(), |e| truncate(e, ERROR_WIDTH)),
    ]
}

/// `48,000 / 200,000 (24%)`, or `48,000` before the daemon has an estimate.
fn rows(b: &Backfill) -> String {
    counted(b, "")
}

/// The rows written of the estimate, each count followed by `unit`.
fn counted(b: &Backfill, unit: &str) -> String {
    match b.rows_estimate.filter(|e| *e > 0) {
        Some(estimate) => format!(
            "{} / {}{unit} ({}%)",
            thousands(b.rows),
            thousands(estimate),
            (b.rows.saturating_mul(100) / estimate).min(100)
        ),
        None => format!("{}{unit}", thousands(b.rows)),
    }
}

/// `partner-sync: 48,000 / 200,000 rows (24%), 51,200 rows/s`.
fn progress(b: &Backfill) -> String {
    let rate = b.rows_per_second.map_or_else(String::new, |r| {
        format!(", {} rows/s", thousands(r.round() as i64))
    });
    format!(
        "{}: {}{rate}",
        printable(&b.subscription, false),
        counted(b, " rows")
    )
}

/// `--status --follow`: a progress line every [`FOLLOW_EVERY`] while any backfill runs
/// (rewritten in place on a terminal, one line a second otherwise), then how each ended.
async fn follow(db: &Client, schema: &str) -> Result<(), BackfillError> {
    let terminal = std::io::stdout().is_terminal();
    let mut followed: Vec<i64> = Vec::new();
    let mut tick: u64 = 0;
    loop {
        let running = backfill::running(db, schema).await.map_err(failed)?;
        if running.is_empty() {
            break;
        }
        for b in &running {
            if !followed.contains(&b.id) {
                followed.push(b.id);
            }
        }
        let line = running.iter().map(progress).collect::<Vec<_>>().join("; ");
        let mut out = std::io::stdout().lock();
        if terminal {
            // \r and erase-to-end-of-line: the line is redrawn where it stands.
            let _ = write!(out, "\r{line}\x1b[K");
            let _ = out.flush();
        } else if tick.is_multiple_of(2) {
            let _ = writeln!(out, "{line}");
        }
        drop(out);
        tick += 1;
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    if followed.is_empty() {
        println!("no backfill is running");
        return Ok(());
    }
    if terminal {
        println!();
    }
    for id in followed {
        if let Some(b) = backfill::one(db, schema, id).await.map_err(failed)? {
            println!("{}", ended(&b));
        }
    }
    Ok(())
}

/// `partner-sync: done, 200,000 rows (backfill 7)`, with the error of a failed one.
fn ended(b: &Backfill) -> String {
    let error = match (&b.state, &b.error) {
        (BackfillState::Failed, Some(e)) => format!(": {}", printable(e, false)),
        _ => String::new(),
    };
    format!(
        "{}: {}, {} rows (backfill {}){error}",
        printable(&b.subscription, false),
        b.state.as_str(),
        thousands(b.rows),
        b.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: i64, estimate: Option<i64>, rate: Option<f64>) -> Backfill {
        Backfill {
            id: 7,
            subscription: "partner-sync".into(),
            state: BackfillState::Running,
            rows,
            rows_estimate: estimate,
            chunks: 3,
            rows_per_second: rate,
            filter: None,
            requested_by: RequestedBy::Cli,
            last_key: None,
            error: None,
            started_at: "2026-01-31T08:00:00.123456Z".into(),
            finished_at: None,
        }
    }

    #[test]
    fn the_progress_line_shows_rows_of_the_estimate_and_the_rate() {
        assert_eq!(
            progress(&sample(48_000, Some(200_000), Some(51_200.0))),
            "partner-sync: 48,000 / 200,000 rows (24%), 51,200 rows/s"
        );
        assert_eq!(progress(&sample(0, None, None)), "partner-sync: 0 rows");
        // The planner's estimate can be low: never more than 100 %.
        assert_eq!(
            rows(&sample(1_500, Some(1_000), None)),
            "1,500 / 1,000 (100%)"
        );
    }

    #[test]
    fn the_status_table_has_a_line_per_backfill() {
        let text = table(&[sample(48_000, Some(200_000), Some(51_200.4))]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  SUBSCRIPTION  STATE"), "{text}");
        assert!(
            lines[1]
                == "7   partner-sync  running  48,000 / 200,000 (24%)  51,200/s  \
                    2026-01-31T08:00:00Z  -         -",
            "{text}"
        );
        assert!(table(&[]).starts_with("no backfills yet"));
    }
}

//! `walhook deliveries`: the delivery log, newest first, read from the outbox view
//! `<schema>.deliveries` (SPEC §1, §5). Every filter is a bind parameter.

use tokio_postgres::Client;

use crate::config::Config;
use crate::outbox::log::{self, Delivery, Filter, Since, Status};
use crate::outbox::replay::{self, ReplayError};

/// How much of `last_error` the table shows.
const ERROR_WIDTH: usize = 60;

/// The filters and output form of one `walhook deliveries` call.
#[derive(Clone, Debug)]
pub struct DeliveriesOptions {
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only deliveries created at or after this.
    pub since: Option<Since>,
    /// At most this many rows.
    pub limit: u32,
    /// One JSON object per line instead of a table.
    pub json: bool,
}

/// Why the delivery log could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    /// The name is neither in the config nor in the outbox (exit 2): `replay`'s own error,
    /// found by the same check.
    #[error(transparent)]
    UnknownSubscription(ReplayError),
    /// The outbox could not be read (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl DeliveriesError {
    /// The exit code of SPEC §1: a bad name is a usage error (2), anything else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            DeliveriesError::UnknownSubscription(_) => 2,
            DeliveriesError::Failed(_) => 1,
        }
    }
}

/// Prints the delivery log.
pub async fn run(config: &Config, options: &DeliveriesOptions) -> Result<(), DeliveriesError> {
    let db = crate::outbox::open::open(config, "deliveries")
        .await
        .map_err(DeliveriesError::Failed)?;
    let schema = &config.outbox.schema;
    if let Some(name) = &options.subscription {
        check_known(config, &db, name).await?;
    }
    let filter = Filter {
        subscription: options.subscription.clone(),
        status: options.status,
        since: options.since.clone(),
        before_id: None,
    };
    let deliveries = log::list(&db, schema, &filter, options.limit)
        .await
        .map_err(|e| DeliveriesError::Failed(e.to_string()))?;

    if options.json {
        for delivery in &deliveries {
            println!("{}", delivery.to_json());
        }
    } else {
        print!("{}", table(&deliveries));
        let counts = log::counts(&db, schema, &filter)
            .await
            .map_err(|e| DeliveriesError::Failed(e.to_string()))?;
        let count = |status: &str| {
            counts
                .iter()
                .find(|(name, _)| name == status)
                .map_or(0, |(_, n)| *n)
        };
        println!(
            "{} shown (limit {}); pending {}, delivered {}, dead {} for these filters",
            deliveries.len(),
            options.limit,
            count("pending"),
            count("delivered"),
            count("dead")
        );
    }
    Ok(())
}

/// A name that is neither configured nor in the outbox is a typo, not an empty log.
async fn check_known(config: &Config, db: &Client, name: &str) -> Result<(), DeliveriesError> {
    let configured = config.subscription_names();
    if configured.contains(&name) {
        return Ok(());
    }
    replay::known(db, &config.outbox.schema, name, &configured)
        .await
        .map_err(|e| match e {
            ReplayError::Failed(message) => DeliveriesError::Failed(message),
            unknown => DeliveriesError::UnknownSubscription(unknown),
        })
}

/// The cells of the human table, in [`HEADER`] order.
fn cells(d: &Delivery) -> [String; 11] {
    [
        d.id.to_string(),
        d.subscription.clone(),
        d.event_id.clone(),
        d.event_type.clone(),
        d.key.clone(),
        d.status.clone(),
        d.attempts.to_string(),
        if d.status == "pending" {
            seconds(&d.next_attempt_at)
        } else {
            "-".into()
        },
        d.last_status_code
            .map_or_else(|| "-".into(), |code| code.to_string()),
        d.last_error
            .as_deref()
            .map_or_else(|| "-".into(), |e| truncate(e, ERROR_WIDTH)),
        seconds(&d.created_at),
    ]
}

/// The human table's column titles.
const HEADER: [&str; 11] = [
    "ID",
    "SUBSCRIPTION",
    "EVENT_ID",
    "EVENT_TYPE",
    "KEY",
    "STATUS",
    "ATTEMPTS",
    "NEXT_ATTEMPT_AT",
    "LAST_STATUS",
    "LAST_ERROR",
    "CREATED_AT",
];

/// An aligned table with a header line, or a one-line note when there are no rows.
fn table(deliveries: &[Delivery]) -> String {
    if deliveries.is_empty() {
        return "no deliveries\n".into();
    }
    let rows: Vec<[String; 11]> = deliveries.iter().map(cells).collect();
    super::terminal::aligned(HEADER, &rows)
}

/// An RFC 3339 timestamp to the second: `2026-01-31T08:00:00Z`.
pub(super) fn seconds(timestamp: &str) -> String {
    match timestamp.get(..19) {
        Some(prefix) => format!("{prefix}Z"),
        None => timestamp.to_owned(),
    }
}

/// At most `max` characters of `text` on one line, with `…` when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    // On one line; errors quote receivers, so anything else is escaped.
    let flat = super::terminal::printable(&text.replace(['\n', '\t'], " "), false);
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_to_one_short_line() {
        assert_eq!(truncate("short", 60), "short");
        let cut = truncate(&format!("line\n{}", "x".repeat(100)), 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.starts_with("line x") && cut.ends_with('…'));
        assert_eq!(truncate("a\u{1b}[2Jb", 60), "a\\u{1b}[2Jb");
    }
}

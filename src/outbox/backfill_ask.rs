//! Asking for a backfill the way `walhook backfill SUBSCRIPTION` and `POST
//! /api/v1/subscriptions/{name}/backfill` both do (SPEC §1, §3b, §7): the subscription must
//! be configured and active, `--where` must work on its table (checked on the source), then
//! the request row is inserted for the running daemon to pick up.

use tokio_postgres::GenericClient;

use super::backfill::{self, Backfill, RequestError, RequestedBy};
use super::StoreError;
use crate::config::{Config, SubscriptionConfig, TableName};
use crate::pg::error::server_message;
use crate::source::filter::{self, FilterError};
use crate::source::watermark;
use crate::suggest::did_you_mean;
use crate::text::thousands;

/// A backfill asked for, with what the source said about it.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The request row as stored.
    pub backfill: Backfill,
    /// The subscription's table.
    pub table: TableName,
    /// The planner's estimate of the rows it will send, when the source gave one.
    pub rows_estimate: Option<i64>,
}

impl Asked {
    /// `backfill 7 of "partner-sync" requested: public.account_invoice, about 12,000 rows`.
    pub fn summary(&self) -> String {
        let rows = match self.rows_estimate {
            Some(n) => format!(", about {} rows", thousands(n)),
            None => String::new(),
        };
        let filter = match &self.backfill.filter {
            Some(f) => format!(" where {f}"),
            None => String::new(),
        };
        format!(
            "backfill {} of {:?} requested: {}{filter}{rows}",
            self.backfill.id, self.backfill.subscription, self.table
        )
    }
}

/// Why a backfill was not asked for.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No subscription has that name in the config.
    #[error("unknown subscription {name:?}: not in the config{hint}")]
    UnknownSubscription {
        /// The name given.
        name: String,
        /// `; did you mean "x"?`, or empty.
        hint: String,
    },
    /// The subscription has `active = false`: nothing it captures is sent.
    #[error(
        "subscription {0:?} has active = false in the config: a backfill would send nothing; \
         set active = true first"
    )]
    Inactive(String),
    /// `--where` is empty or the source refused it.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// pgoutput sends the backfill's watermarks only from PostgreSQL 14 on.
    #[error(
        "the source is PostgreSQL {0}: backfill needs PostgreSQL 14 or later (pgoutput's \
         messages option)"
    )]
    TooOld(String),
    /// The source could not be reached to check `--where`.
    #[error("source.url: {0}")]
    Source(String),
    /// One is running already, or the outbox failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl From<StoreError> for AskError {
    fn from(e: StoreError) -> Self {
        AskError::Request(RequestError::Store(e))
    }
}

/// The configured, active subscription `name`.
pub fn active_subscription<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a SubscriptionConfig, AskError> {
    let sub = config
        .subscription(name)
        .ok_or_else(|| AskError::UnknownSubscription {
            name: name.to_owned(),
            hint: did_you_mean(name, config.subscription_names()),
        })?;
    if !sub.active {
        return Err(AskError::Inactive(name.to_owned()));
    }
    Ok(sub)
}

/// A backfill that may be asked for: the subscription is active and the source took the
/// condition.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The subscription.
    pub subscription: String,
    /// Its table.
    pub table: TableName,
    /// The condition, as given.
    pub filter: Option<String>,
    /// The planner's estimate of the rows it will send, when the source gave one.
    pub rows_estimate: Option<i64>,
}

/// Checks a backfill of subscription `name` limited to the rows passing `filter`, on the
/// config and the source; nothing is written.
pub async fn check(config: &Config, name: &str, filter: Option<&str>) -> Result<Checked, AskError> {
    let sub = active_subscription(config, name)?;
    let table = sub.object.config.table.clone();
    let source = crate::pg::connect_sql(&config.source.conninfo)
        .await
        .map_err(|e| AskError::Source(e.to_string()))?;
    let version = |e: tokio_postgres::Error| AskError::Source(server_message(&e));
    let row = source
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(version)?;
    let version_num = u32::try_from(row.get::<_, i32>(0)).unwrap_or(0);
    if !watermark::carries_watermarks_num(version_num) {
        return Err(AskError::TooOld(row.get(1)));
    }
    if let Some(filter) = filter {
        filter::check(&source, &table, filter).await?;
    }
    // Only for the answer: the daemon records its own estimate when it starts.
    let rows_estimate = filter::estimate(&source, &table, filter).await.ok();
    Ok(Checked {
        subscription: name.to_owned(),
        table,
        filter: filter.map(str::to_owned),
        rows_estimate,
    })
}

impl Checked {
    /// Inserts the request row for the running daemon.
    pub async fn request(
        self,
        outbox: &impl GenericClient,
        schema: &str,
        by: RequestedBy,
    ) -> Result<Asked, AskError> {
        let backfill = backfill::request(
            outbox,
            schema,
            &self.subscription,
            self.filter.as_deref(),
            by,
        )
        .await?;
        Ok(Asked {
            backfill,
            table: self.table,
            rows_estimate: self.rows_estimate,
        })
    }
}

/// Checks and asks for a backfill of subscription `name` ([`check`], then the row).
pub async fn ask(
    config: &Config,
    outbox: &impl GenericClient,
    name: &str,
    filter: Option<&str>,
    by: RequestedBy,
) -> Result<Asked, AskError> {
    check(config, name, filter)
        .await?
        .request(outbox, &config.outbox.schema, by)
        .await
}

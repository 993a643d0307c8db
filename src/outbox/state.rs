//! Whether a subscription is switched off, and why: the `subscription_state` table. A
//! subscription is `paused` by an operator (admin API) until it is resumed, or `gone` because
//! its URL answered 410 Gone, until it is resumed or replayed (SPEC §4, §7).

use std::collections::BTreeMap;

use tokio_postgres::{Client, GenericClient, Row};

use super::StoreError;
use crate::pg::quote_ident;
use crate::pg::sql::{rfc3339, Precision};

/// How the `reason` of a pause begins (`paused through the admin API at 2026-11-23T10:00:00Z`);
/// migration 0005 classified the rows written before the `state` column by it.
const PAUSED_REASON: &str = "paused through the admin API at";

/// Why a subscription is switched off: the `state` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Paused through the admin API; only resume ends it.
    Paused,
    /// Its URL answered 410 Gone; resume or a replay ends it.
    Gone,
}

impl SubscriptionState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Paused => "paused",
            SubscriptionState::Gone => "gone",
        }
    }

    /// The stored value read back; the column's CHECK allows nothing else.
    fn from_stored(text: &str) -> SubscriptionState {
        match text {
            "paused" => SubscriptionState::Paused,
            _ => SubscriptionState::Gone,
        }
    }
}

/// A switched-off subscription: why, in words and as a state, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Paused or gone.
    pub state: SubscriptionState,
    /// `paused through the admin API at …`, or what the 410 answer said.
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl Stopped {
    /// Whether this is a pause (not a 410 deactivation).
    pub fn is_pause(&self) -> bool {
        self.state == SubscriptionState::Paused
    }

    /// A row read with [`read_sql`] (or any statement selecting its columns).
    pub fn from_row(row: &Row) -> Stopped {
        Stopped {
            state: SubscriptionState::from_stored(row.get("state")),
            reason: row.get("reason"),
            since: row.get("since"),
        }
    }
}

/// The columns a [`Stopped`] is read from.
fn columns() -> String {
    format!(
        "state, reason, {} AS since",
        rfc3339("deactivated_at", Precision::Micros)
    )
}

/// The statement that marks `$1` gone with the reason `$2` (the delivery queue prepares it).
pub fn mark_gone_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {}.subscription_state (subscription, state, reason) \
         VALUES ($1, '{}', $2) \
         ON CONFLICT (subscription) DO UPDATE \
         SET state = excluded.state, reason = excluded.reason, deactivated_at = now()",
        quote_ident(schema),
        SubscriptionState::Gone.as_str()
    )
}

/// The statement reading `$1`'s row as [`Stopped::from_row`] takes it (the delivery queue
/// prepares it).
pub fn read_sql(schema: &str) -> String {
    format!(
        "SELECT {} FROM {}.subscription_state WHERE subscription = $1",
        columns(),
        quote_ident(schema)
    )
}

/// Every switched-off subscription, by name.
pub async fn all(db: &Client, schema: &str) -> Result<BTreeMap<String, Stopped>, StoreError> {
    let what = "reading the subscriptions' state";
    let rows = db
        .query(
            &format!(
                "SELECT subscription, {} FROM {}.subscription_state",
                columns(),
                quote_ident(schema)
            ),
            &[],
        )
        .await
        .map_err(StoreError::at(what))?;
    Ok(rows
        .iter()
        .map(|row| (row.get("subscription"), Stopped::from_row(row)))
        .collect())
}

/// One subscription's state, `None` when it is switched on.
pub async fn one(
    db: &impl GenericClient,
    schema: &str,
    subscription: &str,
) -> Result<Option<Stopped>, StoreError> {
    Ok(db
        .query_opt(&read_sql(schema), &[&subscription])
        .await
        .map_err(StoreError::at("reading the subscription's state"))?
        .as_ref()
        .map(Stopped::from_row))
}

/// What [`pause`] did.
#[derive(Clone, Debug)]
pub struct Paused {
    /// The state before: `None`, an earlier pause (nothing changed), or a 410 deactivation.
    pub previous: Option<Stopped>,
    /// The pause in force now.
    pub now: Stopped,
}

/// Pauses `subscription` (a pause already in force stays as it was; a 410 deactivation
/// becomes a pause), in one transaction.
pub async fn pause(
    db: &mut Client,
    schema: &str,
    subscription: &str,
) -> Result<Paused, StoreError> {
    let s = quote_ident(schema);
    let tx = db
        .transaction()
        .await
        .map_err(StoreError::at("starting a transaction"))?;
    let previous = tx
        .query_opt(
            &format!("{} FOR UPDATE", read_sql(schema)),
            &[&subscription],
        )
        .await
        .map_err(StoreError::at("reading the subscription's state"))?
        .as_ref()
        .map(Stopped::from_row);
    if let Some(paused) = previous.as_ref().filter(|p| p.is_pause()) {
        let now = paused.clone();
        tx.commit()
            .await
            .map_err(StoreError::at("committing the pause"))?;
        return Ok(Paused { previous, now });
    }
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO {s}.subscription_state (subscription, state, reason) \
                 VALUES ($1, '{}', '{PAUSED_REASON} ' || {}) \
                 ON CONFLICT (subscription) DO UPDATE \
                 SET state = excluded.state, reason = excluded.reason, deactivated_at = now() \
                 RETURNING {}",
                SubscriptionState::Paused.as_str(),
                rfc3339("now()", Precision::Seconds),
                columns()
            ),
            &[&subscription],
        )
        .await
        .map_err(StoreError::at("pausing the subscription"))?;
    tx.commit()
        .await
        .map_err(StoreError::at("committing the pause"))?;
    Ok(Paused {
        previous,
        now: Stopped::from_row(&row),
    })
}

/// Switches `subscription` back on, whether paused or gone; the row removed, if any.
pub async fn resume(
    db: &Client,
    schema: &str,
    subscription: &str,
) -> Result<Option<Stopped>, StoreError> {
    Ok(db
        .query_opt(
            &format!(
                "DELETE FROM {}.subscription_state WHERE subscription = $1 RETURNING {}",
                quote_ident(schema),
                columns()
            ),
            &[&subscription],
        )
        .await
        .map_err(StoreError::at("resuming the subscription"))?
        .as_ref()
        .map(Stopped::from_row))
}

/// Ends a 410 deactivation of `subscription` (a pause stays); whether there was one.
pub(super) async fn end_gone(
    db: &impl GenericClient,
    schema: &str,
    subscription: &str,
) -> Result<bool, StoreError> {
    Ok(db
        .execute(
            &format!(
                "DELETE FROM {}.subscription_state WHERE subscription = $1 AND state = '{}'",
                quote_ident(schema),
                SubscriptionState::Gone.as_str()
            ),
            &[&subscription],
        )
        .await
        .map_err(StoreError::at("switching the subscription back on"))?
        > 0)
}

//! Replays (SPEC §1, §4, §7): re-queues deliveries, one by id or every dead (or delivered)
//! one of a subscription, optionally since a time; for `walhook replay` and the admin API.
//!
//! A replayed delivery becomes pending and due now with a fresh retry schedule and trigger
//! `replay`; the receiver sees the same event id (and the same body). One exception: an
//! event whose templates could not render it at capture (SPEC §4a) is rendered now, with
//! the config of now, so a replay after the fix sends what the receiver expects; one that
//! still does not render stays dead and is named. Replaying a subscription also switches it
//! back on when a 410 Gone had deactivated it. Everything for one call commits in one
//! transaction.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use super::log::{since_condition, unknown_subscription, Since, Status};
use super::state;
use crate::capture::render::Rendering;
use crate::config::{Config, Operation};
use crate::pg::quote_ident;

/// What to re-queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One delivery, whatever its status.
    Id(i64),
    /// Every delivery of a subscription in this status (dead or delivered), created at or
    /// after `since` when given.
    Subscription {
        /// The subscription's name.
        name: String,
        /// Dead or delivered; never pending.
        status: Status,
        /// Only deliveries created since then.
        since: Option<Since>,
    },
}

/// Why nothing was replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No delivery has that id (exit 1).
    #[error("no delivery with id {0} in the outbox (`walhook deliveries` lists them)")]
    UnknownDelivery(i64),
    /// The name is neither in the config nor in the outbox (exit 2).
    #[error(
        "unknown subscription {name:?}: not in the config and no deliveries in the outbox{hint}"
    )]
    UnknownSubscription {
        /// The name given.
        name: String,
        /// `; did you mean "x"?`, or empty.
        hint: String,
    },
    /// The outbox could not be read or changed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl From<super::StoreError> for ReplayError {
    fn from(e: super::StoreError) -> Self {
        ReplayError::Failed(e.to_string())
    }
}

impl ReplayError {
    /// The exit code of SPEC §1: a bad name is a usage error (2), anything else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReplayError::UnknownSubscription { .. } => 2,
            ReplayError::UnknownDelivery(_) | ReplayError::Failed(_) => 1,
        }
    }
}

/// What one replay did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The subscription whose deliveries were re-queued.
    pub subscription: String,
    /// How many deliveries were re-queued.
    pub count: u64,
    /// For `--id`: the event id and the status the delivery had.
    pub single: Option<(String, String)>,
    /// The subscription had been deactivated by a 410 Gone and is active again.
    pub reactivated: bool,
    /// The reason, when the subscription is paused through the admin API: the replayed
    /// deliveries wait until it is resumed.
    pub paused: Option<String>,
    /// Deliveries left dead because their templates still fail on them: (id, why).
    pub still_failing: Vec<(i64, String)>,
}

/// Re-queues what `target` names in the outbox `schema`, in one transaction. A subscription
/// name that is not in `config` must be known to the outbox.
pub async fn replay(
    db: &mut Client,
    schema: &str,
    target: &Target,
    config: &Config,
) -> Result<Replayed, ReplayError> {
    let configured = config.subscription_names();
    let configured = configured.as_slice();
    let s = quote_ident(schema);
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: tokio_postgres::Error| ReplayError::Failed(format!("{what}: {e}"))
    };
    let requeue = format!(
        "UPDATE {s}.delivery SET status = 'pending', attempts = 0, next_attempt_at = now(), \
         leased_until = NULL, batch_id = NULL, trigger = 'replay', delivered_at = NULL, \
         settled_at = NULL"
    );
    if let Target::Subscription { name, .. } = target {
        if !configured.contains(&name.as_str()) {
            known(db, schema, name, configured).await?;
        }
    }
    let tx = db
        .transaction()
        .await
        .map_err(failed("starting a transaction"))?;
    let (subscription, count, single, still_failing) = match target {
        Target::Id(id) => {
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT d.subscription, d.status, e.event_id FROM {s}.delivery d \
                         LEFT JOIN {s}.event e ON e.seq = d.event_seq \
                         WHERE d.id = $1 FOR UPDATE OF d"
                    ),
                    &[id],
                )
                .await
                .map_err(failed("reading the delivery"))?
                .ok_or(ReplayError::UnknownDelivery(*id))?;
            let event_id: Option<String> = row.get(2);
            let was: String = row.get(1);
            let failing = render_again(&tx, &s, config, "d.id = $1", &[id]).await?;
            let skip: Vec<i64> = failing.iter().map(|(id, _)| *id).collect();
            let count = tx
                .execute(
                    &format!("{requeue} WHERE id = $1 AND NOT (id = ANY($2))"),
                    &[id, &skip],
                )
                .await
                .map_err(failed("re-queueing the delivery"))?;
            (
                row.get::<_, String>(0),
                count,
                Some((event_id.unwrap_or_else(|| "?".into()), was)),
                failing,
            )
        }
        Target::Subscription {
            name,
            status,
            since,
        } => {
            let (since_at, since_micros) = Since::params(since.as_ref());
            let failing = render_again(
                &tx,
                &s,
                config,
                &format!(
                    "d.subscription = $1 AND d.status = $2 AND {}",
                    since_condition("d.created_at", 3, 4)
                ),
                &[name, &status.as_str(), &since_at, &since_micros],
            )
            .await?;
            let skip: Vec<i64> = failing.iter().map(|(id, _)| *id).collect();
            let count = tx
                .execute(
                    &format!(
                        "{requeue} WHERE subscription = $1 AND status = $2 AND {} \
                         AND NOT (id = ANY($5))",
                        since_condition("created_at", 3, 4)
                    ),
                    &[name, &status.as_str(), &since_at, &since_micros, &skip],
                )
                .await
                .map_err(failed("re-queueing the deliveries"))?;
            (name.clone(), count, None, failing)
        }
    };
    // A 410 deactivation ends with a replay; a pause through the admin API does not.
    let reactivated = state::end_gone(&tx, schema, &subscription).await?;
    let paused = state::one(&tx, schema, &subscription)
        .await?
        .map(|stopped| stopped.reason);
    tx.commit().await.map_err(failed("committing the replay"))?;
    Ok(Replayed {
        subscription,
        count,
        single,
        reactivated,
        paused,
        still_failing,
    })
}

/// Renders, with each subscription's templates of now, the bodies capture stored as
/// envelopes among the deliveries `condition` selects (on `d`, with `params`), and stores
/// the result on their events. Returns the deliveries that still do not render, with why.
async fn render_again(
    tx: &Transaction<'_>,
    s: &str,
    config: &Config,
    condition: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(i64, String)>, ReplayError> {
    let failed = |e: tokio_postgres::Error| {
        ReplayError::Failed(format!("reading the events to render: {e}"))
    };
    let rows = tx
        .query(
            &format!(
                "SELECT d.id, d.subscription, e.seq, e.body FROM {s}.delivery d \
                 JOIN {s}.event e ON e.seq = d.event_seq \
                 WHERE {condition} AND e.unrendered FOR UPDATE OF e"
            ),
            params,
        )
        .await
        .map_err(failed)?;
    let mut still_failing = Vec::new();
    // Compiled once per subscription, not per event.
    let mut renderings: std::collections::HashMap<String, Result<Option<Rendering>, String>> =
        std::collections::HashMap::new();
    for row in rows {
        let (id, name, seq, body): (i64, String, i64, Vec<u8>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // A subscription no longer configured has no templates to render with; its
        // deliveries wait, as they are, until it is added back.
        let Some(sub) = config.subscription(&name) else {
            continue;
        };
        let rendering = renderings
            .entry(name)
            .or_insert_with(|| Rendering::compile(sub));
        let rendered = match rendering {
            // The templates are gone: the envelope is what the subscription sends now.
            Ok(None) => Ok((body, None)),
            Ok(Some(rendering)) => render_envelope(rendering, &body),
            Err(e) => Err(e.clone()),
        };
        match rendered {
            Ok((body, target)) => {
                let (url, method) = match target {
                    Some(t) => (Some(t.url), Some(t.method.as_str())),
                    None => (None, None),
                };
                tx.execute(
                    &format!(
                        "UPDATE {s}.event SET body = $1, url = $2, method = $3, \
                         unrendered = NULL WHERE seq = $4"
                    ),
                    &[&body, &url, &method, &seq],
                )
                .await
                .map_err(|e| ReplayError::Failed(format!("storing a rendered event: {e}")))?;
            }
            Err(error) => still_failing.push((id, error)),
        }
    }
    Ok(still_failing)
}

/// Ok when `name` has deliveries or a state in the outbox; otherwise the error with the
/// closest configured or stored name.
pub async fn known(
    db: &Client,
    schema: &str,
    name: &str,
    configured: &[&str],
) -> Result<(), ReplayError> {
    match unknown_subscription(db, schema, name, configured).await? {
        None => Ok(()),
        Some(hint) => Err(ReplayError::UnknownSubscription {
            name: name.to_owned(),
            hint,
        }),
    }
}

/// A stored envelope rendered by `rendering`: the body and the target.
fn render_envelope(
    rendering: &Rendering,
    envelope: &[u8],
) -> Result<(Vec<u8>, Option<crate::config::Target>), String> {
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(envelope)
        .map_err(|e| format!("the stored event is not an envelope: {e}"))?;
    let operation = fields
        .get("operation")
        .and_then(|o| o.as_str())
        .unwrap_or_default();
    let rendered = match Operation::ALL
        .into_iter()
        .find(|op| op.as_str() == operation)
    {
        Some(op) => rendering.render(&fields, op),
        None => rendering.render_truncate(&fields),
    }?;
    let body = rendered.body.unwrap_or_else(|| envelope.to_vec());
    Ok((body, rendered.target))
}

/// The one line `run` prints (and the admin API's replay answers with).
pub fn summary(config: &Config, target: &Target, r: &Replayed) -> String {
    let line = requeued(config, target, r);
    match r.still_failing.as_slice() {
        [] => line,
        [(id, why), ..] => format!(
            "{line}\n{} delivery(s) stay dead because the subscription's templates still fail \
             on them (delivery {id}: {why}); fix the template and replay again",
            r.still_failing.len()
        ),
    }
}

/// What was re-queued, and who will send it.
fn requeued(config: &Config, target: &Target, r: &Replayed) -> String {
    let name = &r.subscription;
    let (them, wait) = if r.count == 1 {
        ("it", "waits")
    } else {
        ("them", "wait")
    };
    // Who will send them: the daemon's workers exist for configured, active subscriptions.
    let when = match config.subscription(name) {
        Some(_) if r.paused.is_some() => format!(
            "subscription {name:?} is {}: {them} {wait} until it is resumed \
             (POST /api/v1/subscriptions/{name}/resume)",
            r.paused.as_deref().unwrap_or_default()
        ),
        Some(sub) if sub.active => format!("a running walhook sends {them} within a second"),
        Some(_) => format!(
            "subscription {name:?} has active = false in the config: {them} {wait} until it is active"
        ),
        None => format!(
            "subscription {name:?} is not in the config: {them} {wait} until it is added back"
        ),
    };
    let reactivated = if r.reactivated {
        format!("; subscription {name:?}, deactivated by a 410 Gone, is switched back on")
    } else {
        String::new()
    };
    match (target, &r.single) {
        (Target::Id(id), Some(_)) if r.count == 0 => {
            format!("delivery {id} of subscription {name:?} was not re-queued")
        }
        (Target::Id(id), Some((event_id, was))) => {
            let what = if was == "pending" {
                "made due now"
            } else {
                "re-queued"
            };
            format!(
                "replayed delivery {id} of subscription {name:?} (was {was}, {what}; same event \
                 id {event_id}){reactivated}; {when}"
            )
        }
        (Target::Subscription { status, since, .. }, _) if r.count == 0 => {
            let since = since
                .as_ref()
                .map(|s| format!(" created {}", s.describe()))
                .unwrap_or_default();
            let resumed = if r.reactivated {
                let pending = match config.subscription(name) {
                    Some(sub) if sub.active && r.paused.is_none() => {
                        "a running walhook resumes its pending deliveries within a second"
                    }
                    _ => "its pending deliveries wait until it is configured and active",
                };
                format!("{reactivated}; {pending}")
            } else {
                String::new()
            };
            format!(
                "nothing to replay: subscription {name:?} has no deliveries with status {}\
                 {since}{resumed}",
                status.as_str()
            )
        }
        (Target::Subscription { status, since, .. }, _) => {
            let since = since
                .as_ref()
                .map(|s| format!(", created {}", s.describe()))
                .unwrap_or_default();
            let deliveries = if r.count == 1 {
                "delivery"
            } else {
                "deliveries"
            };
            format!(
                "replayed {} {deliveries} of subscription {name:?} ({}{since}; same event \
                 ids){reactivated}; {when}",
                r.count,
                status.as_str()
            )
        }
        (Target::Id(_), None) => unreachable!("a replay by id reports its delivery"),
    }
}

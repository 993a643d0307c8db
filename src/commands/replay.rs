//! `walhook replay`: re-queues deliveries (SPEC §1, §4): one by `--id`, or every dead (or
//! delivered) one of a subscription, optionally `--since` a time. The store's
//! [`crate::outbox::replay`] does it; this turns the arguments into its target and its
//! answer into one line.

use crate::config::Config;
use crate::outbox::log::{Since, Status};
use crate::outbox::replay::{replay, summary, ReplayError, Target};

/// The target the command-line arguments name; the error is a usage error.
pub fn target_from_args(
    id: Option<i64>,
    subscription: Option<String>,
    status: Option<Status>,
    since: Option<Since>,
) -> Result<Target, String> {
    if let Some(id) = id {
        let others: Vec<&str> = [
            subscription.as_ref().map(|_| "--subscription"),
            status.map(|_| "--status"),
            since.as_ref().map(|_| "--since"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !others.is_empty() {
            return Err(format!(
                "--id replays exactly one delivery and cannot be combined with {}; \
                 use either `--id N` or `--subscription S --status dead [--since T]`",
                others.join(", ")
            ));
        }
        return Ok(Target::Id(id));
    }
    let Some(name) = subscription else {
        return Err("say what to replay: `--id N` for one delivery, or \
             `--subscription S --status dead [--since T]` for a subscription's dead \
             deliveries"
            .into());
    };
    match status {
        None => Err(format!(
            "--subscription needs --status: `--status dead` re-sends the deliveries that \
             gave up, `--status delivered` the ones already delivered, e.g. \
             `walhook replay --subscription {name} --status dead`"
        )),
        Some(Status::Pending) => Err(format!(
            "--status pending: pending deliveries are still queued and need no replay \
             (a subscription deactivated by 410 Gone is switched back on by \
             `walhook replay --subscription {name} --status dead`; \
             `walhook replay --id N` makes one pending delivery due now)"
        )),
        Some(status) => Ok(Target::Subscription {
            name,
            status,
            since,
        }),
    }
}

/// `walhook replay`: re-queues and prints one line saying what happened.
pub async fn run(config: &Config, target: &Target) -> Result<(), ReplayError> {
    let mut db = crate::outbox::open::open(config, "delivery")
        .await
        .map_err(ReplayError::Failed)?;
    let replayed = replay(&mut db, &config.outbox.schema, target, config).await?;
    println!("{}", summary(config, target, &replayed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        id: Option<i64>,
        sub: Option<&str>,
        status: Option<Status>,
        since: Option<&str>,
    ) -> Result<Target, String> {
        target_from_args(
            id,
            sub.map(String::from),
            status,
            since.map(|s| crate::outbox::log::parse_since(s).unwrap()),
        )
    }

    #[test]
    fn one_id_or_a_subscription_with_a_status() {
        assert_eq!(args(Some(7), None, None, None), Ok(Target::Id(7)));
        assert_eq!(
            args(None, Some("inv"), Some(Status::Dead), Some("2h")),
            Ok(Target::Subscription {
                name: "inv".into(),
                status: Status::Dead,
                since: Some(Since::Ago(std::time::Duration::from_secs(7200))),
            })
        );
        assert!(args(None, Some("inv"), Some(Status::Delivered), None).is_ok());
    }

    #[test]
    fn bad_combinations_say_what_is_needed() {
        let e = args(None, Some("inv"), None, None).unwrap_err();
        assert!(
            e.contains("--subscription needs --status") && e.contains("--status dead"),
            "{e}"
        );
        let e = args(None, Some("inv"), Some(Status::Pending), None).unwrap_err();
        assert!(
            e.starts_with("--status pending: pending deliveries are still queued"),
            "{e}"
        );
        let e = args(Some(1), Some("inv"), Some(Status::Dead), Some("1h")).unwrap_err();
        assert!(
            e.contains("cannot be combined with --subscription, --status, --since"),
            "{e}"
        );
        let e = args(Some(1), None, None, Some("1h")).unwrap_err();
        assert!(e.contains("cannot be combined with --since"), "{e}");
        let e = args(None, None, Some(Status::Dead), None).unwrap_err();
        assert!(e.starts_with("say what to replay"), "{e}");
        assert!(args(None, None, None, None).is_err());
    }
}

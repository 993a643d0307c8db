//! What the admin API shows of a subscription: its settings without a single secret (the
//! URL with credentials hidden, auth by type, headers by name, secrets by count), its state,
//! and the scrubbing of secret values out of text a receiver sent back.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::config::{format_duration, redact_webhook_url, Auth, Ordering, SubscriptionConfig};
use crate::outbox::state::Stopped;

/// The state of a subscription: `active`, `paused` (admin API), `deactivated` (410 Gone),
/// `inactive` (`active = false` in the config) or `removed` (no longer in the config; its
/// deliveries are kept for replay).
pub(super) fn state(configured: Option<&SubscriptionConfig>, stopped: Option<&Stopped>) -> Value {
    let (state, reason, since) = match (configured, stopped) {
        (None, _) => (
            "removed",
            Some("not in the config; its deliveries are kept for replay".to_owned()),
            None,
        ),
        (Some(_), Some(stopped)) if stopped.is_pause() => (
            "paused",
            Some(stopped.reason.clone()),
            Some(stopped.since.clone()),
        ),
        (Some(_), Some(stopped)) => (
            "deactivated",
            Some(stopped.reason.clone()),
            Some(stopped.since.clone()),
        ),
        (Some(sub), None) if !sub.active => (
            "inactive",
            Some("active = false in the config".to_owned()),
            None,
        ),
        (Some(_), None) => ("active", None, None),
    };
    json!({"state": state, "reason": reason, "since": since})
}

/// The settings of `sub` as the admin API lists them: everything but secrets.
pub(super) fn settings(sub: &SubscriptionConfig) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("name".into(), sub.name.clone().into());
    map.insert("object".into(), sub.object.name.clone().into());
    map.insert("table".into(), sub.object.config.table.to_string().into());
    map.insert(
        "operations".into(),
        sub.operations
            .iter()
            .map(|op| op.as_str())
            .chain(sub.truncate.then_some("truncate"))
            .collect(),
    );
    map.insert("watch".into(), json!(sub.watch));
    map.insert("when".into(), json!(sub.when));
    map.insert("event_type".into(), json!(sub.event_type));
    let event_types: Map<String, Value> = sub
        .operations
        .iter()
        .map(|op| (op.as_str().to_owned(), sub.event_type_for(*op).into()))
        .chain(sub.truncate.then(|| {
            (
                "truncate".to_owned(),
                format!("{}.truncated", sub.object.name).into(),
            )
        }))
        .collect();
    map.insert("event_types".into(), Value::Object(event_types));
    map.insert(
        "url".into(),
        redact_webhook_url(&sub.url.to_string()).into(),
    );
    map.insert("url_template".into(), sub.url_template.into());
    map.insert("method".into(), sub.method.to_json());
    map.insert("content_type".into(), sub.content_type.clone().into());
    map.insert("template".into(), sub.template.is_some().into());
    map.insert("signed".into(), (!sub.secrets.is_empty()).into());
    map.insert("secrets".into(), sub.secrets.len().into());
    map.insert("auth".into(), auth_type(sub));
    map.insert(
        "headers".into(),
        sub.headers.iter().map(|(name, _)| name.as_str()).collect(),
    );
    map.insert(
        "batch".into(),
        match &sub.batch {
            Some(batch) => json!({
                "max_events": batch.max_events,
                "max_wait": format_duration(batch.max_wait),
            }),
            None => Value::Null,
        },
    );
    map.insert("rate_limit".into(), rate_limit(sub));
    // The effective cap: the default when the subscription sets none.
    let max_in_flight = sub
        .max_in_flight
        .unwrap_or(crate::delivery::DEFAULT_MAX_IN_FLIGHT);
    map.insert("max_in_flight".into(), json!(max_in_flight));
    map.insert(
        "ordering".into(),
        match sub.ordering {
            Ordering::Key => "key",
            Ordering::None => "none",
        }
        .into(),
    );
    map.insert("active".into(), sub.active.into());
    map.insert("timeout".into(), format_duration(sub.timeout).into());
    map.insert(
        "retry_schedule".into(),
        sub.retry_schedule
            .iter()
            .map(|d| format_duration(*d))
            .collect(),
    );
    map.insert("dead_on_status".into(), json!(sub.dead_on_status));
    map
}

/// `bearer`, `basic` or `header`: the kind of auth, never its values; `null` without.
pub(super) fn auth_type(sub: &SubscriptionConfig) -> Value {
    match &sub.auth {
        None => Value::Null,
        Some(Auth::Bearer { .. }) => "bearer".into(),
        Some(Auth::Basic { .. }) => "basic".into(),
        Some(Auth::Header { .. }) => "header".into(),
    }
}

/// `{"per_second", "burst"}`, or `null` without a rate limit.
pub(super) fn rate_limit(sub: &SubscriptionConfig) -> Value {
    match &sub.rate_limit {
        Some(limit) => json!({"per_second": limit.per_second, "burst": limit.burst}),
        None => Value::Null,
    }
}

/// `text` with every secret value of `sub` replaced by `***`: a receiver may echo a request
/// back, and attempts recorded before the sender scrubbed them are still in the log.
pub(super) fn scrub(sub: &SubscriptionConfig, text: &str) -> String {
    crate::delivery::sender::scrubbed(sub, text)
}

/// RFC 3339 in UTC, to the microsecond.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let micros = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros();
    // Postgres counts from 2000-01-01.
    crate::capture::envelope::pg_micros_to_rfc3339(
        i64::try_from(micros).unwrap_or(i64::MAX) - 946_684_800_000_000,
    )
}

/// Stopped subscriptions by name.
pub(super) type StoppedMap = BTreeMap<String, Stopped>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_subscription_shows_its_method_map_content_type_and_dead_on_status() {
        use crate::config::{Method, Methods};
        let mut sub =
            crate::delivery::request::tests::subscription("https://h.example/orders/{{ key.id }}");
        sub.url_template = true;
        sub.method = Methods::PerOperation {
            create: Some(Method::Post),
            update: Some(Method::Put),
            delete: Some(Method::Delete),
            truncate: None,
        };
        sub.content_type = "application/xml".into();
        sub.dead_on_status = vec![400, 422];
        let shown = settings(&sub);
        assert_eq!(
            shown["method"],
            json!({"create": "POST", "update": "PUT", "delete": "DELETE"})
        );
        assert_eq!(shown["url"], "https://h.example/orders/{{ key.id }}");
        assert_eq!(shown["url_template"], true);
        assert_eq!(shown["content_type"], "application/xml");
        assert_eq!(shown["template"], false);
        assert_eq!(shown["dead_on_status"], json!([400, 422]));
    }
}

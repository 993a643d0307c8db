//! What the admin API shows of a subscription: its settings without a single secret (the
//! URL with credentials hidden, auth by type, headers by name, secrets by count), its state,
//! and the scrubbing of secret values out of text a receiver sent back.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::answers::{BatchView, RateLimitView, Settings, StateView};

use crate::config::{format_duration, redact_webhook_url, Auth, Ordering, SubscriptionConfig};
use crate::outbox::state::Stopped;

/// The state of a subscription: `active`, `paused` (admin API), `deactivated` (410 Gone),
/// `inactive` (`active = false` in the config) or `removed` (no longer in the config; its
/// deliveries are kept for replay).
pub(super) fn state(
    configured: Option<&SubscriptionConfig>,
    stopped: Option<&Stopped>,
) -> StateView {
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
    StateView {
        state,
        reason,
        since,
    }
}

/// The settings of `sub` as the admin API lists them: everything but secrets.
pub(super) fn settings(sub: &SubscriptionConfig) -> Settings {
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
    Settings {
        name: sub.name.clone(),
        object: sub.object.name.clone(),
        table: sub.object.config.table.to_string(),
        operations: sub
            .operations
            .iter()
            .map(|op| op.as_str())
            .chain(sub.truncate.then_some("truncate"))
            .collect(),
        watch: sub.watch.clone(),
        when: sub.when.clone(),
        event_type: sub.event_type.clone(),
        event_types,
        url: redact_webhook_url(&sub.url.to_string()),
        url_template: sub.url_template,
        method: sub.method.to_json(),
        content_type: sub.content_type.clone(),
        template: sub.template.is_some(),
        signed: !sub.secrets.is_empty(),
        secrets: sub.secrets.len(),
        auth: auth_type(sub),
        headers: header_names(sub),
        batch: sub.batch.as_ref().map(|batch| BatchView {
            max_events: batch.max_events,
            max_wait: format_duration(batch.max_wait),
        }),
        rate_limit: rate_limit(sub),
        max_in_flight: sub
            .max_in_flight
            .unwrap_or(crate::delivery::DEFAULT_MAX_IN_FLIGHT),
        ordering: match sub.ordering {
            Ordering::Key => "key",
            Ordering::None => "none",
        },
        active: sub.active,
        timeout: format_duration(sub.timeout),
        retry_schedule: sub
            .retry_schedule
            .iter()
            .map(|d| format_duration(*d))
            .collect(),
        dead_on_status: sub.dead_on_status.clone(),
    }
}

/// The names of the custom headers, never their values.
pub(super) fn header_names(sub: &SubscriptionConfig) -> Vec<String> {
    sub.headers.iter().map(|(name, _)| name.clone()).collect()
}

/// `bearer`, `basic` or `header`: the kind of auth, never its values; `None` without.
pub(super) fn auth_type(sub: &SubscriptionConfig) -> Option<&'static str> {
    sub.auth.as_ref().map(|auth| match auth {
        Auth::Bearer { .. } => "bearer",
        Auth::Basic { .. } => "basic",
        Auth::Header { .. } => "header",
    })
}

/// The rate limit, `None` without one.
pub(super) fn rate_limit(sub: &SubscriptionConfig) -> Option<RateLimitView> {
    sub.rate_limit.as_ref().map(|limit| RateLimitView {
        per_second: limit.per_second,
        burst: limit.burst,
    })
}

/// `text` with every secret value of `sub` replaced by `***`: a receiver may echo a request
/// back, and attempts recorded before the sender scrubbed them are still in the log.
pub(super) fn scrub(sub: &SubscriptionConfig, text: &str) -> String {
    crate::delivery::sender::scrubbed(sub, text)
}

/// Stopped subscriptions by name.
pub(super) type StoppedMap = BTreeMap<String, Stopped>;

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let shown = serde_json::to_value(settings(&sub)).unwrap();
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

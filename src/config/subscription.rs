//! Checks one `[[subscriptions]]` entry and resolves its object and delivery settings.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;

use super::document::{child_index, child_key};
use super::headers::{check_header_name, check_header_value};
use super::model::{
    Auth, BatchConfig, DeliveryConfig, Method, ObjectConfig, Operation, Ordering, RateLimit,
    ResolvedObject, SubscriptionConfig,
};
use super::net::check_webhook_url;
use super::raw::{OneOrMany, RawAuth, RawBatch, RawRateLimit, RawSubscription};
use super::secret::{Secret, SigningSecret, WebhookUrl};
use super::validate::{placeholder_table, Checker};
use crate::suggest::closest;

/// Validates subscription number `index`. `first_use` maps names seen so far to their path.
pub(crate) fn check_subscription(
    checker: &mut Checker<'_, '_>,
    index: usize,
    raw: RawSubscription,
    objects: &IndexMap<String, ObjectConfig>,
    delivery: &DeliveryConfig,
    first_use: &mut HashMap<String, String>,
) -> SubscriptionConfig {
    let path = child_index("subscriptions", index);
    let at = |key: &str| child_key(&path, key);

    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        checker.error(&path, "missing key \"name\"");
    } else {
        checker.name(&name, "subscription", &at("name"));
        match first_use.get(&name) {
            Some(first) => {
                let where_first = checker
                    .doc
                    .line_of(first)
                    .map_or_else(String::new, |line| format!(" (first used at line {line})"));
                checker.error(
                    &at("name"),
                    format!("duplicate subscription name {name:?}{where_first}"),
                );
            }
            None => {
                first_use.insert(name.clone(), at("name"));
            }
        }
    }

    let object = resolve_object(checker, &path, raw.object, raw.table, objects);
    let (operations, truncate) = operations(checker, raw.operations, &at("operations"));
    let watch = checker.columns(
        raw.watch,
        &at("watch"),
        "leave it out to fire on any change",
    );
    if let (Some(watch), Some(fields)) = (&watch, &object.config.fields) {
        for (i, column) in watch.iter().enumerate() {
            if !fields.contains(column) {
                let hint = closest(column, fields.iter().map(String::as_str))
                    .map_or_else(String::new, |s| format!("; did you mean {s:?}?"));
                let message = format!(
                    "{column:?} is not in the fields of object {:?}{hint}",
                    object.name
                );
                checker.error(&child_index(&at("watch"), i), message);
            }
        }
    }
    if raw.when.as_deref().is_some_and(|w| w.trim().is_empty()) {
        checker.error(
            &at("when"),
            "must not be empty; leave it out to fire on every change",
        );
    }
    if let Some(event_type) = &raw.event_type {
        if event_type.is_empty() || event_type.chars().any(char::is_whitespace) {
            checker.error(
                &at("event_type"),
                "must be non-empty and contain no whitespace",
            );
        }
    }

    let url = match raw.url {
        None => {
            checker.error(&path, "missing key \"url\"");
            WebhookUrl::new("", "")
        }
        Some(url) => {
            let url = WebhookUrl::new(url.clone(), checker.display_url(&url, &at("url")));
            if let Err(reason) = check_webhook_url(url.expose()) {
                // Quote the URL as written: its expanded form may contain a token.
                checker.error(&at("url"), format!("invalid URL \"{url}\": {reason}"));
            }
            url
        }
    };
    let method = match raw.method.as_deref() {
        None | Some("POST") => Method::Post,
        Some("GET") => Method::Get,
        Some(other) => {
            checker.error(
                &at("method"),
                format!("unknown method {other:?}; use \"POST\" or \"GET\""),
            );
            Method::Post
        }
    };
    let secrets = secrets(checker, raw.secret, &at("secret"));
    let auth = raw.auth.and_then(|a| auth(checker, a, &at("auth")));
    let headers = headers(
        checker,
        raw.headers.map(|h| h.0).unwrap_or_default(),
        &auth,
        &at("headers"),
    );
    let batch = raw.batch.map(|b| batch(checker, b, &at("batch")));
    let rate_limit = raw
        .rate_limit
        .map(|r| rate_limit(checker, r, &at("rate_limit")));
    let max_in_flight = raw
        .max_in_flight
        .map(|n| checker.count(n, &at("max_in_flight")));
    let ordering = match raw.ordering.as_deref() {
        None | Some("key") => Ordering::Key,
        Some("none") => Ordering::None,
        Some(other) => {
            checker.error(
                &at("ordering"),
                format!("unknown ordering {other:?}; use \"key\" or \"none\""),
            );
            Ordering::Key
        }
    };
    let timeout = match &raw.timeout {
        None => delivery.timeout,
        Some(t) => checker.positive_duration(Some(t), &at("timeout"), delivery.timeout),
    };
    let retry_schedule = match &raw.retry_schedule {
        None => delivery.retry_schedule.clone(),
        Some(list) => checker.durations(list, &at("retry_schedule")),
    };
    for (key, present) in [
        ("allow_networks", raw.allow_networks.is_some()),
        ("shutdown_timeout", raw.shutdown_timeout.is_some()),
    ] {
        if present {
            checker.error(
                &at(key),
                "can only be set in [delivery]; it applies to the whole process",
            );
        }
    }

    SubscriptionConfig {
        name,
        object,
        operations,
        truncate,
        watch,
        when_at: if raw.when.is_some() {
            // The finding's own text minus its empty message: `file:line: key`.
            let at = checker.doc.finding(&at("when"), "").to_string();
            at.trim_end_matches(": ").to_owned()
        } else {
            String::new()
        },
        when: raw.when,
        event_type: raw.event_type,
        url,
        method,
        secrets,
        auth,
        headers,
        batch,
        rate_limit,
        max_in_flight,
        ordering,
        active: raw.active.unwrap_or(true),
        timeout,
        retry_schedule,
    }
}

/// The object named by `object = …`, or the unnamed object of `table = …`.
fn resolve_object(
    checker: &mut Checker<'_, '_>,
    path: &str,
    object: Option<String>,
    table: Option<String>,
    objects: &IndexMap<String, ObjectConfig>,
) -> ResolvedObject {
    let unresolved = |name: String| ResolvedObject {
        name,
        unnamed: false,
        config: ObjectConfig {
            table: placeholder_table(),
            key: None,
            fields: None,
        },
    };
    match (object, table) {
        (Some(_), Some(_)) => {
            checker.error(
                &child_key(path, "table"),
                "cannot be combined with \"object\"; give either object or table",
            );
            unresolved(String::new())
        }
        (None, None) => {
            checker.error(
                path,
                "missing key \"object\" or \"table\"; name the rows this subscription watches",
            );
            unresolved(String::new())
        }
        (None, Some(table)) => {
            let table = checker.table(&table, &child_key(path, "table"));
            ResolvedObject {
                name: table.to_string(),
                unnamed: true,
                config: ObjectConfig {
                    table,
                    key: None,
                    fields: None,
                },
            }
        }
        (Some(name), None) => match objects.get(&name) {
            Some(config) => ResolvedObject {
                name,
                unnamed: false,
                config: config.clone(),
            },
            None => {
                let hint = match closest(&name, objects.keys().map(String::as_str)) {
                    Some(suggestion) => format!("did you mean {suggestion:?}?"),
                    None if objects.is_empty() => "no [objects] are defined".to_owned(),
                    None => format!(
                        "defined objects: {}",
                        objects
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                checker.error(
                    &child_key(path, "object"),
                    format!("unknown object {name:?}; {hint}"),
                );
                unresolved(name)
            }
        },
    }
}

/// `operations`: a non-empty subset of create/update/delete/truncate: the row operations in
/// canonical order, and whether `truncate` is listed (it is not a row operation).
fn operations(
    checker: &mut Checker<'_, '_>,
    raw: Option<Vec<String>>,
    path: &str,
) -> (Vec<Operation>, bool) {
    let Some(list) = raw else {
        return (Operation::ALL.to_vec(), false);
    };
    let mut truncate = false;
    if list.is_empty() {
        checker.error(
            path,
            "must not be empty; leave it out for create, update and delete",
        );
    }
    let mut chosen = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let item = child_index(path, i);
        if text == "truncate" {
            if truncate {
                checker.error(&item, format!("{text:?} is listed twice"));
            }
            truncate = true;
            continue;
        }
        match Operation::ALL.into_iter().find(|op| op.as_str() == text) {
            Some(op) if chosen.contains(&op) => {
                checker.error(&item, format!("{text:?} is listed twice"))
            }
            Some(op) => chosen.push(op),
            None => {
                // SQL words are the usual mistake; map them before guessing by spelling.
                let suggestion = match text.to_ascii_lowercase().as_str() {
                    "insert" | "created" => Some("create"),
                    "updated" => Some("update"),
                    "remove" | "deleted" => Some("delete"),
                    lower => closest(lower, ["create", "update", "delete", "truncate"]),
                };
                let message = match suggestion {
                    Some(s) => format!(
                        "unknown operation {text:?}; did you mean {s:?}? (use create, update, delete or truncate)"
                    ),
                    None => format!(
                        "unknown operation {text:?}; use create, update, delete or truncate"
                    ),
                };
                checker.error(&item, message);
            }
        }
    }
    let chosen = Operation::ALL
        .into_iter()
        .filter(|op| chosen.contains(op))
        .collect();
    (chosen, truncate)
}

/// `secret`: one or several Standard Webhooks secrets.
fn secrets(
    checker: &mut Checker<'_, '_>,
    raw: Option<OneOrMany>,
    path: &str,
) -> Vec<SigningSecret> {
    let items: Vec<(String, String)> = match raw {
        None => return Vec::new(),
        Some(OneOrMany::One(secret)) => vec![(path.to_owned(), secret)],
        Some(OneOrMany::Many(list)) => {
            if list.is_empty() {
                checker.error(
                    path,
                    "must not be empty; leave it out to send unsigned requests",
                );
            }
            list.into_iter()
                .enumerate()
                .map(|(i, s)| (child_index(path, i), s))
                .collect()
        }
    };
    items
        .into_iter()
        .filter_map(|(item, text)| {
            SigningSecret::parse(&text)
                .map_err(|reason| checker.error(&item, reason))
                .ok()
        })
        .collect()
}

/// `auth`: which keys each type requires, and nothing else.
fn auth(checker: &mut Checker<'_, '_>, raw: RawAuth, path: &str) -> Option<Auth> {
    let given = [
        ("token", raw.token.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("name", raw.name.is_some()),
        ("value", raw.value.is_some()),
    ];
    let Some(kind) = raw.kind else {
        checker.error(path, "missing key \"type\"; use bearer, basic or header");
        return None;
    };
    let needs: &[&str] = match kind.as_str() {
        "bearer" => &["token"],
        "basic" => &["username", "password"],
        "header" => &["name", "value"],
        other => {
            checker.error(
                &child_key(path, "type"),
                format!("unknown auth type {other:?}; use bearer, basic or header"),
            );
            return None;
        }
    };
    let mut complete = true;
    for (key, present) in given {
        if needs.contains(&key) && !present {
            checker.error(path, format!("missing key {key:?} for {kind} auth"));
            complete = false;
        }
    }
    for (key, present) in given {
        if present && !needs.contains(&key) {
            checker.error(&child_key(path, key), format!("not used by {kind} auth"));
        }
    }
    for (key, value) in [
        ("token", &raw.token),
        ("password", &raw.password),
        ("value", &raw.value),
    ] {
        match value.as_deref() {
            Some("") => checker.error(&child_key(path, key), "must not be empty"),
            // A line break in a credential would end the header early: refuse it here
            // rather than fail every request later.
            Some(text) => {
                if let Err(reason) = check_header_value(text) {
                    checker.error(&child_key(path, key), reason);
                }
            }
            None => {}
        }
    }
    if !complete {
        return None;
    }
    let secret = |value: Option<String>| Secret::new(value.unwrap_or_default());
    Some(match kind.as_str() {
        "bearer" => Auth::Bearer {
            token: secret(raw.token),
        },
        "basic" => {
            let username = raw.username.unwrap_or_default();
            if username.contains(':') {
                checker.error(
                    &child_key(path, "username"),
                    "must not contain \":\" (RFC 7617)",
                );
            } else if let Err(reason) = check_header_value(&username) {
                checker.error(&child_key(path, "username"), reason);
            }
            Auth::Basic {
                username,
                password: secret(raw.password),
            }
        }
        _ => {
            let name = raw.name.unwrap_or_default();
            if let Err(reason) = check_header_name(&name) {
                checker.error(&child_key(path, "name"), reason);
            }
            let value = raw.value.unwrap_or_default();
            Auth::Header {
                name,
                value: Secret::new(value),
            }
        }
    })
}

/// `headers`: valid, not reserved, not repeated, not clashing with `auth`.
fn headers(
    checker: &mut Checker<'_, '_>,
    raw: Vec<(String, String)>,
    auth: &Option<Auth>,
    path: &str,
) -> Vec<(String, Secret)> {
    let auth_header = match auth {
        Some(Auth::Bearer { .. } | Auth::Basic { .. }) => Some("Authorization"),
        Some(Auth::Header { name, .. }) => Some(name.as_str()),
        None => None,
    };
    let mut out: Vec<(String, Secret)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let item = child_key(path, &name);
        if let Err(reason) = check_header_name(&name) {
            checker.error(&item, reason);
        } else if let Some((earlier, _)) = out.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            checker.error(
                &item,
                format!("repeats header {earlier:?} (header names are case-insensitive)"),
            );
        } else if auth_header.is_some_and(|a| a.eq_ignore_ascii_case(&name)) {
            checker.error(
                &item,
                format!("header {name:?} is already set by auth; remove one"),
            );
        }
        if let Err(reason) = check_header_value(&value) {
            checker.error(&item, reason);
        }
        out.push((name, Secret::new(value)));
    }
    out
}

fn batch(checker: &mut Checker<'_, '_>, raw: RawBatch, path: &str) -> BatchConfig {
    BatchConfig {
        max_events: checker.count(
            raw.max_events.unwrap_or(100),
            &child_key(path, "max_events"),
        ),
        max_wait: checker.duration(
            raw.max_wait.as_ref(),
            &child_key(path, "max_wait"),
            Duration::from_millis(500),
        ),
    }
}

fn rate_limit(checker: &mut Checker<'_, '_>, raw: RawRateLimit, path: &str) -> RateLimit {
    let per_second = match raw.per_second {
        None => {
            checker.error(path, "missing key \"per_second\"");
            1.0
        }
        Some(rate) if !(rate.is_finite() && rate > 0.0) => {
            checker.error(
                &child_key(path, "per_second"),
                format!("must be greater than 0, found {rate}"),
            );
            1.0
        }
        Some(rate) => rate,
    };
    // Default burst: one second's worth, so a steady sender is never throttled below the rate.
    let burst = raw.burst.unwrap_or(per_second.ceil().max(1.0) as i64);
    let burst = checker.count(burst, &child_key(path, "burst"));
    RateLimit {
        per_second,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
    }
}

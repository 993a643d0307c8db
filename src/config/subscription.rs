//! Checks one `[[subscriptions]]` entry and resolves its object and delivery settings.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;

use super::document::{child_index, child_key};
use super::headers::{check_header_name, check_header_value};
use super::model::{
    is_json_media_type, Auth, BatchConfig, DeliveryConfig, Method, Methods, ObjectConfig,
    Operation, Ordering, RateLimit, ResolvedObject, SubscriptionConfig, TemplateOrigin,
    TemplateText,
};
use super::net::{check_webhook_url, check_webhook_url_template};
use super::raw::{OneOrMany, RawAuth, RawBatch, RawMethod, RawRateLimit, RawSubscription};
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
        // A document's watch may name its collections too (SPEC §3a).
        let collections: Vec<&str> = object
            .config
            .children
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let names = || fields.iter().map(String::as_str).chain(collections.clone());
        let what = if collections.is_empty() {
            "fields"
        } else {
            "fields or collections"
        };
        for (i, column) in watch.iter().enumerate() {
            if !names().any(|n| n == column) {
                let hint = closest(column, names())
                    .map_or_else(String::new, |s| format!("; did you mean {s:?}?"));
                let message = format!(
                    "{column:?} is not in the {what} of object {:?}{hint}",
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

    let url_template = raw.url.as_deref().is_some_and(|u| u.contains("{{"));
    let url = match raw.url {
        None => {
            checker.error(&path, "missing key \"url\"");
            WebhookUrl::new("", "")
        }
        Some(url) => {
            let url = WebhookUrl::new(url.clone(), checker.display_url(&url, &at("url")));
            let checked = if url_template {
                check_webhook_url_template(url.expose())
            } else {
                check_webhook_url(url.expose())
            };
            if let Err(reason) = checked {
                // Quote the URL as written: its expanded form may contain a token.
                checker.error(&at("url"), format!("invalid URL \"{url}\": {reason}"));
            }
            url
        }
    };
    let method = methods(checker, raw.method, &at("method"), &operations, truncate);
    let content_type = match raw.content_type {
        None => "application/json".to_owned(),
        Some(text) => {
            if text.trim().is_empty() {
                checker.error(
                    &at("content_type"),
                    "must not be empty; leave it out for application/json",
                );
            } else if let Err(reason) = check_header_value(&text) {
                checker.error(&at("content_type"), reason);
            }
            text
        }
    };
    let template = template(checker, raw.template, raw.template_file, &path);
    if let (Some(_), Some(Method::Get)) = (&template, method.single()) {
        checker.error(
            &at("template"),
            "GET sends no body; a template needs POST, PUT, PATCH or DELETE",
        );
    }
    let dead_on_status = dead_on_status(checker, raw.dead_on_status, &at("dead_on_status"));
    let secrets = secrets(checker, raw.secret, &at("secret"));
    let auth = raw.auth.and_then(|a| auth(checker, a, &at("auth")));
    let headers = headers(
        checker,
        raw.headers.map(|h| h.0).unwrap_or_default(),
        &auth,
        &at("headers"),
    );
    let batch = raw.batch.map(|b| batch(checker, b, &at("batch")));
    if batch.is_some() {
        // GET sends one request per event whatever `batch` says (SPEC §4).
        let refusal = if !is_json_media_type(&content_type) {
            Some(format!(
                "needs a JSON content_type (the request is a JSON array of the bodies), \
                 not {content_type:?}"
            ))
        } else if url_template {
            Some("a batch goes to one URL with one method; the url contains {{ … }}".to_owned())
        } else if method.single().is_none() {
            Some(
                "a batch goes to one URL with one method; method is a map per operation".to_owned(),
            )
        } else {
            None
        };
        if let Some(refusal) = refusal {
            checker.error(&at("batch"), refusal);
        }
    }
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
            place(checker, &at("when"))
        } else {
            String::new()
        },
        when: raw.when,
        event_type: raw.event_type,
        url_at: place(checker, &at("url")),
        url,
        url_template,
        method,
        content_type,
        template,
        dead_on_status,
        secrets,
        auth,
        headers,
        batch,
        rate_limit,
        max_in_flight,
        ordering,
        active: raw.active.unwrap_or(true),
        backfill: raw.backfill.unwrap_or(false),
        timeout,
        retry_schedule,
    }
}

/// `file:line: key` of `path`, for errors found after loading (`when`, templates): the
/// finding's own text minus its empty message; empty for a config not read from a file.
fn place(checker: &Checker<'_, '_>, path: &str) -> String {
    let at = checker.doc.finding(path, "").to_string();
    at.trim_end_matches(": ").to_owned()
}

/// The method names in the order messages list them.
fn method_names() -> String {
    Method::ALL.map(Method::as_str).join(", ")
}

/// One method, or when `path` is a map entry the method of that operation.
fn method(checker: &mut Checker<'_, '_>, text: &str, path: &str) -> Method {
    Method::parse(text).unwrap_or_else(|| {
        checker.error(
            path,
            format!(
                "unknown method {text:?}; use one of {} (upper case)",
                method_names()
            ),
        );
        Method::Post
    })
}

/// `method`: one method, or a map naming a method for every operation the subscription
/// fires on (an event must never go out with a method nobody chose).
fn methods(
    checker: &mut Checker<'_, '_>,
    raw: Option<RawMethod>,
    path: &str,
    operations: &[Operation],
    truncate: bool,
) -> Methods {
    let entries = match raw {
        None => return Methods::Single(Method::Post),
        Some(RawMethod::One(text)) => return Methods::Single(method(checker, &text, path)),
        Some(RawMethod::PerOperation(entries)) => entries,
    };
    let (mut create, mut update, mut delete, mut truncate_method) = (None, None, None, None);
    for (key, text) in entries {
        let item = child_key(path, &key);
        let slot = match key.as_str() {
            "create" => &mut create,
            "update" => &mut update,
            "delete" => &mut delete,
            "truncate" => &mut truncate_method,
            other => {
                let hint = closest(other, ["create", "update", "delete", "truncate"])
                    .map_or_else(String::new, |s| format!("did you mean {s:?}? "));
                checker.error(
                    &item,
                    format!("unknown operation {other:?}; {hint}(use create, update, delete or truncate)"),
                );
                continue;
            }
        };
        *slot = Some(method(checker, &text, &item));
    }
    let named = [
        (
            Operation::Create.as_str(),
            create.is_some(),
            operations.contains(&Operation::Create),
        ),
        (
            Operation::Update.as_str(),
            update.is_some(),
            operations.contains(&Operation::Update),
        ),
        (
            Operation::Delete.as_str(),
            delete.is_some(),
            operations.contains(&Operation::Delete),
        ),
        ("truncate", truncate_method.is_some(), truncate),
    ];
    for (operation, given, fires) in named {
        if fires && !given {
            checker.error(
                path,
                format!(
                    "no method for {operation:?}, which this subscription fires on; \
                     add {operation} = \"POST\" (or another of {})",
                    method_names()
                ),
            );
        }
    }
    Methods::PerOperation {
        create,
        update,
        delete,
        truncate: truncate_method,
    }
}

/// `template` or `template_file` (read now, relative to the config file's directory).
fn template(
    checker: &mut Checker<'_, '_>,
    inline: Option<String>,
    file: Option<String>,
    path: &str,
) -> Option<TemplateText> {
    let inline_path = child_key(path, "template");
    let file_path = child_key(path, "template_file");
    match (inline, file) {
        (Some(_), Some(_)) => {
            checker.error(
                &file_path,
                "cannot be combined with \"template\"; give one of them",
            );
            None
        }
        (None, None) => None,
        (Some(text), None) => {
            if text.trim().is_empty() {
                checker.error(
                    &inline_path,
                    "must not be empty; leave it out to send the event envelope",
                );
            }
            let first_line = checker.doc.string_first_line(&inline_path).unwrap_or(1);
            Some(TemplateText {
                text,
                origin: TemplateOrigin::Inline {
                    at: place(checker, &inline_path),
                    first_line,
                },
            })
        }
        (None, Some(written)) => {
            if written.trim().is_empty() {
                checker.error(&file_path, "must not be empty");
                return None;
            }
            let base = Path::new(checker.doc.file())
                .parent()
                .unwrap_or_else(|| Path::new(""));
            let resolved = base.join(&written);
            match std::fs::read_to_string(&resolved) {
                Ok(text) => Some(TemplateText {
                    text,
                    origin: TemplateOrigin::File {
                        path: written,
                        at: place(checker, &file_path),
                        resolved,
                    },
                }),
                Err(error) => {
                    let shown = if resolved.as_os_str() == written.as_str() {
                        format!("{written:?}")
                    } else {
                        format!("{written:?} ({})", resolved.display())
                    };
                    checker.error(
                        &file_path,
                        format!("cannot read template file {shown}: {error}"),
                    );
                    None
                }
            }
        }
    }
}

/// `dead_on_status`: distinct HTTP statuses from 300 to 599 (a 2xx is a success).
fn dead_on_status(checker: &mut Checker<'_, '_>, raw: Option<Vec<i64>>, path: &str) -> Vec<u16> {
    let mut statuses: Vec<u16> = Vec::new();
    for (i, status) in raw.unwrap_or_default().into_iter().enumerate() {
        let item = child_index(path, i);
        match u16::try_from(status) {
            Ok(code @ 300..=599) if statuses.contains(&code) => {
                checker.error(&item, format!("{code} is listed twice"));
            }
            Ok(code @ 300..=599) => statuses.push(code),
            _ => checker.error(
                &item,
                format!("must be an HTTP status from 300 to 599, found {status}"),
            ),
        }
    }
    statuses
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
        config_key: name.clone(),
        name,
        unnamed: false,
        config: ObjectConfig {
            name: None,
            table: placeholder_table(),
            key: None,
            fields: None,
            keep_state: false,
            children: Vec::new(),
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
                config_key: table.to_string(),
                unnamed: true,
                config: ObjectConfig {
                    name: None,
                    table,
                    key: None,
                    fields: None,
                    keep_state: false,
                    children: Vec::new(),
                },
            }
        }
        (Some(name), None) => match objects.get(&name) {
            Some(config) => ResolvedObject {
                name: config.name.clone().unwrap_or_else(|| name.clone()),
                config_key: name,
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
                    "read" => {
                        checker.error(
                            &item,
                            "\"read\" events come from a backfill, not from operations; set \
                             backfill = true or run `walhook backfill`, and list create, update, \
                             delete or truncate here",
                        );
                        continue;
                    }
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

//! A subscription's request as its config shapes it (SPEC §4a): the templates compiled
//! from `template`/`template_file` and a `url` with `{{ … }}`, the method per operation, and
//! what one event renders to. Errors are placed where the user wrote the template.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::change::{Cell, RowChange};
use super::envelope::{envelope_fields, Commit, ObjectView};
use super::relation::{Column, Identity, Relation};
use super::template::{Part, TemplateError, Templates};
use crate::config::{
    is_xml_media_type, Config, Method, Operation, SubscriptionConfig, TableName, Target,
    TemplateOrigin,
};
use crate::source::columns::TableColumns;
use crate::source::types::TypeKind;

/// How one subscription's requests are shaped beyond the plain envelope.
#[derive(Debug)]
pub struct Rendering {
    templates: Templates,
    /// Indexed like [`Operation::ALL`].
    methods: [Method; 3],
    /// For `<object>.truncated` events.
    truncate_method: Method,
    /// The event carries its own [`Target`]: a URL template or a method per operation.
    routed: bool,
    /// The URL as configured, for a routed subscription without a URL template.
    url: String,
    /// Each body must be JSON: the subscription batches, and a batch is their array.
    json_bodies: bool,
}

/// What one event becomes for a subscription with a [`Rendering`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The body to store, when a template renders it (else the envelope).
    pub body: Option<Vec<u8>>,
    /// The URL and method, when the subscription routes per event.
    pub target: Option<Target>,
}

impl Rendering {
    /// The subscription's rendering, `None` when it sends the plain envelope to one URL
    /// with one method; errors are whole messages naming the config line.
    pub fn compile(sub: &SubscriptionConfig) -> Result<Option<Rendering>, String> {
        let url_template = sub.url_template.then(|| sub.url.expose());
        let per_operation = sub.method.single().is_none();
        if sub.template.is_none() && url_template.is_none() && !per_operation {
            return Ok(None);
        }
        let templates = Templates::compile(
            sub.template.as_ref().map(|t| t.text.as_str()),
            url_template,
            is_xml_media_type(&sub.content_type),
        )
        .map_err(|e| placed(sub, &e))?;
        Ok(Some(Rendering {
            templates,
            methods: Operation::ALL.map(|op| sub.method.for_operation(op)),
            truncate_method: sub.method.for_truncate(),
            routed: url_template.is_some() || per_operation,
            url: sub.url.expose().to_owned(),
            json_bodies: sub.batch.is_some(),
        }))
    }

    /// The `values.X` / `previous.X` lookups of the templates, as (variable, field).
    pub fn fields_read(&self) -> &[(&'static str, String)] {
        self.templates.fields_read()
    }

    /// Renders one event of `operation`, given as its envelope's fields.
    pub fn render(
        &self,
        envelope: &Map<String, Value>,
        operation: Operation,
    ) -> Result<Rendered, String> {
        // A read is sent with the create method, as `Methods::for_operation` says.
        let listed = match operation {
            Operation::Read => Operation::Create,
            op => op,
        };
        let index = Operation::ALL
            .iter()
            .position(|&op| op == listed)
            .expect("every listed operation is in ALL");
        self.render_with(envelope, self.methods[index])
    }

    /// Renders a TRUNCATE's `<object>.truncated` event, given as its envelope's fields.
    pub fn render_truncate(&self, envelope: &Map<String, Value>) -> Result<Rendered, String> {
        self.render_with(envelope, self.truncate_method)
    }

    fn render_with(
        &self,
        envelope: &Map<String, Value>,
        method: Method,
    ) -> Result<Rendered, String> {
        // Only a template reads the event: a subscription that merely picks its method per
        // operation gets no copy of it.
        let event = match self.templates.has_body() || self.templates.has_url() {
            true => super::template::context(envelope),
            false => minijinja::Value::UNDEFINED,
        };
        let body = match self.templates.has_body() {
            true => {
                let body = self
                    .templates
                    .render_body(&event)
                    .map_err(|e| format!("template: {e}"))?;
                if self.json_bodies {
                    serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
                        format!(
                            "template: the body is not JSON ({e}), and a batch is a JSON \
                             array of bodies"
                        )
                    })?;
                }
                Some(body)
            }
            false => None,
        };
        let target = match self.routed {
            false => None,
            true => {
                let url = match self.templates.has_url() {
                    true => {
                        let url = self
                            .templates
                            .render_url(&event)
                            .map_err(|e| format!("url template: {e}"))?;
                        crate::config::check_webhook_url(&url)
                            .map_err(|reason| format!("url template rendered {url:?}: {reason}"))?;
                        url
                    }
                    false => self.url.clone(),
                };
                Some(Target { url, method })
            }
        };
        Ok(Rendered { body, target })
    }
}

/// A template error as the user should read it: for an inline template the config file
/// and its line there, for a template file that file and line, plus the column.
pub fn placed(sub: &SubscriptionConfig, error: &TemplateError) -> String {
    let column = error
        .column
        .map_or_else(String::new, |c| format!(", column {c}"));
    let message = &error.message;
    match (error.part, sub.template.as_ref().map(|t| &t.origin)) {
        (Part::Body, Some(TemplateOrigin::Inline { at, first_line })) => {
            // `at` is "file:line: key"; the error's line is counted from the template's.
            let (file, key) = split_at(at);
            match (file, error.line) {
                (Some(file), Some(line)) => format!(
                    "{file}:{}: {key}: {message} (template line {line}{column})",
                    first_line + line - 1
                ),
                _ => format!("{at}: {message}"),
            }
        }
        (Part::Body, Some(TemplateOrigin::File { path, at, .. })) => match error.line {
            Some(line) => format!(
                "{path}:{line}{}: {message} ({at})",
                column.replace(", column ", ":")
            ),
            None => format!("{path}: {message} ({at})"),
        },
        _ => {
            let at = if sub.url_at.is_empty() {
                format!("subscriptions.{}.url", sub.name)
            } else {
                sub.url_at.clone()
            };
            format!(
                "{at}: {message}{}",
                match error.column {
                    Some(c) => format!(" (column {c})"),
                    None => String::new(),
                }
            )
        }
    }
}

/// "walhook.toml:23: subscriptions[0].template" → (Some("walhook.toml"), "subscriptions[0].template").
fn split_at(at: &str) -> (Option<&str>, &str) {
    match at.split_once(": ") {
        Some((place, key)) => (place.rsplit_once(':').map(|(file, _)| file), key),
        None => (None, at),
    }
}

/// Each templated subscription on `table` rendered over a synthetic event of every
/// operation it fires on, built from the table's real columns: one message per template
/// that fails (or reads a field the event cannot have), naming where it is written.
/// Run at start, at reloads and by `check`, beside [`super::matcher::when_column_problems`].
pub fn synthetic_problems(
    config: &Config,
    table: &TableName,
    columns: &TableColumns,
) -> Vec<String> {
    let mut problems = Vec::new();
    for sub in &config.subscriptions {
        if sub.object.config.table != *table {
            continue;
        }
        // One that does not compile is reported by `Matcher::new`.
        let Ok(Some(rendering)) = Rendering::compile(sub) else {
            continue;
        };
        let relation = Arc::new(synthetic_relation(table, columns, sub));
        let object = &sub.object.config;
        let Ok(view) = ObjectView::resolve(
            &sub.object.name,
            &relation,
            object.key.as_deref(),
            object.fields.as_deref(),
        ) else {
            continue; // A missing column is reported on its own.
        };
        let at = template_at(sub);
        // A configured `fields` list was checked when the config loaded (`Matcher::new`).
        if object.fields.is_none() {
            let columns = || relation.columns.iter().map(|c| c.name.as_str());
            let unknown: Vec<String> = rendering
                .fields_read()
                .iter()
                .filter(|(_, field)| relation.column_index(field).is_none())
                .map(|(variable, field)| {
                    format!(
                        "{at}: reads {variable}.{field}, but table {table} has no column \
                         {field:?}{}",
                        crate::suggest::did_you_mean(field, columns())
                    )
                })
                .collect();
            if !unknown.is_empty() {
                problems.extend(unknown);
                continue;
            }
        }
        for operation in Operation::ALL.into_iter().filter(|&op| sub.fires_on(op)) {
            let change = synthetic_change(&relation, operation);
            let event_type = sub.event_type_for(operation);
            let commit = Commit {
                lsn: crate::pg::Lsn(0x16B_3748),
                time: 0,
                xid: 1,
            };
            let fields = envelope_fields(&change, &view, &event_type, commit);
            if let Err(error) = rendering.render(&fields, operation) {
                problems.push(format!(
                    "{at}: fails on a synthetic {operation} event of object {:?}: {error}",
                    sub.object.name
                ));
                break;
            }
        }
    }
    problems
}

/// Where a subscription's templates are written, for problems not tied to a line.
pub(super) fn template_at(sub: &SubscriptionConfig) -> String {
    match sub.template.as_ref().map(|t| &t.origin) {
        Some(TemplateOrigin::Inline { at, .. }) if !at.is_empty() => at.clone(),
        Some(TemplateOrigin::File { path, at, .. }) => format!("{at} ({path})"),
        _ if !sub.url_at.is_empty() => sub.url_at.clone(),
        _ => format!("subscriptions.{}", sub.name),
    }
}

fn synthetic_relation(
    table: &TableName,
    columns: &TableColumns,
    sub: &SubscriptionConfig,
) -> Relation {
    let key_names = sub
        .object
        .config
        .key
        .clone()
        .unwrap_or_else(|| columns.primary_key.clone());
    let index = |name: &String| columns.columns.iter().position(|(n, _)| n == name);
    let key: Vec<usize> = key_names.iter().filter_map(index).collect();
    Relation {
        oid: 0,
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns: columns
            .columns
            .iter()
            .map(|(name, kind)| Column {
                name: name.clone(),
                type_oid: 0,
                kind: kind.clone(),
            })
            .collect(),
        identity_columns: key.clone(),
        key,
        identity: Identity::Full,
    }
}

/// A change of every column, with a plausible value of its type; an update's old row
/// differs in every column, so `previous` and `changed` name them all.
fn synthetic_change(relation: &Arc<Relation>, operation: Operation) -> RowChange {
    let row = |old: bool| -> Vec<Cell> {
        relation
            .columns
            .iter()
            .map(|c| Cell::Value(sample(&c.kind, old)))
            .collect()
    };
    RowChange {
        relation: relation.clone(),
        operation,
        position: 0,
        new: (operation != Operation::Delete).then(|| row(false)),
        old: (operation != Operation::Create).then(|| row(true)),
    }
}

fn sample(kind: &TypeKind, old: bool) -> Value {
    let n = if old { 1 } else { 2 };
    match kind {
        TypeKind::Bool => Value::Bool(!old),
        TypeKind::Integer => Value::from(n),
        TypeKind::Float => Value::from(f64::from(n) + 0.5),
        TypeKind::Numeric => Value::from(format!("{n}.50")),
        TypeKind::Json => serde_json::json!({ "n": n }),
        TypeKind::TimestampTz => Value::from(format!("2026-01-0{n}T12:00:00.000000Z")),
        TypeKind::Bytea => Value::from("AAEC"),
        TypeKind::Array { element, .. } => Value::Array(vec![sample(element, old)]),
        TypeKind::Text => Value::from(format!("text {n}")),
    }
}

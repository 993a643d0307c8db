//! Payload templates (SPEC §4a): a subscription's request body and URL rendered from its
//! event with minijinja, once, at capture; the outbox stores the bytes and every attempt
//! sends them unchanged, so signatures and retries cover exactly what was rendered.
//!
//! The variables are the envelope's fields (`id`, `type`, `timestamp`, `object`,
//! `operation`, `key`, `values`, `previous`, `changed`, `unavailable`, `source`), exactly as
//! the event would carry them: a `numeric` is the same string here as in the envelope.

use std::fmt::Write as _;

use heck::{ToLowerCamelCase, ToSnakeCase, ToUpperCamelCase};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, UndefinedBehavior, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::bounds::{self, BoundError};

/// The variables a template may read: the envelope's fields.
pub const VARIABLES: [&str; 13] = [
    "id",
    "type",
    "timestamp",
    "object",
    "operation",
    "key",
    "values",
    "previous",
    "changed",
    "unavailable",
    "source",
    // Only a TRUNCATE's event has these two.
    "cascade",
    "restart_identity",
];

/// The filters walhook adds to minijinja's, for receivers' conventions.
pub const FILTERS: [&str; 6] = [
    "camel_keys",
    "snake_keys",
    "pascal_keys",
    "tojson",
    "xml_escape",
    "oper",
];

/// Instructions one render may run: a body of a few hundred lines with a loop over a
/// document's lines runs tens of thousands; running out is a template bug, and that
/// event's delivery goes dead with the error instead of stalling capture.
const FUEL: u64 = 1_000_000;

/// The largest body a template may render. Stored bodies are read back whole by the
/// dispatcher, so a runaway loop must end here rather than in the outbox.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Path-segment escaping for values in a URL template: everything but RFC 3986's
/// unreserved characters, so `{{ key.id }}` holding `a/b?c` stays one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which of a subscription's templates an error is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `template` / `template_file`: the body.
    Body,
    /// `url` with `{{ … }}`.
    Url,
}

/// Why a template was refused when it compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// The template the error is in.
    pub part: Part,
    /// 1-based line in the template, when the error has a place.
    pub line: Option<usize>,
    /// 1-based column in that line, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A subscription's compiled templates.
pub struct Templates {
    env: Environment<'static>,
    body: bool,
    url: bool,
    /// Fields of `values` / `previous` the templates read, as (variable, field), sorted.
    fields_read: Vec<(&'static str, String)>,
    /// Fields that are operands of `*`: they must hold numbers when it runs.
    multiplied: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("body", &self.body)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

const BODY: &str = "body";
const URL: &str = "url";

impl Templates {
    /// Compiles a body template (escaping for XML when `xml`) and a URL template, either
    /// of which may be absent, and refuses unknown variables and unbounded expressions.
    pub fn compile(
        body: Option<&str>,
        url: Option<&str>,
        xml: bool,
    ) -> Result<Templates, TemplateError> {
        let mut env = environment(xml);
        let mut fields_read = Vec::new();
        let mut multiplied = Vec::new();
        for (part, name, source) in [(Part::Body, BODY, body), (Part::Url, URL, url)] {
            let Some(source) = source else { continue };
            env.add_template_owned(name, source.to_owned())
                .map_err(|e| located(part, source, &e))?;
            let tree =
                minijinja::machinery::parse(source, name, Default::default(), Default::default())
                    .map_err(|e| located(part, source, &e))?;
            let bounds = bounds::check_template(&tree).map_err(|e| bound_error(part, e))?;
            multiplied.extend(bounds.multiplied);
            let template = env.get_template(name).expect("added above");
            let mut unknown: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|name| {
                    !VARIABLES.contains(&name.as_str()) && env.globals().all(|(g, _)| g != *name)
                })
                .collect();
            unknown.sort();
            if let Some(name) = unknown.first() {
                return Err(TemplateError {
                    part,
                    line: line_of_word(source, name),
                    column: None,
                    message: format!(
                        "{name:?} is not a variable a template can read ({}){}",
                        VARIABLES.join(", "),
                        crate::suggest::did_you_mean(name, VARIABLES)
                    ),
                });
            }
            for path in template.undeclared_variables(true) {
                let mut parts = path.splitn(3, '.');
                let variable = match parts.next() {
                    Some("values") => "values",
                    Some("previous") => "previous",
                    _ => continue,
                };
                if let Some(field) = parts.next() {
                    fields_read.push((variable, field.to_owned()));
                }
            }
        }
        fields_read.sort();
        fields_read.dedup();
        Ok(Templates {
            env,
            body: body.is_some(),
            url: url.is_some(),
            fields_read,
            multiplied,
        })
    }

    /// Whether the body is rendered (else the envelope is sent).
    pub fn has_body(&self) -> bool {
        self.body
    }

    /// Whether the URL is rendered per event.
    pub fn has_url(&self) -> bool {
        self.url
    }

    /// The `values.X` / `previous.X` lookups the templates make, as (variable, field).
    pub fn fields_read(&self) -> &[(&'static str, String)] {
        &self.fields_read
    }

    /// Renders the body for the event whose envelope is `event` ([`context`]).
    pub fn render_body(&self, event: &Value) -> Result<Vec<u8>, String> {
        self.render(BODY, event).map(String::into_bytes)
    }

    /// Renders the URL for the event whose envelope is `event` ([`context`]).
    pub fn render_url(&self, event: &Value) -> Result<String, String> {
        self.render(URL, event)
    }

    fn render(&self, name: &str, event: &Value) -> Result<String, String> {
        bounds::check_multiplied(&self.multiplied, event)?;
        let template = self.env.get_template(name).map_err(|e| describe(&e))?;
        let mut out = Capped(String::new());
        template
            .render_captured_to(event, &mut out)
            .map_err(|e| match e.kind() {
                ErrorKind::WriteFailure => {
                    format!("the {name} is larger than {} MiB", MAX_BODY / 1024 / 1024)
                }
                _ => describe(&e),
            })?;
        Ok(out.0)
    }
}

/// The template variables of one event: its envelope's fields.
pub fn context(envelope: &serde_json::Map<String, serde_json::Value>) -> Value {
    envelope
        .iter()
        .map(|(k, v)| (k.as_str(), super::when::json(v)))
        .collect()
}

/// A String that refuses to grow past [`MAX_BODY`].
struct Capped(String);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_BODY {
            return Err(std::io::Error::other("template output too large"));
        }
        // minijinja writes only whole UTF-8 strings.
        self.0
            .push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment(xml: bool) -> Environment<'static> {
    let mut env = Environment::new();
    // `previous.partner_id` on a create (no `previous`) renders as nothing rather than
    // failing: templates test with `{% if previous %}` as Jinja users expect.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.remove_global("debug");
    // Debug mode would dump the engine's state into every render error; the `debug`
    // feature is on only for the byte range of compile errors (their column).
    env.set_debug(false);
    env.set_fuel(Some(FUEL));
    env.add_filter("camel_keys", |v: Value| {
        rename_keys(v, &|k| k.to_lower_camel_case())
    });
    env.add_filter("snake_keys", |v: Value| {
        rename_keys(v, &|k| k.to_snake_case())
    });
    env.add_filter("pascal_keys", |v: Value| {
        rename_keys(v, &|k| k.to_upper_camel_case())
    });
    env.add_filter("tojson", tojson);
    env.add_filter("xml_escape", xml_escape);
    env.add_filter("oper", oper);
    env.set_formatter(move |out: &mut Output, state: &State, value: &Value| {
        let text = printed(value);
        if value.is_safe() {
            return write(out, &text);
        }
        match state.name() {
            URL => write(out, &utf8_percent_encode(&text, SEGMENT).to_string()),
            _ if xml => write(out, &quick_xml::escape::escape(text.as_str())),
            _ => write(out, &text),
        }
    });
    env
}

/// What `{{ value }}` prints: `none` and undefined print nothing, as in Jinja.
fn printed(value: &Value) -> String {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => String::new(),
        _ => value.to_string(),
    }
}

fn write(out: &mut Output, text: &str) -> Result<(), Error> {
    out.write_str(text)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "template output too large"))
}

/// A map with its keys renamed (nested maps and lists of maps too); `none` passes through,
/// so a delete's `values` renders as null.
fn rename_keys(value: Value, rename: &dyn Fn(&str) -> String) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => Ok(value),
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let name = match key.as_str() {
                    Some(name) => rename(name),
                    None => key.to_string(),
                };
                entries.push((name, rename_keys(item, rename)?));
            }
            Ok(Value::from_iter(entries))
        }
        ValueKind::Seq => value
            .try_iter()?
            .map(|item| rename_keys(item, rename))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::from),
        _ => Ok(value),
    }
}

/// Minified JSON, keys in their order (`none` is `null`). Not marked safe: in an XML
/// template its quotes are escaped like any text.
fn tojson(value: Value) -> Result<Value, Error> {
    let value = match value.kind() {
        ValueKind::Undefined => Value::from(()),
        _ => value,
    };
    serde_json::to_string(&value)
        .map(Value::from)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// The value's text with `<`, `>`, `&`, `'` and `"` escaped; safe, so autoescaping does
/// not escape it twice. `none` passes through.
fn xml_escape(value: Value) -> Value {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => value,
        _ => Value::from_safe_string(
            quick_xml::escape::escape(value.to_string().as_str()).into_owned(),
        ),
    }
}

/// `operation|oper(create="I", update="U", delete="D")`: the receiver's word for the
/// operation; an operation without one is an error, not an empty string.
fn oper(operation: Value, words: Kwargs) -> Result<Value, Error> {
    if operation.is_none() || operation.is_undefined() {
        return Ok(operation);
    }
    let name = operation.as_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "oper takes the operation (a string), not {}",
                operation.kind()
            ),
        )
    })?;
    // Every keyword must be one of the four operations: a typo would silently never match.
    for given in words.args() {
        if !["create", "update", "delete", "truncate"].contains(&given) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("oper: unknown operation {given:?} (create, update, delete, truncate)"),
            ));
        }
    }
    let word: Option<Value> = words.get(name)?;
    // The words for the other operations are not wanted by this event; minijinja refuses
    // keyword arguments a filter leaves unread, so each is read.
    for given in words.args().collect::<Vec<_>>() {
        let _: Value = words.get(given)?;
    }
    word.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("oper has no word for {name:?}; add {name}=\"…\""),
        )
    })
}

/// `kind: detail`, without minijinja's `(in <name>:1)` suffix, which says nothing to the
/// user: the caller says where.
pub(super) fn detail(error: &Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// [`detail`] and the template line, for an error while rendering.
fn describe(error: &Error) -> String {
    let mut text = detail(error);
    if let Some(line) = error.line() {
        let _ = write!(text, " (line {line})");
    }
    text
}

/// A compile error with its line and column in `source`.
fn located(part: Part, source: &str, error: &Error) -> TemplateError {
    let column = error.range().map(|range| {
        let start = range.start.min(source.len());
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        source[line_start..start].chars().count() + 1
    });
    TemplateError {
        part,
        line: error.line(),
        column,
        message: detail(error),
    }
}

fn bound_error(part: Part, error: BoundError) -> TemplateError {
    TemplateError {
        part,
        line: Some(usize::from(error.line)),
        column: Some(usize::from(error.column)),
        message: error.kind.to_string(),
    }
}

/// The first line of `source` that mentions `word`, for errors minijinja gives no place.
fn line_of_word(source: &str, word: &str) -> Option<usize> {
    source
        .lines()
        .position(|line| line.contains(word))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> Value {
        match json {
            serde_json::Value::Object(map) => context(&map),
            _ => unreachable!(),
        }
    }

    fn update() -> Value {
        event(serde_json::json!({
            "id": "evt_1", "type": "invoice.updated", "object": "account.invoice",
            "operation": "update", "key": {"id": 7},
            "values": {"business_id": 3, "client_vehicle_id": null, "note": "<a & b>"},
            "previous": {"business_id": 2}, "changed": ["business_id"]
        }))
    }

    fn body(source: &str, xml: bool, event: &Value) -> Result<String, String> {
        let templates = Templates::compile(Some(source), None, xml).map_err(|e| e.message)?;
        templates
            .render_body(event)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn an_xml_template_escapes_values_and_names_the_operation_the_receivers_way() {
        let source = "<data><oper>{{ operation|oper(create='I', update='U', delete='D') }}</oper>\
                      <note>{{ values.note }}</note><raw>{{ values.note|xml_escape }}</raw></data>";
        assert_eq!(
            body(source, true, &update()).unwrap(),
            "<data><oper>U</oper><note>&lt;a &amp; b&gt;</note>\
             <raw>&lt;a &amp; b&gt;</raw></data>"
        );
    }

    #[test]
    fn keys_are_renamed_for_the_receiver_and_json_keeps_their_order() {
        let event = update();
        for (filter, expected) in [
            (
                "camel_keys",
                r#"{"businessId":3,"clientVehicleId":null,"note":"<a & b>"}"#,
            ),
            (
                "pascal_keys",
                r#"{"BusinessId":3,"ClientVehicleId":null,"Note":"<a & b>"}"#,
            ),
            (
                "snake_keys",
                r#"{"business_id":3,"client_vehicle_id":null,"note":"<a & b>"}"#,
            ),
        ] {
            let source = format!("{{{{ values|{filter}|tojson }}}}");
            assert_eq!(body(&source, false, &event).unwrap(), expected, "{filter}");
        }
    }

    #[test]
    fn a_deletes_null_values_pass_through_every_filter() {
        let delete = event(serde_json::json!({
            "operation": "delete", "key": {"id": 7}, "values": null, "previous": {"id": 7}
        }));
        assert_eq!(
            body("{{ values|camel_keys|tojson }}", false, &delete).unwrap(),
            "null"
        );
        assert_eq!(
            body("[{{ values|xml_escape }}{{ values.note }}]", true, &delete).unwrap(),
            "[]"
        );
    }

    #[test]
    fn a_url_template_keeps_each_value_inside_its_path_segment() {
        let templates = Templates::compile(
            None,
            Some("https://api.example.com/orders/{{ key.id }}"),
            false,
        )
        .unwrap();
        let event = event(serde_json::json!({"key": {"id": "a/b?c d"}}));
        assert_eq!(
            templates.render_url(&event).unwrap(),
            "https://api.example.com/orders/a%2Fb%3Fc%20d"
        );
    }

    #[test]
    fn template_mistakes_are_refused_with_their_line_and_column() {
        for (source, line, column, message) in [
            (
                "<a>\n  {{ values.note }\n</a>",
                Some(2),
                Some(18),
                "syntax error: unexpected `}`",
            ),
            (
                "<a>\n{{ value.note }}</a>",
                Some(2),
                None,
                "\"value\" is not a variable a template can read",
            ),
            (
                "<a>\n\n   {{ 'ab' * 3 }}</a>",
                Some(3),
                Some(7),
                "`*` multiplies numbers only",
            ),
        ] {
            let error = Templates::compile(Some(source), None, false).unwrap_err();
            assert_eq!(
                (error.line, error.column),
                (line, column),
                "{source}: {error:?}"
            );
            assert!(error.message.starts_with(message), "{source}: {error:?}");
            assert_eq!(error.part, Part::Body);
        }
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel_instead_of_stalling_capture() {
        let source =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let error = body(source, false, &update()).unwrap_err();
        assert!(error.contains("fuel"), "{error}");
    }

    #[test]
    fn oper_without_a_word_for_the_operation_is_an_error_not_an_empty_string() {
        let error = body("{{ operation|oper(create='I') }}", false, &update()).unwrap_err();
        assert!(error.contains("oper has no word for \"update\""), "{error}");
        let error = body("{{ operation|oper(updat='U') }}", false, &update()).unwrap_err();
        assert!(error.contains("unknown operation \"updat\""), "{error}");
    }

    #[test]
    fn the_fields_a_template_reads_are_known_at_compile_time() {
        let templates = Templates::compile(
            Some("{{ values.note }}{% if previous.business_id %}x{% endif %}"),
            Some("https://x.example/{{ values.business_id }}"),
            false,
        )
        .unwrap();
        assert_eq!(
            templates.fields_read(),
            &[
                ("previous", "business_id".to_owned()),
                ("values", "business_id".to_owned()),
                ("values", "note".to_owned()),
            ]
        );
    }
}

//! `when` filters (SPEC §2): a minijinja expression over `values`, `previous` and
//! `operation`, compiled once per subscription and evaluated for each change it might fire on.
//!
//! The expression sees exactly what the event will carry: `values` is the envelope's
//! `values` (the new row limited to the object's fields, `none` for a delete) and `previous`
//! is the envelope's `previous` (undefined when the envelope has none). One difference:
//! `numeric` values, strings in the event, are numbers here so they compare as numbers.

use std::sync::OnceLock;

use minijinja::{Environment, Expression, UndefinedBehavior, Value};

use super::bounds::{self, BoundError};
use super::change::{Cell, Operation, RowChange};
use super::envelope::ObjectView;
use super::template::detail;
use crate::source::types::TypeKind;

/// The variables an expression may read.
pub const VARIABLES: [&str; 3] = ["values", "previous", "operation"];

/// The one environment every expression is compiled in: it holds no per-config state, so a
/// process-wide instance lets compiled expressions be `'static` and live in the matcher.
fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        // `previous.partner_id is defined` must be false on a create (no `previous`), not
        // an error, so lookups on undefined values chain to undefined.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        // `debug()` dumps engine state: useless in a filter and noisy in a log line.
        env.remove_global("debug");
        env.set_fuel(Some(bounds::FUEL));
        env
    })
}

/// A compiled `when` expression.
pub struct When {
    expression: Expression<'static, 'static>,
    reads_previous: bool,
    fields_read: Vec<(&'static str, String)>,
    /// `values` / `previous` read other than as `.field` (`values['notes']`, `values|length`).
    reads_whole: [bool; 2],
    /// Fields that are operands of `*`: they must hold numbers when it runs.
    multiplied: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("reads_previous", &self.reads_previous)
            .field("fields_read", &self.fields_read)
            .field("reads_whole", &self.reads_whole)
            .finish_non_exhaustive()
    }
}

/// Why a `when` expression was rejected at construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    /// The text does not parse as an expression: `syntax error: …`.
    #[error("{0}")]
    Syntax(String),
    /// The expression reads a variable that is never set (a typo like `value.state`).
    #[error(
        "{name:?} is not a variable an expression can read (values, previous, operation){hint}"
    )]
    UnknownVariable {
        /// The variable.
        name: String,
        /// `; did you mean "x"?` or empty.
        hint: String,
    },
    /// The expression could grow without bound (see [`bounds`]).
    #[error("{0}")]
    Unbounded(#[from] BoundError),
}

impl When {
    /// Compiles `source`, rejecting syntax errors and variables other than [`VARIABLES`].
    pub fn compile(source: &str) -> Result<When, WhenError> {
        let env = environment();
        let expression = env
            .compile_expression_owned(source.to_owned())
            .map_err(|e| WhenError::Syntax(detail(&e)))?;
        // It compiled, so it parses; the tree is read only for the bounds.
        let tree =
            minijinja::machinery::parse_expr(source).map_err(|e| WhenError::Syntax(detail(&e)))?;
        let multiplied = bounds::check(&tree)?.multiplied;
        // A misspelt variable would silently be undefined (and `undefined != 'draft'` is
        // true), so unknown names are refused here rather than firing on everything.
        let variables = expression.undeclared_variables(false);
        let mut unknown: Vec<&String> = variables
            .iter()
            .filter(|name| {
                !VARIABLES.contains(&name.as_str()) && env.globals().all(|(g, _)| g != *name)
            })
            .collect();
        unknown.sort();
        if let Some(name) = unknown.first() {
            let hint = crate::suggest::did_you_mean(name, VARIABLES);
            return Err(WhenError::UnknownVariable {
                name: (*name).clone(),
                hint,
            });
        }
        let paths = expression.undeclared_variables(true);
        // minijinja names a lookup it can follow (`values.notes`) by its path and any other
        // use (`values['notes']`, `values|length`, `values is none`) by the bare variable.
        let reads_whole = ["values", "previous"].map(|variable| paths.contains(variable));
        let mut fields_read: Vec<(&'static str, String)> = paths
            .into_iter()
            .filter_map(|path| {
                let mut parts = path.splitn(3, '.');
                let variable = match parts.next()? {
                    "values" => "values",
                    "previous" => "previous",
                    _ => return None,
                };
                Some((variable, parts.next()?.to_owned()))
            })
            .collect();
        fields_read.sort();
        let reads_previous = expression.undeclared_variables(false).contains("previous");
        Ok(When {
            expression,
            reads_previous,
            fields_read,
            reads_whole,
            multiplied,
        })
    }

    /// Whether the expression reads `previous`, which needs the old row.
    pub fn reads_previous(&self) -> bool {
        self.reads_previous
    }

    /// The `values.X` and `previous.X` lookups written in the expression, as
    /// (variable, field), sorted; lookups by subscript (`values[name]`) are not seen.
    pub fn fields_read(&self) -> &[(&'static str, String)] {
        &self.fields_read
    }

    /// The `values.X` / `previous.X` fields that are operands of `*`, as (variable, field).
    pub fn multiplied(&self) -> &[(&'static str, String)] {
        &self.multiplied
    }

    /// Whether the expression reads `variable` (`"values"` or `"previous"`) other than
    /// through `.field` lookups: by subscript, through a filter or test, or as a whole.
    /// Which fields such a read depends on cannot be told before it runs.
    pub fn reads_whole(&self, variable: &str) -> bool {
        match variable {
            "values" => self.reads_whole[0],
            "previous" => self.reads_whole[1],
            _ => false,
        }
    }

    /// Evaluates against a [`scope`]; truthy fires. An error is described for the log.
    pub fn eval(&self, scope: &Value) -> Result<bool, String> {
        bounds::check_multiplied(&self.multiplied, scope)?;
        self.expression
            .eval(scope)
            .map(|v| v.is_true())
            .map_err(|e| detail(&e))
    }
}

/// What an expression sees of one change through one object: `values`, `previous` (left
/// out when the envelope has none) and `operation`.
pub fn scope(change: &RowChange, view: &ObjectView) -> Value {
    let columns = &change.relation.columns;
    let values = match &change.new {
        Some(new) => view
            .fields
            .iter()
            .filter_map(|&i| {
                new[i]
                    .known()
                    .map(|v| (columns[i].name.as_str(), cell(&columns[i].kind, v)))
            })
            .collect(),
        None => Value::from(()),
    };
    let mut entries = vec![
        ("values", values),
        ("operation", Value::from(change.operation.as_str())),
    ];
    if let Some(previous) = previous(change, view) {
        entries.push(("previous", previous));
    }
    entries.into_iter().collect()
}

/// The envelope's `previous`, built the same way `envelope()` builds it (a test holds the
/// two together) so a filter never sees something the event does not say.
fn previous(change: &RowChange, view: &ObjectView) -> Option<Value> {
    let columns = &change.relation.columns;
    let old = change.old.as_deref().unwrap_or_default();
    let entry = |i: usize| {
        old[i]
            .known()
            .map(|v| (columns[i].name.as_str(), cell(&columns[i].kind, v)))
    };
    match change.operation {
        Operation::Create | Operation::Read => None,
        Operation::Update => {
            let new = change.new.as_deref().unwrap_or_default();
            let full = change.old_row_known();
            // With the full old row every field is comparable; otherwise only the identity
            // columns, which are known on both sides.
            let differs = |i: usize| match (old.get(i), new.get(i)) {
                (Some(Cell::Value(o)), Some(Cell::Value(n))) => o != n,
                _ => false,
            };
            let map: Vec<_> = view
                .fields
                .iter()
                .filter(|&&i| differs(i))
                .filter_map(|&i| entry(i))
                .collect();
            (full || !map.is_empty()).then(|| map.into_iter().collect())
        }
        Operation::Delete => Some(view.fields.iter().filter_map(|&i| entry(i)).collect()),
    }
}

/// One event value as an expression sees it: by its column's type when known (a document's
/// values come from walhook's state, whose columns the caller knows), else as JSON.
pub fn value_of(kind: Option<&TypeKind>, value: &serde_json::Value) -> Value {
    match kind {
        Some(kind) => cell(kind, value),
        None => json(value),
    }
}

/// One column's event value as a template value. The event carries `numeric` as a string
/// (SPEC §3, so no digit is lost), but an expression compares it as a number: as text,
/// `"5" > 100` would be true.
fn cell(kind: &TypeKind, value: &serde_json::Value) -> Value {
    match (kind, value) {
        (TypeKind::Numeric, serde_json::Value::String(text)) => decimal(text),
        (TypeKind::Array { element, .. }, serde_json::Value::Array(items)) => {
            items.iter().map(|item| cell(element, item)).collect()
        }
        _ => json(value),
    }
}

/// A decimal's text as a number: exact while it is an integer that fits i128, else the
/// nearest f64 (exact to 15 significant digits, which amounts and quantities are). `NaN`
/// and other text stay strings, so comparing them with a number is an error, not a guess.
fn decimal(text: &str) -> Value {
    if let Ok(i) = text.parse::<i128>() {
        return Value::from(i);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::from(text),
    }
}

/// A JSON value as a template value. Numbers keep their integer-ness so `== 2` works.
pub(super) fn json(value: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match value {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            // Beyond u64 (arbitrary_precision keeps the source's digits): as a decimal.
            _ => match decimal(&n.to_string()) {
                number if number.is_number() => number,
                _ => Value::from(f64::NAN),
            },
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => items.iter().map(json).collect(),
        Json::Object(map) => map.iter().map(|(k, v)| (k.as_str(), json(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str, scope: Value) -> Result<bool, String> {
        When::compile(source).unwrap().eval(&scope)
    }

    fn scope_of(json_scope: serde_json::Value) -> Value {
        json(&json_scope)
    }

    #[test]
    fn a_filter_compares_values_with_literals() {
        let posted = scope_of(serde_json::json!({
            "values": {"state": "posted"}, "operation": "update"
        }));
        assert_eq!(eval("values.state != 'draft'", posted.clone()), Ok(true));
        assert_eq!(eval("values.state == 'draft'", posted.clone()), Ok(false));
        assert_eq!(
            eval(
                "operation == 'update' and values.state in ['posted', 'paid']",
                posted
            ),
            Ok(true)
        );
    }

    #[test]
    fn previous_is_undefined_when_the_event_has_none() {
        let create = scope_of(serde_json::json!({"values": {"id": 1}, "operation": "create"}));
        assert_eq!(
            eval("previous.partner_id is defined", create.clone()),
            Ok(false)
        );
        assert_eq!(eval("previous is defined", create), Ok(false));
        let update = scope_of(serde_json::json!({
            "values": {"partner_id": 2}, "previous": {"partner_id": 1}, "operation": "update"
        }));
        assert_eq!(
            eval("previous.partner_id is defined", update.clone()),
            Ok(true)
        );
        assert_eq!(eval("previous.partner_id == 1", update), Ok(true));
    }

    #[test]
    fn values_of_a_delete_are_none_and_reading_them_is_not_an_error() {
        let delete = scope_of(serde_json::json!({
            "values": null, "previous": {"state": "posted"}, "operation": "delete"
        }));
        assert_eq!(eval("values is none", delete.clone()), Ok(true));
        assert_eq!(eval("values.state == 'posted'", delete.clone()), Ok(false));
        assert_eq!(eval("previous.state == 'posted'", delete), Ok(true));
    }

    #[test]
    fn builtin_filters_and_tests_are_available() {
        let scope = scope_of(serde_json::json!({
            "values": {"number": "inv-42", "amount_total": "120.00"}, "operation": "create"
        }));
        assert_eq!(
            eval("values.number|upper == 'INV-42'", scope.clone()),
            Ok(true)
        );
        assert_eq!(eval("values.amount_total|float > 100", scope), Ok(true));
    }

    #[test]
    fn a_syntax_error_is_reported_at_compile_time() {
        let error = When::compile("values.state ==").unwrap_err();
        assert!(
            matches!(&error, WhenError::Syntax(text) if text.contains("unexpected end of input")),
            "{error}"
        );
        assert!(error.to_string().starts_with("syntax error: "), "{error}");
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_a_suggestion() {
        let error = When::compile("value.state != 'draft'").unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"value\" is not a variable an expression can read (values, previous, \
             operation); did you mean \"values\"?"
        );
        // Globals such as range() and constants are not variables of the row.
        assert!(When::compile("values.n in range(3)").is_ok());
        assert!(When::compile("values.n == none or values.b == True or not false").is_ok());
    }

    #[test]
    fn reading_previous_and_fields_is_known_at_compile_time() {
        let when =
            When::compile("values.state != 'draft' and previous.partner_id is defined").unwrap();
        assert!(when.reads_previous());
        assert_eq!(
            when.fields_read(),
            &[
                ("previous", "partner_id".to_owned()),
                ("values", "state".to_owned())
            ]
        );
        // A column whose name merely contains "previous" does not count.
        let when = When::compile("values.previous_state == 'draft'").unwrap();
        assert!(!when.reads_previous());
    }

    #[test]
    fn reading_values_other_than_by_field_is_known_at_compile_time() {
        // `values['notes']` depends on a field no one can name before it runs.
        for source in [
            "values['notes'] != ''",
            "values|length > 2",
            "values is none",
        ] {
            let when = When::compile(source).unwrap();
            assert!(when.reads_whole("values"), "{source}");
            assert!(!when.reads_whole("previous"), "{source}");
        }
        let when = When::compile("values.notes != '' and previous is defined").unwrap();
        assert!(!when.reads_whole("values"));
        assert!(when.reads_whole("previous"));
    }

    #[test]
    fn a_runtime_error_is_described_not_raised() {
        let scope = scope_of(serde_json::json!({
            "values": {"number": "INV-42"}, "operation": "create"
        }));
        assert_eq!(
            eval("values.number + 1 > 0", scope),
            Err(
                "invalid operation: tried to use + operator on unsupported types string and \
                 number"
                    .to_owned()
            )
        );
    }

    #[test]
    fn an_unknown_filter_is_refused_at_compile_with_a_suggestion() {
        let error = When::compile("values.number|lowr == 'x'").unwrap_err();
        assert!(
            error.to_string().starts_with(
                "filter \"lowr\" is not available in an expression; did you mean \"lower\"?; \
                 available: abs, bool,"
            ),
            "{error}"
        );
    }

    #[test]
    fn an_expression_that_would_run_forever_is_refused_at_compile() {
        for source in [
            "(range(100000) * 100000000000)|sum > 0",
            "(range(100000) * 100000000000)|list|length > 0",
        ] {
            let error = When::compile(source).unwrap_err();
            let text = error.to_string();
            assert!(
                text.starts_with("`*` multiplies numbers only") && text.ends_with("(column 2)"),
                "{source}: {error}"
            );
        }
        // A field multiplied at runtime must hold a number: text would repeat.
        let when = When::compile("values.code * 1000000 == ''").unwrap();
        let scope = scope_of(serde_json::json!({"values": {"code": "x"}, "operation": "create"}));
        assert_eq!(
            when.eval(&scope),
            Err("values.code holds a string, and `*` multiplies numbers only".to_owned())
        );
    }

    #[test]
    fn a_numeric_compares_as_a_number_not_as_text() {
        let numeric = |text: &str| cell(&TypeKind::Numeric, &serde_json::json!(text));
        let scope_with = |amount: Value| -> Value {
            [(
                "values",
                [("amount", amount)].into_iter().collect::<Value>(),
            )]
            .into_iter()
            .collect()
        };
        let large = When::compile("values.amount > 100").unwrap();
        for (text, fires) in [
            ("5", false),
            ("100.00", false),
            ("100.01", true),
            ("-1000", false),
            ("123456789012345678901234567890", true),
        ] {
            assert_eq!(large.eval(&scope_with(numeric(text))), Ok(fires), "{text}");
        }
        assert_eq!(
            When::compile("values.amount == 12.5")
                .unwrap()
                .eval(&scope_with(numeric("12.50"))),
            Ok(true)
        );
        // NaN stays text: comparing it with a number is not silently true or false.
        assert!(numeric("NaN").as_str().is_some());
        let array = TypeKind::Array {
            element: Box::new(TypeKind::Numeric),
            delimiter: b',',
        };
        let amounts = cell(&array, &serde_json::json!(["1.5", null]));
        assert_eq!(amounts.get_item_by_index(0).unwrap(), Value::from(1.5));
    }

    #[test]
    fn compiled_filters_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<When>();
    }
}

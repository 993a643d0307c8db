//! What an expression may do (issue: a `when` must never wedge or crash capture), decided
//! on its syntax tree when the config loads.
//!
//! minijinja's fuel counts interpreter instructions, but its filters and operators loop
//! natively: `(range(100000) * 100000000000)|sum` builds a lazy repeat of 10^16 items in
//! one instruction and sums it without spending fuel, and `|list` of it asks for 240 TB.
//! So fuel alone bounds nothing here. Three rules do, with fuel behind them:
//!
//! - `*` multiplies numbers only: its operands are number literals, `values.x` /
//!   `previous.x` lookups (checked to hold numbers when it runs, see [`Bounds::multiplied`])
//!   or arithmetic of those. Repeating a string or a list is how an expression grows
//!   without bound; everything else grows at most with the size of its source and the row.
//! - Filters come from a list whose output is no larger than their input (or a number):
//!   `replace`, `join`, `indent`, `batch`, `tojson` and friends each multiply their input,
//!   so a chain of them grows exponentially with the length of the expression.
//! - `range()` is the only function (minijinja caps it at 100,000 items); `select`/`map`,
//!   which call other filters and tests by name per item, are left out with the rest.
//!
//! This reads minijinja's unstable syntax tree (feature `unstable_machinery`); the crate is
//! pinned to an exact version in Cargo.toml so an upgrade is a deliberate, tested step.

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::Span;

/// Instructions one evaluation may run: a `when` of a few hundred characters runs a few
/// hundred, so running out means something is wrong, and the change's delivery goes dead
/// with the error rather than stalling capture.
pub const FUEL: u64 = 100_000;

/// Filters an expression may use: each returns something no larger than its input, or a
/// number, so chains of them cannot grow. Sorted.
pub const FILTERS: &[&str] = &[
    "abs",
    "bool",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "first",
    "float",
    "int",
    "items",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "max",
    "min",
    "reverse",
    "round",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "trim",
    "unique",
    "upper",
];

/// Filters whose result is always a number (or an error), and so a fine operand of `*`.
const NUMBER_FILTERS: &[&str] = &["abs", "count", "float", "int", "length", "round"];

/// Functions an expression may call.
const FUNCTIONS: &[&str] = &["range"];

/// What an expression was refused for, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({})", place(*line, *column))]
pub struct BoundError {
    /// What is refused.
    pub kind: Refused,
    /// 1-based line in the expression or template.
    pub line: u16,
    /// 1-based column in that line.
    pub column: u16,
}

/// `column C` on an expression's first line, else `line L, column C`.
fn place(line: u16, column: u16) -> String {
    match line {
        1 => format!("column {column}"),
        _ => format!("line {line}, column {column}"),
    }
}

/// What an expression may not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A filter outside [`FILTERS`].
    #[error(
        "filter {name:?} is not available in an expression{hint}; available: {}",
        FILTERS.join(", ")
    )]
    Filter {
        /// The filter.
        name: String,
        /// `; did you mean "x"?` or empty.
        hint: String,
    },
    /// A call of anything but [`FUNCTIONS`].
    #[error("only range() may be called")]
    Call,
    /// `*` with an operand that may be a string or a list.
    #[error(
        "`*` multiplies numbers only: its operands must be numbers, values.x / previous.x \
         fields or arithmetic of those, since repeating a string or a list has no bound"
    )]
    Repetition,
}

/// What the checks found that must still hold when the expression runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// `values.x` / `previous.x` fields that are operands of `*`, as (variable, field):
    /// the row decides whether they hold numbers, so [`check_multiplied`] is asked before
    /// each evaluation.
    pub multiplied: Vec<(&'static str, String)>,
    /// Checking a template: every filter is allowed, not only [`FILTERS`], and a `*` may
    /// multiply any variable (a loop's `line.qty * line.price`), not only the row's fields.
    template: bool,
}

/// Checks `expr` against the rules in the module doc.
pub fn check(expr: &Expr<'_>) -> Result<Bounds, BoundError> {
    let mut bounds = Bounds::default();
    walk(expr, &mut bounds)?;
    bounds.multiplied.sort();
    bounds.multiplied.dedup();
    Ok(bounds)
}

/// Checks every expression of a payload template (SPEC §4a) for the `*` and call rules.
/// Templates may use every filter: building a body needs `join`, `replace` and `tojson`,
/// and what they build is capped by the template's fuel and output limit instead.
pub fn check_template(template: &Stmt<'_>) -> Result<Bounds, BoundError> {
    let mut bounds = Bounds {
        template: true,
        ..Bounds::default()
    };
    walk_stmt(template, &mut bounds)?;
    bounds.multiplied.sort();
    bounds.multiplied.dedup();
    Ok(bounds)
}

fn walk_stmt(stmt: &Stmt<'_>, bounds: &mut Bounds) -> Result<(), BoundError> {
    let body = |stmts: &[Stmt<'_>], bounds: &mut Bounds| {
        stmts.iter().try_for_each(|stmt| walk_stmt(stmt, bounds))
    };
    match stmt {
        Stmt::Template(t) => body(&t.children, bounds),
        Stmt::EmitExpr(e) => walk(&e.expr, bounds),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::ForLoop(l) => {
            walk(&l.iter, bounds)?;
            l.filter_expr.iter().try_for_each(|e| walk(e, bounds))?;
            body(&l.body, bounds)?;
            body(&l.else_body, bounds)
        }
        Stmt::IfCond(c) => {
            walk(&c.expr, bounds)?;
            body(&c.true_body, bounds)?;
            body(&c.false_body, bounds)
        }
        Stmt::WithBlock(w) => {
            w.assignments
                .iter()
                .try_for_each(|(_, value)| walk(value, bounds))?;
            body(&w.body, bounds)
        }
        Stmt::Set(s) => walk(&s.expr, bounds),
        Stmt::SetBlock(s) => {
            s.filter.iter().try_for_each(|e| walk(e, bounds))?;
            body(&s.body, bounds)
        }
        Stmt::AutoEscape(a) => {
            walk(&a.enabled, bounds)?;
            body(&a.body, bounds)
        }
        Stmt::FilterBlock(f) => {
            walk(&f.filter, bounds)?;
            body(&f.body, bounds)
        }
        Stmt::Do(d) => Err(refused(Refused::Call, d.span())),
    }
}

/// Whether each multiplied field of `scope` holds a number (or nothing), else why not.
pub fn check_multiplied(
    multiplied: &[(&'static str, String)],
    scope: &minijinja::Value,
) -> Result<(), String> {
    use minijinja::value::ValueKind;
    for (variable, field) in multiplied {
        let value = scope
            .get_attr(variable)
            .and_then(|row| row.get_attr(field))
            .unwrap_or_default();
        match value.kind() {
            ValueKind::Number | ValueKind::Bool | ValueKind::None | ValueKind::Undefined => {}
            kind => {
                return Err(format!(
                    "{variable}.{field} holds a {kind}, and `*` multiplies numbers only"
                ))
            }
        }
    }
    Ok(())
}

fn refused(kind: Refused, span: Span) -> BoundError {
    BoundError {
        kind,
        line: span.start_line,
        column: span.start_col + 1,
    }
}

fn walk(expr: &Expr<'_>, bounds: &mut Bounds) -> Result<(), BoundError> {
    match expr {
        Expr::Var(_) | Expr::Const(_) => Ok(()),
        Expr::Slice(slice) => {
            walk(&slice.expr, bounds)?;
            for part in [&slice.start, &slice.stop, &slice.step]
                .into_iter()
                .flatten()
            {
                walk(part, bounds)?;
            }
            Ok(())
        }
        Expr::UnaryOp(op) => walk(&op.expr, bounds),
        Expr::BinOp(op) => {
            if matches!(op.op, BinOpKind::Mul) {
                for operand in [&op.left, &op.right] {
                    if !numeric(operand, bounds) {
                        return Err(refused(Refused::Repetition, op.span()));
                    }
                }
            }
            walk(&op.left, bounds)?;
            walk(&op.right, bounds)
        }
        Expr::Compare(compare) => {
            walk(&compare.expr, bounds)?;
            compare.ops.iter().try_for_each(|op| walk(&op.expr, bounds))
        }
        Expr::IfExpr(choice) => {
            walk(&choice.test_expr, bounds)?;
            walk(&choice.true_expr, bounds)?;
            choice
                .false_expr
                .iter()
                .try_for_each(|expr| walk(expr, bounds))
        }
        Expr::Filter(filter) => {
            if !bounds.template && !FILTERS.contains(&filter.name) {
                let hint = crate::suggest::did_you_mean(filter.name, FILTERS.iter().copied());
                let name = filter.name.to_owned();
                return Err(refused(Refused::Filter { name, hint }, filter.span()));
            }
            filter.expr.iter().try_for_each(|expr| walk(expr, bounds))?;
            walk_args(&filter.args, bounds)
        }
        Expr::Test(test) => {
            walk(&test.expr, bounds)?;
            walk_args(&test.args, bounds)
        }
        Expr::GetAttr(lookup) => walk(&lookup.expr, bounds),
        Expr::GetItem(lookup) => {
            walk(&lookup.expr, bounds)?;
            walk(&lookup.subscript_expr, bounds)
        }
        Expr::Call(call) => match &call.expr {
            Expr::Var(var) if FUNCTIONS.contains(&var.id) => walk_args(&call.args, bounds),
            _ => Err(refused(Refused::Call, call.span())),
        },
        Expr::List(list) => list.items.iter().try_for_each(|item| walk(item, bounds)),
        Expr::Map(map) => map
            .keys
            .iter()
            .chain(&map.values)
            .try_for_each(|item| walk(item, bounds)),
    }
}

fn walk_args(args: &[CallArg<'_>], bounds: &mut Bounds) -> Result<(), BoundError> {
    args.iter().try_for_each(|arg| match arg {
        CallArg::Pos(expr)
        | CallArg::Kwarg(_, expr)
        | CallArg::PosSplat(expr)
        | CallArg::KwargSplat(expr) => walk(expr, bounds),
    })
}

/// Whether `expr` can only be a number when it runs (recording the row's fields it relies
/// on in `bounds`).
fn numeric(expr: &Expr<'_>, bounds: &mut Bounds) -> bool {
    match expr {
        Expr::Const(constant) => constant.value.is_number(),
        Expr::UnaryOp(op) => numeric(&op.expr, bounds),
        Expr::BinOp(op) => {
            matches!(
                op.op,
                BinOpKind::Add
                    | BinOpKind::Sub
                    | BinOpKind::Mul
                    | BinOpKind::Div
                    | BinOpKind::FloorDiv
                    | BinOpKind::Rem
                    | BinOpKind::Pow
            ) && numeric(&op.left, bounds)
                && numeric(&op.right, bounds)
        }
        Expr::Filter(filter) => NUMBER_FILTERS.contains(&filter.name),
        Expr::IfExpr(choice) => {
            numeric(&choice.true_expr, bounds)
                && choice
                    .false_expr
                    .as_ref()
                    .is_none_or(|expr| numeric(expr, bounds))
        }
        Expr::GetAttr(lookup) => row_field(&lookup.expr, lookup.name, bounds) || bounds.template,
        Expr::GetItem(lookup) => match &lookup.subscript_expr {
            Expr::Const(key) => match key.value.as_str() {
                Some(name) => row_field(&lookup.expr, name, bounds) || bounds.template,
                None => bounds.template,
            },
            _ => bounds.template,
        },
        Expr::Var(_) => bounds.template,
        _ => false,
    }
}

/// `values.<name>` / `previous.<name>`: recorded, since only the row can say it is a number.
fn row_field(base: &Expr<'_>, name: &str, bounds: &mut Bounds) -> bool {
    let Expr::Var(var) = base else { return false };
    let variable = match var.id {
        "values" => "values",
        "previous" => "previous",
        _ => return false,
    };
    bounds.multiplied.push((variable, name.to_owned()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::machinery::parse_expr;

    fn at(kind: Refused, column: u16) -> BoundError {
        BoundError {
            kind,
            line: 1,
            column,
        }
    }

    fn checked(source: &str) -> Result<Bounds, BoundError> {
        check(&parse_expr(source).expect(source))
    }

    #[test]
    fn expressions_that_grow_without_bound_are_refused_with_what_and_where() {
        for (source, error) in [
            (
                "(range(100000) * 100000000000)|sum > 0",
                at(Refused::Repetition, 2),
            ),
            (
                "(range(100000) * 100000000000)|list|length > 0",
                at(Refused::Repetition, 2),
            ),
            ("[1, 2] * 3 == []", at(Refused::Repetition, 1)),
            ("3 * 'x' != ''", at(Refused::Repetition, 1)),
            ("(values.tags|list) * 2 == []", at(Refused::Repetition, 1)),
            (
                "values.a|replace('a', 'aaaaaaaaaa') != ''",
                at(
                    Refused::Filter {
                        name: "replace".into(),
                        hint: String::new(),
                    },
                    10,
                ),
            ),
            (
                "values.a|join(',') != ''",
                at(
                    Refused::Filter {
                        name: "join".into(),
                        hint: String::new(),
                    },
                    10,
                ),
            ),
            (
                "range(10)|map('string')|list",
                at(
                    Refused::Filter {
                        name: "map".into(),
                        hint: "; did you mean \"max\"?".into(),
                    },
                    11,
                ),
            ),
            ("dict(a=1) != {}", at(Refused::Call, 1)),
            ("values.name.upper() == 'X'", at(Refused::Call, 12)),
        ] {
            assert_eq!(checked(source), Err(error), "{source}");
        }
    }

    #[test]
    fn ordinary_filters_and_arithmetic_pass_and_name_the_fields_multiplied() {
        for (source, multiplied) in [
            ("values.state != 'draft'", vec![]),
            ("values.n in range(3)", vec![]),
            (
                "values.code|lower|trim == 'x1' and values.tags|length > 2",
                vec![],
            ),
            (
                "values.qty * values.price > 1000",
                vec![("values", "price"), ("values", "qty")],
            ),
            (
                "(values['qty'] + 1) * -2 * (previous.qty|int) < 0",
                vec![("values", "qty")],
            ),
            ("values.amount * 1.2 > 100", vec![("values", "amount")]),
            ("values.lines|length * 2 > 4", vec![]),
        ] {
            let multiplied: Vec<_> = multiplied
                .into_iter()
                .map(|(v, f)| (v, f.to_owned()))
                .collect();
            assert_eq!(
                checked(source).map(|b| b.multiplied),
                Ok(multiplied),
                "{source}"
            );
        }
    }

    #[test]
    fn a_multiplied_field_holding_text_or_a_list_is_an_error_when_it_runs() {
        let multiplied = [("values", "qty".to_owned())];
        let scope =
            |qty: minijinja::Value| minijinja::context! { values => minijinja::context! { qty } };
        assert_eq!(check_multiplied(&multiplied, &scope(3.into())), Ok(()));
        assert_eq!(check_multiplied(&multiplied, &scope(().into())), Ok(()));
        assert_eq!(
            check_multiplied(&multiplied, &scope("12".into())),
            Err("values.qty holds a string, and `*` multiplies numbers only".into())
        );
        assert_eq!(
            check_multiplied(&multiplied, &scope(vec![1, 2].into())),
            Err("values.qty holds a sequence, and `*` multiplies numbers only".into())
        );
        // A delete's `values` is none: nothing to multiply, nothing to refuse.
        let delete = minijinja::context! { values => () };
        assert_eq!(check_multiplied(&multiplied, &delete), Ok(()));
    }
}

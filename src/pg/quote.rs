//! Writing SQL text: identifiers and literals quoted the way Postgres' own `quote_ident`
//! and `quote_literal` do, so that fixes printed for users read naturally
//! (`ALTER TABLE public.account_invoice …`) and odd names still work; and [`TableName`],
//! the `schema.table` both the config and every statement name tables by.

use std::fmt;
use std::str::FromStr;

/// Every Postgres keyword that is not UNRESERVED (reserved, column-name and
/// type-or-function-name), as `SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'`
/// lists them, for PostgreSQL 13 to 17 together; sorted for `binary_search`. Postgres's
/// own `quote_ident` quotes exactly these (besides names with other characters), and a
/// word is quoted here if any supported version needs it, which is harmless for the
/// others. `tests/it/setup.rs` compares this with the server's `quote_ident`.
const NOT_UNRESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// An identifier, quoted only when it needs to be.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && NOT_UNRESERVED.binary_search(&name).is_err();
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `schema.table`, each part quoted as needed.
pub fn quote_table(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// A table as `schema.name`; a name without schema is in `public`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema, `public` unless given.
    pub schema: String,
    /// Table name within the schema.
    pub name: String,
}

impl FromStr for TableName {
    type Err = String;

    /// Parses `schema.table` or `table`. Names are taken as written (no quoting yet).
    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("invalid table name {text:?}; expected \"schema.table\" or \"table\"");
        let mut parts = text.split('.');
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => ("public", name),
            (Some(schema), Some(name), None) => (schema, name),
            _ => return Err(invalid()),
        };
        let valid_part = |part: &str| !part.is_empty() && !part.chars().any(char::is_whitespace);
        if !valid_part(schema) || !valid_part(name) {
            return Err(invalid());
        }
        Ok(TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyword_list_is_sorted_for_binary_search() {
        assert!(NOT_UNRESERVED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(quote_ident("walhook"), "walhook");
        assert_eq!(quote_ident("account_invoice2"), "account_invoice2");
        assert_eq!(quote_ident("_x"), "_x");
        assert_eq!(quote_ident("Invoice"), "\"Invoice\"");
        assert_eq!(quote_ident("my table"), "\"my table\"");
        assert_eq!(quote_ident("2fa"), "\"2fa\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("join"), "\"join\"");
        assert_eq!(quote_ident("left"), "\"left\"");
        assert_eq!(quote_ident("between"), "\"between\"");
        assert_eq!(quote_ident("abort"), "abort");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        let table: TableName = "erp.Order".parse().unwrap();
        assert_eq!(quote_table(&table), "erp.\"Order\"");
    }

    #[test]
    fn table_names() {
        let t: TableName = "public.account_invoice".parse().unwrap();
        assert_eq!(
            (t.schema.as_str(), t.name.as_str()),
            ("public", "account_invoice")
        );
        assert_eq!(
            "stock_move".parse::<TableName>().unwrap().to_string(),
            "public.stock_move"
        );
        assert_eq!("erp.x".parse::<TableName>().unwrap().to_string(), "erp.x");
        for bad in ["a.b.c", "", ".x", "x.", "my table"] {
            assert_eq!(
                bad.parse::<TableName>(),
                Err(format!(
                    "invalid table name {bad:?}; expected \"schema.table\" or \"table\""
                ))
            );
        }
    }
}

//! A watched table's columns as the catalog describes them, before any change arrives:
//! what `check`, `run` and reloads compile `when` expressions and templates against.

use tokio_postgres::Client;

use super::types::{TypeKind, TypeLookupError, TypeRegistry};
use crate::config::TableName;

/// One table's columns in table order, and its primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableColumns {
    /// (name, kind) per column, dropped columns left out.
    pub columns: Vec<(String, TypeKind)>,
    /// The primary key's columns in key order (empty without one).
    pub primary_key: Vec<String>,
}

impl TableColumns {
    /// The column names in table order.
    pub fn names(&self) -> Vec<String> {
        self.columns.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// Why the catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ColumnsError {
    /// A catalog query failed.
    #[error("reading the columns of {table}: {source}")]
    Query {
        /// The table.
        table: TableName,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A column's type could not be looked up.
    #[error("reading the column types of {table}: {source}")]
    Types {
        /// The table.
        table: TableName,
        /// The error.
        #[source]
        source: TypeLookupError,
    },
}

/// `table`'s columns, or `None` when it does not exist.
pub async fn table_columns(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableColumns>, ColumnsError> {
    let query = |source| ColumnsError::Query {
        table: table.clone(),
        source,
    };
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid, \
                    coalesce(a.attnum = ANY(i.indkey), false), \
                    coalesce(array_position(i.indkey::int2[], a.attnum), 0) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = $1 AND c.relname = $2 \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(query)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let oids: Vec<u32> = rows.iter().map(|r| r.get(1)).collect();
    let mut types = TypeRegistry::new();
    types
        .resolve(client, &oids)
        .await
        .map_err(|source| ColumnsError::Types {
            table: table.clone(),
            source,
        })?;
    let mut key: Vec<(i32, String)> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| (r.get(3), r.get(0)))
        .collect();
    key.sort();
    Ok(Some(TableColumns {
        columns: rows
            .iter()
            .map(|r| (r.get(0), types.kind(r.get(1)).clone()))
            .collect(),
        primary_key: key.into_iter().map(|(_, name)| name).collect(),
    }))
}

//! Reading a table in key-ordered chunks, for backfills: each chunk is one short plain
//! SELECT (no snapshot held across chunks, no lock beyond a normal SELECT's), and each row
//! comes back as a pgoutput [`Tuple`] that walhook turns into an event exactly as it turns a
//! WAL insert of the same row.
//!
//! Why the simple query protocol: it returns every value in its type's text output form,
//! made by the same output functions the walsender runs for pgoutput, so once
//! [`pin_text_output`] gives this connection the walsender's output settings the text is
//! byte-identical to what the WAL stream would carry.

use bytes::Bytes;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::pgoutput::{Datum, Relation, RelationColumn, ReplicaIdentity, Tuple};
use super::replication::SESSION_SETTINGS;
use crate::pg::error::server_message;
use crate::pg::{quote_ident, quote_literal, quote_table, TableName};

/// What went wrong describing or reading a table.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The table is not in the catalog (or is not a table).
    #[error("table {table} does not exist (or is not a table)")]
    NoSuchTable {
        /// The table looked for.
        table: TableName,
    },
    /// A key column is not a column of the table.
    #[error("table {table} has no column {column} (named in the key)")]
    NoSuchColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The key may repeat, so reading "rows after this key" could skip or repeat rows.
    #[error(
        "the key ({columns}) of table {table} is not unique: no primary key or unique, \
         non-partial, valid index covers exactly these columns; add one, e.g. \
         CREATE UNIQUE INDEX CONCURRENTLY ON {table} ({columns})"
    )]
    NotUnique {
        /// The table.
        table: String,
        /// The key columns, quoted and comma-separated.
        columns: String,
    },
    /// A query failed.
    #[error("{what} of table {table}: {message}")]
    Query {
        /// What walhook was doing, e.g. "reading a chunk".
        what: &'static str,
        /// The table.
        table: String,
        /// The server's words with DETAIL and HINT (or the client's error).
        message: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A session setting could not be pinned.
    #[error("setting {setting} for reading rows as the walsender sends them: {message}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// The server's words.
        message: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A row came back in a shape the query cannot produce.
    #[error("reading a chunk of table {table}: {message}")]
    Shape {
        /// The table.
        table: String,
        /// What was wrong.
        message: String,
    },
    /// A stored key is not a JSON array of strings.
    #[error("invalid stored backfill key {text:?}: {message} (expected a JSON array of strings)")]
    BadKey {
        /// The stored text.
        text: String,
        /// The parser's words.
        message: String,
    },
}

impl ChunkError {
    /// Whether trying again may work: the connection was lost, the server is shutting down
    /// or cancelled the statement (SQLSTATE classes 08 and 57), or a transaction conflict
    /// (class 40). A missing table, a bad key or a refused filter will repeat.
    pub fn is_transient(&self) -> bool {
        let (ChunkError::Query { source, .. } | ChunkError::Setting { source, .. }) = self else {
            return false;
        };
        match source.code() {
            None => true,
            Some(code) => ["08", "57", "40"]
                .iter()
                .any(|class| code.code().starts_with(class)),
        }
    }
}

fn query_error(
    what: &'static str,
    table: &str,
) -> impl FnOnce(tokio_postgres::Error) -> ChunkError {
    let table = table.to_owned();
    move |source| ChunkError::Query {
        what,
        table,
        message: server_message(&source),
        source,
    }
}

/// A table's columns as pgoutput would describe them, read from the catalog, so a backfill
/// can build rows exactly like WAL insert events.
pub async fn describe(client: &Client, table: &TableName) -> Result<Relation, ChunkError> {
    let shown = table.to_string();
    let found = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, \
                    (SELECT current_setting('server_version_num')::int) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(query_error("looking up", &shown))?
        .ok_or_else(|| ChunkError::NoSuchTable {
            table: table.clone(),
        })?;
    let oid: u32 = found.get(0);
    let replident: String = found.get(1);
    let version: i32 = found.get(2);
    // pgoutput (up to Postgres 17) leaves generated columns out of its tuples; they only
    // exist from Postgres 12 on.
    let not_generated = if version >= 120000 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let replica_identity = match replident.as_str() {
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    // The columns pgoutput flags as key: the primary key's under DEFAULT, the chosen
    // index's under USING INDEX, all under FULL, none under NOTHING.
    let key_index = match replica_identity {
        ReplicaIdentity::Default => "i.indisprimary",
        ReplicaIdentity::Index => "i.indisreplident",
        ReplicaIdentity::Full | ReplicaIdentity::Nothing => "false",
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text, a.atttypid, a.atttypmod, \
                        EXISTS (SELECT FROM pg_index i \
                                WHERE i.indrelid = a.attrelid AND {key_index} \
                                  AND a.attnum = ANY (i.indkey)) \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped {not_generated} \
                 ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await
        .map_err(query_error("reading the columns", &shown))?;
    let columns = rows
        .iter()
        .map(|row| RelationColumn {
            is_key: replica_identity == ReplicaIdentity::Full || row.get::<_, bool>(3),
            name: row.get(0),
            type_oid: row.get(1),
            type_modifier: row.get(2),
        })
        .collect();
    Ok(Relation {
        xid: None,
        oid,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity,
        columns,
    })
}

/// Reads a table in key order, chunk by chunk, with plain short SELECTs (no snapshot held,
/// no lock beyond a normal SELECT).
#[derive(Debug, Clone)]
pub struct ChunkReader {
    /// `schema.table`, for messages.
    table: String,
    /// `SELECT <columns> FROM <table>`, the columns in the Relation's order.
    select: String,
    /// The key columns, quoted, in key order.
    key_columns: Vec<String>,
    /// Index of each key column in the Relation's columns.
    key_positions: Vec<usize>,
    /// Conditions every read adds: `k IS NOT NULL` unless the key is the primary key, and
    /// the caller's filter.
    conditions: Vec<String>,
    /// Inside the caller's transaction (a seed's snapshot): no BEGIN/COMMIT of our own.
    in_caller_transaction: bool,
    /// Number of columns each row has.
    width: usize,
}

impl ChunkReader {
    /// `key`: the object's key column names, in key order. Refuses
    /// ([`ChunkError::NotUnique`], with the fix) unless the primary key or a unique,
    /// non-partial, valid index covers exactly these columns (as a set). `filter`: a SQL
    /// condition (`--where`), already validated by the caller; pasted as `AND (filter)`.
    ///
    /// Chunks follow the key's order, so list the key in a covering index's column order:
    /// otherwise no index serves the reads and each chunk sorts the table (logged as a
    /// warning).
    pub async fn new(
        client: &Client,
        relation: &Relation,
        key: &[String],
        filter: Option<&str>,
    ) -> Result<ChunkReader, ChunkError> {
        let table = format!("{}.{}", relation.namespace, relation.name);
        let mut key_positions = Vec::with_capacity(key.len());
        for column in key {
            let position = relation
                .columns
                .iter()
                .position(|c| &c.name == column)
                .ok_or_else(|| ChunkError::NoSuchColumn {
                    table: table.clone(),
                    column: column.clone(),
                })?;
            key_positions.push(position);
        }
        let key_columns: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
        let not_unique = || ChunkError::NotUnique {
            table: quote_table(&TableName {
                schema: relation.namespace.clone(),
                name: relation.name.clone(),
            }),
            columns: key_columns.join(", "),
        };
        if key.is_empty() {
            return Err(not_unique());
        }
        // Expression indexes (an indkey entry of 0) and partial ones promise nothing about
        // the plain columns; an invalid one (a failed CREATE INDEX CONCURRENTLY) enforces
        // nothing. INCLUDE columns (past indnkeyatts) are carried, not unique.
        let indexes = client
            .query(
                "SELECT i.indisprimary, \
                        array(SELECT a.attname::text \
                              FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = i.indrelid \
                                                 AND a.attnum = k.attnum \
                              WHERE k.ord <= i.indnkeyatts) \
                 FROM pg_index i \
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
                   AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT 0 = ANY (i.indkey) \
                 ORDER BY i.indisprimary DESC",
                &[&relation.oid],
            )
            .await
            .map_err(query_error("reading the unique indexes", &table))?;
        let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let covering: Vec<(bool, Vec<String>)> = indexes
            .iter()
            .map(|row| (row.get::<_, bool>(0), row.get::<_, Vec<String>>(1)))
            .filter(|(_, columns)| {
                let mut sorted: Vec<&str> = columns.iter().map(String::as_str).collect();
                sorted.sort_unstable();
                columns.len() == key.len() && sorted == wanted
            })
            .collect();
        if covering.is_empty() {
            return Err(not_unique());
        }
        // With the primary key among them no key column can be NULL.
        let is_primary = covering.iter().any(|(primary, _)| *primary);
        if !covering
            .iter()
            .any(|(_, columns)| columns.as_slice() == key)
        {
            // The row comparison and ORDER BY follow the key's order; only an index in that
            // order serves them, so each chunk would sort the whole table.
            tracing::warn!(
                table = %table,
                key = %key.join(", "),
                index = %covering[0].1.join(", "),
                "the backfill key lists the unique index's columns in another order: each chunk \
                 will scan and sort the table; list the key in the index's order"
            );
        }
        let mut conditions = Vec::new();
        if !is_primary {
            // A unique index lets NULLs repeat, and a NULL never compares greater than a
            // key, so such rows could not be walked: they are left out, always.
            conditions.extend(key_columns.iter().map(|c| format!("{c} IS NOT NULL")));
        }
        if let Some(filter) = filter {
            conditions.push(format!("({filter})"));
        }
        let columns: Vec<String> = relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let select = format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            quote_table(&TableName {
                schema: relation.namespace.clone(),
                name: relation.name.clone(),
            })
        );
        Ok(ChunkReader {
            table,
            select,
            key_columns,
            key_positions,
            conditions,
            in_caller_transaction: false,
            width: relation.columns.len(),
        })
    }

    /// This reader, reading inside the caller's open transaction (a [`SeedSlot`]'s
    /// snapshot) instead of wrapping each read in `BEGIN READ ONLY … COMMIT`, which would
    /// end the snapshot's transaction. The caller's transaction must be READ ONLY itself.
    ///
    /// [`SeedSlot`]: crate::source::snapshot::SeedSlot
    pub fn in_snapshot(mut self) -> ChunkReader {
        self.in_caller_transaction = true;
        self
    }

    /// The SELECT for the chunk after `after`.
    fn chunk_sql(&self, after: Option<&Key>, limit: usize) -> String {
        let mut conditions = Vec::with_capacity(self.conditions.len() + 1);
        if let Some(after) = after {
            let literals: Vec<String> = after.0.iter().map(|v| quote_literal(v)).collect();
            conditions.push(format!(
                "({}) > ({})",
                self.key_columns.join(", "),
                literals.join(", ")
            ));
        }
        conditions.extend(self.conditions.iter().cloned());
        let mut sql = self.select.clone();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {limit}",
            self.key_columns.join(", ")
        ));
        sql
    }

    /// Up to `limit` rows with key > `after` (all from the start when None), in key order.
    /// Rows whose key has a NULL (possible only when the key is a unique index, not the
    /// primary key) are never read. Each read is its own `BEGIN READ ONLY; SELECT …; COMMIT`,
    /// so a filter can never write, unless the reader was made [`ChunkReader::in_snapshot`].
    /// Call [`pin_text_output`] once on `client` first.
    pub async fn read(
        &self,
        client: &Client,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Chunk, ChunkError> {
        let select = self.chunk_sql(after, limit);
        let sql = if self.in_caller_transaction {
            select
        } else {
            format!("BEGIN READ ONLY; {select}; COMMIT")
        };
        let messages = match client.simple_query(&sql).await {
            Ok(messages) => messages,
            Err(e) => {
                if !self.in_caller_transaction {
                    // A failed statement inside an explicit BEGIN leaves the session in an
                    // aborted transaction; end it so the connection stays usable.
                    let _ = client.simple_query("ROLLBACK").await;
                }
                return Err(query_error("reading a chunk", &self.table)(e));
            }
        };
        let mut rows = Vec::new();
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            if row.len() != self.width {
                return Err(self.shape(format!(
                    "a row of {} columns, expected {}",
                    row.len(),
                    self.width
                )));
            }
            let mut datums = Vec::with_capacity(self.width);
            for i in 0..self.width {
                let value = row
                    .try_get(i)
                    .map_err(|e| self.shape(format!("column {i}: {e}")))?;
                datums.push(match value {
                    Some(text) => Datum::Text(Bytes::copy_from_slice(text.as_bytes())),
                    None => Datum::Null,
                });
            }
            rows.push(Tuple(datums));
        }
        let last_key = match rows.last() {
            Some(last) => Some(self.key_of(last)?),
            None => None,
        };
        Ok(Chunk { rows, last_key })
    }

    /// The key of a row this reader read.
    fn key_of(&self, row: &Tuple) -> Result<Key, ChunkError> {
        let mut values = Vec::with_capacity(self.key_positions.len());
        for &i in &self.key_positions {
            match &row.0[i] {
                Datum::Text(bytes) => values.push(String::from_utf8_lossy(bytes).into_owned()),
                _ => return Err(self.shape(format!("a NULL in key column {}", i + 1))),
            }
        }
        Ok(Key(values))
    }

    fn shape(&self, message: String) -> ChunkError {
        ChunkError::Shape {
            table: self.table.clone(),
            message,
        }
    }
}

/// One chunk: rows as pgoutput tuples (text datums / nulls, column-aligned with the
/// Relation), and the key of the last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The rows, in key order.
    pub rows: Vec<Tuple>,
    /// The last row's key: where the next chunk starts (None when the chunk is empty).
    pub last_key: Option<Key>,
}

/// A row's key: the key columns' text forms, in key order. Stored in the outbox as a JSON
/// array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub Vec<String>);

impl Key {
    /// The JSON array of strings the outbox stores.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".to_owned())
    }

    /// Reads what [`Key::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Key, ChunkError> {
        serde_json::from_str::<Vec<String>>(text)
            .map(Key)
            .map_err(|e| ChunkError::BadKey {
                text: text.to_owned(),
                message: e.to_string(),
            })
    }
}

/// Makes this connection's text output of values identical to what the walsender sends in
/// pgoutput (DateStyle, IntervalStyle, extra_float_digits, bytea_output, TimeZone …); call
/// once per connection used by [`ChunkReader::read`].
///
/// The walsender is an ordinary backend: its output functions follow its session settings,
/// which are the server's defaults, then the database's and role's (`ALTER DATABASE/ROLE …
/// SET`), then the startup packet's. walhook's replication connection sends
/// [`SESSION_SETTINGS`] at startup, so those win over any database setting; every other
/// setting (lc_monetary for money, search_path for regclass …) comes from the same database
/// and role for this connection too, provided it was opened with the same connection string
/// (same user, database and `options`). So pinning exactly that list makes the two match.
pub async fn pin_text_output(client: &Client) -> Result<(), ChunkError> {
    for &(setting, value) in SESSION_SETTINGS {
        // tokio-postgres insists on UTF8 itself (it sends client_encoding at startup too).
        if setting.eq_ignore_ascii_case("client_encoding") {
            continue;
        }
        client
            .simple_query(&format!("SET {setting} = {}", quote_literal(value)))
            .await
            .map_err(|source| ChunkError::Setting {
                setting,
                message: server_message(&source),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_json() {
        let key = Key(vec!["it's".into(), "\"q\"".into(), "".into(), "ü".into()]);
        assert_eq!(Key::from_json(&key.to_json()).unwrap(), key);
        assert!(Key::from_json("[1]").is_err());
        assert!(Key::from_json("nope").is_err());
    }
}

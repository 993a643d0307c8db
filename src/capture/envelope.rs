//! The event envelope of SPEC §3: one row change seen through one business object,
//! serialised once into the bytes that are stored and sent.

use serde_json::{Map, Value};

use super::change::{Cell, Operation, RowChange};
use super::relation::Relation;
use crate::pg::Lsn;
use crate::time::pg_micros_to_rfc3339;

/// The commit a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// LSN of the commit record; with the change's position it makes the event id.
    pub lsn: Lsn,
    /// Commit time, µs since 2000-01-01 UTC (Postgres' epoch).
    pub time: i64,
    /// Source transaction id.
    pub xid: u32,
}

/// A business object resolved against a table: which columns are its key and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectView {
    /// The object name (`invoice`), or the table name for a table without an object.
    pub name: String,
    /// Indexes of the key columns.
    pub key: Vec<usize>,
    /// Indexes of the fields, in the order the user listed them.
    pub fields: Vec<usize>,
}

/// A configured column that the table does not have.
#[derive(Debug, thiserror::Error)]
#[error("object {object}: table {table} has no column {column:?}{hint}")]
pub struct MissingColumn {
    /// The object name.
    pub object: String,
    /// The table.
    pub table: String,
    /// The missing column.
    pub column: String,
    /// `; did you mean "x"?` when a column has a close name.
    pub hint: String,
}

impl ObjectView {
    /// Resolves key and field names against the table; `None` means the default (primary
    /// key, every column).
    pub fn resolve(
        name: &str,
        relation: &Relation,
        key: Option<&[String]>,
        fields: Option<&[String]>,
    ) -> Result<ObjectView, MissingColumn> {
        let lookup = |names: &[String]| -> Result<Vec<usize>, MissingColumn> {
            names
                .iter()
                .map(|n| {
                    relation.column_index(n).ok_or_else(|| MissingColumn {
                        object: name.to_owned(),
                        table: relation.qualified_name(),
                        column: n.clone(),
                        hint: crate::suggest::did_you_mean(
                            n,
                            relation.columns.iter().map(|c| c.name.as_str()),
                        ),
                    })
                })
                .collect()
        };
        Ok(ObjectView {
            name: name.to_owned(),
            key: match key {
                Some(k) => lookup(k)?,
                None => relation.key.clone(),
            },
            fields: match fields {
                Some(f) => lookup(f)?,
                None => (0..relation.columns.len()).collect(),
            },
        })
    }

    /// The default view of a table that has no configured object.
    pub fn of_table(relation: &Relation) -> ObjectView {
        ObjectView {
            name: relation.name.clone(),
            key: relation.key.clone(),
            fields: (0..relation.columns.len()).collect(),
        }
    }

    /// The default event type, `<object>.<created|updated|deleted>`.
    pub fn default_event_type(&self, operation: Operation) -> String {
        format!("{}.{}", self.name, operation.past_tense())
    }
}

/// The event id: the same for every subscription, retry, replay and restart, because it
/// depends only on where the change sits in the WAL.
pub fn event_id(commit_lsn: Lsn, position: u32) -> String {
    format!("evt_{:016X}_{position:04}", commit_lsn.0)
}

/// Where a read event comes from: a chunk of a backfill, read between two watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOrigin {
    /// The backfill's number.
    pub backfill: i64,
    /// The chunk's number in its backfill, from 0.
    pub chunk: i64,
    /// The high watermark's position: the rows are as of just before it.
    pub lsn: Lsn,
    /// When the chunk was read, µs since 2000-01-01 UTC.
    pub time: i64,
}

/// A read event's id (SPEC §3b): fixed by the backfill, the chunk and the row's place in
/// it, so a crash that repeats a chunk repeats its ids; `evt_r…` never equals a change's.
pub fn read_event_id(backfill: i64, chunk: i64, position: u32) -> String {
    format!("evt_r{backfill:06}_{chunk:08}_{position:05}")
}

/// The envelope of a row a backfill read: operation `read`, no `previous`, and a `source`
/// that names the backfill instead of a transaction.
pub fn read_fields(
    change: &RowChange,
    object: &ObjectView,
    event_type: &str,
    origin: ReadOrigin,
) -> Map<String, Value> {
    let commit = Commit {
        lsn: origin.lsn,
        time: origin.time,
        xid: 0,
    };
    let mut body = envelope_fields(change, object, event_type, commit);
    // Replaced in place: the map keeps its order (serde_json's preserve_order).
    body.insert(
        "id".into(),
        read_event_id(origin.backfill, origin.chunk, change.position).into(),
    );
    let mut source = Map::new();
    source.insert("table".into(), change.relation.qualified_name().into());
    source.insert("lsn".into(), origin.lsn.to_string().into());
    source.insert("backfill".into(), origin.backfill.into());
    body.insert("source".into(), source.into());
    body
}

/// Serialises one change as seen through `object` into the SPEC §3 envelope.
pub fn envelope(
    change: &RowChange,
    object: &ObjectView,
    event_type: &str,
    commit: Commit,
) -> Vec<u8> {
    serialise(envelope_fields(change, object, event_type, commit))
}

/// The SPEC §3 envelope's fields in their order: what [`envelope`] serialises and what a
/// payload template reads.
pub fn envelope_fields(
    change: &RowChange,
    object: &ObjectView,
    event_type: &str,
    commit: Commit,
) -> Map<String, Value> {
    let relation = &change.relation;
    let column = |i: usize| relation.columns[i].name.clone();
    let mut body = header(
        event_id(commit.lsn, change.position),
        event_type,
        object,
        change.operation.as_str(),
        commit,
    );

    let current = change.current();
    let key: Map<String, Value> = object
        .key
        .iter()
        .filter_map(|&i| current[i].known().map(|v| (column(i), v.clone())))
        .collect();
    body.insert("key".into(), key.into());

    let mut unavailable = Vec::new();
    let values = change.new.as_ref().map(|new| {
        let mut values = Map::new();
        for &i in &object.fields {
            match &new[i] {
                Cell::Value(v) => {
                    values.insert(column(i), v.clone());
                }
                Cell::Unknown => unavailable.push(Value::from(column(i))),
            }
        }
        values
    });
    body.insert("values".into(), values.map_or(Value::Null, Value::Object));

    match change.operation {
        Operation::Create | Operation::Read => {}
        Operation::Update => {
            let changed = change.changed_columns();
            let old = change.old.as_deref().unwrap_or_default();
            let new = change.new.as_deref().unwrap_or_default();
            // With the full old row we know exactly what changed; otherwise only the
            // identity columns (sent when the key changes) are known on both sides.
            let differs = |i: usize| match &changed {
                Some(changed) => changed.contains(&i),
                None => {
                    matches!((old.get(i), new.get(i)), (Some(Cell::Value(o)), Some(Cell::Value(n))) if o != n)
                }
            };
            let previous: Map<String, Value> = object
                .fields
                .iter()
                .filter(|&&i| differs(i))
                .filter_map(|&i| old[i].known().map(|v| (column(i), v.clone())))
                .collect();
            if changed.is_some() || !previous.is_empty() {
                body.insert("previous".into(), previous.into());
            }
            if changed.is_some() {
                let names: Vec<Value> = object
                    .fields
                    .iter()
                    .filter(|&&i| differs(i))
                    .map(|&i| column(i).into())
                    .collect();
                body.insert("changed".into(), names.into());
            }
        }
        Operation::Delete => {
            let old = change.old.as_deref().unwrap_or_default();
            let previous: Map<String, Value> = object
                .fields
                .iter()
                .filter_map(|&i| old[i].known().map(|v| (column(i), v.clone())))
                .collect();
            body.insert("previous".into(), previous.into());
        }
    }
    if !unavailable.is_empty() {
        body.insert("unavailable".into(), unavailable.into());
    }
    with_source(body, relation, commit)
}

/// The envelope of a TRUNCATE of one table (`<object>.truncated`, operation `truncate`).
/// A TRUNCATE of several tables is one event per table, each with its own position.
pub fn truncate_fields(
    relation: &Relation,
    object: &ObjectView,
    position: u32,
    cascade: bool,
    restart_identity: bool,
    commit: Commit,
) -> Map<String, Value> {
    let event_type = format!("{}.truncated", object.name);
    let mut body = header(
        event_id(commit.lsn, position),
        &event_type,
        object,
        "truncate",
        commit,
    );
    body.insert("key".into(), Value::Null);
    body.insert("values".into(), Value::Null);
    body.insert("cascade".into(), cascade.into());
    body.insert("restart_identity".into(), restart_identity.into());
    with_source(body, relation, commit)
}

/// The fields every envelope starts with, in SPEC §3 order.
fn header(
    id: String,
    event_type: &str,
    object: &ObjectView,
    operation: &str,
    commit: Commit,
) -> Map<String, Value> {
    header_of(id, event_type, &object.name, operation, commit)
}

fn header_of(
    id: String,
    event_type: &str,
    object: &str,
    operation: &str,
    commit: Commit,
) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("id".into(), id.into());
    body.insert("type".into(), event_type.into());
    body.insert("timestamp".into(), pg_micros_to_rfc3339(commit.time).into());
    body.insert("object".into(), object.into());
    body.insert("operation".into(), operation.into());
    body
}

/// Appends `source`, the last field.
fn with_source(
    body: Map<String, Value>,
    relation: &Relation,
    commit: Commit,
) -> Map<String, Value> {
    with_source_table(body, relation.qualified_name(), commit)
}

fn with_source_table(
    mut body: Map<String, Value>,
    table: String,
    commit: Commit,
) -> Map<String, Value> {
    let mut source = Map::new();
    source.insert("table".into(), table.into());
    source.insert("lsn".into(), commit.lsn.to_string().into());
    source.insert("txid".into(), commit.xid.into());
    body.insert("source".into(), source.into());
    body
}

/// A document event's id (SPEC §3a): the commit and the order in which the transaction
/// first touched the document, so it is fixed by the WAL like a change's, and never equal
/// to one (a line moved between invoices is one change that touches two documents).
pub fn document_event_id(commit_lsn: Lsn, ordinal: u32) -> String {
    format!("evt_{:016X}_d{ordinal:04}", commit_lsn.0)
}

/// What a document event says, in the words of SPEC §3a.
#[derive(Debug)]
pub struct DocumentEnvelope<'a> {
    /// The event id ([`document_event_id`], or a row change's for a `keep_state` object).
    pub id: String,
    /// The event type.
    pub event_type: &'a str,
    /// The object's name.
    pub object: &'a str,
    /// Create, update or delete.
    pub operation: Operation,
    /// The header's key.
    pub key: Map<String, Value>,
    /// Header fields and collections after the commit; `None` for a delete.
    pub values: Option<Map<String, Value>>,
    /// What changed had before (update), or everything (delete).
    pub previous: Option<Map<String, Value>>,
    /// The names whose value differs (update).
    pub changed: Option<Vec<String>>,
    /// The header's table, `schema.table`.
    pub table: String,
    /// The source commit (a read's: its high watermark and chunk time).
    pub commit: Commit,
    /// The backfill of a read event, which `source` names instead of a transaction.
    pub backfill: Option<i64>,
}

/// The SPEC §3a envelope's fields in their order, for the bytes and the templates.
pub fn document_fields(document: DocumentEnvelope<'_>) -> Map<String, Value> {
    let mut body = header_of(
        document.id,
        document.event_type,
        document.object,
        document.operation.as_str(),
        document.commit,
    );
    body.insert("key".into(), document.key.into());
    body.insert(
        "values".into(),
        document.values.map_or(Value::Null, Value::Object),
    );
    if let Some(previous) = document.previous {
        body.insert("previous".into(), previous.into());
    }
    if let Some(changed) = document.changed {
        body.insert("changed".into(), changed.into());
    }
    let mut body = with_source_table(body, document.table, document.commit);
    if let (Some(backfill), Some(Value::Object(source))) =
        (document.backfill, body.get_mut("source"))
    {
        // As a row read says where it came from (`read_fields`).
        source.remove("txid");
        source.insert("backfill".into(), backfill.into());
    }
    body
}

/// The envelope's bytes: minified JSON, fields in order.
pub fn serialise(body: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(body)).expect("a JSON map always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_fixed_width_and_dot_free() {
        let id = event_id(Lsn(0x16B3748), 3);
        assert_eq!(id, "evt_00000000016B3748_0003");
        assert!(!id.contains('.'));
    }
}

//! Business documents (SPEC §3a): a header row and collections of child rows seen as one
//! object, and `keep_state` objects, whose rows walhook remembers.
//!
//! This module is pure. Capture turns each row change of a document's tables into
//! [`Touch`]es; the outbox writer keeps the state (`outbox::documents`), applies the touches
//! to the [`Doc`]s they name and, at the source commit, asks [`DocumentObject::route`] what
//! each touched document became: one event per document and subscription, with `previous`
//! and `changed` worked out from the state before the transaction, so no REPLICA IDENTITY
//! FULL is needed and no value is ever read later from the database.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::change::{Cell, Operation, RowChange};
use super::envelope::{
    document_fields, read_event_id, serialise, Commit, DocumentEnvelope, ReadOrigin,
};
use super::matcher::{compile_rendering, compile_when, MatcherError, RouteProblem, RoutedEvent};
use super::relation::Relation;
use super::render::Rendering;
use super::when::{self, When};
use crate::config::{Config, ObjectConfig, TableName};
use crate::source::types::TypeKind;

/// The documents and `keep_state` objects of a config, with their active subscriptions.
#[derive(Debug, Default)]
pub struct Documents {
    objects: Vec<DocumentObject>,
    /// Which (object, part) each table is, in config order.
    tables: HashMap<TableName, Vec<(usize, u16)>>,
    /// The tables by the OID the catalog gave them: a change is matched by OID, so a table
    /// renamed while walhook runs keeps its documents (as the matcher keeps its events).
    oids: HashMap<u32, TableName>,
}

/// One document (or `keep_state` object) and the subscriptions that receive it.
#[derive(Debug)]
pub struct DocumentObject {
    /// The `[objects.NAME]` key: what the state is stored under.
    pub id: Arc<str>,
    /// The `object` of its events.
    pub name: String,
    /// True for a document (an object with children); false for `keep_state = true`,
    /// whose events stay one per row change.
    pub document: bool,
    /// What the state depends on (tables, keys, fields, collections): a change means the
    /// stored state no longer fits and the object is seeded again.
    pub fingerprint: String,
    /// `[0]` the header, `[i]` the object's i-th collection.
    pub parts: Vec<Part>,
    subscriptions: Vec<DocumentSubscription>,
    max_event_bytes: usize,
}

/// The header or one collection of a document: a table and how its rows are kept.
#[derive(Debug, Clone)]
pub struct Part {
    /// The table.
    pub table: TableName,
    /// The collection's name in `values`; `None` for the header.
    pub collection: Option<String>,
    /// Key columns; `None` means the table's primary key.
    pub key: Option<Vec<String>>,
    /// Fields kept and shown; `None` means every column.
    pub fields: Option<Vec<String>>,
    /// Child columns holding the header's key (empty for the header).
    pub parent_key: Vec<String>,
    /// Order of the collection; `None` means the key.
    pub order_by: Option<Vec<String>>,
    /// Column types by name, as the catalog described the table when capture started:
    /// `when` compares a `numeric` as a number, as it does for row events.
    pub kinds: HashMap<String, TypeKind>,
    /// The types of the columns a collection is sorted by (`order_by`, else the key).
    pub sort_kinds: Vec<Option<TypeKind>>,
}

#[derive(Debug)]
struct DocumentSubscription {
    name: Arc<str>,
    /// Indexed by [`op_index`].
    operations: [bool; 3],
    watch: Option<Vec<String>>,
    when: Option<When>,
    rendering: Option<Rendering>,
    /// Indexed by [`op_index`].
    event_types: [String; 3],
    /// The type of its backfill's read events.
    read_type: String,
}

/// One row change as it bears on a document: which row of which part, in which document
/// now and, when the WAL says so, before.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch {
    /// Index of the object in its [`Documents`].
    pub object: usize,
    /// The object's state id (its config key).
    pub object_id: Arc<str>,
    /// Whether the object is a document (else `keep_state`).
    pub document: bool,
    /// 0 for the header, N for the N-th collection.
    pub part: u16,
    /// Insert, update or delete.
    pub operation: Operation,
    /// The change's position in its transaction.
    pub position: u32,
    /// The row's key (JSON array of the key columns' values) after the change, or of the
    /// deleted row.
    pub row_key: String,
    /// The row's key before an update that changed it.
    pub old_row_key: Option<String>,
    /// The document the row belongs to after the change; `None` for a delete.
    pub doc_key: Option<String>,
    /// The document it belonged to before, when the WAL carried the parent key; otherwise
    /// the state says.
    pub old_doc_key: Option<String>,
    /// The row's kept values after the change; `None` for a delete.
    pub row: Option<StateRow>,
    /// Fields the WAL did not carry (an unchanged TOASTed value): kept from the state.
    pub unknown: Vec<String>,
}

/// What walhook keeps of one row: stored as JSON in the outbox.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StateRow {
    /// The header's key as a map (the event's `key`); empty for a child.
    #[serde(rename = "k", default, skip_serializing_if = "Map::is_empty")]
    pub key: Map<String, Value>,
    /// A child's `order_by` values.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub sort: Vec<Value>,
    /// The fields, in configured order.
    #[serde(rename = "f")]
    pub fields: Map<String, Value>,
}

impl StateRow {
    /// The row as the outbox stores it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a state row always serialises")
    }

    /// A stored row.
    pub fn from_json(text: &str) -> Result<StateRow, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A document's rows by (part, row key): its header (part 0) and collection rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Doc {
    /// Every row of the document.
    pub rows: BTreeMap<(u16, String), StateRow>,
}

impl Doc {
    /// The header row, if the document has one.
    pub fn header(&self) -> Option<&StateRow> {
        self.rows
            .range((0, String::new())..(1, String::new()))
            .next()
            .map(|(_, row)| row)
    }

    /// Whether nothing is left of it.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What happened to a document, for the events of its subscriptions.
struct Happened {
    id: String,
    operation: Operation,
    key: Map<String, Value>,
    values: Option<Map<String, Value>>,
    previous: Option<Map<String, Value>>,
    changed: Option<Vec<String>>,
    commit: Commit,
    /// The backfill of a read.
    backfill: Option<i64>,
}

impl Happened {
    fn envelope<'a>(
        &self,
        event_type: &'a str,
        object: &'a str,
        table: &str,
        values: Option<Map<String, Value>>,
    ) -> DocumentEnvelope<'a> {
        DocumentEnvelope {
            id: self.id.clone(),
            event_type,
            object,
            operation: self.operation,
            key: self.key.clone(),
            values,
            previous: self.previous.clone(),
            changed: self.changed.clone(),
            table: table.to_owned(),
            commit: self.commit,
            backfill: self.backfill,
        }
    }
}

/// What a document became for its subscriptions.
#[derive(Debug, Default)]
pub struct Route {
    /// Its events (a dead one among them for each subscription it could not go to).
    pub events: Vec<RoutedEvent>,
    /// Subscriptions that could not be evaluated, or whose event was too big.
    pub problems: Vec<RouteProblem>,
    /// Events too big to send (`outbox.max_event_bytes`), recorded dead.
    pub oversized: u64,
}

/// A document's state change that could not be made into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {object}: change of {table}: {message}")]
pub struct TouchProblem {
    /// The object.
    pub object: String,
    /// The table, `schema.table`.
    pub table: String,
    /// What is wrong.
    pub message: String,
}

impl Documents {
    /// The config's documents and `keep_state` objects; `relations` holds the catalog's
    /// description of their tables (for the column types a `when` compares by).
    pub fn new(
        config: &Config,
        relations: &HashMap<TableName, Relation>,
    ) -> Result<Documents, MatcherError> {
        let mut documents = Documents::default();
        let mut problems = Vec::new();
        for (key, object) in &config.objects {
            if !object.keeps_state() {
                continue;
            }
            let mut subscriptions = Vec::new();
            for sub in &config.subscriptions {
                if sub.object.unnamed || sub.object.config_key != *key {
                    continue;
                }
                let compiled = compile_when(sub)
                    .and_then(|when| compile_rendering(sub).map(|rendering| (when, rendering)));
                let (when, rendering) = match compiled {
                    Ok(compiled) => compiled,
                    Err(mut errors) => {
                        problems.append(&mut errors);
                        continue;
                    }
                };
                if !sub.active {
                    continue;
                }
                subscriptions.push(DocumentSubscription {
                    name: Arc::from(sub.name.as_str()),
                    operations: Operation::ALL.map(|op| sub.fires_on(op)),
                    watch: sub.watch.clone(),
                    when,
                    rendering,
                    event_types: Operation::ALL.map(|op| sub.event_type_for(op)),
                    read_type: sub.event_type_for(Operation::Read),
                });
            }
            let index = documents.objects.len();
            let parts = parts(object, relations);
            for part in &parts {
                if let Some(relation) = relations.get(&part.table) {
                    documents.oids.insert(relation.oid, part.table.clone());
                }
            }
            for (part, p) in parts.iter().enumerate() {
                documents
                    .tables
                    .entry(p.table.clone())
                    .or_default()
                    .push((index, part as u16));
            }
            documents.objects.push(DocumentObject {
                id: Arc::from(key.as_str()),
                name: object.name.clone().unwrap_or_else(|| key.clone()),
                document: object.is_document(),
                fingerprint: fingerprint(object),
                parts,
                subscriptions,
                max_event_bytes: usize::try_from(config.outbox.max_event_bytes)
                    .unwrap_or(usize::MAX),
            });
        }
        match problems.is_empty() {
            true => Ok(documents),
            false => Err(MatcherError { problems }),
        }
    }

    /// The configured name of a document table with this OID.
    pub fn table_of(&self, oid: u32) -> Option<&TableName> {
        self.oids.get(&oid)
    }

    /// The (object, part) pairs `table` is.
    pub fn parts_of(&self, table: &TableName) -> &[(usize, u16)] {
        self.tables.get(table).map_or(&[], Vec::as_slice)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects, in config order.
    pub fn objects(&self) -> &[DocumentObject] {
        &self.objects
    }

    /// The object whose subscription `subscription` is (a backfill's reads are made from
    /// its state).
    pub fn reading(&self, subscription: &str) -> Option<usize> {
        self.objects
            .iter()
            .position(|o| o.subscriptions.iter().any(|s| &*s.name == subscription))
    }

    /// The object at `index`.
    pub fn object(&self, index: usize) -> &DocumentObject {
        &self.objects[index]
    }

    /// The touches of one change: one per (object, part) its table is (none for a table
    /// no document has). A change whose key the WAL did not carry is a problem.
    pub fn touches(&self, change: &RowChange) -> (Vec<Touch>, Vec<TouchProblem>) {
        let mut touches = Vec::new();
        let mut problems = Vec::new();
        let Some(table) = self.oids.get(&change.relation.oid) else {
            return (touches, problems);
        };
        for &(object, part) in self.parts_of(table) {
            let spec = &self.objects[object];
            match spec.touch(object, part, change) {
                Ok(touch) => touches.push(touch),
                Err(message) => problems.push(TouchProblem {
                    object: spec.id.to_string(),
                    table: table.to_string(),
                    message,
                }),
            }
        }
        (touches, problems)
    }
}

/// The parts of an object: its header, then its collections.
fn parts(object: &ObjectConfig, relations: &HashMap<TableName, Relation>) -> Vec<Part> {
    let kinds = |table: &TableName| -> HashMap<String, TypeKind> {
        relations
            .get(table)
            .map(|r| {
                r.columns
                    .iter()
                    .map(|c| (c.name.clone(), c.kind.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut parts = vec![Part {
        table: object.table.clone(),
        collection: None,
        key: object.key.clone(),
        fields: object.fields.clone(),
        parent_key: Vec::new(),
        order_by: None,
        kinds: kinds(&object.table),
        sort_kinds: Vec::new(),
    }];
    parts.extend(object.children.iter().map(|child| {
        let kinds = kinds(&child.table);
        let primary_key = || -> Vec<String> {
            relations
                .get(&child.table)
                .map(|r| r.key.iter().map(|&i| r.columns[i].name.clone()).collect())
                .unwrap_or_default()
        };
        let sorted_by = child
            .order_by
            .clone()
            .or_else(|| child.key.clone())
            .unwrap_or_else(primary_key);
        Part {
            table: child.table.clone(),
            collection: Some(child.name.clone()),
            key: child.key.clone(),
            fields: child.fields.clone(),
            parent_key: child.parent_key.clone(),
            order_by: child.order_by.clone(),
            sort_kinds: sorted_by.iter().map(|c| kinds.get(c).cloned()).collect(),
            kinds,
        }
    }));
    parts
}

/// The settings an object's state depends on, as text: equal text, same state.
fn fingerprint(object: &ObjectConfig) -> String {
    let mut text = String::new();
    let list = |l: &Option<Vec<String>>| match l {
        Some(l) => l.join(","),
        None => "*".to_owned(),
    };
    let _ = write!(
        text,
        "v1|{}|{}|{}",
        object.table,
        list(&object.key),
        list(&object.fields)
    );
    for child in &object.children {
        let _ = write!(
            text,
            "|{}:{}:{}:{}:{}:{}",
            child.name,
            child.table,
            child.parent_key.join(","),
            list(&child.key),
            list(&child.fields),
            list(&child.order_by)
        );
    }
    text
}

/// The columns of `names` (default: `default`) in `relation`, or the first missing one.
fn columns_of(
    relation: &Relation,
    names: Option<&[String]>,
    default: impl FnOnce() -> Vec<usize>,
) -> Result<Vec<usize>, String> {
    match names {
        None => Ok(default()),
        Some(names) => names
            .iter()
            .map(|n| {
                relation.column_index(n).ok_or_else(|| {
                    format!(
                        "table {relation} has no column {n:?}{}",
                        crate::suggest::did_you_mean(
                            n,
                            relation.columns.iter().map(|c| c.name.as_str())
                        )
                    )
                })
            })
            .collect(),
    }
}

/// The values of `columns` in `cells` as a JSON array, or `None` when one is not known.
fn array_of(cells: &[Cell], columns: &[usize]) -> Option<String> {
    let mut values = Vec::with_capacity(columns.len());
    for &i in columns {
        values.push(cells.get(i)?.known()?.clone());
    }
    Some(Value::Array(values).to_string())
}

impl DocumentObject {
    /// One row a seed read of this object's `part` (an insert-shaped change): its row key,
    /// the document it is in, and what is kept of it.
    pub fn seed_row(
        &self,
        part: u16,
        change: &RowChange,
    ) -> Result<(String, String, StateRow), String> {
        let touch = self.touch(0, part, change)?;
        match (touch.doc_key, touch.row) {
            (Some(doc_key), Some(row)) => Ok((touch.row_key, doc_key, row)),
            _ => Err("a seed row has no values".to_owned()),
        }
    }

    /// The touch of one change of this object's `part`.
    fn touch(&self, object: usize, part: u16, change: &RowChange) -> Result<Touch, String> {
        let spec = &self.parts[usize::from(part)];
        let relation = &change.relation;
        let key = columns_of(relation, spec.key.as_deref(), || relation.key.clone())?;
        if key.is_empty() {
            return Err(format!(
                "table {relation} has no primary key; name the key columns in the config"
            ));
        }
        let fields = columns_of(relation, spec.fields.as_deref(), || {
            (0..relation.columns.len()).collect()
        })?;
        let is_header = part == 0;
        let parent = match is_header {
            true => key.clone(),
            false => columns_of(relation, Some(&spec.parent_key), Vec::new)?,
        };
        let not_carried = |what: &str| {
            format!(
                "the WAL did not carry the {what} of this row; make the {what} the table's \
                 replica identity (its primary key) or set REPLICA IDENTITY FULL"
            )
        };
        let row_key = array_of(change.current(), &key).ok_or_else(|| not_carried("key"))?;
        let old_row_key = match (&change.old, change.operation) {
            (Some(old), Operation::Update) => {
                array_of(old, &key).filter(|old_key| *old_key != row_key)
            }
            _ => None,
        };
        // The parent key is a plain column of the child: the WAL carries its old value only
        // under REPLICA IDENTITY FULL (or when it is part of the identity).
        let old_doc_key = change.old.as_deref().and_then(|old| array_of(old, &parent));
        let (doc_key, row, unknown) = match &change.new {
            None => (None, None, Vec::new()),
            Some(new) => {
                let doc_key = array_of(new, &parent).ok_or_else(|| match is_header {
                    true => not_carried("key"),
                    false => not_carried("parent key"),
                })?;
                let mut row = StateRow::default();
                let mut unknown = Vec::new();
                for &i in &fields {
                    let name = &relation.columns[i].name;
                    match &new[i] {
                        Cell::Value(v) => {
                            row.fields.insert(name.clone(), v.clone());
                        }
                        // Held in its place, for the kept value to fill.
                        Cell::Unknown => {
                            row.fields.insert(name.clone(), Value::Null);
                            unknown.push(name.clone());
                        }
                    }
                }
                if is_header {
                    for &i in &key {
                        if let Cell::Value(v) = &new[i] {
                            row.key.insert(relation.columns[i].name.clone(), v.clone());
                        }
                    }
                } else {
                    let order = columns_of(relation, spec.order_by.as_deref(), || key.clone())?;
                    row.sort = order
                        .iter()
                        .map(|&i| new[i].known().cloned().unwrap_or(Value::Null))
                        .collect();
                }
                (Some(doc_key), Some(row), unknown)
            }
        };
        Ok(Touch {
            object,
            object_id: self.id.clone(),
            document: self.document,
            part,
            operation: change.operation,
            position: change.position,
            row_key,
            old_row_key,
            doc_key,
            old_doc_key: old_doc_key.filter(|_| change.operation != Operation::Create),
            row,
            unknown,
        })
    }

    /// The document's `values` (header fields, then each collection in order), or `None`
    /// while it has no header.
    pub fn values(&self, doc: &Doc) -> Option<Map<String, Value>> {
        let mut values = doc.header()?.fields.clone();
        for (index, part) in self.parts.iter().enumerate().skip(1) {
            let part_index = index as u16;
            let mut rows: Vec<(&String, &StateRow)> = doc
                .rows
                .range((part_index, String::new())..(part_index + 1, String::new()))
                .map(|((_, key), row)| (key, row))
                .collect();
            rows.sort_by(|a, b| {
                compare_sort(&a.1.sort, &b.1.sort, &part.sort_kinds)
                    .then_with(|| compare_keys(a.0, b.0))
            });
            let name = part.collection.clone().unwrap_or_default();
            let array = rows
                .into_iter()
                .map(|(_, row)| Value::Object(row.fields.clone()))
                .collect();
            values.insert(name, Value::Array(array));
        }
        Some(values)
    }

    /// What a transaction made of one document: its events for the subscriptions that
    /// fire (none when it has no header before or after, or nothing configured changed),
    /// and any subscription that could not be evaluated.
    pub fn route(&self, before: &Doc, after: &Doc, id: String, commit: Commit) -> Route {
        let old = self.values(before);
        let new = self.values(after);
        let (operation, key) = match (&old, &new) {
            (None, None) => return Route::default(),
            (None, Some(_)) => (Operation::Create, after.header()),
            (Some(_), None) => (Operation::Delete, before.header()),
            (Some(_), Some(_)) => (Operation::Update, after.header()),
        };
        let key = key.map(|h| h.key.clone()).unwrap_or_default();
        let (previous, changed) = match operation {
            Operation::Update => {
                let (old, new) = (old.as_ref().unwrap(), new.as_ref().unwrap());
                let changed: Vec<String> = new
                    .iter()
                    .filter(|(name, value)| old.get(*name) != Some(*value))
                    .map(|(name, _)| name.clone())
                    .collect();
                if changed.is_empty() {
                    return Route::default();
                }
                let previous: Map<String, Value> = changed
                    .iter()
                    .filter_map(|name| old.get(name).map(|v| (name.clone(), v.clone())))
                    .collect();
                (Some(previous), Some(changed))
            }
            Operation::Delete => (old.clone(), None),
            _ => (None, None),
        };
        let happened = Happened {
            id,
            operation,
            key,
            values: new,
            previous,
            changed,
            commit,
            backfill: None,
        };
        let op = op_index(operation);
        let mut route = Route::default();
        let mut scope: Option<minijinja::Value> = None;
        for sub in &self.subscriptions {
            if !sub.operations[op] {
                continue;
            }
            if let (Some(watch), Some(changed)) = (&sub.watch, &happened.changed) {
                if !watch.iter().any(|w| changed.contains(w)) {
                    continue;
                }
            }
            let event_type = &sub.event_types[op];
            let Some(dead) = self.when(sub, &happened, &mut scope) else {
                continue;
            };
            if sub.rendering.is_none() && dead.is_none() {
                if let Some(event) = route.events.iter_mut().find(|e| {
                    e.target.is_none()
                        && e.dead.is_empty()
                        && !e.unrendered
                        && e.event_type == *event_type
                }) {
                    event.subscriptions.push(sub.name.clone());
                    continue;
                }
            }
            let event = self.event(sub, event_type, &happened, dead, &mut route);
            route.events.push(event);
        }
        route
    }

    /// A backfill's read of one document for `subscription` (whatever its `operations`,
    /// filtered by its `when`): the document as the state holds it at the chunk's high
    /// watermark. `position` is the header's place in its chunk, for the read's id.
    pub fn route_read(
        &self,
        doc: &Doc,
        subscription: &str,
        position: u32,
        origin: ReadOrigin,
    ) -> Route {
        let mut route = Route::default();
        let (Some(values), Some(header), Some(sub)) = (
            self.values(doc),
            doc.header(),
            self.subscriptions.iter().find(|s| &*s.name == subscription),
        ) else {
            return route;
        };
        let happened = Happened {
            id: read_event_id(origin.backfill, origin.chunk, position),
            operation: Operation::Read,
            key: header.key.clone(),
            values: Some(values),
            previous: None,
            changed: None,
            commit: Commit {
                lsn: origin.lsn,
                time: origin.time,
                xid: 0,
            },
            backfill: Some(origin.backfill),
        };
        if let Some(dead) = self.when(sub, &happened, &mut None) {
            let event = self.event(sub, &sub.read_type, &happened, dead, &mut route);
            route.events.push(event);
        }
        route
    }

    /// Whether `sub`'s `when` lets the event through: `None` when it does not, else the
    /// error that makes its delivery dead, if any.
    fn when(
        &self,
        sub: &DocumentSubscription,
        happened: &Happened,
        scope: &mut Option<minijinja::Value>,
    ) -> Option<Option<String>> {
        let Some(when) = &sub.when else {
            return Some(None);
        };
        let scope = scope.get_or_insert_with(|| {
            self.scope(
                happened.values.as_ref(),
                happened.previous.as_ref(),
                happened.operation,
            )
        });
        match when.eval(scope) {
            Ok(true) => Some(None),
            Ok(false) => None,
            Err(error) => Some(Some(format!("when: {error}"))),
        }
    }

    /// One subscription's event of what happened: rendered by its templates, recorded dead
    /// (with the problem noted in `route`) when it cannot be sent.
    fn event(
        &self,
        sub: &DocumentSubscription,
        event_type: &str,
        happened: &Happened,
        mut dead: Option<String>,
        route: &mut Route,
    ) -> RoutedEvent {
        let table = self.parts[0].table.to_string();
        let key_text = Value::Object(happened.key.clone()).to_string();
        let fields = document_fields(happened.envelope(
            event_type,
            &self.name,
            &table,
            happened.values.clone(),
        ));
        let (mut body, mut target) = (None, None);
        if let (Some(rendering), None) = (&sub.rendering, &dead) {
            match rendering.render(&fields, happened.operation) {
                Ok(rendered) => {
                    body = rendered.body;
                    target = rendered.target;
                }
                Err(error) => dead = Some(error),
            }
        }
        let mut body = body.unwrap_or_else(|| serialise(fields));
        if body.len() > self.max_event_bytes {
            let error = format!(
                "the event is {} bytes, more than outbox.max_event_bytes ({} bytes); \
                 raise it, or list fewer fields",
                body.len(),
                self.max_event_bytes
            );
            // What is stored instead: the envelope without its values, saying how big it
            // was (the delivery is dead, with the reason).
            let mut stand_in =
                document_fields(happened.envelope(event_type, &self.name, &table, None));
            let mut too_large = Map::new();
            too_large.insert("bytes".into(), body.len().into());
            too_large.insert("max_event_bytes".into(), self.max_event_bytes.into());
            stand_in.insert("too_large".into(), too_large.into());
            body = serialise(stand_in);
            target = None;
            dead = Some(error);
            route.oversized += 1;
        }
        if let Some(message) = &dead {
            route.problems.push(RouteProblem {
                subscription: sub.name.clone(),
                table,
                key: key_text.clone(),
                message: message.clone(),
            });
        }
        let unrendered = dead.is_some() && sub.rendering.is_some();
        let mut event = RoutedEvent {
            event_id: happened.id.clone(),
            event_type: event_type.to_owned(),
            object: self.name.clone(),
            key: key_text,
            body,
            subscriptions: Vec::new(),
            dead: Vec::new(),
            target,
            unrendered,
        };
        match dead {
            None => event.subscriptions.push(sub.name.clone()),
            Some(error) => event.dead.push((sub.name.clone(), error)),
        }
        event
    }

    /// What a `when` sees of a document event: values, previous and operation, each value
    /// typed by its column.
    fn scope(
        &self,
        values: Option<&Map<String, Value>>,
        previous: Option<&Map<String, Value>>,
        operation: Operation,
    ) -> minijinja::Value {
        let typed = |map: &Map<String, Value>| -> minijinja::Value {
            map.iter()
                .map(|(name, value)| (name.as_str(), self.typed(None, name, value)))
                .collect()
        };
        let mut entries = vec![
            ("values", values.map_or(minijinja::Value::from(()), typed)),
            ("operation", minijinja::Value::from(operation.as_str())),
        ];
        if let Some(previous) = previous {
            entries.push(("previous", typed(previous)));
        }
        entries.into_iter().collect()
    }

    /// One value of a document as an expression sees it: a collection's elements typed by
    /// the child table's columns, a header field by the header's.
    fn typed(&self, part: Option<&Part>, name: &str, value: &Value) -> minijinja::Value {
        if part.is_none() {
            if let Some(child) = self
                .parts
                .iter()
                .skip(1)
                .find(|p| p.collection.as_deref() == Some(name))
            {
                if let Value::Array(rows) = value {
                    return rows
                        .iter()
                        .map(|row| match row {
                            Value::Object(fields) => fields
                                .iter()
                                .map(|(n, v)| (n.as_str(), self.typed(Some(child), n, v)))
                                .collect(),
                            other => when::value_of(None, other),
                        })
                        .collect();
                }
            }
        }
        let part = part.unwrap_or(&self.parts[0]);
        when::value_of(part.kinds.get(name), value)
    }
}

/// The order of two rows' `order_by` values, as Postgres sorts them ascending: NULLs last;
/// a column typed as a number (`kinds`, by position; `numeric` and float specials arrive as
/// text) by value with `-Infinity` first and `NaN` last; other text by its bytes (the C
/// collation: walhook cannot know the column's). Without a kind, a JSON number compares by
/// value and a string by its bytes, so the order is always total.
pub fn compare_sort(a: &[Value], b: &[Value], kinds: &[Option<TypeKind>]) -> CmpOrdering {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let order = compare_value(x, y, kinds.get(i).and_then(Option::as_ref));
        if order != CmpOrdering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn compare_value(a: &Value, b: &Value, kind: Option<&TypeKind>) -> CmpOrdering {
    let numeric = matches!(
        kind,
        Some(TypeKind::Integer | TypeKind::Float | TypeKind::Numeric)
    );
    match (a, b) {
        (Value::Null, Value::Null) => CmpOrdering::Equal,
        (Value::Null, _) => CmpOrdering::Greater,
        (_, Value::Null) => CmpOrdering::Less,
        _ => match (sort_number(a, numeric), sort_number(b, numeric)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)),
            // Numbers before anything else: only a value of another type than its column's
            // (a column retyped) can meet one, and the order must stay total.
            (Some(_), None) => CmpOrdering::Less,
            (None, Some(_)) => CmpOrdering::Greater,
            (None, None) => match (a, b) {
                (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
                (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
                _ => a.to_string().cmp(&b.to_string()),
            },
        },
    }
}

/// A value's place among numbers: (class, value), class 0 for `-Infinity`, 1 for a finite
/// number, 2 for `Infinity`, 3 for `NaN` (Postgres sorts NaN above every number). Text is
/// read as a number only in a numeric column.
fn sort_number(value: &Value, numeric: bool) -> Option<(u8, f64)> {
    match value {
        Value::Number(n) => n.as_f64().map(|f| (1, f)),
        Value::String(s) if numeric => match s.as_str() {
            "-Infinity" => Some((0, 0.0)),
            "Infinity" => Some((2, 0.0)),
            "NaN" => Some((3, 0.0)),
            text => text.parse::<f64>().ok().map(|f| (1, f)),
        },
        _ => None,
    }
}

/// Two row keys (JSON arrays) in key order, numbers by value: rows with equal `order_by`
/// values keep the order of their keys (id 9 before id 10).
fn compare_keys(a: &str, b: &str) -> CmpOrdering {
    let parse = |k: &str| serde_json::from_str::<Vec<Value>>(k).unwrap_or_default();
    compare_sort(&parse(a), &parse(b), &[]).then_with(|| a.cmp(b))
}

/// The index of a listed operation (a document has no reads).
fn op_index(operation: Operation) -> usize {
    match operation {
        Operation::Create | Operation::Read => 0,
        Operation::Update => 1,
        Operation::Delete => 2,
    }
}
#[cfg(test)]
mod tests;

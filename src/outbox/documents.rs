//! Document state (SPEC §3a): `document_row`, `document_seed` and `document_pending`.
//!
//! The outbox writer applies each source transaction's [`Touch`]es here, on its own
//! connection and inside its open transaction, so the state commits with the events it
//! made and with the checkpoint. Per transaction the touched documents are held in memory
//! as they were before it and as they are now; at its commit each becomes its events
//! ([`DocumentObject::route`]). They stay in memory for the next source transactions of the
//! same outbox transaction, and their changed rows are written once, before it commits
//! ([`DocumentState::flush`]). A transaction that
//! touches more than [`DOCUMENTS_IN_MEMORY`] documents writes them into the open transaction
//! as it goes, with what they were before in `document_pending`, and makes their events from
//! there at the commit: memory stays flat however many documents it touches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::{Client, GenericClient, Statement};

use super::writer::OutboxError;
use super::StoreError;
use crate::capture::document::{Doc, DocumentObject, Documents, Route, StateRow, Touch};
use crate::capture::envelope::{document_event_id, event_id, ReadOrigin};
use crate::capture::matcher::{RouteProblem, RoutedEvent};
use crate::capture::Commit;
use crate::capture::Operation;
use crate::pg::{quote_ident, Lsn};

/// Documents a source transaction may hold in memory before they go to `document_pending`.
/// An invoice with 10 lines is about 3 KiB here (before and after): 1,000 are 3 MiB.
pub const DOCUMENTS_IN_MEMORY: usize = 1_000;

/// Documents kept in memory between source transactions of one outbox transaction. Their
/// changed rows are written once, when the outbox transaction commits (or when more than
/// this are held), instead of after each source transaction: measured on the documents
/// bench figure, the per-transaction upsert was the hottest statement (3,001 calls for
/// 30,000 document changes). An invoice touched again soon after, as ERPs do, is then
/// neither read back nor written twice.
const DOCUMENTS_KEPT: usize = DOCUMENTS_IN_MEMORY / 2;

/// Touches gathered before the documents they name are loaded with one query.
pub const TOUCHES_PER_LOAD: usize = 500;

/// Documents read back from `document_pending` at a time.
const PENDING_PAGE: i64 = 500;

/// One document touched by the open source transaction.
#[derive(Debug)]
struct Entry {
    /// Index of the object in the [`Documents`].
    object: usize,
    /// As it was before the open source transaction.
    before: Doc,
    /// As it is now.
    after: Doc,
    /// As `document_row` holds it, when that is not `before` (it was spilled and read
    /// back, or changed by an earlier source transaction and not written yet).
    stored: Option<Doc>,
    /// The order in which the open transaction first touched it: its event id. `None`
    /// for a document kept from an earlier transaction and not touched by this one.
    ordinal: Option<u32>,
    /// It is in `document_pending` already.
    pending: bool,
}

/// A backfill chunk of documents (or `keep_state` rows) for one subscription: their read
/// events are made from the state, which at the chunk's high watermark holds each of them
/// exactly as of that position in the stream.
#[derive(Debug, Clone)]
pub struct DocumentRead {
    /// Index of the object in the [`Documents`].
    pub object: usize,
    /// The subscription that asked for the backfill.
    pub subscription: Arc<str>,
    /// Each header's place in its chunk (for the read's id) and its document key.
    pub keys: Vec<(u32, String)>,
    /// The backfill, the chunk and its high watermark.
    pub origin: ReadOrigin,
}

/// What applying touches and ending a transaction made: events to write, problems to log.
#[derive(Debug, Default)]
pub struct Made {
    /// Events, in the order their documents were first touched.
    pub events: Vec<RoutedEvent>,
    /// Subscriptions that could not be evaluated (their deliveries are recorded dead).
    pub problems: Vec<RouteProblem>,
    /// Events too big to send, by object name.
    pub oversized: BTreeMap<String, u64>,
}

impl Made {
    fn take(&mut self, object: &DocumentObject, route: Route) {
        if route.oversized > 0 {
            *self.oversized.entry(object.name.clone()).or_default() += route.oversized;
        }
        self.events.extend(route.events);
        self.problems.extend(route.problems);
    }
}

struct Statements {
    lookup: Statement,
    load: Statement,
    load_pending: Statement,
    delete_rows: Statement,
    upsert_rows: Statement,
    add_pending: Statement,
    pending_page: Statement,
    clear_pending: Statement,
    truncate: Statement,
}

/// The writer's document state: statements on its connection and the open transaction's
/// touched documents.
pub struct DocumentState {
    schema: String,
    statements: Statements,
    documents: Arc<Documents>,
    /// Touches not yet applied, with the commit of their transaction.
    touches: Vec<Touch>,
    commit: Option<Commit>,
    entries: HashMap<(usize, String), Entry>,
    /// Which in-memory document each of their rows is in: (object, part, row key) → doc key.
    rows: HashMap<(usize, u16, String), String>,
    next_ordinal: u32,
    /// A source transaction has touched documents and not ended.
    open: bool,
    /// Some documents of the open transaction are in `document_pending`.
    spilled: bool,
}

impl DocumentState {
    /// Prepares the statements on the writer's connection.
    pub async fn new(client: &Client, schema: &str) -> Result<DocumentState, OutboxError> {
        let s = quote_ident(schema);
        let prepare = |sql: String, what: &'static str| {
            let schema = schema.to_owned();
            async move {
                client
                    .prepare(&sql)
                    .await
                    .map_err(|source| OutboxError::Db {
                        schema,
                        what,
                        source,
                    })
            }
        };
        let statements = Statements {
            lookup: prepare(
                format!(
                    "SELECT d.part, d.row_key, d.doc_key FROM {s}.document_row d \
                     JOIN unnest($2::int2[], $3::text[]) AS t(part, row_key) \
                       ON d.part = t.part AND d.row_key = t.row_key \
                     WHERE d.object = $1"
                ),
                "preparing the document row lookup",
            )
            .await?,
            load: prepare(
                format!(
                    "SELECT doc_key, part, row_key, row FROM {s}.document_row \
                     WHERE object = $1 AND doc_key = ANY($2::text[])"
                ),
                "preparing the document load",
            )
            .await?,
            load_pending: prepare(
                format!(
                    "SELECT doc_key, ordinal, before FROM {s}.document_pending \
                     WHERE object = $1 AND doc_key = ANY($2::text[])"
                ),
                "preparing the pending document load",
            )
            .await?,
            delete_rows: prepare(
                format!(
                    "DELETE FROM {s}.document_row d \
                     USING unnest($1::text[], $2::int2[], $3::text[]) AS t(object, part, row_key) \
                     WHERE d.object = t.object AND d.part = t.part AND d.row_key = t.row_key"
                ),
                "preparing the document row delete",
            )
            .await?,
            upsert_rows: prepare(
                format!(
                    "INSERT INTO {s}.document_row (object, part, row_key, doc_key, row) \
                     SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], \
                                          $5::text[]) \
                     ON CONFLICT (object, part, row_key) DO UPDATE \
                     SET doc_key = excluded.doc_key, row = excluded.row"
                ),
                "preparing the document row write",
            )
            .await?,
            add_pending: prepare(
                format!(
                    "INSERT INTO {s}.document_pending (object, doc_key, ordinal, before) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[])"
                ),
                "preparing the pending document write",
            )
            .await?,
            pending_page: prepare(
                format!(
                    "SELECT object, doc_key, ordinal, before FROM {s}.document_pending \
                     WHERE ordinal > $1 ORDER BY ordinal LIMIT $2"
                ),
                "preparing the pending document read",
            )
            .await?,
            clear_pending: prepare(
                format!("DELETE FROM {s}.document_pending"),
                "preparing the pending document clear",
            )
            .await?,
            truncate: prepare(
                format!("DELETE FROM {s}.document_row WHERE object = $1 AND part = $2"),
                "preparing the document truncate",
            )
            .await?,
        };
        Ok(DocumentState {
            schema: schema.to_owned(),
            statements,
            documents: Arc::new(Documents::default()),
            touches: Vec::new(),
            commit: None,
            entries: HashMap::new(),
            rows: HashMap::new(),
            next_ordinal: 0,
            open: false,
            spilled: false,
        })
    }

    /// The documents touches refer to from now on (a config edit applies between
    /// transactions). The documents kept are written first: their objects are named by
    /// their index in the old ones.
    pub async fn set_documents(
        &mut self,
        client: &Client,
        documents: Arc<Documents>,
    ) -> Result<(), OutboxError> {
        self.flush(client).await?;
        self.documents = documents;
        Ok(())
    }

    /// Takes one touch of the transaction committing at `commit`; returns true when enough
    /// are gathered to apply them ([`DocumentState::apply`]).
    pub fn touch(&mut self, touch: Touch, commit: Commit) -> bool {
        self.commit = Some(commit);
        self.open = true;
        self.touches.push(touch);
        self.touches.len() >= TOUCHES_PER_LOAD
    }

    /// Whether a source transaction's documents are open (touched and not yet ended).
    pub fn in_transaction(&self) -> bool {
        self.open || self.spilled
    }

    /// Whether documents changed by ended transactions are not written yet.
    pub fn unwritten(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Forgets the open transaction (its outbox transaction is rolled back).
    pub fn rollback(&mut self) {
        self.touches.clear();
        self.entries.clear();
        self.rows.clear();
        self.next_ordinal = 0;
        self.open = false;
        self.spilled = false;
        self.commit = None;
    }

    /// Writes the documents kept from ended transactions and forgets them: before the
    /// outbox commits, and before anything reads the state from `document_row`.
    pub async fn flush(&mut self, client: &Client) -> Result<(), OutboxError> {
        debug_assert!(
            !self.in_transaction(),
            "flushed between source transactions"
        );
        if self.entries.is_empty() {
            return Ok(());
        }
        self.write(client).await?;
        self.entries.clear();
        self.rows.clear();
        Ok(())
    }

    /// Applies the gathered touches to their documents, loading those not in memory.
    /// A `keep_state` object's events are made here, one per change.
    pub async fn apply(&mut self, client: &Client, made: &mut Made) -> Result<(), OutboxError> {
        if self.touches.is_empty() {
            return Ok(());
        }
        let touches = std::mem::take(&mut self.touches);
        let commit = self.commit.expect("touches come with their commit");
        // Where each touched row was before: the WAL says for a header (its key) and for a
        // child under REPLICA IDENTITY FULL; otherwise the state does.
        let old_key = |t: &Touch| t.old_row_key.clone().unwrap_or_else(|| t.row_key.clone());
        let mut old_docs: Vec<Option<String>> = touches
            .iter()
            .map(|t| {
                if t.part == 0 {
                    Some(old_key(t))
                } else if t.old_doc_key.is_some() {
                    t.old_doc_key.clone()
                } else {
                    self.rows.get(&(t.object, t.part, old_key(t))).cloned()
                }
            })
            .collect();
        // The documents the rows are in now, first: a line that stayed in its invoice (the
        // usual update) is found there, and needs no lookup of where it was.
        let now = touches
            .iter()
            .filter_map(|t| Some((t.object, t.doc_key.clone()?)));
        self.load_missing(client, now.chain(old_docs_of(&touches, &old_docs)))
            .await?;
        let mut unknown: HashMap<usize, Vec<(u16, String)>> = HashMap::new();
        for (t, old) in touches.iter().zip(old_docs.iter_mut()) {
            // An inserted row was nowhere before.
            if old.is_some() || t.operation == Operation::Create {
                continue;
            }
            *old = self.rows.get(&(t.object, t.part, old_key(t))).cloned();
            if old.is_none() {
                unknown
                    .entry(t.object)
                    .or_default()
                    .push((t.part, old_key(t)));
            }
        }
        if !unknown.is_empty() {
            let found = self.lookup(client, &unknown).await?;
            for (t, old) in touches.iter().zip(old_docs.iter_mut()) {
                if old.is_none() && t.operation != Operation::Create {
                    *old = found.get(&(t.object, t.part, old_key(t))).cloned();
                }
            }
            self.load_missing(client, old_docs_of(&touches, &old_docs))
                .await?;
        }
        for (t, old) in touches.into_iter().zip(old_docs) {
            self.apply_one(t, old, commit, made);
        }
        if self.entries.len() > DOCUMENTS_IN_MEMORY {
            self.spill(client).await?;
        }
        Ok(())
    }

    /// Loads the named documents that are not in memory yet, one query per object.
    async fn load_missing(
        &mut self,
        client: &Client,
        docs: impl Iterator<Item = (usize, String)>,
    ) -> Result<(), OutboxError> {
        let mut seen = HashSet::new();
        let mut wanted: HashMap<usize, Vec<String>> = HashMap::new();
        for (object, key) in docs {
            if !self.entries.contains_key(&(object, key.clone()))
                && seen.insert((object, key.clone()))
            {
                wanted.entry(object).or_default().push(key);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        self.load(client, wanted).await
    }

    /// Applies one touch to the documents in memory.
    fn apply_one(&mut self, t: Touch, old: Option<String>, commit: Commit, made: &mut Made) {
        let row_key = t.old_row_key.clone().unwrap_or_else(|| t.row_key.clone());
        let mut removed = None;
        if let Some(old) = &old {
            self.rows.remove(&(t.object, t.part, row_key.clone()));
            if let Some(entry) = self.entries.get_mut(&(t.object, old.clone())) {
                removed = entry.after.rows.remove(&(t.part, row_key.clone()));
            }
        }
        let mut new_row = t.row.clone();
        if let Some(row) = &mut new_row {
            // A value the WAL left out (an unchanged TOASTed column) is the one kept; when
            // walhook holds none either, it stays out: never invented.
            for name in &t.unknown {
                match removed.as_ref().and_then(|r| r.fields.get(name)) {
                    Some(value) => {
                        row.fields.insert(name.clone(), value.clone());
                    }
                    None => {
                        row.fields.shift_remove(name);
                    }
                }
            }
        }
        let touched: Vec<String> = [old.clone(), t.doc_key.clone()]
            .into_iter()
            .flatten()
            .collect();
        if let (Some(row), Some(doc)) = (new_row.clone(), &t.doc_key) {
            self.rows
                .insert((t.object, t.part, t.row_key.clone()), doc.clone());
            if let Some(entry) = self.entries.get_mut(&(t.object, doc.clone())) {
                entry.after.rows.insert((t.part, t.row_key.clone()), row);
            }
        }
        for doc in touched {
            if let Some(entry) = self.entries.get_mut(&(t.object, doc)) {
                if entry.ordinal.is_none() {
                    entry.ordinal = Some(self.next_ordinal);
                    self.next_ordinal += 1;
                }
            }
        }
        if !t.document {
            // A keep_state object: one event per change, from the row as walhook kept it.
            let object = self.documents.object(t.object);
            let before = single(removed.map(|r| ((0, row_key.clone()), r)));
            let after = single(new_row.map(|r| ((0, t.row_key.clone()), r)));
            made.take(
                object,
                object.route(&before, &after, event_id(commit.lsn, t.position), commit),
            );
        }
    }

    /// Ends the transaction committing at `commit`: each touched document becomes its
    /// events, and its changed rows are written.
    pub async fn end(
        &mut self,
        client: &Client,
        commit: Commit,
        made: &mut Made,
    ) -> Result<(), OutboxError> {
        self.apply(client, made).await?;
        if self.spilled {
            self.spill(client).await?;
            self.events_from_pending(client, commit, made).await?;
        } else {
            let mut entries: Vec<&mut Entry> = self
                .entries
                .values_mut()
                .filter(|e| e.ordinal.is_some())
                .collect();
            entries.sort_by_key(|e| e.ordinal);
            for entry in entries {
                let object = self.documents.object(entry.object);
                if let (true, Some(ordinal)) = (object.document, entry.ordinal) {
                    let id = document_event_id(commit.lsn, ordinal);
                    made.take(
                        object,
                        object.route(&entry.before, &entry.after, id, commit),
                    );
                }
                // Kept for the next transaction: what it is now is its `before`, and what
                // `document_row` holds stays the base of the write.
                let now = entry.after.clone();
                let before = std::mem::replace(&mut entry.before, now);
                entry.stored.get_or_insert(before);
                entry.ordinal = None;
            }
        }
        self.next_ordinal = 0;
        self.open = false;
        self.spilled = false;
        self.commit = None;
        if self.entries.len() > DOCUMENTS_KEPT {
            self.flush(client).await?;
        }
        Ok(())
    }

    /// The read events of a backfill chunk of documents, from the state as it is now
    /// (between source transactions: everything before is applied).
    pub async fn read(
        &self,
        client: &Client,
        read: &DocumentRead,
        made: &mut Made,
    ) -> Result<(), OutboxError> {
        let object = self.documents.object(read.object);
        let keys: Vec<String> = read.keys.iter().map(|(_, k)| k.clone()).collect();
        let docs = self.stored(client, &object.id, &keys).await?;
        for (position, key) in &read.keys {
            // A document deleted since its header was read has no state and no read.
            if let Some(doc) = docs.get(key) {
                let route = object.route_read(doc, &read.subscription, *position, read.origin);
                made.take(object, route);
            }
        }
        Ok(())
    }

    /// A TRUNCATE of one of an object's tables: its rows of that part are gone.
    pub async fn truncate(
        &mut self,
        client: &Client,
        object: &str,
        part: u16,
        made: &mut Made,
    ) -> Result<(), OutboxError> {
        // What is in memory is written first, so the delete takes it too; documents kept
        // from earlier transactions are forgotten (their `before` would still hold the rows).
        self.apply(client, made).await?;
        self.write(client).await?;
        self.forget_kept();
        let index = self
            .documents
            .objects()
            .iter()
            .position(|o| &*o.id == object);
        for entry in self.entries.values_mut() {
            if Some(entry.object) == index {
                entry.after.rows.retain(|(p, _), _| *p != part);
                entry.stored = Some(entry.after.clone());
            }
        }
        self.rows
            .retain(|(o, p, _), _| Some(*o) != index || *p != part);
        client
            .execute(&self.statements.truncate, &[&object, &(part as i16)])
            .await
            .map_err(|source| self.error("clearing the state of a truncated table", source))?;
        Ok(())
    }

    /// Forgets the documents kept from ended transactions (written already).
    fn forget_kept(&mut self) {
        let kept: Vec<(usize, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ordinal.is_none() && !e.pending)
            .map(|(k, _)| k.clone())
            .collect();
        for key in kept {
            if let Some(entry) = self.entries.remove(&key) {
                for (part, row_key) in entry.after.rows.keys() {
                    let row = (key.0, *part, row_key.clone());
                    if self.rows.get(&row) == Some(&key.1) {
                        self.rows.remove(&row);
                    }
                }
            }
        }
    }

    /// Which document each of `rows` is in, per object, by the state.
    async fn lookup(
        &self,
        client: &Client,
        rows: &HashMap<usize, Vec<(u16, String)>>,
    ) -> Result<HashMap<(usize, u16, String), String>, OutboxError> {
        let mut found = HashMap::new();
        for (&object, keys) in rows {
            let id = &*self.documents.object(object).id;
            let parts: Vec<i16> = keys.iter().map(|(p, _)| *p as i16).collect();
            let row_keys: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
            let result = client
                .query(&self.statements.lookup, &[&id, &parts, &row_keys])
                .await
                .map_err(|source| self.error("finding the documents of changed rows", source))?;
            for row in result {
                let part: i16 = row.get(0);
                found.insert((object, part as u16, row.get(1)), row.get(2));
            }
        }
        Ok(found)
    }

    /// The named documents of `object` as `document_row` holds them (a document it has no
    /// row of is left out).
    async fn stored(
        &self,
        client: &Client,
        object: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Doc>, OutboxError> {
        let rows = client
            .query(&self.statements.load, &[&object, &keys])
            .await
            .map_err(|source| self.error("reading document state", source))?;
        let mut docs: HashMap<String, Doc> = HashMap::new();
        for row in rows {
            let part: i16 = row.get(1);
            let state = self.parse(row.get(3), object)?;
            docs.entry(row.get(0))
                .or_default()
                .rows
                .insert((part as u16, row.get(2)), state);
        }
        Ok(docs)
    }

    /// Reads the named documents into memory (with what they were before the transaction,
    /// for those in `document_pending`).
    async fn load(
        &mut self,
        client: &Client,
        wanted: HashMap<usize, Vec<String>>,
    ) -> Result<(), OutboxError> {
        for (object, keys) in wanted {
            let id = self.documents.object(object).id.clone();
            let mut docs = self.stored(client, &id, &keys).await?;
            for (doc_key, doc) in &docs {
                for (part, row_key) in doc.rows.keys() {
                    self.rows
                        .insert((object, *part, row_key.clone()), doc_key.clone());
                }
            }
            for key in &keys {
                docs.entry(key.clone()).or_default();
            }
            let mut pending: HashMap<String, (u32, Doc)> = HashMap::new();
            if self.spilled {
                let rows = client
                    .query(&self.statements.load_pending, &[&&*id, &keys])
                    .await
                    .map_err(|source| self.error("reading pending documents", source))?;
                for row in rows {
                    let ordinal: i32 = row.get(1);
                    let before = self.parse_doc(row.get(2), &id)?;
                    pending.insert(row.get(0), (ordinal as u32, before));
                }
            }
            for (key, doc) in docs {
                let entry = match pending.remove(&key) {
                    Some((ordinal, before)) => Entry {
                        object,
                        before,
                        after: doc.clone(),
                        stored: Some(doc),
                        ordinal: Some(ordinal),
                        pending: true,
                    },
                    None => Entry {
                        object,
                        before: doc.clone(),
                        after: doc,
                        stored: None,
                        ordinal: None,
                        pending: false,
                    },
                };
                self.entries.insert((object, key), entry);
            }
        }
        Ok(())
    }

    /// Writes every document in memory (its changed rows, and what it was before into
    /// `document_pending`) and forgets them.
    async fn spill(&mut self, client: &Client) -> Result<(), OutboxError> {
        let mut objects = Vec::new();
        let mut keys = Vec::new();
        let mut ordinals = Vec::new();
        let mut befores = Vec::new();
        for ((object, key), entry) in &self.entries {
            if entry.pending || entry.ordinal.is_none() {
                continue;
            }
            objects.push(self.documents.object(*object).id.to_string());
            keys.push(key.clone());
            ordinals.push(entry.ordinal.unwrap_or_default() as i32);
            befores.push(doc_to_json(&entry.before));
        }
        self.write(client).await?;
        if !objects.is_empty() {
            client
                .execute(
                    &self.statements.add_pending,
                    &[&objects, &keys, &ordinals, &befores],
                )
                .await
                .map_err(|source| self.error("keeping touched documents aside", source))?;
        }
        self.entries.clear();
        self.rows.clear();
        self.spilled = true;
        Ok(())
    }

    /// At the commit of a transaction that spilled: every pending document's events, in
    /// the order they were first touched, read back a page at a time.
    async fn events_from_pending(
        &mut self,
        client: &Client,
        commit: Commit,
        made: &mut Made,
    ) -> Result<(), OutboxError> {
        let by_id: HashMap<String, usize> = self
            .documents
            .objects()
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.to_string(), i))
            .collect();
        let mut after = -1i32;
        loop {
            let page = client
                .query(&self.statements.pending_page, &[&after, &PENDING_PAGE])
                .await
                .map_err(|source| self.error("reading pending documents", source))?;
            if page.is_empty() {
                break;
            }
            let mut wanted: HashMap<usize, Vec<String>> = HashMap::new();
            let mut items = Vec::with_capacity(page.len());
            for row in &page {
                let object: String = row.get(0);
                let key: String = row.get(1);
                let ordinal: i32 = row.get(2);
                after = ordinal;
                let Some(&index) = by_id.get(&object) else {
                    continue;
                };
                let before = self.parse_doc(row.get(3), &object)?;
                wanted.entry(index).or_default().push(key.clone());
                items.push((index, key, ordinal as u32, before));
            }
            // Read as they are now, with nothing pending: `load` then takes them as new.
            self.spilled = false;
            self.load(client, wanted).await?;
            self.spilled = true;
            for (index, key, ordinal, before) in items {
                let object = self.documents.object(index);
                let now = self
                    .entries
                    .remove(&(index, key))
                    .map(|e| e.after)
                    .unwrap_or_default();
                if object.document {
                    let id = document_event_id(commit.lsn, ordinal);
                    made.take(object, object.route(&before, &now, id, commit));
                }
            }
            self.entries.clear();
            self.rows.clear();
        }
        client
            .execute(&self.statements.clear_pending, &[])
            .await
            .map_err(|source| self.error("clearing pending documents", source))?;
        Ok(())
    }

    /// Writes the rows of the documents in memory that differ from what `document_row`
    /// holds: deletes first, so a row that moved to another document is written last.
    async fn write(&mut self, client: &Client) -> Result<(), OutboxError> {
        let mut deletes: (Vec<String>, Vec<i16>, Vec<String>) = Default::default();
        let mut upserts: Upserts = Default::default();
        for ((object, doc_key), entry) in &self.entries {
            let id = self.documents.object(*object).id.to_string();
            let base = entry.stored.as_ref().unwrap_or(&entry.before);
            for ((part, row_key), row) in &entry.after.rows {
                if base.rows.get(&(*part, row_key.clone())) != Some(row) {
                    upserts.0.push(id.clone());
                    upserts.1.push(*part as i16);
                    upserts.2.push(row_key.clone());
                    upserts.3.push(doc_key.clone());
                    upserts.4.push(row.to_json());
                }
            }
            for (part, row_key) in base.rows.keys() {
                if !entry.after.rows.contains_key(&(*part, row_key.clone())) {
                    deletes.0.push(id.clone());
                    deletes.1.push(*part as i16);
                    deletes.2.push(row_key.clone());
                }
            }
        }
        if !deletes.0.is_empty() {
            client
                .execute(
                    &self.statements.delete_rows,
                    &[&deletes.0, &deletes.1, &deletes.2],
                )
                .await
                .map_err(|source| self.error("removing document rows", source))?;
        }
        if !upserts.0.is_empty() {
            client
                .execute(
                    &self.statements.upsert_rows,
                    &[&upserts.0, &upserts.1, &upserts.2, &upserts.3, &upserts.4],
                )
                .await
                .map_err(|source| self.error("writing document rows", source))?;
        }
        for entry in self.entries.values_mut() {
            entry.stored = Some(entry.after.clone());
        }
        Ok(())
    }

    fn parse(&self, text: String, object: &str) -> Result<StateRow, OutboxError> {
        StateRow::from_json(&text).map_err(|e| OutboxError::State {
            schema: self.schema.clone(),
            object: object.to_owned(),
            message: e.to_string(),
        })
    }

    fn parse_doc(&self, text: String, object: &str) -> Result<Doc, OutboxError> {
        doc_from_json(&text).map_err(|e| OutboxError::State {
            schema: self.schema.clone(),
            object: object.to_owned(),
            message: e.to_string(),
        })
    }

    fn error(&self, what: &'static str, source: tokio_postgres::Error) -> OutboxError {
        OutboxError::Db {
            schema: self.schema.clone(),
            what,
            source,
        }
    }
}

/// The documents touched rows were in before, where known.
fn old_docs_of<'a>(
    touches: &'a [Touch],
    old_docs: &'a [Option<String>],
) -> impl Iterator<Item = (usize, String)> + 'a {
    touches
        .iter()
        .zip(old_docs)
        .filter_map(|(t, old)| Some((t.object, old.clone()?)))
}

/// Rows to write, column by column: object, part, row key, doc key, row.
type Upserts = (Vec<String>, Vec<i16>, Vec<String>, Vec<String>, Vec<String>);

/// A document of at most one row.
fn single(row: Option<((u16, String), StateRow)>) -> Doc {
    Doc {
        rows: row.into_iter().collect(),
    }
}

/// A document as `document_pending.before` holds it: `[[part, row_key, row], …]`.
fn doc_to_json(doc: &Doc) -> String {
    let rows: Vec<(u16, &str, &StateRow)> = doc
        .rows
        .iter()
        .map(|((part, key), row)| (*part, key.as_str(), row))
        .collect();
    serde_json::to_string(&rows).expect("a document always serialises")
}

fn doc_from_json(text: &str) -> Result<Doc, serde_json::Error> {
    let rows: Vec<(u16, String, StateRow)> = serde_json::from_str(text)?;
    Ok(Doc {
        rows: rows
            .into_iter()
            .map(|(part, key, row)| ((part, key), row))
            .collect(),
    })
}

/// Where each object's state was seeded from: object → (fingerprint, seed LSN).
pub async fn seeds(
    client: &impl GenericClient,
    schema: &str,
) -> Result<HashMap<String, (String, Lsn)>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT object, fingerprint, lsn::text FROM {}.document_seed",
                quote_ident(schema)
            ),
            &[],
        )
        .await
        .map_err(StoreError::at("reading the document seeds"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let lsn: String = r.get(2);
            Some((r.get(0), (r.get(1), lsn.parse().ok()?)))
        })
        .collect())
}

/// Rows of one object read by a seed, to write into its state.
#[derive(Debug, Default)]
pub struct SeedRows {
    parts: Vec<i16>,
    row_keys: Vec<String>,
    doc_keys: Vec<String>,
    rows: Vec<String>,
}

impl SeedRows {
    /// Adds one row.
    pub fn push(&mut self, part: u16, row_key: String, doc_key: String, row: &StateRow) {
        self.parts.push(part as i16);
        self.row_keys.push(row_key);
        self.doc_keys.push(doc_key);
        self.rows.push(row.to_json());
    }

    /// Rows gathered.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// Forgets what was kept of `object` and its seed, in the caller's transaction: before it is
/// seeded again, or when it left the config (a stale state must never come back with it).
pub async fn forget(
    client: &impl GenericClient,
    schema: &str,
    object: &str,
) -> Result<(), StoreError> {
    let s = quote_ident(schema);
    client
        .execute(
            &format!("DELETE FROM {s}.document_row WHERE object = $1"),
            &[&object],
        )
        .await
        .map_err(StoreError::at("clearing a document's state to seed it"))?;
    client
        .execute(
            &format!("DELETE FROM {s}.document_seed WHERE object = $1"),
            &[&object],
        )
        .await
        .map_err(StoreError::at("clearing a document's seed"))?;
    Ok(())
}

/// Writes seeded rows of `object` (a row seen twice — a child that is its own header's
/// collection — keeps the last).
pub async fn seed_rows(
    client: &impl GenericClient,
    schema: &str,
    object: &str,
    rows: &SeedRows,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let objects = vec![object; rows.len()];
    client
        .execute(
            &format!(
                "INSERT INTO {}.document_row (object, part, row_key, doc_key, row) \
                 SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::text[]) \
                 ON CONFLICT (object, part, row_key) DO UPDATE \
                 SET doc_key = excluded.doc_key, row = excluded.row",
                quote_ident(schema)
            ),
            &[
                &objects,
                &rows.parts,
                &rows.row_keys,
                &rows.doc_keys,
                &rows.rows,
            ],
        )
        .await
        .map_err(StoreError::at("writing seeded document rows"))?;
    Ok(())
}

/// Records that `object` is seeded as of `lsn` (in the transaction of its rows).
pub async fn seed_finish(
    client: &impl GenericClient,
    schema: &str,
    object: &str,
    fingerprint: &str,
    lsn: Lsn,
    rows: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "INSERT INTO {}.document_seed (object, fingerprint, lsn, rows) \
                 VALUES ($1, $2, $3::text::pg_lsn, $4)",
                quote_ident(schema)
            ),
            &[&object, &fingerprint, &lsn.to_string(), &rows],
        )
        .await
        .map_err(StoreError::at("recording a document's seed"))?;
    Ok(())
}

/// Which objects need a seed: keeping state, and never seeded with their current settings.
pub fn unseeded<'a>(
    documents: &'a Documents,
    seeds: &HashMap<String, (String, Lsn)>,
) -> Vec<&'a DocumentObject> {
    documents
        .objects()
        .iter()
        .filter(|o| {
            seeds
                .get(&*o.id)
                .is_none_or(|(fingerprint, _)| *fingerprint != o.fingerprint)
        })
        .collect()
}

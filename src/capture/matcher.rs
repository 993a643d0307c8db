//! Subscription matching (SPEC §3): one change of one row of a watched table that matches
//! a subscription becomes one event for that subscription.
//!
//! A change is routed through the subscriptions of its table in config order: operation,
//! then `watch` (updates only), then `when`. Every subscription that sees the change through
//! the same object and event type gets the same envelope bytes, serialised once.
//!
//! Invariant: walhook never guesses. A subscription that cannot be evaluated for a change
//! (its `watch` or `when` needs old values the WAL did not carry, its `when` reads a value
//! the WAL did not carry, the object's key was not carried, a configured column is missing,
//! its `when` fails) does not fire and is reported as a [`RouteProblem`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::change::{Cell, Operation, RowChange};
#[cfg(test)]
use super::envelope::envelope;
use super::envelope::{
    envelope_fields, event_id, read_fields, serialise, truncate_fields, Commit, ObjectView,
    ReadOrigin,
};
use super::relation::{Identity, Relation};
use super::render::Rendering;
use super::when::{self, When};
use crate::config::{Config, ResolvedObject, SubscriptionConfig, TableName, Target};
use crate::pg::quote_ident;
use crate::suggest::did_you_mean;

/// One envelope for one change, shared by every subscription that routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedEvent {
    /// The event id, the same for every subscription that receives this change.
    pub event_id: String,
    /// The event type (`invoice.updated`, or the subscription's own).
    pub event_type: String,
    /// The object name the change was seen through.
    pub object: String,
    /// The envelope's `key` map as minified JSON, e.g. `{"id":123}`.
    pub key: String,
    /// The envelope bytes.
    pub body: Vec<u8>,
    /// Names of the subscriptions that receive it, in config order.
    pub subscriptions: Vec<Arc<str>>,
    /// Subscriptions that could not be evaluated for this change, with why: their delivery
    /// is recorded dead with that error, to be replayed once the config is fixed.
    pub dead: Vec<(Arc<str>, String)>,
    /// The URL and method of this event, for a subscription that routes per event (then
    /// the event is that subscription's alone); `None`: each subscription's own.
    pub target: Option<Target>,
    /// The body is the envelope where the subscription's templates should have rendered
    /// it (they failed, or its delivery is dead for another reason): `walhook replay`
    /// renders it then.
    pub unrendered: bool,
}

impl RoutedEvent {
    /// Adds a subscription: receiving it, or dead with the error when it could not be
    /// evaluated.
    fn receive(&mut self, subscription: Arc<str>, dead: Option<String>) {
        match dead {
            None => self.subscriptions.push(subscription),
            Some(error) => self.dead.push((subscription, error)),
        }
    }
}

/// A subscription that could not be evaluated for a change (bad `when` at runtime, missing
/// column, `watch` without old values, `when` reading a value the WAL did not carry, a key
/// the WAL did not carry). The caller logs and counts it; the change is recorded for the
/// subscription as a dead delivery (see [`RoutedEvent::dead`]) whenever its event could be
/// built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    /// The subscription.
    pub subscription: Arc<str>,
    /// The table, `schema.table`.
    pub table: String,
    /// The row's key as minified JSON, like [`RoutedEvent::key`].
    pub key: String,
    /// What went wrong, with the fix where there is one.
    pub message: String,
}

/// What a logged route problem says became of the change.
pub const RECORDED_DEAD: &str = "recorded as a dead delivery, replay it once the config is fixed";

impl RouteProblem {
    /// Logs the problem as an error, saying first what became of the change (`outcome`).
    pub fn log(&self, outcome: &str) {
        tracing::error!(
            subscription = %self.subscription,
            table = %self.table,
            key = %self.key,
            "{outcome}: {}",
            self.message
        );
    }
}

impl fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subscriptions.{}: change of {} key {}: {}",
            self.subscription, self.table, self.key, self.message
        )
    }
}

/// Subscriptions whose `when` cannot be compiled, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct MatcherError {
    /// `walhook.toml:LINE: subscriptions[N].when: …`, one per bad expression.
    pub problems: Vec<String>,
}

/// Routes row changes to the active subscriptions of their table.
#[derive(Debug)]
pub struct Matcher {
    /// schema → table → routes; two levels so a lookup by `&str` allocates nothing.
    tables: HashMap<String, HashMap<String, Table>>,
    /// Configured tables by the OID they had when resolved ([`Matcher::bind`]): a renamed
    /// table is still found by its OID, so its changes are not lost.
    oids: HashMap<u32, TableName>,
    /// Bound tables last seen under a name other than the configured one, by OID.
    renamed: HashMap<u32, (TableName, String)>,
}

/// A bound table's name on the source changed ([`Matcher::notice_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameChange {
    /// The table is now called `now` (`schema.table`), not what the config says.
    Renamed {
        /// The table as configured.
        configured: TableName,
        /// Its name on the source now.
        now: String,
    },
    /// The table's name and the config agree again (renamed back, or the config edited).
    Restored {
        /// The table as configured when the rename was noticed.
        configured: TableName,
    },
}

/// The active subscriptions of one table.
#[derive(Debug, Default)]
struct Table {
    /// Distinct objects the subscriptions see this table through.
    objects: Vec<ObjectSpec>,
    /// In config order, so events and problems come out in config order.
    subscriptions: Vec<Subscription>,
    /// Names resolved to column indexes for the Relation last seen.
    resolved: Option<Resolved>,
    /// The table's OID once bound: then a table that took over its name is not it.
    oid: Option<u32>,
}

/// An object as configured: subscriptions that share one get one envelope.
#[derive(Debug, PartialEq, Eq)]
struct ObjectSpec {
    name: String,
    key: Option<Vec<String>>,
    fields: Option<Vec<String>>,
}

#[derive(Debug)]
struct Subscription {
    name: Arc<str>,
    /// Index into [`Table::objects`].
    object: usize,
    /// Indexed by [`op_index`].
    operations: [bool; 3],
    /// `truncate` is listed in `operations`.
    truncate: bool,
    watch: Option<Vec<String>>,
    when: Option<When>,
    /// Its templates and per-event routing; `None` sends the envelope to its URL.
    rendering: Option<Rendering>,
    /// Indexed by [`op_index`], computed once instead of per change.
    event_types: [String; 3],
    /// The type of its read events (`<object>.read`, or its `event_type`).
    read_event_type: String,
}

/// Column indexes for one version of the table, rebuilt when pgoutput describes it again.
#[derive(Debug)]
struct Resolved {
    /// Held (not just compared) so its address cannot be reused by another Relation.
    relation: Arc<Relation>,
    /// Per object: the view, or the missing-column message.
    views: Vec<Result<ObjectView, String>>,
    /// Per subscription: the columns its `watch` and `when` name, or why one is missing.
    columns: Vec<Result<SubscriptionColumns, String>>,
}

/// The columns one subscription names, as indexes into the Relation's columns.
#[derive(Debug)]
struct SubscriptionColumns {
    /// The watched columns.
    watch: Option<Vec<usize>>,
    /// The `values.X` and `previous.X` its `when` reads, as (variable, column).
    when_reads: Vec<(&'static str, usize)>,
}

impl Matcher {
    /// Compiles every `when` (of inactive subscriptions too: the config is wrong either way)
    /// and indexes the active subscriptions by table.
    pub fn new(config: &Config) -> Result<Matcher, MatcherError> {
        let mut problems = Vec::new();
        let mut tables: HashMap<String, HashMap<String, Table>> = HashMap::new();
        for sub in &config.subscriptions {
            let when = match compile_when(sub) {
                Ok(when) => when,
                Err(mut errors) => {
                    problems.append(&mut errors);
                    continue;
                }
            };
            let rendering = match compile_rendering(sub) {
                Ok(rendering) => rendering,
                Err(mut errors) => {
                    problems.append(&mut errors);
                    continue;
                }
            };
            // A document's (or keep_state object's) events are made from its state when
            // the outbox writer applies the transaction: `capture::document` routes them.
            if !sub.active || sub.object.config.keeps_state() {
                continue;
            }
            let table = &sub.object.config.table;
            let table = tables
                .entry(table.schema.clone())
                .or_default()
                .entry(table.name.clone())
                .or_default();
            let object = table.object_index(&sub.object);
            table.subscriptions.push(Subscription {
                name: Arc::from(sub.name.as_str()),
                object,
                operations: Operation::ALL.map(|op| sub.fires_on(op)),
                truncate: sub.truncate,
                watch: sub.watch.clone(),
                when,
                rendering,
                event_types: Operation::ALL.map(|op| sub.event_type_for(op)),
                read_event_type: sub.event_type_for(Operation::Read),
            });
        }
        if problems.is_empty() {
            Ok(Matcher {
                tables,
                oids: HashMap::new(),
                renamed: HashMap::new(),
            })
        } else {
            Err(MatcherError { problems })
        }
    }

    /// Whether any active subscription watches this table (lets the caller skip work).
    pub fn watches(&self, relation: &Relation) -> bool {
        self.configured_name(relation).is_some()
    }

    /// The configured tables that are not yet bound to an OID.
    pub fn unbound(&self) -> Vec<TableName> {
        let mut unbound = Vec::new();
        for (schema, tables) in &self.tables {
            for (name, table) in tables {
                if table.oid.is_none() {
                    unbound.push(TableName {
                        schema: schema.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        unbound
    }

    /// Binds a configured table to its OID: from now on its changes are matched by OID, so a
    /// rename does not lose them.
    pub fn bind(&mut self, table: &TableName, oid: u32) {
        if let Some(t) = self
            .tables
            .get_mut(&table.schema)
            .and_then(|tables| tables.get_mut(&table.name))
        {
            t.oid = Some(oid);
            self.oids.insert(oid, table.clone());
        }
    }

    /// The OIDs bound so far, by configured table (to carry them over to a reloaded config).
    pub fn bound(&self) -> impl Iterator<Item = (&TableName, u32)> {
        self.oids.iter().map(|(oid, table)| (table, *oid))
    }

    /// Keeps what `old` knew of the tables both configs watch: their OIDs (a renamed table
    /// could not be found again by its configured name) and the names they were last seen
    /// under.
    pub fn carry_over(&mut self, old: &Matcher) {
        for (table, oid) in old.bound() {
            self.bind(table, oid);
        }
        // Kept even when the new config names the table by its new name: seeing it then
        // under its configured name says the rename is dealt with.
        self.renamed.extend(old.renamed.clone());
    }

    /// Tells whether this change's table is now known under another name than configured
    /// (or under its own again) since it was last seen; `None` when nothing changed.
    pub fn notice_name(&mut self, relation: &Relation) -> Option<NameChange> {
        let configured = self.oids.get(&relation.oid)?;
        let now = relation.qualified_name();
        if relation.schema == configured.schema && relation.name == configured.name {
            self.renamed
                .remove(&relation.oid)
                .map(|(configured, _)| NameChange::Restored { configured })
        } else if self
            .renamed
            .get(&relation.oid)
            .is_some_and(|(_, seen)| *seen == now)
        {
            None
        } else {
            let configured = configured.clone();
            self.renamed
                .insert(relation.oid, (configured.clone(), now.clone()));
            Some(NameChange::Renamed { configured, now })
        }
    }

    /// The configured `(schema, table)` this relation is, if watched: by OID once bound
    /// (whatever the table is called now), else by name.
    pub fn configured_name<'a>(&'a self, relation: &'a Relation) -> Option<(&'a str, &'a str)> {
        if let Some(table) = self.oids.get(&relation.oid) {
            return Some((table.schema.as_str(), table.name.as_str()));
        }
        let table = self
            .tables
            .get(relation.schema.as_str())?
            .get(relation.name.as_str())?;
        // Bound to another OID: this is a different table that took the configured name.
        match table.oid {
            Some(_) => None,
            None => Some((relation.schema.as_str(), relation.name.as_str())),
        }
    }

    fn table_mut(&mut self, relation: &Relation) -> Option<&mut Table> {
        let (schema, name) = self.configured_name(relation)?;
        let (schema, name) = (schema.to_owned(), name.to_owned());
        self.tables.get_mut(&schema)?.get_mut(&name)
    }

    fn table(&self, relation: &Relation) -> Option<&Table> {
        let (schema, name) = self.configured_name(relation)?;
        self.tables.get(schema)?.get(name)
    }

    /// Routes one change: the events it becomes (possibly none) and any problems.
    pub fn route(
        &mut self,
        change: &RowChange,
        commit: Commit,
    ) -> (Vec<RoutedEvent>, Vec<RouteProblem>) {
        let relation = &change.relation;
        let Some(table) = self.table_mut(relation) else {
            return (Vec::new(), Vec::new());
        };
        table.refresh(relation);
        let table = &*table;
        let resolved = table.resolved.as_ref().expect("refreshed above");

        let operation = change.operation;
        let Some(op) = op_index(operation) else {
            return (Vec::new(), Vec::new());
        };
        let mut events: Vec<RoutedEvent> = Vec::new();
        // Parallel to `events`: the object index each one was built for.
        let mut event_objects: Vec<usize> = Vec::new();
        let mut problems = Vec::new();
        // Per object, built on the first `when` that needs it: one per change at most.
        let mut scopes: Vec<Option<minijinja::Value>> = Vec::new();

        for (index, sub) in table.subscriptions.iter().enumerate() {
            if !sub.operations[op] {
                continue;
            }
            let view = &resolved.views[sub.object];
            let mut problem = |message: String| {
                let key = match view {
                    Ok(view) => problem_key(change, &view.key),
                    Err(_) => problem_key(change, &relation.key),
                };
                problems.push(RouteProblem {
                    subscription: sub.name.clone(),
                    table: relation.qualified_name(),
                    key,
                    message,
                });
            };
            let view = match view {
                Ok(view) => view,
                Err(message) => {
                    problem(message.clone());
                    continue;
                }
            };
            // Whether the subscription fires; an error when it cannot be told for this change
            // (a column gone, a `when` that fails on this row): the event is then recorded
            // for it as a dead delivery with the error, so nothing vanishes and a replay after
            // the fix sends it.
            let verdict: Result<bool, String> = 'decide: {
                let columns = match &resolved.columns[index] {
                    Ok(columns) => columns,
                    Err(message) => break 'decide Err(message.clone()),
                };
                if operation == Operation::Update {
                    let fires = match &columns.watch {
                        Some(watched) => match watched_column_changed(change, watched) {
                            Some(fires) => fires,
                            None => {
                                break 'decide Err(format!(
                                    "watch {:?} cannot be evaluated: {}",
                                    sub.watch.as_deref().unwrap_or_default(),
                                    old_values_unknown(relation)
                                ))
                            }
                        },
                        // Without the old row nothing says what changed, and SPEC §3 says a
                        // subscription without watch then fires on every update.
                        None => field_changed(change, &view.fields).unwrap_or(true),
                    };
                    if !fires {
                        break 'decide Ok(false);
                    }
                }
                let Some(when) = &sub.when else {
                    break 'decide Ok(true);
                };
                if when.reads_previous()
                    && operation != Operation::Create
                    && !change.old_row_known()
                {
                    break 'decide Err(format!(
                        "when reads previous, which cannot be known: {}",
                        old_values_unknown(relation)
                    ));
                }
                // Left out of the scope, an unknown value would be undefined, and
                // `undefined != ''` is true: the filter would decide on a value no one knows.
                if let Some(message) = when_reads_unknown(change, view, when, &columns.when_reads) {
                    break 'decide Err(message);
                }
                if scopes.is_empty() {
                    scopes.resize(table.objects.len(), None);
                }
                let scope = scopes[sub.object].get_or_insert_with(|| when::scope(change, view));
                when.eval(scope).map_err(|error| format!("when: {error}"))
            };
            let dead = match verdict {
                Ok(true) => None,
                Ok(false) => continue,
                Err(message) => {
                    problem(message.clone());
                    Some(message)
                }
            };

            // Without its key the event could not say which row it is about, and per-key
            // ordering would lump rows together.
            let current = change.current();
            if view
                .key
                .iter()
                .any(|&i| matches!(current[i], Cell::Unknown))
            {
                problem(key_not_carried(change, view));
                continue;
            }

            let event_type = &sub.event_types[op];
            if let Some(rendering) = &sub.rendering {
                // Its own event: the body, URL or method are this subscription's alone.
                let id = match events.first() {
                    Some(event) => event.event_id.clone(),
                    None => event_id(commit.lsn, change.position),
                };
                let fields = envelope_fields(change, view, event_type, commit);
                let (body, target, dead) = match dead {
                    // Stored as the envelope, which a replay renders once the config is fixed.
                    Some(error) => (serialise(fields), None, Some(error)),
                    None => match rendering.render(&fields, operation) {
                        Ok(rendered) => (
                            rendered.body.unwrap_or_else(|| serialise(fields)),
                            rendered.target,
                            None,
                        ),
                        Err(error) => {
                            problem(error.clone());
                            (serialise(fields), None, Some(error))
                        }
                    },
                };
                let mut event = RoutedEvent {
                    event_id: id,
                    event_type: event_type.clone(),
                    object: view.name.clone(),
                    key: key_json(change, &view.key),
                    body,
                    subscriptions: Vec::new(),
                    dead: Vec::new(),
                    target,
                    unrendered: dead.is_some(),
                };
                event.receive(sub.name.clone(), dead);
                events.push(event);
                // No later subscription shares it.
                event_objects.push(usize::MAX);
                continue;
            }
            if let Some((event, _)) = events
                .iter_mut()
                .zip(&event_objects)
                .find(|(event, &object)| object == sub.object && event.event_type == *event_type)
            {
                event.receive(sub.name.clone(), dead);
                continue;
            }
            // The id is the change's, and the key the object's: computed once, then copied.
            let id = match events.first() {
                Some(event) => event.event_id.clone(),
                None => event_id(commit.lsn, change.position),
            };
            let key = match events
                .iter()
                .zip(&event_objects)
                .find(|(_, &object)| object == sub.object)
            {
                Some((event, _)) => event.key.clone(),
                None => key_json(change, &view.key),
            };
            let mut event = RoutedEvent {
                event_id: id,
                event_type: event_type.clone(),
                object: view.name.clone(),
                key,
                body: serialise(envelope_fields(change, view, event_type, commit)),
                subscriptions: Vec::new(),
                dead: Vec::new(),
                target: None,
                unrendered: false,
            };
            event.receive(sub.name.clone(), dead);
            events.push(event);
            event_objects.push(sub.object);
        }
        (events, problems)
    }
}

impl Matcher {
    /// Routes one row a backfill read to `subscription` alone (SPEC §3b), whatever its
    /// `operations`, filtered by its `when`. No event when `when` passes the row over or the
    /// subscription no longer watches the table; a row that cannot be evaluated is recorded
    /// dead for it with the problem, like a change.
    pub fn route_read(
        &mut self,
        subscription: &str,
        row: &RowChange,
        origin: ReadOrigin,
    ) -> (Option<RoutedEvent>, Option<RouteProblem>) {
        let relation = &row.relation;
        let Some(table) = self.table_mut(relation) else {
            return (None, None);
        };
        table.refresh(relation);
        let table = &*table;
        let resolved = table.resolved.as_ref().expect("refreshed above");
        let Some((index, sub)) = table
            .subscriptions
            .iter()
            .enumerate()
            .find(|(_, s)| &*s.name == subscription)
        else {
            return (None, None);
        };
        let problem = |message: String, key: String| RouteProblem {
            subscription: sub.name.clone(),
            table: relation.qualified_name(),
            key,
            message,
        };
        let view = match &resolved.views[sub.object] {
            Ok(view) => view,
            Err(message) => {
                let key = problem_key(row, &relation.key);
                return (None, Some(problem(message.clone(), key)));
            }
        };
        let key = key_json(row, &view.key);
        let verdict = match (&resolved.columns[index], &sub.when) {
            (Err(message), _) => Err(message.clone()),
            (Ok(_), None) => Ok(true),
            (Ok(_), Some(when)) => when
                .eval(&when::scope(row, view))
                .map_err(|error| format!("when: {error}")),
        };
        let mut dead = match verdict {
            Ok(true) => None,
            Ok(false) => return (None, None),
            Err(message) => Some(message),
        };
        let fields = read_fields(row, view, &sub.read_event_type, origin);
        let event_id = fields["id"].as_str().unwrap_or_default().to_owned();
        let (body, target) = match (&sub.rendering, &dead) {
            (Some(rendering), None) => match rendering.render(&fields, Operation::Read) {
                Ok(rendered) => (
                    rendered.body.unwrap_or_else(|| serialise(fields)),
                    rendered.target,
                ),
                Err(error) => {
                    dead = Some(error);
                    (serialise(fields), None)
                }
            },
            // Stored as the envelope, which a replay renders once the config is fixed.
            _ => (serialise(fields), None),
        };
        let reported = dead
            .as_ref()
            .map(|message| problem(message.clone(), key.clone()));
        let mut event = RoutedEvent {
            event_id,
            event_type: sub.read_event_type.clone(),
            object: view.name.clone(),
            key,
            body,
            subscriptions: Vec::new(),
            dead: Vec::new(),
            target,
            unrendered: dead.is_some() && sub.rendering.is_some(),
        };
        event.receive(sub.name.clone(), dead);
        (Some(event), reported)
    }
}

/// What a TRUNCATE of one table becomes (SPEC §3).
#[derive(Debug, Default)]
pub struct TruncateRoute {
    /// One event per object, for the subscriptions that list `truncate`.
    pub events: Vec<RoutedEvent>,
    /// The table's active subscriptions that do not list `truncate`, in config order.
    pub ignored_by: Vec<Arc<str>>,
}

impl Matcher {
    /// Routes the TRUNCATE of one table, the `index`-th of `truncation`: `<object>.truncated`
    /// (key and values null) to subscriptions listing `truncate`; the others are named so
    /// the caller can warn, because their receivers now hold rows that no longer exist.
    pub fn route_truncate(
        &self,
        truncation: &super::reader::Truncation,
        index: usize,
        commit: Commit,
    ) -> TruncateRoute {
        let relation = &truncation.relations[index];
        let Some(table) = self.table(relation) else {
            return TruncateRoute::default();
        };
        let position = truncation.position + index as u32;
        let mut route = TruncateRoute::default();
        // Parallel to `route.events`: the object index each one was built for.
        let mut event_objects: Vec<usize> = Vec::new();
        for sub in &table.subscriptions {
            if !sub.truncate {
                route.ignored_by.push(sub.name.clone());
                continue;
            }
            if sub.rendering.is_none() {
                if let Some(at) = event_objects.iter().position(|&o| o == sub.object) {
                    route.events[at].subscriptions.push(sub.name.clone());
                    continue;
                }
            }
            // Only the object's name is read: a TRUNCATE has no row, so no key or fields.
            let view = ObjectView {
                name: table.objects[sub.object].name.clone(),
                key: Vec::new(),
                fields: Vec::new(),
            };
            let fields = truncate_fields(
                relation,
                &view,
                position,
                truncation.cascade,
                truncation.restart_identity,
                commit,
            );
            let mut event = RoutedEvent {
                event_id: event_id(commit.lsn, position),
                event_type: format!("{}.truncated", view.name),
                object: view.name.clone(),
                key: "null".to_owned(),
                body: Vec::new(),
                subscriptions: Vec::new(),
                dead: Vec::new(),
                target: None,
                unrendered: false,
            };
            let dead = match &sub.rendering {
                None => {
                    event.body = serialise(fields);
                    None
                }
                Some(rendering) => match rendering.render_truncate(&fields) {
                    Ok(rendered) => {
                        event.body = rendered.body.unwrap_or_else(|| serialise(fields));
                        event.target = rendered.target;
                        None
                    }
                    Err(error) => {
                        event.body = serialise(fields);
                        event.unrendered = true;
                        Some(error)
                    }
                },
            };
            event.receive(sub.name.clone(), dead);
            route.events.push(event);
            // A rendered event is this subscription's alone.
            event_objects.push(match sub.rendering {
                None => sub.object,
                Some(_) => usize::MAX,
            });
        }
        route
    }
}

impl Table {
    /// The index of `object` in `objects`, adding it if new. Unnamed objects (`table = …`)
    /// are shared by name like named ones.
    fn object_index(&mut self, object: &ResolvedObject) -> usize {
        let spec = ObjectSpec {
            name: object.name.clone(),
            key: object.config.key.clone(),
            fields: object.config.fields.clone(),
        };
        match self.objects.iter().position(|o| *o == spec) {
            Some(index) => index,
            None => {
                self.objects.push(spec);
                self.objects.len() - 1
            }
        }
    }

    /// Resolves names against `relation` unless that very Relation was resolved last.
    fn refresh(&mut self, relation: &Arc<Relation>) {
        if self
            .resolved
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.relation, relation))
        {
            return;
        }
        let views = self
            .objects
            .iter()
            .map(|o| {
                ObjectView::resolve(&o.name, relation, o.key.as_deref(), o.fields.as_deref())
                    .map_err(|e| e.to_string())
            })
            .collect();
        let columns = self
            .subscriptions
            .iter()
            .map(|sub| {
                // With default fields (every column) a `when` may name any column, so only
                // now, with the table in hand, can a misspelt one be caught. (A field listed
                // in the object but missing from the table is reported with the object.)
                let when_reads = sub
                    .when
                    .iter()
                    .flat_map(|when| when.fields_read())
                    .map(|(variable, field)| {
                        relation
                            .column_index(field)
                            .map(|i| (*variable, i))
                            .ok_or_else(|| {
                                format!(
                                    "when reads {variable}.{field}, but table {relation} has \
                                     no column {field:?}{}",
                                    did_you_mean(field, column_names(relation))
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let watch = sub
                    .watch
                    .as_ref()
                    .map(|watch| {
                        watch
                            .iter()
                            .map(|column| {
                                relation.column_index(column).ok_or_else(|| {
                                    format!(
                                        "watch: table {relation} has no column {column:?}{}",
                                        did_you_mean(column, column_names(relation))
                                    )
                                })
                            })
                            .collect::<Result<Vec<usize>, String>>()
                    })
                    .transpose()?;
                Ok(SubscriptionColumns { watch, when_reads })
            })
            .collect();
        self.resolved = Some(Resolved {
            relation: relation.clone(),
            views,
            columns,
        });
    }
}

/// Compiles a subscription's `when`, and checks the fields it reads against the object's
/// fields when those are listed (a misspelt field would be undefined and never match).
pub(super) fn compile_when(sub: &SubscriptionConfig) -> Result<Option<When>, Vec<String>> {
    let Some(text) = &sub.when else {
        return Ok(None);
    };
    let at = when_at(sub);
    let when = When::compile(text).map_err(|e| vec![format!("{at}: {e}")])?;
    unknown_fields(sub, &at, when.fields_read())?;
    Ok(Some(when))
}

/// Compiles a subscription's templates, and checks the fields they read against the
/// object's fields when those are listed (else against the table, at start and by `check`).
pub(super) fn compile_rendering(
    sub: &SubscriptionConfig,
) -> Result<Option<Rendering>, Vec<String>> {
    let Some(rendering) = Rendering::compile(sub).map_err(|e| vec![e])? else {
        return Ok(None);
    };
    let at = super::render::template_at(sub);
    unknown_fields(sub, &at, rendering.fields_read())?;
    Ok(Some(rendering))
}

/// One message per `values.X` / `previous.X` in `read` that is not among the object's
/// listed fields, written at `at`; nothing when the object takes every column (the table's
/// columns are checked at start and by `check`).
fn unknown_fields(
    sub: &SubscriptionConfig,
    at: &str,
    read: &[(&'static str, String)],
) -> Result<(), Vec<String>> {
    let Some(fields) = &sub.object.config.fields else {
        return Ok(());
    };
    // A document's collections are fields of its events too.
    let known: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .chain(sub.object.config.children.iter().map(|c| c.name.as_str()))
        .collect();
    let errors: Vec<String> = read
        .iter()
        .filter(|(_, field)| !known.contains(&field.as_str()))
        .map(|(variable, field)| {
            format!(
                "{at}: reads {variable}.{field}, but {field:?} is not a field of object {:?}{}",
                sub.object.name,
                did_you_mean(field, known.iter().copied())
            )
        })
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors),
    }
}

/// Where a subscription's `when` is, for its errors: file and line when read from a file.
fn when_at(sub: &SubscriptionConfig) -> String {
    if sub.when_at.is_empty() {
        format!("subscriptions.{}.when", sub.name)
    } else {
        sub.when_at.clone()
    }
}

/// The `values.X` / `previous.X` lookups of every `when` on `table` that name no column of
/// it, one message each, for subscriptions whose object takes every column (a configured
/// `fields` list is checked when the config loads). Compiled at start, at reloads and by
/// `check`, so a typo is refused before it can make every event of the table fail.
///
/// Also refuses a `*` operand (`values.qty * 2`) whose column is not a number: text there
/// would fail on every row.
pub fn when_column_problems(
    config: &Config,
    table: &TableName,
    catalog: &crate::source::columns::TableColumns,
) -> Vec<String> {
    use crate::source::types::TypeKind;
    let columns = catalog.names();
    let mut problems = Vec::new();
    for sub in &config.subscriptions {
        if sub.object.config.table != *table {
            continue;
        }
        let Some(text) = &sub.when else { continue };
        // One that does not compile is reported by `Matcher::new`.
        let Ok(when) = When::compile(text) else {
            continue;
        };
        for (variable, field) in when.multiplied() {
            let kind = catalog.columns.iter().find(|(name, _)| name == field);
            if let Some((_, kind)) = kind {
                if !matches!(
                    kind,
                    // A json value may hold a number; each row is checked when it runs.
                    TypeKind::Integer
                        | TypeKind::Float
                        | TypeKind::Numeric
                        | TypeKind::Bool
                        | TypeKind::Json
                ) {
                    problems.push(format!(
                        "{}: multiplies {variable}.{field}, but column {field:?} of {table} is \
                         not a number, and `*` multiplies numbers only",
                        when_at(sub)
                    ));
                }
            }
        }
        // A configured `fields` list was checked when the config loaded.
        if sub.object.config.fields.is_some() {
            continue;
        }
        let collections = &sub.object.config.children;
        for (variable, field) in when.fields_read() {
            if !columns.contains(field) && !collections.iter().any(|c| c.name == *field) {
                problems.push(format!(
                    "{}: reads {variable}.{field}, but table {table} has no column {field:?}{}",
                    when_at(sub),
                    did_you_mean(field, columns.iter().map(String::as_str))
                ));
            }
        }
    }
    problems
}

/// Subscriptions whose `watch` or `when` needs old values of non-key columns on an update
/// (or, for a `when` reading `previous`, on a delete), with the reason: `"watch"` or
/// `"when reads previous"`. Inactive subscriptions need nothing and are left out, and so
/// are those of objects that keep state (documents, `keep_state = true`): walhook's own
/// state holds their old values, whatever the replica identity (SPEC §3a).
pub fn needs_old_values(config: &Config) -> Vec<(TableName, String, &'static str)> {
    let mut needs = Vec::new();
    for sub in config
        .subscriptions
        .iter()
        .filter(|s| s.active && !s.object.config.keeps_state())
    {
        let table = &sub.object.config.table;
        if sub.watch.is_some() && sub.fires_on(Operation::Update) {
            needs.push((table.clone(), sub.name.clone(), "watch"));
        }
        if let Some(text) = &sub.when {
            // An expression that does not compile is reported elsewhere; reading the text
            // errs on the side of asking for old values.
            let reads_previous = When::compile(text)
                .map_or_else(|_| text.contains("previous"), |w| w.reads_previous());
            if reads_previous
                && (sub.fires_on(Operation::Update) || sub.fires_on(Operation::Delete))
            {
                needs.push((table.clone(), sub.name.clone(), "when reads previous"));
            }
        }
    }
    needs
}

/// The index of an operation a subscription lists; `None` for a read, which no
/// subscription lists (reads are routed by [`Matcher::route_read`]).
fn op_index(operation: Operation) -> Option<usize> {
    match operation {
        Operation::Create => Some(0),
        Operation::Update => Some(1),
        Operation::Delete => Some(2),
        Operation::Read => None,
    }
}

fn column_names(relation: &Relation) -> impl Iterator<Item = &str> {
    relation.columns.iter().map(|c| c.name.as_str())
}

fn old_values_unknown(relation: &Relation) -> String {
    format!(
        "the WAL does not carry the old values of non-key columns of table {relation} (its \
         REPLICA IDENTITY is not FULL); fix: ALTER TABLE {} REPLICA IDENTITY FULL",
        quote_table_of(relation)
    )
}

/// Why a `when` cannot be evaluated for this change because it reads a value the WAL did
/// not carry, if it does. Allocates only when it finds one.
fn when_reads_unknown(
    change: &RowChange,
    view: &ObjectView,
    when: &When,
    reads: &[(&'static str, usize)],
) -> Option<String> {
    // `values` is none for a delete and `previous` undefined for a create: reading them
    // then is well defined, whatever the WAL carried.
    let cells = |variable: &str| match variable {
        "values" => change.new.as_deref(),
        _ if change.operation == Operation::Create => None,
        _ => change.old.as_deref(),
    };
    let unknown = |cells: &[Cell], i: usize| matches!(cells.get(i), Some(Cell::Unknown));
    let name = |i: usize| &change.relation.columns[i].name;
    for &(variable, i) in reads {
        if cells(variable).is_some_and(|cells| unknown(cells, i)) {
            return Some(format!(
                "when reads {variable}.{}, which the WAL did not carry for this change {}",
                name(i),
                value_not_carried(&change.relation)
            ));
        }
    }
    for variable in ["values", "previous"] {
        let Some(cells) = cells(variable).filter(|_| when.reads_whole(variable)) else {
            continue;
        };
        if let Some(&i) = view.fields.iter().find(|&&i| unknown(cells, i)) {
            return Some(format!(
                "when reads {variable} by subscript or as a whole, and the WAL did not carry \
                 {variable}.{} for this change {}",
                name(i),
                value_not_carried(&change.relation)
            ));
        }
    }
    None
}

/// `(why the WAL left a value out); fix: …` for a value of a new row that is unknown.
fn value_not_carried(relation: &Relation) -> String {
    let identity = match relation.identity {
        Identity::Key => "DEFAULT or USING INDEX",
        Identity::Nothing => "NOTHING",
        // FULL logs the whole old row, so an unchanged TOASTed value is filled from it.
        Identity::Full => return "(the row Postgres sent lacks it)".to_owned(),
    };
    format!(
        "(an unchanged TOASTed value, which REPLICA IDENTITY {identity} does not log); fix: \
         ALTER TABLE {} REPLICA IDENTITY FULL",
        quote_table_of(relation)
    )
}

/// Why an event could not be made: the WAL did not carry the object's key for this change.
fn key_not_carried(change: &RowChange, view: &ObjectView) -> String {
    let relation = &change.relation;
    let current = change.current();
    let names = |columns: &mut dyn Iterator<Item = &usize>| {
        columns
            .map(|&i| format!("{:?}", relation.columns[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing = names(
        &mut view
            .key
            .iter()
            .filter(|&&i| matches!(current[i], Cell::Unknown)),
    );
    let why = match (relation.identity, change.operation) {
        (Identity::Key, Operation::Delete) => format!(
            "REPLICA IDENTITY DEFAULT or USING INDEX logs only the replica identity ({}) of \
             a deleted row",
            names(&mut relation.identity_columns.iter())
        ),
        (Identity::Key, _) => "an unchanged TOASTed value, which REPLICA IDENTITY DEFAULT or \
                               USING INDEX does not log"
            .to_owned(),
        (Identity::Nothing, _) => "REPLICA IDENTITY NOTHING logs no old values".to_owned(),
        (Identity::Full, _) => "the row Postgres sent lacks it".to_owned(),
    };
    format!(
        "the WAL did not carry key {missing} of object {} for this {} ({why}), so the event \
         could not say which row it is about; fix: ALTER TABLE {} REPLICA IDENTITY FULL, or \
         make the key the replica identity",
        view.name,
        change.operation.as_str(),
        quote_table_of(relation)
    )
}

fn quote_table_of(relation: &Relation) -> String {
    format!(
        "{}.{}",
        quote_ident(&relation.schema),
        quote_ident(&relation.name)
    )
}

/// The key a problem is logged under: the object's key when the WAL carried it, else the
/// table's key, else its replica identity columns (not under FULL: that is the whole row).
fn problem_key(change: &RowChange, key: &[usize]) -> String {
    let relation = &change.relation;
    let current = change.current();
    let known = |columns: &[usize]| {
        !columns.is_empty() && columns.iter().all(|&i| current[i].known().is_some())
    };
    let identity: &[usize] = match relation.identity {
        Identity::Full => &[],
        _ => &relation.identity_columns,
    };
    let columns = [key, &relation.key, identity]
        .into_iter()
        .find(|columns| known(columns))
        .unwrap_or(key);
    key_json(change, columns)
}

/// Whether a watched column changed: `Some(true)` as soon as one known value differs,
/// `Some(false)` when all are known and equal, `None` when that cannot be told.
fn watched_column_changed(change: &RowChange, columns: &[usize]) -> Option<bool> {
    let (old, new) = (change.old.as_deref()?, change.new.as_deref()?);
    let mut unknown = false;
    for &i in columns {
        match (&old[i], &new[i]) {
            (Cell::Value(o), Cell::Value(n)) if o != n => return Some(true),
            (Cell::Value(_), Cell::Value(_)) => {}
            _ => unknown = true,
        }
    }
    (!unknown).then_some(false)
}

/// Whether any of `fields` changed, when the full old row is known; like
/// [`RowChange::changed_columns`] but without building the list.
fn field_changed(change: &RowChange, fields: &[usize]) -> Option<bool> {
    if !change.old_row_known() {
        return None;
    }
    let (old, new) = (change.old.as_deref()?, change.new.as_deref()?);
    Some(fields.iter().any(|&i| match (&old[i], &new[i]) {
        (Cell::Value(o), Cell::Value(n)) => o != n,
        _ => false,
    }))
}

/// The key map as the envelope writes it, minified: known key values of the current row.
fn key_json(change: &RowChange, key: &[usize]) -> String {
    let current = change.current();
    let map: Map<String, Value> = key
        .iter()
        .filter_map(|&i| {
            current[i]
                .known()
                .map(|v| (change.relation.columns[i].name.clone(), v.clone()))
        })
        .collect();
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    /// A change no subscription could be evaluated for: recorded for them as dead, sent to none.
    fn assert_only_dead(events: &[super::RoutedEvent]) {
        assert!(!events.is_empty(), "the change is recorded, not dropped");
        for event in events {
            assert!(event.subscriptions.is_empty(), "{event:?}");
            assert!(!event.dead.is_empty(), "{event:?}");
        }
    }

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::capture::relation::{Column, Identity};
    use crate::pg::Lsn;
    use crate::source::pgoutput::{Datum, OldTuple, Tuple};
    use crate::source::types::TypeKind;

    const COMMIT: Commit = Commit {
        lsn: Lsn(0x16B_3748),
        time: 0,
        xid: 771,
    };

    /// The invoice table of an ERP: `write_date` is a column the invoice object leaves out;
    /// `notes` can be long enough to be TOASTed.
    const COLUMNS: [(&str, TypeKind); 7] = [
        ("id", TypeKind::Integer),
        ("number", TypeKind::Text),
        ("partner_id", TypeKind::Integer),
        ("state", TypeKind::Text),
        ("amount_total", TypeKind::Numeric),
        ("write_date", TypeKind::Text),
        ("notes", TypeKind::Text),
    ];

    /// One invoice row; `changes` override the defaults by column name.
    fn row(changes: &[(&str, &str)]) -> Tuple {
        let defaults = [
            "123",
            "INV-42",
            "1",
            "posted",
            "120.00",
            "2026-11-22 10:00:00",
            "Deliver to the loading dock",
        ];
        Tuple(
            COLUMNS
                .iter()
                .zip(defaults)
                .map(|((name, _), default)| {
                    let text = changes
                        .iter()
                        .find(|(column, _)| column == name)
                        .map_or(default, |(_, value)| value);
                    Datum::Text(Bytes::copy_from_slice(text.as_bytes()))
                })
                .collect(),
        )
    }

    /// `row` as pgoutput sends it when `column` holds a TOASTed value the change left alone.
    fn toast_unchanged(mut row: Tuple, column: &str) -> Tuple {
        let i = COLUMNS
            .iter()
            .position(|(name, _)| *name == column)
            .unwrap();
        row.0[i] = Datum::UnchangedToast;
        row
    }

    /// `public.account_invoice` as pgoutput describes it under REPLICA IDENTITY FULL or
    /// DEFAULT; `without` leaves columns out (the table before or after some DDL).
    fn invoice_table(identity: Identity, without: &[&str]) -> Arc<Relation> {
        let columns: Vec<Column> = COLUMNS
            .iter()
            .filter(|(name, _)| !without.contains(name))
            .map(|(name, kind)| Column {
                name: (*name).to_owned(),
                type_oid: 0,
                kind: kind.clone(),
            })
            .collect();
        let identity_columns = match identity {
            Identity::Full => (0..columns.len()).collect(),
            _ => vec![0],
        };
        Arc::new(Relation {
            oid: 16_384,
            schema: "public".into(),
            name: "account_invoice".into(),
            columns,
            key: vec![0],
            identity,
            identity_columns,
        })
    }

    fn full() -> Arc<Relation> {
        invoice_table(Identity::Full, &[])
    }

    fn default_identity() -> Arc<Relation> {
        invoice_table(Identity::Key, &[])
    }

    fn created(table: &Arc<Relation>, new: Tuple) -> RowChange {
        RowChange::insert(table.clone(), 3, &new)
    }

    /// An update as pgoutput sends it: the whole old row under FULL, none under DEFAULT
    /// (the key did not change).
    fn updated(table: &Arc<Relation>, old: Tuple, new: Tuple) -> RowChange {
        let old = (table.identity == Identity::Full).then_some(OldTuple::Full(old));
        RowChange::update(table.clone(), 3, old.as_ref(), &new)
    }

    /// A delete as pgoutput sends it: the whole old row under FULL, the key under DEFAULT.
    fn deleted(table: &Arc<Relation>, old: Tuple) -> RowChange {
        let old = if table.identity == Identity::Full {
            OldTuple::Full(old)
        } else {
            let key_only = old
                .0
                .into_iter()
                .enumerate()
                .map(|(i, d)| if i == 0 { d } else { Datum::Null })
                .collect();
            OldTuple::Key(Tuple(key_only))
        };
        RowChange::delete(table.clone(), 3, &old)
    }

    const OBJECTS: &str = r#"
[source]
url = "postgres://walhook@localhost/erp"

[objects.invoice]
table = "public.account_invoice"
fields = ["number", "partner_id", "state", "amount_total"]

[objects.invoice_state]
table = "public.account_invoice"
fields = ["state"]

[objects.invoice_with_notes]
table = "public.account_invoice"
fields = ["number", "state", "notes"]

[objects.invoice_by_number]
table = "public.account_invoice"
key = ["number"]
fields = ["number", "state"]
"#;

    fn config(subscriptions: &str) -> Config {
        let text = format!("{OBJECTS}{subscriptions}");
        match Config::parse(&text, "walhook.toml", &|_| None) {
            Ok(config) => config,
            Err(e) => panic!("test config is invalid: {e}\n{text}"),
        }
    }

    /// A `[[subscriptions]]` entry named `name` with `lines` added.
    fn subscription(name: &str, lines: &str) -> String {
        format!(
            "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"https://hooks.example.com/{name}\"\n{lines}\n"
        )
    }

    fn matcher(subscriptions: &str) -> Matcher {
        Matcher::new(&config(subscriptions)).expect("every when compiles")
    }

    fn body(event: &RoutedEvent) -> serde_json::Value {
        serde_json::from_slice(&event.body).expect("the body is JSON")
    }

    fn names(event: &RoutedEvent) -> Vec<&str> {
        event.subscriptions.iter().map(|s| &**s).collect()
    }

    /// Routes a change that must produce no problems.
    fn route(matcher: &mut Matcher, change: &RowChange) -> Vec<RoutedEvent> {
        let (events, problems) = matcher.route(change, COMMIT);
        assert!(problems.is_empty(), "unexpected problems: {problems:?}");
        events
    }

    #[test]
    fn a_subscription_fires_only_on_the_operations_it_names() {
        let mut m = matcher(
            &[
                subscription(
                    "new-invoices",
                    "object = \"invoice\"\noperations = [\"create\"]",
                ),
                subscription("edits", "object = \"invoice\"\noperations = [\"update\"]"),
            ]
            .concat(),
        );
        let table = full();
        let events = route(&mut m, &created(&table, row(&[])));
        assert_eq!(events.len(), 1);
        assert_eq!(names(&events[0]), ["new-invoices"]);
        assert_eq!(events[0].event_type, "invoice.created");
        assert_eq!(events[0].object, "invoice");
        assert_eq!(events[0].event_id, "evt_00000000016B3748_0003");
        assert_eq!(events[0].key, r#"{"id":123}"#);

        assert!(route(&mut m, &deleted(&table, row(&[]))).is_empty());
    }

    #[test]
    fn updating_a_watched_column_fires_with_previous_and_changed() {
        let mut m = matcher(&subscription(
            "partner-sync",
            "object = \"invoice\"\nwatch = [\"partner_id\", \"state\"]",
        ));
        let change = updated(&full(), row(&[]), row(&[("partner_id", "2")]));
        let events = route(&mut m, &change);
        assert_eq!(events.len(), 1);
        assert_eq!(names(&events[0]), ["partner-sync"]);
        let body = body(&events[0]);
        assert_eq!(body["type"], "invoice.updated");
        assert_eq!(body["previous"], json!({"partner_id": 1}));
        assert_eq!(body["changed"], json!(["partner_id"]));
        assert_eq!(body["values"]["partner_id"], 2);
    }

    #[test]
    fn updating_only_unwatched_columns_fires_nothing() {
        let mut m = matcher(&subscription(
            "partner-sync",
            "object = \"invoice\"\nwatch = [\"partner_id\"]",
        ));
        let change = updated(&full(), row(&[]), row(&[("amount_total", "99.00")]));
        assert!(route(&mut m, &change).is_empty());
    }

    #[test]
    fn a_watch_on_a_table_without_old_values_is_reported_not_guessed() {
        let mut m = matcher(&subscription(
            "partner-sync",
            "object = \"invoice\"\nwatch = [\"partner_id\"]",
        ));
        let change = updated(&default_identity(), row(&[]), row(&[("partner_id", "2")]));
        let (events, problems) = m.route(&change, COMMIT);
        assert_only_dead(&events);
        assert_eq!(problems.len(), 1);
        let problem = &problems[0];
        assert_eq!(&*problem.subscription, "partner-sync");
        assert_eq!(problem.table, "public.account_invoice");
        assert_eq!(problem.key, r#"{"id":123}"#);
        assert!(
            problem
                .message
                .starts_with("watch [\"partner_id\"] cannot be evaluated")
                && problem
                    .message
                    .ends_with("ALTER TABLE public.account_invoice REPLICA IDENTITY FULL"),
            "{problem}"
        );
    }

    #[test]
    fn a_watch_on_the_key_can_be_told_without_old_values_when_the_key_changes() {
        // Under DEFAULT a changed key is in the WAL, so this watch needs no guess.
        let mut m = matcher(&subscription(
            "renumbered",
            "table = \"public.account_invoice\"\nwatch = [\"id\"]",
        ));
        let table = default_identity();
        let old = OldTuple::Key(Tuple(vec![
            Datum::Text(Bytes::from_static(b"123")),
            Datum::Null,
            Datum::Null,
            Datum::Null,
            Datum::Null,
            Datum::Null,
        ]));
        let change = RowChange::update(table, 3, Some(&old), &row(&[("id", "124")]));
        let events = route(&mut m, &change);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].object, "public.account_invoice");
        assert_eq!(body(&events[0])["previous"], json!({"id": 123}));
    }

    #[test]
    fn without_old_values_a_subscription_without_watch_fires_on_every_update() {
        let mut m = matcher(&subscription("all-edits", "object = \"invoice\""));
        // Nothing the invoice shows changed, but under DEFAULT walhook cannot know that.
        let change = updated(
            &default_identity(),
            row(&[]),
            row(&[("write_date", "2026-11-23 08:00:00")]),
        );
        let events = route(&mut m, &change);
        assert_eq!(events.len(), 1);
        let body = body(&events[0]);
        assert_eq!(body.get("previous"), None);
        assert_eq!(body.get("changed"), None);
    }

    #[test]
    fn an_update_of_columns_outside_the_fields_fires_nothing() {
        let mut m = matcher(&subscription("all-edits", "object = \"invoice\""));
        let table = full();
        let touched = updated(
            &table,
            row(&[]),
            row(&[("write_date", "2026-11-23 08:00:00")]),
        );
        assert!(route(&mut m, &touched).is_empty());
        let untouched = updated(&table, row(&[]), row(&[]));
        assert!(route(&mut m, &untouched).is_empty());
        let posted = updated(&table, row(&[("state", "draft")]), row(&[]));
        assert_eq!(route(&mut m, &posted).len(), 1);
    }

    #[test]
    fn when_filters_on_the_new_values() {
        let mut m = matcher(&subscription(
            "posted-only",
            "object = \"invoice\"\nwhen = \"values.state != 'draft'\"",
        ));
        let table = full();
        assert!(route(&mut m, &created(&table, row(&[("state", "draft")]))).is_empty());
        assert_eq!(route(&mut m, &created(&table, row(&[]))).len(), 1);
    }

    #[test]
    fn when_can_ask_whether_a_field_changed() {
        let mut m = matcher(&subscription(
            "partner-moves",
            "object = \"invoice\"\nwhen = \"previous.partner_id is defined\"",
        ));
        let table = full();
        let moved = updated(&table, row(&[]), row(&[("partner_id", "2")]));
        assert_eq!(route(&mut m, &moved).len(), 1);
        let paid = updated(&table, row(&[]), row(&[("state", "paid")]));
        assert!(route(&mut m, &paid).is_empty());
        // A create has no previous: the filter is simply false, not an error.
        assert!(route(&mut m, &created(&table, row(&[]))).is_empty());
    }

    #[test]
    fn when_can_single_out_deletes() {
        let mut m = matcher(&subscription(
            "removals",
            "object = \"invoice\"\nwhen = \"operation == 'delete'\"",
        ));
        let table = full();
        assert!(route(&mut m, &created(&table, row(&[]))).is_empty());
        let events = route(&mut m, &deleted(&table, row(&[])));
        assert_eq!(events.len(), 1);
        let body = body(&events[0]);
        assert_eq!(body["type"], "invoice.deleted");
        assert_eq!(body["values"], serde_json::Value::Null);
        assert_eq!(body["previous"]["state"], "posted");
    }

    #[test]
    fn a_when_syntax_error_is_refused_at_start_naming_every_bad_subscription() {
        let config = config(
            &[
                subscription(
                    "partner-sync",
                    "object = \"invoice\"\nwhen = \"values.state ==\"",
                ),
                subscription(
                    "fine",
                    "object = \"invoice\"\nwhen = \"values.state == 'x'\"",
                ),
                subscription(
                    "paused",
                    "object = \"invoice\"\nactive = false\nwhen = \"value.state == 'x'\"",
                ),
            ]
            .concat(),
        );
        let error = Matcher::new(&config).unwrap_err();
        assert_eq!(
            error.problems,
            [
                "walhook.toml:26: subscriptions[0].when: syntax error: unexpected end of input, \
                 expected expression",
                "walhook.toml:39: subscriptions[2].when: \"value\" is not a variable an expression can read \
                 (values, previous, operation); did you mean \"values\"?",
            ]
        );
        assert_eq!(error.to_string(), error.problems.join("\n"));
    }

    #[test]
    fn a_when_naming_a_field_the_object_does_not_show_is_refused_at_start() {
        let config = config(&subscription(
            "typo",
            "object = \"invoice\"\nwhen = \"values.stat != 'draft'\"",
        ));
        let error = Matcher::new(&config).unwrap_err();
        assert_eq!(
            error.to_string(),
            "walhook.toml:26: subscriptions[0].when: reads values.stat, but \"stat\" is not a field of object \
             \"invoice\"; did you mean \"state\"?"
        );
    }

    #[test]
    fn a_when_that_fails_at_runtime_is_reported_and_does_not_fire() {
        let mut m = matcher(
            &[
                subscription(
                    "broken",
                    "object = \"invoice\"\nwhen = \"values.number + 1 > 0\"",
                ),
                subscription("fine", "object = \"invoice\""),
            ]
            .concat(),
        );
        let (events, problems) = m.route(&created(&full(), row(&[])), COMMIT);
        assert_eq!(events.len(), 1);
        assert_eq!(names(&events[0]), ["fine"]);
        assert_eq!(
            problems,
            [RouteProblem {
                subscription: "broken".into(),
                table: "public.account_invoice".into(),
                key: r#"{"id":123}"#.into(),
                message: "when: invalid operation: tried to use + operator on unsupported \
                          types string and number"
                    .into(),
            }]
        );
    }

    #[test]
    fn when_reading_previous_on_a_table_without_old_values_is_reported() {
        let mut m = matcher(&subscription(
            "partner-moves",
            "object = \"invoice\"\nwhen = \"previous.partner_id is defined\"",
        ));
        let table = default_identity();
        let (events, problems) = m.route(
            &updated(&table, row(&[]), row(&[("partner_id", "2")])),
            COMMIT,
        );
        assert_only_dead(&events);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.starts_with("when reads previous"),
            "{}",
            problems[0]
        );
        // A create has no previous under any identity: nothing to report.
        assert!(route(&mut m, &created(&table, row(&[]))).is_empty());
    }

    #[test]
    fn a_when_reading_a_toasted_value_the_wal_did_not_carry_does_not_fire_and_says_why() {
        // The clerk edits the state of an invoice whose long notes stay as they were: under
        // REPLICA IDENTITY DEFAULT the WAL carries no notes at all. "Has notes" cannot be
        // answered, so the subscription must not fire as if it could.
        let mut m = matcher(
            &[
                subscription(
                    "annotated",
                    "object = \"invoice_with_notes\"\nwhen = \"values.notes != ''\"",
                ),
                subscription(
                    "paid",
                    "object = \"invoice_with_notes\"\nwhen = \"values.state == 'paid'\"",
                ),
            ]
            .concat(),
        );
        let paid = toast_unchanged(row(&[("state", "paid")]), "notes");
        let (events, problems) = m.route(&updated(&default_identity(), row(&[]), paid), COMMIT);
        // A filter that does not read the notes is answered as usual.
        assert_eq!(events.len(), 1);
        assert_eq!(names(&events[0]), ["paid"]);
        assert_eq!(
            problems,
            [RouteProblem {
                subscription: "annotated".into(),
                table: "public.account_invoice".into(),
                key: r#"{"id":123}"#.into(),
                message: "when reads values.notes, which the WAL did not carry for this change \
                          (an unchanged TOASTed value, which REPLICA IDENTITY DEFAULT or USING \
                          INDEX does not log); fix: ALTER TABLE public.account_invoice REPLICA \
                          IDENTITY FULL"
                    .into(),
            }]
        );
    }

    #[test]
    fn under_replica_identity_full_an_unchanged_toasted_value_is_known_and_filtered_on() {
        let mut m = matcher(&subscription(
            "annotated",
            "object = \"invoice_with_notes\"\nwhen = \"values.notes != ''\"",
        ));
        let paid = toast_unchanged(row(&[("state", "paid")]), "notes");
        let events = route(&mut m, &updated(&full(), row(&[]), paid));
        assert_eq!(events.len(), 1);
        assert_eq!(
            body(&events[0])["values"]["notes"],
            "Deliver to the loading dock"
        );
        let cleared = toast_unchanged(row(&[("state", "paid")]), "notes");
        let without_notes = row(&[("notes", "")]);
        assert!(route(&mut m, &updated(&full(), without_notes, cleared)).is_empty());
    }

    #[test]
    fn a_when_reading_values_by_subscript_does_not_fire_on_an_unknown_value() {
        // `values['notes']` names no field minijinja can point to before it runs, so any
        // value the WAL did not carry could be the one it reads.
        let mut m = matcher(&subscription(
            "annotated",
            "object = \"invoice_with_notes\"\nwhen = \"values['notes'] != ''\"",
        ));
        let table = default_identity();
        let paid = toast_unchanged(row(&[("state", "paid")]), "notes");
        let (events, problems) = m.route(&updated(&table, row(&[]), paid), COMMIT);
        assert_only_dead(&events);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.starts_with(
                "when reads values by subscript or as a whole, and the WAL did not carry \
                 values.notes for this change (an unchanged TOASTed value"
            ),
            "{}",
            problems[0]
        );
        // When every value is there, the subscript is answered as usual.
        let with_notes = row(&[("state", "paid")]);
        assert_eq!(
            route(&mut m, &updated(&table, row(&[]), with_notes)).len(),
            1
        );
    }

    #[test]
    fn a_delete_whose_key_the_wal_did_not_carry_fires_nothing_and_says_why() {
        // The invoice object is keyed on its number, but under REPLICA IDENTITY DEFAULT a
        // delete carries only the primary key: an event with `key: {}` would not say which
        // invoice is gone.
        let mut m = matcher(
            &[
                subscription("by-number", "object = \"invoice_by_number\""),
                subscription("by-id", "object = \"invoice\""),
            ]
            .concat(),
        );
        let (events, problems) = m.route(&deleted(&default_identity(), row(&[])), COMMIT);
        // The object keyed on the identity still gets its event.
        assert_eq!(events.len(), 1);
        assert_eq!(names(&events[0]), ["by-id"]);
        assert_eq!(events[0].key, r#"{"id":123}"#);
        assert_eq!(
            problems,
            [RouteProblem {
                subscription: "by-number".into(),
                table: "public.account_invoice".into(),
                // Logged under what the WAL did carry, so the row can still be found.
                key: r#"{"id":123}"#.into(),
                message: "the WAL did not carry key \"number\" of object invoice_by_number for \
                          this delete (REPLICA IDENTITY DEFAULT or USING INDEX logs only the \
                          replica identity (\"id\") of a deleted row), so the event could not \
                          say which row it is about; fix: ALTER TABLE public.account_invoice \
                          REPLICA IDENTITY FULL, or make the key the replica identity"
                    .into(),
            }]
        );
    }

    #[test]
    fn a_key_outside_the_replica_identity_is_known_on_create_and_update_and_under_full() {
        let mut m = matcher(&subscription("by-number", "object = \"invoice_by_number\""));
        let table = default_identity();
        let events = route(&mut m, &created(&table, row(&[])));
        assert_eq!(events[0].key, r#"{"number":"INV-42"}"#);
        let paid = updated(&table, row(&[]), row(&[("state", "paid")]));
        assert_eq!(route(&mut m, &paid)[0].key, r#"{"number":"INV-42"}"#);
        let events = route(&mut m, &deleted(&full(), row(&[])));
        assert_eq!(events[0].key, r#"{"number":"INV-42"}"#);
        assert_eq!(body(&events[0])["key"], json!({"number": "INV-42"}));
    }

    #[test]
    fn values_carry_only_the_objects_fields() {
        let mut m = matcher(&subscription("invoices", "object = \"invoice\""));
        let events = route(&mut m, &created(&full(), row(&[])));
        assert_eq!(
            body(&events[0])["values"],
            json!({"number": "INV-42", "partner_id": 1, "state": "posted", "amount_total": "120.00"})
        );
    }

    #[test]
    fn a_custom_event_type_names_the_event() {
        let mut m = matcher(&subscription(
            "partner-sync",
            "object = \"invoice\"\nevent_type = \"invoice.partner-changed\"",
        ));
        let events = route(&mut m, &created(&full(), row(&[])));
        assert_eq!(events[0].event_type, "invoice.partner-changed");
        assert_eq!(body(&events[0])["type"], "invoice.partner-changed");
    }

    #[test]
    fn two_objects_on_one_table_get_two_events_with_one_id() {
        let mut m = matcher(
            &[
                subscription("accounting", "object = \"invoice\""),
                subscription("status-board", "object = \"invoice_state\""),
            ]
            .concat(),
        );
        let change = updated(&full(), row(&[]), row(&[("state", "paid")]));
        let events = route(&mut m, &change);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_id, events[1].event_id);
        assert_eq!(
            (events[0].object.as_str(), events[1].object.as_str()),
            ("invoice", "invoice_state")
        );
        assert_eq!(body(&events[1])["values"], json!({"state": "paid"}));
        assert_eq!(events[0].key, events[1].key);
    }

    #[test]
    fn two_subscriptions_of_one_object_share_one_event() {
        let mut m = matcher(
            &[
                subscription("accounting", "object = \"invoice\""),
                subscription("partner-sync", "object = \"invoice\""),
                subscription(
                    "renamed",
                    "object = \"invoice\"\nevent_type = \"invoice.touched\"",
                ),
            ]
            .concat(),
        );
        let events = route(&mut m, &created(&full(), row(&[])));
        assert_eq!(
            events.len(),
            2,
            "a different event type is a different body"
        );
        assert_eq!(names(&events[0]), ["accounting", "partner-sync"]);
        assert_eq!(names(&events[1]), ["renamed"]);
        assert_eq!(events[0].event_id, events[1].event_id);
    }

    /// The invoice table under another schema and name, same OID.
    fn named(schema: &str, name: &str) -> Relation {
        let mut relation = (*full()).clone();
        relation.schema = schema.into();
        relation.name = name.into();
        relation
    }

    #[test]
    fn a_bound_table_is_found_by_oid_after_a_rename_and_its_old_name_is_not_reused() {
        let mut m = matcher(&subscription("invoices", "object = \"invoice\""));
        let configured: TableName = "public.account_invoice".parse().unwrap();
        assert_eq!(m.unbound(), std::slice::from_ref(&configured));
        m.bind(&configured, full().oid);
        assert!(m.unbound().is_empty());
        let renamed = Arc::new(named("archive", "invoice_v2"));
        assert_eq!(
            m.configured_name(&renamed),
            Some(("public", "account_invoice"))
        );
        assert_eq!(route(&mut m, &created(&renamed, row(&[]))).len(), 1);
        let mut impostor = named("public", "account_invoice");
        impostor.oid += 1;
        assert!(!m.watches(&impostor));
    }

    #[test]
    fn a_rename_is_noticed_once_and_so_is_the_rename_back() {
        let mut m = matcher(&subscription("invoices", "object = \"invoice\""));
        let configured: TableName = "public.account_invoice".parse().unwrap();
        m.bind(&configured, full().oid);
        assert_eq!(m.notice_name(&full()), None);
        let renamed = named("public", "invoice_v2");
        assert_eq!(
            m.notice_name(&renamed),
            Some(NameChange::Renamed {
                configured: configured.clone(),
                now: "public.invoice_v2".into()
            })
        );
        assert_eq!(m.notice_name(&renamed), None);
        let mut reloaded = matcher(&subscription("invoices", "object = \"invoice\""));
        reloaded.carry_over(&m);
        assert_eq!(reloaded.notice_name(&renamed), None);
        assert_eq!(
            reloaded.notice_name(&full()),
            Some(NameChange::Restored { configured })
        );
    }

    #[test]
    fn an_inactive_subscription_never_fires() {
        let mut m = matcher(&subscription(
            "paused",
            "object = \"invoice\"\nactive = false",
        ));
        assert!(!m.watches(&named("public", "account_invoice")));
        assert!(route(&mut m, &created(&full(), row(&[]))).is_empty());
    }

    #[test]
    fn a_table_no_subscription_watches_routes_nothing() {
        let mut m = matcher(&subscription("invoices", "object = \"invoice\""));
        assert!(m.watches(&named("public", "account_invoice")));
        assert!(!m.watches(&named("public", "res_partner")));
        assert!(!m.watches(&named("erp", "account_invoice")));
        let mut partner = (*full()).clone();
        partner.name = "res_partner".into();
        let change = created(&Arc::new(partner), row(&[]));
        assert_eq!(m.route(&change, COMMIT), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_configured_column_the_table_lacks_is_reported_until_the_table_has_it() {
        let mut m = matcher(
            &[
                subscription("accounting", "object = \"invoice\""),
                subscription("status-board", "object = \"invoice_state\""),
            ]
            .concat(),
        );
        let before = invoice_table(Identity::Full, &["amount_total"]);
        let mut new = row(&[]);
        new.0.remove(4);
        let (events, problems) = m.route(&created(&before, new), COMMIT);
        // The other object on the table does not suffer for it.
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].object, "invoice_state");
        assert_eq!(problems.len(), 1);
        assert_eq!(&*problems[0].subscription, "accounting");
        assert_eq!(
            problems[0].message,
            "object invoice: table public.account_invoice has no column \"amount_total\""
        );

        // ALTER TABLE … ADD COLUMN: pgoutput describes the table again.
        let after = full();
        assert_eq!(route(&mut m, &created(&after, row(&[]))).len(), 2);
    }

    #[test]
    fn a_watched_or_filtered_column_the_table_lacks_is_reported() {
        let mut m = matcher(
            &[
                subscription(
                    "watcher",
                    "table = \"public.account_invoice\"\nwatch = [\"partner\"]",
                ),
                subscription(
                    "filter",
                    "table = \"public.account_invoice\"\nwhen = \"values.stat == 'x'\"",
                ),
            ]
            .concat(),
        );
        let change = updated(&full(), row(&[]), row(&[("partner_id", "2")]));
        let (events, problems) = m.route(&change, COMMIT);
        assert_only_dead(&events);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "watch: table public.account_invoice has no column \"partner\"; did you mean \
                 \"partner_id\"?",
                "when reads values.stat, but table public.account_invoice has no column \
                 \"stat\"; did you mean \"state\"?",
            ]
        );
    }

    #[test]
    fn the_fix_for_missing_old_values_can_be_pasted_as_it_is() {
        let mut mixed_case = (*default_identity()).clone();
        mixed_case.schema = "ERP".into();
        mixed_case.name = "Invoice".into();
        assert!(old_values_unknown(&mixed_case)
            .ends_with("fix: ALTER TABLE \"ERP\".\"Invoice\" REPLICA IDENTITY FULL"));
    }

    #[test]
    fn the_key_is_the_envelopes_key_as_minified_json() {
        let mut m = matcher(&subscription("invoices", "object = \"invoice\""));
        let events = route(&mut m, &created(&full(), row(&[("id", "7")])));
        assert_eq!(events[0].key, r#"{"id":7}"#);
        assert_eq!(events[0].key, body(&events[0])["key"].to_string());
    }

    #[test]
    fn a_filter_sees_exactly_the_values_and_previous_the_event_carries() {
        let (full, default) = (full(), default_identity());
        let changes = [
            created(&full, row(&[])),
            updated(&full, row(&[]), row(&[("partner_id", "2")])),
            updated(&full, row(&[]), row(&[("write_date", "x")])),
            updated(&default, row(&[]), row(&[("partner_id", "2")])),
            deleted(&full, row(&[])),
            deleted(&default, row(&[])),
        ];
        for change in changes {
            let view = ObjectView::resolve(
                "invoice",
                &change.relation,
                None,
                Some(&["id".into(), "partner_id".into(), "state".into()]),
            )
            .unwrap();
            let event: serde_json::Value =
                serde_json::from_slice(&envelope(&change, &view, "t", COMMIT)).unwrap();
            let scope = serde_json::to_value(when::scope(&change, &view)).unwrap();
            for part in ["values", "previous"] {
                assert_eq!(
                    scope.get(part),
                    event.get(part),
                    "{part} of {:?} under {:?}",
                    change.operation,
                    change.relation.identity
                );
            }
            assert_eq!(scope["operation"], event["operation"]);
        }
    }

    #[test]
    fn old_values_are_needed_by_watch_and_by_when_reading_previous() {
        let config = config(
            &[
                subscription("partner-sync", "object = \"invoice\"\nwatch = [\"state\"]"),
                subscription(
                    "moves",
                    "object = \"invoice\"\nwhen = \"previous.state == 'draft'\"",
                ),
                subscription("posted", "object = \"invoice\"\nwhen = \"values.state == 'posted'\""),
                subscription(
                    "created-only",
                    "object = \"invoice\"\noperations = [\"create\"]\nwhen = \"previous is defined\"",
                ),
                subscription(
                    "paused",
                    "object = \"invoice\"\nwatch = [\"state\"]\nactive = false",
                ),
            ]
            .concat(),
        );
        let table: TableName = "public.account_invoice".parse().unwrap();
        assert_eq!(
            needs_old_values(&config),
            [
                (table.clone(), "partner-sync".to_owned(), "watch"),
                (table, "moves".to_owned(), "when reads previous"),
            ]
        );
    }
}

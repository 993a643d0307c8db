//! `walhook check`: preflight against the source database, changing nothing.
//!
//! One line per finding, each problem with the exact fix. A slot or publication that does
//! not exist yet is a note ("will be created"), not a problem: `run` creates them.

use std::fmt;
use std::time::Duration;

use crate::capture::matcher::needs_old_values;
use crate::config::{format_size, table_list, Config, Operation, TableName};
use crate::delivery::network::{check_url, NetworkPolicy, PolicyError, PolicyResolver};
use crate::pg;
use crate::pg::conninfo::ConnInfo;
use crate::pg::{quote_ident, quote_literal, quote_table};
use crate::source::privileges::{self, Missing, Role};
use crate::source::replication::ReplicationConnection;
use crate::source::watermark;
use crate::suggest::did_you_mean;

use super::tail::TAIL_PREFIX;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// Worth knowing, nothing to fix.
    Note,
    /// Must be fixed before walhook can work as configured.
    Problem,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// The exact fix (SQL or config), for problems.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok     ",
            Level::Note => "note   ",
            Level::Problem => "PROBLEM",
        };
        write!(f, "{tag} {}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Everything `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Findings in the order they were made.
    pub findings: Vec<Finding>,
}

impl Report {
    /// How many findings are problems.
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Problem)
            .count()
    }

    fn push(&mut self, level: Level, message: impl Into<String>, fix: Option<String>) {
        let finding = Finding {
            level,
            message: message.into(),
            fix,
        };
        println!("{finding}");
        self.findings.push(finding);
    }

    fn ok(&mut self, message: impl Into<String>) {
        self.push(Level::Ok, message, None);
    }

    fn note(&mut self, message: impl Into<String>) {
        self.push(Level::Note, message, None);
    }

    fn problem(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Problem, message, Some(fix.into()));
    }

    fn missing(&mut self, missing: Missing) {
        self.problem(missing.problem, missing.fix);
    }
}

/// Runs every check, printing each finding as it is made.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    check(config, &mut report).await;
    let problems = report.problems();
    println!(
        "{}",
        match problems {
            0 => "check: everything walhook needs is in place".to_owned(),
            1 => "check: 1 problem".to_owned(),
            n => format!("check: {n} problems"),
        }
    );
    report
}

async fn check(config: &Config, report: &mut Report) {
    report.ok(format!(
        "config is valid: {} object(s), {} subscription(s)",
        config.objects.len(),
        config.subscriptions.len()
    ));
    if let Err(error) = crate::capture::matcher::Matcher::new(config) {
        for problem in error.problems {
            report.problem(problem, "correct the expression or template named there");
        }
    }
    check_subscriber_urls(config, report).await;
    let info = &config.source.conninfo;
    let target = info.redacted();
    let client = match pg::connect_sql(info).await {
        Ok(client) => client,
        Err(e) => {
            report.problem(
                format!("cannot connect to {target}: {e}"),
                "check host, port, user and password in source.url (or WALHOOK_SOURCE_URL), \
                 and that pg_hba.conf lets this client in",
            );
            return;
        }
    };
    let sql = Sql(&client);
    let version = sql.one("SHOW server_version").await.unwrap_or_default();
    report.ok(format!("source reachable: {target} (PostgreSQL {version})"));
    let version_num: u32 = sql
        .one("SHOW server_version_num")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version_num < 120_000 {
        report.problem(
            format!("PostgreSQL {version} is too old"),
            "walhook needs PostgreSQL 12 or newer",
        );
    }
    if let Some((problem, fix)) = backfill_version_problem(config, version_num, &version) {
        report.problem(problem, fix);
    }

    check_wal_level(&sql, report).await;
    check_role(&sql, report).await;
    check_replication_connection(info, &target, report).await;
    check_capacity(&sql, config, report).await;
    check_tables(&sql, config, report).await;
    check_documents(&sql, config, report).await;
    check_publication(&sql, config, report).await;
    check_slot(&sql, config, report).await;
    check_leftover_tail_slots(&sql, report).await;
    check_encoding(&sql, report).await;
    check_privileges(&sql, config, report).await;
}

/// Every subscriber URL against the network policy (SPEC §6). A refused address is a
/// problem; a name that does not resolve from here is only a note, because delivery resolves
/// again at every connection and DNS may differ where walhook runs.
async fn check_subscriber_urls(config: &Config, report: &mut Report) {
    let policy = || NetworkPolicy::new(&config.delivery.allow_networks);
    let resolver = PolicyResolver::new(policy());
    for subscription in &config.subscriptions {
        let place = format!("subscriptions.{}.url", subscription.name);
        // A URL template is checked with every {{ … }} as `1`; a templated host can only be
        // checked per event, which delivery does at every connection.
        let example;
        let url = if subscription.url_template {
            match crate::config::url_template_example(subscription.url.expose()) {
                Ok(Some(url)) => {
                    example = url;
                    example.as_str()
                }
                _ => {
                    report.note(format!(
                        "{place}: the host is rendered per event (checked at every delivery)"
                    ));
                    continue;
                }
            }
        } else {
            subscription.url.expose()
        };
        if let Err(e) = check_url(url, &policy()) {
            report.problem(
                format!("{place} ({}): {e}", subscription.url),
                policy_fix(&e),
            );
            continue;
        }
        let Some(host) = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
        else {
            continue;
        };
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            report.ok(format!("{place}: {host} is allowed"));
            continue;
        }
        let resolved =
            tokio::time::timeout(Duration::from_secs(3), resolver.resolve_host(&host)).await;
        match resolved {
            Ok(Ok(_)) => report.ok(format!("{place}: {host} resolves to allowed addresses")),
            Ok(Err(e @ PolicyError::Refused { .. })) => {
                report.problem(format!("{place}: {e}"), policy_fix(&e))
            }
            Ok(Err(e)) => report.note(format!("{place}: {e} (checked again at every delivery)")),
            Err(_) => report.note(format!(
                "{place}: resolving {host} took over 3 s (checked again at every delivery)"
            )),
        }
    }
}

fn policy_fix(error: &PolicyError) -> String {
    match error {
        PolicyError::Refused { rule, .. } if rule.always_refused() => {
            "point the subscription at another address; this one is never allowed".into()
        }
        PolicyError::Refused { .. } => {
            "add the host or its network to delivery.allow_networks, if it is meant to be reached"
                .into()
        }
        _ => "correct the URL (http or https with a host)".into(),
    }
}

/// Small query helpers that turn every value into text, which is all check needs.
struct Sql<'a>(&'a tokio_postgres::Client);

impl Sql<'_> {
    async fn rows(&self, query: &str) -> Vec<Vec<Option<String>>> {
        match self.0.simple_query(query).await {
            Ok(messages) => messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("check query failed: {e}");
                Vec::new()
            }
        }
    }

    async fn one(&self, query: &str) -> Option<String> {
        self.rows(query)
            .await
            .into_iter()
            .next()?
            .into_iter()
            .next()?
    }
}

async fn check_wal_level(sql: &Sql<'_>, report: &mut Report) {
    match sql.one("SHOW wal_level").await.as_deref() {
        Some("logical") => report.ok("wal_level = logical"),
        Some(other) => report.problem(
            format!("wal_level is {other}, logical replication needs logical"),
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL \
             (on a managed service, enable logical replication in its parameter settings)",
        ),
        None => report.problem("could not read wal_level", "check the role's privileges"),
    }
}

async fn check_role(sql: &Sql<'_>, report: &mut Report) {
    let role = match Role::current(sql.0).await {
        Ok(role) => role,
        Err(e) => {
            tracing::debug!("check query failed: {e}");
            report.problem(
                "could not read the role's attributes",
                "check pg_roles access",
            );
            return;
        }
    };
    match role.replication("start replication") {
        None => report.ok(format!(
            "role {:?} may replicate{}",
            role.name,
            if role.superuser { " (superuser)" } else { "" }
        )),
        Some(missing) => report.missing(missing),
    }
    if let Some(missing) = role.create_in_database("the walhook schema and publication") {
        report.missing(missing);
    }
}

async fn check_replication_connection(info: &ConnInfo, target: &str, report: &mut Report) {
    let result = async {
        let mut connection = ReplicationConnection::connect(info).await?;
        connection.identify_system().await
    }
    .await;
    match result {
        Ok(system) => report.ok(format!(
            "replication connection works (timeline {}, WAL at {})",
            system.timeline, system.xlogpos
        )),
        Err(e) => report.problem(
            format!("replication connection to {target} fails: {e}"),
            "allow it in pg_hba.conf (a line for this database and user; \"replication\" \
             lines do not apply to logical replication) and grant REPLICATION to the role",
        ),
    }
}

async fn check_capacity(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    let rows = sql
        .rows(&format!(
            "SELECT current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {}), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_replication)",
            quote_literal(&config.source.slot)
        ))
        .await;
    let Some(row) = rows.first() else { return };
    let num = |i: usize| -> i64 { row[i].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0) };
    let (max_slots, used_slots, slot_exists) = (num(0), num(1), row[2].as_deref() == Some("t"));
    let (max_senders, used_senders) = (num(3), num(4));
    if slot_exists || used_slots < max_slots {
        report.ok(format!(
            "replication slots: {used_slots} of {max_slots} in use"
        ));
    } else {
        report.problem(
            format!("no free replication slot: {used_slots} of {max_slots} in use"),
            format!(
                "ALTER SYSTEM SET max_replication_slots = {}; then restart PostgreSQL \
                 (or drop an unused slot)",
                max_slots + 4
            ),
        );
    }
    if used_senders < max_senders {
        report.ok(format!(
            "WAL senders: {used_senders} of {max_senders} in use"
        ));
    } else {
        report.problem(
            format!("no free WAL sender: {used_senders} of {max_senders} in use"),
            format!(
                "ALTER SYSTEM SET max_wal_senders = {}; then restart PostgreSQL",
                max_senders + 4
            ),
        );
    }
}

/// What the catalog says about one configured table.
struct TableFacts {
    columns: Vec<String>,
    primary_key: Vec<String>,
    /// Columns of the index named by REPLICA IDENTITY USING INDEX, if any.
    identity_index: Vec<String>,
    identity: char,
}

impl TableFacts {
    /// The columns a deleted row's old tuple carries under DEFAULT or USING INDEX.
    fn identity_columns(&self) -> &[String] {
        match self.identity {
            'd' => &self.primary_key,
            'i' => &self.identity_index,
            _ => &[],
        }
    }
}

async fn table_facts(sql: &Sql<'_>, table: &TableName) -> Option<TableFacts> {
    let rows = sql
        .rows(&format!(
            "SELECT c.relreplident, \
                    (SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_attribute a \
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
                    (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM pg_index i \
                      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE i.indrelid = c.oid AND i.indisprimary), \
                    (SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_index i \
                      JOIN pg_attribute a \
                        ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                      WHERE i.indrelid = c.oid AND i.indisreplident) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
            quote_literal(&table.schema),
            quote_literal(&table.name)
        ))
        .await;
    let row = rows.into_iter().next()?;
    let split = |v: &Option<String>| -> Vec<String> {
        v.as_deref()
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    Some(TableFacts {
        identity: row[0]
            .as_deref()
            .and_then(|s| s.chars().next())
            .unwrap_or('d'),
        columns: split(&row[1]),
        primary_key: split(&row[2]),
        identity_index: split(&row[3]),
    })
}

async fn check_tables(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    let all_tables: Vec<String> = sql
        .rows(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .await
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    for table in config.tables() {
        let Some(facts) = table_facts(sql, &table).await else {
            report.problem(
                format!(
                    "table {table} does not exist{}",
                    did_you_mean(&table.to_string(), all_tables.iter().map(String::as_str))
                ),
                "correct the table name in the config, or create the table",
            );
            continue;
        };
        let needs_full: Vec<String> = needs_old_values(config)
            .into_iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, subscription, why)| format!("subscriptions.{subscription} ({why})"))
            .collect();
        check_columns(config, &table, &facts, report);
        match crate::source::columns::table_columns(sql.0, &table).await {
            Ok(Some(columns)) => {
                for problem in
                    crate::capture::matcher::when_column_problems(config, &table, &columns)
                {
                    report.problem(problem, "correct the column in the when expression");
                }
                for problem in crate::capture::render::synthetic_problems(config, &table, &columns)
                {
                    report.problem(problem, "correct the template");
                }
            }
            Ok(None) => {}
            Err(e) => report.problem(e.to_string(), "check the role's privileges"),
        }
        check_delete_keys(config, &table, &facts, report);
        check_backfill_keys(sql, config, &table, &facts, report).await;
        match (facts.identity, facts.primary_key.is_empty()) {
            ('f', _) => report.ok(format!("table {table}: REPLICA IDENTITY FULL")),
            ('d' | 'i', false) | ('i', true) if needs_full.is_empty() => {
                let identity = if facts.identity == 'i' {
                    "USING INDEX"
                } else {
                    "DEFAULT"
                };
                let kept = state_kept_by(config, &table);
                if kept.is_empty() {
                    report.ok(format!(
                        "table {table}: replica identity {identity} (events carry old values \
                         of the key only)"
                    ));
                } else {
                    report.ok(format!(
                        "table {table}: replica identity {identity} is enough: {} (old values \
                         come from walhook's state)",
                        kept.join(", ")
                    ));
                }
            }
            ('d' | 'i', false) | ('i', true) => {
                report.problem(
                    format!(
                    "table {table}: {} need old values, but REPLICA IDENTITY {} logs only the key",
                    needs_full.join(", "),
                    if facts.identity == 'i' { "USING INDEX" } else { "DEFAULT" }
                ),
                    format!("ALTER TABLE {} REPLICA IDENTITY FULL;", quote_table(&table)),
                )
            }
            (identity, _) => report.problem(
                format!(
                    "table {table} has {}: once it is in a publication, UPDATE and DELETE \
                     on it fail on the source",
                    if identity == 'n' {
                        "REPLICA IDENTITY NOTHING".to_owned()
                    } else {
                        "no primary key and REPLICA IDENTITY DEFAULT".to_owned()
                    }
                ),
                format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key)",
                    quote_table(&table)
                ),
            ),
        }
    }
}

fn check_columns(config: &Config, table: &TableName, facts: &TableFacts, report: &mut Report) {
    // (where in the config, the column named there)
    let mut named: Vec<(String, &String)> = Vec::new();
    for (name, object) in config.objects.iter().filter(|(_, o)| &o.table == table) {
        for (what, list) in [("key", &object.key), ("fields", &object.fields)] {
            named.extend(
                list.iter()
                    .flatten()
                    .map(|c| (format!("objects.{name}.{what}"), c)),
            );
        }
        if object.key.is_none() && facts.primary_key.is_empty() {
            report.problem(
                format!("objects.{name}: table {table} has no primary key to use as the key"),
                format!("set objects.{name}.key = [\"…\"] to the columns that identify a row"),
            );
        }
    }
    for subscription in config
        .subscriptions
        .iter()
        .filter(|s| &s.object.config.table == table)
    {
        let place = |what: &str| format!("subscriptions.{}.{what}", subscription.name);
        // A document's watch may name its collections, which are no columns.
        let children = &subscription.object.config.children;
        named.extend(
            subscription
                .watch
                .iter()
                .flatten()
                .filter(|c| !children.iter().any(|child| child.name == **c))
                .map(|c| (place("watch"), c)),
        );
        if subscription.object.unnamed {
            let object = &subscription.object.config;
            named.extend(object.key.iter().flatten().map(|c| (place("key"), c)));
            named.extend(object.fields.iter().flatten().map(|c| (place("fields"), c)));
        }
    }
    for (place, column) in named {
        if !facts.columns.contains(column) {
            report.problem(
                format!(
                    "{place}: table {table} has no column {column:?}{}",
                    did_you_mean(column, facts.columns.iter().map(String::as_str))
                ),
                format!("correct {place} in the config"),
            );
        }
    }
}

/// Under DEFAULT or USING INDEX a delete carries only the replica identity columns: an
/// object keyed on anything else would get delete events that cannot say which row is gone,
/// so walhook sends none and `check` says so first.
fn check_delete_keys(config: &Config, table: &TableName, facts: &TableFacts, report: &mut Report) {
    let identity = facts.identity_columns();
    if identity.is_empty() {
        // FULL carries every column; NOTHING, or DEFAULT without a primary key, is
        // reported by check_tables already.
        return;
    }
    // (where the key comes from, its columns, subscriptions that fire on delete)
    let mut objects: Vec<(String, &[String], Vec<String>)> = Vec::new();
    // An object that keeps state needs the key of every deleted row, whatever its
    // subscriptions fire on: `check_state_key` says so once for the object.
    for subscription in config.subscriptions.iter().filter(|s| {
        s.active
            && &s.object.config.table == table
            && s.fires_on(Operation::Delete)
            && !s.object.config.keeps_state()
    }) {
        let object = &subscription.object;
        let (place, key) = match &object.config.key {
            Some(key) if object.unnamed => (
                format!("subscriptions.{}.key", subscription.name),
                key.as_slice(),
            ),
            Some(key) => (format!("objects.{}.key", object.config_key), key.as_slice()),
            None => ("the primary key".to_owned(), facts.primary_key.as_slice()),
        };
        if key.is_empty() || key.iter().all(|c| identity.contains(c)) {
            continue;
        }
        let name = format!("subscriptions.{}", subscription.name);
        match objects
            .iter_mut()
            .find(|(p, k, _)| *p == place && *k == key)
        {
            Some((_, _, subscriptions)) => subscriptions.push(name),
            None => objects.push((place, key, vec![name])),
        }
    }
    let identity_name = if facts.identity == 'i' {
        "USING INDEX"
    } else {
        "DEFAULT"
    };
    for (place, key, subscriptions) in objects {
        report.problem(
            format!(
                "table {table}: {} fire on delete, but the key ({place}: {}) is not the \
                 replica identity; REPLICA IDENTITY {identity_name} logs only {} of a deleted \
                 row, so walhook could not say which row was deleted and sends no event",
                subscriptions.join(", "),
                key.join(", "),
                identity.join(", "),
            ),
            format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL; (or make the key the replica identity)",
                quote_table(table)
            ),
        );
    }
}

/// What keeps the state of `table`, for its REPLICA IDENTITY line: the objects whose header
/// it is and that keep state, and the documents it is a collection of.
fn state_kept_by(config: &Config, table: &TableName) -> Vec<String> {
    let mut kept = Vec::new();
    for (name, object) in &config.objects {
        if object.keeps_state() && &object.table == table {
            kept.push(format!("objects.{name} keeps its state"));
        }
        for (i, child) in object.children.iter().enumerate() {
            if &child.table == table {
                kept.push(format!(
                    "objects.{name}.children[{i}] ({}) is a collection of a document, which \
                     keeps its state",
                    child.name
                ));
            }
        }
    }
    kept
}

/// Each column of `table` with its type as `format_type` writes it (`numeric(12,2)`).
async fn column_types(sql: &Sql<'_>, table: &TableName) -> Vec<(String, String)> {
    sql.rows(&format!(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
        quote_literal(&table.schema),
        quote_literal(&table.name)
    ))
    .await
    .into_iter()
    .filter_map(|row| Some((row[0].clone()?, row[1].clone()?)))
    .collect()
}

/// Documents and `keep_state` objects (SPEC §3a): each collection's columns against its
/// table and its header's key, and every state key against what the WAL names a deleted
/// row by. A missing table is reported by `check_tables` and skipped here.
async fn check_documents(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    for (name, object) in config.objects.iter().filter(|(_, o)| o.keeps_state()) {
        let Some(header) = table_facts(sql, &object.table).await else {
            continue;
        };
        let header_key: &[String] = object.key.as_deref().unwrap_or(&header.primary_key);
        let header_types = column_types(sql, &object.table).await;
        check_state_key(
            &format!("objects.{name}"),
            &key_place(&format!("objects.{name}"), object.key.is_some()),
            &object.table,
            header_key,
            &header,
            report,
        );
        for (i, child) in object.children.iter().enumerate() {
            let place = format!("objects.{name}.children[{i}]");
            let Some(facts) = table_facts(sql, &child.table).await else {
                continue;
            };
            let problems = report.problems();
            let table = &child.table;
            for (what, list) in [
                ("parent_key", Some(&child.parent_key)),
                ("key", child.key.as_ref()),
                ("fields", child.fields.as_ref()),
                ("order_by", child.order_by.as_ref()),
            ] {
                for column in list.into_iter().flatten() {
                    if !facts.columns.contains(column) {
                        report.problem(
                            format!(
                                "{place}.{what}: table {table} has no column {column:?}{}",
                                did_you_mean(column, facts.columns.iter().map(String::as_str))
                            ),
                            format!("correct {place}.{what} in the config"),
                        );
                    }
                }
            }
            if !header_key.is_empty() {
                check_parent_key(
                    &place,
                    child,
                    (&object.table, header_key, &header_types),
                    &column_types(sql, table).await,
                    report,
                );
            }
            let key: &[String] = match &child.key {
                Some(key) => key,
                None if facts.primary_key.is_empty() => {
                    report.problem(
                        format!(
                            "{place}: table {table} has no primary key to use as the key of \
                             collection {:?}",
                            child.name
                        ),
                        format!(
                            "set {place}.key = [\"…\"] to the columns that identify a row of \
                             {table}"
                        ),
                    );
                    continue;
                }
                None => &facts.primary_key,
            };
            check_state_key(
                &format!("{place} ({})", child.name),
                &key_place(&place, child.key.is_some()),
                table,
                key,
                &facts,
                report,
            );
            if report.problems() == problems {
                report.ok(format!(
                    "{place} ({}): rows of {table} join objects.{name} by {} = {}, keyed by {}",
                    child.name,
                    child.parent_key.join(", "),
                    header_key.join(", "),
                    key.join(", ")
                ));
            }
        }
    }
}

/// Where a key comes from, for messages: `objects.X.key` when configured, else the table's.
fn key_place(place: &str, configured: bool) -> String {
    if configured {
        format!("{place}.key")
    } else {
        "the primary key".to_owned()
    }
}

/// A collection's `parent_key` against the header key: as many columns, each of the same
/// type as the header key column it matches (values of other types never compare equal in
/// the state, so lines would be held forever).
fn check_parent_key(
    place: &str,
    child: &crate::config::ChildConfig,
    (header_table, header_key, header_types): (&TableName, &[String], &[(String, String)]),
    child_types: &[(String, String)],
    report: &mut Report,
) {
    let at = format!("{place}.parent_key");
    if child.parent_key.len() != header_key.len() {
        report.problem(
            format!(
                "{at} has {} column(s) ({}), but the key of {header_table} has {} ({})",
                child.parent_key.len(),
                child.parent_key.join(", "),
                header_key.len(),
                header_key.join(", ")
            ),
            format!(
                "list in {at} one column of {} for each key column of {header_table}, in key \
                 order",
                child.table
            ),
        );
        return;
    }
    let type_of = |types: &[(String, String)], column: &str| {
        types
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, kind)| kind.clone())
    };
    for (column, key_column) in child.parent_key.iter().zip(header_key) {
        let (Some(child_type), Some(key_type)) = (
            type_of(child_types, column),
            type_of(header_types, key_column),
        ) else {
            // A missing column is reported with its suggestion elsewhere.
            continue;
        };
        if child_type != key_type {
            report.problem(
                format!(
                    "{at}: {}.{column} is {child_type}, but the header key column \
                     {header_table}.{key_column} is {key_type}; a line must hold the header's \
                     key exactly",
                    child.table
                ),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {key_type}; (or name in {at} a column \
                     of type {key_type})",
                    quote_table(&child.table),
                    quote_ident(column)
                ),
            );
        }
    }
}

/// An object that keeps state finds a deleted row's state by its key, so the key must be
/// what the WAL names a deleted row by: the replica identity's columns, or every column
/// under REPLICA IDENTITY FULL.
fn check_state_key(
    what: &str,
    place: &str,
    table: &TableName,
    key: &[String],
    facts: &TableFacts,
    report: &mut Report,
) {
    let identity = facts.identity_columns();
    // FULL carries every column; NOTHING, or DEFAULT without a primary key, is reported by
    // check_tables already.
    if identity.is_empty() || key.is_empty() || key.iter().all(|c| identity.contains(c)) {
        return;
    }
    let identity_name = if facts.identity == 'i' {
        "USING INDEX"
    } else {
        "DEFAULT"
    };
    report.problem(
        format!(
            "table {table}: {what} keeps state by its key ({place}: {}), but REPLICA IDENTITY \
             {identity_name} logs only {} of a deleted row, so walhook could not say which row \
             was deleted",
            key.join(", "),
            identity.join(", ")
        ),
        format!(
            "ALTER TABLE {} REPLICA IDENTITY FULL; (or make the key the replica identity)",
            quote_table(table)
        ),
    );
}

/// Backfills read a table in key order, in chunks after the last key sent: a key that is
/// not unique could skip or repeat rows at a chunk's edge, so every key other than the
/// primary key needs a unique index of exactly its columns, as the daemon's chunk reader
/// requires. An error when a subscription of the object has `backfill = true`, else a
/// warning (a backfill can still be asked for).
async fn check_backfill_keys(
    sql: &Sql<'_>,
    config: &Config,
    table: &TableName,
    facts: &TableFacts,
    report: &mut Report,
) {
    let same_columns = |a: &[String], b: &[String]| {
        let mut a = a.to_vec();
        let mut b = b.to_vec();
        a.sort();
        b.sort();
        a == b
    };
    // (where the key is configured, its columns, whether a subscription backfills it)
    let mut keys: Vec<(String, &[String], bool)> = Vec::new();
    for (name, object) in config.objects.iter().filter(|(_, o)| &o.table == table) {
        if let Some(key) = &object.key {
            let backfill = config
                .subscriptions
                .iter()
                .any(|s| s.backfill && !s.object.unnamed && s.object.config_key == *name);
            keys.push((format!("objects.{name}.key"), key.as_slice(), backfill));
        }
    }
    for sub in config
        .subscriptions
        .iter()
        .filter(|s| s.object.unnamed && &s.object.config.table == table)
    {
        if let Some(key) = &sub.object.config.key {
            let place = format!("subscriptions.{}.key", sub.name);
            keys.push((place, key.as_slice(), sub.backfill));
        }
    }
    keys.retain(|(_, key, _)| !key.is_empty() && !same_columns(key, &facts.primary_key));
    if keys.is_empty() {
        return;
    }
    let unique = unique_indexes(sql, table).await;
    for (place, key, backfill) in keys {
        // The rule of the daemon's chunk reader (`source::chunks`): the same columns.
        if unique.iter().any(|index| same_columns(index, key)) {
            continue;
        }
        let message = format!(
            "{place} {} is not unique on {table}: backfills read in key order and need a \
             unique index",
            serde_json::to_string(key).unwrap_or_default()
        );
        let fix = format!(
            "CREATE UNIQUE INDEX ON {} ({})",
            quote_table(table),
            key.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if backfill {
            report.problem(message, fix);
        } else {
            report.push(
                Level::Note,
                format!("WARNING: {message} (no subscription of it has backfill = true)"),
                Some(fix),
            );
        }
    }
}

/// The key columns (not INCLUDE ones) of each valid unique index of `table` without a
/// predicate or an expression: the indexes `source::chunks` accepts for a backfill key.
async fn unique_indexes(sql: &Sql<'_>, table: &TableName) -> Vec<Vec<String>> {
    sql.rows(&format!(
        "SELECT (SELECT string_agg(a.attname, ',' ORDER BY k.ord) \
                   FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                   WHERE k.ord <= i.indnkeyatts) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {} AND i.indisunique AND i.indisvalid \
           AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT 0 = ANY (i.indkey)",
        quote_literal(&table.schema),
        quote_literal(&table.name)
    ))
    .await
    .into_iter()
    .filter_map(|row| row.into_iter().next().flatten())
    .map(|columns| columns.split(',').map(str::to_owned).collect())
    .collect()
}

/// pgoutput sends the backfill's watermarks (logical decoding messages) only with its
/// `messages` option, which PostgreSQL 14 added.
fn backfill_version_problem(
    config: &Config,
    version_num: u32,
    version: &str,
) -> Option<(String, String)> {
    let backfilling: Vec<String> = config
        .subscriptions
        .iter()
        .filter(|s| s.backfill)
        .map(|s| format!("subscriptions.{}", s.name))
        .collect();
    if version_num == 0 || watermark::carries_watermarks_num(version_num) || backfilling.is_empty()
    {
        return None;
    }
    Some((
        format!(
            "{} {} backfill = true, but the source is PostgreSQL {version}: backfill needs \
             PostgreSQL 14 or later (pgoutput's messages option)",
            backfilling.join(", "),
            if backfilling.len() == 1 {
                "has"
            } else {
                "have"
            }
        ),
        "upgrade the source to PostgreSQL 14 or later, or remove backfill = true".into(),
    ))
}

async fn check_publication(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    let name = &config.source.publication;
    let rows = sql
        .rows(&format!(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate \
             FROM pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await;
    let Some(row) = rows.first() else {
        report.note(format!(
            "publication {name:?} does not exist yet: will be created for {}",
            table_list(&config.tables())
        ));
        return;
    };
    let flag = |i: usize| row[i].as_deref() == Some("t");
    let missing_ops: Vec<&str> = [(1, "insert"), (2, "update"), (3, "delete")]
        .into_iter()
        .filter(|(i, _)| !flag(*i))
        .map(|(_, op)| op)
        .collect();
    if !missing_ops.is_empty() {
        report.problem(
            format!(
                "publication {name:?} does not publish {}",
                missing_ops.join(", ")
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                quote_ident(name)
            ),
        );
    }
    if flag(0) {
        report.ok(format!("publication {name:?} exists (FOR ALL TABLES)"));
        return;
    }
    let published: Vec<TableName> = sql
        .rows(&format!(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = {}",
            quote_literal(name)
        ))
        .await
        .into_iter()
        .map(|r| TableName {
            schema: r[0].clone().unwrap_or_default(),
            name: r[1].clone().unwrap_or_default(),
        })
        .collect();
    let to_add: Vec<TableName> = config
        .tables()
        .into_iter()
        .filter(|t| !published.contains(t))
        .collect();
    if to_add.is_empty() {
        report.ok(format!(
            "publication {name:?} covers every configured table"
        ));
    } else {
        report.note(format!(
            "publication {name:?} exists; {} will be added to it",
            table_list(&to_add)
        ));
    }
}

async fn check_slot(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    let name = &config.source.slot;
    // to_jsonb keeps this working on versions without wal_status (added in 13).
    let rows = sql
        .rows(&format!(
            "SELECT s.plugin, s.slot_type, s.database, s.active, s.active_pid, \
                    to_jsonb(s) ->> 'wal_status', \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
                    current_database(), s.temporary \
             FROM pg_replication_slots s WHERE s.slot_name = {}",
            quote_literal(name)
        ))
        .await;
    let Some(row) = rows.first() else {
        report.note(format!(
            "replication slot {name:?} does not exist yet: will be created by `walhook run`"
        ));
        return;
    };
    let text = |i: usize| row[i].clone().unwrap_or_default();
    if text(1) != "logical" || text(0) != "pgoutput" {
        report.problem(
            format!(
                "replication slot {name:?} exists but is a {} slot with plugin {:?}, not pgoutput",
                text(1),
                text(0)
            ),
            format!(
                "set source.slot to another name, or drop it: SELECT pg_drop_replication_slot({});",
                quote_literal(name)
            ),
        );
        return;
    }
    if text(2) != text(7) {
        report.problem(
            format!(
                "replication slot {name:?} belongs to database {:?}, not {:?}",
                text(2),
                text(7)
            ),
            "set source.slot to a name of its own for this database",
        );
        return;
    }
    if text(5) == "lost" {
        report.problem(
            format!(
                "replication slot {name:?} was invalidated (wal_status lost): the WAL it needed is \
                 gone, so changes since its last position cannot be captured"
            ),
            "walhook setup --recreate-slot (starts from now; the changes in between are lost)",
        );
        return;
    }
    if text(3) == "t" {
        report.note(format!(
            "replication slot {name:?} is in use by process {} (another walhook?)",
            text(4)
        ));
    }
    let retained: u64 = row[6].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = config.source.max_retained_wal;
    if retained > limit {
        report.problem(
            format!(
                "replication slot {name:?} retains {} of WAL, more than source.max_retained_wal = {}",
                format_size(retained),
                format_size(limit)
            ),
            "start walhook so it catches up, or, if it is gone for good, `walhook teardown` \
             (a forgotten slot fills the server's disk)",
        );
    } else {
        report.ok(format!(
            "replication slot {name:?} exists (pgoutput), retaining {} of WAL",
            format_size(retained)
        ));
    }
}

async fn check_leftover_tail_slots(sql: &Sql<'_>, report: &mut Report) {
    let rows = sql
        .rows(&format!(
            "SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots \
             WHERE slot_name LIKE {} AND NOT active AND database = current_database()",
            quote_literal(&format!("{TAIL_PREFIX}%"))
        ))
        .await;
    for row in rows {
        let slot = row[0].clone().unwrap_or_default();
        let retained: u64 = row[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        report.problem(
            format!(
                "replication slot {slot:?} was left behind by a `walhook tail` that was killed; \
                 it retains {} of WAL and will fill the disk",
                format_size(retained)
            ),
            format!("SELECT pg_drop_replication_slot({});", quote_literal(&slot)),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The database encoding

/// A SQL_ASCII database declares no encoding for its bytes: walhook reads them as they are
/// and turns every byte that is not UTF-8 into U+FFFD, which a user should know before
/// trusting event values.
async fn check_encoding(sql: &Sql<'_>, report: &mut Report) {
    if sql.one("SHOW server_encoding").await.as_deref() == Some("SQL_ASCII") {
        report.note(
            "WARNING: the database encoding is SQL_ASCII (bytes in no declared encoding): \
             walhook reads them as they are, and any byte sequence that is not UTF-8 \
             arrives in events as U+FFFD (\u{fffd}); to keep such text exactly, move the \
             data to a UTF8 database",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Privileges: what `setup`, `test`, `tail` and reloads will need of a non-superuser role

/// Each privilege the next commands need and the role lacks, with the exact statement that
/// grants it (SPEC §1). A superuser needs none of this.
async fn check_privileges(sql: &Sql<'_>, config: &Config, report: &mut Report) {
    let client = sql.0;
    let role = match Role::current(client).await {
        Ok(role) if !role.superuser => role,
        Ok(_) => return,
        Err(e) => return tracing::debug!("check query failed: {e}"),
    };
    let publication = &config.source.publication;
    let owner = privileges::publication_owner(client, publication)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!("check query failed: {e}");
            None
        });
    let all_tables = owner.as_ref().is_some_and(|o| o.all_tables);
    if let Some(owner) = owner.as_ref().filter(|o| !o.all_tables) {
        if let Some(missing) = privileges::publication_ownership(
            &role,
            publication,
            owner,
            "setup and reloads that add or remove a table will fail",
        ) {
            report.missing(missing);
        }
    }
    let needs_identity: Vec<TableName> = needs_old_values(config)
        .into_iter()
        .map(|(table, _, _)| table)
        .collect();
    let tables = config.tables();
    let mut missing = 0;
    for table in &tables {
        let access = match privileges::table_access(client, table, publication).await {
            Ok(Some(access)) => access,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("check query failed: {e}");
                continue;
            }
        };
        if !access.select {
            missing += 1;
            report.missing(privileges::select(
                &role,
                table,
                "`walhook test` and the catalog reads of capture need it",
            ));
        }
        if !all_tables && !access.published && !access.owned {
            missing += 1;
            let exists = owner.is_some();
            report.missing(privileges::publish(
                &role,
                table,
                &access,
                publication,
                exists,
                &tables,
                &format!(
                    "setup cannot {} {publication:?} for it",
                    if exists { "add" } else { "create publication" }
                ),
            ));
        }
        if needs_identity.contains(table) && access.replica_identity != 'f' && !access.owned {
            missing += 1;
            report.missing(privileges::replica_identity(&role, table, &access));
        }
    }
    if missing == 0 {
        report.ok(format!(
            "role {} has the table privileges setup, test and tail need",
            role.quoted()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backfill: bool) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://walhook@db/erp\"\n\n\
             [objects.invoice]\ntable = \"account_invoice\"\n\n\
             [[subscriptions]]\nname = \"partner-sync\"\nobject = \"invoice\"\n\
             url = \"https://hooks.example.com/in\"\nbackfill = {backfill}\n"
        );
        Config::parse(&text, "walhook.toml", &|_| None).unwrap()
    }

    #[test]
    fn backfill_on_a_server_older_than_14_is_a_problem() {
        let (problem, fix) = backfill_version_problem(&config(true), 130_011, "13.11").unwrap();
        assert_eq!(
            problem,
            "subscriptions.partner-sync has backfill = true, but the source is PostgreSQL \
             13.11: backfill needs PostgreSQL 14 or later (pgoutput's messages option)"
        );
        assert!(fix.contains("upgrade the source"), "{fix}");
        assert!(backfill_version_problem(&config(true), 140_000, "14.0").is_none());
        assert!(backfill_version_problem(&config(false), 130_011, "13.11").is_none());
    }
}

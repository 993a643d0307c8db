//! `walhook setup` and `walhook teardown`: create (idempotently) or drop what walhook keeps
//! in Postgres — the outbox schema, the publication and the replication slot.
//!
//! Both print one line per thing done or found in place. Neither touches a business table,
//! except `setup --replica-identity`, which sets REPLICA IDENTITY FULL on exactly the tables
//! whose subscriptions need old values (SPEC §6).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::capture::matcher::needs_old_values;

use crate::config::{format_size, Config, TableName};
use crate::outbox::checkpoint::claim_checkpoint;
use crate::outbox::migrate::{migrate, MIGRATIONS};
use crate::outbox::teardown::{drop_outbox, DropMode};
use crate::pg::conninfo::ConnInfo;
use crate::pg::{self, Lsn};
use crate::pg::{quote_ident, quote_literal, quote_table};
use crate::source::preflight::preflight;
use crate::source::privileges::{self, Refusal, Role};
use crate::source::publication::sync_publication;
use crate::source::setup::SetupError;
use crate::source::slot::{create_slot, drop_slot, slot_state, source_id, SlotState};

/// The flags of `walhook setup`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupOptions {
    /// `--replica-identity`: set REPLICA IDENTITY FULL where subscriptions need old values.
    pub replica_identity: bool,
    /// `--recreate-slot`: drop the slot (whatever its state), create it anew and move the
    /// checkpoint to it, accepting that changes in between are not captured.
    pub recreate_slot: bool,
}

/// Why the slot matters, said by both commands: it is the one thing that can hurt the
/// source when walhook is gone.
const SLOT_WARNING: &str = "the replication slot makes the source keep WAL until walhook has \
     read it: a slot nobody reads any more fills the source server's disk";

/// The source connection, and the outbox's when `outbox.url` names another database.
struct Databases {
    info: ConnInfo,
    source: Client,
    outbox: Option<Client>,
}

impl Databases {
    async fn connect(config: &Config) -> Result<Databases, SetupError> {
        let info = config.source.conninfo.clone();
        let source = pg::connect_sql(&info).await?;
        let outbox = match config.separate_outbox() {
            Some(outbox_info) => Some(pg::connect_sql(outbox_info).await?),
            None => None,
        };
        Ok(Databases {
            info,
            source,
            outbox,
        })
    }

    fn outbox(&self) -> &Client {
        self.outbox.as_ref().unwrap_or(&self.source)
    }
}

/// `walhook setup`: migrates the outbox schema, makes the publication hold exactly the
/// configured tables, and creates the slot if it is missing. Safe to run again: what is in
/// place is reported as such.
pub async fn setup(config: &Config, options: &SetupOptions) -> Result<(), SetupError> {
    let db = Databases::connect(config).await?;
    let schema = &config.outbox.schema;

    preflight(&db.source, config).await?;
    let report = migrate(db.outbox(), schema).await?;
    report.lines().iter().for_each(|line| println!("{line}"));

    replica_identity(&db.source, config, options.replica_identity).await?;

    let change = sync_publication(&db.source, &config.source.publication, &config.tables()).await?;
    change.lines().iter().for_each(|line| println!("{line}"));

    if options.recreate_slot {
        recreate_slot(&db, config).await?;
    } else {
        for line in ensure_slot(
            &db.info,
            &db.source,
            db.outbox(),
            schema,
            &config.source.slot,
        )
        .await?
        {
            println!("{line}");
        }
    }
    println!(
        "setup complete; note: {SLOT_WARNING}. When you stop using walhook, run \
         `walhook teardown`."
    );
    Ok(())
}

/// Creates slot `slot` if it is missing and reports it if it is in place, for `setup` and
/// for `run` at start-up. Returns the lines to print.
///
/// A missing slot for which the outbox holds a checkpoint was dropped behind walhook's back:
/// creating it anew would silently skip the changes since, so that is an error (SPEC §8)
/// until the user runs `setup --recreate-slot`. So is a lost or foreign slot. A new slot's
/// consistent point is recorded as its checkpoint, so that a later disappearance is noticed
/// even before the first event.
pub async fn ensure_slot(
    info: &ConnInfo,
    source: &Client,
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Vec<String>, SetupError> {
    let id = source_id(info).await?;
    claim_checkpoint(outbox, schema, slot, &id).await?;
    let lines = ensure_slot_of(info, source, outbox, schema, slot).await?;
    // A checkpoint written just now (for a new slot) is claimed too.
    claim_checkpoint(outbox, schema, slot, &id).await?;
    Ok(lines)
}

async fn ensure_slot_of(
    info: &ConnInfo,
    source: &Client,
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Vec<String>, SetupError> {
    match slot_state(source, slot).await? {
        SlotState::Missing => {
            if let Some(checkpoint) = read_checkpoint(outbox, schema, slot).await? {
                return Err(SetupError::SlotDropped {
                    slot: slot.to_owned(),
                    checkpoint,
                });
            }
            let point = create_slot(info, slot).await?;
            write_checkpoint(outbox, schema, slot, point).await?;
            Ok(vec![format!("created slot {slot:?} at {point}")])
        }
        SlotState::Ready {
            active_pid,
            confirmed_flush,
            retained_bytes,
        } => Ok(vec![format!(
            "slot {slot:?} already in place (pgoutput, confirmed up to {confirmed_flush}, \
             retaining {} of WAL){}",
            format_size(retained_bytes),
            active_pid
                .map(|pid| format!("; in use by process {pid} (a running walhook?)"))
                .unwrap_or_default()
        )]),
        state @ (SlotState::Lost | SlotState::WrongKind { .. }) => Err(SetupError::SlotUnusable {
            slot: slot.to_owned(),
            reason: state.unusable_reason().unwrap_or_default(),
        }),
    }
}

/// `--recreate-slot`: drop whatever is there, create the slot anew, and move the checkpoint
/// to its consistent point, so capture resumes from there instead of refusing.
async fn recreate_slot(db: &Databases, config: &Config) -> Result<(), SetupError> {
    let slot = &config.source.slot;
    let schema = &config.outbox.schema;
    let id = source_id(&db.info).await?;
    claim_checkpoint(db.outbox(), schema, slot, &id).await?;
    let state = slot_state(&db.source, slot).await?;
    let checkpoint = read_checkpoint(db.outbox(), schema, slot).await?;
    // Where capture had got to: the outbox knows best; the slot's position is next best.
    let old = checkpoint.or(match &state {
        SlotState::Ready {
            confirmed_flush, ..
        } => Some(*confirmed_flush),
        _ => None,
    });
    if state != SlotState::Missing {
        drop_slot(&db.source, slot).await?;
        println!(
            "dropped slot {slot:?}{}",
            state
                .unusable_reason()
                .map(|r| format!(" (it {r})"))
                .unwrap_or_default()
        );
    }
    let point = create_slot(&db.info, slot).await?;
    println!("created slot {slot:?} at {point}");
    write_checkpoint(db.outbox(), schema, slot, point).await?;
    claim_checkpoint(db.outbox(), schema, slot, &id).await?;
    println!("checkpoint of slot {slot:?} set to {point}");
    let gap = match old {
        Some(old) => format!("changes committed between {old} and {point}"),
        None => format!("changes committed before {point} that walhook had not captured yet"),
    };
    println!(
        "WARNING: capture restarts at {point}. {gap} are NOT captured and will never become \
         events; compare the source with your subscribers if they matter"
    );
    tracing::warn!(slot = %slot, %point, "slot recreated: {gap} are not captured");
    Ok(())
}

/// The checkpoint of `slot` in the outbox: the last commit whose events it holds.
async fn read_checkpoint(
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Option<Lsn>, SetupError> {
    let row = outbox
        .query_opt(
            &format!(
                "SELECT commit_lsn::text FROM {}.checkpoint WHERE slot = $1",
                quote_ident(schema)
            ),
            &[&slot],
        )
        .await
        .map_err(|e| {
            SetupError::sql(format!("reading the checkpoint of slot {slot:?}"), &e, None)
        })?;
    Ok(row.and_then(|row| row.get::<_, String>(0).parse().ok()))
}

/// Sets the checkpoint of `slot` to `lsn`: transactions committed at or before it are
/// taken as captured.
async fn write_checkpoint(
    outbox: &Client,
    schema: &str,
    slot: &str,
    lsn: Lsn,
) -> Result<(), SetupError> {
    outbox
        .execute(
            &format!(
                "INSERT INTO {}.checkpoint (slot, commit_lsn) VALUES ($1, $2::text::pg_lsn) \
                 ON CONFLICT (slot) DO UPDATE \
                 SET commit_lsn = EXCLUDED.commit_lsn, updated_at = now()",
                quote_ident(schema)
            ),
            &[&slot, &lsn.to_string()],
        )
        .await
        .map_err(|e| {
            SetupError::sql(format!("setting the checkpoint of slot {slot:?}"), &e, None)
        })?;
    Ok(())
}

/// Subscriptions whose `watch` or `when` needs old values of non-key columns, as (table,
/// subscription, why). The same rule as `check`.
/// How long `ALTER TABLE` may wait for its lock: it needs a brief exclusive lock on a
/// business table, and while it waits every other query on that table queues behind it.
const ALTER_LOCK_TIMEOUT: &str = "5s";

/// For each table whose subscriptions need old values: report it FULL already, or (with
/// `--replica-identity`) make it so, or say how.
async fn replica_identity(source: &Client, config: &Config, alter: bool) -> Result<(), SetupError> {
    let needs = needs_old_values(config);
    let mut tables: Vec<&TableName> = Vec::new();
    for (table, _, _) in &needs {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    if tables.is_empty() {
        if alter {
            println!("replica identity: no subscription needs old values; no table altered");
        }
        return Ok(());
    }
    for table in tables {
        let who = needs
            .iter()
            .filter(|(t, _, _)| t == table)
            .map(|(_, name, why)| format!("subscriptions.{name} ({why})"))
            .collect::<Vec<_>>()
            .join(", ");
        let identity: Option<String> = source
            .query_opt(
                "SELECT c.relreplident::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(|e| SetupError::sql(format!("looking up table {table}"), &e, None))?
            .map(|row| row.get(0));
        let Some(identity) = identity else {
            return Err(SetupError::MissingTable {
                table: table.clone(),
            });
        };
        let statement = format!("ALTER TABLE {} REPLICA IDENTITY FULL;", quote_table(table));
        if identity == "f" {
            println!("table {table}: REPLICA IDENTITY already FULL, as {who} needs");
        } else if alter {
            let result = source
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = {}; {statement} COMMIT",
                    quote_literal(ALTER_LOCK_TIMEOUT)
                ))
                .await;
            if let Err(e) = result {
                let _ = source.batch_execute("ROLLBACK").await;
                let fix = match e.code() {
                    Some(&SqlState::LOCK_NOT_AVAILABLE) => format!(
                        "the table is busy (the change needs a brief exclusive lock, and waited \
                         {ALTER_LOCK_TIMEOUT}); run setup again at a quieter moment"
                    ),
                    Some(&SqlState::INSUFFICIENT_PRIVILEGE) => format!(
                        "only the table's owner or a superuser may change it; have one run: \
                         {statement}"
                    ),
                    _ => format!("run by hand to see more: {statement}"),
                };
                return Err(SetupError::sql(
                    format!("setting REPLICA IDENTITY FULL on table {table}"),
                    &e,
                    Some(fix),
                ));
            }
            println!("{statement} -- for {who}");
        } else {
            println!(
                "note: table {table} needs REPLICA IDENTITY FULL for {who}; run `walhook setup \
                 --replica-identity`, or: {statement}"
            );
        }
    }
    Ok(())
}

/// `walhook teardown`: drops the slot, the publication and the outbox schema. Refuses while
/// deliveries are pending unless `force`. What is already gone is reported, not an error.
pub async fn teardown(config: &Config, force: bool) -> Result<(), SetupError> {
    let db = Databases::connect(config).await?;
    let schema = &config.outbox.schema;
    let slot = &config.source.slot;
    let publication = &config.source.publication;

    // Check everything before dropping anything, so a refusal leaves all in place.
    let outbox = outbox_facts(db.outbox(), schema).await?;
    if outbox.pending > 0 {
        if !force {
            return Err(SetupError::PendingDeliveries {
                schema: schema.clone(),
                count: outbox.pending,
            });
        }
        println!(
            "WARNING: dropping {} pending {} (--force): they will never be delivered",
            outbox.pending,
            if outbox.pending == 1 {
                "delivery"
            } else {
                "deliveries"
            }
        );
    }
    if let Some(foreign) = &outbox.foreign {
        return Err(SetupError::Sql {
            context: format!("dropping schema {schema}"),
            code: None,
            message: format!(
                "it holds objects walhook did not create ({foreign}), so walhook will not drop it"
            ),
            fix: Some(format!(
                "if walhook's outbox shares schema {schema} with other objects, drop walhook's \
                 tables by hand; give walhook a schema of its own with outbox.schema"
            )),
        });
    }
    teardown_privileges(&db, config, outbox.exists).await?;
    let own = own_relations();
    if outbox.exists {
        drop_outbox(db.outbox(), schema, &own, DropMode::DryRun).await?;
    }

    if drop_slot(&db.source, slot).await? {
        println!("dropped slot {slot:?}: the source no longer keeps WAL for walhook");
    } else {
        println!("slot {slot:?}: not present");
    }

    let has_publication = db
        .source
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(|e| SetupError::sql(format!("looking up publication {publication:?}"), &e, None))?
        .is_some();
    if has_publication {
        let sql = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication));
        db.source.batch_execute(&sql).await.map_err(|e| {
            SetupError::sql(
                format!("dropping publication {publication:?}"),
                &e,
                Some(format!(
                    "the publication's owner or a superuser can run: {sql};"
                )),
            )
        })?;
        println!("dropped publication {publication:?}");
    } else {
        println!("publication {publication:?}: not present");
    }

    if outbox.exists {
        drop_outbox(db.outbox(), schema, &own, DropMode::Commit).await?;
        println!("dropped schema {schema} (the outbox: events, deliveries, attempts, checkpoint)");
    } else {
        println!("schema {schema}: not present");
    }
    println!(
        "teardown complete; walhook left nothing behind ({SLOT_WARNING}, which is why \
         teardown drops it)"
    );
    Ok(())
}

/// Refuses, before anything is dropped, when the role may not drop all that teardown would:
/// otherwise Postgres' permission error would stop it half-way (the slot gone, the
/// publication still there).
async fn teardown_privileges(
    db: &Databases,
    config: &Config,
    outbox_exists: bool,
) -> Result<(), SetupError> {
    let failed = |e: tokio_postgres::Error| {
        SetupError::sql("reading the role's privileges for teardown", &e, None)
    };
    let role = Role::current(&db.source).await.map_err(failed)?;
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    let mut missing = Vec::new();
    let slot_exists = db
        .source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(failed)?
        .is_some();
    if slot_exists {
        missing.extend(role.replication(&format!("drop replication slot {slot:?}")));
    }
    if let Some(owner) = privileges::publication_owner(&db.source, publication)
        .await
        .map_err(failed)?
    {
        missing.extend(privileges::publication_ownership(
            &role,
            publication,
            &owner,
            "only its owner may drop it",
        ));
    }
    if outbox_exists {
        let outbox_role = match &db.outbox {
            Some(outbox) => Role::current(outbox).await.map_err(failed)?,
            None => role.clone(),
        };
        let schema = &config.outbox.schema;
        missing.extend(
            privileges::schema_ownership(
                db.outbox(),
                &outbox_role,
                schema,
                "only its owner may drop it",
            )
            .await
            .map_err(failed)?,
        );
    }
    Ok(Refusal::unless_empty(
        &role,
        "teardown",
        "dropped nothing",
        missing,
    )?)
}

/// What `teardown` needs to know about the outbox schema before dropping anything.
struct OutboxFacts {
    exists: bool,
    pending: i64,
    /// Relations walhook's migrations did not create, when the schema has any.
    foreign: Option<String>,
}

async fn outbox_facts(outbox: &Client, schema: &str) -> Result<OutboxFacts, SetupError> {
    let context = || format!("looking at schema {schema}");
    let relations: Option<Vec<String>> = outbox
        .query_opt(
            // Sequences owned by a column (identity, serial, OWNED BY) go with their table.
            "SELECT array(SELECT c.relname::text FROM pg_class c \
                          WHERE c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','f','S') \
                            AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                    AND d.deptype IN ('a', 'i')) \
                          ORDER BY 1) \
             FROM pg_namespace n WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(|e| SetupError::sql(context(), &e, None))?
        .map(|row| row.get(0));
    let Some(relations) = relations else {
        return Ok(OutboxFacts {
            exists: false,
            pending: 0,
            foreign: None,
        });
    };
    let own = own_relations();
    let foreign: Vec<&String> = relations.iter().filter(|r| !own.contains(r)).collect();
    let pending = if relations.iter().any(|r| r == "delivery") {
        outbox
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.delivery WHERE status = 'pending'",
                    quote_ident(schema)
                ),
                &[],
            )
            .await
            .map_err(|e| SetupError::sql(context(), &e, None))?
            .get(0)
    } else {
        0
    };
    Ok(OutboxFacts {
        exists: true,
        pending,
        foreign: (!foreign.is_empty()).then(|| {
            foreign
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }),
    })
}

/// The tables, views and sequences walhook creates in its schema: the version table and what
/// the migration files create. Read from the files themselves, so a new migration needs no
/// change here.
fn own_relations() -> Vec<String> {
    let mut names = vec!["schema_version".to_owned()];
    for migration in MIGRATIONS {
        let words: Vec<&str> = migration
            .sql
            .lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect();
        for (i, word) in words.iter().enumerate() {
            if !word.eq_ignore_ascii_case("CREATE") {
                continue;
            }
            let mut rest = words[i + 1..].iter().copied().peekable();
            if rest.peek().is_some_and(|w| w.eq_ignore_ascii_case("OR")) {
                rest.next(); // OR
                rest.next(); // REPLACE
            }
            if rest
                .peek()
                .is_some_and(|w| w.eq_ignore_ascii_case("MATERIALIZED"))
            {
                rest.next();
            }
            let Some(kind) = rest.next() else { continue };
            if !["TABLE", "VIEW", "SEQUENCE"]
                .iter()
                .any(|k| kind.eq_ignore_ascii_case(k))
            {
                continue;
            }
            let mut name = rest.next().unwrap_or("");
            if name.eq_ignore_ascii_case("IF") {
                rest.next(); // NOT
                rest.next(); // EXISTS
                name = rest.next().unwrap_or("");
            }
            let name = name
                .split(['(', ';'])
                .next()
                .unwrap_or("")
                .trim_matches('"');
            if !name.is_empty() {
                names.push(name.to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_relations_come_from_the_migration_files() {
        let own = own_relations();
        for name in [
            "schema_version",
            "checkpoint",
            "event",
            "event_seq",
            "delivery",
            "attempt",
            "deliveries",
            "attempts",
        ] {
            assert!(own.iter().any(|o| o == name), "{name} missing from {own:?}");
        }
        assert!(!own.iter().any(|o| o == "account_invoice"));
    }
}

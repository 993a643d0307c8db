//! `walhook setup` and `walhook teardown`: create (idempotently) or drop what walhook keeps
//! in Postgres — the outbox schema, the publication and the replication slot.
//!
//! Both print one line per thing done or found in place. Neither touches a business table,
//! except `setup --replica-identity`, which sets REPLICA IDENTITY FULL on exactly the tables
//! whose subscriptions need old values (SPEC §6); objects that keep state never do (§3a).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::capture::matcher::needs_old_values;

use crate::config::{table_list, Config, TableName};
use crate::daemon::slot::ensure_slot;
use crate::outbox::checkpoint::{self, claim_checkpoint};
use crate::outbox::migrate::{migrate, MigrateError};
use crate::outbox::teardown::{self, drop_outbox, DropMode};
use crate::pg;
use crate::pg::conninfo::ConnInfo;
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

/// Why `walhook setup` or `teardown` failed: a step on the source (or the slot), the
/// outbox's migrations, or deliveries still pending.
#[derive(Debug, thiserror::Error)]
pub enum SetupFailed {
    /// The source, the publication or the slot.
    #[error(transparent)]
    Source(#[from] SetupError),
    /// Applying the outbox migrations.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// `teardown` found deliveries that have not been made yet.
    #[error(transparent)]
    PendingDeliveries(#[from] teardown::Pending),
}

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
pub async fn setup(config: &Config, options: &SetupOptions) -> Result<(), SetupFailed> {
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

/// `--recreate-slot`: drop whatever is there, create the slot anew, and move the checkpoint
/// to its consistent point, so capture resumes from there instead of refusing.
async fn recreate_slot(db: &Databases, config: &Config) -> Result<(), SetupError> {
    let slot = &config.source.slot;
    let schema = &config.outbox.schema;
    let id = source_id(&db.info).await?;
    claim_checkpoint(db.outbox(), schema, slot, &id).await?;
    let state = slot_state(&db.source, slot).await?;
    let checkpoint = checkpoint::read(db.outbox(), schema, slot).await?;
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
    checkpoint::write(db.outbox(), schema, slot, point).await?;
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

/// How long `ALTER TABLE` may wait for its lock: it needs a brief exclusive lock on a
/// business table, and while it waits every other query on that table queues behind it.
const ALTER_LOCK_TIMEOUT: &str = "5s";

/// For each table whose subscriptions need old values (the same rule as `check` and `run`):
/// report it FULL already, or (with `--replica-identity`) make it so, or say how. Objects
/// that keep state need none, and with the flag setup says so.
async fn replica_identity(source: &Client, config: &Config, alter: bool) -> Result<(), SetupError> {
    if alter {
        for (name, object) in config.objects.iter().filter(|(_, o)| o.keeps_state()) {
            let tables: Vec<TableName> = object.tables().cloned().collect();
            println!(
                "replica identity: objects.{name} keeps its state; REPLICA IDENTITY FULL is \
                 not needed on {}",
                table_list(&tables)
            );
        }
    }
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
pub async fn teardown(config: &Config, force: bool) -> Result<(), SetupFailed> {
    let db = Databases::connect(config).await?;
    let schema = &config.outbox.schema;
    let slot = &config.source.slot;
    let publication = &config.source.publication;

    // Check everything before dropping anything, so a refusal leaves all in place.
    let outbox = teardown::outbox_facts(db.outbox(), schema).await?;
    if outbox.pending > 0 {
        if !force {
            return Err(teardown::Pending {
                schema: schema.clone(),
                count: outbox.pending,
            }
            .into());
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
        }
        .into());
    }
    teardown_privileges(&db, config, outbox.exists).await?;
    let own = teardown::own_relations();
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

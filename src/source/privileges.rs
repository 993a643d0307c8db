//! What a role that is not a superuser needs of the source for each command, and the exact
//! statement that grants what it lacks (SPEC §1). `check` reports all of it; `teardown` and
//! `tail` ask the same questions before they change anything and refuse with the same words,
//! instead of failing half-way on Postgres' own error.
//!
//! Ownership is asked with `pg_has_role(…, 'USAGE')`: Postgres lets the owner, a member
//! inheriting the owner's rights, or a superuser drop or publish an object.

use std::fmt;

use tokio_postgres::Client;

use crate::config::TableName;
use crate::pg::{quote_ident, quote_table};

/// A privilege the role lacks: what it blocks, and the statement that grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What the role may not do, naming the object and its owner.
    pub problem: String,
    /// The exact statement (or step) that fixes it.
    pub fix: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — fix: {}", self.problem, self.fix)
    }
}

/// A command refused before it changed anything because the role lacks privileges.
#[derive(Debug, thiserror::Error)]
#[error(
    "role {role} lacks privileges `walhook {command}` needs, so it {untouched}:{}",
    list(missing)
)]
pub struct Refusal {
    /// The role, quoted as in the fixes.
    pub role: String,
    /// The command, e.g. `teardown`.
    pub command: &'static str,
    /// What was left alone, e.g. "dropped nothing".
    pub untouched: &'static str,
    /// Each missing privilege with its fix; never empty.
    pub missing: Vec<Missing>,
}

impl Refusal {
    /// Ok when nothing is `missing`; else the refusal of `command` for `role`.
    pub fn unless_empty(
        role: &Role,
        command: &'static str,
        untouched: &'static str,
        missing: Vec<Missing>,
    ) -> Result<(), Refusal> {
        if missing.is_empty() {
            return Ok(());
        }
        Err(Refusal {
            role: role.quoted(),
            command,
            untouched,
            missing,
        })
    }
}

fn list(missing: &[Missing]) -> String {
    missing.iter().map(|m| format!("\n  {m}")).collect()
}

/// The connected role's attributes.
#[derive(Debug, Clone)]
pub struct Role {
    /// `current_user`.
    pub name: String,
    /// Superusers need nothing of this module.
    pub superuser: bool,
    /// May open replication connections and create or drop slots.
    pub replication: bool,
    /// Holds CREATE on the current database (schemas, publications).
    pub create_in_database: bool,
    /// `current_database()`.
    pub database: String,
}

impl Role {
    /// Reads the attributes of the role this connection logged in as.
    pub async fn current(client: &Client) -> Result<Role, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT current_user::text, r.rolsuper, r.rolreplication, \
                        has_database_privilege(current_user, current_database(), 'CREATE'), \
                        current_database()::text \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        Ok(Role {
            name: row.get(0),
            superuser: row.get(1),
            replication: row.get(2),
            create_in_database: row.get(3),
            database: row.get(4),
        })
    }

    /// The name as it appears in statements.
    pub fn quoted(&self) -> String {
        quote_ident(&self.name)
    }

    /// REPLICATION, when the role lacks it; `needed_for` says what for ("may not …").
    pub fn replication(&self, needed_for: &str) -> Option<Missing> {
        (!self.replication && !self.superuser).then(|| Missing {
            problem: format!("role {:?} may not {needed_for}", self.name),
            fix: format!(
                "ALTER ROLE {role} REPLICATION; (on AWS RDS: GRANT rds_replication TO {role};)",
                role = self.quoted()
            ),
        })
    }

    /// CREATE on the database, when the role lacks it; `what` is what it would create.
    pub fn create_in_database(&self, what: &str) -> Option<Missing> {
        (!self.create_in_database && !self.superuser).then(|| Missing {
            problem: format!("role {:?} may not create {what}", self.name),
            fix: format!(
                "GRANT CREATE ON DATABASE {} TO {};",
                quote_ident(&self.database),
                self.quoted()
            ),
        })
    }
}

/// Who owns an existing publication.
#[derive(Debug, Clone)]
pub struct PublicationOwner {
    /// The owner role.
    pub owner: String,
    /// Whether the current role has the owner's rights.
    pub owned: bool,
    /// FOR ALL TABLES: walhook never alters it.
    pub all_tables: bool,
}

/// The owner of publication `name`, or `None` when it does not exist.
pub async fn publication_owner(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationOwner>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT pg_get_userbyid(pubowner)::text, \
                    pg_has_role(current_user, pubowner, 'USAGE'), puballtables \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?
        .map(|row| PublicationOwner {
            owner: row.get(0),
            owned: row.get(1),
            all_tables: row.get(2),
        }))
}

/// Ownership of publication `name`, when the role lacks it; `blocks` says what fails.
pub fn publication_ownership(
    role: &Role,
    name: &str,
    owner: &PublicationOwner,
    blocks: &str,
) -> Option<Missing> {
    (!owner.owned && !role.superuser).then(|| Missing {
        problem: format!(
            "role {} does not own publication {name:?} (owner: {}): {blocks}",
            role.quoted(),
            owner.owner
        ),
        fix: format!(
            "ALTER PUBLICATION {} OWNER TO {};",
            quote_ident(name),
            role.quoted()
        ),
    })
}

/// What the current role may do with one table.
#[derive(Debug, Clone)]
pub struct TableAccess {
    /// SELECT on it.
    pub select: bool,
    /// The owner's rights: only the owner may publish it or change its replica identity.
    pub owned: bool,
    /// The owner role.
    pub owner: String,
    /// `relreplident`: `d`, `n`, `f` or `i`.
    pub replica_identity: char,
    /// Whether `publication` lists it by name.
    pub published: bool,
}

/// The current role's access to `table`, or `None` when it does not exist.
pub async fn table_access(
    client: &Client,
    table: &TableName,
    publication: &str,
) -> Result<Option<TableAccess>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT has_table_privilege(c.oid, 'SELECT'), \
                    pg_has_role(current_user, c.relowner, 'USAGE'), \
                    pg_get_userbyid(c.relowner)::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_publication_tables p \
                            WHERE p.pubname = $3 AND p.schemaname = n.nspname \
                              AND p.tablename = c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name, &publication],
        )
        .await?
        .map(|row| TableAccess {
            select: row.get(0),
            owned: row.get(1),
            owner: row.get(2),
            replica_identity: row.get::<_, String>(3).chars().next().unwrap_or('d'),
            published: row.get(4),
        }))
}

/// SELECT on `table`, which `blocks` needs.
pub fn select(role: &Role, table: &TableName, blocks: &str) -> Missing {
    Missing {
        problem: format!(
            "role {} may not SELECT from table {table}: {blocks}",
            role.quoted()
        ),
        fix: format!(
            "GRANT SELECT ON TABLE {} TO {};",
            quote_table(table),
            role.quoted()
        ),
    }
}

/// Ownership of `table`, needed to put it into `publication`: `exists` says whether the
/// publication is to be altered or created (for all of `tables`), and `blocked` what fails
/// ("setup cannot add \"walhook\" for it").
pub fn publish(
    role: &Role,
    table: &TableName,
    access: &TableAccess,
    publication: &str,
    exists: bool,
    tables: &[TableName],
    blocked: &str,
) -> Missing {
    let quoted_role = role.quoted();
    let statement = if exists {
        format!(
            "ALTER PUBLICATION {} ADD TABLE {};",
            quote_ident(publication),
            quote_table(table)
        )
    } else {
        format!(
            "CREATE PUBLICATION {pubname} FOR TABLE {}; ALTER PUBLICATION {pubname} OWNER TO \
             {quoted_role};",
            tables
                .iter()
                .map(quote_table)
                .collect::<Vec<_>>()
                .join(", "),
            pubname = quote_ident(publication),
        )
    };
    Missing {
        problem: format!(
            "role {quoted_role} does not own table {table} (owner: {}), so {blocked}: Postgres \
             lets only a table's owner publish it",
            access.owner
        ),
        fix: format!(
            "GRANT {} TO {quoted_role}; (membership in the owner role), or have the owner run \
             walhook's publication statement once: {statement}",
            quote_ident(&access.owner)
        ),
    }
}

/// Ownership of `table`, needed to set REPLICA IDENTITY FULL on it.
pub fn replica_identity(role: &Role, table: &TableName, access: &TableAccess) -> Missing {
    Missing {
        problem: format!(
            "role {} does not own table {table} (owner: {}), so `setup --replica-identity` \
             cannot set REPLICA IDENTITY FULL on it",
            role.quoted(),
            access.owner
        ),
        fix: format!(
            "have the owner run: ALTER TABLE {} REPLICA IDENTITY FULL;",
            quote_table(table)
        ),
    }
}

/// Ownership of schema `schema`, when it exists and the role lacks it: dropping the schema
/// needs it (and it suffices for the tables in it).
pub async fn schema_ownership(
    client: &Client,
    role: &Role,
    schema: &str,
    blocks: &str,
) -> Result<Option<Missing>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text, pg_has_role(current_user, nspowner, 'USAGE') \
             FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await?;
    Ok(row
        .filter(|row| !row.get::<_, bool>(1) && !role.superuser)
        .map(|row| Missing {
            problem: format!(
                "role {} does not own schema {schema} (owner: {}): {blocks}",
                role.quoted(),
                row.get::<_, String>(0)
            ),
            fix: format!(
                "ALTER SCHEMA {} OWNER TO {};",
                quote_ident(schema),
                role.quoted()
            ),
        }))
}

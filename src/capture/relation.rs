//! What walhook knows about each replicated table: columns, their JSON kinds, the key.
//!
//! pgoutput announces a table with a Relation message before its first change (and again
//! after DDL). That message flags the replica identity columns, but under REPLICA IDENTITY
//! FULL it flags every column, so the primary key comes from the catalog instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::source::pgoutput;
use crate::source::types::{TypeKind, TypeRegistry};

/// REPLICA IDENTITY of a table, as far as old values are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Old values of every column are logged (FULL).
    Full,
    /// Only the key is logged, and only when it changes (DEFAULT or USING INDEX).
    Key,
    /// Nothing is logged (NOTHING); updates and deletes carry no old values.
    Nothing,
}

/// One column of a replicated table.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID as the server sent it (a domain's own OID, not its base type).
    pub type_oid: u32,
    /// How values of this column become JSON.
    pub kind: TypeKind,
}

/// A replicated table as pgoutput last described it.
#[derive(Debug, Clone)]
pub struct Relation {
    /// The table's OID on the source.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, else of the replica identity index.
    pub key: Vec<usize>,
    /// What old values the WAL carries for this table.
    pub identity: Identity,
    /// Indexes of the replica identity columns: the ones a key-only old tuple carries.
    pub identity_columns: Vec<usize>,
}

impl Relation {
    /// `schema.table`, the form users write in the config.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Index of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Failure to learn about a table from the catalog.
#[derive(Debug, thiserror::Error)]
pub enum RelationError {
    /// A change referenced a table no Relation message described.
    #[error("pgoutput sent a change for relation OID {0} before describing it")]
    Unknown(u32),
    /// The catalog query failed.
    #[error("looking up {what} of table {table} in the catalog: {source}")]
    Catalog {
        /// What was looked up.
        what: &'static str,
        /// The table.
        table: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// A user-defined type could not be resolved.
    #[error("looking up the column types of table {table}: {source}")]
    Types {
        /// The table.
        table: String,
        /// The lookup error.
        source: crate::source::types::TypeLookupError,
    },
}

/// Relations by OID, plus the type registry their columns need.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
    types: TypeRegistry,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Relation message, resolving its column types and primary key via `catalog`.
    pub async fn learn(
        &mut self,
        message: pgoutput::Relation,
        catalog: &tokio_postgres::Client,
    ) -> Result<Arc<Relation>, RelationError> {
        let table = format!("{}.{}", message.namespace, message.name);
        let oids: Vec<u32> = message.columns.iter().map(|c| c.type_oid).collect();
        self.types
            .resolve(catalog, &oids)
            .await
            .map_err(|source| RelationError::Types {
                table: table.clone(),
                source,
            })?;
        let primary_key = primary_key_columns(catalog, message.oid)
            .await
            .map_err(|source| RelationError::Catalog {
                what: "the primary key",
                table,
                source,
            })?;
        let relation = Arc::new(self.build(message, &primary_key));
        self.relations.insert(relation.oid, relation.clone());
        Ok(relation)
    }

    fn build(&self, message: pgoutput::Relation, primary_key: &[String]) -> Relation {
        let columns: Vec<Column> = message
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                kind: self.types.kind(c.type_oid).clone(),
            })
            .collect();
        let identity = match message.replica_identity {
            pgoutput::ReplicaIdentity::Full => Identity::Full,
            pgoutput::ReplicaIdentity::Nothing => Identity::Nothing,
            pgoutput::ReplicaIdentity::Default | pgoutput::ReplicaIdentity::Index => Identity::Key,
        };
        let identity_columns: Vec<usize> = (0..message.columns.len())
            .filter(|&i| message.columns[i].is_key)
            .collect();
        let key: Vec<usize> = if primary_key.is_empty() {
            // No primary key: the replica identity index is the next best row identity
            // (under FULL every column is flagged, which identifies nothing useful).
            if identity == Identity::Key {
                identity_columns.clone()
            } else {
                Vec::new()
            }
        } else {
            primary_key
                .iter()
                .filter_map(|name| columns.iter().position(|c| &c.name == name))
                .collect()
        };
        Relation {
            oid: message.oid,
            schema: message.namespace,
            name: message.name,
            columns,
            key,
            identity,
            identity_columns,
        }
    }

    /// The relation with this OID, which a Relation message must have described.
    pub fn get(&self, oid: u32) -> Result<&Arc<Relation>, RelationError> {
        self.relations.get(&oid).ok_or(RelationError::Unknown(oid))
    }
}

async fn primary_key_columns(
    catalog: &tokio_postgres::Client,
    table_oid: u32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = catalog
        .query(
            "SELECT a.attname::text \
             FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY k.ord",
            &[&table_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

//! Shared helpers for the integration tests: one throw-away Postgres per test binary, a
//! fresh database per test, and names no other test uses.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use walhook::ephemeral::{EphemeralPostgres, Options};

/// The cluster shared by every test of this binary, started on first use.
pub fn cluster() -> &'static EphemeralPostgres {
    static CLUSTER: OnceLock<EphemeralPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        EphemeralPostgres::start(&Options::default()).expect("start the test Postgres cluster")
    })
}

/// A name unique within this test run, for databases, slots and publications.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of its own for one test.
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// Superuser URL for it.
    pub url: String,
}

impl TestDb {
    /// Creates a fresh database in the shared cluster and runs `schema` in it.
    pub fn new(schema: &str) -> TestDb {
        Self::in_cluster(cluster(), schema)
    }

    /// Creates a fresh database in the given cluster and runs `schema` in it.
    pub fn in_cluster(pg: &EphemeralPostgres, schema: &str) -> TestDb {
        let name = unique("db");
        pg.create_database(&name).expect("create test database");
        if !schema.is_empty() {
            pg.psql(&name, schema).expect("load test schema");
        }
        TestDb {
            url: pg.url(&name),
            name,
        }
    }

    /// Runs SQL as the superuser and returns psql's unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        cluster().psql(&self.name, sql).expect("run SQL")
    }
}

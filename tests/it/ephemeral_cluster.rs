//! The throw-away cluster itself: tests and the demo stand on it.

use crate::support;

use support::{cluster, TestDb};

#[test]
fn the_cluster_runs_with_logical_wal_and_room_for_parallel_tests() {
    let db = TestDb::new("CREATE TABLE t (id int primary key)");
    assert_eq!(db.sql("SHOW wal_level"), "logical");
    assert_eq!(db.sql("SHOW max_replication_slots"), "64");
    assert_eq!(db.sql("SELECT count(*) FROM t"), "0");
    assert!(cluster().port() > 0);
}

#[test]
fn each_test_gets_its_own_database() {
    let a = TestDb::new("CREATE TABLE only_in_a (x int)");
    let b = TestDb::new("");
    assert_ne!(a.name, b.name);
    assert_eq!(
        b.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "0"
    );
}

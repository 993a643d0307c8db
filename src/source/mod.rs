//! The source side: everything that talks to the Postgres being watched.
//!
//! `replication` moves bytes over a replication connection and knows nothing of row changes;
//! `pgoutput` decodes those bytes into typed messages and does no I/O; `value` turns column
//! text into JSON per the type mapping of SPEC §3, with `types` saying which type is which.

pub mod conninfo;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod tls;
pub mod types;
pub mod value;

pub use lsn::Lsn;

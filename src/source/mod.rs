//! The source side: reading the Postgres being watched (connections themselves are `pg`'s).
//!
//! `replication` moves bytes over a replication connection and knows nothing of row changes;
//! `pgoutput` decodes those bytes into typed messages and does no I/O; `value` turns column
//! text into JSON per the type mapping of SPEC §3, with `types` saying which type is which.
//! `publication` and `slot` create, inspect and drop walhook's publication and slot, with
//! `setup` holding what they share (errors, advisory lock keys); `preflight` checks the
//! source before anything is created; `privileges` knows what a role that is not a superuser
//! needs for each command, and the statement that grants it. For backfills, `chunks` reads
//! a table in key-ordered chunks as pgoutput tuples, `snapshot` creates a new slot with
//! an exported snapshot and reads the seed inside it, `watermark` writes and recognises the
//! watermarks around each chunk, and `filter` checks a backfill's `--where` condition
//! against the table before it is asked for.

pub mod chunks;
pub mod columns;
pub mod filter;
pub mod pgoutput;
pub mod preflight;
pub mod privileges;
pub mod publication;
pub mod replication;
pub mod setup;
pub mod slot;
pub mod snapshot;
pub mod types;
pub mod value;
pub mod watermark;

pub use setup::SetupError;

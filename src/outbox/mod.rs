//! The outbox store: every statement against the walhook schema. Migrations; the writer
//! that commits events together with the capture checkpoint; the delivery queue the
//! dispatcher claims from; the delivery log, replays and subscription state the commands and
//! the admin API read and change; backfills (`backfill`, and `backfill_ask` for the CLI and
//! the API asking for one); retention and teardown.

pub mod attempts;
pub mod backfill;
pub mod backfill_ask;
pub mod checkpoint;
pub mod documents;
mod error;
pub mod leases;
pub mod log;
pub mod migrate;
pub mod open;
pub mod pipeline;
pub mod queue;
pub mod replay;
pub mod retention;
pub mod state;
pub mod status;
pub mod teardown;
pub mod writer;

pub use error::StoreError;

//! One module per CLI command; `main.rs` parses arguments and calls into these.

pub mod backfill;
pub mod check;
pub mod deliveries;
pub mod receive;
pub mod replay;
pub mod setup;
pub mod tail;
pub mod terminal;
pub mod test;

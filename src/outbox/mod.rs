//! The durable outbox inside Postgres: migrations, the writer that commits events together
//! with the capture checkpoint, and (later) the queries the dispatcher and the log use.

pub mod migrate;
pub mod writer;

//! The durable outbox inside Postgres: migrations, the writer that commits events together
//! with the capture checkpoint, and the delivery queue the dispatcher claims from.

pub mod migrate;
pub mod queue;
pub mod writer;

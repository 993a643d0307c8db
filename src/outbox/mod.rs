//! The durable outbox inside Postgres: migrations, the writer that commits events together
//! with the capture checkpoint, the delivery queue the dispatcher claims from, and retention.

pub mod checkpoint;
pub mod migrate;
pub mod pipeline;
pub mod queue;
pub mod retention;
pub mod teardown;
pub mod writer;

//! Webhook delivery: the dispatcher and its per-subscription workers, how an event becomes a
//! signed request, and what a response means for the delivery. The workers' decisions are a
//! pure core with unit tests of its own: the gate (may the subscription send now), the
//! batcher (which deliveries go together) and settle (what a result makes of them); the
//! worker is the I/O around it.

pub mod batcher;
pub mod dispatcher;
pub mod gate;
pub mod limits;
pub mod network;
pub mod policy;
pub mod request;
pub mod sender;
pub mod settle;
pub mod signing;
pub mod test_event;
mod worker;

pub use dispatcher::{DispatchError, DispatchHandle};
pub use worker::DEFAULT_MAX_IN_FLIGHT;

//! Webhook delivery: the dispatcher and its per-subscription workers, how an event becomes a
//! signed request, and what a response means for the delivery.

pub mod dispatcher;
pub mod limits;
pub mod network;
pub mod policy;
pub mod request;
pub mod sender;
pub mod signing;
pub mod test_event;
mod worker;

pub use dispatcher::{DispatchError, DispatchHandle};
pub use worker::DEFAULT_MAX_IN_FLIGHT;

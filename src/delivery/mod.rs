//! Webhook delivery: how an event becomes a signed request, and what a response means for
//! the delivery.

pub mod network;
pub mod policy;
pub mod request;
pub mod sender;
pub mod signing;

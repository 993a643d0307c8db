//! walhook: Postgres change-data-capture to signed webhooks.
//!
//! The flow is source → capture → outbox → delivery → server; each folder is one stage.

pub mod capture;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod ephemeral;
pub mod health;
pub mod http;
pub mod metrics;
pub mod os;
pub mod outbox;
pub mod pg;
pub mod server;
pub mod source;
pub mod suggest;
pub mod time;

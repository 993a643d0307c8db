//! walhook: Postgres change-data-capture to signed webhooks.
//!
//! The crate is built in floors (ARCHITECTURE.md; `tests/it/layers.rs` checks them): a
//! module imports only from floors below its own. Listed here from the bottom up.

// Foundations.
pub mod ephemeral;
pub mod http;
pub mod metrics;
pub mod os;
pub mod pg;
pub mod suggest;
pub mod text;
pub mod time;

// The config, parsed once.
pub mod config;

// The flow: source → capture → outbox → delivery.
pub mod source;
pub mod capture;
pub mod outbox;
pub mod delivery;

// Above the flow: what the daemon and the HTTP server share, the server, the daemon.
pub mod health;
pub mod server;
pub mod daemon;

// Adapters on top.
pub mod commands;
pub mod demo;

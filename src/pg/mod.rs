//! The Postgres floor under both databases walhook talks to (the source and the outbox),
//! shaped like tokio-postgres: connection strings parsed once (`conninfo`), TLS by job
//! (`tls`), ordinary SQL connections (`connect`) and one that reconnects (`client`), the one place that presents what a server
//! said with its fix (`error`), SQL text (`quote`) and WAL positions (`lsn`).
//!
//! Nothing here knows walhook's config, the replication stream or the outbox schema.

pub mod client;
pub mod connect;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod quote;
pub mod sql;
pub mod tls;

pub use client::{Reconnecting, Session};
pub use connect::{connect_sql, connect_sql_watched};
pub use conninfo::ConnInfo;
pub use error::ConnectError;
pub use lsn::Lsn;
pub use quote::{quote_ident, quote_literal, quote_table, TableName};

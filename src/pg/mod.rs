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
pub mod tls;

pub use client::{Reconnecting, Session};
pub use connect::{connect_sql, connect_sql_watched};
pub use conninfo::{ConnInfo, ConnInfoError};
pub use error::ConnectError;
pub use lsn::Lsn;
pub use quote::{quote_ident, quote_literal, quote_table, TableName};

#[cfg(test)]
mod tests {
    /// Every `crate::` path under `src/pg/`, so the floor stays the floor.
    #[test]
    fn the_foundation_imports_nothing_from_the_floors_above_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pg");
        let mut files = vec![dir];
        let mut above = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    // `ephemeral` is a foundation too (the throw-away cluster of unit tests).
                    let names_a_module = rest.starts_with(|c: char| c.is_ascii_lowercase());
                    if names_a_module
                        && !rest.starts_with("pg::")
                        && !rest.starts_with("ephemeral::")
                    {
                        above.push(format!("{}:{}: {line}", path.display(), i + 1));
                    }
                }
            }
        }
        assert!(above.is_empty(), "pg/ reaches up:\n{}", above.join("\n"));
    }
}

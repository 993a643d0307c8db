//! walhook's integration tests, as one test binary: user stories against the real `walhook`
//! binary and real Postgres. One process means one link of walhook and one shared throw-away
//! cluster (`support::cluster`) for every test that needs no server of its own; each test
//! takes a database, slot and publication named by `support::unique`, so tests running side
//! by side in threads never meet. Run one story with `cargo test --test it capture::`.

mod support;

mod admin_abuse;
mod admin_api;
mod backfill;
mod backfill_chunks;
mod backfill_cli;
mod backfill_seed;
mod backfill_upgrade;
mod capture;
mod check;
mod cli;
mod deliveries;
mod delivery;
mod delivery_edge_cases;
mod delivery_flow;
mod delivery_network;
mod delivery_routing;
mod delivery_status;
mod demo;
mod documents;
mod ephemeral_cluster;
mod examples;
mod failover;
mod layers;
mod logs;
mod metrics;
mod outbox_pipeline;
mod packaging;
mod receive;
mod receiver_snippets;
mod replay;
mod replication;
mod retention;
mod run;
mod setup;
mod shutdown;
mod state_upgrade;
mod subscriber_harness;
mod tail;
mod templates;
mod test_command;
mod wal_safety;

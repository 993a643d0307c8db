//! An idle walhook must not make the source keep WAL (SPEC §2 `source.heartbeat`): on a
//! database whose watched tables never change, the heartbeat writes a tiny WAL record every
//! `heartbeat`, the walsender catches up past it and says so with a keepalive, and walhook
//! confirms that position, so the slot keeps moving.
//!
//! Each test has a cluster of its own where nothing else writes WAL (no other tests, no
//! autovacuum, no timed checkpoint): whatever moves the slot is walhook's doing.

use crate::support;
use support::{Sub, Toml};

use std::time::{Duration, Instant};

use support::{start_daemon, ConfigFile, TestDb};
use walhook::ephemeral::{EphemeralPostgres, Options};

const SCHEMA: &str = "CREATE TABLE account_invoice (id int PRIMARY KEY, state text);";

/// How long one round of [`keeps_advancing`] may take. The heartbeat needs about two
/// seconds (the sampler's tick); Postgres's background writer logs a standby snapshot at
/// most every 15 s and only after other WAL, so without a heartbeat a second round cannot
/// succeed however long it waits.
const ROUND: Duration = Duration::from_secs(15);

/// A private cluster where only the test and walhook write WAL.
fn quiet_cluster() -> EphemeralPostgres {
    EphemeralPostgres::start(&Options {
        settings: vec![
            ("autovacuum".into(), "off".into()),
            ("checkpoint_timeout".into(), "1h".into()),
        ],
        ..Options::default()
    })
    .expect("start a private cluster")
}

struct Setup {
    config: ConfigFile,
    slot: String,
    publication: String,
}

fn setup(db: &TestDb<'_>, heartbeat: &str) -> Setup {
    let toml = Toml::new(db)
        .source(&format!("heartbeat = \"{heartbeat}\""))
        .without_delivery()
        .table("invoice", "public.account_invoice")
        .subscription(Sub::new(
            "all",
            "invoice",
            "https://hooks.example.com/invoice",
        ));
    Setup {
        config: toml.write(),
        slot: toml.slot_name().to_owned(),
        publication: toml.publication_name().to_owned(),
    }
}

/// `times` rounds of: note the server's WAL position, then wait (up to [`ROUND`]) until the
/// slot has confirmed a position past it. The first round that fails says where things
/// stood.
fn keeps_advancing(db: &TestDb<'_>, slot: &str, times: usize) -> Result<(), String> {
    for round in 1..=times {
        let written = db.sql("SELECT pg_current_wal_lsn()");
        let deadline = Instant::now() + ROUND;
        loop {
            let state = db.sql(&format!(
                "SELECT confirmed_flush_lsn > '{written}', confirmed_flush_lsn, \
                        pg_current_wal_lsn() \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ));
            let fields: Vec<&str> = state.split('|').collect();
            if fields.first() == Some(&"t") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "round {round} of {times}: the WAL was at {written}; after {ROUND:?} the \
                     slot confirms {} and the server is at {}",
                    fields.get(1).unwrap_or(&"?"),
                    fields.get(2).unwrap_or(&"?")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[test]
fn the_heartbeat_keeps_the_slot_of_an_idle_database_moving() {
    let pg = quiet_cluster();
    let db = TestDb::in_cluster(&pg, SCHEMA);
    let setup = setup(&db, "1s");
    let daemon = start_daemon(&setup.config);
    // A second slot that sees logical messages, to tell what the new WAL is.
    db.sql("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')");
    let before = db.sql("SELECT pg_current_wal_lsn()");

    if let Err(e) = keeps_advancing(&db, &setup.slot, 3) {
        panic!(
            "the heartbeat did not keep the slot moving: {e}\nlog:\n{}",
            daemon.log_text()
        );
    }

    assert_eq!(
        db.sql(&format!("SELECT pg_current_wal_lsn() > '{before}'")),
        "t",
        "the server's WAL moved"
    );
    // pgoutput 'M' messages with the prefix walhook: the heartbeat is what moved it.
    let heartbeats = db.sql(&format!(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('probe', NULL, NULL, \
           'proto_version', '1', 'publication_names', '{}', 'messages', 'true') \
         WHERE get_byte(data, 0) = ascii('M') \
           AND position('\\x77616c686f6f6b00'::bytea IN data) > 0",
        setup.publication
    ));
    assert!(
        heartbeats.parse::<u32>().unwrap() >= 2,
        "{heartbeats} heartbeat messages in the WAL"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.event"),
        "0",
        "a heartbeat is no event"
    );
    db.sql("SELECT pg_drop_replication_slot('probe')");
}

/// The control for the test above: the same check, with a heartbeat that does not come
/// during the test, fails.
#[test]
fn without_a_heartbeat_the_slot_of_an_idle_database_stands_still() {
    let pg = quiet_cluster();
    let db = TestDb::in_cluster(&pg, SCHEMA);
    let setup = setup(&db, "1h");
    let daemon = start_daemon(&setup.config);

    let result = keeps_advancing(&db, &setup.slot, 3);
    assert!(
        result.is_err(),
        "the slot kept moving with no heartbeat and no writes: the test above proves \
         nothing\nlog:\n{}",
        daemon.log_text()
    );
    // What little WAL there was (walhook's setup, a standby snapshot) is confirmed all the
    // same, once the walsender has caught up past it.
    let problem = result.unwrap_err();
    support::wait_until(ROUND, "the slot confirms the WAL written so far", || {
        db.sql(&format!(
            "SELECT confirmed_flush_lsn = pg_current_wal_lsn() FROM pg_replication_slots \
             WHERE slot_name = '{}'",
            setup.slot
        )) == "t"
    });
    eprintln!("as expected without a heartbeat: {problem}");
}

//! The replication connection against a real Postgres: logging in every way a server may ask,
//! TLS per sslmode, streaming pgoutput, acknowledging, keepalives, shutdown, and a busy slot.

use crate::support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{cluster, unique, TestDb};
use walhook::ephemeral::{self, EphemeralPostgres, Options};
use walhook::pg::conninfo::ConnInfo;
use walhook::pg::Lsn;
use walhook::pg::{connect_sql, ConnectError};
use walhook::source::replication::{
    AuthMethod, ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
};

/// Upper bound for anything that should take milliseconds, so a bug fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

/// A second cluster with TLS on and a short `wal_sender_timeout`, for the tests that need one
/// or the other; the shared cluster stays plain.
fn private_cluster() -> &'static EphemeralPostgres {
    static CLUSTER: OnceLock<EphemeralPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        EphemeralPostgres::start(&Options {
            tls: true,
            settings: vec![("wal_sender_timeout".into(), "1s".into())],
        })
        .expect("start the TLS cluster")
    })
}

fn info(url: &str) -> ConnInfo {
    url.parse().unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn connect(url: &str) -> ReplicationConnection {
    tokio::time::timeout(PATIENCE, ReplicationConnection::connect(&info(url)))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn connect_err(url: &str) -> ReplicationError {
    match tokio::time::timeout(PATIENCE, ReplicationConnection::connect(&info(url)))
        .await
        .expect("fail in time")
    {
        Ok(_) => panic!("{url}: connected, but should not have"),
        Err(e) => e,
    }
}

fn pgoutput(publication: &str) -> [(&'static str, String); 2] {
    [
        ("proto_version", "1".to_owned()),
        ("publication_names", format!("\"{publication}\"")),
    ]
}

async fn start(
    conn: ReplicationConnection,
    slot: &str,
    publication: &str,
) -> Result<ReplicationStream, ReplicationError> {
    let options = pgoutput(publication);
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    conn.start_replication(slot, Lsn::ZERO, &options).await
}

/// The next XLogData payload, skipping keepalives.
async fn next_data(stream: &mut ReplicationStream) -> (Lsn, Bytes) {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a message in time")
            .expect("streaming works")
            .expect("the server keeps streaming");
        if let ReplicationMessage::XLogData { wal_end, data, .. } = message {
            return (wal_end, data);
        }
    }
}

/// The message types of one transaction, `B` to `C`.
async fn transaction_tags(stream: &mut ReplicationStream) -> (Vec<u8>, Lsn) {
    let mut tags = Vec::new();
    loop {
        let (wal_end, data) = next_data(stream).await;
        tags.push(data[0]);
        if data[0] == b'C' {
            return (tags, wal_end);
        }
    }
}

async fn sql_one(url: &str, sql: &str) -> String {
    let client = connect_sql(&info(url))
        .await
        .unwrap_or_else(|e| panic!("SQL connection to {url}: {e}"));
    let rows = client.simple_query(sql).await.expect("query runs");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("one row")
}

fn slot_state(db: &TestDb<'_>, slot: &str) -> String {
    db.sql(&format!(
        "SELECT active::text || ' ' || coalesce(confirmed_flush_lsn::text, '') \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
}

// --- logging in -----------------------------------------------------------------------------

#[tokio::test]
async fn identify_system_over_trust_reports_the_database_and_wal_position() {
    let db = TestDb::new("");
    let mut conn = connect(&db.url).await;
    assert_eq!(conn.authentication(), AuthMethod::Trust);
    assert!(!conn.is_tls());
    let system = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(system.dbname.as_deref(), Some(db.name.as_str()));
    assert!(system.xlogpos > Lsn::ZERO, "{system:?}");
    assert!(system.timeline >= 1);
    assert!(system.systemid.parse::<u64>().is_ok(), "{system:?}");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn scram_sha_256_login_works() {
    let db = TestDb::new("");
    let url = cluster().url_as(ephemeral::SCRAM_USER, ephemeral::TEST_PASSWORD, &db.name);
    let mut conn = connect(&url).await;
    assert_eq!(conn.authentication(), AuthMethod::ScramSha256);
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
}

#[tokio::test]
async fn md5_login_works() {
    let db = TestDb::new("");
    let url = cluster().url_as(ephemeral::MD5_USER, ephemeral::TEST_PASSWORD, &db.name);
    let mut conn = connect(&url).await;
    assert_eq!(conn.authentication(), AuthMethod::Md5);
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
}

#[tokio::test]
async fn a_wrong_password_names_the_user_and_never_shows_the_password() {
    let db = TestDb::new("");
    for user in [ephemeral::SCRAM_USER, ephemeral::MD5_USER] {
        let url = cluster().url_as(user, "not-the-Pw-42", &db.name);
        let e = connect_err(&url).await;
        let text = e.to_string();
        assert!(
            matches!(&e, ReplicationError::Auth { user: u, .. } if u == user),
            "{e:?}"
        );
        assert!(
            text.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{text}"
        );
        assert!(!text.contains("not-the-Pw-42") && !format!("{e:?}").contains("not-the-Pw-42"));

        // The SQL side says the same.
        let e = connect_sql(&info(&url)).await.expect_err("wrong password");
        assert!(matches!(e, ConnectError::Auth { .. }), "{e:?}");
        assert!(!e.to_string().contains("not-the-Pw-42"));
    }
}

#[tokio::test]
async fn a_missing_password_says_the_server_asks_for_one() {
    let db = TestDb::new("");
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        ephemeral::SCRAM_USER,
        cluster().port(),
        db.name
    );
    let expected = format!(
        "the server asks for a password for user {} but the connection string has none",
        ephemeral::SCRAM_USER
    );
    let e = connect_err(&url).await;
    assert!(matches!(e, ReplicationError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains(&expected), "{e}");

    let e = connect_sql(&info(&url)).await.expect_err("no password");
    assert!(e.to_string().contains(&expected), "{e}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error_naming_host_and_port() {
    // Port 1 on loopback: nothing listens there.
    let e = connect_err("postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=5").await;
    assert!(matches!(e, ReplicationError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(!e.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_unix_socket_connects_without_tls_even_under_require() {
    let db = TestDb::new("");
    let dir = cluster()
        .data_dir()
        .parent()
        .expect("cluster root")
        .to_owned();
    let url = format!(
        "host={} port={} user=postgres dbname={} sslmode=require",
        dir.display(),
        cluster().port(),
        db.name
    );
    let mut conn = connect(&url).await;
    assert!(!conn.is_tls());
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(sql_one(&url, "SELECT current_database()").await, db.name);
}

// --- TLS ------------------------------------------------------------------------------------

fn tls_url(host: &str, db: &str, params: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/{db}?{params}",
        private_cluster().port()
    )
}

fn ca() -> String {
    private_cluster()
        .ca_cert()
        .expect("TLS cluster has a CA")
        .display()
        .to_string()
}

const SSL_IN_USE: &str = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn replication_ssl(url: &str) -> (bool, String) {
    let mut conn = connect(url).await;
    let rows = conn
        .simple_query(SSL_IN_USE)
        .await
        .expect("SELECT over replication");
    let ssl = rows[0][0].clone().expect("ssl column");
    (conn.is_tls(), ssl)
}

#[tokio::test]
async fn sslmode_require_encrypts_both_connection_kinds() {
    let url = tls_url("127.0.0.1", "postgres", "sslmode=require");
    assert_eq!(sql_one(&url, SSL_IN_USE).await, "true");
    assert_eq!(replication_ssl(&url).await, (true, "true".into()));
}

#[tokio::test]
async fn verify_full_with_the_ca_accepts_the_host_name_and_the_ip_address() {
    for host in ["localhost", "127.0.0.1"] {
        let url = tls_url(
            host,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={}", ca()),
        );
        assert_eq!(sql_one(&url, SSL_IN_USE).await, "true", "{host}");
        assert_eq!(replication_ssl(&url).await, (true, "true".into()), "{host}");
    }
}

#[tokio::test]
async fn verify_full_against_the_system_roots_rejects_a_private_ca() {
    let url = tls_url("localhost", "postgres", "sslmode=verify-full");
    let e = connect_err(&url).await;
    assert!(e.is_certificate_error(), "{e:?}");
    assert!(
        e.to_string().contains("sslrootcert"),
        "the fix is named: {e}"
    );

    match connect_sql(&info(&url)).await {
        Err(ConnectError::Tls { source, .. }) => assert!(source.is_certificate_error(), "{source}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_ca_skips_the_name_check_that_verify_full_makes() {
    // Connect to 127.0.0.1 but call it by a name the certificate does not list.
    let port = private_cluster().port();
    let url = |mode: &str| {
        format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={}",
            ca()
        )
    };
    let e = connect_err(&url("verify-full")).await;
    assert!(e.is_certificate_error(), "{e:?}");
    assert!(e.to_string().contains("does not name the host"), "{e}");
    assert_eq!(
        replication_ssl(&url("verify-ca")).await,
        (true, "true".into())
    );
}

#[tokio::test]
async fn require_with_a_root_certificate_verifies_the_chain_like_libpq() {
    // A CA that did not sign the server certificate.
    let dir = tempfile::tempdir().expect("temp dir");
    let other_ca = dir.path().join("other-ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=some other CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success());
    let url = tls_url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=require&sslrootcert={}", other_ca.display()),
    );
    let e = connect_err(&url).await;
    assert!(e.is_certificate_error(), "{e:?}");
}

#[tokio::test]
async fn sslmode_disable_stays_plain_and_prefer_takes_tls() {
    let plain = tls_url("127.0.0.1", "postgres", "sslmode=disable");
    assert_eq!(sql_one(&plain, SSL_IN_USE).await, "false");
    assert_eq!(replication_ssl(&plain).await, (false, "false".into()));

    let prefer = tls_url("127.0.0.1", "postgres", "sslmode=prefer");
    assert_eq!(sql_one(&prefer, SSL_IN_USE).await, "true");
    assert_eq!(replication_ssl(&prefer).await, (true, "true".into()));
}

#[tokio::test]
async fn require_against_a_server_without_tls_explains_itself() {
    let url = format!("{}?sslmode=require", cluster().url("postgres"));
    let e = connect_err(&url).await;
    assert!(e.to_string().contains("does not accept TLS"), "{e}");
    let e = connect_sql(&info(&url))
        .await
        .expect_err("no TLS on the server");
    assert!(e.to_string().contains("does not accept TLS"), "{e}");
}

#[tokio::test]
async fn scram_over_tls_binds_to_the_channel() {
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/postgres?sslmode=require",
        ephemeral::SCRAM_USER,
        ephemeral::TEST_PASSWORD,
        private_cluster().port()
    );
    let mut conn = connect(&url).await;
    assert_eq!(conn.authentication(), AuthMethod::ScramSha256Plus);
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    // tokio-postgres with our TlsStream binds too (channel_binding=require would fail otherwise).
    assert_eq!(
        sql_one(&format!("{url}&channel_binding=require"), SSL_IN_USE).await,
        "true"
    );
}

// --- streaming ------------------------------------------------------------------------------

#[tokio::test]
async fn an_insert_streams_begin_relation_insert_commit() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE t"));
    let slot = unique("slot");

    let mut conn = connect(&db.url).await;
    let created = conn.create_slot(&slot, true).await.expect("create slot");
    assert_eq!(created.slot_name, slot);
    assert!(created.consistent_point > Lsn::ZERO);
    let mut stream = start(conn, &slot, &publication).await.expect("start");

    db.sql("INSERT INTO t VALUES (1, 'one')");
    let (tags, _) = transaction_tags(&mut stream).await;
    assert_eq!(tags, b"BRIC", "{:?}", String::from_utf8_lossy(&tags));
    stream.close().await.expect("close");
}

#[tokio::test]
async fn next_inside_select_loses_nothing_of_large_frames() {
    let db = TestDb::new("CREATE TABLE big (id int PRIMARY KEY, v text)");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE big"));
    let slot = unique("slot");
    let mut conn = connect(&db.url).await;
    conn.create_slot(&slot, true).await.expect("create slot");
    let mut stream = start(conn, &slot, &publication).await.expect("start");

    // Rows of ~300 kB arrive in many reads; a 1 ms timer keeps cancelling `next` mid-frame.
    db.sql("INSERT INTO big SELECT g, repeat(md5(g::text), 10000) FROM generate_series(1, 20) g");
    let deadline = Instant::now() + PATIENCE;
    let mut tags = Vec::new();
    let mut cancelled = 0;
    while tags.last() != Some(&b'C') {
        assert!(Instant::now() < deadline, "stream stalled after {tags:?}");
        tokio::select! {
            message = stream.next() => {
                if let Some(ReplicationMessage::XLogData { data, .. }) = message.expect("next") {
                    if data[0] == b'I' {
                        assert!(data.len() > 300_000, "insert of {} bytes", data.len());
                    }
                    tags.push(data[0]);
                }
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
        }
    }
    let inserts = tags.iter().filter(|t| **t == b'I').count();
    assert_eq!((tags[0], inserts), (b'B', 20), "{tags:?}");
    assert!(
        cancelled > 0,
        "the timer never fired; the test proved nothing"
    );
}

#[tokio::test]
async fn acknowledging_moves_confirmed_flush_lsn() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY)");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE t"));
    let slot = unique("slot");
    let mut conn = connect(&db.url).await;
    conn.create_slot(&slot, false).await.expect("create slot");
    let mut stream = start(conn, &slot, &publication).await.expect("start");

    db.sql("INSERT INTO t VALUES (1)");
    let (_, commit_end) = transaction_tags(&mut stream).await;
    stream.acknowledge(commit_end);
    stream.send_status(false).await.expect("status update");

    let deadline = Instant::now() + PATIENCE;
    loop {
        let state = slot_state(&db, &slot);
        let confirmed: Lsn = state
            .split(' ')
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(Lsn::ZERO);
        if confirmed >= commit_end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stuck: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.close().await.expect("close");
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
}

#[tokio::test]
async fn keepalives_that_ask_for_a_reply_keep_an_idle_stream_alive() {
    // wal_sender_timeout is 1 s on the private cluster: the server asks for a reply after
    // 0.5 s of silence and hangs up after 1 s. Periodic updates are off, so only the replies
    // keep the stream up for three times the timeout.
    let pg = private_cluster();
    let db = TestDb::in_cluster(pg, "CREATE TABLE t (id int PRIMARY KEY)");
    let publication = unique("pub");
    pg.psql(
        &db.name,
        &format!("CREATE PUBLICATION {publication} FOR TABLE t"),
    )
    .expect("publication");
    let slot = unique("slot");
    let mut conn = connect(&format!("{}?sslmode=disable", pg.url(&db.name))).await;
    conn.create_slot(&slot, true).await.expect("create slot");
    let mut stream = start(conn, &slot, &publication).await.expect("start");
    stream.set_status_interval(Duration::ZERO);

    let idle_until = Instant::now() + Duration::from_secs(3);
    let mut asked = 0;
    while Instant::now() < idle_until {
        let wait = idle_until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => break,
            Ok(message) => {
                if let Some(ReplicationMessage::Keepalive {
                    reply_requested: true,
                    ..
                }) = message.expect("the connection survives")
                {
                    asked += 1;
                }
            }
        }
    }
    assert!(asked >= 3, "the server asked for {asked} replies in 3 s");

    pg.psql(&db.name, "INSERT INTO t VALUES (1)")
        .expect("insert");
    let (tags, _) = transaction_tags(&mut stream).await;
    assert_eq!(tags.first(), Some(&b'B'));
    stream.close().await.expect("close");
}

#[tokio::test]
async fn close_releases_the_slot_promptly() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY)");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE t"));
    let slot = unique("slot");
    let mut conn = connect(&db.url).await;
    conn.create_slot(&slot, false).await.expect("create slot");
    let stream = start(conn, &slot, &publication).await.expect("start");
    assert!(
        slot_state(&db, &slot).starts_with("true"),
        "active while streaming"
    );

    let began = Instant::now();
    stream.close().await.expect("close");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        began.elapsed()
    );
    assert!(
        slot_state(&db, &slot).starts_with("false"),
        "inactive after close"
    );
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
}

#[tokio::test]
async fn a_slot_in_use_elsewhere_is_a_server_error_55006() {
    let db = TestDb::new("CREATE TABLE t (id int PRIMARY KEY)");
    let publication = unique("pub");
    db.sql(&format!("CREATE PUBLICATION {publication} FOR TABLE t"));
    let slot = unique("slot");
    let mut first = connect(&db.url).await;
    first.create_slot(&slot, false).await.expect("create slot");
    let stream = start(first, &slot, &publication).await.expect("start");

    let second = connect(&db.url).await;
    let e = start(second, &slot, &publication)
        .await
        .expect_err("the slot is busy");
    assert_eq!(e.code(), Some("55006"), "{e}");
    assert!(
        e.to_string().contains("another client"),
        "the fix is named: {e}"
    );

    stream.close().await.expect("close");
    db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
}

#[tokio::test]
async fn a_missing_slot_is_a_server_error_42704() {
    let db = TestDb::new("");
    let conn = connect(&db.url).await;
    let e = start(conn, &unique("no_such_slot"), "p")
        .await
        .expect_err("no such slot");
    assert_eq!(e.code(), Some("42704"), "{e}");
}

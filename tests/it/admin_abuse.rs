//! The admin listener under abuse: clients of `/metrics` and the API can never take what
//! deliveries need (issue 12). Traffic stays on loopback and every loop is bounded.

use crate::support;
use support::{Sub, Toml};

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::http::Http;
use support::{wait_until, Daemon, Subscriber, TestDb};

/// Connections the slowloris opens: far more than the daemon's 256 file descriptors.
const HALF_SENT: usize = 600;

#[test]
fn hundreds_of_half_sent_requests_to_the_admin_port_cannot_starve_deliveries() {
    let db = TestDb::new("CREATE TABLE ledger (id int PRIMARY KEY, n int NOT NULL);");
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .table("ledger", "public.ledger")
        .subscription(Sub::new("flow", "ledger", &receiver.url("/hooks")))
        .write();
    let daemon = Daemon::start_with_open_files(&config, 256);
    let http = Http::of(&daemon);
    let addr = http.base.trim_start_matches("http://").to_owned();

    let mut held = Vec::with_capacity(HALF_SENT);
    for _ in 0..HALF_SENT {
        let Ok(mut stream) = TcpStream::connect(&addr) else {
            break;
        };
        // Headers never finished: the request stays half-sent.
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        held.push(stream);
    }
    db.sql("INSERT INTO ledger VALUES (1, 0)");
    wait_until(
        Duration::from_secs(30),
        "the delivery made while the admin port is flooded",
        || {
            db.sql("SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'")
                .trim()
                == "1"
        },
    );
    assert_eq!(receiver.count(), 1);
    drop(held);
    wait_until(Duration::from_secs(15), "/healthz answers again", || {
        http.get("/healthz").is_ok_and(|(status, _)| status == 200)
    });
    assert!(
        !daemon.log_text().contains("Too many open files"),
        "{}",
        daemon.log_text()
    );
}

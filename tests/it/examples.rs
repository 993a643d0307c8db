//! The shipped configs work: `config.example.toml` parses, and each ready config in
//! `examples/` passes `walhook check` against the demo ERP (`sql/demo/schema.sql`, plus the
//! example's own `.sql` where it has one) and, under `walhook run`, turns one business change
//! into a signed webhook of the expected type.
//!
//! The examples are used as shipped, with three honest edits made here and nowhere else:
//! - `slot`/`publication` get names of their own, because the tests share one cluster;
//! - `allow_networks` becomes `["127.0.0.0/8"]`, because the test receiver listens on
//!   loopback (the examples expect receivers on the internet, and say where to add a
//!   private network; the compose one allows its `receiver` service by name);
//! - `[http] listen` is `127.0.0.1:0` (appended by `config_file`, or replaced where the
//!   example has one) so that daemons running at once don't compete for the admin port;
//! - a `template_file` is given as the path of the shipped file, because the config is
//!   written to a directory of its own.
//!
//! URLs and secrets come from the `${NAME}`s of each example, set for the child process.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{config_file, start_daemon_with, unique, walhook, ConfigFile, SlotGuard};
use support::{verify, Seen, Subscriber, TestDb};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DEMO_SCHEMA: &str = include_str!("../../sql/demo/schema.sql");
const WAIT: Duration = Duration::from_secs(30);

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// The environment variables every shipped config references, with harmless values; the
/// daemon tests pass their own values to the child, which take precedence.
const PLACEHOLDER_ENV: &[(&str, &str)] = &[
    ("PGPASSWORD", "secret"),
    ("WALHOOK_ADMIN_TOKEN", "admin-token"),
    ("PARTNER_WEBHOOK_SECRET", SECRET),
    ("PARTNER_TOKEN", "partner-token"),
    ("CRM_PASSWORD", "crm-password"),
    ("CRM_API_KEY", "crm-key"),
    ("ERP_DATABASE_URL", "postgres://walhook@erp-db:5432/erp"),
    (
        "ACCOUNTING_WEBHOOK_URL",
        "https://books.example.com/callbacks",
    ),
    ("ACCOUNTING_WEBHOOK_SECRET", SECRET),
    ("POS_WEBHOOK_URL", "https://pos.example.com/hooks/stock"),
    ("POS_PING_URL", "https://pos.example.com/hooks/ping"),
    ("POS_WEBHOOK_SECRET", SECRET),
    ("WORKSHOP_URL", "https://workshop.example.com"),
    ("WORKSHOP_WEBHOOK_SECRET", SECRET),
    ("WORKSHOP_TOKEN", "workshop-token"),
    ("WORKSHOP_USER", "walhook"),
    ("WORKSHOP_PASSWORD", "workshop-password"),
    ("WORKSHOP_API_KEY", "workshop-key"),
    ("STOCK_WEBHOOK_URL", "https://stock.example.com/hooks"),
    ("STOCK_WEBHOOK_SECRET", SECRET),
    ("RECEIVER_URL", "http://receiver:8080"),
    ("RIVILE_API_URL", "https://api.manorivile.lt/client/v2"),
    ("RIVILE_API_KEY", "USERABC.rivile-key"),
    ("RIVILE_WEBHOOK_SECRET", SECRET),
    ("CARBOOK_URL", "https://api.carbook.example"),
    ("CARBOOK_TOKEN", "carbook-token"),
    ("CARBOOK_WEBHOOK_SECRET", SECRET),
    ("WEBHOOK_SECRET", SECRET),
];

/// `Config::load` of `path` with [`PLACEHOLDER_ENV`] as the whole environment (so
/// `WALHOOK_SOURCE_URL` is unset). Not `std::env::set_var`: every test of this binary shares
/// the process environment, and the daemons of other tests would inherit the placeholders.
fn load_with_placeholders(
    path: &Path,
) -> Result<walhook::config::Config, walhook::config::ConfigError> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    walhook::config::Config::parse(&text, &path.display().to_string(), &|name| {
        PLACEHOLDER_ENV
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    })
}

#[test]
fn config_example_parses_with_every_section() {
    let config = load_with_placeholders(&repo_file("config.example.toml"))
        .unwrap_or_else(|e| panic!("config.example.toml: {e}"));
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.subscriptions.len(), 5);
    let rest = config.subscription("orders-rest").expect("orders-rest");
    assert_eq!(rest.object.name, "sale.order");
    assert!(rest.url_template && rest.method.single().is_none() && rest.template.is_some());
    let full = config.subscription("partner-sync").expect("partner-sync");
    assert!(full.batch.is_some() && full.rate_limit.is_some());
    assert_eq!(full.event_type.as_deref(), Some("invoice.partner-changed"));
}

#[test]
fn every_example_parses() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(repo_file("examples"))
        .expect("examples/")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for path in names {
        load_with_placeholders(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// One example ready to run against a fresh demo database.
struct Example {
    db: TestDb<'static>,
    config: ConfigFile,
    env: Vec<(String, String)>,
    _slot: SlotGuard,
}

impl Example {
    /// Starts `walhook run` on the example with its environment.
    fn start(&self) -> support::Daemon {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        start_daemon_with(&self.config, &[], &env)
    }

    /// `examples/NAME.toml` against the demo schema plus `extra_sql`, with `env` (and
    /// `ERP_DATABASE_URL`) set for walhook.
    fn new(name: &str, extra_sql: &str, env: &[(&str, &str)]) -> Example {
        let db = TestDb::new(&format!("{DEMO_SCHEMA}\n{extra_sql}"));
        let text = std::fs::read_to_string(repo_file(&format!("examples/{name}.toml")))
            .expect("read the example");
        let slot = unique("slot");
        let mut edits = [0; 3];
        let text: String = text
            .lines()
            .map(|line| {
                if line.starts_with("slot = ") {
                    edits[0] += 1;
                    format!("slot = \"{slot}\"")
                } else if line.starts_with("publication = ") {
                    edits[1] += 1;
                    format!("publication = \"{}\"", unique("pub"))
                } else if line.starts_with("allow_networks = ") {
                    edits[2] += 1;
                    "allow_networks = [\"127.0.0.0/8\"]".to_owned()
                } else if line.starts_with("listen = ") {
                    "listen = \"127.0.0.1:0\"".to_owned()
                } else if let Some(path) = line.strip_prefix("template_file = \"") {
                    let path = repo_file("examples").join(path.trim_end_matches('"'));
                    format!("template_file = {:?}", path.display().to_string())
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            edits,
            [1, 1, 1],
            "{name}: slot, publication, allow_networks"
        );
        let mut vars = vec![("ERP_DATABASE_URL".to_owned(), db.url.clone())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Example {
            _slot: SlotGuard::new(&db, &slot),
            config: config_file(&text),
            env: vars,
            db,
        }
    }

    /// `walhook check` finds nothing wrong.
    fn check(&self) {
        let out = walhook(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("check")
            .output()
            .expect("run walhook check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(!stdout.contains("PROBLEM"), "{stdout}");
    }
}

/// The request's body as one event (or the only event of a batch of one).
fn event(seen: &Seen) -> Value {
    verify(seen, SECRET).unwrap_or_else(|e| panic!("signature: {e}"));
    seen.json()
}

#[test]
fn accounting_callbacks_send_old_and_new_values_with_the_lines_nested() {
    let receiver = Subscriber::start();
    let url = receiver.url("/callbacks");
    let example = Example::new(
        "accounting-callbacks",
        "INSERT INTO account_invoice (number, partner_id, state, amount_total) \
         VALUES ('INV/2026/0001', 1, 'posted', 120.00); \
         INSERT INTO account_invoice_line (invoice_id, product, quantity, price_unit) \
         VALUES (1, 'Oak board 2 m', 5, 24.00);",
        &[
            ("ACCOUNTING_WEBHOOK_URL", &url),
            ("ACCOUNTING_WEBHOOK_SECRET", SECRET),
        ],
    );
    example.check();
    let daemon = example.start();

    // The date is not watched: nothing. Then the partner changes: one callback.
    example
        .db
        .sql("UPDATE account_invoice SET invoice_date = '2026-01-02' WHERE id = 1");
    example
        .db
        .sql("UPDATE account_invoice SET partner_id = 2 WHERE id = 1");

    let seen = receiver.wait_for(1, WAIT);
    let body = event(&seen[0]);
    assert_eq!(body["type"], "invoice.changed", "{body}");
    assert_eq!(body["values"]["partner_id"], 2, "{body}");
    assert_eq!(body["previous"]["partner_id"], 1, "{body}");
    assert_eq!(body["changed"], serde_json::json!(["partner_id"]), "{body}");
    assert_eq!(
        body["values"]["invoice_lines"],
        serde_json::json!([{"product": "Oak board 2 m", "quantity": "5.000", "price_unit": "24.00"}]),
        "an invoice that existed before walhook started has its lines: {body}"
    );

    // A line is added: one callback naming the lines, the old ones in `previous`.
    example.db.sql(
        "INSERT INTO account_invoice_line (invoice_id, product, quantity, price_unit) \
         VALUES (1, 'Wood screws, box', 1, 6.00)",
    );
    let seen = receiver.wait_for(2, WAIT);
    let body = event(&seen[1]);
    assert_eq!(
        body["changed"],
        serde_json::json!(["invoice_lines"]),
        "{body}"
    );
    assert_eq!(
        body["values"]["invoice_lines"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        body["previous"]["invoice_lines"].as_array().map(Vec::len),
        Some(1)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 2, "log:\n{}", daemon.log_text());
}

#[test]
fn pos_stock_sends_moves_as_json_arrays() {
    let receiver = Subscriber::start();
    let url = receiver.url("/pos/stock");
    let example = Example::new(
        "pos-stock",
        "",
        &[("POS_WEBHOOK_URL", &url), ("POS_WEBHOOK_SECRET", SECRET)],
    );
    example.check();
    let _daemon = example.start();

    example.db.sql(
        "INSERT INTO stock_move (product, quantity, location, destination, reference) VALUES \
         ('Oak board 2 m', 3, 'WH/Stock', 'Customers', 'POS/0001'), \
         ('Oak table, 180 cm', 1, 'WH/Stock', 'Customers', 'POS/0001')",
    );

    // Usually one array of two; an array of one and another of one if the batch window
    // closed between them.
    support::wait_until(WAIT, "two stock moves arrive", || {
        receiver.all_event_ids().len() >= 2
    });
    let mut events = Vec::new();
    for request in receiver.requests() {
        match event(&request) {
            Value::Array(batch) => events.extend(batch),
            other => panic!("not a JSON array: {other}"),
        }
    }
    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(event["type"], "stock_move.created", "{event}");
        assert_eq!(event["values"]["reference"], "POS/0001", "{event}");
    }
}

#[test]
fn pos_stock_ping_sends_a_signed_get_without_body() {
    let receiver = Subscriber::start();
    let url = receiver.url("/pos/ping");
    let example = Example::new(
        "pos-stock-ping",
        "",
        &[("POS_PING_URL", &url), ("POS_WEBHOOK_SECRET", SECRET)],
    );
    example.check();
    let _daemon = example.start();

    example.db.sql(
        "INSERT INTO stock_move (product, quantity, location, destination) \
         VALUES ('Oak board 2 m', -1, 'WH/Stock', 'Customers')",
    );

    let seen = receiver.wait_for(1, WAIT);
    let ping = &seen[0];
    assert_eq!(ping.method, "GET");
    assert_eq!(ping.path, "/pos/ping");
    assert!(ping.body.is_empty(), "{}", ping.text());
    verify(ping, SECRET).unwrap_or_else(|e| panic!("signature: {e}"));
    let id = ping.header("webhook-id").expect("webhook-id");
    assert!(id.starts_with("evt_"), "{id}");
}

#[test]
fn workshop_sends_with_bearer_basic_and_custom_header_auth() {
    let receiver = Subscriber::start();
    let base = receiver.url("");
    let base = base.trim_end_matches('/');
    let example = Example::new(
        "workshop",
        "",
        &[
            ("WORKSHOP_URL", base),
            ("WORKSHOP_WEBHOOK_SECRET", SECRET),
            ("WORKSHOP_TOKEN", "t0ken"),
            ("WORKSHOP_USER", "carbook"),
            ("WORKSHOP_PASSWORD", "pa55"),
            ("WORKSHOP_API_KEY", "k3y"),
        ],
    );
    example.check();
    let _daemon = example.start();

    example
        .db
        .sql("UPDATE work_order SET status = 'done', operator = 'Jonas' WHERE id = 1");

    let mut seen = receiver.wait_for(3, WAIT);
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/hooks/done", "/hooks/status", "/hooks/work-orders"]
    );

    let done = event(&seen[0]);
    assert_eq!(done["type"], "work_order.done", "{done}");
    assert_eq!(seen[0].header("x-api-key"), Some("k3y"));
    assert_eq!(seen[0].header("x-workshop"), Some("main"));

    let status = event(&seen[1]);
    assert_eq!(status["type"], "work_order.status-changed", "{status}");
    assert_eq!(status["previous"]["status"], "ready", "{status}");
    assert_eq!(status["values"]["status"], "done", "{status}");
    // base64("carbook:pa55")
    assert_eq!(
        seen[1].header("authorization"),
        Some("Basic Y2FyYm9vazpwYTU1")
    );

    let all = event(&seen[2]);
    assert_eq!(all["type"], "work_order.updated", "{all}");
    assert_eq!(seen[2].header("authorization"), Some("Bearer t0ken"));
}

#[test]
fn stock_events_are_named_and_rate_limited() {
    let receiver = Subscriber::start();
    let url = receiver.url("/stock");
    let example = Example::new(
        "stock-events",
        include_str!("../../examples/stock-events.sql"),
        &[
            ("STOCK_WEBHOOK_URL", &url),
            ("STOCK_WEBHOOK_SECRET", SECRET),
        ],
    );
    let text = std::fs::read_to_string(&example.config.path).expect("read config");
    let env = |name: &str| {
        example
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let config = walhook::config::Config::parse(&text, "stock-events.toml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    for subscription in &config.subscriptions {
        let limit = subscription.rate_limit.as_ref().expect("a rate limit");
        assert_eq!(
            (limit.per_second, limit.burst),
            (15.0, 20),
            "{}",
            subscription.name
        );
    }
    example.check();
    let _daemon = example.start();

    // The price is not watched; the stock is.
    example
        .db
        .sql("UPDATE article SET price = 900 WHERE code = 'OAK-180'");
    example
        .db
        .sql("UPDATE article SET stock = stock - 1 WHERE code = 'OAK-180'");
    let seen = receiver.wait_for(1, WAIT);
    let changed = event(&seen[0]);
    assert_eq!(changed["type"], "article.stock-changed", "{changed}");
    assert_eq!(changed["previous"]["stock"], "4.000", "{changed}");
    assert_eq!(changed["values"]["stock"], "3.000", "{changed}");

    example.db.sql(
        "INSERT INTO stock_move (product, quantity, location, destination) \
         VALUES ('Oak table, 180 cm', 1, 'WH/Stock', 'Customers')",
    );
    let seen = receiver.wait_for(2, WAIT);
    let moved = event(&seen[1]);
    assert_eq!(moved["type"], "stock.moved", "{moved}");
    assert_eq!(moved["values"]["product"], "Oak table, 180 cm", "{moved}");
}

#[test]
fn compose_config_delivers_invoice_changes() {
    let receiver = Subscriber::start();
    let base = receiver.url("");
    let example = Example::new(
        "compose",
        "INSERT INTO account_invoice (number, partner_id, state, amount_total) \
         VALUES ('INV/2026/0002', 1, 'draft', 80.00);",
        &[
            ("RECEIVER_URL", base.trim_end_matches('/')),
            ("WEBHOOK_SECRET", SECRET),
            ("WALHOOK_ADMIN_TOKEN", "change-me"),
        ],
    );
    example.check();
    let _daemon = example.start();

    example
        .db
        .sql("UPDATE account_invoice SET state = 'posted' WHERE id = 1");
    let seen = receiver.wait_for(1, WAIT);
    assert_eq!(seen[0].path, "/hooks/invoices");
    let body = event(&seen[0]);
    assert_eq!(body["type"], "invoice.changed", "{body}");
    assert_eq!(body["previous"]["state"], "draft", "{body}");
}

/// The text of each element named `tag` in `xml`, unescaped, after checking that the
/// whole document is well-formed XML.
fn xml_texts(xml: &str, tag: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML ({e}): {xml}"),
        }
    }
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .map(|rest| {
            let text = rest.split(&close).next().expect("closed");
            quick_xml::escape::unescape(text)
                .expect("known entities")
                .into_owned()
        })
        .collect()
}

#[test]
fn rivile_gets_each_insert_update_and_delete_as_its_xml_with_oper_i_u_d() {
    let receiver = Subscriber::start();
    let url = receiver.url("/client/v2");
    // Rivile's answers: 400 for data it refuses, a 500 once (a server error, as its gateway gives when it restarts).
    let flaked = std::sync::atomic::AtomicBool::new(false);
    receiver.respond(move |seen| {
        let text = seen.text();
        if text.contains("REJECTED") {
            support::Reply::status(400)
                .body("<RET_DOK><errorMessage>Nėra operacijos</errorMessage></RET_DOK>")
        } else if text.contains("FLAKY") && !flaked.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            support::Reply::status(500)
        } else {
            support::Reply::status(200)
        }
    });
    let example = Example::new(
        "rivile-i13",
        include_str!("../../examples/rivile-i13.sql"),
        &[
            ("RIVILE_API_URL", &url),
            ("RIVILE_API_KEY", "USERABC.rivile-key"),
            ("RIVILE_WEBHOOK_SECRET", SECRET),
        ],
    );
    example.check();
    let daemon = example.start();

    // A document number holding every character XML must escape.
    let number = r#"INV<&>"'1"#;
    example.db.sql(&format!(
        "INSERT INTO account_payment (invoice_number, account_code, amount) \
         VALUES ('{}', '2703', 19.62)",
        number.replace('\'', "''")
    ));
    example
        .db
        .sql("UPDATE account_payment SET amount = 20.05 WHERE id = 1");
    example.db.sql("DELETE FROM account_payment WHERE id = 1");
    let seen = receiver.wait_for(3, WAIT);
    for (request, oper) in seen.iter().zip(["I", "U", "D"]) {
        verify(request, SECRET).unwrap_or_else(|e| panic!("signature: {e}"));
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/client/v2");
        assert_eq!(request.header("content-type"), Some("application/xml"));
        assert_eq!(request.header("apikey"), Some("USERABC.rivile-key"));
        let xml = request.text();
        assert_eq!(xml_texts(&xml, "method"), ["EDIT_I13"], "{xml}");
        assert_eq!(xml_texts(&xml, "oper"), [oper], "{xml}");
        assert_eq!(xml_texts(&xml, "I13_KODAS_PO"), [number], "{xml}");
        assert_eq!(xml_texts(&xml, "I13_EIL_NR"), ["1"], "{xml}");
    }
    assert_eq!(xml_texts(&seen[0].text(), "I13_SUMA"), ["19.62"]);
    assert_eq!(xml_texts(&seen[1].text(), "I13_SUMA"), ["20.05"]);
    assert!(xml_texts(&seen[2].text(), "I13_SUMA").is_empty());

    // Refused data is dead after its one attempt; a gateway error is retried.
    example.db.sql(
        "INSERT INTO account_payment (invoice_number, account_code, amount) VALUES \
         ('REJECTED-1', '2703', 1), ('FLAKY-1', '2703', 2)",
    );
    let outcome = |number: &str| {
        example.db.sql(&format!(
            "SELECT d.status || ' ' || d.attempts FROM walhook.delivery d \
             JOIN walhook.event e ON e.seq = d.event_seq \
             WHERE convert_from(e.body, 'UTF8') LIKE '%{number}%'"
        ))
    };
    support::wait_until(WAIT, "the refused and the flaky payment settle", || {
        outcome("REJECTED-1") == "dead 1" && outcome("FLAKY-1") == "delivered 2"
    });
    let rejected = receiver
        .requests()
        .into_iter()
        .filter(|r| r.text().contains("REJECTED-1"))
        .count();
    assert_eq!(rejected, 1, "log:\n{}", daemon.log_text());
}

#[test]
fn carbook_orders_reach_their_rest_paths_in_camel_case() {
    let receiver = Subscriber::start();
    let base = receiver.url("");
    let example = Example::new(
        "carbook-rest",
        include_str!("../../examples/carbook-rest.sql"),
        &[
            ("CARBOOK_URL", base.trim_end_matches('/')),
            ("CARBOOK_TOKEN", "carbook-token"),
            ("CARBOOK_WEBHOOK_SECRET", SECRET),
        ],
    );
    example.check();
    let _daemon = example.start();

    example.db.sql(
        "INSERT INTO service_order (business_id, client_vehicle_id, vehicle_number, \
         begin_datetime) VALUES (4958, 77, 'AA1234BB', '2025-04-25 17:07:00')",
    );
    example
        .db
        .sql("UPDATE service_order SET status = 'in_progress' WHERE id = 1");
    example.db.sql("DELETE FROM service_order WHERE id = 1");
    let seen = receiver.wait_for(3, WAIT);
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST", "/orders/1"),
            ("PUT", "/orders/1"),
            ("DELETE", "/orders/1")
        ]
    );
    for request in &seen {
        verify(request, SECRET).unwrap_or_else(|e| panic!("signature: {e}"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("authorization"),
            Some("Bearer carbook-token")
        );
    }
    let created = seen[0].json();
    assert_eq!(created["businessId"], 4958, "{created}");
    assert_eq!(created["clientVehicleId"], 77, "{created}");
    assert_eq!(created["beginDatetime"], "2025-04-25 17:07:00", "{created}");
    assert!(created.get("business_id").is_none(), "{created}");
    assert_eq!(seen[1].json()["status"], "in_progress");
    // A delete has no values: its body is JSON null.
    assert_eq!(seen[2].json(), Value::Null);
}

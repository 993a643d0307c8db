//! Payload templates and routing (SPEC §4a): the receiver's format, refused at load when it
//! cannot work, rendered once at capture, and a failure on one row is a dead delivery that a
//! replay after the fix sends rendered. Real Postgres, real daemon, real receiver.

use crate::support;
use support::{Object, Sub, Toml};

use std::time::Duration;

use support::{
    config_file, run_walhook, start_daemon, verify, wait_until, walhook, Subscriber, TestDb,
    WEBHOOK_SECRET,
};

const ERP: &str = "
CREATE TABLE account_invoice (id int PRIMARY KEY, number text, partner_id int, state text,
                              amount numeric(12, 2));
";

const WAIT: Duration = Duration::from_secs(30);

/// A config with one `invoice` object and subscription `erp` to `url`, plus `lines`.
fn config(db: &TestDb<'_>, url: &str, lines: &str) -> String {
    Toml::new(db)
        .object(Object::new("invoice", "public.account_invoice").fields(&[
            "number",
            "partner_id",
            "state",
            "amount",
        ]))
        .subscription(
            Sub::new("erp", "invoice", url)
                .secret(WEBHOOK_SECRET)
                .with(lines),
        )
        .text()
}

/// The 1-based line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

/// `check` and `run` both refuse `text` with a message holding every one of `parts`.
fn assert_refused(text: &str, files: &[(&str, &str)], parts: &[String]) {
    let file = config_file(text);
    for (name, content) in files {
        std::fs::write(file.path.with_file_name(name), content).expect("write template");
    }
    let check = run_walhook(&file, &["check"]);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        [2, 3].contains(&check.code) && parts.iter().all(|p| said.contains(p.as_str())),
        "check (exit {}) did not say {parts:?}:\n{said}",
        check.code
    );
    let mut daemon = support::Daemon::start(&file);
    let code = daemon.wait(WAIT);
    let log = daemon.log_text();
    assert_eq!(code, Some(2), "run:\n{log}");
    assert!(
        parts.iter().all(|p| log.contains(p.as_str())),
        "run did not say {parts:?}:\n{log}"
    );
}

#[test]
fn every_template_mistake_is_refused_at_load_naming_where_it_is_written() {
    let db = TestDb::new(ERP);
    let url = "https://erp.example.com/hooks";

    // A syntax error in an inline template: the config file's own line, and the
    // template's line and column.
    let text = config(
        &db,
        url,
        "template = '''\n<invoice>\n  {{ values.number }\n</invoice>'''",
    );
    let line = line_of(&text, "template = ") + 2;
    assert_refused(
        &text,
        &[],
        &[
            format!(
                "walhook.toml:{line}: subscriptions[0].template: syntax error: unexpected `}}`"
            ),
            "(template line 2, column 20)".into(),
        ],
    );

    // The same in a template file: that file and line.
    let text = config(&db, url, "template_file = \"invoice.xml.j2\"");
    let line = line_of(&text, "template_file = ");
    assert_refused(
        &text,
        &[(
            "invoice.xml.j2",
            "<invoice>\n  {{ values.number }\n</invoice>\n",
        )],
        &[
            "invoice.xml.j2:2:20: syntax error: unexpected `}`".into(),
            format!("walhook.toml:{line}: subscriptions[0].template_file)"),
        ],
    );

    // A variable the event does not have.
    let text = config(&db, url, "template = \"{{ value.number }}\"");
    let line = line_of(&text, "template = ");
    assert_refused(
        &text,
        &[],
        &[format!(
            "walhook.toml:{line}: subscriptions[0].template: \"value\" is not a variable a \
             template can read (id, type, timestamp, object, operation, key, values, previous, \
             changed, unavailable, source, cascade, restart_identity); did you mean \"values\"?"
        )],
    );

    // A field the object does not have.
    let text = config(&db, url, "template = \"{{ values.numbr }}\"");
    let line = line_of(&text, "template = ");
    assert_refused(
        &text,
        &[],
        &[format!(
            "walhook.toml:{line}: subscriptions[0].template: reads values.numbr, but \"numbr\" \
             is not a field of object \"invoice\"; did you mean \"number\"?"
        )],
    );

    // A template that works for new rows but not for a delete, whose `values` is null.
    let text = config(&db, url, "template = \"{{ values.partner_id + 1 }}\"");
    let line = line_of(&text, "template = ");
    assert_refused(
        &text,
        &[],
        &[format!(
            "walhook.toml:{line}: subscriptions[0].template: fails on a synthetic delete event \
             of object \"invoice\": template: invalid operation: tried to use + operator on \
             unsupported types undefined and number"
        )],
    );

    // A batch is a JSON array of bodies: a body that is not JSON cannot be in one.
    let text = config(
        &db,
        url,
        "template = \"<invoice>{{ values.number }}</invoice>\"\n\
         batch = { max_events = 10, max_wait = \"100ms\" }",
    );
    let line = line_of(&text, "template = ");
    assert_refused(
        &text,
        &[],
        &[
            format!("walhook.toml:{line}: subscriptions[0].template: fails on a synthetic create"),
            "the body is not JSON".into(),
        ],
    );

    // A URL template must keep its scheme written out.
    let text = config(&db, "{{ values.state }}://erp.example.com/{{ key.id }}", "");
    let line = line_of(&text, "url = \"{{");
    assert_refused(
        &text,
        &[],
        &[format!(
            "walhook.toml:{line}: subscriptions[0].url: invalid URL \"{{{{ values.state }}}}://\
             erp.example.com/{{{{ key.id }}}}\": scheme must be http or https (write it out \
             before any {{{{ … }}}})"
        )],
    );
}

#[test]
fn a_template_that_fails_on_one_row_makes_that_delivery_dead_and_a_replay_after_the_fix_sends_it_rendered(
) {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    // `+ 1` fails on a row without a partner: text and numbers render, NULL does not add.
    let broken = config(
        &db,
        &receiver.url("/erp"),
        "operations = [\"create\"]\ntemplate = '{\"partner\": {{ values.partner_id + 1 }}}'",
    );
    let file = config_file(&broken);
    let daemon = start_daemon(&file);

    db.sql("INSERT INTO account_invoice (id, number, partner_id) VALUES (1, 'INV-1', NULL)");
    db.sql("INSERT INTO account_invoice (id, number, partner_id) VALUES (2, 'INV-2', 41)");
    // The stream flows past the broken row.
    let seen = receiver.wait_for(1, WAIT);
    assert_eq!(seen[0].json(), serde_json::json!({"partner": 42}));
    verify(&seen[0], WEBHOOK_SECRET).expect("signed over the rendered bytes");

    // The broken one is dead, with the error, in `walhook deliveries`.
    let deliveries = || {
        let out = run_walhook(
            &file,
            &["deliveries", "--subscription", "erp", "--status", "dead"],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    wait_until(WAIT, "the broken row's delivery is dead", || {
        deliveries().contains("template:")
    });
    let listed = deliveries();
    assert!(
        listed.contains("failed at capture: template: invalid operation: trie"),
        "{listed}"
    );

    // A replay with the template still broken renders again, fails again, and says so.
    let out = run_walhook(
        &file,
        &["replay", "--subscription", "erp", "--status", "dead"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("stay dead because the subscription's templates still fail"),
        "{}",
        out.stdout
    );

    // Fixed (a reload picks the edit up), the replay sends the row rendered.
    let fixed = broken.replace(
        "{{ values.partner_id + 1 }}",
        "{{ values.partner_id|tojson }}",
    );
    std::fs::write(
        &file.path,
        format!("{fixed}\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .expect("edit config");
    daemon.signal("HUP");
    wait_until(WAIT, "the reload", || {
        daemon.log_text().contains("reloaded")
    });
    let out = run_walhook(
        &file,
        &["replay", "--subscription", "erp", "--status", "dead"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("stay dead"), "{}", out.stdout);
    let seen = receiver.wait_for(2, WAIT);
    assert_eq!(seen[1].json(), serde_json::json!({"partner": null}));
    assert_eq!(
        seen[1].header("content-type"),
        Some("application/json"),
        "log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn a_batch_of_a_json_template_is_the_array_of_the_rendered_bodies() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let text = config(
        &db,
        &receiver.url("/erp"),
        "template = '{{ {\"invoice\": values.number, \"op\": operation|oper(create=\"I\", update=\"U\", delete=\"D\")}|tojson }}'\n\
         batch = { max_events = 10, max_wait = \"300ms\" }",
    );
    let file = config_file(&text);
    let _daemon = start_daemon(&file);
    db.sql(
        "BEGIN; INSERT INTO account_invoice (id, number) VALUES (1, 'INV-1'), (2, 'INV-2'); \
         UPDATE account_invoice SET state = 'posted' WHERE id = 1; COMMIT;",
    );
    wait_until(WAIT, "three rendered bodies", || {
        receiver
            .requests()
            .iter()
            .map(|r| r.json().as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 3
    });
    let mut bodies = Vec::new();
    for request in receiver.requests() {
        verify(&request, WEBHOOK_SECRET).expect("signed");
        match request.json() {
            serde_json::Value::Array(items) => bodies.extend(items),
            other => panic!("not an array: {other}"),
        }
    }
    bodies.sort_by_key(|b| b.to_string());
    assert_eq!(
        bodies,
        [
            serde_json::json!({"invoice": "INV-1", "op": "I"}),
            serde_json::json!({"invoice": "INV-1", "op": "U"}),
            serde_json::json!({"invoice": "INV-2", "op": "I"}),
        ]
    );
}

#[test]
fn walhook_test_shows_the_rendered_request_before_anything_is_sent_for_real() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let text = config(
        &db,
        &format!("{}/{{{{ key.id }}}}", receiver.url("/orders")),
        "method = { create = \"POST\", update = \"PUT\", delete = \"DELETE\" }\n\
         content_type = \"application/xml\"\n\
         auth = { type = \"bearer\", token = \"very-secret-token\" }\n\
         template = '<order><number>{{ values.number }}</number></order>'",
    );
    let file = config_file(&text);
    let out = walhook(&file)
        .args(["test", "erp"])
        .output()
        .expect("run walhook test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The test event is an update: PUT to the row's own path, with the rendered XML.
    assert!(
        stdout.contains("request: PUT http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("/orders/1\n"), "{stdout}");
    assert!(stdout.contains("Content-Type: application/xml"), "{stdout}");
    assert!(
        stdout.contains("Authorization: Bearer (hidden)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("body: <order><number>test</number></order>"),
        "{stdout}"
    );
    assert!(!stdout.contains("very-secret-token"), "{stdout}");
    let seen = receiver.wait_for(1, WAIT);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PUT", "/orders/1")
    );
    assert_eq!(seen[0].text(), "<order><number>test</number></order>");
}

#[test]
fn walhook_test_hides_a_token_in_the_query_of_a_rendered_url() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let text = config(
        &db,
        &format!(
            "{}/{{{{ key.id }}}}?token=url-token-in-query",
            receiver.url("/orders")
        ),
        "",
    );
    let file = config_file(&text);
    let out = walhook(&file)
        .args(["test", "erp"])
        .output()
        .expect("run walhook test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("/orders/1?token=***"), "{stdout}");
    assert!(!stdout.contains("url-token-in-query"), "{stdout}");
    let seen = receiver.wait_for(1, WAIT);
    assert_eq!(
        seen[0].path, "/orders/1?token=url-token-in-query",
        "the request itself carries the token"
    );
}

#[test]
fn a_truncate_reaches_a_templated_subscription_rendered_with_its_options() {
    let db = TestDb::new(ERP);
    let receiver = Subscriber::start();
    let text = config(
        &db,
        &receiver.url("/erp"),
        "operations = [\"truncate\"]\n\
         method = { truncate = \"DELETE\" }\n\
         template = '{\"wipe\": \"{{ object }}\", \"op\": \"{{ operation }}\", \"cascade\": {{ cascade|tojson }}}'",
    );
    let file = config_file(&text);
    let _daemon = start_daemon(&file);
    db.sql("INSERT INTO account_invoice (id, number) VALUES (1, 'INV-1')");
    db.sql("TRUNCATE account_invoice");
    let seen = receiver.wait_for(1, WAIT);
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(
        seen[0].json(),
        serde_json::json!({"wipe": "invoice", "op": "truncate", "cascade": false})
    );
    verify(&seen[0], WEBHOOK_SECRET).expect("signed");
}

//! Loading stories: the SPEC example, defaults, overrides, helpers, secrets.
//! Every error message a user can see is pinned in `errors.rs`.

mod documents;
mod errors;

use std::time::Duration;

use super::*;

/// The example of SPEC §2, verbatim.
const SPEC_EXAMPLE: &str = r#"[source]
url = "postgres://walhook:${PGPASSWORD}@erp-db:5432/erp?sslmode=verify-full"
slot = "walhook"              # logical replication slot (pgoutput)
publication = "walhook"       # managed: walhook adds/removes the configured tables
max_retained_wal = "20GB"     # warn + metric when the slot holds more WAL than this
heartbeat = "30s"             # keep an idle slot advancing

[outbox]
# url = "postgres://…"        # default: the source database
schema = "walhook"
retention = "30d"             # delivered/dead rows and attempts older than this go

[http]
listen = "127.0.0.1:9187"     # /metrics, /healthz, /readyz, /api/v1/…
# admin_token = "${WALHOOK_ADMIN_TOKEN}"   # required for write calls; for all calls when not on loopback

[delivery]                    # defaults for every subscription
timeout = "15s"
retry_schedule = ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]   # then dead
max_in_flight = 256           # across all subscriptions
allow_networks = []           # CIDRs / host names that may be private; see §6
shutdown_timeout = "30s"      # how long SIGTERM waits for in-flight requests

[objects.invoice]             # a business object = a table (+ how to key and name it)
table = "public.account_invoice"
key = ["id"]                  # default: the primary key
fields = ["number", "partner_id", "state", "amount_total"]   # default: every column

[[subscriptions]]
name = "partner-sync"                   # unique, [a-z0-9_-]+
object = "invoice"                      # or: table = "public.x" for an unnamed object
operations = ["update"]                 # create | update | delete; default all three
watch = ["partner_id", "state"]         # update fires only if one of these changed; default any field
when = "values.state != 'draft'"        # optional expression over values / previous / operation
event_type = "invoice.partner-changed"  # default "<object>.<created|updated|deleted>"
url = "https://partner.example.com/hooks/invoice"
method = "POST"                         # POST (JSON body) | GET (ping: no body)
secret = "${PARTNER_WEBHOOK_SECRET}"    # whsec_… ; signs every request (§4)
auth = { type = "bearer", token = "${PARTNER_TOKEN}" }   # or basic {username,password}, or header {name,value}
headers = { "X-Tenant" = "42" }
batch = { max_events = 100, max_wait = "500ms" }          # optional: body is a JSON array
rate_limit = { per_second = 15, burst = 20 }              # optional token bucket
max_in_flight = 8
ordering = "key"                        # key (default) | none
active = true
"#;

/// A valid Standard Webhooks secret (24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The environment the tests run in; nothing comes from the real process environment.
fn env(name: &str) -> Option<String> {
    match name {
        "PGPASSWORD" => Some("pg-pass-123".into()),
        "PARTNER_WEBHOOK_SECRET" => Some(SECRET.into()),
        "PARTNER_TOKEN" => Some("partner-token-456".into()),
        _ => None,
    }
}

/// Parses `text` as `walhook.toml` with [`env`].
fn load(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "walhook.toml", &env)
}

/// The smallest useful config: a source, one object, one subscription.
const MINIMAL: &str = r#"
[source]
url = "postgres://walhook@db/erp"

[objects.invoice]
table = "account_invoice"

[[subscriptions]]
name = "all-invoices"
object = "invoice"
url = "https://hooks.example.com/in"
"#;

#[test]
fn spec_example_loads_with_its_values() {
    let config = load(SPEC_EXAMPLE).unwrap();

    assert_eq!(
        config.source.url.expose(),
        "postgres://walhook:pg-pass-123@erp-db:5432/erp?sslmode=verify-full"
    );
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.source.publication, "walhook");
    assert_eq!(config.source.max_retained_wal, 20_000_000_000);
    assert_eq!(config.source.heartbeat, Duration::from_secs(30));
    assert!(config.outbox.url.is_none());
    assert_eq!(config.outbox.schema, "walhook");
    assert_eq!(config.outbox.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9187");
    assert!(config.http.admin_token.is_none());
    assert_eq!(config.delivery.timeout, Duration::from_secs(15));
    assert_eq!(
        config.delivery.retry_schedule,
        DEFAULT_RETRY_SCHEDULE.to_vec()
    );
    assert_eq!(config.delivery.max_in_flight, 256);
    assert!(config.delivery.allow_networks.is_empty());
    assert_eq!(config.delivery.shutdown_timeout, Duration::from_secs(30));

    let invoice = &config.objects["invoice"];
    assert_eq!(invoice.table.to_string(), "public.account_invoice");
    assert_eq!(invoice.key, Some(vec!["id".to_owned()]));
    assert_eq!(
        invoice.fields,
        Some(
            ["number", "partner_id", "state", "amount_total"]
                .map(String::from)
                .to_vec()
        )
    );

    let sub = &config.subscriptions[0];
    assert_eq!(sub.name, "partner-sync");
    assert_eq!(sub.object.name, "invoice");
    assert!(!sub.object.unnamed);
    assert_eq!(&sub.object.config, invoice);
    assert_eq!(sub.operations, vec![Operation::Update]);
    assert_eq!(
        sub.watch,
        Some(vec!["partner_id".to_owned(), "state".to_owned()])
    );
    assert_eq!(sub.when.as_deref(), Some("values.state != 'draft'"));
    assert_eq!(
        sub.event_type_for(Operation::Update),
        "invoice.partner-changed"
    );
    assert_eq!(
        sub.url.expose(),
        "https://partner.example.com/hooks/invoice"
    );
    assert_eq!(
        sub.url.to_string(),
        "https://partner.example.com/hooks/invoice"
    );
    assert_eq!(sub.method, Methods::Single(Method::Post));
    assert_eq!(sub.secrets.len(), 1);
    assert_eq!(sub.secrets[0].expose(), SECRET);
    assert_eq!(sub.secrets[0].key().len(), 24);
    assert_eq!(
        sub.auth,
        Some(Auth::Bearer {
            token: Secret::new("partner-token-456")
        })
    );
    assert_eq!(
        sub.headers,
        vec![("X-Tenant".to_owned(), Secret::new("42"))]
    );
    assert_eq!(
        sub.batch,
        Some(BatchConfig {
            max_events: 100,
            max_wait: Duration::from_millis(500)
        })
    );
    assert_eq!(
        sub.rate_limit,
        Some(RateLimit {
            per_second: 15.0,
            burst: 20
        })
    );
    assert_eq!(sub.max_in_flight, Some(8));
    assert_eq!(sub.ordering, Ordering::Key);
    assert!(sub.active);
    assert_eq!(sub.timeout, Duration::from_secs(15));
    assert_eq!(sub.retry_schedule, DEFAULT_RETRY_SCHEDULE.to_vec());
}

#[test]
fn minimal_config_gets_every_default() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.source.slot, "walhook");
    assert_eq!(config.source.publication, "walhook");
    assert_eq!(config.source.max_retained_wal, 20_000_000_000);
    assert_eq!(config.source.heartbeat, Duration::from_secs(30));
    assert_eq!(config.outbox.schema, "walhook");
    assert_eq!(config.outbox.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(config.http.listen, "127.0.0.1:9187".parse().unwrap());
    assert_eq!(config.delivery.timeout, Duration::from_secs(15));
    assert_eq!(
        config.delivery.retry_schedule,
        ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]
            .map(|d| parse_duration(d).unwrap())
            .to_vec()
    );
    assert_eq!(config.delivery.max_in_flight, 256);
    assert_eq!(config.delivery.shutdown_timeout, Duration::from_secs(30));

    let invoice = &config.objects["invoice"];
    assert_eq!(invoice.table, "public.account_invoice".parse().unwrap());
    assert_eq!(
        (invoice.key.as_ref(), invoice.fields.as_ref()),
        (None, None)
    );

    let sub = &config.subscriptions[0];
    assert_eq!(sub.operations, Operation::ALL.to_vec());
    assert!(Operation::ALL.into_iter().all(|op| sub.fires_on(op)));
    assert_eq!(sub.watch, None);
    assert_eq!(sub.when, None);
    assert_eq!(sub.event_type_for(Operation::Create), "invoice.created");
    assert_eq!(sub.event_type_for(Operation::Delete), "invoice.deleted");
    assert_eq!(sub.method, Methods::Single(Method::Post));
    assert!(sub.secrets.is_empty());
    assert_eq!(sub.auth, None);
    assert!(sub.headers.is_empty());
    assert_eq!(sub.batch, None);
    assert_eq!(sub.rate_limit, None);
    assert_eq!(sub.max_in_flight, None);
    assert_eq!(sub.ordering, Ordering::Key);
    assert!(sub.active);
    assert_eq!(sub.timeout, Duration::from_secs(15));
    assert_eq!(sub.retry_schedule, DEFAULT_RETRY_SCHEDULE.to_vec());
}

#[test]
fn every_key_can_be_set() {
    let text = r#"
[source]
url = "postgresql://walhook@db/erp"
slot = "erp_slot"
publication = "erp_pub"
max_retained_wal = "64KiB"
heartbeat = "1m30s"

[outbox]
url = "postgres://outbox:pw@other/ob"
schema = "hooks"
retention = "7d"

[http]
listen = "0.0.0.0:9000"
admin_token = "adm"

[delivery]
timeout = "2s"
retry_schedule = ["1s", "250ms"]
max_in_flight = 16
allow_networks = ["10.0.0.0/8", "fd00::/8", "hooks.internal"]
shutdown_timeout = "0s"

[objects.move]
table = "stock.move"
key = ["company_id", "id"]

[[subscriptions]]
name = "ping"
table = "res_partner"
operations = ["delete", "create"]
method = "GET"
url = "http://[::1]:8080/ping"
secret = ["whsec_AAE=", "whsec_AAI"]
auth = { type = "basic", username = "u", password = "p" }
headers = { X-A = "1", "X-B" = "two words" }
rate_limit = { per_second = 0.5 }
ordering = "none"
active = false
timeout = "3s"
retry_schedule = []

[[subscriptions]]
name = "moves"
object = "move"
auth = { type = "header", name = "X-Api-Key", value = "k" }
batch = { max_events = 10 }
url = "https://example.com/m"
"#;
    let config = load(text).unwrap();
    assert_eq!(config.source.slot, "erp_slot");
    assert_eq!(config.source.publication, "erp_pub");
    assert_eq!(config.source.max_retained_wal, 65_536);
    assert_eq!(config.source.heartbeat, Duration::from_secs(90));
    assert_eq!(
        config.outbox.url.as_ref().map(Secret::expose),
        Some("postgres://outbox:pw@other/ob")
    );
    assert_eq!(config.outbox.schema, "hooks");
    assert_eq!(config.outbox.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(
        config.http.admin_token.as_ref().map(Secret::expose),
        Some("adm")
    );
    assert_eq!(config.delivery.timeout, Duration::from_secs(2));
    assert_eq!(
        config.delivery.retry_schedule,
        vec![Duration::from_secs(1), Duration::from_millis(250)]
    );
    assert_eq!(config.delivery.max_in_flight, 16);
    assert_eq!(
        config.delivery.allow_networks,
        vec![
            AllowedNetwork::Cidr("10.0.0.0/8".parse().unwrap()),
            AllowedNetwork::Cidr("fd00::/8".parse().unwrap()),
            AllowedNetwork::Host("hooks.internal".into()),
        ]
    );
    assert_eq!(config.delivery.shutdown_timeout, Duration::ZERO);

    let ping = config.subscription("ping").unwrap();
    assert_eq!(ping.object.name, "public.res_partner");
    assert!(ping.object.unnamed);
    assert_eq!(ping.object.config.key, None);
    assert_eq!(ping.object.config.fields, None);
    assert_eq!(ping.operations, vec![Operation::Create, Operation::Delete]);
    assert_eq!(
        ping.event_type_for(Operation::Delete),
        "public.res_partner.deleted"
    );
    assert_eq!(ping.method, Methods::Single(Method::Get));
    assert_eq!(
        ping.secrets
            .iter()
            .map(|s| s.key().to_vec())
            .collect::<Vec<_>>(),
        vec![vec![0, 1], vec![0, 2]]
    );
    assert_eq!(
        ping.auth,
        Some(Auth::Basic {
            username: "u".into(),
            password: Secret::new("p")
        })
    );
    assert_eq!(
        ping.headers,
        vec![
            ("X-A".to_owned(), Secret::new("1")),
            ("X-B".to_owned(), Secret::new("two words"))
        ]
    );
    assert_eq!(
        ping.rate_limit,
        Some(RateLimit {
            per_second: 0.5,
            burst: 1
        })
    );
    assert_eq!(ping.ordering, Ordering::None);
    assert!(!ping.active);
    assert_eq!(ping.timeout, Duration::from_secs(3));
    assert!(ping.retry_schedule.is_empty());

    let moves = config.subscription("moves").unwrap();
    assert_eq!(moves.object.config.table.to_string(), "stock.move");
    assert_eq!(
        moves.object.config.key,
        Some(vec!["company_id".into(), "id".into()])
    );
    assert_eq!(
        moves.auth,
        Some(Auth::Header {
            name: "X-Api-Key".into(),
            value: Secret::new("k")
        })
    );
    assert_eq!(
        moves.batch,
        Some(BatchConfig {
            max_events: 10,
            max_wait: Duration::from_millis(500)
        })
    );
    assert_eq!(moves.timeout, Duration::from_secs(2));
    assert_eq!(moves.retry_schedule.len(), 2);
    assert!(config.subscription("nope").is_none());
}

#[test]
fn source_url_env_overrides_the_file() {
    let env = |name: &str| match name {
        "WALHOOK_SOURCE_URL" => Some("postgres://ops:override@db2/erp".to_owned()),
        _ => None,
    };
    // The file's url uses an unset variable: it is replaced, so that is not an error.
    let text = MINIMAL.replace(
        "postgres://walhook@db/erp",
        "postgres://x:${UNSET_PASSWORD}@db/erp",
    );
    let config = Config::parse(&text, "walhook.toml", &env).unwrap();
    assert_eq!(
        config.source.url.expose(),
        "postgres://ops:override@db2/erp"
    );

    // No url in the file at all is fine too.
    let text = MINIMAL.replace("url = \"postgres://walhook@db/erp\"", "");
    let config = Config::parse(&text, "walhook.toml", &env).unwrap();
    assert_eq!(
        config.source.url.expose(),
        "postgres://ops:override@db2/erp"
    );

    // An empty override counts as unset.
    let empty = |name: &str| (name == "WALHOOK_SOURCE_URL").then(String::new);
    let config = Config::parse(MINIMAL, "walhook.toml", &empty).unwrap();
    assert_eq!(config.source.url.expose(), "postgres://walhook@db/erp");
}

#[test]
fn variables_expand_in_every_string_but_not_in_comments() {
    let text = r#"
# ${NOT_SET_BUT_IN_A_COMMENT}
[source]
url = "postgres://walhook:${PGPASSWORD}@db/erp" # ${ALSO_IN_A_COMMENT}

[objects.invoice]
table = "account_invoice"

[[subscriptions]]
name = "s"
object = "invoice"
url = "https://hooks.example.com/in?token=${PARTNER_TOKEN}"
when = "values.note == '$${literal}'"
headers = { X-Quote = "${PARTNER_TOKEN}\" = 1" }
"#;
    let config = load(text).unwrap();
    assert_eq!(
        config.source.url.expose(),
        "postgres://walhook:pg-pass-123@db/erp"
    );
    let sub = &config.subscriptions[0];
    assert_eq!(
        sub.url.expose(),
        "https://hooks.example.com/in?token=partner-token-456"
    );
    // Shown as written, so the token never reaches a log.
    assert_eq!(
        sub.url.to_string(),
        "https://hooks.example.com/in?token=${PARTNER_TOKEN}"
    );
    assert!(!format!("{config:?}").contains("partner-token-456"));
    assert_eq!(sub.when.as_deref(), Some("values.note == '${literal}'"));
    assert_eq!(sub.headers[0].1.expose(), "partner-token-456\" = 1");
}

#[test]
fn tables_are_distinct_and_in_config_order() {
    let text = r#"
[source]
url = "postgres://db/erp"

[objects.invoice]
table = "account_invoice"

[objects.invoice_lines]
table = "erp.invoice_line"

[objects.invoice_by_number]
table = "public.account_invoice"
key = ["number"]

[[subscriptions]]
name = "a"
table = "res_partner"
url = "https://h.example/a"

[[subscriptions]]
name = "b"
object = "invoice"
url = "https://h.example/b"

[[subscriptions]]
name = "c"
table = "erp.invoice_line"
url = "https://h.example/c"
"#;
    let config = load(text).unwrap();
    let tables: Vec<String> = config.tables().iter().map(ToString::to_string).collect();
    assert_eq!(
        tables,
        [
            "public.account_invoice",
            "erp.invoice_line",
            "public.res_partner"
        ]
    );
}

#[test]
fn secrets_never_print() {
    let config = load(SPEC_EXAMPLE).unwrap();
    let debug = format!("{config:?}");
    for secret in ["pg-pass-123", SECRET, "partner-token-456", "MfKQ9r8G"] {
        assert!(!debug.contains(secret), "{secret} leaked into {debug}");
    }
    assert!(debug.contains("***"));
    assert_eq!(config.source.url.to_string(), "***");
    assert_eq!(
        redact_postgres_url(config.source.url.expose()),
        "postgres://walhook:***@erp-db:5432/erp?sslmode=verify-full"
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.subscriptions[0].name, "all-invoices");

    std::fs::write(&path, "[source]\nurl = 5\n").unwrap();
    let error = Config::load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:2: source.url: expected a string, found integer 5",
            path.display()
        )
    );
    assert_eq!(error.file(), path.display().to_string());
    assert_eq!(error.line(), Some(2));
    assert_eq!(error.key(), "source.url");

    let missing = dir.path().join("missing.toml");
    let error = Config::load(&missing).unwrap_err();
    assert!(error
        .to_string()
        .starts_with(&format!("{}: cannot read config file: ", missing.display())));
    assert_eq!(error.line(), None);
}

/// Lines 1–8 of the template stories: a source, an object with a display name, and the
/// start of a subscription.
const ROUTED_HEAD: &str = r#"[source]
url = "postgres://walhook@db/erp"
[objects.invoice]
table = "public.account_move"
name = "account.invoice"
[[subscriptions]]
name = "rivile"
object = "invoice"
"#;

#[test]
fn an_object_name_is_the_events_object_and_type_prefix() {
    let config = load(&format!("{ROUTED_HEAD}url = \"https://h.example/x\"\n")).unwrap();
    let sub = &config.subscriptions[0];
    assert_eq!(sub.object.name, "account.invoice");
    assert_eq!(sub.object.config_key, "invoice");
    assert_eq!(sub.object.config.name.as_deref(), Some("account.invoice"));
    assert_eq!(
        sub.event_type_for(Operation::Update),
        "account.invoice.updated"
    );
    let plain = load(MINIMAL).unwrap();
    assert_eq!(plain.subscriptions[0].object.name, "invoice");
    assert_eq!(plain.subscriptions[0].object.config_key, "invoice");
}

#[test]
fn a_method_per_operation_and_a_url_template_route_each_event() {
    let config = load(&format!(
        "{ROUTED_HEAD}url = \"https://api.example.com/orders/{{{{ key.id }}}}\"\n\
         method = {{ create = \"POST\", update = \"PUT\", delete = \"DELETE\" }}\n"
    ))
    .unwrap();
    let sub = &config.subscriptions[0];
    assert!(sub.url_template);
    assert_eq!(
        sub.url.expose(),
        "https://api.example.com/orders/{{ key.id }}"
    );
    assert_eq!(sub.url_at, "walhook.toml:9: subscriptions[0].url");
    assert_eq!(sub.method.single(), None);
    assert_eq!(sub.method.for_operation(Operation::Create), Method::Post);
    assert_eq!(sub.method.for_operation(Operation::Update), Method::Put);
    assert_eq!(sub.method.for_operation(Operation::Delete), Method::Delete);
    assert_eq!(
        sub.method.to_json().to_string(),
        r#"{"create":"POST","update":"PUT","delete":"DELETE"}"#
    );
    assert_eq!(
        sub.method.to_string(),
        "create=POST, update=PUT, delete=DELETE"
    );

    let plain = load(MINIMAL).unwrap();
    let sub = &plain.subscriptions[0];
    assert!(!sub.url_template);
    assert_eq!(sub.method.single(), Some(Method::Post));
    assert_eq!(sub.method.to_json().to_string(), r#""POST""#);
    for method in Method::ALL {
        let text = format!(
            "{ROUTED_HEAD}url = \"https://h.example/x\"\nmethod = \"{}\"\n",
            method.as_str()
        );
        let config = load(&text).unwrap();
        assert_eq!(config.subscriptions[0].method, Methods::Single(method));
    }
}

#[test]
fn content_type_defaults_to_json_and_is_kept_as_written() {
    let plain = load(MINIMAL).unwrap();
    assert_eq!(plain.subscriptions[0].content_type, "application/json");
    assert!(plain.subscriptions[0].sends_json());
    let config = load(&format!(
        "{ROUTED_HEAD}url = \"https://h.example/x\"\ncontent_type = \"application/xml; charset=UTF-8\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.subscriptions[0].content_type,
        "application/xml; charset=UTF-8"
    );
    assert!(!config.subscriptions[0].sends_json());
    for json in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "Application/JSON",
        "text/json",
    ] {
        assert!(is_json_media_type(json), "{json}");
    }
    for other in [
        "application/xml",
        "text/plain",
        "json",
        "application/jsonl",
        "/json",
    ] {
        assert!(!is_json_media_type(other), "{other}");
    }
    // A batch with any JSON type loads.
    load(&format!(
        "{ROUTED_HEAD}url = \"https://h.example/x\"\ncontent_type = \"application/vnd.api+json; charset=utf-8\"\n\
         batch = {{ max_events = 5 }}\ntemplate = \"{{{{ values | tojson }}}}\"\n"
    ))
    .unwrap();
}

#[test]
fn an_inline_template_knows_the_config_line_of_its_first_line() {
    let text = format!(
        "{ROUTED_HEAD}url = \"https://h.example/x\"\ncontent_type = \"application/xml\"\n\
         template = '''\n<body>\n  <oper>{{{{ operation }}}}</oper>\n</body>'''\n"
    );
    let config = load(&text).unwrap();
    let template = config.subscriptions[0].template.as_ref().unwrap();
    assert_eq!(
        template.text,
        "<body>\n  <oper>{{ operation }}</oper>\n</body>"
    );
    assert_eq!(
        template.origin,
        TemplateOrigin::Inline {
            at: "walhook.toml:11: subscriptions[0].template".into(),
            first_line: 12,
        }
    );
    let one_line = load(&format!(
        "{ROUTED_HEAD}url = \"https://h.example/x\"\ntemplate = \"{{{{ id }}}}\"\n"
    ))
    .unwrap();
    assert_eq!(
        one_line.subscriptions[0].template.as_ref().unwrap().origin,
        TemplateOrigin::Inline {
            at: "walhook.toml:10: subscriptions[0].template".into(),
            first_line: 10,
        }
    );
    assert!(load(MINIMAL).unwrap().subscriptions[0].template.is_none());
}

#[test]
fn a_template_file_is_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("templates/i13.xml.j2"),
        "<I13>{{ key.id }}</I13>\n",
    )
    .unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        format!("{ROUTED_HEAD}url = \"https://h.example/x\"\ntemplate_file = \"templates/i13.xml.j2\"\n"),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let template = config.subscriptions[0].template.as_ref().unwrap();
    assert_eq!(template.text, "<I13>{{ key.id }}</I13>\n");
    assert_eq!(
        template.origin,
        TemplateOrigin::File {
            path: "templates/i13.xml.j2".into(),
            resolved: dir.path().join("templates/i13.xml.j2"),
            at: format!("{}:10: subscriptions[0].template_file", path.display()),
        }
    );
}

#[test]
fn dead_on_status_is_kept_in_file_order() {
    let config = load(&format!(
        "{ROUTED_HEAD}url = \"https://h.example/x\"\ndead_on_status = [422, 400]\n"
    ))
    .unwrap();
    assert_eq!(config.subscriptions[0].dead_on_status, vec![422, 400]);
    assert!(load(MINIMAL).unwrap().subscriptions[0]
        .dead_on_status
        .is_empty());
}

#[test]
fn every_url_the_config_accepts_is_the_connection_walhook_makes() {
    for url in [
        "postgres://walhook:pg-pass-123@erp-db:5432/erp?sslmode=verify-full",
        "postgres://walhook@db/erp",
        "postgres://outbox:pw@other/ob",
        "postgres://ops:override@db2/erp",
        "postgresql:///erp?host=/run/postgresql&user=walhook",
        "postgres://u:p%23s%3F%40@h/db",
        "postgres://h/db?options=a@b&user=x",
        "postgres://a@h1:5433,h2:5434/erp?sslmode=verify-ca&sslrootcert=/etc/ca.pem\
         &application_name=cdc&connect_timeout=7",
        "postgres://a@h/erp?sslmode=require&sslcert=/c.pem&sslkey=/k.pem",
    ] {
        let text = MINIMAL.replace(
            "url = \"postgres://walhook@db/erp\"",
            &format!("url = \"{url}\"\n[outbox]\nurl = \"{url}\""),
        );
        let config = load(&text).unwrap_or_else(|e| panic!("{url}: {e}"));
        let connected = crate::pg::ConnInfo::parse(url).unwrap();
        for held in [&config.source.conninfo, config.outbox_conninfo()] {
            assert_eq!(held.to_string(), connected.to_string(), "{url}");
            assert_eq!(held.password(), connected.password(), "{url}");
        }
    }
}

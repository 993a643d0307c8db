//! One test per message a user can see, each pinning the full text: file, line, key, words.

use super::*;

/// Lines 1–9: a source, an object with fields, and the start of a subscription.
const HEAD: &str = r#"[source]
url = "postgres://walhook@db/erp"

[objects.invoice]
table = "account_invoice"
fields = ["number", "partner_id", "state"]

[[subscriptions]]
name = "s"
"#;

/// Lines 10–11: what makes the subscription of [`HEAD`] complete.
const TARGET: &str = "object = \"invoice\"\nurl = \"https://h.example/x\"\n";

/// The message for `text`, which must fail to load.
fn error(text: &str) -> String {
    match load(text) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// The message for a subscription whose lines start at line 10.
fn sub_error(rest: &str) -> String {
    error(&format!("{HEAD}{rest}"))
}

/// The message for a complete subscription with `rest` from line 12 on.
fn extra_error(rest: &str) -> String {
    error(&format!("{HEAD}{TARGET}{rest}"))
}

#[test]
fn the_base_config_is_valid() {
    load(&format!("{HEAD}{TARGET}")).unwrap();
}

// --- TOML and serde -------------------------------------------------------------------------

#[test]
fn bad_toml_syntax() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\nslot = \"x\"\n"),
        "walhook.toml:2:25: invalid TOML: invalid basic string"
    );
    assert_eq!(
        error("[source\n"),
        "walhook.toml:1:8: invalid TOML: invalid table header; expected `.`, `]`"
    );
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    assert_eq!(
        error("[source]\nurl = \"postgres://a/b\"\nurl = \"postgres://c/d\"\n"),
        "walhook.toml:3:1: invalid TOML: duplicate key `url` in table `source`"
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        error("colour = \"blue\"\n"),
        "walhook.toml:1: colour: unknown key; expected one of: source, outbox, http, delivery, objects, subscriptions"
    );
    assert_eq!(
        error("[sources]\nurl = \"postgres://db/erp\"\n"),
        "walhook.toml:1: sources: unknown key; did you mean \"source\"?"
    );
}

#[test]
fn unknown_nested_key() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\nslto = \"x\"\n"),
        "walhook.toml:3: source.slto: unknown key; did you mean \"slot\"?"
    );
    assert_eq!(
        extra_error("rate_limit = { per_sec = 5 }\n"),
        "walhook.toml:12: subscriptions[0].rate_limit.per_sec: unknown key; did you mean \"per_second\"?"
    );
    assert_eq!(
        error("[objects.invoice]\ntable = \"x\"\ncolumns = [\"a\"]\n"),
        "walhook.toml:3: objects.invoice.columns: unknown key; expected one of: name, table, key, fields, keep_state, children"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        extra_error("max_in_flight = \"8\"\n"),
        "walhook.toml:12: subscriptions[0].max_in_flight: expected an integer, found a string"
    );
    assert_eq!(
        error("http = \"127.0.0.1:9187\"\n"),
        "walhook.toml:1: http: expected a table, found a string"
    );
    assert_eq!(
        error("[delivery]\nretry_schedule = \"5s\"\n"),
        "walhook.toml:2: delivery.retry_schedule: expected a list, found a string"
    );
    assert_eq!(
        extra_error("active = \"yes\"\n"),
        "walhook.toml:12: subscriptions[0].active: expected a boolean, found a string"
    );
    assert_eq!(
        extra_error("secret = 5\n"),
        "walhook.toml:12: subscriptions[0].secret: expected a string or a list of strings, found integer 5"
    );
    assert_eq!(
        error("[delivery]\ntimeout = true\n"),
        "walhook.toml:2: delivery.timeout: expected a duration such as \"15s\", found boolean true"
    );
    assert_eq!(
        error("[delivery]\nretry_schedule = [\n  \"5s\",\n  [\"5m\"],\n]\n"),
        "walhook.toml:4: delivery.retry_schedule[1]: expected a duration such as \"15s\", found a list"
    );
    assert_eq!(
        error("[source]\nurl = 1979-05-27T07:32:00Z\n"),
        "walhook.toml:2: source.url: expected a string, found a date-time"
    );
    assert_eq!(
        error("[source]\nslot = 1.5\n"),
        "walhook.toml:2: source.slot: expected a string, found number 1.5"
    );
    assert_eq!(
        error("subscriptions = [\"a\"]\n"),
        "walhook.toml:1: subscriptions[0]: expected a table, found a string"
    );
}

#[test]
fn type_errors_never_quote_strings() {
    // The value may be an expanded secret.
    let message = extra_error("auth = \"${PARTNER_TOKEN}\"\n");
    assert_eq!(
        message,
        "walhook.toml:12: subscriptions[0].auth: expected a table, found a string"
    );
}

// --- variables ------------------------------------------------------------------------------

#[test]
fn unset_variable() {
    assert_eq!(
        error("[source]\nurl = \"postgres://walhook:${DB_PASSWORD}@db/erp\"\n"),
        "walhook.toml:2: source.url: environment variable DB_PASSWORD is not set"
    );
    assert_eq!(
        error("[delivery]\nallow_networks = [\n  \"10.0.0.0/8\",\n  \"${PRIVATE_HOST}\",\n]\n"),
        "walhook.toml:4: delivery.allow_networks[1]: environment variable PRIVATE_HOST is not set"
    );
}

#[test]
fn every_unset_variable_is_reported() {
    assert_eq!(
        extra_error("headers = { X-A = \"${A}\", X-B = \"${B}/${PARTNER_TOKEN}/${C}\" }\n"),
        "walhook.toml:12: subscriptions[0].headers.X-A: environment variable A is not set\n\
         walhook.toml:12: subscriptions[0].headers.X-B: environment variable B is not set\n\
         walhook.toml:12: subscriptions[0].headers.X-B: environment variable C is not set"
    );
}

#[test]
fn malformed_variable() {
    assert_eq!(
        extra_error("event_type = \"${invoice.done\"\n"),
        "walhook.toml:12: subscriptions[0].event_type: invalid variable reference \"${invoice.done\"; \
         write ${NAME} with NAME made of letters, digits and _, or $${ for a literal \"${\""
    );
}

// --- source, outbox, http, delivery ---------------------------------------------------------

#[test]
fn missing_source_url() {
    assert_eq!(
        error("[source]\nslot = \"walhook\"\n"),
        "walhook.toml:1: source: missing key \"url\"; set it here or in the WALHOOK_SOURCE_URL environment variable"
    );
    assert_eq!(
        error(""),
        "walhook.toml: source: missing key \"url\"; set it here or in the WALHOOK_SOURCE_URL environment variable"
    );
}

#[test]
fn bad_source_url() {
    assert_eq!(
        error("[source]\nurl = \"mysql://root:hunter2@db/erp\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"mysql://root:***@db/erp\": must start with postgres:// or postgresql://"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://u:${PGPASSWORD}@db:54x/erp\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://u:***@db:54x/erp\": invalid value for option `port`"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp?sslmode=verify\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://db/erp?sslmode=verify\": invalid sslmode \"verify\"; \
         use one of disable, prefer, require, verify-ca, verify-full"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[outbox]\nurl = \"postgres://db/erp?bogus=1\"\n"),
        "walhook.toml:4: outbox.url: invalid Postgres URL \"postgres://db/erp?bogus=1\": unknown option `bogus`"
    );
}

#[test]
fn bad_source_url_from_env() {
    let env = |name: &str| (name == "WALHOOK_SOURCE_URL").then(|| "http://u:pw@db/erp".to_owned());
    let error = Config::parse(MINIMAL, "walhook.toml", &env).unwrap_err();
    assert_eq!(
        error.to_string(),
        "walhook.toml: source.url (from WALHOOK_SOURCE_URL): invalid Postgres URL \"http://u:***@db/erp\": \
         must start with postgres:// or postgresql://"
    );
}

#[test]
fn bad_slot_and_identifiers() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\nslot = \"walhook-1\"\n"),
        "walhook.toml:3: source.slot: invalid slot name \"walhook-1\"; use lower-case letters, digits and _ (at most 63)"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\npublication = \"\"\n"),
        "walhook.toml:3: source.publication: must be 1 to 63 bytes long (a Postgres identifier)"
    );
}

// Values that used to load and then fail at the first statement or request.

#[test]
fn an_outbox_schema_postgres_reserves_is_refused_at_load() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[outbox]\nschema = \"pg_walhook\"\n"),
        "walhook.toml:4: outbox.schema: \"pg_walhook\" starts with \"pg_\", which Postgres reserves for system schemas"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\npublication = \"wal\\u0000hook\"\n"),
        "walhook.toml:3: source.publication: must not contain a NUL character"
    );
}

#[test]
fn a_line_break_in_a_bearer_token_is_refused_at_load() {
    assert_eq!(
        extra_error("auth = { type = \"bearer\", token = \"abc\\ndef\" }\n"),
        "walhook.toml:12: subscriptions[0].auth.token: header value contains a line break or other control character"
    );
    assert_eq!(
        extra_error("auth = { type = \"basic\", username = \"u\\r\", password = \"p\\n\" }\n"),
        "walhook.toml:12: subscriptions[0].auth.password: header value contains a line break or other control character\n\
         walhook.toml:12: subscriptions[0].auth.username: header value contains a line break or other control character"
    );
}

#[test]
fn connection_headers_cannot_be_configured() {
    assert_eq!(
        extra_error("headers = { Transfer-Encoding = \"chunked\" }\n"),
        "walhook.toml:12: subscriptions[0].headers.Transfer-Encoding: header \"Transfer-Encoding\" belongs to the connection, which the HTTP client manages; it cannot be configured"
    );
}

#[test]
fn a_password_with_url_delimiters_asks_for_percent_encoding() {
    assert_eq!(
        error("[source]\nurl = \"postgres://walhook:se#cret@db/erp\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://walhook:***@db/erp\": the user name or password \
         contains '@', '/', '?' or '#'; percent-encode them ('@' as %40, '/' as %2F, '?' as %3F, '#' as %23)"
    );
}

#[test]
fn sslmode_allow_is_refused_at_load_as_at_connect() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp?sslmode=allow\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://db/erp?sslmode=allow\": sslmode=allow is not supported; use sslmode=prefer or sslmode=disable"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        error("[delivery]\ntimeout = \"15 parsecs\"\n[source]\nurl = \"postgres://db/erp\"\n"),
        "walhook.toml:2: delivery.timeout: invalid duration \"15 parsecs\": unknown unit \"parsecs\"; use ms, s, m, h or d"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\nheartbeat = 30\n"),
        "walhook.toml:3: source.heartbeat: invalid duration 30: 30 has no unit; write e.g. \"30s\" (units: ms, s, m, h, d)"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[delivery]\nretry_schedule = [\"5s\", \"soon\"]\n"),
        "walhook.toml:4: delivery.retry_schedule[1]: invalid duration \"soon\": expected a number before \"soon\""
    );
    assert_eq!(
        extra_error("timeout = \"0s\"\n"),
        "walhook.toml:12: subscriptions[0].timeout: must be greater than 0"
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\nmax_retained_wal = \"20 gigs\"\n"),
        "walhook.toml:3: source.max_retained_wal: invalid size \"20 gigs\": unknown unit \"gigs\"; \
         use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\nmax_retained_wal = -1\n"),
        "walhook.toml:3: source.max_retained_wal: invalid size -1: must not be negative"
    );
}

#[test]
fn bad_listen_address() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[http]\nlisten = \"localhost:9187\"\n"),
        "walhook.toml:4: http.listen: invalid listen address \"localhost:9187\"; expected IP:port such as \"127.0.0.1:9187\""
    );
}

#[test]
fn bad_allowed_network() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[delivery]\nallow_networks = [\"10.1.0.0/8\", \"not a host\"]\n"),
        "walhook.toml:4: delivery.allow_networks[0]: invalid network \"10.1.0.0/8\": host bits are set; did you mean \"10.0.0.0/8\"?\n\
         walhook.toml:4: delivery.allow_networks[1]: invalid network \"not a host\": \
         expected a CIDR such as \"10.0.0.0/8\" or a host name such as \"hooks.internal\""
    );
}

#[test]
fn bad_global_max_in_flight() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[delivery]\nmax_in_flight = 0\n"),
        "walhook.toml:4: delivery.max_in_flight: must be at least 1, found 0"
    );
}

// --- objects --------------------------------------------------------------------------------

#[test]
fn bad_object_name_and_table() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[objects.Invoice]\ntable = \"erp.account.invoice\"\n"),
        "walhook.toml:3: objects.Invoice: invalid object name \"Invoice\"; use lower-case letters, digits, _ and - only\n\
         walhook.toml:4: objects.Invoice.table: invalid table name \"erp.account.invoice\"; expected \"schema.table\" or \"table\""
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[objects.invoice]\nkey = [\"id\"]\n"),
        "walhook.toml:3: objects.invoice: missing key \"table\""
    );
}

#[test]
fn bad_key_and_field_lists() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[objects.invoice]\ntable = \"x\"\nkey = []\nfields = [\"a\", \"b\", \"a\", \"\"]\n"),
        "walhook.toml:5: objects.invoice.key: must not be empty; leave it out to use the primary key\n\
         walhook.toml:6: objects.invoice.fields[2]: \"a\" is listed twice\n\
         walhook.toml:6: objects.invoice.fields[3]: column name must not be empty"
    );
}

// --- subscriptions --------------------------------------------------------------------------

#[test]
fn duplicate_subscription_name() {
    assert_eq!(
        error(&format!("{HEAD}{TARGET}\n[[subscriptions]]\nname = \"s\"\n{TARGET}")),
        "walhook.toml:14: subscriptions[1].name: duplicate subscription name \"s\" (first used at line 9)"
    );
}

#[test]
fn bad_subscription_name() {
    assert_eq!(
        error(&format!("{HEAD}{TARGET}").replace("name = \"s\"", "name = \"Partner Sync\"")),
        "walhook.toml:9: subscriptions[0].name: invalid subscription name \"Partner Sync\"; \
         use lower-case letters, digits, _ and - only"
    );
    assert_eq!(
        error(&format!("{HEAD}{TARGET}").replace("name = \"s\"\n", "")),
        "walhook.toml:8: subscriptions[0]: missing key \"name\""
    );
}

#[test]
fn unknown_object_with_suggestion() {
    assert_eq!(
        sub_error("object = \"invoce\"\nurl = \"https://h.example/x\"\n"),
        "walhook.toml:10: subscriptions[0].object: unknown object \"invoce\"; did you mean \"invoice\"?"
    );
    assert_eq!(
        sub_error("object = \"partner\"\nurl = \"https://h.example/x\"\n"),
        "walhook.toml:10: subscriptions[0].object: unknown object \"partner\"; defined objects: invoice"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[[subscriptions]]\nname = \"s\"\nobject = \"x\"\nurl = \"https://h.example/\"\n"),
        "walhook.toml:5: subscriptions[0].object: unknown object \"x\"; no [objects] are defined"
    );
}

#[test]
fn both_or_neither_object_and_table() {
    assert_eq!(
        extra_error("table = \"public.account_invoice\"\n"),
        "walhook.toml:12: subscriptions[0].table: cannot be combined with \"object\"; give either object or table"
    );
    assert_eq!(
        sub_error("url = \"https://h.example/x\"\n"),
        "walhook.toml:8: subscriptions[0]: missing key \"object\" or \"table\"; name the rows this subscription watches"
    );
    assert_eq!(
        sub_error("table = \"a.b.c\"\nurl = \"https://h.example/x\"\n"),
        "walhook.toml:10: subscriptions[0].table: invalid table name \"a.b.c\"; expected \"schema.table\" or \"table\""
    );
}

#[test]
fn bad_url() {
    // The url on line 14, as in the example message of the brief.
    assert_eq!(
        sub_error("object = \"invoice\"\n\n\n\nurl = \"htp://x\"\n"),
        "walhook.toml:14: subscriptions[0].url: invalid URL \"htp://x\": scheme must be http or https"
    );
    // A token from the environment is shown as the variable, never as its value.
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"https://h.example:0/${PARTNER_TOKEN}\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"https://h.example:0/${PARTNER_TOKEN}\": \
         invalid port \"0\"; expected 1 to 65535"
    );
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"https://user:pw@/hook\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"https://user:***@/hook\": missing host"
    );
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"hooks.example.com/in\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"hooks.example.com/in\": \
         expected an absolute URL such as \"https://example.com/hook\""
    );
    assert_eq!(
        sub_error("object = \"invoice\"\n"),
        "walhook.toml:8: subscriptions[0]: missing key \"url\""
    );
}

#[test]
fn bad_method() {
    assert_eq!(
        extra_error("method = \"post\"\n"),
        "walhook.toml:12: subscriptions[0].method: unknown method \"post\"; \
         use one of POST, PUT, PATCH, DELETE, GET (upper case)"
    );
    assert_eq!(
        extra_error("method = 5\n"),
        "walhook.toml:12: subscriptions[0].method: expected a method such as \"POST\" or a table \
         of methods per operation, found integer 5"
    );
}

#[test]
fn a_method_map_names_every_operation_that_fires_and_nothing_else() {
    assert_eq!(
        extra_error("method = { create = \"POST\", updte = \"PUT\", delete = \"remove\" }\n"),
        "walhook.toml:12: subscriptions[0].method.updte: unknown operation \"updte\"; did you mean \"update\"? \
         (use create, update, delete or truncate)\n\
         walhook.toml:12: subscriptions[0].method.delete: unknown method \"remove\"; \
         use one of POST, PUT, PATCH, DELETE, GET (upper case)\n\
         walhook.toml:12: subscriptions[0].method: no method for \"update\", which this subscription \
         fires on; add update = \"POST\" (or another of POST, PUT, PATCH, DELETE, GET)"
    );
    assert_eq!(
        extra_error(
            "operations = [\"update\", \"truncate\"]\nmethod = { update = \"PATCH\" }\n"
        ),
        "walhook.toml:13: subscriptions[0].method: no method for \"truncate\", which this \
         subscription fires on; add truncate = \"POST\" (or another of POST, PUT, PATCH, DELETE, GET)"
    );
}

#[test]
fn bad_object_display_name() {
    assert_eq!(
        error(&format!(
            "{}name = \"account invoice\"\n",
            "[source]\nurl = \"postgres://walhook@db/erp\"\n[objects.invoice]\ntable = \"x\"\n"
        )),
        "walhook.toml:5: objects.invoice.name: must be non-empty and contain no whitespace; \
         leave it out to use the object's key"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://walhook@db/erp\"\n[objects.invoice]\ntable = \"x\"\nname = \"\"\n"),
        "walhook.toml:5: objects.invoice.name: must be non-empty and contain no whitespace; \
         leave it out to use the object's key"
    );
}

#[test]
fn bad_content_type() {
    assert_eq!(
        extra_error("content_type = \" \"\n"),
        "walhook.toml:12: subscriptions[0].content_type: must not be empty; leave it out for application/json"
    );
    assert_eq!(
        extra_error("content_type = \"text/xml\\nX-Evil: 1\"\n"),
        "walhook.toml:12: subscriptions[0].content_type: header value contains a line break or other control character"
    );
}

#[test]
fn bad_template_keys() {
    assert_eq!(
        extra_error("template = \"{{ id }}\"\ntemplate_file = \"t.j2\"\n"),
        "walhook.toml:13: subscriptions[0].template_file: cannot be combined with \"template\"; give one of them"
    );
    assert_eq!(
        extra_error("template = \"\"\n"),
        "walhook.toml:12: subscriptions[0].template: must not be empty; leave it out to send the event envelope"
    );
    assert_eq!(
        extra_error("method = \"GET\"\ntemplate = \"{{ id }}\"\n"),
        "walhook.toml:13: subscriptions[0].template: GET sends no body; a template needs POST, PUT, PATCH or DELETE"
    );
}

#[test]
fn a_template_file_that_cannot_be_read_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walhook.toml");
    std::fs::write(
        &config,
        format!("{HEAD}{TARGET}template_file = \"templates/missing.j2\"\n"),
    )
    .unwrap();
    let error = Config::load(&config).unwrap_err().to_string();
    let file = config.display();
    let resolved = dir.path().join("templates/missing.j2");
    assert_eq!(
        error,
        format!(
            "{file}:12: subscriptions[0].template_file: cannot read template file \
             \"templates/missing.j2\" ({}): No such file or directory (os error 2)",
            resolved.display()
        )
    );
}

#[test]
fn bad_url_templates() {
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"ftp://h.example/orders/{{ key.id }}\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"ftp://h.example/orders/{{ key.id }}\": \
         scheme must be http or https"
    );
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"https://h.example/orders/{{ key.id\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"https://h.example/orders/{{ key.id\": \
         \"{{\" without a closing \"}}\""
    );
    assert_eq!(
        sub_error("object = \"invoice\"\nurl = \"{{ values.url }}\"\n"),
        "walhook.toml:11: subscriptions[0].url: invalid URL \"{{ values.url }}\": \
         scheme must be http or https (write it out before any {{ … }})"
    );
}

#[test]
fn bad_dead_on_status() {
    assert_eq!(
        extra_error("dead_on_status = [200, 400, 400, 600]\n"),
        "walhook.toml:12: subscriptions[0].dead_on_status[0]: must be an HTTP status from 300 to 599, found 200\n\
         walhook.toml:12: subscriptions[0].dead_on_status[2]: 400 is listed twice\n\
         walhook.toml:12: subscriptions[0].dead_on_status[3]: must be an HTTP status from 300 to 599, found 600"
    );
}

#[test]
fn a_batch_goes_to_one_url_with_one_method_and_is_json() {
    assert_eq!(
        extra_error("content_type = \"application/xml\"\nbatch = { max_events = 10 }\n"),
        "walhook.toml:13: subscriptions[0].batch: needs a JSON content_type (the request is a JSON \
         array of the bodies), not \"application/xml\""
    );
    assert_eq!(
        sub_error(
            "object = \"invoice\"\nurl = \"https://h.example/o/{{ key.id }}\"\nbatch = { max_events = 10 }\n"
        ),
        "walhook.toml:12: subscriptions[0].batch: a batch goes to one URL with one method; the url contains {{ … }}"
    );
    assert_eq!(
        extra_error(
            "method = { create = \"POST\", update = \"PUT\", delete = \"DELETE\" }\nbatch = { max_events = 10 }\n"
        ),
        "walhook.toml:13: subscriptions[0].batch: a batch goes to one URL with one method; method is a map per operation"
    );
}

#[test]
fn bad_operation() {
    assert_eq!(
        extra_error("operations = [\"insert\", \"update\", \"update\", \"upsert\"]\n"),
        "walhook.toml:12: subscriptions[0].operations[0]: unknown operation \"insert\"; did you mean \"create\"? \
         (use create, update, delete or truncate)\n\
         walhook.toml:12: subscriptions[0].operations[2]: \"update\" is listed twice\n\
         walhook.toml:12: subscriptions[0].operations[3]: unknown operation \"upsert\"; use create, update, delete or truncate"
    );
    assert_eq!(
        extra_error("operations = []\n"),
        "walhook.toml:12: subscriptions[0].operations: must not be empty; leave it out for create, update and delete"
    );
}

#[test]
fn watch_not_in_fields() {
    assert_eq!(
        extra_error("watch = [\"partner\", \"state\", \"total\"]\n"),
        "walhook.toml:12: subscriptions[0].watch[0]: \"partner\" is not in the fields of object \"invoice\"; \
         did you mean \"partner_id\"?\n\
         walhook.toml:12: subscriptions[0].watch[2]: \"total\" is not in the fields of object \"invoice\""
    );
    assert_eq!(
        extra_error("watch = []\n"),
        "walhook.toml:12: subscriptions[0].watch: must not be empty; leave it out to fire on any change"
    );
}

#[test]
fn bad_secret() {
    assert_eq!(
        extra_error("secret = \"${PARTNER_TOKEN}\"\n"),
        "walhook.toml:12: subscriptions[0].secret: must start with \"whsec_\" followed by a base64 key \
         (Standard Webhooks format)"
    );
    assert_eq!(
        extra_error("secret = [\"whsec_AAE=\", \"whsec_not*base64\"]\n"),
        "walhook.toml:12: subscriptions[0].secret[1]: the part after \"whsec_\" is not valid base64"
    );
    assert_eq!(
        extra_error("secret = []\n"),
        "walhook.toml:12: subscriptions[0].secret: must not be empty; leave it out to send unsigned requests"
    );
}

#[test]
fn reserved_header() {
    assert_eq!(
        extra_error("headers = { User-Agent = \"curl\", webhook-id = \"x\" }\n"),
        "walhook.toml:12: subscriptions[0].headers.User-Agent: header \"User-Agent\" is set by walhook and cannot be overridden\n\
         walhook.toml:12: subscriptions[0].headers.webhook-id: header \"webhook-id\" is set by walhook and cannot be overridden"
    );
}

#[test]
fn invalid_header_name_and_value() {
    assert_eq!(
        extra_error("[subscriptions.headers]\n\"X Tenant\" = \"42\"\nX-Evil = \"a\\r\\nHost: b\"\n"),
        "walhook.toml:13: subscriptions[0].headers.\"X Tenant\": invalid header name \"X Tenant\"; \
         use letters, digits and !#$%&'*+-.^_`|~\n\
         walhook.toml:14: subscriptions[0].headers.X-Evil: header value contains a line break or other control character"
    );
}

#[test]
fn repeated_and_conflicting_headers() {
    assert_eq!(
        extra_error(
            "auth = { type = \"bearer\", token = \"t\" }\nheaders = { X-A = \"1\", x-a = \"2\", authorization = \"Basic x\" }\n"
        ),
        "walhook.toml:13: subscriptions[0].headers.x-a: repeats header \"X-A\" (header names are case-insensitive)\n\
         walhook.toml:13: subscriptions[0].headers.authorization: header \"authorization\" is already set by auth; remove one"
    );
}

#[test]
fn bad_auth() {
    assert_eq!(
        extra_error("auth = { type = \"oauth\", token = \"t\" }\n"),
        "walhook.toml:12: subscriptions[0].auth.type: unknown auth type \"oauth\"; use bearer, basic or header"
    );
    assert_eq!(
        extra_error("auth = { type = \"basic\", username = \"u\", token = \"t\" }\n"),
        "walhook.toml:12: subscriptions[0].auth: missing key \"password\" for basic auth\n\
         walhook.toml:12: subscriptions[0].auth.token: not used by basic auth"
    );
    assert_eq!(
        extra_error("auth = { token = \"t\" }\n"),
        "walhook.toml:12: subscriptions[0].auth: missing key \"type\"; use bearer, basic or header"
    );
    assert_eq!(
        extra_error("auth = { type = \"header\", name = \"Host\", value = \"\" }\n"),
        "walhook.toml:12: subscriptions[0].auth.value: must not be empty\n\
         walhook.toml:12: subscriptions[0].auth.name: header \"Host\" is set by walhook and cannot be overridden"
    );
    assert_eq!(
        extra_error("auth = { type = \"basic\", username = \"a:b\", password = \"p\" }\n"),
        "walhook.toml:12: subscriptions[0].auth.username: must not contain \":\" (RFC 7617)"
    );
}

#[test]
fn bad_batch_rate_limit_and_in_flight() {
    assert_eq!(
        extra_error(
            "batch = { max_events = 0, max_wait = \"soon\" }\nrate_limit = { per_second = 0, burst = 0 }\nmax_in_flight = -2\n"
        ),
        "walhook.toml:12: subscriptions[0].batch.max_events: must be at least 1, found 0\n\
         walhook.toml:12: subscriptions[0].batch.max_wait: invalid duration \"soon\": expected a number before \"soon\"\n\
         walhook.toml:13: subscriptions[0].rate_limit.per_second: must be greater than 0, found 0\n\
         walhook.toml:13: subscriptions[0].rate_limit.burst: must be at least 1, found 0\n\
         walhook.toml:14: subscriptions[0].max_in_flight: must be at least 1, found -2"
    );
    assert_eq!(
        extra_error("rate_limit = { burst = 5 }\n"),
        "walhook.toml:12: subscriptions[0].rate_limit: missing key \"per_second\""
    );
}

#[test]
fn bad_ordering_when_and_event_type() {
    assert_eq!(
        extra_error("ordering = \"fifo\"\nwhen = \" \"\nevent_type = \"invoice changed\"\n"),
        "walhook.toml:12: subscriptions[0].ordering: unknown ordering \"fifo\"; use \"key\" or \"none\"\n\
         walhook.toml:13: subscriptions[0].when: must not be empty; leave it out to fire on every change\n\
         walhook.toml:14: subscriptions[0].event_type: must be non-empty and contain no whitespace"
    );
}

#[test]
fn process_wide_keys_cannot_be_overridden() {
    assert_eq!(
        extra_error("allow_networks = [\"10.0.0.0/8\"]\nshutdown_timeout = \"5s\"\n"),
        "walhook.toml:12: subscriptions[0].allow_networks: can only be set in [delivery]; it applies to the whole process\n\
         walhook.toml:13: subscriptions[0].shutdown_timeout: can only be set in [delivery]; it applies to the whole process"
    );
    assert_eq!(
        extra_error("max_in_flight = 4\nheartbeat = \"5s\"\n"),
        "walhook.toml:13: subscriptions[0].heartbeat: unknown key; expected one of: name, object, table, operations, \
         watch, when, event_type, url, method, content_type, template, template_file, dead_on_status, secret, auth, \
         headers, batch, rate_limit, max_in_flight, ordering, \
         active, backfill, timeout, retry_schedule, allow_networks, shutdown_timeout"
    );
}

#[test]
fn all_problems_are_reported_in_file_order() {
    let text = r#"[source]
url = "postgres://db/erp"
slot = "bad-slot"

[[subscriptions]]
name = "a"
object = "missing"
url = "ftp://h/x"

[delivery]
timeout = "fast"
"#;
    let error = load(text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "walhook.toml:3: source.slot: invalid slot name \"bad-slot\"; use lower-case letters, digits and _ (at most 63)\n\
         walhook.toml:7: subscriptions[0].object: unknown object \"missing\"; no [objects] are defined\n\
         walhook.toml:8: subscriptions[0].url: invalid URL \"ftp://h/x\": scheme must be http or https\n\
         walhook.toml:11: delivery.timeout: invalid duration \"fast\": expected a number before \"fast\""
    );
    assert_eq!(error.findings().len(), 4);
    assert_eq!((error.line(), error.key()), (Some(3), "source.slot"));
    let last = &error.findings()[3];
    assert_eq!(
        (last.file.as_str(), last.line, last.key.as_str()),
        ("walhook.toml", Some(11), "delivery.timeout")
    );
}

// The config holds the parsed connection (`pg::ConnInfo`): whatever connecting would refuse is
// refused here, at the line, instead of after the config loaded.

#[test]
fn an_outbox_url_with_sslmode_allow_or_another_bad_value_is_refused_at_load_with_its_line() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[outbox]\nurl = \"postgres://db/ob?sslmode=allow\"\n"),
        "walhook.toml:4: outbox.url: invalid Postgres URL \"postgres://db/ob?sslmode=allow\": sslmode=allow is not supported; use sslmode=prefer or sslmode=disable"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp\"\n[outbox]\nurl = \"postgres://db/ob?sslmode=on\"\n"),
        "walhook.toml:4: outbox.url: invalid Postgres URL \"postgres://db/ob?sslmode=on\": invalid sslmode \"on\"; \
         use one of disable, prefer, require, verify-ca, verify-full"
    );
}

#[test]
fn tls_settings_that_only_failed_at_connect_are_refused_at_load() {
    assert_eq!(
        error("[source]\nurl = \"postgres://db/erp?sslrootcert=system&sslmode=require\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://db/erp?sslrootcert=system&sslmode=require\": \
         sslrootcert=system needs sslmode=verify-full, not sslmode=require: any certificate from a public CA would \
         pass otherwise"
    );
    assert_eq!(
        error("[source]\nurl = \"postgres://u:${PGPASSWORD}@db/erp?sslcert=/c.pem\"\n"),
        "walhook.toml:2: source.url: invalid Postgres URL \"postgres://u:***@db/erp?sslcert=/c.pem\": \
         sslcert is set but sslkey is not: give both (the client certificate and its private key)"
    );
}

//! Documents (SPEC §3a) and `keep_state` in the file: a valid invoice with its lines read
//! back, and every message a user can see about children, each pinned in full.

use super::*;

/// Lines 1–14: a source, an invoice header keyed on `id`, and the start of one collection.
const HEADER: &str = r#"[source]
url = "postgres://walhook@db/erp"

[objects.invoice]
table = "public.invoice"
key = ["id"]
fields = ["number", "partner_id", "state"]

[[objects.invoice.children]]
name = "invoice_lines"
table = "public.invoice_line"
parent_key = ["invoice_id"]
key = ["id"]
fields = ["product", "quantity", "price"]
"#;

/// The message for `text`, which must fail to load.
fn error(text: &str) -> String {
    match load(text) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// The message for [`HEADER`] followed by `rest` (from line 15 on).
fn header_error(rest: &str) -> String {
    error(&format!("{HEADER}{rest}"))
}

#[test]
fn an_invoice_with_its_lines_reads_back_as_a_document() {
    let text = format!(
        "{HEADER}order_by = [\"sequence\", \"id\"]\n\n\
         [[objects.invoice.children]]\nname = \"payments\"\ntable = \"billing.payment\"\n\
         parent_key = [\"invoice_id\"]\n\n\
         [objects.partner]\ntable = \"res_partner\"\nkeep_state = true\n\n\
         [[subscriptions]]\nname = \"s\"\nobject = \"invoice\"\n\
         watch = [\"state\", \"invoice_lines\"]\nurl = \"https://h.example/x\"\n"
    );
    let config = load(&text).unwrap();

    let invoice = &config.objects["invoice"];
    assert!(invoice.is_document() && invoice.keeps_state());
    assert!(!invoice.keep_state, "left out, so not written");
    assert_eq!(
        invoice.children,
        [
            ChildConfig {
                name: "invoice_lines".into(),
                table: "public.invoice_line".parse().unwrap(),
                parent_key: vec!["invoice_id".into()],
                key: Some(vec!["id".into()]),
                fields: Some(vec!["product".into(), "quantity".into(), "price".into()]),
                order_by: Some(vec!["sequence".into(), "id".into()]),
            },
            ChildConfig {
                name: "payments".into(),
                table: "billing.payment".parse().unwrap(),
                parent_key: vec!["invoice_id".into()],
                key: None,
                fields: None,
                order_by: None,
            },
        ]
    );
    let partner = &config.objects["partner"];
    assert!(partner.keep_state && partner.keeps_state() && !partner.is_document());

    // The child tables are published with the header's.
    assert_eq!(
        table_list(&config.tables()),
        "public.invoice, public.invoice_line, billing.payment, public.res_partner"
    );
    assert_eq!(
        config.subscriptions[0].watch,
        Some(vec!["state".into(), "invoice_lines".into()])
    );
}

#[test]
fn keep_state_and_max_event_bytes_have_defaults() {
    let config = load(MINIMAL).unwrap();
    let invoice = &config.objects["invoice"];
    assert!(!invoice.keep_state && !invoice.keeps_state() && !invoice.is_document());
    assert_eq!(config.outbox.max_event_bytes, 1_048_576);

    let text = format!("{MINIMAL}\n[outbox]\nmax_event_bytes = \"256KiB\"\n");
    assert_eq!(load(&text).unwrap().outbox.max_event_bytes, 262_144);
    let text = format!("{MINIMAL}\n[outbox]\nmax_event_bytes = 1024\n");
    assert_eq!(load(&text).unwrap().outbox.max_event_bytes, 1024);
}

#[test]
fn max_event_bytes_is_a_size_of_at_least_one_kib() {
    let base = "[source]\nurl = \"postgres://db/erp\"\n[outbox]\n";
    assert_eq!(
        error(&format!("{base}max_event_bytes = \"512B\"\n")),
        "walhook.toml:4: outbox.max_event_bytes: must be at least 1KiB (1024 bytes), found 512 \
         bytes; leave it out for 1MiB"
    );
    assert_eq!(
        error(&format!("{base}max_event_bytes = \"big\"\n")),
        "walhook.toml:4: outbox.max_event_bytes: invalid size \"big\": expected a number \
         before \"big\""
    );
}

#[test]
fn unknown_child_key_names_the_ones_there_are() {
    assert_eq!(
        header_error("sort = [\"id\"]\n"),
        "walhook.toml:15: objects.invoice.children[0].sort: unknown key; expected one of: \
         name, table, parent_key, key, fields, order_by"
    );
    assert_eq!(
        header_error("parent = [\"invoice_id\"]\n"),
        "walhook.toml:15: objects.invoice.children[0].parent: unknown key; did you mean \
         \"parent_key\"?"
    );
}

#[test]
fn a_collection_needs_a_name_a_table_and_a_parent_key() {
    assert_eq!(
        error(
            "[source]\nurl = \"postgres://db/erp\"\n[objects.invoice]\ntable = \"invoice\"\n\
             [[objects.invoice.children]]\nkey = [\"id\"]\n"
        ),
        "walhook.toml:5: objects.invoice.children[0]: missing key \"name\" (the property in \
         values)\n\
         walhook.toml:5: objects.invoice.children[0]: missing key \"table\"\n\
         walhook.toml:5: objects.invoice.children[0]: missing key \"parent_key\"; list the \
         child columns that hold the header's key, in key order"
    );
}

#[test]
fn a_collection_name_is_a_lower_case_identifier() {
    let named = |name: &str| HEADER.replace("\"invoice_lines\"", &format!("{name:?}"));
    assert_eq!(
        error(&named("Invoice-Lines")),
        "walhook.toml:10: objects.invoice.children[0].name: invalid collection name \
         \"Invoice-Lines\"; use lower-case letters, digits and _, not starting with a digit"
    );
    assert_eq!(
        error(&named("2lines")),
        "walhook.toml:10: objects.invoice.children[0].name: invalid collection name \
         \"2lines\"; use lower-case letters, digits and _, not starting with a digit"
    );
    assert_eq!(
        error(&named("")),
        "walhook.toml:10: objects.invoice.children[0].name: invalid collection name \"\"; \
         use lower-case letters, digits and _, not starting with a digit"
    );
    load(&named("_lines2")).unwrap();
}

#[test]
fn a_collection_name_is_unique_and_no_header_field() {
    assert_eq!(
        header_error(
            "\n[[objects.invoice.children]]\nname = \"invoice_lines\"\n\
             table = \"public.invoice_tax\"\nparent_key = [\"invoice_id\"]\n"
        ),
        "walhook.toml:17: objects.invoice.children[1].name: duplicate collection name \
         \"invoice_lines\" (first used at line 10)"
    );
    assert_eq!(
        error(&HEADER.replace("\"invoice_lines\"", "\"state\"")),
        "walhook.toml:10: objects.invoice.children[0].name: \"state\" is also a field of the \
         header (objects.invoice.fields): both would be values.state; give the collection \
         another name"
    );
}

#[test]
fn a_child_table_is_valid_and_neither_the_header_nor_another_collections() {
    assert_eq!(
        error(&HEADER.replace("\"public.invoice_line\"", "\"a.b.c\"")),
        "walhook.toml:11: objects.invoice.children[0].table: invalid table name \"a.b.c\"; \
         expected \"schema.table\" or \"table\""
    );
    // `invoice` is `public.invoice`, the header's table, however it is written.
    assert_eq!(
        error(&HEADER.replace("\"public.invoice_line\"", "\"invoice\"")),
        "walhook.toml:11: objects.invoice.children[0].table: public.invoice is the header's \
         own table; a collection holds rows of another table that point at the header"
    );
    assert_eq!(
        header_error(
            "\n[[objects.invoice.children]]\nname = \"taxes\"\ntable = \"invoice_line\"\n\
             parent_key = [\"invoice_id\"]\n"
        ),
        "walhook.toml:18: objects.invoice.children[1].table: table public.invoice_line is \
         already the table of another collection of this object (first used at line 11); a \
         row of it would belong to both"
    );
}

#[test]
fn a_parent_key_has_one_column_per_header_key_column() {
    assert_eq!(
        error(&HEADER.replace(
            "parent_key = [\"invoice_id\"]",
            "parent_key = [\"company_id\", \"invoice_id\"]"
        )),
        "walhook.toml:12: objects.invoice.children[0].parent_key: has 2 column(s) but \
         objects.invoice.key has 1; list one child column for each header key column, in the \
         same order"
    );
    assert_eq!(
        error(&HEADER.replace("parent_key = [\"invoice_id\"]", "parent_key = []")),
        "walhook.toml:12: objects.invoice.children[0].parent_key: must not be empty; list the \
         child columns that hold the header's key, in key order"
    );
    // Without a configured header key the primary key's length is known only to `check`.
    load(
        &HEADER
            .replace(
                "key = [\"id\"]\nfields = [\"number\"",
                "fields = [\"number\"",
            )
            .replace("[\"invoice_id\"]", "[\"company_id\", \"invoice_id\"]"),
    )
    .unwrap();
}

#[test]
fn child_column_lists_are_checked_like_the_objects() {
    assert_eq!(
        error(
            &HEADER
                .replace(
                    "key = [\"id\"]\nfields = [\"product\"",
                    "key = []\nfields = [\"product\""
                )
                .replace("\"quantity\", \"price\"", "\"quantity\", \"product\"")
        ),
        "walhook.toml:13: objects.invoice.children[0].key: must not be empty; leave it out to \
         use the child table's primary key\n\
         walhook.toml:14: objects.invoice.children[0].fields[2]: \"product\" is listed twice"
    );
    assert_eq!(
        header_error("order_by = [\"sequence\", \"\", \"sequence\"]\n"),
        "walhook.toml:15: objects.invoice.children[0].order_by[1]: column name must not be \
         empty\n\
         walhook.toml:15: objects.invoice.children[0].order_by[2]: \"sequence\" is listed twice"
    );
    assert_eq!(
        header_error("order_by = []\n"),
        "walhook.toml:15: objects.invoice.children[0].order_by: must not be empty; leave it \
         out to order by the child key"
    );
}

#[test]
fn a_document_always_keeps_state() {
    assert_eq!(
        error(&HEADER.replacen(
            "key = [\"id\"]\nfields",
            "keep_state = false\nkey = [\"id\"]\nfields",
            1
        )),
        "walhook.toml:6: objects.invoice.keep_state: documents always keep state (an object \
         with children needs its rows' last values to build every event); leave keep_state out"
    );
    let config = load(&HEADER.replacen(
        "key = [\"id\"]\nfields",
        "keep_state = true\nkey = [\"id\"]\nfields",
        1,
    ))
    .unwrap();
    assert!(config.objects["invoice"].keeps_state());
    assert_eq!(
        error(
            "[source]\nurl = \"postgres://db/erp\"\n[objects.invoice]\ntable = \"invoice\"\n\
             children = []\n"
        ),
        "walhook.toml:5: objects.invoice.children: must not be empty; leave it out for an \
         object without collections"
    );
}

#[test]
fn watch_on_a_document_names_header_fields_and_collections() {
    let sub = |watch: &str| {
        format!(
            "{HEADER}\n[[subscriptions]]\nname = \"s\"\nobject = \"invoice\"\n\
             url = \"https://h.example/x\"\nwatch = {watch}\n"
        )
    };
    load(&sub("[\"state\", \"invoice_lines\"]")).unwrap();
    assert_eq!(
        error(&sub("[\"invoice_line\", \"total\"]")),
        "walhook.toml:20: subscriptions[0].watch[0]: \"invoice_line\" is not in the fields or \
         collections of object \"invoice\"; did you mean \"invoice_lines\"?\n\
         walhook.toml:20: subscriptions[0].watch[1]: \"total\" is not in the fields or \
         collections of object \"invoice\""
    );
}

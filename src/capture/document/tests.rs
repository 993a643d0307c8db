//! Stories of the document model (SPEC §3a): what `values` shows of an invoice and its
//! lines, what one transaction makes of it for each subscription (`route`), and the order
//! of a collection (`compare_sort`). States are built by hand, as the outbox keeps them.

use std::cmp::Ordering;

use serde_json::json;

use super::*;
use crate::capture::envelope::document_event_id;
use crate::capture::relation::{Column, Identity};
use crate::pg::Lsn;

/// The commit of every story: 2026-11-22 10:15:30.123456 UTC, LSN 0/16B3748, txid 771.
const COMMIT: Commit = Commit {
    lsn: Lsn(0x16B_3748),
    time: 848_657_730_123_456,
    xid: 771,
};

/// The invoice document: a header keyed on `id` and its lines in `sequence` order (which
/// is not one of the lines' fields).
const OBJECT: &str = r#"[source]
url = "postgres://walhook@db/erp"

[objects.invoice]
table = "public.invoice"
key = ["id"]
fields = ["id", "partner_id", "state", "amount_total"]

[[objects.invoice.children]]
name = "invoice_lines"
table = "public.invoice_line"
parent_key = ["invoice_id"]
key = ["id"]
fields = ["id", "product", "quantity", "price"]
order_by = ["sequence"]
"#;

/// Who listens to invoices, in config order.
const SUBSCRIPTIONS: &str = r#"
[[subscriptions]]
name = "all-invoices"
object = "invoice"
url = "https://hooks.example.com/all"

[[subscriptions]]
name = "partner-sync"
object = "invoice"
watch = ["partner_id"]
url = "https://hooks.example.com/partner"

[[subscriptions]]
name = "line-sync"
object = "invoice"
watch = ["invoice_lines"]
url = "https://hooks.example.com/lines"

[[subscriptions]]
name = "big-invoices"
object = "invoice"
operations = ["create", "update"]
when = "values.amount_total > 99"
url = "https://hooks.example.com/big"

[[subscriptions]]
name = "deletions"
object = "invoice"
operations = ["delete"]
url = "https://hooks.example.com/deleted"

[[subscriptions]]
name = "audit"
object = "invoice"
operations = ["update"]
event_type = "invoice.audited"
url = "https://hooks.example.com/audit"
"#;

/// The columns of `public.invoice`: `write_date` is one the object leaves out.
const INVOICE_COLUMNS: [(&str, TypeKind); 5] = [
    ("id", TypeKind::Integer),
    ("partner_id", TypeKind::Integer),
    ("state", TypeKind::Text),
    ("amount_total", TypeKind::Numeric),
    ("write_date", TypeKind::Text),
];

/// The columns of `public.invoice_line`.
const LINE_COLUMNS: [(&str, TypeKind); 6] = [
    ("id", TypeKind::Integer),
    ("invoice_id", TypeKind::Integer),
    ("sequence", TypeKind::Integer),
    ("product", TypeKind::Text),
    ("quantity", TypeKind::Numeric),
    ("price", TypeKind::Numeric),
];

/// `text` as `walhook.toml`, with no environment.
fn config(text: &str) -> Config {
    Config::parse(text, "walhook.toml", &|_| None).unwrap_or_else(|error| panic!("{error}"))
}

/// A table as the catalog describes it, keyed on its first column.
fn relation(oid: u32, table: &str, columns: &[(&str, TypeKind)]) -> (TableName, Relation) {
    let name: TableName = table.parse().unwrap();
    let relation = Relation {
        oid,
        schema: name.schema.clone(),
        name: name.name.clone(),
        columns: columns
            .iter()
            .map(|(name, kind)| Column {
                name: (*name).to_owned(),
                type_oid: 0,
                kind: kind.clone(),
            })
            .collect(),
        key: vec![0],
        identity: Identity::Key,
        identity_columns: vec![0],
    };
    (name, relation)
}

/// The invoice and invoice line tables.
fn relations() -> HashMap<TableName, Relation> {
    HashMap::from([
        relation(16_384, "public.invoice", &INVOICE_COLUMNS),
        relation(16_390, "public.invoice_line", &LINE_COLUMNS),
    ])
}

/// The documents of [`OBJECT`] followed by `subscriptions` (and whatever else).
fn documents(subscriptions: &str) -> Documents {
    Documents::new(&config(&format!("{OBJECT}{subscriptions}")), &relations())
        .unwrap_or_else(|error| panic!("{error:?}"))
}

/// The invoice document of [`OBJECT`] with [`SUBSCRIPTIONS`].
fn invoices() -> Documents {
    documents(SUBSCRIPTIONS)
}

/// The id of the transaction's first document event.
fn event_id() -> String {
    document_event_id(COMMIT.lsn, 1)
}

/// What one transaction made of the invoice document.
fn route(documents: &Documents, before: &Doc, after: &Doc) -> Route {
    documents.object(0).route(before, after, event_id(), COMMIT)
}

/// An event's body, parsed.
fn body_of(event: &RoutedEvent) -> Map<String, Value> {
    match serde_json::from_slice(&event.body) {
        Ok(Value::Object(body)) => body,
        other => panic!("the body is not a JSON object: {other:?}"),
    }
}

/// The object of a `json!` literal.
fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// An invoice header as the state keeps it.
#[derive(Debug, Clone, Copy)]
struct Header {
    id: i64,
    partner_id: i64,
    state: &'static str,
    amount_total: &'static str,
}

/// Invoice 123 of partner 1, posted, 120.00.
const INVOICE: Header = Header {
    id: 123,
    partner_id: 1,
    state: "posted",
    amount_total: "120.00",
};

impl Header {
    /// Its fields, as `values` shows them.
    fn fields(&self) -> Value {
        json!({
            "id": self.id,
            "partner_id": self.partner_id,
            "state": self.state,
            "amount_total": self.amount_total,
        })
    }

    /// Its entry in a [`Doc`].
    fn entry(&self) -> ((u16, String), StateRow) {
        let row = StateRow {
            key: map(json!({ "id": self.id })),
            sort: Vec::new(),
            fields: map(self.fields()),
        };
        ((0, format!("[{}]", self.id)), row)
    }
}

/// An invoice line as the state keeps it; `sequence` only orders it.
#[derive(Debug, Clone, Copy)]
struct Line {
    id: i64,
    sequence: i64,
    product: &'static str,
    quantity: &'static str,
    price: &'static str,
}

/// Three lines of invoice 123 as they were inserted: their ids, their row keys as text
/// and their sequences give three different orders.
const LINES: [Line; 3] = [
    Line {
        id: 10,
        sequence: 30,
        product: "Chair",
        quantity: "4",
        price: "25.00",
    },
    Line {
        id: 11,
        sequence: 10,
        product: "Desk",
        quantity: "1",
        price: "199.00",
    },
    Line {
        id: 9,
        sequence: 20,
        product: "Lamp",
        quantity: "2",
        price: "15.50",
    },
];

/// [`LINES`] in `sequence` order: Desk, Lamp, Chair.
const IN_ORDER: [Line; 3] = [LINES[1], LINES[2], LINES[0]];

impl Line {
    /// Its fields, as an element of `values.invoice_lines`.
    fn fields(&self) -> Value {
        json!({
            "id": self.id,
            "product": self.product,
            "quantity": self.quantity,
            "price": self.price,
        })
    }

    /// Its entry in a [`Doc`].
    fn entry(&self) -> ((u16, String), StateRow) {
        let row = StateRow {
            key: Map::new(),
            sort: vec![json!(self.sequence)],
            fields: map(self.fields()),
        };
        ((1, format!("[{}]", self.id)), row)
    }
}

/// A document: its header, if it has one yet, and its lines in any order.
fn doc(header: Option<Header>, lines: &[Line]) -> Doc {
    Doc {
        rows: header
            .iter()
            .map(Header::entry)
            .chain(lines.iter().map(Line::entry))
            .collect(),
    }
}

/// `lines` as the `invoice_lines` array, in the order given.
fn array(lines: &[Line]) -> Value {
    Value::Array(lines.iter().map(Line::fields).collect())
}

/// The whole `values` of an invoice with `lines` (given in the expected order).
fn values(header: Header, lines: &[Line]) -> Value {
    let mut values = map(header.fields());
    values.insert("invoice_lines".into(), array(lines));
    Value::Object(values)
}

/// `LINES` with the line `id` changed by `change`.
fn lines_with(id: i64, change: impl Fn(&mut Line)) -> Vec<Line> {
    let mut lines = LINES.to_vec();
    change(lines.iter_mut().find(|l| l.id == id).unwrap());
    lines
}

/// A story of one transaction: the document before and after it, and what must come of
/// it. Every event of a route carries the same body but for its `type`.
struct Case {
    name: &'static str,
    before: Doc,
    after: Doc,
    /// The events as (type, receiving subscriptions), in order; empty: none at all.
    events: Vec<(&'static str, Vec<&'static str>)>,
    operation: &'static str,
    values: Value,
    /// `None`: the body has no `previous`.
    previous: Option<Value>,
    /// `None`: the body has no `changed`.
    changed: Option<Value>,
}

impl Case {
    /// A transaction that must make no event at all.
    fn nothing(name: &'static str, before: Doc, after: Doc) -> Case {
        Case {
            name,
            before,
            after,
            events: Vec::new(),
            operation: "",
            values: Value::Null,
            previous: None,
            changed: None,
        }
    }
}

/// Routes every case through [`invoices`] and checks its events and their bodies.
fn check(cases: Vec<Case>) {
    let documents = invoices();
    for case in cases {
        let name = case.name;
        let route = route(&documents, &case.before, &case.after);
        assert!(route.problems.is_empty(), "{name}: {:?}", route.problems);
        assert_eq!(route.oversized, 0, "{name}");
        let events: Vec<(&str, Vec<&str>)> = route
            .events
            .iter()
            .map(|e| {
                let subscriptions = e.subscriptions.iter().map(|s| &**s).collect();
                (e.event_type.as_str(), subscriptions)
            })
            .collect();
        assert_eq!(events, case.events, "{name}: events and who gets them");
        for event in &route.events {
            assert!(event.dead.is_empty(), "{name}: {:?}", event.dead);
            assert!(event.target.is_none() && !event.unrendered, "{name}");
            assert_eq!(event.event_id, event_id(), "{name}");
            assert_eq!(event.object, "invoice", "{name}");
            assert_eq!(event.key, r#"{"id":123}"#, "{name}");
            let body = body_of(event);
            assert_eq!(body["type"], event.event_type.as_str(), "{name}");
            assert_eq!(body["operation"], case.operation, "{name}: operation");
            assert_eq!(body["key"], json!({ "id": 123 }), "{name}: key");
            assert_eq!(body["values"], case.values, "{name}: values");
            assert_eq!(
                body.get("previous"),
                case.previous.as_ref(),
                "{name}: previous"
            );
            assert_eq!(
                body.get("changed"),
                case.changed.as_ref(),
                "{name}: changed"
            );
        }
    }
}

#[test]
fn a_new_invoice_is_one_create_event_with_its_lines_in_order_by_order() {
    let created = vec![(
        "invoice.created",
        vec!["all-invoices", "partner-sync", "line-sync", "big-invoices"],
    )];
    check(vec![
        Case {
            name: "header and three lines appear together",
            before: Doc::default(),
            after: doc(Some(INVOICE), &LINES),
            events: created.clone(),
            operation: "create",
            values: values(INVOICE, &IN_ORDER),
            previous: None,
            changed: None,
        },
        Case {
            name: "a header without lines has an empty collection",
            before: Doc::default(),
            after: doc(Some(INVOICE), &[]),
            events: created.clone(),
            operation: "create",
            values: values(INVOICE, &[]),
            previous: None,
            changed: None,
        },
        Case {
            name: "lines held without their header are created with it",
            before: doc(None, &LINES),
            after: doc(Some(INVOICE), &LINES),
            events: created,
            operation: "create",
            values: values(INVOICE, &IN_ORDER),
            previous: None,
            changed: None,
        },
    ]);
}

#[test]
fn a_line_quantity_change_is_one_update_with_the_old_and_new_arrays() {
    let after = lines_with(11, |l| l.quantity = "3");
    check(vec![Case {
        name: "the desk's quantity goes from 1 to 3",
        before: doc(Some(INVOICE), &LINES),
        after: doc(Some(INVOICE), &after),
        // partner-sync watches partner_id only: it gets nothing.
        events: vec![
            (
                "invoice.updated",
                vec!["all-invoices", "line-sync", "big-invoices"],
            ),
            ("invoice.audited", vec!["audit"]),
        ],
        operation: "update",
        values: values(INVOICE, &[after[1], after[2], after[0]]),
        previous: Some(json!({ "invoice_lines": array(&IN_ORDER) })),
        changed: Some(json!(["invoice_lines"])),
    }]);
}

#[test]
fn any_change_to_the_lines_is_one_changed_collection() {
    let lines_changed = || {
        vec![
            (
                "invoice.updated",
                vec!["all-invoices", "line-sync", "big-invoices"],
            ),
            ("invoice.audited", vec!["audit"]),
        ]
    };
    let old_lines = Some(json!({ "invoice_lines": array(&IN_ORDER) }));
    let changed = Some(json!(["invoice_lines"]));
    let rug = Line {
        id: 12,
        sequence: 15,
        product: "Rug",
        quantity: "1",
        price: "80.00",
    };
    // The chair moves to the top: its sequence is no field, but the array's order changes.
    let renumbered = lines_with(10, |l| l.sequence = 5);
    check(vec![
        Case {
            name: "a line is added",
            before: doc(Some(INVOICE), &LINES),
            after: doc(Some(INVOICE), &[LINES[0], LINES[1], LINES[2], rug]),
            events: lines_changed(),
            operation: "update",
            values: values(INVOICE, &[LINES[1], rug, LINES[2], LINES[0]]),
            previous: old_lines.clone(),
            changed: changed.clone(),
        },
        Case {
            name: "a line is removed",
            before: doc(Some(INVOICE), &LINES),
            after: doc(Some(INVOICE), &[LINES[0], LINES[1]]),
            events: lines_changed(),
            operation: "update",
            values: values(INVOICE, &[LINES[1], LINES[0]]),
            previous: old_lines.clone(),
            changed: changed.clone(),
        },
        Case {
            name: "the last line is removed",
            before: doc(Some(INVOICE), &[LINES[1]]),
            after: doc(Some(INVOICE), &[]),
            events: lines_changed(),
            operation: "update",
            values: values(INVOICE, &[]),
            previous: Some(json!({ "invoice_lines": array(&[LINES[1]]) })),
            changed: changed.clone(),
        },
        Case {
            name: "the lines are renumbered into another order",
            before: doc(Some(INVOICE), &LINES),
            after: doc(Some(INVOICE), &renumbered),
            events: lines_changed(),
            operation: "update",
            values: values(INVOICE, &[renumbered[0], renumbered[1], renumbered[2]]),
            previous: old_lines,
            changed,
        },
    ]);
}

#[test]
fn a_partner_change_names_only_the_partner() {
    let moved = Header {
        partner_id: 2,
        ..INVOICE
    };
    check(vec![Case {
        name: "invoice 123 goes from partner 1 to partner 2",
        before: doc(Some(INVOICE), &LINES),
        after: doc(Some(moved), &LINES),
        // line-sync watches the lines only: it gets nothing.
        events: vec![
            (
                "invoice.updated",
                vec!["all-invoices", "partner-sync", "big-invoices"],
            ),
            ("invoice.audited", vec!["audit"]),
        ],
        operation: "update",
        values: values(moved, &IN_ORDER),
        previous: Some(json!({ "partner_id": 1 })),
        changed: Some(json!(["partner_id"])),
    }]);
}

#[test]
fn a_header_and_line_change_in_one_transaction_is_one_event_naming_both() {
    let cancelled = Header {
        state: "cancel",
        ..INVOICE
    };
    let after = lines_with(9, |l| l.price = "14.00");
    check(vec![Case {
        name: "the invoice is cancelled and the lamp repriced",
        before: doc(Some(INVOICE), &LINES),
        after: doc(Some(cancelled), &after),
        events: vec![
            (
                "invoice.updated",
                vec!["all-invoices", "line-sync", "big-invoices"],
            ),
            ("invoice.audited", vec!["audit"]),
        ],
        operation: "update",
        values: values(cancelled, &[after[1], after[2], after[0]]),
        previous: Some(json!({ "state": "posted", "invoice_lines": array(&IN_ORDER) })),
        changed: Some(json!(["state", "invoice_lines"])),
    }]);
}

#[test]
fn deleting_an_invoice_with_its_lines_is_one_delete_holding_what_it_was() {
    let deleted = vec![(
        "invoice.deleted",
        vec!["all-invoices", "partner-sync", "line-sync", "deletions"],
    )];
    check(vec![
        Case {
            name: "header and lines are deleted together",
            before: doc(Some(INVOICE), &LINES),
            after: Doc::default(),
            events: deleted.clone(),
            operation: "delete",
            values: Value::Null,
            previous: Some(values(INVOICE, &IN_ORDER)),
            changed: None,
        },
        Case {
            name: "the header goes and its lines are left behind",
            before: doc(Some(INVOICE), &LINES),
            after: doc(None, &LINES),
            events: deleted,
            operation: "delete",
            values: Value::Null,
            previous: Some(values(INVOICE, &IN_ORDER)),
            changed: None,
        },
    ]);
}

#[test]
fn a_transaction_that_changes_nothing_configured_sends_nothing() {
    // The desk's sequence moves from 10 to 15: still first, and sequence is no field.
    let same_order = lines_with(11, |l| l.sequence = 15);
    let repriced = lines_with(11, |l| l.price = "189.00");
    check(vec![
        Case::nothing(
            "the document is as it was (a column outside the fields changed)",
            doc(Some(INVOICE), &LINES),
            doc(Some(INVOICE), &LINES),
        ),
        Case::nothing(
            "a line's sequence changes but not the order",
            doc(Some(INVOICE), &LINES),
            doc(Some(INVOICE), &same_order),
        ),
        Case::nothing(
            "lines change while their header is not there yet",
            doc(None, &LINES),
            doc(None, &repriced),
        ),
        Case::nothing(
            "lines appear without a header",
            Doc::default(),
            doc(None, &LINES),
        ),
        Case::nothing(
            "lines without a header go away",
            doc(None, &LINES),
            Doc::default(),
        ),
        Case::nothing("nothing before or after", Doc::default(), Doc::default()),
    ]);
}

#[test]
fn subscriptions_sharing_a_body_share_one_event() {
    let documents = invoices();
    let moved = Header {
        partner_id: 2,
        ..INVOICE
    };
    let route = route(
        &documents,
        &doc(Some(INVOICE), &LINES),
        &doc(Some(moved), &LINES),
    );
    let [shared, audit] = &route.events[..] else {
        panic!("two events: {:?}", route.events);
    };
    assert_eq!(
        shared.subscriptions,
        ["all-invoices", "partner-sync", "big-invoices"].map(Arc::<str>::from)
    );
    assert_eq!(audit.subscriptions, [Arc::<str>::from("audit")]);
    // Its own type makes the audit its own event: of the same change, so of the same id.
    assert_eq!(shared.event_id, audit.event_id);
    let (mut shared, mut audit) = (body_of(shared), body_of(audit));
    assert_eq!(shared.remove("type"), Some(json!("invoice.updated")));
    assert_eq!(audit.remove("type"), Some(json!("invoice.audited")));
    assert_eq!(shared, audit, "the bodies differ in their type only");
}

#[test]
fn a_when_over_a_numeric_header_field_compares_it_as_a_number() {
    let documents = invoices();
    // (amount_total, whether `values.amount_total > 99` holds)
    let cases = [
        ("100.50", true),
        ("1000", true),
        ("99.01", true),
        ("99", false),
        ("99.00", false),
        ("98.75", false),
        ("9.5", false),
        ("-120.00", false),
    ];
    for (amount_total, fires) in cases {
        let header = Header {
            amount_total,
            ..INVOICE
        };
        let route = route(&documents, &Doc::default(), &doc(Some(header), &LINES));
        assert!(
            route.problems.is_empty(),
            "{amount_total}: {:?}",
            route.problems
        );
        let [event] = &route.events[..] else {
            panic!("{amount_total}: one create event: {:?}", route.events);
        };
        assert_eq!(
            event.subscriptions.iter().any(|s| &**s == "big-invoices"),
            fires,
            "{amount_total} > 99 is {fires}"
        );
        // Numbers in the `when` only: the event still carries the amount as text.
        assert_eq!(body_of(event)["values"]["amount_total"], amount_total);
    }
}

#[test]
fn a_when_over_a_collection_sees_its_numeric_fields_as_numbers() {
    let documents = documents(
        r#"
[[subscriptions]]
name = "bulk"
object = "invoice"
when = "values.invoice_lines[0].quantity > 10 and previous.invoice_lines[0].quantity < 10"
url = "https://hooks.example.com/bulk"
"#,
    );
    // (the first line's quantity after, whether the `when` holds); before it is 1.
    let cases = [("12.5", true), ("100", true), ("10", false), ("9.5", false)];
    for (quantity, fires) in cases {
        let after = lines_with(11, |l| l.quantity = quantity);
        let route = route(
            &documents,
            &doc(Some(INVOICE), &LINES),
            &doc(Some(INVOICE), &after),
        );
        assert!(
            route.problems.is_empty(),
            "{quantity}: {:?}",
            route.problems
        );
        assert_eq!(route.events.len(), usize::from(fires), "{quantity}");
    }
}

#[test]
fn an_event_body_says_what_happened_to_which_document() {
    let documents = invoices();
    let route = route(&documents, &Doc::default(), &doc(Some(INVOICE), &LINES));
    let body = body_of(&route.events[0]);
    let names: Vec<&str> = body.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "id",
            "type",
            "timestamp",
            "object",
            "operation",
            "key",
            "values",
            "source"
        ],
        "SPEC §3 order; a create has no previous or changed"
    );
    assert_eq!(body["id"], "evt_00000000016B3748_d0001");
    assert_eq!(body["type"], "invoice.created");
    assert_eq!(body["timestamp"], "2026-11-22T10:15:30.123456Z");
    assert_eq!(body["object"], "invoice");
    assert_eq!(body["operation"], "create");
    assert_eq!(body["key"], json!({ "id": 123 }));
    assert_eq!(
        body["source"],
        json!({ "table": "public.invoice", "lsn": "0/16B3748", "txid": 771 }),
        "the header's table, the transaction's position"
    );

    let updated = route_of_update(&documents);
    let body = body_of(&updated.events[0]);
    let names: Vec<&str> = body.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "id",
            "type",
            "timestamp",
            "object",
            "operation",
            "key",
            "values",
            "previous",
            "changed",
            "source"
        ]
    );
    assert_eq!(body["type"], "invoice.updated");
}

/// The partner change of invoice 123.
fn route_of_update(documents: &Documents) -> Route {
    let moved = Header {
        partner_id: 2,
        ..INVOICE
    };
    route(
        documents,
        &doc(Some(INVOICE), &LINES),
        &doc(Some(moved), &LINES),
    )
}

#[test]
fn a_named_object_names_its_events() {
    let text = OBJECT.replace(
        "[objects.invoice]\n",
        "[objects.invoice]\nname = \"account.invoice\"\n",
    );
    let subscription = r#"
[[subscriptions]]
name = "all-invoices"
object = "invoice"
url = "https://hooks.example.com/all"
"#;
    let documents = Documents::new(&config(&format!("{text}{subscription}")), &relations())
        .unwrap_or_else(|error| panic!("{error:?}"));
    let object = documents.object(0);
    assert_eq!(
        (&*object.id, object.name.as_str()),
        ("invoice", "account.invoice")
    );
    let route = route_of_update(&documents);
    let [event] = &route.events[..] else {
        panic!("one event: {:?}", route.events);
    };
    assert_eq!(event.event_type, "account.invoice.updated");
    assert_eq!(event.object, "account.invoice");
    let body = body_of(event);
    assert_eq!(body["type"], "account.invoice.updated");
    assert_eq!(body["object"], "account.invoice");
}

/// [`OBJECT`] with `outbox.max_event_bytes` at its minimum, 1 KiB, and `subscriptions`.
fn small_events(subscriptions: &str) -> Documents {
    documents(&format!(
        "\n[outbox]\nmax_event_bytes = \"1KiB\"\n{subscriptions}"
    ))
}

/// An invoice with `count` lines.
fn invoice_with_lines(count: i64) -> Doc {
    let lines: Vec<Line> = (1..=count)
        .map(|i| Line {
            id: 1000 + i,
            sequence: i,
            product: "Office chair, black, with armrests",
            quantity: "1",
            price: "149.00",
        })
        .collect();
    doc(Some(INVOICE), &lines)
}

/// The `too_large` of an event recorded in place of one too big, after checking that
/// the rest of its body says which event it was.
fn too_large(event: &RoutedEvent, event_type: &str) -> Value {
    let body = body_of(event);
    assert_eq!(body["id"], event_id());
    assert_eq!(body["type"], event_type);
    assert_eq!(body["key"], json!({ "id": 123 }));
    assert_eq!(
        body["values"],
        Value::Null,
        "the values are what was too big"
    );
    assert_eq!(body["source"]["table"], "public.invoice");
    body.get("too_large").cloned().expect("a too_large field")
}

#[test]
fn a_document_too_big_for_max_event_bytes_is_dead_for_its_subscription() {
    let documents = small_events(
        r#"
[[subscriptions]]
name = "all-invoices"
object = "invoice"
url = "https://hooks.example.com/all"
"#,
    );
    // (lines, too big); 40 lines make a body of about 3 KiB.
    for (lines, too_big) in [(1, false), (3, false), (40, true)] {
        let route = route(&documents, &Doc::default(), &invoice_with_lines(lines));
        let [event] = &route.events[..] else {
            panic!("{lines} lines: one event: {:?}", route.events);
        };
        if !too_big {
            assert!(event.body.len() <= 1024, "{lines} lines");
            assert_eq!(event.subscriptions, [Arc::<str>::from("all-invoices")]);
            assert!(event.dead.is_empty() && route.problems.is_empty());
            assert_eq!(route.oversized, 0, "{lines} lines");
            continue;
        }
        assert_eq!(route.oversized, 1, "{lines} lines");
        assert!(event.subscriptions.is_empty(), "sent to no one");
        let [(subscription, error)] = &event.dead[..] else {
            panic!("dead for its subscription: {:?}", event.dead);
        };
        assert_eq!(&**subscription, "all-invoices");
        assert!(
            error.contains("more than outbox.max_event_bytes (1024 bytes)"),
            "{error}"
        );
        let [problem] = &route.problems[..] else {
            panic!("one problem: {:?}", route.problems);
        };
        assert_eq!(
            (
                &*problem.subscription,
                problem.table.as_str(),
                problem.key.as_str()
            ),
            ("all-invoices", "public.invoice", r#"{"id":123}"#)
        );
        assert_eq!(&problem.message, error);
        assert!(event.body.len() <= 1024, "what is kept fits");
        let too_large = too_large(event, "invoice.created");
        assert_eq!(too_large["max_event_bytes"], 1024);
        let bytes = too_large["bytes"].as_u64().unwrap();
        assert!(bytes > 1024, "{bytes}");
        assert!(
            error.contains(&format!("the event is {bytes} bytes")),
            "{error}"
        );
    }
}

#[test]
fn a_document_too_big_for_max_event_bytes_is_dead_for_every_subscription() {
    let documents = small_events(
        r#"
[[subscriptions]]
name = "all-invoices"
object = "invoice"
url = "https://hooks.example.com/all"

[[subscriptions]]
name = "line-sync"
object = "invoice"
watch = ["invoice_lines"]
url = "https://hooks.example.com/lines"

[[subscriptions]]
name = "audit"
object = "invoice"
event_type = "invoice.audited"
url = "https://hooks.example.com/audit"
"#,
    );
    let route = route(&documents, &Doc::default(), &invoice_with_lines(40));
    assert!(!route.events.is_empty(), "recorded, not dropped");
    let mut dead: Vec<&str> = Vec::new();
    for event in &route.events {
        assert!(
            event.subscriptions.is_empty(),
            "{:?} would receive a too_large stub",
            event.subscriptions
        );
        dead.extend(event.dead.iter().map(|(s, _)| &**s));
        too_large(event, &event.event_type);
    }
    assert_eq!(dead, ["all-invoices", "line-sync", "audit"]);
    let problems: Vec<&str> = route.problems.iter().map(|p| &*p.subscription).collect();
    assert_eq!(problems, ["all-invoices", "line-sync", "audit"]);
    assert!(route.oversized >= 1);
    assert_eq!(route.oversized, route.events.len() as u64);
}

#[test]
fn values_are_the_header_fields_then_each_collection_in_order() {
    let documents = invoices();
    let object = documents.object(0);
    let tied = [
        Line {
            sequence: 10,
            ..LINES[0]
        },
        LINES[1],
        LINES[2],
    ];
    let unsequenced = [
        Line {
            id: 20,
            sequence: 1,
            ..LINES[0]
        },
        Line {
            id: 21,
            sequence: 1,
            ..LINES[1]
        },
    ];
    let cases: Vec<(&str, Doc, Option<Value>)> = vec![
        ("no header, no lines", Doc::default(), None),
        ("lines but no header", doc(None, &LINES), None),
        (
            "a header without lines",
            doc(Some(INVOICE), &[]),
            Some(values(INVOICE, &[])),
        ),
        (
            "lines in sequence order, not by id or key text",
            doc(Some(INVOICE), &LINES),
            Some(values(INVOICE, &IN_ORDER)),
        ),
        (
            "lines of equal sequence keep an order: by row key",
            doc(Some(INVOICE), &unsequenced),
            Some(values(INVOICE, &unsequenced)),
        ),
        (
            "the chair tied with the desk at sequence 10 comes by row key [10] < [11]",
            doc(Some(INVOICE), &tied),
            Some(values(INVOICE, &[tied[0], tied[1], tied[2]])),
        ),
    ];
    for (name, doc, expected) in cases {
        let got = object.values(&doc).map(Value::Object);
        assert_eq!(got, expected, "{name}");
        if let Some(Value::Object(got)) = &got {
            let names: Vec<&str> = got.keys().map(String::as_str).collect();
            assert_eq!(
                names,
                ["id", "partner_id", "state", "amount_total", "invoice_lines"],
                "{name}: header fields in configured order, then the collection"
            );
        }
    }
}

#[test]
fn a_collection_sorts_like_postgres_ascending() {
    let n = |v: i64| json!(v);
    let s = |v: &str| json!(v);
    let null = Value::Null;
    let cases: Vec<(&str, Vec<Value>, Vec<Value>, Ordering)> = vec![
        (
            "NULL after a number",
            vec![null.clone()],
            vec![n(1)],
            Ordering::Greater,
        ),
        (
            "NULL after text",
            vec![null.clone()],
            vec![s("a")],
            Ordering::Greater,
        ),
        (
            "NULL after a negative number",
            vec![null.clone()],
            vec![n(-5)],
            Ordering::Greater,
        ),
        (
            "NULLs tie",
            vec![null.clone()],
            vec![null.clone()],
            Ordering::Equal,
        ),
        ("2 before 10", vec![n(2)], vec![n(10)], Ordering::Less),
        ("-3 before 2", vec![n(-3)], vec![n(2)], Ordering::Less),
        (
            "numeric text 2.5 before 10",
            vec![s("2.5")],
            vec![s("10")],
            Ordering::Less,
        ),
        (
            "numeric text -1.5 before -1",
            vec![s("-1.5")],
            vec![s("-1")],
            Ordering::Less,
        ),
        (
            "numeric 10.0 ties 10",
            vec![s("10.0")],
            vec![s("10")],
            Ordering::Equal,
        ),
        (
            "a number against numeric text",
            vec![n(2)],
            vec![s("10")],
            Ordering::Less,
        ),
        ("a fraction", vec![json!(0.5)], vec![n(1)], Ordering::Less),
        ("equal numbers", vec![n(7)], vec![n(7)], Ordering::Equal),
        (
            "text by bytes: B before a",
            vec![s("B")],
            vec![s("a")],
            Ordering::Less,
        ),
        (
            "text: a before b",
            vec![s("a")],
            vec![s("b")],
            Ordering::Less,
        ),
        (
            "text: a prefix first",
            vec![s("ab")],
            vec![s("abc")],
            Ordering::Less,
        ),
        (
            "text: z before é (bytes)",
            vec![s("z")],
            vec![s("é")],
            Ordering::Less,
        ),
        (
            "equal text",
            vec![s("desk")],
            vec![s("desk")],
            Ordering::Equal,
        ),
        (
            "false before true",
            vec![json!(false)],
            vec![json!(true)],
            Ordering::Less,
        ),
        (
            "the first column decides",
            vec![n(1), s("z")],
            vec![n(2), s("a")],
            Ordering::Less,
        ),
        (
            "a tie goes to the next column",
            vec![n(1), s("b")],
            vec![n(1), s("a")],
            Ordering::Greater,
        ),
        (
            "a tie goes to the next column, numbers by value",
            vec![s("x"), n(10)],
            vec![s("x"), n(9)],
            Ordering::Greater,
        ),
        (
            "NULL last in the second column too",
            vec![n(1), null.clone()],
            vec![n(1), n(5)],
            Ordering::Greater,
        ),
        (
            "ties in every column",
            vec![n(1), s("a"), null.clone()],
            vec![n(1), s("a"), null],
            Ordering::Equal,
        ),
        (
            "the shorter list first",
            vec![n(1)],
            vec![n(1), n(0)],
            Ordering::Less,
        ),
        ("empty lists tie", vec![], vec![], Ordering::Equal),
        ("the empty list first", vec![], vec![n(1)], Ordering::Less),
    ];
    for (name, a, b, expected) in cases {
        let kinds = kinds_named(name, a.len().max(b.len()));
        assert_eq!(compare_sort(&a, &b, &kinds), expected, "{name}: a to b");
        assert_eq!(
            compare_sort(&b, &a, &kinds),
            expected.reverse(),
            "{name}: b to a"
        );
    }
}

#[test]
fn text_that_looks_like_numbers_sorts_in_one_consistent_order() {
    let text = |t: &str| vec![json!(t)];
    let (nine, ten, one_a) = (text("9"), text("10"), text("1a"));
    let order = [
        compare_sort(&nine, &ten, &[Some(TypeKind::Text)]),
        compare_sort(&ten, &one_a, &[Some(TypeKind::Text)]),
        compare_sort(&one_a, &nine, &[Some(TypeKind::Text)]),
    ];
    assert_ne!(
        order,
        [Ordering::Less; 3],
        "9 < 10 < 1a < 9 is a cycle, not an order"
    );
}

#[test]
fn special_float_and_numeric_values_sort_where_postgres_puts_them() {
    let cases: Vec<(&str, Value, Value, Ordering)> = vec![
        (
            "float8 Infinity after 5",
            json!("Infinity"),
            json!(5),
            Ordering::Greater,
        ),
        (
            "float8 NaN after 5",
            json!("NaN"),
            json!(5),
            Ordering::Greater,
        ),
        (
            "float8 -Infinity before -5",
            json!("-Infinity"),
            json!(-5),
            Ordering::Less,
        ),
        (
            "float8 NaN after Infinity",
            json!("NaN"),
            json!("Infinity"),
            Ordering::Greater,
        ),
        (
            "numeric Infinity after 100",
            json!("Infinity"),
            json!("100"),
            Ordering::Greater,
        ),
        (
            "numeric NaN after 100",
            json!("NaN"),
            json!("100"),
            Ordering::Greater,
        ),
        (
            "numeric -Infinity before -5",
            json!("-Infinity"),
            json!("-5"),
            Ordering::Less,
        ),
    ];
    for (name, a, b, expected) in cases {
        let (a, b) = (std::slice::from_ref(&a), std::slice::from_ref(&b));
        let kinds = kinds_named(name, 1);
        assert_eq!(compare_sort(a, b, &kinds), expected, "{name}");
        assert_eq!(compare_sort(b, a, &kinds), expected.reverse(), "{name}");
    }
}

/// The column types a sort case names: "numeric …" and "float8 …" cases sort numeric
/// columns; the others give no type, so JSON numbers compare by value and text by bytes.
fn kinds_named(name: &str, columns: usize) -> Vec<Option<TypeKind>> {
    let kind = if name.contains("numeric") {
        Some(TypeKind::Numeric)
    } else if name.contains("float8") {
        Some(TypeKind::Float)
    } else {
        None
    };
    vec![kind; columns]
}

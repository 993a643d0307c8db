//! Business documents (SPEC §3a): an invoice and its lines become one event per touched
//! invoice per transaction, with the lines nested as of that commit and `previous`/`changed`
//! at document level, under REPLICA IDENTITY DEFAULT, exactly once through crashes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use crate::support::http::{metric, Http};
use crate::support::outbox::{ledger_event, write_events};
use crate::support::rows::deliveries;
use crate::support::{
    cluster, start_daemon, wait_until, Child, ConfigFile, Daemon, Object, Sub, Subscriber, TestDb,
    Toml,
};
use walhook::capture::matcher::RoutedEvent;

/// Generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// The ERP's invoices and lines, both left at REPLICA IDENTITY DEFAULT.
const ERP: &str = "
CREATE TABLE invoice (id int PRIMARY KEY, number text, partner_id int, state text,
                      amount_total numeric);
CREATE TABLE invoice_line (id int PRIMARY KEY, invoice_id int, sequence int, product text,
                           quantity numeric, price numeric);";

/// Invoices from this id on are the stories' markers, never part of a story.
const MARKS: i64 = 1_000_000;

/// The invoice document as an accounting integrator configures it.
fn invoice_document() -> Object {
    Object::new("invoice", "public.invoice")
        .fields(&["number", "partner_id", "state", "amount_total"])
        .child(
            Child::new("invoice_lines", "public.invoice_line", &["invoice_id"])
                .fields(&["product", "quantity", "price"])
                .order_by(&["sequence", "id"]),
        )
}

/// `invoice_lines` elements: (product, quantity, price) as walhook shows them (numerics are
/// strings).
fn lines(items: &[(&str, &str, &str)]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|(product, quantity, price)| {
                json!({"product": product, "quantity": quantity, "price": price})
            })
            .collect(),
    )
}

/// One story: the ERP's database, a receiver, walhook running on a config.
struct Story {
    db: TestDb<'static>,
    receiver: Subscriber,
    daemon: Daemon,
    config: ConfigFile,
    /// The config's slot and publication, for an edit of the running config.
    slot: String,
    publication: String,
    marks: i64,
}

impl Story {
    /// A database with the ERP tables after `before` ran in it, and walhook started on the
    /// config `toml` makes of it and the receiver.
    fn start(before: &str, toml: impl FnOnce(&TestDb<'_>, &Subscriber) -> Toml) -> Story {
        let db = TestDb::new(ERP);
        if !before.is_empty() {
            db.sql(before);
        }
        let receiver = Subscriber::start();
        let toml = toml(&db, &receiver);
        let (slot, publication) = (
            toml.slot_name().to_owned(),
            toml.publication_name().to_owned(),
        );
        let config = toml.write();
        let daemon = start_daemon(&config);
        Story {
            db,
            receiver,
            daemon,
            config,
            slot,
            publication,
            marks: MARKS,
        }
    }

    /// Commits `sql` as one transaction.
    fn commit(&self, sql: &str) {
        self.db.sql(&format!("BEGIN; {sql} COMMIT;"));
    }

    /// Edits the running walhook's config: `toml` gets one on the same slot and publication.
    fn reconfigure(&self, toml: impl FnOnce(Toml, &Subscriber) -> Toml) {
        let base = Toml::new(&self.db)
            .slot(&self.slot)
            .publication(&self.publication);
        let text = toml(base, &self.receiver).text();
        std::fs::write(
            &self.config.path,
            format!("{text}\n[http]\nlisten = \"127.0.0.1:0\"\n"),
        )
        .unwrap();
    }

    /// Waits until walhook has handled every transaction committed so far: a marker invoice
    /// committed now reaches the outbox only after all of them.
    fn settle(&mut self) {
        self.marks += 1;
        let mark = self.marks;
        self.db.sql(&format!(
            "INSERT INTO invoice VALUES ({mark}, 'mark', 0, 'draft', 0)"
        ));
        let Story { db, daemon, .. } = self;
        wait_until(PATIENCE, "the marker invoice is in the outbox", || {
            assert!(
                daemon.running(),
                "walhook exited; log:\n{}",
                tail(&daemon.log_text())
            );
            db.sql(&format!(
                "SELECT count(*) FROM walhook.event WHERE key = '{{\"id\":{mark}}}'"
            )) != "0"
        });
    }

    /// The event bodies the outbox holds for `subscription`, in outbox order, markers left
    /// out.
    fn outbox(&self, subscription: &str) -> Vec<Value> {
        let text = self.db.sql(&format!(
            "SELECT convert_from(e.body, 'UTF8') FROM walhook.event e \
             JOIN walhook.delivery d ON d.event_seq = e.seq \
             WHERE d.subscription = '{subscription}' ORDER BY e.seq"
        ));
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .filter(|event| !is_mark(event))
            .collect()
    }

    /// The raw bodies of [`Story::outbox`], for assertions on the bytes walhook sends.
    fn outbox_text(&self, subscription: &str) -> Vec<String> {
        self.db
            .sql(&format!(
                "SELECT convert_from(e.body, 'UTF8') FROM walhook.event e \
                 JOIN walhook.delivery d ON d.event_seq = e.seq \
                 WHERE d.subscription = '{subscription}' AND (e.key::jsonb ->> 'id')::bigint < {MARKS} \
                 ORDER BY e.seq"
            ))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What the receiver got for `subscription` (sent to `/<subscription>`), in arrival
    /// order, markers left out, once it has as many events as the outbox holds for it.
    fn received(&self, subscription: &str) -> Vec<Value> {
        let expected = self.outbox(subscription).len();
        let mut got = Vec::new();
        wait_until(PATIENCE, "the receiver has the outbox's events", || {
            got = received_at(&self.receiver, &format!("/{subscription}"))
                .into_iter()
                .filter(|event| !is_mark(event))
                .collect();
            got.len() >= expected
        });
        got
    }

    /// The events of `subscription`, checked to be the same in the outbox and at the
    /// receiver. Delivery keeps order per document, not across documents: two invoices of
    /// one transaction may arrive either way round, so the comparison is by id.
    fn events(&self, subscription: &str) -> Vec<Value> {
        let outbox = self.outbox(subscription);
        let mut received = self.received(subscription);
        let mut expected = outbox.clone();
        let by_id = |e: &Value| (e["id"].to_string(), e["key"].to_string());
        received.sort_by_key(by_id);
        expected.sort_by_key(by_id);
        assert_eq!(
            received, expected,
            "the receiver got what the outbox holds for {subscription}"
        );
        outbox
    }
}

/// Every event the receiver got at `path`, batches flattened, in arrival order.
fn received_at(receiver: &Subscriber, path: &str) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .filter(|seen| seen.path == path)
        .flat_map(|seen| match seen.json() {
            Value::Array(events) => events,
            event => vec![event],
        })
        .collect()
}

fn is_mark(event: &Value) -> bool {
    event["key"]["id"].as_i64().is_some_and(|id| id >= MARKS)
}

fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(4000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// The commit LSN an event id carries (`evt_<16 hex>_…`), as `X/Y`.
fn id_lsn(id: &str) -> String {
    let hex = id
        .strip_prefix("evt_")
        .and_then(|rest| rest.get(..16))
        .unwrap_or_else(|| panic!("{id} is not evt_<16 hex>_…"));
    let lsn = u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{id}: {hex} is not hex"));
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Asserts the event's id is a document event id: commit LSN, then `_d<NNNN>` = `position`.
fn assert_document_id(event: &Value, position: u32) {
    let id = event["id"].as_str().expect("a string id");
    assert_eq!(
        id.len(),
        "evt_0000000000000000_d0000".len(),
        "a document event id: {event}"
    );
    assert!(
        id.ends_with(&format!("_d{position:04}")),
        "the document is the transaction's touched document #{position}: {event}"
    );
    assert_eq!(
        id_lsn(id),
        event["source"]["lsn"].as_str().unwrap().to_uppercase(),
        "the id carries the commit LSN: {event}"
    );
}

#[test]
fn an_invoice_saved_with_three_lines_is_one_created_event_with_the_lines_in_order() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    // Saved in the order the ERP's form happened to write them, not the lines' order.
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 60.00);
         INSERT INTO invoice_line VALUES (12, 1, 10, 'ink', 1, 30.00),
                                         (10, 1, 20, 'pen', 2, 5.00),
                                         (11, 1, 10, 'paper', 1, 20.00);",
    );
    story.settle();

    let events = story.events("all");
    assert_eq!(
        events.len(),
        1,
        "one event for the invoice, none per line: {events:#?}"
    );
    let event = &events[0];
    assert_eq!(event["type"], "invoice.created");
    assert_eq!(event["operation"], "create");
    assert_eq!(event["object"], "invoice");
    assert_eq!(event["key"], json!({"id": 1}));
    assert_eq!(event["source"]["table"], "public.invoice");
    assert_document_id(event, 0);
    assert_eq!(
        event["values"],
        json!({
            "number": "INV-1", "partner_id": 7, "state": "draft", "amount_total": "60.00",
            "invoice_lines": lines(&[
                ("paper", "1", "20.00"),
                ("ink", "1", "30.00"),
                ("pen", "2", "5.00"),
            ]),
        })
    );
    // Header fields, then the collection; each line's fields in configured order.
    let body = &story.outbox_text("all")[0];
    assert!(
        body.contains(
            "\"values\":{\"number\":\"INV-1\",\"partner_id\":7,\"state\":\"draft\",\
             \"amount_total\":\"60.00\",\"invoice_lines\":[{\"product\":\"paper\",\
             \"quantity\":\"1\",\"price\":\"20.00\"},"
        ),
        "{body}"
    );
}

#[test]
fn a_changed_line_quantity_is_one_updated_event_with_both_arrays_and_a_partner_watcher_hears_nothing(
) {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
            .subscription(
                Sub::new("partner", "invoice", &receiver.url("/partner"))
                    .with("operations = [\"update\"]\nwatch = [\"partner_id\"]"),
            )
    });
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 45.00);
         INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00), (11, 1, 2, 'paper', 1, 35.00);",
    );
    story.settle();
    story.commit("UPDATE invoice_line SET quantity = 3 WHERE id = 10;");
    story.settle();

    let events = story.events("all");
    assert_eq!(events.len(), 2, "created, then updated: {events:#?}");
    let updated = &events[1];
    assert_eq!(updated["type"], "invoice.updated");
    assert_eq!(updated["operation"], "update");
    assert_eq!(updated["key"], json!({"id": 1}));
    assert_eq!(updated["changed"], json!(["invoice_lines"]));
    assert_eq!(
        updated["previous"],
        json!({"invoice_lines": lines(&[("pen", "2", "5.00"), ("paper", "1", "35.00")])})
    );
    assert_eq!(
        updated["values"],
        json!({
            "number": "INV-1", "partner_id": 7, "state": "draft", "amount_total": "45.00",
            "invoice_lines": lines(&[("pen", "3", "5.00"), ("paper", "1", "35.00")]),
        })
    );
    assert_document_id(updated, 0);
    assert_eq!(
        story.outbox("partner"),
        Vec::<Value>::new(),
        "a line's change is not a partner change"
    );

    // The watcher is not deaf: the partner's change reaches it.
    story.commit("UPDATE invoice SET partner_id = 8 WHERE id = 1;");
    story.settle();
    let partner = story.events("partner");
    assert_eq!(partner.len(), 1, "{partner:#?}");
    assert_eq!(partner[0]["changed"], json!(["partner_id"]));
}

#[test]
fn a_partner_change_under_replica_identity_default_carries_the_old_partner() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    assert_eq!(
        story.db.sql(
            "SELECT string_agg(relreplident::text, ',') FROM pg_class \
             WHERE relname IN ('invoice', 'invoice_line')"
        ),
        "d,d",
        "Postgres sends no old values of non-key columns"
    );
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'posted', 10.00);
         INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00);",
    );
    story.settle();
    story.commit("UPDATE invoice SET partner_id = 8 WHERE id = 1;");
    story.settle();

    let events = story.events("all");
    assert_eq!(events.len(), 2, "{events:#?}");
    let updated = &events[1];
    assert_eq!(updated["type"], "invoice.updated");
    assert_eq!(updated["changed"], json!(["partner_id"]));
    assert_eq!(updated["previous"], json!({"partner_id": 7}));
    assert_eq!(
        updated["values"],
        json!({
            "number": "INV-1", "partner_id": 8, "state": "posted", "amount_total": "10.00",
            "invoice_lines": lines(&[("pen", "2", "5.00")]),
        }),
        "the whole document as of the commit, lines included"
    );
}

#[test]
fn one_transaction_touching_two_invoices_is_two_events_and_deleting_an_invoice_with_its_lines_is_one(
) {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00), (2, 'INV-2', 9, 'draft', 4.00);
         INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00), (20, 2, 1, 'ink', 1, 4.00);",
    );
    story.settle();
    // Invoice 2 first: the transaction touches it first.
    story.commit(
        "UPDATE invoice SET state = 'posted' WHERE id = 2;
         UPDATE invoice_line SET price = 6.00 WHERE id = 10;",
    );
    story.settle();
    let events = story.events("all");
    assert_eq!(events.len(), 4, "two created, two updated: {events:#?}");
    let (second, first) = (&events[2], &events[3]);
    assert_eq!(second["key"], json!({"id": 2}), "{events:#?}");
    assert_eq!(first["key"], json!({"id": 1}), "{events:#?}");
    assert_document_id(second, 0);
    assert_document_id(first, 1);
    assert_eq!(second["source"]["lsn"], first["source"]["lsn"]);
    assert_eq!(second["changed"], json!(["state"]));
    assert_eq!(second["previous"], json!({"state": "draft"}));
    assert_eq!(first["changed"], json!(["invoice_lines"]));
    assert_eq!(
        first["values"]["invoice_lines"],
        lines(&[("pen", "2", "6.00")])
    );

    story.commit(
        "DELETE FROM invoice_line WHERE invoice_id = 1;
         DELETE FROM invoice WHERE id = 1;",
    );
    story.settle();
    let events = story.events("all");
    assert_eq!(
        events.len(),
        5,
        "one more event, for the whole invoice: {events:#?}"
    );
    let deleted = &events[4];
    assert_eq!(deleted["type"], "invoice.deleted");
    assert_eq!(deleted["operation"], "delete");
    assert_eq!(deleted["key"], json!({"id": 1}));
    assert_eq!(deleted["values"], Value::Null);
    assert_eq!(
        deleted["previous"],
        json!({
            "number": "INV-1", "partner_id": 7, "state": "draft", "amount_total": "10.00",
            "invoice_lines": lines(&[("pen", "2", "6.00")]),
        })
    );
    assert_document_id(deleted, 0);
}

#[test]
fn a_line_moved_to_another_invoice_updates_both() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 15.00), (2, 'INV-2', 7, 'draft', 4.00);
         INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00), (11, 1, 2, 'paper', 1, 5.00),
                                         (20, 2, 5, 'ink', 1, 4.00);",
    );
    story.settle();
    // Under REPLICA IDENTITY DEFAULT the WAL does not say where the line was before.
    story.commit("UPDATE invoice_line SET invoice_id = 2, sequence = 1 WHERE id = 11;");
    story.settle();

    let events = story.events("all");
    assert_eq!(events.len(), 4, "two created, two updated: {events:#?}");
    let moved: BTreeMap<i64, &Value> = events[2..]
        .iter()
        .map(|event| (event["key"]["id"].as_i64().unwrap(), event))
        .collect();
    assert_eq!(moved.len(), 2, "both invoices: {events:#?}");
    let (from, to) = (moved[&1], moved[&2]);
    for event in [from, to] {
        assert_eq!(event["type"], "invoice.updated", "{event}");
        assert_eq!(event["changed"], json!(["invoice_lines"]), "{event}");
    }
    assert_eq!(from["source"]["lsn"], to["source"]["lsn"]);
    assert_eq!(
        from["previous"]["invoice_lines"],
        lines(&[("pen", "2", "5.00"), ("paper", "1", "5.00")])
    );
    assert_eq!(
        from["values"]["invoice_lines"],
        lines(&[("pen", "2", "5.00")])
    );
    assert_eq!(
        to["previous"]["invoice_lines"],
        lines(&[("ink", "1", "4.00")])
    );
    assert_eq!(
        to["values"]["invoice_lines"],
        lines(&[("paper", "1", "5.00"), ("ink", "1", "4.00")])
    );
}

/// Several saves committed back to back usually share one outbox transaction, in which
/// walhook keeps the invoices in memory between them and writes their state once: each save
/// must still be its own event as of its own commit, and what is written must be the end.
#[test]
fn invoices_saved_again_and_again_in_quick_succession_send_each_save_as_of_its_commit() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    // One session committing five times in a row: the WAL holds them back to back.
    story.db.sql(
        "DO $$ BEGIN
           INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 15.00), (2, 'INV-2', 7, 'draft', 4.00);
           INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00), (11, 1, 2, 'paper', 1, 5.00),
                                           (20, 2, 5, 'ink', 1, 4.00);
           COMMIT;
           UPDATE invoice_line SET invoice_id = 2, sequence = 1 WHERE id = 11;
           COMMIT;
           UPDATE invoice_line SET quantity = 3 WHERE id = 11;
           COMMIT;
           DELETE FROM invoice_line WHERE id = 10;
           UPDATE invoice SET state = 'posted' WHERE id = 1;
           COMMIT;
           INSERT INTO invoice_line VALUES (10, 1, 3, 'stamp', 9, 1.00);
           COMMIT;
         END $$;",
    );
    story.settle();

    let events = story.events("all");
    let summary: Vec<(i64, String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["key"]["id"].as_i64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
                e["values"]["invoice_lines"].clone(),
            )
        })
        .collect();
    let pen = ("pen", "2", "5.00");
    let paper = ("paper", "1", "5.00");
    let ink = ("ink", "1", "4.00");
    let mut by_save = summary.clone();
    // Within one save the two invoices may come either way round.
    by_save[..2].sort_by_key(|(id, ..)| *id);
    by_save[2..4].sort_by_key(|(id, ..)| *id);
    assert_eq!(
        by_save,
        vec![
            (1, "invoice.created".into(), lines(&[pen, paper])),
            (2, "invoice.created".into(), lines(&[ink])),
            (1, "invoice.updated".into(), lines(&[pen])),
            (2, "invoice.updated".into(), lines(&[paper, ink])),
            (
                2,
                "invoice.updated".into(),
                lines(&[("paper", "3", "5.00"), ink])
            ),
            (1, "invoice.updated".into(), lines(&[])),
            (
                1,
                "invoice.updated".into(),
                lines(&[("stamp", "9", "1.00")])
            ),
        ],
        "{events:#?}"
    );
    assert_eq!(events[5]["changed"], json!(["state", "invoice_lines"]));
    assert_eq!(events[5]["previous"]["invoice_lines"], lines(&[pen]));
    assert_eq!(events[6]["previous"]["invoice_lines"], lines(&[]));

    // What was written is the end state: a walhook started afresh reads it back.
    story.daemon.signal("KILL");
    story.daemon.wait(Duration::from_secs(10));
    story.daemon = start_daemon(&story.config);
    story.commit("UPDATE invoice SET partner_id = 8 WHERE id IN (1, 2);");
    story.settle();
    let events = story.events("all");
    let last: BTreeMap<i64, &Value> = events[7..]
        .iter()
        .map(|e| (e["key"]["id"].as_i64().unwrap(), &e["values"]))
        .collect();
    assert_eq!(last.len(), 2, "{events:#?}");
    assert_eq!(last[&1]["invoice_lines"], lines(&[("stamp", "9", "1.00")]));
    assert_eq!(
        last[&2]["invoice_lines"],
        lines(&[("paper", "3", "5.00"), ink])
    );
}

#[test]
fn a_line_saved_before_its_invoice_waits_for_it() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit("INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00);");
    story.settle();
    assert_eq!(
        story.outbox("all"),
        Vec::<Value>::new(),
        "no invoice yet, so no event"
    );

    story.commit("INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00);");
    story.settle();
    let events = story.events("all");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "invoice.created");
    assert_eq!(
        events[0]["values"],
        json!({
            "number": "INV-1", "partner_id": 7, "state": "draft", "amount_total": "10.00",
            "invoice_lines": lines(&[("pen", "2", "5.00")]),
        }),
        "the line that waited is in the invoice's first event"
    );
}

#[test]
fn invoices_that_existed_before_walhook_started_are_whole_in_their_first_event() {
    let before = "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'posted', 35.00), \
                                            (2, 'INV-2', 8, 'posted', 9.00);
                  INSERT INTO invoice_line VALUES (10, 1, 1, 'pen', 2, 5.00),
                                                  (11, 1, 2, 'paper', 1, 20.00),
                                                  (12, 1, 3, 'ink', 1, 5.00),
                                                  (20, 2, 1, 'stapler', 1, 9.00);";
    let mut story = Story::start(before, |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit("UPDATE invoice_line SET quantity = 4 WHERE id = 11;");
    story.settle();

    let events = story.events("all");
    assert_eq!(
        events.len(),
        1,
        "what existed before is state, not events; then one update: {events:#?}"
    );
    let updated = &events[0];
    assert_eq!(updated["type"], "invoice.updated");
    assert_eq!(updated["key"], json!({"id": 1}));
    assert_eq!(updated["changed"], json!(["invoice_lines"]));
    assert_eq!(
        updated["values"],
        json!({
            "number": "INV-1", "partner_id": 7, "state": "posted", "amount_total": "35.00",
            "invoice_lines": lines(&[
                ("pen", "2", "5.00"), ("paper", "4", "20.00"), ("ink", "1", "5.00"),
            ]),
        }),
        "every line, also those walhook never saw change"
    );
    assert_eq!(
        updated["previous"],
        json!({"invoice_lines": lines(&[
            ("pen", "2", "5.00"), ("paper", "1", "20.00"), ("ink", "1", "5.00"),
        ])})
    );
}

#[test]
fn keep_state_gives_a_plain_object_previous_changed_and_watch_under_replica_identity_default() {
    let before = "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00);";
    let mut story = Story::start(before, |db, receiver| {
        Toml::new(db)
            .object(
                Object::new("invoice", "public.invoice")
                    .fields(&["number", "partner_id", "state", "amount_total"])
                    .with("keep_state = true"),
            )
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
            .subscription(
                Sub::new("partner", "invoice", &receiver.url("/partner"))
                    .with("operations = [\"update\"]\nwatch = [\"partner_id\"]"),
            )
    });
    story.commit("UPDATE invoice SET state = 'posted' WHERE id = 1;");
    story.settle();
    story.commit("UPDATE invoice SET partner_id = 8 WHERE id = 1;");
    story.settle();

    let all = story.events("all");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0]["changed"], json!(["state"]));
    assert_eq!(all[0]["previous"], json!({"state": "draft"}));
    assert_eq!(all[1]["changed"], json!(["partner_id"]));
    assert_eq!(all[1]["previous"], json!({"partner_id": 7}));
    assert_eq!(
        all[1]["values"],
        json!({"number": "INV-1", "partner_id": 8, "state": "posted", "amount_total": "10.00"})
    );
    for event in &all {
        let id = event["id"].as_str().unwrap();
        assert!(
            !id.contains("_d"),
            "a plain object keeps row-event ids: {id}"
        );
    }
    let partner = story.events("partner");
    assert_eq!(partner.len(), 1, "only the partner change: {partner:#?}");
    assert_eq!(
        partner[0]["id"], all[1]["id"],
        "the same change, the same id"
    );
}

#[test]
fn a_document_bigger_than_max_event_bytes_is_dead_with_its_size_and_counted() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
            .tail("[outbox]\nmax_event_bytes = \"2KiB\"")
    });
    // 60 lines of about 70 bytes each: twice the limit.
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 600.00);
         INSERT INTO invoice_line SELECT 100 + g, 1, g, 'a product with a long name, number ' || g,
                                         1, 10.00
                                  FROM generate_series(1, 60) g;",
    );
    story.settle();

    let dead: Vec<_> = deliveries(&story.db)
        .into_iter()
        .filter(|d| d.key == json!({"id": 1}))
        .collect();
    assert_eq!(dead.len(), 1, "one delivery of the invoice: {dead:#?}");
    assert_eq!(dead[0].subscription, "all");
    assert_eq!(dead[0].status, "dead", "{dead:#?}");
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        ["2048", "2KiB", "2 KiB", "2.0 KiB"]
            .iter()
            .any(|limit| error.contains(limit)),
        "the error names the limit: {error:?}"
    );
    let numbers = error
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|word| word.chars().any(|c| c.is_ascii_digit()))
        .count();
    assert!(
        numbers >= 2,
        "the error names the size and the limit: {error:?}"
    );
    assert!(
        received_at(&story.receiver, "/all")
            .iter()
            .all(|event| event["key"] != json!({"id": 1})),
        "nothing too big was sent"
    );
    let metrics = Http::of(&story.daemon).metrics();
    assert_eq!(
        metric(
            &metrics,
            "walhook_oversized_events_total{object=\"invoice\"}"
        ),
        Some(1.0),
        "{}",
        metrics
            .lines()
            .filter(|line| line.contains("oversized"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// 20,000 changes of 200 invoices of about five lines each, one document per transaction,
/// every one of them visible in the document: header fields, line fields, lines added and
/// removed (never the last line).
const CHURN: &str = "
CREATE PROCEDURE churn(changes int, invoices int) LANGUAGE plpgsql AS $$
DECLARE
    i int := 0;
    doc int;
    line int;
    next_line int := 100000;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', false);
    WHILE i < changes LOOP
        doc := 1 + floor(random() * invoices)::int;
        SELECT id INTO line FROM invoice_line WHERE invoice_id = doc ORDER BY random() LIMIT 1;
        CASE i % 10
        WHEN 0 THEN UPDATE invoice SET amount_total = amount_total + 1 WHERE id = doc;
        WHEN 1 THEN UPDATE invoice SET partner_id = partner_id + 1 WHERE id = doc;
        WHEN 2 THEN UPDATE invoice SET state = CASE state WHEN 'draft' THEN 'posted'
                                                    ELSE 'draft' END WHERE id = doc;
        WHEN 3, 4, 5 THEN UPDATE invoice_line SET quantity = quantity + 1 WHERE id = line;
        WHEN 6 THEN UPDATE invoice_line SET price = price + 0.5, product = product || '+'
                    WHERE id = line;
        WHEN 7 THEN UPDATE invoice_line SET sequence = sequence + 3 WHERE id = line;
        ELSE
            IF i % 10 = 9 AND (SELECT count(*) FROM invoice_line WHERE invoice_id = doc) > 1 THEN
                DELETE FROM invoice_line WHERE id = line;
            ELSE
                next_line := next_line + 1;
                INSERT INTO invoice_line VALUES (next_line, doc, (i % 20)::int, 'item ' || i,
                                                 1 + i % 7, 2.50);
            END IF;
        END CASE;
        i := i + 1;
        COMMIT;
        IF i % 2000 = 0 THEN
            PERFORM pg_sleep(0.3);
        END IF;
    END LOOP;
END
$$;
INSERT INTO invoice SELECT g, 'INV-' || g, g % 17, 'draft', 100.00 FROM generate_series(1, 200) g;
INSERT INTO invoice_line SELECT g, 1 + g % 200, g % 9, 'product ' || g, 1 + g % 5, 1.25
                         FROM generate_series(1, 1000) g;";

/// Every invoice as the database holds it now, as the values of its event would show it
/// (every line column, in table order, ordered by sequence then id).
const DOCUMENTS: &str = "
SELECT json_build_object('id', i.id, 'values', json_build_object(
    'number', i.number, 'partner_id', i.partner_id, 'state', i.state,
    'amount_total', i.amount_total::text,
    'invoice_lines', coalesce((
        SELECT json_agg(json_build_object('id', l.id, 'invoice_id', l.invoice_id,
                                          'sequence', l.sequence, 'product', l.product,
                                          'quantity', l.quantity::text, 'price', l.price::text)
                        ORDER BY l.sequence, l.id)
        FROM invoice_line l WHERE l.invoice_id = i.id), '[]'::json)))
FROM invoice i ORDER BY i.id";

#[test]
fn twenty_thousand_document_changes_through_five_sigkills_arrive_once_and_end_as_the_database() {
    const CHANGES: usize = 20_000;
    let db = TestDb::new(ERP);
    db.sql(CHURN);
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .object(
            Object::new("invoice", "public.invoice")
                .fields(&["number", "partner_id", "state", "amount_total"])
                .child(
                    Child::new("invoice_lines", "public.invoice_line", &["invoice_id"])
                        .order_by(&["sequence", "id"]),
                ),
        )
        .subscription(
            Sub::new("sync", "invoice", &receiver.url("/sync"))
                .with("batch = { max_events = 100, max_wait = \"20ms\" }"),
        )
        .write();
    let mut daemon = start_daemon(&config);

    let name = db.name.clone();
    let writer = std::thread::spawn(move || {
        cluster()
            .psql(&name, &format!("CALL churn({CHANGES}, 200)"))
            .unwrap()
    });
    let mut logs = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(
            rand::thread_rng().gen_range(300..1300),
        ));
        daemon.signal("KILL");
        daemon.wait(Duration::from_secs(10));
        logs.push(daemon.log_text());
        daemon = start_daemon(&config);
    }
    writer.join().unwrap();

    let outbox = |what: &str| -> usize {
        db.sql(&format!(
            "SELECT {what} FROM walhook.event e JOIN walhook.delivery d ON d.event_seq = e.seq \
             WHERE d.subscription = 'sync'"
        ))
        .parse()
        .unwrap()
    };
    wait_until(PATIENCE, "every change is in the outbox", || {
        assert!(
            daemon.running(),
            "walhook exited; log:\n{}",
            tail(&daemon.log_text())
        );
        outbox("count(*)") >= CHANGES
    });
    wait_until(PATIENCE, "every delivery is delivered", || {
        db.sql(
            "SELECT count(*) FROM walhook.delivery WHERE subscription = 'sync' \
             AND status <> 'delivered'",
        ) == "0"
    });
    assert_eq!(
        (outbox("count(*)"), outbox("count(DISTINCT e.event_id)")),
        (CHANGES, CHANGES),
        "each document change once in the outbox after 5 kills"
    );

    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    let mut seen = HashSet::new();
    for event in received_at(&receiver, "/sync") {
        assert_eq!(event["type"], "invoice.updated", "{event}");
        seen.insert(event["id"].as_str().unwrap().to_owned());
        last.insert(
            event["key"]["id"].as_i64().unwrap(),
            event["values"].clone(),
        );
    }
    assert_eq!(seen.len(), CHANGES, "the receiver got every change");
    let documents = db.sql(DOCUMENTS);
    let mut compared = 0;
    for line in documents.lines() {
        let document: Value = serde_json::from_str(line).unwrap();
        let id = document["id"].as_i64().unwrap();
        let Some(received) = last.get(&id) else {
            panic!("invoice {id} never reached the receiver");
        };
        let expected = &document["values"];
        for field in ["number", "partner_id", "state", "amount_total"] {
            assert_eq!(
                received[field], expected[field],
                "invoice {id}'s {field}: the receiver's last version against the database's"
            );
        }
        assert_eq!(
            received["invoice_lines"], expected["invoice_lines"],
            "invoice {id}'s lines: the receiver's last version against the database's"
        );
        compared += 1;
    }
    assert_eq!(compared, 200);
}

#[test]
fn a_document_added_to_a_running_walhook_is_seeded_and_its_next_change_is_whole() {
    let before = "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 25.00);
                  INSERT INTO invoice_line VALUES (10, 1, 10, 'pen', 2, 5.00),
                                                  (11, 1, 20, 'paper', 1, 15.00);";
    let mut story = Story::start(before, |db, receiver| {
        Toml::new(db)
            .table("invoice", "public.invoice")
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.settle();
    // The integrator turns the invoice into a document, with walhook running.
    story.reconfigure(|toml, receiver| {
        toml.object(invoice_document()).subscription(Sub::new(
            "all",
            "invoice",
            &receiver.url("/all"),
        ))
    });
    wait_until(PATIENCE, "the invoice document is seeded", || {
        story
            .db
            .sql("SELECT rows FROM walhook.document_seed WHERE object = 'invoice'")
            == "4"
    });
    story.commit("UPDATE invoice_line SET quantity = 3 WHERE id = 10;");
    story.settle();

    let events = story.events("all");
    let last = events.last().expect("an event of the line change");
    assert_eq!(last["type"], "invoice.updated", "{events:#?}");
    assert_eq!(last["changed"], json!(["invoice_lines"]));
    assert_eq!(
        last["values"]["invoice_lines"],
        lines(&[("pen", "3", "5.00"), ("paper", "1", "15.00")]),
        "the lines that existed before the edit are in its first event"
    );
    assert_eq!(
        last["previous"]["invoice_lines"],
        lines(&[("pen", "2", "5.00"), ("paper", "1", "15.00")])
    );
}

#[test]
fn truncating_the_lines_empties_the_invoices_and_says_so() {
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00);
         INSERT INTO invoice_line VALUES (10, 1, 10, 'pen', 2, 5.00);",
    );
    story.settle();
    story.commit("TRUNCATE invoice_line;");
    story.commit("UPDATE invoice SET state = 'posted' WHERE id = 1;");
    story.settle();

    let events = story.events("all");
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1]["changed"], json!(["state"]));
    assert_eq!(events[1]["values"]["invoice_lines"], json!([]));
    let log = story.daemon.log_text();
    assert!(
        log.contains("TRUNCATE of public.invoice_line: objects.invoice no longer keeps its rows"),
        "the truncate is in the log, never silent:\n{}",
        tail(&log)
    );
}

#[test]
fn an_outbox_from_before_documents_keeps_its_pending_delivery_and_seeds_the_invoices() {
    let db = TestDb::new(ERP);
    db.sql(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00);
         INSERT INTO invoice_line VALUES (10, 1, 10, 'pen', 2, 5.00);",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(write_events(
        &db,
        vec![RoutedEvent {
            event_id: "evt_before".into(),
            body: br#"{"id":"evt_before"}"#.to_vec(),
            subscriptions: vec!["all".into()],
            ..ledger_event(1)
        }],
    ));
    // The outbox as walhook made it at version 6.
    db.sql(
        "DROP TABLE walhook.document_row, walhook.document_seed, walhook.document_pending; \
         DELETE FROM walhook.schema_version WHERE version = 7;",
    );
    let receiver = Subscriber::start();
    let config = Toml::new(&db)
        .object(invoice_document())
        .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
        .write();
    let daemon = start_daemon(&config);
    wait_until(PATIENCE, "the pending delivery is delivered", || {
        db.sql("SELECT status FROM walhook.deliveries WHERE event_id = 'evt_before'") == "delivered"
    });
    wait_until(PATIENCE, "the invoices are seeded", || {
        db.sql("SELECT rows FROM walhook.document_seed WHERE object = 'invoice'") == "2"
    });
    db.sql("UPDATE invoice SET state = 'posted' WHERE id = 1");
    wait_until(PATIENCE, "the invoice's update arrives whole", || {
        received_at(&receiver, "/all").iter().any(|event| {
            event["type"] == "invoice.updated"
                && event["values"]["invoice_lines"] == lines(&[("pen", "2", "5.00")])
        })
    });
    assert_eq!(
        db.sql("SELECT max(version) FROM walhook.schema_version"),
        walhook::outbox::migrate::latest_version().to_string(),
        "log:\n{}",
        tail(&daemon.log_text())
    );
}

#[test]
fn a_backfill_of_the_invoice_document_sends_each_invoice_whole_as_a_read() {
    let before = "INSERT INTO invoice SELECT g, 'INV-' || g, 7, 'posted', 10.00
                  FROM generate_series(1, 30) g;
                  INSERT INTO invoice_line SELECT 100 * i + l, i, l, 'item ' || l, l, 5.00
                  FROM generate_series(1, 30) i, generate_series(1, 2) l;";
    let mut story = Story::start(before, |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")).with("backfill = true"))
    });
    wait_until(PATIENCE, "the backfill is done", || {
        story
            .db
            .sql("SELECT state || ' ' || rows FROM walhook.backfill WHERE subscription = 'all'")
            == "done 30"
    });
    story.commit("UPDATE invoice_line SET quantity = 9 WHERE id = 101;");
    story.settle();

    let events = story.events("all");
    let reads: Vec<&Value> = events.iter().filter(|e| e["operation"] == "read").collect();
    assert_eq!(reads.len(), 30, "every invoice once: {events:#?}");
    for read in &reads {
        assert_eq!(read["type"], "invoice.read");
        assert!(read["id"].as_str().unwrap().starts_with("evt_r"), "{read}");
        assert!(read["source"]["backfill"].is_number(), "{read}");
        assert_eq!(
            read["values"]["invoice_lines"].as_array().map(Vec::len),
            Some(2),
            "the invoice with its lines: {read}"
        );
    }
    let first = reads.iter().find(|e| e["key"] == json!({"id": 1})).unwrap();
    assert_eq!(
        first["values"]["invoice_lines"],
        lines(&[("item 1", "1", "5.00"), ("item 2", "2", "5.00")])
    );
    let last = events.last().unwrap();
    assert_eq!(
        last["operation"], "update",
        "the change after the backfill: {last}"
    );
    assert_eq!(last["changed"], json!(["invoice_lines"]));
}

#[test]
fn a_document_taken_out_of_the_config_and_put_back_is_seeded_again_not_stale() {
    let document = |toml: Toml, receiver: &Subscriber| {
        toml.object(invoice_document()).subscription(Sub::new(
            "all",
            "invoice",
            &receiver.url("/all"),
        ))
    };
    let mut story = Story::start("", |db, receiver| document(Toml::new(db), receiver));
    story.commit(
        "INSERT INTO invoice VALUES (1, 'INV-1', 7, 'draft', 10.00);
         INSERT INTO invoice_line VALUES (10, 1, 10, 'pen', 2, 5.00);",
    );
    story.settle();
    // Out of the config: a plain invoice object for a while, and a line changes meanwhile.
    story.reconfigure(|toml, receiver| {
        toml.table("invoice", "public.invoice")
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    wait_until(PATIENCE, "the document's state is forgotten", || {
        story.db.sql("SELECT count(*) FROM walhook.document_seed") == "0"
    });
    story.commit("UPDATE invoice_line SET quantity = 4 WHERE id = 10;");
    story.reconfigure(document);
    wait_until(PATIENCE, "the document is seeded again", || {
        story.db.sql("SELECT count(*) FROM walhook.document_seed") == "1"
    });
    story.commit("UPDATE invoice SET state = 'posted' WHERE id = 1;");
    story.settle();

    let events = story.events("all");
    let last = events
        .iter()
        .rev()
        .find(|e| e["key"] == json!({"id": 1}))
        .unwrap();
    assert_eq!(last["changed"], json!(["state"]), "{events:#?}");
    assert_eq!(
        last["values"]["invoice_lines"],
        lines(&[("pen", "4", "5.00")]),
        "the line as it is now, not as it was kept before: {last}"
    );
}

#[test]
fn one_transaction_touching_three_thousand_invoices_is_three_thousand_whole_events() {
    // More documents than walhook holds in memory (1,000): the rest wait in the open
    // outbox transaction, and every event is still whole and in first-touched order.
    let mut story = Story::start("", |db, receiver| {
        Toml::new(db)
            .object(invoice_document())
            .subscription(Sub::new("all", "invoice", &receiver.url("/all")))
    });
    story.commit(
        "INSERT INTO invoice SELECT g, 'INV-' || g, 7, 'draft', 10.00
         FROM generate_series(1, 3000) g;
         INSERT INTO invoice_line SELECT 10 * i + l, i, l, 'item ' || l, l, 5.00
         FROM generate_series(1, 3000) i, generate_series(1, 2) l;",
    );
    story.settle();
    // Touched again in one transaction: lines first, so the line of invoice 3000 is the
    // first document touched.
    story.commit(
        "UPDATE invoice_line SET quantity = quantity + 1 WHERE invoice_id > 1500;
         UPDATE invoice SET state = 'posted';",
    );
    story.settle();

    let events = story.outbox("all");
    assert_eq!(
        events.len(),
        6000,
        "two transactions of 3,000 invoices each"
    );
    let created = &events[..3000];
    assert!(created.iter().all(|e| e["type"] == "invoice.created"
        && e["values"]["invoice_lines"].as_array().map(Vec::len) == Some(2)));
    let updated = &events[3000..];
    let mut seen = HashSet::new();
    for (n, event) in updated.iter().enumerate() {
        let id = event["key"]["id"].as_i64().unwrap();
        assert!(seen.insert(id), "invoice {id} once");
        assert_document_id(event, n as u32);
        let expected: Value = if id > 1500 {
            json!(["state", "invoice_lines"])
        } else {
            json!(["state"])
        };
        assert_eq!(event["changed"], expected, "{event}");
        let quantities: Vec<&Value> = event["values"]["invoice_lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["quantity"])
            .collect();
        let bump = i64::from(id > 1500);
        assert_eq!(
            quantities,
            vec![
                &json!((1 + bump).to_string()),
                &json!((2 + bump).to_string())
            ],
            "{event}"
        );
    }
    assert_eq!(
        story
            .db
            .sql("SELECT count(*) FROM walhook.document_pending"),
        "0",
        "nothing is left aside after the commit"
    );
}

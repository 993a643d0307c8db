//! A typed builder of the `walhook.toml` most tests write: a `[source]` on the test's
//! database with a slot and publication of its own, a `[delivery]` that lets webhooks reach
//! receivers on loopback, objects, and subscriptions. Settings the builder has no method for
//! go in as TOML lines (`.line(…)`, `.with(…)`), so a test still reads as the config it writes.
//! Tests of broken or unusual TOML write their text literally instead.
//!
//! The text is laid out as the tests' own templates were, one blank line between tables, so
//! line numbers that tests compute with `line_of` (or pin, as `check` does) stay put:
//!
//! ```toml
//!
//! [source]
//! url = "…"
//! slot = "…"
//! publication = "…"
//!
//! [delivery]
//! allow_networks = ["127.0.0.0/8"]
//!
//! [objects.invoice]
//! table = "public.account_invoice"
//!
//! [[subscriptions]]
//! name = "invoices"
//! …
//! ```

use super::{config_file, unique, ConfigFile, TestDb};

/// A `walhook.toml` in the making.
#[derive(Debug, Clone)]
pub struct Toml {
    url: String,
    slot: Option<String>,
    publication: String,
    source: Vec<String>,
    /// `None`: no `[delivery]` table at all.
    delivery: Option<Vec<String>>,
    objects: Vec<Object>,
    subscriptions: Vec<Sub>,
    tail: Vec<String>,
}

impl Toml {
    /// A config on `db` with a slot and publication no other test uses and loopback
    /// receivers allowed.
    pub fn new(db: &TestDb<'_>) -> Toml {
        Toml::at(&db.url)
    }

    /// [`Toml::new`] with a source URL of the test's making (another role, a variable).
    pub fn at(url: &str) -> Toml {
        Toml {
            url: url.to_owned(),
            slot: Some(unique("slot")),
            publication: unique("pub"),
            source: Vec::new(),
            delivery: Some(vec!["allow_networks = [\"127.0.0.0/8\"]".to_owned()]),
            objects: Vec::new(),
            subscriptions: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// The slot, instead of a unique one.
    pub fn slot(mut self, slot: &str) -> Toml {
        self.slot = Some(slot.to_owned());
        self
    }

    /// No `slot` key (walhook's default, or a command such as `tail` that needs none).
    pub fn without_slot(mut self) -> Toml {
        self.slot = None;
        self
    }

    /// The publication, instead of a unique one.
    pub fn publication(mut self, publication: &str) -> Toml {
        self.publication = publication.to_owned();
        self
    }

    /// The slot name (`walhook` when the config has none).
    pub fn slot_name(&self) -> &str {
        self.slot.as_deref().unwrap_or("walhook")
    }

    /// The publication name.
    pub fn publication_name(&self) -> &str {
        &self.publication
    }

    /// TOML lines added to `[source]`.
    pub fn source(mut self, lines: &str) -> Toml {
        self.source.push(lines.to_owned());
        self
    }

    /// TOML lines added to `[delivery]`.
    pub fn delivery(mut self, lines: &str) -> Toml {
        self.delivery
            .get_or_insert_with(Vec::new)
            .push(lines.to_owned());
        self
    }

    /// No `[delivery]` table: receivers on loopback are refused, as by default.
    pub fn without_delivery(mut self) -> Toml {
        self.delivery = None;
        self
    }

    /// A `[delivery]` table with only these lines (no loopback allowance).
    pub fn delivery_only(mut self, lines: &str) -> Toml {
        self.delivery = Some(vec![lines.to_owned()]);
        self
    }

    /// An object.
    pub fn object(mut self, object: Object) -> Toml {
        self.objects.push(object);
        self
    }

    /// An object `name` on `table` with every column.
    pub fn table(self, name: &str, table: &str) -> Toml {
        self.object(Object::new(name, table))
    }

    /// A subscription, after the ones added before.
    pub fn subscription(mut self, subscription: Sub) -> Toml {
        self.subscriptions.push(subscription);
        self
    }

    /// TOML text after the subscriptions (other tables, such as `[outbox]`).
    pub fn tail(mut self, text: &str) -> Toml {
        self.tail.push(text.to_owned());
        self
    }

    /// The config's text.
    pub fn text(&self) -> String {
        let mut out = String::from("\n[source]\n");
        out.push_str(&format!("url = \"{}\"\n", self.url));
        if let Some(slot) = &self.slot {
            out.push_str(&format!("slot = \"{slot}\"\n"));
        }
        out.push_str(&format!("publication = \"{}\"\n", self.publication));
        push_lines(&mut out, &self.source);
        if let Some(delivery) = &self.delivery {
            out.push_str("\n[delivery]\n");
            push_lines(&mut out, delivery);
        }
        for object in &self.objects {
            out.push('\n');
            out.push_str(&object.text());
        }
        for subscription in &self.subscriptions {
            out.push('\n');
            out.push_str(&subscription.text());
        }
        for text in &self.tail {
            out.push('\n');
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes it as a config file (see [`config_file`]).
    pub fn write(&self) -> ConfigFile {
        config_file(&self.text())
    }
}

/// An `[objects.NAME]` table.
#[derive(Debug, Clone)]
pub struct Object {
    name: String,
    table: String,
    fields: Option<Vec<String>>,
    lines: Vec<String>,
    children: Vec<Child>,
}

impl Object {
    /// Object `name` on `table` (`schema.table`) with every column.
    pub fn new(name: &str, table: &str) -> Object {
        Object {
            name: name.to_owned(),
            table: table.to_owned(),
            fields: None,
            lines: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A collection of child rows (`[[objects.NAME.children]]`): the object becomes a
    /// document.
    pub fn child(mut self, child: Child) -> Object {
        self.children.push(child);
        self
    }

    /// Only these columns.
    pub fn fields(mut self, fields: &[&str]) -> Object {
        self.fields = Some(fields.iter().map(|f| (*f).to_owned()).collect());
        self
    }

    /// TOML lines added to the table.
    pub fn with(mut self, lines: &str) -> Object {
        self.lines.push(lines.to_owned());
        self
    }

    /// Its TOML text, for a test that edits a config it wrote.
    pub fn text(&self) -> String {
        let mut out = format!("[objects.{}]\ntable = \"{}\"\n", self.name, self.table);
        if let Some(fields) = &self.fields {
            let quoted: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
            out.push_str(&format!("fields = [{}]\n", quoted.join(", ")));
        }
        push_lines(&mut out, &self.lines);
        for child in &self.children {
            out.push_str(&format!(
                "\n[[objects.{}.children]]\nname = \"{}\"\ntable = \"{}\"\n",
                self.name, child.name, child.table
            ));
            out.push_str(&format!("parent_key = {}\n", list(&child.parent_key)));
            push_lines(&mut out, &child.lines);
        }
        out
    }
}

/// One `[[objects.NAME.children]]` entry: a collection of a document.
#[derive(Debug, Clone)]
pub struct Child {
    name: String,
    table: String,
    parent_key: Vec<String>,
    lines: Vec<String>,
}

impl Child {
    /// Collection `name` of the rows of `table` whose `parent_key` columns hold the
    /// header's key; every other key left at its default.
    pub fn new(name: &str, table: &str, parent_key: &[&str]) -> Child {
        Child {
            name: name.to_owned(),
            table: table.to_owned(),
            parent_key: parent_key.iter().map(|c| (*c).to_owned()).collect(),
            lines: Vec::new(),
        }
    }

    /// Only these columns in each element.
    pub fn fields(self, fields: &[&str]) -> Child {
        let line = format!("fields = {}", list(fields));
        self.with(&line)
    }

    /// The order of the array.
    pub fn order_by(self, columns: &[&str]) -> Child {
        let line = format!("order_by = {}", list(columns));
        self.with(&line)
    }

    /// TOML lines added to the entry (`key = [...]`, …).
    pub fn with(mut self, lines: &str) -> Child {
        self.lines.push(lines.to_owned());
        self
    }
}

/// A TOML array of strings.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("\"{}\"", item.as_ref()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A `[[subscriptions]]` entry.
#[derive(Debug, Clone)]
pub struct Sub {
    name: String,
    object: String,
    url: String,
    secret: Option<String>,
    lines: Vec<String>,
}

impl Sub {
    /// Subscription `name` to `object`, sent to `url`, unsigned.
    pub fn new(name: &str, object: &str, url: &str) -> Sub {
        Sub {
            name: name.to_owned(),
            object: object.to_owned(),
            url: url.to_owned(),
            secret: None,
            lines: Vec::new(),
        }
    }

    /// Signed with `secret`.
    pub fn secret(mut self, secret: &str) -> Sub {
        self.secret = Some(secret.to_owned());
        self
    }

    /// TOML lines added to the subscription (`retry_schedule = […]`, `when = "…"`, …).
    pub fn with(mut self, lines: &str) -> Sub {
        self.lines.push(lines.to_owned());
        self
    }

    /// Its TOML text, for a test that edits a config it wrote.
    pub fn text(&self) -> String {
        let mut out = format!(
            "[[subscriptions]]\nname = \"{}\"\nobject = \"{}\"\nurl = \"{}\"\n",
            self.name, self.object, self.url
        );
        if let Some(secret) = &self.secret {
            out.push_str(&format!("secret = \"{secret}\"\n"));
        }
        push_lines(&mut out, &self.lines);
        out
    }
}

/// Appends each text, ending it with a newline (empty texts add nothing).
fn push_lines(out: &mut String, texts: &[String]) {
    for text in texts.iter().filter(|t| !t.is_empty()) {
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
}

//! The config file as a tree of values that remember where they came from.
//!
//! TOML is parsed with `toml_edit`, which keeps byte spans; the tree is copied into [`Node`]s
//! with `${VAR}` expanded in every string value, and the start of every key path is recorded so
//! that any later finding — from serde or from validation — can name its line.

use std::collections::HashMap;

use toml_edit::{ImDocument, Item, Table, Value};

use super::error::Finding;
use super::expand::expand;

/// A value from the file with `${VAR}` already expanded.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
}

/// The TOML value kinds walhook distinguishes.
#[derive(Debug)]
pub(crate) enum Kind {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// No config key takes a date; kept only to report the wrong type.
    Datetime,
    Array(Vec<Node>),
    /// Entries in file order.
    Table(Vec<(String, Node)>),
}

/// A parsed file: the value tree plus the positions needed to locate findings.
pub(crate) struct Document<'a> {
    file: &'a str,
    text: &'a str,
    /// Key path → byte offset where its value (or, for implicit tables, its key) starts.
    positions: HashMap<String, usize>,
    /// Key path → string as written, for strings that contained `${…}`.
    written: HashMap<String, String>,
}

impl<'a> Document<'a> {
    /// Parses `text`, expanding variables with `env` except under the paths in `skip`.
    ///
    /// Returns the tree and the document, or every syntax and expansion problem.
    pub(crate) fn parse(
        file: &'a str,
        text: &'a str,
        env: &dyn Fn(&str) -> Option<String>,
        skip: &[&str],
    ) -> Result<(Node, Document<'a>), Vec<Finding>> {
        let mut doc = Document {
            file,
            text,
            positions: HashMap::new(),
            written: HashMap::new(),
        };
        let parsed = match ImDocument::parse(text) {
            Ok(parsed) => parsed,
            Err(error) => return Err(vec![doc.syntax_finding(&error)]),
        };
        let mut builder = Builder {
            doc: &mut doc,
            env,
            skip,
            findings: Vec::new(),
        };
        let root = builder.table(parsed.as_table(), "", None);
        let findings = builder.findings;
        if findings.is_empty() {
            Ok((root, doc))
        } else {
            Err(findings)
        }
    }

    /// A finding at `path`, on the line where that key's value starts (if it is in the file).
    pub(crate) fn finding(&self, path: &str, message: impl Into<String>) -> Finding {
        Finding {
            file: self.file.to_owned(),
            line: self.line_of(path),
            column: None,
            key: path.to_owned(),
            message: message.into(),
        }
    }

    /// The 1-based line of `path`, or of its nearest ancestor present in the file.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&offset) = self.positions.get(path) {
                return Some(self.line_col(offset).0);
            }
            path = parent_path(path)?;
        }
    }

    /// The file as the user named it.
    pub(crate) fn file(&self) -> &str {
        self.file
    }

    /// The config-file line that holds line 1 of the string value at `path`: its own line,
    /// or the next one for a multi-line string that opens with a line break (TOML drops
    /// that line break from the value).
    pub(crate) fn string_first_line(&self, path: &str) -> Option<usize> {
        let offset = *self.positions.get(path)?;
        let value = &self.text[offset.min(self.text.len())..];
        let line = self.line_col(offset).0;
        let opens_with_break = ["'''", "\"\"\""].iter().any(|quotes| {
            value
                .strip_prefix(quotes)
                .is_some_and(|rest| rest.starts_with('\n') || rest.starts_with("\r\n"))
        });
        Some(line + usize::from(opens_with_break))
    }

    /// The string at `path` as written in the file, if `${…}` expansion changed it.
    ///
    /// Messages and logs show this form so that values taken from the environment (tokens
    /// in URLs, passwords) are never printed.
    pub(crate) fn written(&self, path: &str) -> Option<&str> {
        self.written.get(path).map(String::as_str)
    }

    /// A finding without a line (for values that did not come from the file).
    pub(crate) fn file_finding(&self, key: &str, message: impl Into<String>) -> Finding {
        Finding {
            file: self.file.to_owned(),
            line: None,
            column: None,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn syntax_finding(&self, error: &toml_edit::TomlError) -> Finding {
        let (line, column) = self.line_col(error.span().map_or(0, |span| span.start));
        // toml_edit puts "invalid X" and "expected Y" on separate lines; we need one line.
        let detail = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let message = if detail.is_empty() {
            "invalid TOML: expected a value".to_owned()
        } else {
            format!("invalid TOML: {detail}")
        };
        Finding {
            file: self.file.to_owned(),
            line: Some(line),
            column: Some(column),
            key: String::new(),
            message,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

/// Copies the `toml_edit` tree into [`Node`]s, recording positions and expanding strings.
struct Builder<'d, 'a> {
    doc: &'d mut Document<'a>,
    env: &'d dyn Fn(&str) -> Option<String>,
    skip: &'d [&'d str],
    findings: Vec<Finding>,
}

impl Builder<'_, '_> {
    fn table(&mut self, table: &Table, path: &str, fallback: Option<usize>) -> Node {
        // Implicit tables (`objects` in `[objects.invoice]`) have no span of their own.
        self.record(path, table.span().map(|s| s.start).or(fallback));
        let mut entries = Vec::with_capacity(table.len());
        for (key, item) in table.iter() {
            let key_offset = table.key(key).and_then(|k| k.span()).map(|s| s.start);
            if let Some(node) = self.item(item, &child_key(path, key), key_offset) {
                entries.push((key.to_owned(), node));
            }
        }
        Node {
            kind: Kind::Table(entries),
        }
    }

    fn item(&mut self, item: &Item, path: &str, key_offset: Option<usize>) -> Option<Node> {
        match item {
            Item::None => None,
            Item::Value(value) => Some(self.value(value, path, key_offset)),
            Item::Table(table) => Some(self.table(table, path, key_offset)),
            Item::ArrayOfTables(tables) => {
                self.record(path, tables.span().map(|s| s.start).or(key_offset));
                let nodes = tables
                    .iter()
                    .enumerate()
                    .map(|(i, table)| self.table(table, &child_index(path, i), key_offset))
                    .collect();
                Some(Node {
                    kind: Kind::Array(nodes),
                })
            }
        }
    }

    fn value(&mut self, value: &Value, path: &str, fallback: Option<usize>) -> Node {
        let offset = value.span().map(|s| s.start).or(fallback);
        self.record(path, offset);
        let kind = match value {
            Value::String(s) => Kind::String(self.expand(s.value(), path)),
            Value::Integer(i) => Kind::Integer(*i.value()),
            Value::Float(f) => Kind::Float(*f.value()),
            Value::Boolean(b) => Kind::Boolean(*b.value()),
            Value::Datetime(_) => Kind::Datetime,
            Value::Array(array) => Kind::Array(
                array
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v, &child_index(path, i), offset))
                    .collect(),
            ),
            Value::InlineTable(table) => Kind::Table(
                table
                    .iter()
                    .map(|(key, v)| {
                        let key_offset = table.key(key).and_then(|k| k.span()).map(|s| s.start);
                        let node = self.value(v, &child_key(path, key), key_offset);
                        (key.to_owned(), node)
                    })
                    .collect(),
            ),
        };
        Node { kind }
    }

    fn expand(&mut self, text: &str, path: &str) -> String {
        if self.skip.contains(&path) {
            return text.to_owned();
        }
        match expand(text, self.env) {
            Ok(expanded) => {
                if expanded != text {
                    self.doc.written.insert(path.to_owned(), text.to_owned());
                }
                expanded
            }
            Err(errors) => {
                for error in errors {
                    self.findings
                        .push(self.doc.finding(path, error.to_string()));
                }
                String::new()
            }
        }
    }

    fn record(&mut self, path: &str, offset: Option<usize>) {
        // The root is not a place: a finding about a missing top-level table gets no line.
        if let (Some(offset), false) = (offset, path.is_empty()) {
            self.doc.positions.insert(path.to_owned(), offset);
        }
    }
}

/// `parent.key`, quoting keys that are not bare TOML keys (`headers."X Tenant"`).
pub(crate) fn child_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(crate) fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The path one level up, or `None` at the top. Quoted keys may contain `.` or `[`, so the
/// path is scanned from the end while tracking quotes.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let mut cut = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in path.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '.' | '[' if !in_quotes => cut = i,
            _ => {}
        }
    }
    Some(&path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_unusual_keys_and_walk_up() {
        assert_eq!(child_key("", "source"), "source");
        assert_eq!(child_key("a", "X-Tenant"), "a.X-Tenant");
        assert_eq!(child_key("a", "X Tenant.b"), "a.\"X Tenant.b\"");
        assert_eq!(child_index("subscriptions", 2), "subscriptions[2]");
        assert_eq!(
            parent_path("subscriptions[2].url"),
            Some("subscriptions[2]")
        );
        assert_eq!(parent_path("subscriptions[2]"), Some("subscriptions"));
        assert_eq!(parent_path("a.\"x.[y\".z"), Some("a.\"x.[y\""));
        assert_eq!(parent_path("a.\"x.[y\""), Some("a"));
        assert_eq!(parent_path("a"), Some(""));
        assert_eq!(parent_path(""), None);
    }

    #[test]
    fn lines_of_nested_and_implicit_keys() {
        let text =
            "a.b = 1\n[objects.invoice]\ntable = 'x'\n[[subs]]\nlist = [\n  'p',\n  'q',\n]\n";
        let (_, doc) = Document::parse("f.toml", text, &|_| None, &[]).unwrap();
        assert_eq!(doc.line_of("a"), Some(1));
        assert_eq!(doc.line_of("a.b"), Some(1));
        assert_eq!(doc.line_of("objects"), Some(2));
        assert_eq!(doc.line_of("objects.invoice.table"), Some(3));
        assert_eq!(doc.line_of("subs[0]"), Some(4));
        assert_eq!(doc.line_of("subs[0].list[1]"), Some(7));
        assert_eq!(doc.line_of("subs[0].missing"), Some(4));
        assert_eq!(doc.line_of("nothing"), None);
    }

    #[test]
    fn first_line_of_a_string_skips_the_line_break_toml_drops() {
        let text = "a = 'x'\nb = '''\nline 1\n'''\nc = \"\"\"\r\nline 1\"\"\"\nd = '''same\n'''\n";
        let (_, doc) = Document::parse("f.toml", text, &|_| None, &[]).unwrap();
        assert_eq!(doc.string_first_line("a"), Some(1));
        assert_eq!(doc.string_first_line("b"), Some(3));
        assert_eq!(doc.string_first_line("c"), Some(6));
        assert_eq!(doc.string_first_line("d"), Some(7));
        assert_eq!(doc.string_first_line("nothing"), None);
    }
}

//! The floors of ARCHITECTURE.md, checked on the source tree: a module imports only from
//! its own folder or from a floor below it, and only `src/outbox/` names a table of the
//! walhook schema. Run alone with `cargo test --test it layers`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, lowest floor first; each entry is one floor.
const FLOORS: &[&[&str]] = &[
    &[
        "pg",
        "time",
        "suggest",
        "text",
        "os",
        "metrics",
        "ephemeral",
        "http",
    ],
    &["config"],
    &["source"],
    &["capture"],
    &["outbox"],
    &["delivery"],
    &["health"],
    &["server"],
    &["daemon"],
    &["commands", "demo"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file of `src/` belongs to (`src/outbox/queue.rs` → `outbox`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The leading identifier of `text`.
fn ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules `text` names as `crate::NAME` or in `crate::{A, B::…}`, outside
/// comments. (Other top-level modules are reached through `crate::`; no file of `src/`
/// uses `super::super::`.)
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(ident)
                    .collect(),
                None => vec![ident(rest)],
            };
            found.extend(names.into_iter().filter(|n| !n.is_empty()));
        }
    }
    found
}

/// Whether the imports among foundation modules (`edges`: importer → imported) form a
/// cycle.
fn has_cycle(edges: &BTreeSet<(String, String)>) -> Option<String> {
    fn visit(
        node: &str,
        edges: &BTreeSet<(String, String)>,
        path: &mut Vec<String>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(format!("{} → {node}", path[at..].join(" → ")));
        }
        path.push(node.to_owned());
        for (_, next) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(next, edges, path) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new()))
}

#[test]
fn no_module_imports_from_a_floor_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut foundation_edges = BTreeSet::new();
    for file in sources(&src) {
        let module = module_of(&src, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(own) = floor_of(&module) else {
            wrong.push(format!(
                "{}: module {module} is on no floor of this test (add it to FLOORS and to \
                 ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        for imported in imports(&text) {
            if imported == module || imported == "self" {
                continue;
            }
            match floor_of(&imported) {
                Some(floor) if floor < own => {}
                Some(floor) if floor == own && own == 0 => {
                    foundation_edges.insert((module.clone(), imported));
                }
                _ => wrong.push(format!(
                    "{}: {module} imports crate::{imported}, which is not below it",
                    file.display()
                )),
            }
        }
    }
    if let Some(cycle) = has_cycle(&foundation_edges) {
        wrong.push(format!(
            "foundation modules import each other in a cycle: {cycle}"
        ));
    }
    assert!(
        wrong.is_empty(),
        "imports against the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_outbox_store_names_a_walhook_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tables = [
        "delivery",
        "event",
        "attempt",
        "subscription_state",
        "checkpoint",
        "deliveries",
        "attempts",
        "schema_version",
        "backfill",
        "subscription_seen",
    ];
    let mut wrong = Vec::new();
    for file in sources(&src) {
        if module_of(&src, &file) == "outbox" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for table in tables {
                // A statement's `{schema}.table` / `{s}.table` / `{}.table`.
                for quoted in ["{s}.", "{}.", "{schema}."] {
                    if code.contains(&format!("{quoted}{table}")) {
                        wrong.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "statements against the walhook schema outside src/outbox:\n{}",
        wrong.join("\n")
    );
}

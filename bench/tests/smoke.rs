//! The benchmark harness on a tiny workload, so that it can't rot: every figure of
//! BENCHMARKS.md is produced, walhook really captured and delivered (the harness checks the
//! outbox counts and the receiver's), and the results land between the markers. Not a
//! measurement: nothing here looks at the numbers.

use std::path::PathBuf;
use std::process::Command;

/// The workspace's walhook binary, built now in this test's profile. A package sees only its
/// own binaries (`CARGO_BIN_EXE_*`), and one left in target/ by an earlier build may be
/// stale, so the test asks the cargo that runs it (`$CARGO`) to build it and to say where it
/// put it; when everything is fresh that takes a moment.
fn walhook_binary() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // This test runs from target/[TRIPLE/]PROFILE_DIR/deps/; `dev` and `test` build in debug/.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .expect("the test runs from target/PROFILE/deps");
    let profile = match profile_dir {
        "debug" => "dev",
        custom => custom,
    };
    let out = Command::new(&cargo)
        .args(["build", "--locked", "--package=walhook", "--bin=walhook"])
        .arg(format!("--profile={profile}"))
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("run {} build: {e}", cargo.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "building walhook for the benchmark failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "walhook")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built no walhook executable; its output:\n{stdout}"))
}

#[test]
fn the_benchmark_produces_every_figure_on_a_small_workload() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("BENCHMARKS.md");
    std::fs::write(&report, "# Benchmarks\n\nProse that the harness keeps.\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walhook-bench"))
        .arg("--smoke")
        .arg("--walhook")
        .arg(walhook_binary())
        .arg("--write")
        .arg(&report)
        .output()
        .expect("run walhook-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walhook-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let written = std::fs::read_to_string(&report).unwrap();
    assert!(written.starts_with("# Benchmarks\n\nProse that the harness keeps.\n"));
    for figure in [
        "| capture, 1-row transactions | 3,001 changes",
        "| capture with a JSON template, 1-row transactions | the same changes",
        "| capture, 100-row transactions | 3,001 changes",
        "| capture keeps up with one writer |",
        "| end to end, batch mode | 2,001 changes",
        "| end to end, one event per request | 2,001 changes",
        "| commit → 2xx latency | 1,000 one-row transactions",
        "| peak RSS, one huge transaction | one transaction inserting 3,000 rows",
        "| peak RSS, backlog | 3,001 undelivered events",
        "| backfill into the outbox | 3,000 rows of one table",
        "| peak RSS, backfill | a backfill of 2,000 rows",
        "| documents into the outbox | 2,001 document changes",
        "| peak RSS, documents | capturing the 2,001 document changes",
        "| plain rows beside documents | 2,001 plain row changes",
    ] {
        assert!(written.contains(figure), "no row `{figure}` in:\n{written}");
    }
    assert!(written.contains("pg_recvlogical"), "{written}");
    // Debezium takes a JVM's start and minutes: never in the smoke run, and the row says so.
    assert!(
        written.contains("Debezium not measured: --smoke"),
        "{written}"
    );
    assert!(written.contains("Command: `"), "{written}");
}

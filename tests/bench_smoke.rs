//! The benchmark harness on a tiny workload, so that it can't rot: every figure of
//! BENCHMARKS.md is produced, walhook really captured and delivered (the harness checks the
//! outbox counts and the receiver's), and the results land between the markers. Not a
//! measurement: nothing here looks at the numbers.

use std::process::Command;

#[test]
fn the_benchmark_produces_every_figure_on_a_small_workload() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("BENCHMARKS.md");
    std::fs::write(&report, "# Benchmarks\n\nProse that the harness keeps.\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walhook-bench"))
        .arg("--smoke")
        .arg("--walhook")
        .arg(env!("CARGO_BIN_EXE_walhook"))
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
    ] {
        assert!(written.contains(figure), "no row `{figure}` in:\n{written}");
    }
    assert!(written.contains("pg_recvlogical"), "{written}");
    assert!(written.contains("Command: `"), "{written}");
}

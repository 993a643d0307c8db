//! The command line itself: what `--help` offers is what each command accepts, and errors
//! before anything starts follow the chosen log format.

use std::process::Command;

fn walhook(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(args)
        .env_remove("WALHOOK_CONFIG")
        .env_remove("WALHOOK_SOURCE_URL")
        .output()
        .expect("run walhook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_and_receive_do_not_offer_a_config_file_and_refuse_one() {
    for command in ["demo", "receive"] {
        let (code, help, _) = walhook(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(!help.contains("--config"), "{command} --help:\n{help}");
        let (code, _, stderr) = walhook(&["--config", "x.toml", command]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("read no config file"), "{stderr}");
    }
    let (_, help, _) = walhook(&["--help"]);
    assert!(help.contains("--config"), "{help}");
}

#[test]
fn replay_offers_only_the_statuses_it_accepts() {
    let (_, help, _) = walhook(&["replay", "--help"]);
    let values = help
        .split("--status <STATUS>")
        .nth(1)
        .and_then(|rest| rest.lines().find(|line| line.contains("possible values")))
        .expect("--status lists its values");
    assert_eq!(values.trim(), "[possible values: delivered, dead]");
    // Asked anyway, pending is answered with why it needs no replay.
    let (code, _, stderr) = walhook(&["replay", "--subscription", "s", "--status", "pending"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("still queued and need no replay"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_under_json_logs_is_a_json_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, "[source]\nurl = \"mysql://db/erp\"\n").unwrap();
    let path = path.to_str().unwrap();
    let (code, _, stderr) = walhook(&["--config", path, "--log-format", "json", "run"]);
    assert_eq!(code, 2, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}):\n{stderr}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["fields"]["message"].as_str().unwrap();
    assert!(message.contains("source.url"), "{message}");
    // Text logs keep the plain file:line message.
    let (_, _, stderr) = walhook(&["--config", path, "run"]);
    assert!(stderr.starts_with(path), "{stderr}");
}

//! `walhook demo` end to end: the real binary, a throw-away Postgres, the whole story.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walhook"));
    cmd.arg("demo").env_remove("WALHOOK_CONFIG");
    cmd
}

/// Directories the demo made for process `pid` that are still there.
fn leftovers(pid: u32) -> Vec<PathBuf> {
    let prefixes = [format!("walhook-demo-{pid}-"), format!("walhook-pg-{pid}-")];
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            prefixes.iter().any(|p| name.starts_with(p))
        })
        .map(|e| e.path())
        .collect()
}

#[test]
fn the_story_arrives_signed_and_everything_is_cleaned_up() {
    let started = Instant::now();
    let mut child = demo()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start walhook demo");
    let pid = child.id();
    // Read both streams while waiting, with a deadline.
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("walhook demo did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "✓ invoice.created",
        "✓ invoice.partner-changed",
        "partner_id: 1 → 2",
        "invoice_lines: 2 lines",
        "✓ invoice.updated",
        "invoice {\"id\":1}  invoice_lines: 2 → 3 lines",
        "✓ invoice.posted",
        "state: \"draft\" → \"posted\"",
        "✓ work_order.status-changed",
        "bearer token ok",
        "(batch 3/3, signature verified)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("✓ stock_move.created").count(),
        3,
        "{stdout}"
    );
    assert_eq!(stdout.matches("signature verified").count(), 8, "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}

#[test]
fn keep_leaves_it_running_for_changes_by_hand_until_sigterm() {
    let mut child = demo()
        .arg("--keep")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start walhook demo --keep");
    let pid = child.id();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{needle:?} never printed:\n{}", seen.join("\n"));
                }
            }
        }
    };
    wait_for("still running (--keep)");
    let psql_line = wait_for("psql 'postgres://");
    let url = psql_line
        .trim()
        .trim_start_matches("psql '")
        .trim_end_matches('\'')
        .to_owned();
    let config = wait_for("config (edits apply without a restart): ");
    let config = PathBuf::from(config.split(": ").last().unwrap().trim());
    assert!(config.is_file(), "{config:?}");
    let receiver = wait_for("is received too");
    let hooks = receiver
        .split('"')
        .nth(1)
        .unwrap()
        .replace("<any-name>", "mine");
    let admin = wait_for("admin API: http://127.0.0.1:");
    assert!(admin.trim_end().ends_with("/api/v1/status"), "{admin}");
    let port: u16 = admin
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    let curl = wait_for("Authorization: Bearer ");
    let token = curl
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();

    // A change by hand arrives like the story's.
    let bindir = walhook::ephemeral::find_bindir().expect("server binaries");
    let status = Command::new(bindir.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c"])
        .arg("UPDATE account_invoice SET partner_id = 3 WHERE id = 1")
        .status()
        .expect("run psql");
    assert!(status.success());
    wait_for("partner_id: 2 → 3");

    // The printed token opens the admin API's write calls.
    let answer = post(
        port,
        "/api/v1/subscriptions/partner-sync/pause",
        Some(token),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = post(port, "/api/v1/subscriptions/partner-sync/resume", None);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // A subscription the user adds reaches the demo's receiver too.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[subscriptions]]\nname = \"mine\"\nobject = \"invoice\"\nurl = \"{hooks}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let status = Command::new(bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c"])
            .arg(format!(
                "UPDATE account_invoice SET number = 'MINE-{n}' WHERE id = 1"
            ))
            .status()
            .expect("run psql");
        assert!(status.success());
        // The reload is asynchronous: repeat the change until the new subscription has it.
        std::thread::sleep(Duration::from_millis(500));
        if seen_so_far(&mut seen, &lines).contains("your subscription: signature not checked") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the added subscription never arrived:\n{}",
            seen.join("\n")
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(!config.exists(), "config left behind: {config:?}");
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}

/// One HTTP POST to the admin API on loopback; the whole answer.
fn post(port: u16, path: &str, token: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Everything printed so far, with what arrived since the last call added to `seen`.
fn seen_so_far(seen: &mut Vec<String>, lines: &mpsc::Receiver<String>) -> String {
    seen.extend(lines.try_iter());
    seen.join("\n")
}

#[test]
fn a_killed_demo_leaves_neither_cluster_nor_config() {
    let mut child = demo()
        .arg("--keep")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start walhook demo --keep");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let config = loop {
        let line = lines.next().expect("the demo prints its config").unwrap();
        if let Some(path) = line
            .split("config (edits apply without a restart): ")
            .nth(1)
        {
            break PathBuf::from(path.trim());
        }
    };
    assert!(config.is_file(), "{config:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while config.exists() || !leftovers(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind after SIGKILL: {:?}",
            leftovers(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pg_bindir_pointing_nowhere_is_an_error() {
    let out = demo()
        .env("WALHOOK_PG_BINDIR", "/nowhere/bin")
        .output()
        .expect("run walhook demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("WALHOOK_PG_BINDIR=/nowhere/bin has no initdb and pg_ctl"),
        "{stderr}"
    );
}

#[test]
fn sigterm_mid_story_stops_and_cleans_up() {
    let mut child = demo()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start walhook demo");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // The first step of the story: Postgres and walhook are up.
    loop {
        let line = lines.next().expect("the story starts").unwrap();
        if line.starts_with('●') {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{rest:?}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );
}

//! The .deb that `cargo deb` builds (README "Installing"): walhook alone at /usr/bin, its
//! hardened systemd unit, and a config and secrets file under /etc/walhook kept as conffiles.
//!
//! A real `cargo deb` builds in release mode, minutes on a small machine. The package is what
//! these tests check, not the code's optimisation, so they hand cargo-deb (`--no-build`) the
//! debug walhook this test binary was built with, at the release path the manifest's asset
//! names, in a target directory of their own. cargo-deb is required: a package test that
//! skipped itself would look like a pass, and `.ci/run` installs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use walhook::config::Config;

/// What `.ci/run` runs when cargo-deb is missing (the version this package was made with).
const INSTALL_CARGO_DEB: &str = "cargo install cargo-deb --locked --version 3.8.0";

/// One `cargo deb` for every test here, unpacked.
struct Package {
    /// `dpkg-deb -c`: every path in the data archive (leading `.` cut) → its mode string.
    contents: BTreeMap<String, String>,
    /// The data archive unpacked (`dpkg-deb -x`).
    root: PathBuf,
    /// The control archive unpacked (`dpkg-deb -e`): control, conffiles, maintainer scripts.
    control: PathBuf,
}

fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(build_package)
}

fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn build_package() -> Package {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let found = Command::new(&cargo).args(["deb", "--version"]).output();
    if !found.is_ok_and(|out| out.status.success()) {
        panic!("cargo-deb is not installed; install it with `{INSTALL_CARGO_DEB}`");
    }

    // Fixed, under target/: a rerun starts clean and nothing piles up in /tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging");
    let _ = std::fs::remove_dir_all(&dir);
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_walhook"), release.join("walhook")).unwrap();
    let out_dir = dir.join("out");
    run(Command::new(&cargo)
        .arg("deb")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        // --strip: a debug binary is 200 MB, stripped 30 MB, which --fast compresses in seconds.
        .args(["--no-build", "--locked", "--strip", "--fast", "--quiet"])
        .arg("--output")
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", dir.join("target")));
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("cargo deb wrote a .deb");

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let contents = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            // drwxr-xr-x 0/0   0 2026-12-02 00:00 ./etc/walhook/
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.last().unwrap().trim_start_matches('.');
            (path.to_owned(), fields[0].to_owned())
        })
        .collect();
    let root = dir.join("root");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(&root));
    let control = dir.join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control));
    Package {
        contents,
        root,
        control,
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `KEY=value` lines of the packaged unit, in order (a key may repeat).
fn unit_lines(package: &Package) -> Vec<(String, String)> {
    read(package.root.join("usr/lib/systemd/system/walhook.service"))
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The example values the packaged env file gives in its comments (`#NAME=value`).
fn env_file_examples(package: &Package) -> BTreeMap<String, String> {
    read(package.root.join("etc/walhook/walhook.env"))
        .lines()
        .filter_map(|line| line.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn the_deb_installs_walhook_its_unit_and_its_config_and_nothing_of_the_benchmark() {
    let package = package();
    let files: Vec<&str> = package
        .contents
        .keys()
        .map(String::as_str)
        .filter(|path| !path.ends_with('/'))
        .collect();
    assert_eq!(
        files,
        [
            "/etc/walhook/walhook.env",
            "/etc/walhook/walhook.toml",
            "/usr/bin/walhook",
            "/usr/lib/systemd/system/walhook.service",
            "/usr/share/doc/walhook/README.md",
            "/usr/share/doc/walhook/config.example.toml",
            "/usr/share/doc/walhook/copyright",
        ],
        "{:#?}",
        package.contents
    );
    assert_eq!(package.contents["/usr/bin/walhook"], "-rwxr-xr-x");
    // The secrets file: systemd reads it as root, nobody else may.
    assert_eq!(package.contents["/etc/walhook/walhook.env"], "-rw-------");

    // An edited config or env file survives an upgrade.
    let conffiles = read(package.control.join("conffiles"));
    let mut conffiles: Vec<&str> = conffiles.lines().collect();
    conffiles.sort();
    assert_eq!(
        conffiles,
        ["/etc/walhook/walhook.env", "/etc/walhook/walhook.toml"]
    );
    let control = read(package.control.join("control"));
    assert!(control.contains("Package: walhook\n"), "{control}");

    // It is the walhook CLI, and it runs.
    let version = run(Command::new(package.root.join("usr/bin/walhook")).arg("--version"));
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("walhook "),
        "{version:?}"
    );

    // Installing neither enables nor starts the service (the config needs a database and
    // secrets first); an upgrade restarts a running one; removing it stops it.
    let postinst = read(package.control.join("postinst"));
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-invoke try-restart walhook.service"),
        "{postinst}"
    );
    let prerm = read(package.control.join("prerm"));
    assert!(prerm.contains("stop walhook.service"), "{prerm}");
}

#[test]
fn the_packaged_unit_is_hardened_reloads_on_sighup_and_waits_for_a_graceful_stop() {
    let package = package();
    let lines = unit_lines(package);
    let has = |key: &str, value: &str| lines.iter().any(|(k, v)| k == key && v == value);
    for (key, value) in [
        ("Environment", "WALHOOK_CONFIG=/etc/walhook/walhook.toml"),
        ("EnvironmentFile", "/etc/walhook/walhook.env"),
        ("ExecStart", "/usr/bin/walhook run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("RestartPreventExitStatus", "2"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(has(key, value), "no {key}={value} in the unit: {lines:#?}");
    }

    // systemd kills what is still running after TimeoutStopSec: it must outlast the
    // packaged config's shutdown_timeout, or in-flight deliveries and the checkpoint
    // flush are cut off.
    let stop = lines
        .iter()
        .find(|(key, _)| key == "TimeoutStopSec")
        .map(|(_, value)| walhook::config::parse_duration(value).unwrap())
        .expect("the unit sets TimeoutStopSec");
    let config = packaged_config(package).unwrap();
    assert!(
        stop >= config.delivery.shutdown_timeout + Duration::from_secs(15),
        "TimeoutStopSec {stop:?} vs shutdown_timeout {:?}",
        config.delivery.shutdown_timeout
    );
}

#[test]
fn systemd_accepts_the_packaged_unit() {
    let package = package();
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the unpacked one.
    let unit = read(package.root.join("usr/lib/systemd/system/walhook.service"));
    let binary = package.root.join("usr/bin/walhook");
    let unit = unit.replace("/usr/bin/walhook ", &format!("{} ", binary.display()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    // An unknown key or value is only a warning (exit 0): any line about the unit fails.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("walhook.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
}

fn packaged_config(package: &Package) -> Result<Config, walhook::config::ConfigError> {
    let path = package.root.join("etc/walhook/walhook.toml");
    let examples = env_file_examples(package);
    Config::parse(&read(&path), "walhook.toml", &|name| {
        examples.get(name).cloned()
    })
}

#[test]
fn the_packaged_config_loads_once_the_env_files_secrets_are_filled_in() {
    let package = package();
    let examples = env_file_examples(package);
    assert!(examples.contains_key("PGPASSWORD"), "{examples:?}");
    let config = packaged_config(package).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9187");
}

#[test]
fn until_the_env_file_is_filled_in_the_service_exits_2_naming_the_secret() {
    let package = package();
    // As systemd starts it: the packaged config by WALHOOK_CONFIG, no secrets set. `check`
    // loads the config as `run` does, and would not wait on a database if it got that far.
    let out = Command::new(package.root.join("usr/bin/walhook"))
        .arg("check")
        .env_remove("PGPASSWORD")
        .env_remove("WALHOOK_SOURCE_URL")
        .env(
            "WALHOOK_CONFIG",
            package.root.join("etc/walhook/walhook.toml"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 2 is the unit's RestartPreventExitStatus: no restart loop on an unfinished config.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PGPASSWORD"), "{stderr}");
}

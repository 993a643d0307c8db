//! Shared helpers for the integration tests: one throw-away Postgres for the whole test
//! binary, a fresh database per test, and names no other test uses.

pub mod config;
pub mod http;
pub mod rows;
pub mod subscriber;
pub mod wal;

pub use config::{Child, Object, Sub, Toml};
pub use subscriber::{verify, Reply, Seen, Subscriber};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use walhook::ephemeral::{EphemeralPostgres, Options};

/// The cluster shared by every test of this binary, started on first use. A test that
/// stops, restarts, freezes or reconfigures its server, or holds a transaction open, takes
/// a cluster of its own ([`private_cluster`]) instead.
pub fn cluster() -> &'static EphemeralPostgres {
    static CLUSTER: OnceLock<EphemeralPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        EphemeralPostgres::start(&Options::default()).expect("start the test Postgres cluster")
    })
}

/// A name unique within this test run, for databases, slots and publications.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of its own for one test.
pub struct TestDb<'a> {
    /// The database name.
    pub name: String,
    /// Superuser URL for it.
    pub url: String,
    pg: &'a EphemeralPostgres,
    /// In the shared cluster and made for this test: its slots are dropped when it ends.
    shared: bool,
}

impl TestDb<'static> {
    /// Creates a fresh database in the shared cluster and runs `schema` in it.
    pub fn new(schema: &str) -> TestDb<'static> {
        sweep_finished_slots();
        let mut db = TestDb::in_cluster(cluster(), schema);
        db.shared = true;
        db
    }
}

/// Databases of the shared cluster whose tests have ended.
static FINISHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Drops the slots that ended tests left in the shared cluster. The whole suite shares its
/// `max_replication_slots`, and a daemon killed at the end of a test leaves its slot behind
/// (still active for a moment while its walsender exits, so each sweep also retries the
/// slots earlier sweeps could not drop).
fn sweep_finished_slots() {
    let finished = FINISHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if finished.is_empty() {
        return;
    }
    let names = finished
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = cluster().psql(
        "postgres",
        &format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE NOT active AND database IN ({names})"
        ),
    );
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        if self.shared {
            FINISHED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.name.clone());
            sweep_finished_slots();
        }
    }
}

impl<'a> TestDb<'a> {
    /// Creates a fresh database in the given cluster and runs `schema` in it.
    pub fn in_cluster(pg: &'a EphemeralPostgres, schema: &str) -> TestDb<'a> {
        let name = unique("db");
        pg.create_database(&name).expect("create test database");
        if !schema.is_empty() {
            pg.psql(&name, schema).expect("load test schema");
        }
        TestDb {
            url: pg.url(&name),
            name,
            pg,
            shared: false,
        }
    }

    /// A database the test created itself (e.g. with another encoding) in `pg`.
    pub fn existing(pg: &'a EphemeralPostgres, name: &str) -> TestDb<'a> {
        TestDb {
            url: pg.url(name),
            name: name.to_owned(),
            pg,
            shared: false,
        }
    }

    /// Runs SQL as the superuser and returns psql's unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        self.pg.psql(&self.name, sql).expect("run SQL")
    }
}

/// A role with least privilege (SPEC §1): it may log in with a password, replicate, and
/// create in `db` (the outbox schema, a publication), plus `grants` (where `{role}` stands
/// for its name). Returns its name and a URL logging in as it.
pub fn replication_role(db: &TestDb<'_>, grants: &str) -> (String, String) {
    let role = unique("lp");
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{}'; \
         GRANT CREATE ON DATABASE \"{}\" TO {role}; {}",
        walhook::ephemeral::TEST_PASSWORD,
        db.name,
        grants.replace("{role}", &role)
    ));
    let url = db
        .pg
        .url_as(&role, walhook::ephemeral::TEST_PASSWORD, &db.name);
    (role, url)
}

/// A config file in a temporary directory, deleted on drop.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    /// Path of `walhook.toml`.
    pub path: std::path::PathBuf,
}

/// Writes `text` as a walhook config file. Unless it has an `[http]` table, the HTTP server
/// listens on a free port (appended, so line numbers in error messages stay put): tests run
/// many daemons at once.
pub fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("walhook.toml");
    let text = if text.contains("[http]") {
        text.to_owned()
    } else {
        format!("{text}\n[http]\nlisten = \"127.0.0.1:0\"\n")
    };
    std::fs::write(&path, text).expect("write config");
    ConfigFile { _dir: dir, path }
}

/// The walhook binary with `--config` set, ready for more arguments.
pub fn walhook(config: &ConfigFile) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walhook"));
    cmd.arg("--config").arg(&config.path);
    cmd.env_remove("WALHOOK_SOURCE_URL");
    cmd
}

/// Output of a finished walhook run: exit code and both streams.
pub struct Finished {
    /// Exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// Runs walhook to completion.
pub fn run_walhook(config: &ConfigFile, args: &[&str]) -> Finished {
    let out = walhook(config).args(args).output().expect("run walhook");
    Finished {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `walhook run` process; killed with SIGKILL on drop if still running.
pub struct Daemon {
    child: std::process::Child,
    /// Where its stderr (the log) goes, for failure messages.
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Starts `walhook run` with this config.
    pub fn start(config: &ConfigFile) -> Daemon {
        Daemon::start_with(config, &[], &[])
    }

    /// Starts `walhook ARGS… run` with this config and these extra environment variables
    /// (which may override `WALHOOK_LOG`).
    pub fn start_with(config: &ConfigFile, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = config
            .path
            .with_file_name(format!("walhook-{}.log", unique("run")));
        let stderr = std::fs::File::create(&log).expect("create log file");
        let child = walhook(config)
            .args(args)
            .arg("run")
            .env("WALHOOK_LOG", "walhook=debug,info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start walhook run");
        Daemon { child, log }
    }

    /// [`Daemon::start`] with its open-file limit (soft and hard) set to `limit`, so that
    /// running out of descriptors takes hundreds of connections, not a million.
    pub fn start_with_open_files(config: &ConfigFile, limit: u64) -> Daemon {
        use std::os::unix::process::CommandExt;
        let log = config
            .path
            .with_file_name(format!("walhook-{}.log", unique("run")));
        let stderr = std::fs::File::create(&log).expect("create log file");
        let mut command = walhook(config);
        command
            .arg("run")
            .env("WALHOOK_LOG", "walhook=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                let wanted = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command.spawn().expect("start walhook run");
        wait_for_capture(Daemon { child, log })
    }

    /// Sends a signal (`"KILL"`, `"TERM"`, `"HUP"`).
    pub fn signal(&self, name: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
    }

    /// Waits for the process to exit, up to `within`; its exit code (None if killed).
    pub fn wait(&mut self, within: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "walhook did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `walhook run` with this config and waits until it streams from its slot.
pub fn start_daemon(config: &ConfigFile) -> Daemon {
    wait_for_capture(Daemon::start(config))
}

/// [`start_daemon`] with [`Daemon::start_with`]'s arguments and environment.
pub fn start_daemon_with(config: &ConfigFile, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    wait_for_capture(Daemon::start_with(config, args, env))
}

/// Waits until the daemon logs that it captures; fails with its log when it exits first or
/// takes longer than a minute (creating a slot waits for every transaction open in the
/// cluster, so a test that holds one long delays every other test's start).
fn wait_for_capture(mut daemon: Daemon) -> Daemon {
    let within = std::time::Duration::from_secs(60);
    let deadline = std::time::Instant::now() + within;
    loop {
        assert!(
            daemon.running(),
            "walhook exited early; log:\n{}",
            daemon.log_text()
        );
        if daemon.log_text().contains("capturing") {
            return daemon;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stream from its slot within {within:?}; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Polls `ready` every 50 ms until it holds, failing after `within` with `what`.
pub fn wait_until(within: std::time::Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A cluster of its own, for a test that holds long transactions: creating a logical slot
/// waits until every transaction open in the cluster has ended, so in the shared cluster
/// such a test would hold up the start of every daemon beside it.
pub fn private_cluster() -> EphemeralPostgres {
    EphemeralPostgres::start(&Options::default()).expect("start a private cluster")
}

/// A private cluster that keeps so little WAL for slots that [`lose_slot`] can invalidate one.
pub fn small_wal_cluster() -> EphemeralPostgres {
    EphemeralPostgres::start(&Options {
        settings: vec![
            ("max_slot_wal_keep_size".into(), "1MB".into()),
            ("wal_keep_size".into(), "0".into()),
            ("max_wal_size".into(), "32MB".into()),
            ("min_wal_size".into(), "32MB".into()),
        ],
        ..Options::default()
    })
    .expect("start a small-WAL cluster")
}

/// Writes WAL past the slot's limit until Postgres invalidates it (wal_status `lost`).
/// `scratch` is a table `(id int primary key, name text)` the test may fill and empty.
pub fn lose_slot(db: &TestDb<'_>, slot: &str, scratch: &str) {
    for _ in 0..4 {
        db.sql(&format!(
            "INSERT INTO {scratch} SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
             DELETE FROM {scratch};"
        ));
        db.sql("SELECT pg_switch_wal()");
    }
    db.sql("CHECKPOINT");
    assert_eq!(
        db.sql(&format!(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "lost"
    );
}

/// The lines a child prints on stdout, arriving on a channel as they are printed.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A running `walhook receive` whose stdout lines arrive on a channel.
pub struct Receiver {
    child: std::process::Child,
    /// Its stdout, line by line.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Receiver {
    /// Starts it on a port of its own choosing, without any config file around, with
    /// `$WALHOOK_RECEIVE_SECRET` set to `env_secret` (empty means unset).
    pub fn start(args: &[&str], env_secret: Option<&str>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walhook"))
            .args(["receive", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .env_remove("WALHOOK_CONFIG")
            .env("WALHOOK_RECEIVE_SECRET", env_secret.unwrap_or(""))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start walhook receive");
        let lines = stdout_lines(&mut child);
        let first = lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the listening line");
        let base = first
            .split_whitespace()
            .find(|word| word.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        Receiver { child, lines, base }
    }

    /// Collects stdout until `needle` appears (or panics after `within`).
    pub fn output_until(&self, needle: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        let mut seen = String::new();
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => panic!("{needle:?} not printed; stdout so far:\n{seen}"),
            }
        }
        seen
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(mut self) -> i32 {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "receive ignored SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops a replication slot when the test ends, pass or fail: slots are cluster-wide and
/// the shared cluster has a limited number.
pub struct SlotGuard {
    database: String,
    slot: String,
}

impl SlotGuard {
    /// Guards `slot` of `db` (it need not exist yet).
    pub fn new(db: &TestDb<'_>, slot: &str) -> SlotGuard {
        SlotGuard {
            database: db.name.clone(),
            slot: slot.to_owned(),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let _ = cluster().psql(
            &self.database,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                self.slot
            ),
        );
    }
}

/// An outbox filled with SQL, for `deliveries` and `replay`.
pub mod outbox;

/// The signing secret of [`invoice_config`].
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A config on `db`'s `account_invoice` (number, partner_id, state) with one subscription `invoices` on `url`; `extra` goes into the subscription.
pub fn invoice_config(db: &TestDb<'_>, url: &str, extra: &str) -> ConfigFile {
    Toml::new(db)
        .object(Object::new("invoice", "public.account_invoice").fields(&[
            "number",
            "partner_id",
            "state",
        ]))
        .subscription(
            Sub::new("invoices", "invoice", url)
                .secret(WEBHOOK_SECRET)
                .with(extra),
        )
        .write()
}

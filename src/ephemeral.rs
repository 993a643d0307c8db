//! A throw-away Postgres cluster started from the locally installed server binaries.
//!
//! The demo, the tests and the benchmark all need a real Postgres with `wal_level=logical`
//! and nothing else on the machine: this module finds the binaries, runs `initdb` in a
//! temporary directory (as the `postgres` user when we are root, because `initdb` refuses
//! root), starts the server on a free loopback port and removes everything on drop. A small
//! watchdog process also stops the server when this process dies without dropping it (a
//! `static` cluster in a test binary, a SIGKILL), so no stray postmaster outlives its owner.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a throw-away cluster could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    /// No PostgreSQL server installation was found.
    #[error(
        "no PostgreSQL server binaries found (looked at $WALHOOK_PG_BINDIR, $WALHOOK_TEST_PG_BINDIR, \
         `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH); install the server package, \
         e.g. `apt-get install postgresql` on Debian/Ubuntu, or point WALHOOK_PG_BINDIR at the \
         directory holding initdb and pg_ctl"
    )]
    NoBinaries,
    /// A `*_PG_BINDIR` variable names a directory without the server programs.
    #[error(
        "{var}={} has no initdb and pg_ctl; point it at the directory holding them \
         (e.g. /usr/lib/postgresql/16/bin) or unset it",
        dir.display()
    )]
    BadBindir {
        /// The variable that was set.
        var: &'static str,
        /// What it named.
        dir: PathBuf,
    },
    /// A server program failed; carries its output.
    #[error("{program} failed: {output}")]
    Command {
        /// The program that failed, with its arguments.
        program: String,
        /// What it printed, or why it could not start.
        output: String,
    },
    /// Filesystem trouble in the cluster directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What walhook was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Options for a throw-away cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve TLS with a freshly generated CA and server certificate (needs `openssl`).
    pub tls: bool,
    /// Extra `postgresql.conf` lines, e.g. `("max_slot_wal_keep_size", "1GB")`.
    pub settings: Vec<(String, String)>,
}

/// Roles every cluster has, for tests of password authentication.
pub const SCRAM_USER: &str = "walhook_scram";
/// Password of [`SCRAM_USER`] and [`MD5_USER`].
pub const TEST_PASSWORD: &str = "s3cret-pw";
/// A role whose password is stored as MD5 and which must authenticate with `md5`.
pub const MD5_USER: &str = "walhook_md5";

/// A running throw-away cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct EphemeralPostgres {
    bindir: PathBuf,
    root: PathBuf,
    port: u16,
    as_postgres_user: bool,
    tls: bool,
}

impl EphemeralPostgres {
    /// Creates and starts a cluster; returns when it accepts connections.
    pub fn start(options: &Options) -> Result<Self, EphemeralError> {
        let bindir = find_bindir()?;
        let as_postgres_user = is_root();
        let root = make_root_dir(as_postgres_user)?;
        let mut cluster = EphemeralPostgres {
            bindir,
            root,
            port: 0,
            as_postgres_user,
            tls: options.tls,
        };
        cluster.init(options)?;
        cluster.spawn_watchdog()?;
        // A port taken between probing and binding fails the start; try a few.
        let mut last_err = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.create_test_roles()?;
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A connection URL with explicit user and password.
    pub fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Path of the CA certificate that signed the server certificate (TLS clusters only).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.then(|| self.root.join("ca.crt"))
    }

    /// The cluster's own temporary directory: what is put there goes with the cluster, also
    /// when this process is killed (the watchdog removes it).
    pub fn scratch_dir(&self) -> &Path {
        &self.root
    }

    /// The data directory, e.g. to read the server log.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Runs SQL through `psql` as the superuser, returning unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, EphemeralError> {
        let out = self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )?;
        Ok(out.trim_end().to_owned())
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), EphemeralError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// Stops the server (fast shutdown), keeping its files.
    pub fn stop(&self) -> Result<(), EphemeralError> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "fast", "-w", "stop"],
        )
        .map(drop)
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<(), EphemeralError> {
        self.pg_ctl_start()
    }

    /// Restarts the server (fast shutdown), as an operator or a crash-restart would.
    pub fn restart(&self) -> Result<(), EphemeralError> {
        self.stop()?;
        self.start_again()
    }

    fn init(&self, options: &Options) -> Result<(), EphemeralError> {
        let data = self.data_dir();
        self.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
        )?;
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\n\
             wal_level = logical\n\
             max_replication_slots = 64\n\
             max_wal_senders = 64\n\
             max_connections = 300\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_sender_timeout = 60s\n\
             log_min_messages = warning\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            path_str(&self.root)
        ));
        if self.tls {
            self.make_certificates()?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (key, value) in &options.settings {
            conf.push_str(&format!("{key} = '{value}'\n"));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        // Password roles come first so that they really authenticate; everyone else is
        // trusted on loopback, which is what a throw-away cluster wants.
        let hba = format!(
            "local all all trust\n\
             host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {MD5_USER} 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n"
        );
        write(&data.join("pg_hba.conf"), &hba)
    }

    fn create_test_roles(&self) -> Result<(), EphemeralError> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_roles WHERE rolname = '{SCRAM_USER}'"),
        )?;
        if !exists.is_empty() {
            return Ok(());
        }
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}'; \
                 SET password_encryption = 'md5'; \
                 CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}';"
            ),
        )
        .map(drop)
    }

    fn make_certificates(&self) -> Result<(), EphemeralError> {
        let data = self.data_dir();
        let ca_key = self.root.join("ca.key");
        let ca_crt = self.root.join("ca.crt");
        let key = data.join("server.key");
        let csr = self.root.join("server.csr");
        let crt = data.join("server.crt");
        let ext = self.root.join("san.ext");
        write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=walhook test CA",
                "-keyout",
                path_str(&ca_key),
                "-out",
                path_str(&ca_crt),
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&ca_crt),
                "-CAkey",
                path_str(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&crt),
            ],
        ];
        for args in steps {
            run_command(Command::new("openssl").args(args))?;
        }
        if self.as_postgres_user {
            chown_to_postgres(&key)?;
            chown_to_postgres(&crt)?;
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(|source| {
            EphemeralError::Io {
                what: "chmod",
                path: key.clone(),
                source,
            }
        })
    }

    fn pg_ctl_start(&self) -> Result<(), EphemeralError> {
        let data = self.data_dir();
        let log = self.root.join("postgres.log");
        let port_opt = format!("-p {}", self.port);
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &port_opt,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map_err(|e| match e {
            EphemeralError::Command { program, output } => EphemeralError::Command {
                program,
                output: format!(
                    "{output}\nserver log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                ),
            },
            other => other,
        })
        .map(drop)
    }

    fn spawn_watchdog(&self) -> Result<(), EphemeralError> {
        // SIGQUIT is Postgres' immediate shutdown; the postmaster takes its children along.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             pidfile='{data}/postmaster.pid'; \
             [ -f \"$pidfile\" ] && kill -QUIT \"$(head -n 1 \"$pidfile\")\" 2>/dev/null; \
             sleep 1; rm -rf '{root}'",
            pid = std::process::id(),
            data = path_str(&self.data_dir()),
            root = path_str(&self.root),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| EphemeralError::Command {
                program: "sh (watchdog)".into(),
                output: e.to_string(),
            })
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, EphemeralError> {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.root);
        run_command(&mut cmd)
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        );
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn run_command(cmd: &mut Command) -> Result<String, EphemeralError> {
    let program = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EphemeralError::Command {
            program: program.clone(),
            output: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(EphemeralError::Command {
            program,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, EphemeralError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    for var in ["WALHOOK_PG_BINDIR", "WALHOOK_TEST_PG_BINDIR"] {
        if let Some(dir) = std::env::var_os(var).map(PathBuf::from) {
            // A variable set by hand is meant: falling back to another installation would
            // run a version the user did not ask for.
            if !has_server(&dir) {
                return Err(EphemeralError::BadBindir { var, dir });
            }
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    // Debian keeps each major version apart; prefer the newest.
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
        .ok_or(EphemeralError::NoBinaries)
}

fn is_root() -> bool {
    // SAFETY-free way to ask: the owner of /proc/self is our effective uid.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn make_root_dir(for_postgres_user: bool) -> Result<PathBuf, EphemeralError> {
    let base = std::env::temp_dir();
    let name = format!(
        "walhook-pg-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let root = base.join(name);
    fs::create_dir_all(&root).map_err(|source| EphemeralError::Io {
        what: "create",
        path: root.clone(),
        source,
    })?;
    if for_postgres_user {
        chown_to_postgres(&root)?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(|source| {
        EphemeralError::Io {
            what: "chmod",
            path: root.clone(),
            source,
        }
    })?;
    Ok(root)
}

fn chown_to_postgres(path: &Path) -> Result<(), EphemeralError> {
    run_command(Command::new("chown").arg("postgres:").arg(path)).map(drop)
}

fn free_port() -> Result<u16, EphemeralError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| EphemeralError::Io {
            what: "bind a free port on",
            path: "127.0.0.1".into(),
            source,
        })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn write(path: &Path, text: &str) -> Result<(), EphemeralError> {
    fs::write(path, text).map_err(|source| EphemeralError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

fn append(path: &Path, text: &str) -> Result<(), EphemeralError> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| EphemeralError::Io {
            what: "append to",
            path: path.to_owned(),
            source,
        })
}

/// A cluster shared by the library's own unit tests, and a superuser URL for a fresh
/// database in it.
#[cfg(test)]
pub(crate) fn unit_test_database() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static CLUSTER: OnceLock<EphemeralPostgres> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = CLUSTER
        .get_or_init(|| EphemeralPostgres::start(&Options::default()).expect("start Postgres"));
    let name = format!("unit_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    cluster.create_database(&name).expect("create database");
    cluster.url(&name)
}

//! The programs the benchmark runs as separate processes: walhook and pg_recvlogical.
//!
//! walhook runs as its own process, never in the harness, so that its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A `walhook run` process, its stderr going to a log file.
pub struct Walhook {
    child: Child,
    log: PathBuf,
}

impl Walhook {
    /// Runs `walhook --config <config> <args>` to completion (e.g. `setup`).
    pub fn command(bin: &Path, config: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("WALHOOK_LOG", "warn")
            .output()
            .with_context(|| format!("starting {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "walhook {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts `walhook --config <config> run`, logging warnings and errors to `log`.
    pub fn run(bin: &Path, config: &Path, log: &Path) -> Result<Walhook> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("WALHOOK_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Walhook {
            child,
            log: log.to_owned(),
        })
    }

    /// Fails, with the end of its log, if walhook has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "walhook exited early ({status}); its log ends:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading walhook's /proc status")?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmHWM in walhook's /proc status")?;
        Ok(kib * 1024)
    }

    /// CPU time used so far (user + system).
    pub fn cpu_time(&self) -> Result<Duration> {
        let (own, _) = cpu_of(self.child.id()).context("reading walhook's /proc stat")?;
        Ok(own)
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "walhook exited with {status} on SIGTERM; its log ends:\n{}",
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("walhook did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time (user + system) of process `pid`, and of its children that have exited.
fn cpu_of(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after its ')'; utime,
    // stime, cutime and cstime are fields 14 to 17 of the line, 11 to 14 after ')'.
    let fields: Vec<u64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // USER_HZ is 100 on every Linux we run on.
    let ticks = |n: u64| Duration::from_millis(n * 10);
    Some((ticks(fields[0] + fields[1]), ticks(fields[2] + fields[3])))
}

/// CPU time used so far by every `postgres` process, exited backends included (they are
/// counted in the postmaster's children time). Only the benchmark's cluster runs here, so
/// the difference across a figure is what Postgres spent on it.
pub fn postgres_cpu() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(cpu_of)
        .map(|(own, children)| own + children)
        .sum()
}

/// Drains `slot` with `pg_recvlogical` and pgoutput (protocol 1, as walhook asks for) up to
/// `endpos`, throwing the output away. Returns how long it took, start-up included.
pub fn pg_recvlogical(
    bindir: &Path,
    port: u16,
    database: &str,
    slot: &str,
    publication: &str,
    endpos: &str,
) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new(bindir.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", database, "--slot", slot, "--start", "--no-loop"])
        .args(["--endpos", endpos, "-f", "/dev/null"])
        .args(["-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={publication}")])
        .output()
        .context("starting pg_recvlogical")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

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
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .context("reading walhook's /proc stat")?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
        let (user, system) = ticks(11).zip(ticks(12)).context("short /proc stat")?;
        // USER_HZ is 100 on every Linux we run on.
        Ok(Duration::from_millis((user + system) * 10))
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

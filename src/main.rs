//! The `walhook` binary: parses the command line, loads the config, runs one command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use walhook::commands;
use walhook::config::{Config, SigningSecret};

/// Postgres change-data-capture to signed webhooks.
#[derive(Parser, Debug)]
#[command(name = "walhook", version, about)]
struct Cli {
    /// Config file [default: $WALHOOK_CONFIG, then ./walhook.toml]; not for demo and receive
    // Not global: `demo` and `receive` read no config, and their help must not offer one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Preflight: check the config and the source database without changing anything.
    Check,
    /// Print decoded change events as JSON lines, from a slot of its own; writes nothing.
    Tail {
        /// Read through this durable slot (created if missing, never dropped) instead of a
        /// temporary one that goes when tail does.
        #[arg(long, value_name = "NAME")]
        slot: Option<String>,
        /// Only the changes this subscription fires on, as it would send them (its
        /// templates rendered) instead of envelopes.
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
    },
    /// The daemon: capture matching changes into the outbox, exactly once.
    Run {
        /// Don't apply migrations or create the publication and slot.
        #[arg(long)]
        no_setup: bool,
    },
    /// Create (or bring up to date) the walhook schema, publication and replication slot.
    ///
    /// Safe to run again: what is in place is reported as such. The replication slot makes
    /// the source keep WAL until walhook reads it, so a slot nobody reads any more fills the
    /// source server's disk: when you stop using walhook, run `walhook teardown`.
    Setup {
        /// Also run ALTER TABLE … REPLICA IDENTITY FULL on the configured tables whose
        /// subscriptions need old values (watch, or a `when` reading previous), and no others.
        #[arg(long)]
        replica_identity: bool,
        /// Drop the replication slot (also a lost one) and create it anew, moving the
        /// checkpoint to it. Changes between the old position and now are NOT captured.
        #[arg(long)]
        recreate_slot: bool,
    },
    /// Drop the walhook replication slot, publication and schema (with the outbox).
    ///
    /// A forgotten replication slot makes the source keep WAL forever and fills the ERP
    /// server's disk; teardown drops it. Refuses while deliveries are pending, unless --force.
    Teardown {
        /// Drop everything even though deliveries are still pending (they are lost).
        #[arg(long)]
        force: bool,
    },
    /// Send one signed test event to a subscription now; print the request and the response.
    ///
    /// The event is an update of the subscription's object: sample values from the table's
    /// columns, or the real row with --key. Sent once, never retried; recorded in the
    /// attempt log with trigger 'test'. Exit 0 when the receiver answered 2xx.
    Test {
        /// The subscription's name.
        subscription: String,
        /// Send this row instead of sample values, e.g. '{"id": 1}'.
        #[arg(long, value_name = "JSON")]
        key: Option<String>,
    },
    /// The delivery log, newest first: status, attempts and last error of each delivery.
    Deliveries {
        /// Only this subscription.
        #[arg(long)]
        subscription: Option<String>,
        /// Only deliveries in this state.
        #[arg(long, value_enum)]
        status: Option<DeliveryStatus>,
        /// Only deliveries created since then: an RFC 3339 timestamp, or a duration ago (2h).
        #[arg(long, value_name = "TIME", value_parser = walhook::outbox::log::parse_since)]
        since: Option<walhook::outbox::log::Since>,
        /// Show at most this many deliveries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line with the columns of the deliveries view.
        #[arg(long)]
        json: bool,
    },
    /// Send the rows that already exist: ask the running daemon to backfill a subscription.
    ///
    /// `walhook backfill SUBSCRIPTION [--where SQL]` asks and exits; `walhook run` reads the
    /// table in key order and sends each row as a `read` event, resuming after a restart.
    /// `--status` lists every backfill (`--follow` shows a progress line until none runs),
    /// `--cancel SUBSCRIPTION` stops one.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["subscription", "status", "cancel"])))]
    Backfill {
        /// The subscription whose rows to send.
        subscription: Option<String>,
        /// Only the rows passing this SQL condition over the table's columns, e.g. "id > 1000".
        #[arg(long = "where", value_name = "SQL", requires = "subscription")]
        filter: Option<String>,
        /// Every backfill, newest first: state, rows of the estimate, rate, times, error.
        #[arg(long)]
        status: bool,
        /// With --status: the list as a JSON array.
        #[arg(long, requires = "status", conflicts_with = "follow")]
        json: bool,
        /// With --status: a progress line, redrawn every 500 ms, until no backfill runs.
        #[arg(long, visible_alias = "watch", requires = "status")]
        follow: bool,
        /// Stop the running backfill of this subscription.
        #[arg(long, value_name = "SUBSCRIPTION")]
        cancel: Option<String>,
    },
    /// Re-queue deliveries: one by --id, or a subscription's dead (or delivered) ones.
    ///
    /// `walhook replay --id N`, or `walhook replay --subscription S --status dead [--since T]`.
    /// A replayed delivery is pending again, due now, with a fresh retry schedule; the
    /// receiver gets the same event id. Replaying a subscription also switches it back on
    /// when a 410 Gone had deactivated it.
    Replay {
        /// The delivery with this id (see `walhook deliveries`), whatever its status.
        #[arg(long, value_name = "N")]
        id: Option<i64>,
        /// Every delivery of this subscription in the --status given.
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
        /// Which deliveries of the subscription: dead (gave up) or delivered (re-send).
        #[arg(long, value_enum)]
        status: Option<ReplayStatus>,
        /// Only deliveries created since then: an RFC 3339 timestamp, or a duration ago (2h).
        #[arg(long, value_name = "TIME", value_parser = walhook::outbox::log::parse_since)]
        since: Option<walhook::outbox::log::Since>,
    },
    /// See it work: a throw-away Postgres with a sample ERP, walhook and a receiver.
    ///
    /// Starts Postgres from the locally installed server binaries (no Docker, no network),
    /// runs walhook in-process against it, makes a few business changes (an invoice created,
    /// its partner changed, posted; stock moved in a batch; a work order advanced) and prints
    /// each webhook as it arrives. Needs no config file; cleans up after itself.
    Demo {
        /// Keep everything running after the story, to make changes by hand with psql;
        /// prints the connection string, the config path and the admin URL. Ctrl-C ends it.
        #[arg(long)]
        keep: bool,
    },
    /// A local webhook receiver for development: verifies signatures, prints each request.
    ///
    /// Needs no config file. Answers --status for verified requests (all requests when no
    /// secret is given) and 401 with the reason when the signature does not check out.
    Receive {
        /// Address to listen on (port 0 picks a free port, printed on the first line).
        #[arg(long, default_value = commands::receive::DEFAULT_LISTEN,
              value_parser = commands::receive::parse_listen)]
        listen: String,
        /// Signing secret (whsec_…) to verify with; repeat while rotating keys
        /// [default: $WALHOOK_RECEIVE_SECRET, if set and not empty].
        // A String parsed in main, not by clap: clap's error would echo the secret. The
        // variable is read there too, so an empty one means "unset" rather than a bad secret.
        #[arg(long = "secret", value_name = "WHSEC")]
        secrets: Vec<String>,
        /// HTTP status answered for accepted requests (try 500 or 429 to watch retries).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
        /// How far webhook-timestamp may be from now, e.g. 5m (replay protection).
        #[arg(long, default_value = "5m", value_parser = walhook::config::parse_duration)]
        tolerance: std::time::Duration,
    },
}

/// `--status` of `walhook deliveries` and `walhook replay`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

/// `--status` of `walhook replay`: pending deliveries are still queued, so only these two.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ReplayStatus {
    Delivered,
    Dead,
    /// Not listed: answered with why a pending delivery needs no replay.
    #[value(hide = true)]
    Pending,
}

impl From<ReplayStatus> for walhook::outbox::log::Status {
    fn from(status: ReplayStatus) -> Self {
        match status {
            ReplayStatus::Pending => Self::Pending,
            ReplayStatus::Delivered => Self::Delivered,
            ReplayStatus::Dead => Self::Dead,
        }
    }
}

impl From<DeliveryStatus> for walhook::outbox::log::Status {
    fn from(status: DeliveryStatus) -> Self {
        match status {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Delivered => Self::Delivered,
            DeliveryStatus::Dead => Self::Dead,
        }
    }
}

/// Exit codes of SPEC §1.
mod exit {
    pub const RUNTIME: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const PREFLIGHT: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's stdout is the story: only warnings and errors of the daemon on stderr.
    let quiet = matches!(cli.command, Command::Demo { .. });
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    if cli.config.is_some() && matches!(cli.command, Command::Demo { .. } | Command::Receive { .. })
    {
        eprintln!("walhook: demo and receive read no config file; leave out --config");
        return ExitCode::from(exit::CONFIG);
    }
    if let Command::Demo { keep } = cli.command {
        let options = walhook::demo::DemoOptions { keep };
        return runtime()
            .block_on(async { runtime_result("demo", walhook::demo::run(options).await) });
    }
    // The only command that needs no config file: a developer runs it beside walhook.
    if let Command::Receive {
        listen,
        secrets,
        status,
        tolerance,
    } = cli.command
    {
        return receive(listen, &secrets, status, tolerance);
    }
    // Usage errors before the config is read.
    let replay = match &cli.command {
        Command::Replay {
            id,
            subscription,
            status,
            since,
        } => {
            let target = commands::replay::target_from_args(
                *id,
                subscription.clone(),
                status.map(Into::into),
                since.clone(),
            );
            match target {
                Ok(target) => Some(target),
                Err(e) => {
                    eprintln!("walhook replay: {e}");
                    return ExitCode::from(exit::CONFIG);
                }
            }
        }
        _ => None,
    };
    let path = config_path(cli.config);
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            // A log collector reading `run --log-format json` must see this as a log line.
            if json_logs && matches!(cli.command, Command::Run { .. }) {
                tracing::error!("{e}");
            } else {
                eprintln!("{e}");
            }
            return ExitCode::from(exit::CONFIG);
        }
    };
    runtime().block_on(async {
        match cli.command {
            Command::Check => match commands::check::run(&config).await {
                report if report.problems() == 0 => ExitCode::SUCCESS,
                _ => ExitCode::from(exit::PREFLIGHT),
            },
            Command::Run { no_setup } => {
                let options = walhook::daemon::RunOptions {
                    config_path: path.clone(),
                    no_setup,
                };
                match walhook::daemon::run(config, options).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Command::Tail { slot, subscription } => {
                match commands::tail::run(&config, slot.as_deref(), subscription.as_deref()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e}");
                        ExitCode::from(match e {
                            commands::tail::TailError::Usage(_) => exit::CONFIG,
                            _ => exit::RUNTIME,
                        })
                    }
                }
            }
            Command::Setup {
                replica_identity,
                recreate_slot,
            } => {
                let options = commands::setup::SetupOptions {
                    replica_identity,
                    recreate_slot,
                };
                runtime_result("setup", commands::setup::setup(&config, &options).await)
            }
            Command::Teardown { force } => {
                runtime_result("teardown", commands::setup::teardown(&config, force).await)
            }
            Command::Test { subscription, key } => {
                match commands::test::run(&config, &subscription, key.as_deref()).await {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::from(exit::RUNTIME),
                    Err(e) => {
                        eprintln!("walhook test: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Command::Deliveries {
                subscription,
                status,
                since,
                limit,
                json,
            } => {
                let options = commands::deliveries::DeliveriesOptions {
                    subscription,
                    status: status.map(Into::into),
                    since,
                    limit,
                    json,
                };
                match commands::deliveries::run(&config, &options).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("walhook deliveries: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Command::Backfill {
                subscription,
                filter,
                status,
                json,
                follow,
                cancel,
            } => {
                use commands::backfill::BackfillCommand;
                let command = match (subscription, cancel) {
                    (Some(subscription), _) => BackfillCommand::Request {
                        subscription,
                        filter,
                    },
                    (None, Some(subscription)) => BackfillCommand::Cancel { subscription },
                    (None, None) => {
                        debug_assert!(status, "clap requires one of the three");
                        BackfillCommand::Status { json, follow }
                    }
                };
                match commands::backfill::run(&config, &command).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("walhook backfill: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Command::Replay { .. } => {
                let target = replay.expect("checked before the config was read");
                match commands::replay::run(&config, &target).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("walhook replay: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Command::Receive { .. } => unreachable!("receive runs before the config is loaded"),
            Command::Demo { .. } => unreachable!("demo runs before the config is loaded"),
        }
    })
}

/// `walhook receive`: check the secrets, then serve until SIGINT/SIGTERM.
fn receive(
    listen: String,
    secrets: &[String],
    status: u16,
    tolerance: std::time::Duration,
) -> ExitCode {
    let from_env: Vec<String> = std::env::var("WALHOOK_RECEIVE_SECRET")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .into_iter()
        .collect();
    let secrets = if secrets.is_empty() {
        &from_env
    } else {
        secrets
    };
    let mut parsed = Vec::with_capacity(secrets.len());
    for (n, text) in secrets.iter().enumerate() {
        match SigningSecret::parse(text) {
            Ok(secret) => parsed.push(secret),
            Err(e) => {
                // Name the secret by position only: the value itself must never be printed.
                eprintln!("walhook receive: --secret #{}: {e}", n + 1);
                return ExitCode::from(exit::CONFIG);
            }
        }
    }
    let options = commands::receive::ReceiveOptions {
        listen,
        secrets: parsed,
        status: hyper::StatusCode::from_u16(status).expect("clap bounds --status to 200..=599"),
        tolerance,
    };
    runtime().block_on(async { runtime_result("receive", commands::receive::run(options).await) })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime")
}

/// Exit 0, or print the error (plainly: it ends a command's own output) and exit 1.
fn runtime_result<E: std::fmt::Display>(command: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walhook {command}: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("WALHOOK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("walhook.toml"))
}

fn init_logging(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WALHOOK_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours on a terminal only: in a file or a log collector the escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

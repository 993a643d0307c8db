//! The `walhook` binary: parses the command line, loads the config, runs one command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use walhook::commands;
use walhook::config::Config;

/// Postgres change-data-capture to signed webhooks.
#[derive(Parser, Debug)]
#[command(name = "walhook", version, about)]
struct Cli {
    /// Config file [default: $WALHOOK_CONFIG, then ./walhook.toml]
    #[arg(long, global = true)]
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
    Tail,
    /// The daemon: capture matching changes into the outbox, exactly once.
    Run {
        /// Don't apply migrations or create the publication and slot.
        #[arg(long)]
        no_setup: bool,
    },
}

/// Exit codes of SPEC §1.
mod exit {
    pub const RUNTIME: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const PREFLIGHT: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let path = config_path(cli.config);
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    runtime.block_on(async {
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
            Command::Tail => match commands::tail::run(&config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(exit::RUNTIME)
                }
            },
        }
    })
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("WALHOOK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("walhook.toml"))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WALHOOK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

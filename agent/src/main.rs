//! The `sidelight` binary: parses the command line, loads the configuration (nothing bound yet),
//! starts the agent, waits for signals (SIGHUP reloads; SIGTERM / SIGINT stop) and exits with
//! 0 on a clean stop, 64 on bad usage or configuration, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidelight::config::{Config, ProcessEnv};
use sidelight::{logging, runtime};
use tokio::signal::unix::{SignalKind, signal};

mod cli;

/// Exit code for bad usage or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "sidelight",
    version,
    about = "Observability and feedback agent for Python services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (on the embedded defaults when no --config is given).
    Run {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file, report every error, bind nothing.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
    /// DORA metrics from the store.
    Dora {
        #[command(subcommand)]
        command: DoraCommand,
    },
    /// Record a deployment with a running agent (from a CI step).
    Deploy(cli::DeployArgs),
    /// Health check: GET a URL of a running agent, exit 0 on 2xx, 1 otherwise (for Docker's
    /// HEALTHCHECK in images without a shell).
    Probe(cli::ProbeArgs),
    /// SLO rules from a spec.
    Slo {
        #[command(subcommand)]
        command: SloCommand,
    },
    /// Tests of files users write.
    Test {
        #[command(subcommand)]
        command: TestCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TestCommand {
    /// Run Prometheus rule unit-test files as `promtool test rules` does (same format, output
    /// and exit codes: 0 when every test passes, 1 otherwise).
    Rules {
        /// promtool unit-test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SloCommand {
    /// Write standard Prometheus rules for the SLOs of a spec: error-ratio recording rules over
    /// 5m to 3d and multi-window, multi-burn-rate alerts (exit 0; 64 for an invalid spec).
    Generate(cli::SloGenerateArgs),
}

#[derive(Debug, Subcommand)]
enum DoraCommand {
    /// Print a DORA report read directly from the store (no running agent needed).
    Report(cli::ReportArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file, &ProcessEnv) {
            Ok(config) => {
                println!("{}: OK: {}", file.display(), config.summary());
                // Valid, but `run` as this user may still fail or miss files: say so.
                for w in sidelight::preflight::warnings(&config) {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run { config } => run(config.as_deref()),
        Command::Dora {
            command: DoraCommand::Report(args),
        } => finish(cli::report(&args)),
        Command::Deploy(args) => finish(cli::deploy(&args)),
        Command::Probe(args) => finish(cli::probe(&args)),
        Command::Slo {
            command: SloCommand::Generate(args),
        } => finish(cli::slo_generate(&args)),
        Command::Test {
            command: TestCommand::Rules { files },
        } => {
            let code = sidelight_rules::promtool::run(
                &files,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// Prints a CLI command's error chain and maps it to an exit code.
fn finish(result: Result<(), cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(if e.usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn load(path: Option<&Path>) -> Result<Config, sidelight::config::ConfigErrors> {
    match path {
        Some(p) => Config::load(p, &ProcessEnv),
        None => Config::embedded(),
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log = logging::init(&config.agent.log_level);
    // One thread runs every task: one core forwards far more than a sidecar's traffic, and at
    // the rates it sees a second worker mostly costs wake-ups (an idle worker is unparked for
    // nearly every task woken). The current-thread scheduler, on the thread that waits for
    // signals, rather than one worker of the multi-thread one: no hand-off between the two
    // threads and less bookkeeping per wake-up (figures: BENCHMARKS.md, OTLP end to end).
    // Blocking work (collection cycles, spills, snapshots) runs on the blocking pool; the store
    // has its own thread (ARCHITECTURE.md, Threads and tasks).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .thread_name("sidelight")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, path, log)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sidelight failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs until SIGTERM or SIGINT; returns whether the shutdown finished within its deadline.
async fn serve(
    config: Config,
    path: Option<&Path>,
    log: logging::LogHandle,
) -> anyhow::Result<bool> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut running = runtime::start(config, Some(log)).await?;
    // `POST /-/reload` and SIGHUP run the same reload, one at a time, here.
    let mut http_reloads = running
        .take_reload_requests()
        .ok_or_else(|| anyhow::anyhow!("reload requests already taken"))?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break; }
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading the configuration");
                running.reload_from(path);
            }
            Some(reply) = http_reloads.recv() => {
                tracing::info!(trigger = "POST /-/reload", "reloading the configuration");
                let _ = reply.send(running.reload_from(path));
            }
        }
    }
    // Reload requests still waiting are answered 503 (their reply channel closes).
    drop(http_reloads);
    let deadline = running.config().agent.shutdown_timeout;
    Ok(running.stop(deadline).await)
}

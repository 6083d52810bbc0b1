//! `petrel`: the node agent and its CLI.
//!
//! - `petrel run --config FILE`: the daemon (BGP speaker, kernel FIB sync, control socket).
//! - `petrel check --config FILE`: validate a config file (`FILE:LINE:COL: message`).
//! - `petrel status [--json]` and `petrel routes [--json]`: ask the running daemon.

mod bfd;
mod control;
mod convert;
mod display;
mod fib;
mod k8s;
mod memory;
mod mesh;
mod metrics;
mod msg;
mod run;
mod state;
mod underlay;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "petrel",
    version,
    about = "BGP direct-routing agent for Kubernetes and bare-metal nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        #[arg(long, short, default_value = "/etc/petrel/petrel.yaml")]
        config: PathBuf,
        /// Control socket (default: control.socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Log filter (RUST_LOG syntax), e.g. "info" or "petrel_bgp=debug".
        #[arg(long, default_value = "info")]
        log: String,
    },
    /// Check a config file and print every problem as FILE:LINE:COL: message.
    Check {
        #[arg(long, short, default_value = "/etc/petrel/petrel.yaml")]
        config: PathBuf,
    },
    /// Peers, originated prefixes and FIB summary of the running agent.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = petrel_config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Seconds to wait for the agent's answer.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// The Loc-RIB: every prefix, its paths, why the best one won, whether it is in the FIB.
    Routes {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = petrel_config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Seconds to wait for the agent's answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

fn init_logs(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match petrel_config::load(&config) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("{w}");
                }
                println!("{}: {}", config.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            config,
            socket,
            log_json,
            log,
        } => {
            init_logs(&log, log_json);
            memory::tune_allocator();
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("petrel: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run::run(run::RunOpts { config, socket })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("petrel: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status {
            json,
            socket,
            timeout,
        } => client(&socket, "status", json, timeout),
        Cmd::Routes {
            json,
            socket,
            timeout,
        } => client(&socket, "routes", json, timeout),
    }
}

fn client(socket: &std::path::Path, what: &str, json: bool, timeout: f64) -> ExitCode {
    let timeout = std::time::Duration::from_secs_f64(timeout.clamp(0.1, 3600.0));
    let v = match petrel_control::ask(socket, what, timeout) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("petrel: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let text = if what == "status" {
        serde_json::from_value::<petrel_control::AgentStatus>(v).map(|s| display::status(&s))
    } else {
        serde_json::from_value::<petrel_control::RoutesAnswer>(v).map(|r| display::routes(&r))
    };
    match text {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("petrel: unexpected answer from the agent: {e}");
            ExitCode::FAILURE
        }
    }
}

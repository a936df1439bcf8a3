//! The `netray` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Network observability with eBPF.
#[derive(Parser, Debug)]
#[command(name = "netray", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report which kernel hooks really load, attach and run on this machine.
    Check {
        /// Print one JSON object: a boolean per hook and `details` for failures.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NETRAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("netray: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { json } => {
            netray::privileges::require("check", netray::privileges::EBPF_COMMAND)?;
            let report = netray::check::probe()?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

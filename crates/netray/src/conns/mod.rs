//! Connection tracer (`netray conns`): every TCP connect/accept/close with
//! process, hostname, bytes, RTT and retransmits.
//!
//! Scaffold: the command is wired into the CLI; the tracer is filled in by the
//! conns work.

pub mod resolve;

use std::process::ExitCode;

/// `netray conns` command-line arguments.
#[derive(clap::Args, Debug)]
pub struct ConnsArgs {}

/// Runs `netray conns` until Ctrl-C/SIGTERM.
pub fn command(_args: ConnsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("netray conns is not implemented yet")
}

//! Outbound in-band trace (`netray trace HOST[:PORT]`): connect to a TCP
//! service and trace the path to it inside that connection, with the same
//! engine as `netray serve`.
//!
//! Scaffold: the command is wired into the CLI; filled in by the trace work.

use std::process::ExitCode;

/// `netray trace` command-line arguments.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {}

/// Runs `netray trace`.
pub fn command(_args: TraceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("netray trace is not implemented yet")
}

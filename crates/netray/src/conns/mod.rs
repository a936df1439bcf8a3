//! Connection tracer (`netray conns`): every TCP connect/accept/close with
//! process, hostname, bytes, RTT and retransmits.
//!
//! - [`attach`]: loads the `netray-conns` object, computes the offsets it
//!   needs (tracepoint formats, kernel BTF) and attaches the tracepoints.
//! - [`events`]: raw kernel events → connection records (exact byte counts).
//! - [`output`]: filters, text and JSON lines.
//! - [`metrics`]: the Prometheus endpoint (`--metrics`).
//! - [`diag`]: live per-connection counters over sock_diag (`--interval`).
//! - [`run`]: the event loop.
//! - [`resolve`]: getaddrinfo uprobes and the hostname cache.

pub mod attach;
pub mod btf;
pub mod diag;
pub mod events;
pub mod metrics;
pub mod offsets;
pub mod output;
pub mod resolve;
pub mod run;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::bail;

/// `netray conns` command-line arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnsArgs {
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only connections of this process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only connections of processes with this command name (exact, as in
    /// /proc/PID/comm: at most 15 bytes).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only connections with this local or remote port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Also print live counters of every open connection every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub interval: Option<f64>,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
}

/// Validated options of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnsConfig {
    /// JSON lines output.
    pub json: bool,
    /// What to report.
    pub filter: output::Filter,
    /// Live counters period.
    pub interval: Option<Duration>,
    /// Metrics listen address.
    pub metrics: Option<SocketAddr>,
}

impl ConnsArgs {
    /// Checks the flags; errors name the flag.
    pub fn validate(&self) -> anyhow::Result<ConnsConfig> {
        if let Some(comm) = &self.comm {
            if comm.is_empty() {
                bail!("--comm: the command name is empty");
            }
            if comm.len() > 15 {
                bail!(
                    "--comm {comm:?}: longer than 15 bytes; the kernel keeps only the first 15 \
                     (use {:?})",
                    truncate_comm(comm)
                );
            }
        }
        if self.port == Some(0) {
            bail!("--port 0: not a port a connection can have (1-65535)");
        }
        if self.pid == Some(0) {
            bail!("--pid 0: not a process id");
        }
        let interval = match self.interval {
            None => None,
            Some(secs) if (0.01..=86_400.0).contains(&secs) => Some(Duration::from_secs_f64(secs)),
            Some(secs) => bail!("--interval {secs}: must be between 0.01 and 86400 seconds"),
        };
        let metrics = match &self.metrics {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "--metrics {text:?}: expected ADDR:PORT such as 127.0.0.1:9100 or \
                     [::1]:9100 ({e})"
                )
            })?),
        };
        Ok(ConnsConfig {
            json: self.json,
            filter: output::Filter {
                pid: self.pid,
                comm: self.comm.clone(),
                port: self.port,
            },
            interval,
            metrics,
        })
    }
}

fn truncate_comm(comm: &str) -> String {
    let mut end = 15;
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    comm[..end].to_string()
}

/// Runs `netray conns` until Ctrl-C/SIGTERM.
pub fn command(args: ConnsArgs) -> anyhow::Result<ExitCode> {
    let config = args.validate()?;
    crate::privileges::require("conns", crate::privileges::EBPF_COMMAND)?;
    // One thread: the event loop is the only busy task, and a multi-thread
    // runtime would hand every ring buffer wakeup from its I/O driver
    // thread to the loop's thread (measured: futex wakeups dominated
    // netray's CPU time under connection churn).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before the programs are loaded: a Ctrl-C during setup still prints
    // the summary.
    let shutdown = crate::shutdown_signal_for(&runtime);
    runtime.block_on(run::run(config, shutdown))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: ConnsArgs) -> String {
        format!("{:#}", args.validate().unwrap_err())
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = err(ConnsArgs {
            interval: Some(0.0),
            ..Default::default()
        });
        assert!(e.contains("--interval"), "{e}");
        let e = err(ConnsArgs {
            interval: Some(f64::NAN),
            ..Default::default()
        });
        assert!(e.contains("--interval"), "{e}");
        let e = err(ConnsArgs {
            metrics: Some("localhost".into()),
            ..Default::default()
        });
        assert!(e.contains("--metrics"), "{e}");
        let e = err(ConnsArgs {
            comm: Some("a-very-long-command-name".into()),
            ..Default::default()
        });
        assert!(e.contains("--comm") && e.contains("a-very-long-com"), "{e}");
        let e = err(ConnsArgs {
            port: Some(0),
            ..Default::default()
        });
        assert!(e.contains("--port"), "{e}");
    }

    #[test]
    fn good_flags() {
        let c = ConnsArgs {
            json: true,
            pid: Some(7),
            comm: Some("curl".into()),
            port: Some(443),
            interval: Some(1.5),
            metrics: Some("127.0.0.1:9100".into()),
        }
        .validate()
        .unwrap();
        assert!(c.json);
        assert_eq!(c.interval, Some(Duration::from_millis(1500)));
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.filter.port, Some(443));
    }
}

//! Outbound in-band trace (`netray trace HOST[:PORT]`): connect to a TCP
//! service and trace the path to it inside that connection, with the same
//! engine as `netray serve` ([`crate::inband`]), pointed the other way.
//!
//! 1. `HOST` is resolved (`-4`/`-6` pick the family), the in-band capture is
//!    attached to the up Ethernet interfaces (or `--interface`), a socket is
//!    bound to the route's source address, and its flow is registered with
//!    the capture *before* connecting, so the kernel programs see the whole
//!    handshake (the capture only tracks flows on its own for `serve`'s
//!    listening ports).
//! 2. The connection is opened; optionally an HTTP `HEAD /` is sent or a TLS
//!    handshake completed (`--send`), see [`connect`] for why neither is
//!    needed for the trace itself.
//! 3. [`InbandTracer::trace_flow`] sends every TTL at once, several probes
//!    per TTL, TTL-limited one-byte segments of sequence space the server
//!    has acknowledged; routers answer with ICMP Time Exceeded, the server
//!    with a duplicate ACK whose D-SACK block names the probe (the
//!    destination).
//! 4. The result is printed as a table (or the `/trace.json` object with
//!    `--json`); `--watch` repeats rounds on the same connection and keeps
//!    per-hop loss, RTT and jitter.
//!
//! In the JSON object, as in `/trace.json`, `client` is the traced peer (here
//! the server we connected to) and `server` is this host.

pub mod connect;
pub mod report;
pub mod target;
mod tls;

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};
use tokio::sync::watch;

use crate::inband::{
    capture::{Capture, up_interfaces},
    engine::EngineConfig,
    model::{TraceResult, TraceSnapshot},
    tracer::{InbandTracer, TracerConfig},
};
use connect::Send;
use report::Stats;
use target::{FamilyChoice, Target};

/// Default port: HTTPS, the port most likely to be let through anywhere.
pub const DEFAULT_PORT: u16 = 443;

/// `--watch` gives up after this many failed rounds in a row.
const MAX_FAILED_ROUNDS: u32 = 3;

/// How long to wait for reverse DNS names after a round.
const NAME_WAIT: Duration = Duration::from_millis(2500);

/// `netray trace` command-line arguments.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The service to connect to and trace: `HOST`, `HOST:PORT`, `IPV6` or
    /// `[IPV6]:PORT` (default port 443).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// What to send once connected: nothing (the handshake is enough), an
    /// HTTP `HEAD /` request, or a TLS handshake; the last two keep servers
    /// that drop silent connections interested.
    #[arg(long, value_enum, default_value_t = Send::None)]
    pub send: Send,
    /// Print the result as one JSON object (the `/trace.json` object of
    /// `netray serve`); with `--watch`, one object per line and round.
    #[arg(long)]
    pub json: bool,
    /// Repeat rounds on the same connection until interrupted (or
    /// `--count`), keeping per-hop loss, RTT and jitter.
    #[arg(long)]
    pub watch: bool,
    /// With `--watch`: stop after this many rounds.
    #[arg(short = 'c', long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// With `--watch`: seconds between rounds.
    #[arg(short = 'i', long, default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,
    /// Highest TTL probed.
    #[arg(short = 'm', long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..))]
    pub max_hops: u8,
    /// Probes per TTL (per round with `--watch`) [default: 3; 1 with
    /// `--watch`, like mtr, so that routers' ICMP rate limits (Linux: a
    /// burst of 6, then 1 per second) do not show up as loss].
    #[arg(short = 'q', long, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub probes: Option<u8>,
    /// Numeric output: no reverse DNS lookups.
    #[arg(short = 'n', long)]
    pub numeric: bool,
    /// Interface to attach the capture to (repeatable; default: every up,
    /// non-loopback Ethernet interface).
    #[arg(short = 'I', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Seconds to wait for the connection (and for `--send`'s answer).
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Seconds as a positive decimal number.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text:?} seconds is out of range (0 < s <= 86400)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl TraceArgs {
    fn probes(&self) -> u8 {
        self.probes.unwrap_or(if self.watch { 1 } else { 3 })
    }

    fn family(&self) -> FamilyChoice {
        match (self.ipv4, self.ipv6) {
            (true, _) => FamilyChoice::V4,
            (_, true) => FamilyChoice::V6,
            _ => FamilyChoice::Any,
        }
    }
}

/// Runs `netray trace`. Exit code 0 when the destination was reached (in
/// the last round with `--watch`), 1 when it was not, 130 when interrupted
/// before any result; errors are returned (`main` exits 2 on them).
pub fn command(args: TraceArgs) -> anyhow::Result<ExitCode> {
    // Bad input first: it needs no privileges to be reported.
    let target = Target::parse(&args.target, DEFAULT_PORT)?;
    crate::privileges::require("trace", crate::privileges::EBPF_COMMAND)?;
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(args, target))
}

/// Where the output goes and how.
struct Output {
    json: bool,
    watch: bool,
    terminal: bool,
}

async fn run(args: TraceArgs, target: Target) -> anyhow::Result<ExitCode> {
    let peer = target.resolve(args.family()).await?;
    let interfaces = if args.interfaces.is_empty() {
        let found = up_interfaces().context("listing network interfaces")?;
        ensure!(
            !found.is_empty(),
            "no up, non-loopback Ethernet interface to attach the capture to; name one with \
             --interface"
        );
        found
    } else {
        args.interfaces.clone()
    };
    let attaching = Instant::now();
    let capture = Capture::attach(&interfaces)?;
    tracing::debug!(?interfaces, elapsed = ?attaching.elapsed(), "capture attached");
    let tracer = InbandTracer::new(
        capture,
        TracerConfig {
            engine: EngineConfig {
                max_hops: args.max_hops,
                probes_per_ttl: args.probes(),
            },
            reverse_dns: !args.numeric,
            ..TracerConfig::default()
        },
    )?;
    let output = Output {
        json: args.json,
        watch: args.watch,
        terminal: std::io::stdout().is_terminal(),
    };
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);

    let mut opened = tokio::select! {
        opened = connect::open(tracer.capture(), peer, &target.host, args.send, args.timeout) => opened?,
        () = &mut shutdown => return Ok(ExitCode::from(130)),
    };
    tracing::debug!(local = %opened.connection.local, %peer, "connected");
    let header = format!(
        "netray trace to {} port {}, from {}: {} hops max, {} probes per hop{}",
        if target.host.parse::<std::net::IpAddr>().is_ok() {
            peer.ip().to_string()
        } else {
            format!("{} ({})", target.host, peer.ip())
        },
        peer.port(),
        opened.connection.local,
        args.max_hops,
        args.probes(),
        opened
            .greeting
            .as_ref()
            .map(|g| format!(", server said {g:?}"))
            .unwrap_or_default(),
    );
    let redrawn = output.watch && output.terminal;
    if !output.json && !redrawn {
        println!("{header}");
    }

    let (progress, _) = watch::channel(TraceSnapshot::default());
    let mut stats = Stats::default();
    let mut last_reached = false;
    let mut failures = 0;
    let mut interrupted = false;
    let started = Instant::now();
    loop {
        let round = tokio::select! {
            round = tracer.trace_flow(&opened.connection, &mut opened.subscription, &progress) => round,
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
        };
        match round {
            Ok(mut result) => {
                if !args.numeric {
                    wait_for_names(&tracer, &mut result).await;
                }
                failures = 0;
                last_reached = result.destination_reached;
                stats.add(&result);
                print_round(&output, &header, &stats, &result, started.elapsed())?;
            }
            Err(error) if args.watch && failures < MAX_FAILED_ROUNDS => {
                failures += 1;
                // The server may have closed an idle connection: open another.
                eprintln!(
                    "netray: round {} failed: {error}; reconnecting",
                    stats.rounds + 1
                );
                drop(opened);
                opened = connect::open(
                    tracer.capture(),
                    peer,
                    &target.host,
                    args.send,
                    args.timeout,
                )
                .await
                .context("reconnecting")?;
                // Retry the round right away on the new connection.
                continue;
            }
            Err(error) => {
                let error = if error.to_string().contains("no longer established") {
                    anyhow!(
                        "{error}: the server closed it before the trace (with --send, try \
                         another kind, or none)"
                    )
                } else {
                    anyhow!(error)
                };
                return Err(error.context(format!(
                    "tracing {peer} (capture attached to {})",
                    interfaces.join(", ")
                )));
            }
        }
        if !args.watch || args.count.is_some_and(|count| stats.rounds >= count) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            () = &mut shutdown => break,
        }
    }
    Ok(if interrupted && stats.rounds == 0 {
        // Like a shell's SIGINT status: nothing to report.
        ExitCode::from(130)
    } else if last_reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Gives reverse DNS a moment to name the hops (lookups started during the
/// round), then fills in what is known.
async fn wait_for_names(tracer: &InbandTracer, result: &mut TraceResult) {
    let rdns = tracer.reverse_dns();
    let addrs: Vec<_> = result.hops.iter().filter_map(|h| h.addr).collect();
    for &addr in &addrs {
        rdns.lookup_in_background(addr);
    }
    let deadline = Instant::now() + NAME_WAIT;
    while addrs.iter().any(|&a| rdns.is_pending(a)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rdns.fill_known(&mut result.hops);
}

fn print_round(
    output: &Output,
    header: &str,
    stats: &Stats,
    result: &TraceResult,
    running: Duration,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if output.json {
        writeln!(out, "{}", serde_json::to_string(result)?)?;
        out.flush()?;
        return Ok(());
    }
    let summary = summary(result);
    if output.watch {
        if output.terminal {
            // Redraw in place: home, clear screen.
            writeln!(out, "\x1b[H\x1b[2J{header}")?;
        }
        writeln!(
            out,
            "round {} ({:.0} s): {summary}; destination reached in {} of {} rounds",
            stats.rounds,
            running.as_secs_f64(),
            stats.reached,
            stats.rounds
        )?;
        write!(out, "{}", stats.table(true))?;
        if !output.terminal {
            writeln!(out)?;
        }
    } else {
        write!(out, "{}", stats.table(false))?;
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(())
}

fn summary(result: &TraceResult) -> String {
    let peer: SocketAddr = result.client;
    match result.hops.last() {
        Some(last) if result.destination_reached => format!(
            "destination {} reached at TTL {} in {:.1} ms",
            peer.ip(),
            last.ttl,
            result.elapsed_ms
        ),
        _ => format!(
            "destination {} not reached within {} hops ({:.1} ms)",
            peer.ip(),
            result.hops.len(),
            result.elapsed_ms
        ),
    }
}

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
    /// Packet tracer: XDP ingress + TC egress capture with in-kernel filters (-r: read a file).
    Packets(Box<netray::packets::args::PacketsArgs>),
    /// Connection tracer: every TCP connect/accept/close with process, hostname, bytes, RTT.
    Conns(Box<netray::conns::ConnsArgs>),
    /// Outbound in-band trace: connect to HOST[:PORT] and trace the path inside that connection.
    Trace(Box<netray::trace::TraceArgs>),
    /// Self-contained demo: a simulated path in network namespaces, traced by `netray serve`.
    Demo,
    /// In-band traceroute server: traces every visitor's path inside their own connection.
    Serve(Box<netray::serve::ServeArgs>),
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
            // Verifier logs reduced to a paragraph (see netray::verifier).
            eprintln!("netray: {}", netray::verifier::render_error(&error));
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
            // A hook that fails is information; a command that cannot
            // load its programs here is a failure (exit 1, report printed).
            Ok(if report.capabilities_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Packets(args) => {
            use netray::packets::args::Action;
            let config = args.validate()?;
            match &config.action {
                // Neither prints the filter nor reads a file with eBPF:
                // both work unprivileged.
                Action::Dump => {
                    print!("{}", netray::packets::run::dump(&config)?);
                    return Ok(ExitCode::SUCCESS);
                }
                Action::Read { .. } => {
                    netray::packets::offline::run(&config)?;
                    return Ok(ExitCode::SUCCESS);
                }
                Action::Capture => {}
            }
            netray::privileges::require("packets", netray::privileges::EBPF_COMMAND)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let shutdown = netray::shutdown_signal_for(&runtime);
            runtime.block_on(netray::packets::run::run(config, shutdown))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Conns(args) => netray::conns::command(*args),
        Command::Trace(args) => netray::trace::command(*args),
        Command::Demo => {
            netray::privileges::require("demo", netray::privileges::EBPF_COMMAND)?;
            netray::demo::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            netray::privileges::require("serve", netray::privileges::EBPF_COMMAND)?;
            let config = netray::serve::ServeConfig::from_args(*args)?;
            // Before any setup: a bad --user fails at once.
            let user = netray::privileges::serve_target_user(config.user.as_deref())?;
            netray::privileges::require_droppable()?;
            tokio::runtime::Runtime::new()?.block_on(serve(config, user))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(
    config: netray::serve::ServeConfig,
    user: Option<netray::privileges::TargetUser>,
) -> anyhow::Result<()> {
    use netray::inband::{
        capture::{Capture, up_interfaces},
        engine::EngineConfig,
        tracer::{InbandTracer, TracerConfig},
    };
    // First: a signal during setup then ends serve the normal way.
    let shutdown = netray::shutdown_signal();
    let interfaces = if config.engine.interfaces.is_empty() {
        let found = up_interfaces()?;
        anyhow::ensure!(
            !found.is_empty(),
            "no up, non-loopback interface to attach to; name one with --interface"
        );
        found
    } else {
        config.engine.interfaces.clone()
    };
    let capture = Capture::attach(&interfaces)?;
    // Track connections to our ports from their SYN: a trace then knows the
    // connection's sequence state even when the visitor has gone quiet.
    let ports: Vec<u16> = [config.http, config.https]
        .into_iter()
        .flatten()
        .map(|addr| addr.port())
        .filter(|&port| port != 0)
        .collect();
    capture.set_listen_ports(&ports)?;
    let tracer = InbandTracer::new(
        capture,
        TracerConfig {
            engine: EngineConfig {
                max_hops: config.engine.max_hops,
                probes_per_ttl: config.engine.probes,
            },
            ..TracerConfig::default()
        },
    )?;
    tracing::info!(?interfaces, "capture attached");
    let server = netray::serve::Server::bind(config).await?;
    // Everything privileged is done: programs attached, maps and ring buffer
    // open, raw probe sockets open, listeners bound. From here on the
    // process parses the Internet's HTTP and TLS with no privilege at all.
    if let Some(user) = &user {
        server.hand_over_files(user.uid, user.gid)?;
    }
    // Kernels before 5.19 refuse every bpf() command, map updates on
    // descriptors already open included, to a process without CAP_BPF
    // while kernel.unprivileged_bpf_disabled is set: measured, then exactly
    // CAP_BPF is kept where it is needed.
    let keep: &[netray::privileges::Capability] =
        if netray::privileges::map_operations_need_cap_bpf(user.as_ref())? {
            tracing::warn!(
                "this kernel refuses bpf() map operations without CAP_BPF \
                 (kernel.unprivileged_bpf_disabled={}): the privilege drop keeps CAP_BPF, \
                 which tracing needs to update and read its maps",
                netray::privileges::unprivileged_bpf_disabled()
                    .map_or("?".to_string(), |v| v.to_string())
            );
            &[netray::privileges::Capability::Bpf]
        } else {
            &[]
        };
    netray::privileges::drop_privileges(user.as_ref(), keep)?;
    server.serve(std::sync::Arc::new(tracer), shutdown).await
}

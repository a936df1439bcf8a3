//! `netray packets`: ties the kernel capture to the output sinks.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    args::{DirectionArg, OutputMode, OutputSink, PacketsConfig, SinkStatus, accounting},
    capture::{CaptureOptions, Directions, FlowEntry as KernelFlow, PacketCapture},
    filter,
    flows::{Family, FlowEntry, FlowTracker, render_table, to_json},
};

/// How often the flow table is refreshed.
const FLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Rows of the flow table.
const FLOW_ROWS: usize = 20;

/// Runs a capture until the count or duration is reached or `shutdown`
/// completes; prints the accounting to stderr.
pub async fn run(
    config: PacketsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let filter_text = config.filter.clone().unwrap_or_default();
    let program = filter::Program::compile(&filter_text)
        .map_err(|e| anyhow::anyhow!("filter {filter_text:?}: {e}"))?;
    let interfaces = if config.interfaces.is_empty() {
        let found = crate::inband::capture::up_interfaces().context("listing the up interfaces")?;
        anyhow::ensure!(
            !found.is_empty(),
            "no up, non-loopback Ethernet interface to capture on; name one with -i"
        );
        found
    } else {
        config.interfaces.clone()
    };
    let flows = matches!(config.output, OutputMode::Flows { .. });
    if config.snaplen > super::capture::MAX_SNAPLEN && !flows {
        // Said, not silent: packets longer than this arrive truncated
        // (their wire length is still recorded).
        eprintln!(
            "netray: capturing at most {} bytes per packet (--snaplen {} is above the kernel \
             side's limit)",
            super::capture::MAX_SNAPLEN,
            config.snaplen
        );
    }
    let options = CaptureOptions {
        snaplen: config.snaplen,
        flows,
        direction: match config.direction {
            DirectionArg::In => Directions::In,
            DirectionArg::Out => Directions::Out,
            DirectionArg::Both => Directions::Both,
        },
    };
    let mut capture = PacketCapture::attach(&interfaces, &program, options)?;
    let deadline = config.duration.map(|d| Instant::now() + d);
    let sleep_until_deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown);
    tokio::pin!(sleep_until_deadline);

    if let OutputMode::Flows { json } = config.output {
        let mut tracker = FlowTracker::default();
        let mut ticker = tokio::time::interval(FLOW_INTERVAL);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = &mut sleep_until_deadline => break,
                _ = ticker.tick() => {
                    let snapshot: Vec<FlowEntry> =
                        capture.flows().iter().filter_map(to_flow_entry).collect();
                    if let Some((rates, interval)) = tracker.update(snapshot, Instant::now()) {
                        let out = if json {
                            to_json(&rates, interval, FLOW_ROWS).to_string()
                        } else {
                            render_table(&rates, FLOW_ROWS)
                        };
                        println!("{out}");
                    }
                }
            }
        }
    } else {
        let mut sink = OutputSink::open(&config)
            .context("opening the output")?
            .context("no packet output for this mode")?;
        for iface in capture.interfaces().to_vec() {
            let index = crate::netdev::index(&iface)?;
            sink.declare_interface(index, &iface)?;
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = &mut sleep_until_deadline => break,
                record = capture.next() => {
                    let Some(record) = record else { break };
                    if sink.write(&record)? == SinkStatus::Done {
                        break;
                    }
                }
            }
        }
        sink.finish()?;
    }
    let counts = capture.counts();
    drop(capture);
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "{}", accounting(&counts));
    Ok(())
}

/// The output's flow row for a kernel flow (IP flows only: the table is
/// about 5-tuples).
fn to_flow_entry(flow: &KernelFlow) -> Option<FlowEntry> {
    let family = match flow.ethertype {
        0x0800 => Family::Ipv4,
        0x86dd => Family::Ipv6,
        _ => return None,
    };
    Some(FlowEntry {
        family,
        proto: flow.protocol,
        src: flow.src,
        dst: flow.dst,
        sport: flow.sport,
        dport: flow.dport,
        packets: flow.packets,
        bytes: flow.bytes,
    })
}

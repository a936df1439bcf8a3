//! `netray packets`: ties the kernel capture to the output sinks; `-d`
//! prints the compiled filter ([`dump`]); `-r` is [`super::offline`].

use std::{
    io::Write as _,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    args::{DirectionArg, OutputMode, OutputSink, PacketsConfig, SinkStatus, accounting},
    capture::{
        BATCH_PAUSE, CaptureOptions, DRAIN_LIMIT, Directions, FlowEntry as KernelFlow,
        PacketCapture, StopSignal,
    },
    filter,
    flows::{Family, FlowEntry, FlowTracker, render_table, to_json},
};

/// How often the flow table is refreshed.
const FLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Rows of the flow table.
pub(crate) const FLOW_ROWS: usize = 20;

/// A filter libpcap refused, in tcpdump's words: libpcap's message alone
/// (tcpdump prints `tcpdump: MESSAGE`). The message already starts with
/// "can't parse filter expression:" when the text does not parse; a
/// semantic error ("illegal port number 99999 > 65535") stands alone.
pub(crate) fn filter_error(e: filter::FilterError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

/// `netray packets -d`: the filter compiled with the configured snaplen,
/// as `tcpdump -d` prints it; libpcap's error in tcpdump's words for a
/// filter it does not compile.
pub fn dump(config: &PacketsConfig) -> anyhow::Result<String> {
    let program = filter::Program::compile(config.filter.as_deref().unwrap_or(""), config.snaplen)
        .map_err(filter_error)?;
    Ok(program.dump())
}

/// Runs a capture until the count or duration is reached or `shutdown`
/// completes; prints the accounting to stderr.
pub async fn run(
    config: PacketsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let filter_text = config.filter.clone().unwrap_or_default();
    // libpcap's error verbatim, as tcpdump prints it.
    let program = filter::Program::compile(&filter_text, config.snaplen).map_err(filter_error)?;
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
        // The header now, so that a reader on a pipe starts at once.
        sink.flush()?;
        // Packets are written on a thread of their own, straight from the
        // ring into the output (see `write_packets`); this task only
        // decides when to stop.
        let stop = std::sync::Arc::new(StopSignal::new().context("creating the stop signal")?);
        let writer_stop = stop.clone();
        let mut writer = tokio::task::spawn_blocking(move || {
            let written =
                write_packets(&mut capture, &mut sink, &writer_stop).and_then(|()| sink.finish());
            (capture, written)
        });
        let (returned, written) = tokio::select! {
            joined = &mut writer => joined?,
            _ = &mut shutdown => {
                stop.signal();
                writer.await?
            }
            () = &mut sleep_until_deadline => {
                stop.signal();
                writer.await?
            }
        };
        written.context("writing the packets")?;
        capture = returned;
    }
    let counts = capture.counts();
    let malformed = capture.malformed();
    drop(capture);
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "{}", accounting(&counts));
    if malformed > 0 {
        let _ = writeln!(
            stderr,
            "warning: {malformed} ring-buffer records could not be parsed and were skipped"
        );
    }
    Ok(())
}

/// Moves packets from the ring to `sink` until `stop` is signalled (then
/// one last drain), the sink is done (`-c`, closed pipe), or an error.
///
/// After each batch it flushes the output and pauses [`BATCH_PAUSE`]
/// before waiting for more: the kernel wakes the reader only for the first
/// record after it caught up, so the pause turns a wakeup per packet at
/// moderate rates into one per batch.
fn write_packets(
    capture: &mut PacketCapture,
    sink: &mut OutputSink,
    stop: &StopSignal,
) -> std::io::Result<()> {
    // Once stopping, drain what the ring holds (a full 8 MiB ring is
    // under 11 full drains of the smallest records), not what keeps coming.
    const FINAL_DRAINS: usize = 16;
    let mut final_drains = 0;
    loop {
        let stopping = stop.is_signalled();
        let mut result = Ok(());
        let (handed, flow) = capture.drain(|record| match sink.write(record) {
            Ok(SinkStatus::Continue) => ControlFlow::Continue(()),
            Ok(SinkStatus::Done) => ControlFlow::Break(()),
            Err(error) => {
                result = Err(error);
                ControlFlow::Break(())
            }
        });
        result?;
        if flow.is_break() || sink.flush()? == SinkStatus::Done {
            return Ok(());
        }
        let behind = handed == DRAIN_LIMIT;
        if stopping {
            final_drains += 1;
            if behind && final_drains < FINAL_DRAINS {
                continue;
            }
            return Ok(());
        }
        if behind {
            continue;
        }
        if handed > 0 {
            std::thread::sleep(BATCH_PAUSE);
        } else {
            // Empty: sleep until the kernel wakes us or we are stopped
            // (the next pass sees which).
            capture.wait(stop)?;
        }
    }
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

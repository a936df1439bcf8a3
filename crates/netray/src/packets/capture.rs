//! The kernel side of `netray packets`, from userspace: loads the
//! `netray-packets` object, writes the compiled filter and the settings into
//! its maps, attaches XDP (ingress) and TC egress (tcx) to the interfaces,
//! and hands over the captured packets as [`PacketRecord`]s, or, in flow
//! mode, the kernel's per-flow totals.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use netray::packets::{capture::{CaptureOptions, PacketCapture}, filter::Program};
//! let filter = Program::compile("udp port 53")?;
//! let mut capture = PacketCapture::attach(&["eth0".into()], &filter, CaptureOptions::default())?;
//! while let Some(packet) = capture.next().await {
//!     println!("{} {:?} {} bytes", packet.iface, packet.direction, packet.wire_len);
//! }
//! println!("{:?}", capture.counts());
//! # Ok(()) }
//! ```
//!
//! Records go through a ring buffer: one variable-length record per packet
//! (`bpf_ringbuf_output` of a 24-byte header and the captured bytes, built
//! in per-CPU map memory), so a 64-byte packet costs 88 bytes of ring, not
//! the maximum snaplen. `bpf_ringbuf_reserve` needs a constant size, and the
//! perf-buffer route (`bpf_xdp_output` with `caplen << 32`) needs per-CPU
//! buffers and aya's perf reader; the ring buffer keeps the order across
//! CPUs and is what the in-band capture already uses.
//!
//! Dropping the [`PacketCapture`] detaches everything (bpf_links owned by
//! the loaded object), and so does the process dying, however it dies.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use tokio::{
    io::unix::AsyncFd,
    sync::mpsc::{Receiver, Sender, channel},
    task::JoinHandle,
};

use super::{CaptureCounts, Direction, PacketRecord, filter};

/// Largest snaplen the kernel copies (its per-CPU record buffer).
pub const MAX_SNAPLEN: u32 = 16384;

const XDP_PROGRAM: &str = "packets_xdp";
const TC_PROGRAM: &str = "packets_tc";
/// Records buffered between the ring-buffer reader and the consumer. When
/// the consumer is slower, the reader stops draining, the ring fills and
/// the kernel counts the packets it cannot queue as lost.
const CHANNEL_CAPACITY: usize = 4096;

/// Which directions to capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Directions {
    /// Ingress only (XDP).
    In,
    /// Egress only (TC).
    Out,
    /// Both.
    #[default]
    Both,
}

/// Capture settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Bytes to capture per packet, from the Ethernet header; clamped to
    /// [`MAX_SNAPLEN`].
    pub snaplen: u32,
    /// Flow mode: the kernel sums packets and bytes per flow and sends no
    /// per-packet records (read them with [`PacketCapture::flows`]).
    pub flows: bool,
    /// Directions to capture: only the programs needed are attached.
    pub direction: Directions,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            snaplen: MAX_SNAPLEN,
            flows: false,
            direction: Directions::Both,
        }
    }
}

/// The kernel's settings map value (mirrors `netray-ebpf/src/packets.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Config {
    snaplen: u32,
    flows: u32,
}
// SAFETY: plain repr(C) data without padding.
unsafe impl aya::Pod for Config {}

/// Header of a ring-buffer record (mirrors the kernel's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RecordHeader {
    timestamp_ns: u64,
    ifindex: u32,
    wire_len: u32,
    cap_len: u32,
    direction: u32,
}

/// Flow-table key (mirrors the kernel's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RawFlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    ethertype: u16,
    proto: u8,
    family: u8,
}
// SAFETY: plain repr(C) data without padding (40 bytes).
unsafe impl aya::Pod for RawFlowKey {}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RawFlowValue {
    packets: u64,
    bytes: u64,
}
// SAFETY: plain repr(C) data without padding.
unsafe impl aya::Pod for RawFlowValue {}

/// One flow's totals from the kernel's flow table (flow mode), summed over
/// CPUs. Counts both directions' packets of the same 5-tuple separately
/// (the reply is another flow: source and destination swapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowEntry {
    /// EtherType (after VLAN tags): 0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP...
    pub ethertype: u16,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6...); 0 for non-IP.
    pub protocol: u8,
    /// Source address (IPv4 for IPv4 and ARP's sender; 0.0.0.0 for other
    /// non-IP traffic).
    pub src: IpAddr,
    /// Destination address (ARP: the target).
    pub dst: IpAddr,
    /// Source port (TCP/UDP/SCTP, else 0).
    pub sport: u16,
    /// Destination port (TCP/UDP/SCTP, else 0).
    pub dport: u16,
    /// Packets matched.
    pub packets: u64,
    /// Bytes on the wire (Ethernet frames as the hook saw them).
    pub bytes: u64,
}

/// A running capture. Dropping it detaches the programs.
pub struct PacketCapture {
    /// Owns the programs and their links.
    _ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    flows: PerCpuHashMap<MapData, RawFlowKey, RawFlowValue>,
    records: Receiver<PacketRecord>,
    reader: Option<JoinHandle<()>>,
    interfaces: Vec<String>,
}

impl std::fmt::Debug for PacketCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketCapture")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl PacketCapture {
    /// Loads the capture object with `filter` and `options` and attaches it
    /// to each of `interfaces` (names in the calling thread's network
    /// namespace; duplicates are attached once): XDP for ingress (driver
    /// mode, falling back to generic), TC egress through tcx.
    ///
    /// Must be called inside a tokio runtime (a task reads the ring
    /// buffer). Fails, with nothing left attached, when an interface does
    /// not exist or another XDP program holds it.
    pub fn attach(
        interfaces: &[String],
        filter: &filter::Program,
        options: CaptureOptions,
    ) -> anyhow::Result<PacketCapture> {
        let mut unique: Vec<String> = Vec::new();
        for iface in interfaces {
            if !unique.contains(iface) {
                unique.push(iface.clone());
            }
        }
        ensure!(!unique.is_empty(), "no interface to capture on");
        let runtime = tokio::runtime::Handle::try_current()
            .context("PacketCapture::attach must be called inside a tokio runtime")?;
        let mut names = StdHashMap::new();
        for iface in &unique {
            names.insert(crate::netdev::index(iface)?, iface.clone());
        }
        crate::loader::raise_memlock_limit();

        let mut ebpf =
            Ebpf::load(crate::objects::PACKETS).context("loading the packet capture object")?;
        // Settings and filter before any program runs.
        let mut config: Array<MapData, Config> =
            crate::loader::take_map(&mut ebpf, "PACKETS_CONFIG")?;
        config
            .set(
                0,
                Config {
                    snaplen: options.snaplen.min(MAX_SNAPLEN),
                    flows: u32::from(options.flows),
                },
                0,
            )
            .context("writing the capture settings")?;
        let mut program: Array<MapData, filter::RawProgram> =
            crate::loader::take_map(&mut ebpf, "PACKETS_FILTER")?;
        program
            .set(0, filter.to_raw(), 0)
            .context("writing the filter program")?;

        if options.direction != Directions::Out {
            let xdp: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing"))?
                .try_into()
                .context(XDP_PROGRAM)?;
            xdp.load()
                .with_context(|| format!("loading {XDP_PROGRAM} (verifier)"))?;
            for iface in &unique {
                crate::loader::attach_xdp(xdp, iface)?;
            }
        }
        if options.direction != Directions::In {
            let tc: &mut SchedClassifier = ebpf
                .program_mut(TC_PROGRAM)
                .ok_or_else(|| anyhow!("program {TC_PROGRAM} missing"))?
                .try_into()
                .context(TC_PROGRAM)?;
            tc.load()
                .with_context(|| format!("loading {TC_PROGRAM} (verifier)"))?;
            for iface in &unique {
                crate::loader::attach_tc_egress(tc, iface)?;
            }
        }

        let stats: PerCpuArray<MapData, u64> = crate::loader::take_map(&mut ebpf, "PACKETS_STATS")?;
        let flows = crate::loader::take_map(&mut ebpf, "PACKETS_FLOWS")?;
        let ring: RingBuf<MapData> = crate::loader::take_map(&mut ebpf, "PACKETS_EVENTS")?;
        let ring = crate::loader::async_ring_buffer(ring, &runtime)?;
        let (sender, records) = channel(CHANNEL_CAPACITY);
        let reader = runtime.spawn(read_records(ring, sender, names, clock_offset()));
        Ok(PacketCapture {
            _ebpf: ebpf,
            stats,
            flows,
            records,
            reader: Some(reader),
            interfaces: unique,
        })
    }

    /// The next captured packet, in ring-buffer order (`None` once the
    /// reader stopped, which only happens on a ring-buffer error). Never
    /// yields anything in flow mode.
    pub async fn next(&mut self) -> Option<PacketRecord> {
        self.records.recv().await
    }

    /// The receiver of captured packets, for `select!` loops and the like.
    pub fn records(&mut self) -> &mut Receiver<PacketRecord> {
        &mut self.records
    }

    /// The kernel's counters, summed over CPUs. `delivered` counts records
    /// queued to userspace (flow mode: packets added to the flow table);
    /// `lost`, matched packets the ring (or the full flow table) could not
    /// take.
    pub fn counts(&self) -> CaptureCounts {
        let read = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
                .unwrap_or(0)
        };
        CaptureCounts {
            seen: read(0),
            matched: read(1),
            delivered: read(2),
            lost: read(3),
        }
    }

    /// Flow mode: every flow's totals so far, summed over CPUs, largest
    /// byte count first. Entries that vanish while iterating are skipped.
    pub fn flows(&self) -> Vec<FlowEntry> {
        let mut out: Vec<FlowEntry> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .map(|(key, values)| {
                let (packets, bytes) = values.iter().fold((0u64, 0u64), |(p, b), v| {
                    (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
                });
                flow_entry(&key, packets, bytes)
            })
            .collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.packets.cmp(&a.packets)));
        out
    }

    /// The interfaces the capture is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Kernel IDs of the attached programs (for `bpftool prog show id`):
    /// once the capture is dropped, they no longer exist.
    pub fn program_ids(&self) -> Vec<u32> {
        self._ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.id())
            .collect()
    }
}

impl Drop for PacketCapture {
    fn drop(&mut self) {
        // The programs detach when `_ebpf` drops right after this.
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

fn flow_entry(key: &RawFlowKey, packets: u64, bytes: u64) -> FlowEntry {
    let addr = |bytes: [u8; 16]| -> IpAddr {
        if key.family == 6 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    };
    FlowEntry {
        ethertype: key.ethertype,
        protocol: key.proto,
        src: addr(key.src),
        dst: addr(key.dst),
        sport: key.sport,
        dport: key.dport,
        packets,
        bytes,
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, taken once: kernel
/// timestamps (`bpf_ktime_get_ns`, monotonic) plus it give wall time.
fn clock_offset() -> i128 {
    let now = |clock| {
        // SAFETY: timespec is plain data; clock_gettime fills it.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer; these clocks always exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// Wall time of a kernel monotonic timestamp.
fn wall_time(monotonic_ns: u64, offset: i128) -> SystemTime {
    let ns = (i128::from(monotonic_ns) + offset).max(0);
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// A packet from a ring-buffer record, if it is well-formed.
fn parse_record(
    bytes: &[u8],
    names: &StdHashMap<u32, String>,
    offset: i128,
) -> Option<PacketRecord> {
    let header_len = size_of::<RecordHeader>();
    if bytes.len() < header_len {
        return None;
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RecordHeader>()) };
    let data = bytes.get(header_len..header_len + header.cap_len as usize)?;
    Some(PacketRecord {
        time: wall_time(header.timestamp_ns, offset),
        ifindex: header.ifindex,
        iface: names
            .get(&header.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{}", header.ifindex)),
        direction: if header.direction == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        wire_len: header.wire_len,
        data: data.to_vec(),
    })
}

async fn read_records(
    mut ring: AsyncFd<RingBuf<MapData>>,
    sender: Sender<PacketRecord>,
    names: StdHashMap<u32, String>,
    offset: i128,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!("packet capture: polling the ring buffer failed: {error}");
                return;
            }
        };
        // Collect first: the ring item borrows the guard, and sending may wait.
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            match parse_record(&item, &names, offset) {
                Some(record) => batch.push(record),
                None => tracing::warn!(
                    "packet capture: skipping a ring-buffer record of {} bytes",
                    item.len()
                ),
            }
            if batch.len() >= CHANNEL_CAPACITY {
                break;
            }
        }
        let drained = batch.len() < CHANNEL_CAPACITY;
        if drained {
            guard.clear_ready();
        }
        drop(guard);
        for record in batch {
            if sender.send(record).await.is_err() {
                return; // the capture was dropped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<RecordHeader>(), 24);
        assert_eq!(size_of::<RawFlowKey>(), 40);
        assert_eq!(size_of::<RawFlowValue>(), 16);
        assert_eq!(size_of::<Config>(), 8);
    }

    #[test]
    fn records_parse_and_short_ones_are_skipped() {
        let names = StdHashMap::from([(3u32, "eth0".to_string())]);
        assert!(parse_record(&[0u8; 23], &names, 0).is_none());
        let mut record = Vec::new();
        record.extend_from_slice(&1_000_000_123u64.to_ne_bytes());
        record.extend_from_slice(&3u32.to_ne_bytes());
        record.extend_from_slice(&60u32.to_ne_bytes());
        record.extend_from_slice(&4u32.to_ne_bytes());
        record.extend_from_slice(&1u32.to_ne_bytes());
        assert!(parse_record(&record, &names, 0).is_none(), "data missing");
        record.extend_from_slice(&[1, 2, 3, 4]);
        let packet = parse_record(&record, &names, 5_000_000_000).unwrap();
        assert_eq!(packet.iface, "eth0");
        assert_eq!(packet.direction, Direction::Egress);
        assert_eq!(packet.wire_len, 60);
        assert_eq!(packet.data, [1, 2, 3, 4]);
        assert_eq!(
            packet.time,
            UNIX_EPOCH + Duration::from_nanos(6_000_000_123)
        );
    }
}

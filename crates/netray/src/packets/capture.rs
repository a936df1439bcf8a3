//! The kernel side of `netray packets`, from userspace: loads the
//! `netray-packets` object, writes the settings into its maps, loads
//! libpcap's filter translated to eBPF ([`super::ebpf_filter`]) once per
//! hook and links the programs through their program arrays (attached
//! program → filter → capture program), attaches XDP (ingress) and TC
//! egress (tcx) to the interfaces,
//! and hands over the captured packets as [`PacketRecord`]s, or, in flow
//! mode, the kernel's per-flow totals.
//!
//! Ingress capture has two program variants, loaded best first (see
//! `XDP_CAPTURE_PROGRAMS`): one copying bytes with `bpf_xdp_load_bytes` (5.18+),
//! one with direct packet access for older kernels. Before 6.6 (no tcx) TC
//! egress is attached through a clsact qdisc and a netlink filter.
//!
//! Two ways to read packets: [`PacketCapture::drain`] with
//! [`PacketCapture::wait`] on a thread of its own (what `netray packets`
//! does: records are borrowed from the ring and written out without a copy
//! or an allocation), or the async [`PacketCapture::next`] (owned records,
//! for tests and embedding).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use netray::packets::{capture::{CaptureOptions, PacketCapture}, filter::Program};
//! let filter = Program::compile("udp port 53", 262144)?;
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
//! Wakeups: the kernel wakes a waiting reader only for the first record
//! after the reader caught up (the ring buffer's default). `netray packets`
//! then pauses [`BATCH_PAUSE`] after each batch before it waits again, so
//! at any rate a wakeup, a `poll` and a flush are paid per batch of packets,
//! not per packet, at the cost of at most that much output latency.
//!
//! Dropping the [`PacketCapture`] detaches everything (bpf_links owned by
//! the loaded object), and so does the process dying, however it dies.

use std::{
    borrow::Cow,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::ControlFlow,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, anyhow, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{ProgramError, ProgramInfo, SchedClassifier, Xdp},
};
use tokio::io::{Interest, unix::AsyncFd};

use netray_common::packets::{
    self, CaptureConfig as Config, DIRECTION_INGRESS, FlowKey as RawFlowKey,
    FlowValue as RawFlowValue, RecordHeader, stat,
};

use super::{
    CaptureCounts, Direction, PacketRecord,
    ebpf_filter::{self, FilterMaps, Hook},
    filter,
};

/// Largest snaplen the kernel copies (its per-CPU record buffer).
pub const MAX_SNAPLEN: u32 = packets::MAX_SNAPLEN as u32;

/// The attached XDP program (counts, tail-calls the filter).
const XDP_PROGRAM: &str = "packets_xdp";
/// The XDP capture program variants, best first: `packets_xdp_capture`
/// copies packet bytes with `bpf_xdp_load_bytes` (5.18+);
/// `packets_xdp_capture_linear` with direct packet access, for older
/// kernels (slower per captured byte, ~60 % more instructions for the
/// verifier).
const XDP_CAPTURE_PROGRAMS: [&str; 2] = ["packets_xdp_capture", "packets_xdp_capture_linear"];
/// The attached TC egress program.
const TC_PROGRAM: &str = "packets_tc";
/// The TC capture program.
const TC_CAPTURE_PROGRAM: &str = "packets_tc_capture";
/// How long a reader that has just drained a batch lets the next one
/// build up before it waits again (see the module docs). The 8 MiB ring
/// holds ~87 k minimum-size packets, i.e. this pause at up to ~8 M packets/s.
pub const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Records [`PacketCapture::drain`] hands over per call at most, so that a
/// reader that cannot keep up still returns to check whether to stop.
pub const DRAIN_LIMIT: usize = 8192;

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
    ring: RingBuf<MapData>,
    /// The ring's fd registered with tokio, made on first use of
    /// [`Self::next`]. Declared before nothing it borrows from: it holds
    /// only the fd number, and `ring` (which owns the fd) outlives it
    /// because `Drop` takes it out first.
    readiness: Option<AsyncFd<RawFd>>,
    /// (ifindex, name) of each interface attached.
    names: Vec<(u32, String)>,
    clock_offset: i128,
    malformed: u64,
    interfaces: Vec<String>,
    /// The XDP capture variant loaded, if ingress is captured.
    xdp_program: Option<&'static str>,
    /// The translated filters (also held by the program arrays).
    _filters: Vec<OwnedFd>,
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
    /// Fails, with nothing left attached, when an interface does not exist
    /// or another XDP program holds it.
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
        let mut names = Vec::new();
        for iface in &unique {
            names.push((crate::netdev::index(iface)?, iface.clone()));
        }
        crate::loader::raise_memlock_limit();

        let Loaded {
            mut ebpf,
            filters,
            xdp_program,
        } = Loaded::new(filter, options)?;
        if options.direction != Directions::Out {
            let xdp: &mut Xdp = program_mut(&mut ebpf, XDP_PROGRAM)?;
            for iface in &unique {
                crate::loader::attach_xdp(xdp, iface)?;
            }
        }
        if options.direction != Directions::In {
            let tc: &mut SchedClassifier = program_mut(&mut ebpf, TC_PROGRAM)?;
            for iface in &unique {
                crate::loader::attach_tc_egress(tc, iface)?;
            }
        }

        let stats: PerCpuArray<MapData, u64> = crate::loader::take_map(&mut ebpf, "PACKETS_STATS")?;
        let flows = crate::loader::take_map(&mut ebpf, "PACKETS_FLOWS")?;
        let ring: RingBuf<MapData> = crate::loader::take_map(&mut ebpf, "PACKETS_EVENTS")?;
        Ok(PacketCapture {
            _ebpf: ebpf,
            stats,
            flows,
            ring,
            readiness: None,
            names,
            clock_offset: clock_offset(),
            malformed: 0,
            interfaces: unique,
            xdp_program,
            _filters: filters,
        })
    }

    /// Hands each record waiting in the ring to `each`, borrowed (valid for
    /// the call only), in ring order, without blocking. Stops early when
    /// `each` breaks (the record it was given counts as consumed) and after
    /// a few thousand records, so that a caller that cannot keep up gets
    /// control back. Returns the records handed over and how it ended.
    pub fn drain(
        &mut self,
        mut each: impl FnMut(&PacketRecord<'_>) -> ControlFlow<()>,
    ) -> (usize, ControlFlow<()>) {
        let mut handed = 0;
        while handed < DRAIN_LIMIT {
            let Some(item) = self.ring.next() else { break };
            match parse_record(&item, &self.names, self.clock_offset) {
                Some(record) => {
                    handed += 1;
                    if each(&record).is_break() {
                        return (handed, ControlFlow::Break(()));
                    }
                }
                None => note_malformed(&mut self.malformed, item.len()),
            }
        }
        (handed, ControlFlow::Continue(()))
    }

    /// Blocks until the ring has records or `stop` is signalled; returns
    /// whether `stop` was. For a reader thread of its own (see
    /// [`Self::drain`]).
    pub fn wait(&self, stop: &StopSignal) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd: self.ring.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready >= 0 {
                return Ok(fds[1].revents != 0);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// The next captured packet, in ring-buffer order (`None` only if the
    /// ring's fd cannot be polled). Never yields anything in flow mode.
    /// Must be called inside a tokio runtime.
    pub async fn next(&mut self) -> Option<PacketRecord<'static>> {
        loop {
            if let Some(record) = self.next_ready() {
                return Some(record);
            }
            if self.readiness.is_none() {
                let fd = self.ring.as_fd().as_raw_fd();
                // SAFETY: `ring` owns the fd and keeps it open and unchanged
                // for as long as `readiness` exists (dropped first in Drop).
                match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                    Ok(readiness) => self.readiness = Some(readiness),
                    Err(error) => {
                        tracing::error!("packet capture: cannot poll the ring buffer: {error}");
                        return None;
                    }
                }
            }
            let readiness = self.readiness.as_ref()?;
            let mut guard = match readiness.readable().await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::error!("packet capture: polling the ring buffer failed: {error}");
                    return None;
                }
            };
            // Edge-triggered: forget this readiness, then look again (a
            // record committed in between re-arms it).
            guard.clear_ready();
        }
    }

    /// The next record already in the ring, owned.
    fn next_ready(&mut self) -> Option<PacketRecord<'static>> {
        let mut next = None;
        // The count and the break are in `next`: one record, or none waiting.
        let _ = self.drain(|record| {
            next = Some(record.clone().into_owned());
            ControlFlow::Break(())
        });
        next
    }

    /// Ring-buffer records that could not be parsed (never expected: the
    /// kernel side writes them; counted so that a mismatch is not silent).
    pub fn malformed(&self) -> u64 {
        self.malformed
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
            seen: read(stat::SEEN),
            matched: read(stat::MATCHED),
            delivered: read(stat::DELIVERED),
            // Packets no filter saw (an empty program-array slot, which
            // cannot happen once attached): lost all the same.
            lost: read(stat::LOST) + read(stat::UNFILTERED),
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

    /// Which XDP program variant captures ingress (`packets_xdp`, or
    /// `packets_xdp_linear` where the kernel refused the first); `None`
    /// when only egress is captured.
    pub fn xdp_program(&self) -> Option<&'static str> {
        self.xdp_program
    }

    /// Kernel IDs of the loaded programs (for `bpftool prog show id`):
    /// per captured direction, the attached program, its filter and its
    /// capture program. Once the capture is dropped, they no longer exist.
    pub fn program_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            ._ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.id())
            .collect();
        ids.extend(
            self._filters
                .iter()
                .filter_map(|fd| ebpf_filter::program_id(fd.as_fd()).ok()),
        );
        ids
    }
}

impl Drop for PacketCapture {
    fn drop(&mut self) {
        // Deregister the fd from tokio while `ring` still keeps it open.
        // The programs detach when `_ebpf` drops right after this.
        self.readiness.take();
    }
}

/// The capture object with its programs loaded and linked (attached
/// program → filter → capture program), for the directions asked, but
/// attached nowhere.
struct Loaded {
    ebpf: Ebpf,
    /// The translated filters, XDP first.
    filters: Vec<OwnedFd>,
    /// The XDP capture variant loaded, if ingress is captured.
    xdp_program: Option<&'static str>,
}

impl Loaded {
    fn new(filter: &filter::Program, options: CaptureOptions) -> anyhow::Result<Loaded> {
        crate::loader::raise_memlock_limit();
        let mut ebpf =
            Ebpf::load(crate::objects::PACKETS).context("loading the packet capture object")?;
        // Settings before any program runs.
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

        // Each hook: the capture program into its array, the filter
        // (tail-calling it) into the attached program's array, then the
        // attached program.
        let mut filters = Vec::new();
        let mut xdp_program = None;
        if options.direction != Directions::Out {
            let name = load_xdp(&mut ebpf)?;
            link_capture(&mut ebpf, name, XDP_CAPTURE_MAP)?;
            filters.push(load_filter(&ebpf, filter, Hook::Xdp)?);
            let xdp: &mut Xdp = program_mut(&mut ebpf, XDP_PROGRAM)?;
            xdp.load()
                .with_context(|| format!("loading {XDP_PROGRAM} (verifier)"))?;
            xdp_program = Some(name);
        }
        if options.direction != Directions::In {
            let capture: &mut SchedClassifier = program_mut(&mut ebpf, TC_CAPTURE_PROGRAM)?;
            capture
                .load()
                .with_context(|| format!("loading {TC_CAPTURE_PROGRAM} (verifier)"))?;
            log_loaded(TC_CAPTURE_PROGRAM, capture.info());
            link_capture(&mut ebpf, TC_CAPTURE_PROGRAM, TC_CAPTURE_MAP)?;
            filters.push(load_filter(&ebpf, filter, Hook::Tc)?);
            let tc: &mut SchedClassifier = program_mut(&mut ebpf, TC_PROGRAM)?;
            tc.load()
                .with_context(|| format!("loading {TC_PROGRAM} (verifier)"))?;
        }
        Ok(Loaded {
            ebpf,
            filters,
            xdp_program,
        })
    }
}

/// The capture programs loaded with a filter but attached nowhere, to run
/// frames through with `BPF_PROG_TEST_RUN`: the real programs, the same
/// path as a capture (attached program → filter → capture program → ring
/// buffer), without a network. For tests and benchmarks.
pub struct TestCapture {
    loaded: Loaded,
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for TestCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCapture").finish_non_exhaustive()
    }
}

impl TestCapture {
    /// Loads both directions' programs with `filter`, capturing whole
    /// frames (snaplen [`MAX_SNAPLEN`]).
    pub fn load(filter: &filter::Program) -> anyhow::Result<TestCapture> {
        let mut loaded = Loaded::new(filter, CaptureOptions::default())?;
        let ring = crate::loader::take_map(&mut loaded.ebpf, "PACKETS_EVENTS")?;
        Ok(TestCapture { loaded, ring })
    }

    /// Replaces the filter of both directions (only the filter programs are
    /// loaded again).
    pub fn set_filter(&mut self, filter: &filter::Program) -> anyhow::Result<()> {
        let xdp = load_filter(&self.loaded.ebpf, filter, Hook::Xdp)?;
        let tc = load_filter(&self.loaded.ebpf, filter, Hook::Tc)?;
        self.loaded.filters = vec![xdp, tc];
        Ok(())
    }

    /// Runs each frame (at least 14 bytes) once through `hook`'s attached
    /// program and tells, per frame, whether the capture program sent it
    /// to the ring buffer, i.e. whether the filter accepted it; `None` for
    /// a frame the kernel refuses to build a test packet from (`EINVAL`:
    /// for TC, an IPv4 or IPv6 frame shorter than its fixed IP header).
    pub fn run(&mut self, hook: Hook, frames: &[&[u8]]) -> anyhow::Result<Vec<Option<bool>>> {
        let name = match hook {
            Hook::Xdp => XDP_PROGRAM,
            Hook::Tc => TC_PROGRAM,
        };
        let fd = self
            .loaded
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .fd()?
            .as_fd();
        while self.ring.next().is_some() {}
        let mut kept = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            match ebpf_filter::test_run(fd, frame) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    kept.push(None);
                    continue;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("BPF_PROG_TEST_RUN of {name} on frame {i}")));
                }
            }
            // One record at most per run, of this frame.
            let mut sent = None;
            while let Some(item) = self.ring.next() {
                ensure!(sent.is_none(), "frame {i}: more than one record");
                sent = Some(item.to_vec());
            }
            kept.push(Some(match sent {
                None => false,
                Some(record) => {
                    let header = size_of::<RecordHeader>();
                    ensure!(
                        record.get(header..) == Some(*frame),
                        "frame {i}: the record is not the frame"
                    );
                    true
                }
            }));
        }
        Ok(kept)
    }
}

/// The program array of the XDP capture program.
const XDP_CAPTURE_MAP: &str = "PACKETS_XDP_CAPTURE";
/// The program array of the TC capture program.
const TC_CAPTURE_MAP: &str = "PACKETS_TC_CAPTURE";

/// Loads the first XDP capture variant the kernel accepts (see [`XDP_CAPTURE_PROGRAMS`])
/// and returns its name. Tried rather than predicted from the kernel
/// version: a refusal costs the verifier little (it stops at the first
/// unknown helper), and it also covers verifiers that accept the helper but
/// not the program. The error names every variant tried and its error.
fn load_xdp(ebpf: &mut Ebpf) -> anyhow::Result<&'static str> {
    let mut refused: Vec<String> = Vec::new();
    let mut last_error = None;
    for name in XDP_CAPTURE_PROGRAMS {
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()
            .context(name)?;
        match xdp.load() {
            Ok(()) => {
                if !refused.is_empty() {
                    tracing::debug!("using {name}: {}", refused.join("; "));
                }
                log_loaded(name, xdp.info());
                return Ok(name);
            }
            Err(error) => {
                tracing::debug!("loading {name}: {error}");
                // The kernel's verdict without the verifier's log: the
                // full log of the variant that was the last resort follows.
                let verdict = match &error {
                    ProgramError::LoadError { io_error, .. } => io_error.to_string(),
                    other => other.to_string(),
                };
                refused.push(format!("{name} refused ({verdict})"));
                last_error = Some((name, error));
            }
        }
    }
    let (name, error) = last_error.ok_or_else(|| anyhow!("no XDP program variant"))?;
    Err(anyhow::Error::new(error).context(format!(
        "loading {name} (verifier); no XDP program variant loads here: {}",
        refused.join(", ")
    )))
}

/// The program `name` of `ebpf`, as its kind.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()
        .context(name.to_string())
}

/// Puts the loaded capture program `capture` into the program array
/// `capture_map`, which the filter tail-calls.
fn link_capture(ebpf: &mut Ebpf, capture: &str, capture_map: &str) -> anyhow::Result<()> {
    let capture_fd = ebpf
        .program(capture)
        .ok_or_else(|| anyhow!("program {capture} missing"))?
        .fd()
        .with_context(|| format!("{capture} not loaded"))?
        .try_clone()
        .context("duplicating a program fd")?;
    let mut array: ProgramArray<&mut MapData> = ProgramArray::try_from(
        ebpf.map_mut(capture_map)
            .ok_or_else(|| anyhow!("map {capture_map} missing"))?,
    )?;
    array
        .set(0, &capture_fd, 0)
        .with_context(|| format!("putting {capture} into {capture_map}"))
}

/// Loads `filter` translated for `hook` (tail-calling the hook's capture
/// program array) and puts it into the array the hook's attached program
/// tail-calls, replacing the filter there.
fn load_filter(ebpf: &Ebpf, filter: &filter::Program, hook: Hook) -> anyhow::Result<OwnedFd> {
    let (capture_map, filter_map, name) = match hook {
        Hook::Xdp => (XDP_CAPTURE_MAP, "PACKETS_XDP_FILTER", "packets_xdp_flt"),
        Hook::Tc => (TC_CAPTURE_MAP, "PACKETS_TC_FILTER", "packets_tc_flt"),
    };
    let program_array = |name: &str| match ebpf.map(name) {
        Some(aya::maps::Map::ProgramArray(m)) => Ok(m.fd().as_fd()),
        _ => Err(anyhow!("program array {name} missing")),
    };
    let scratch = match ebpf.map("PACKETS_FILTER_SCRATCH") {
        Some(aya::maps::Map::PerCpuArray(m)) => m.fd().as_fd(),
        _ => return Err(anyhow!("map PACKETS_FILTER_SCRATCH missing")),
    };
    let insns = ebpf_filter::translate(
        filter.insns(),
        hook,
        FilterMaps {
            capture: program_array(capture_map)?,
            scratch,
        },
    )
    .with_context(|| format!("translating the filter {:?}", filter.text()))?;
    let fd = ebpf_filter::load(&insns, hook, name).with_context(|| {
        format!(
            "loading the filter {:?} ({} instructions) for {hook:?} (verifier)",
            filter.text(),
            insns.len()
        )
    })?;
    ebpf_filter::set_program(program_array(filter_map)?, 0, fd.as_fd())
        .with_context(|| format!("putting the filter into {filter_map}"))?;
    Ok(fd)
}

/// Logs how much the verifier walked (kernels 5.16+ tell).
fn log_loaded(name: &str, info: Result<ProgramInfo, ProgramError>) {
    let verified = info.ok().and_then(|info| info.verified_instruction_count());
    tracing::debug!(
        "loaded {name}: verified instructions {}",
        verified.map_or_else(|| "not reported".to_string(), |n| n.to_string())
    );
}

fn note_malformed(count: &mut u64, len: usize) {
    *count += 1;
    tracing::warn!("packet capture: skipping a malformed ring-buffer record of {len} bytes");
}

/// Wakes a reader blocked in [`PacketCapture::wait`] from another thread
/// (an eventfd): signalled once, it stays signalled.
#[derive(Debug)]
pub struct StopSignal(OwnedFd);

impl StopSignal {
    /// A new, unsignalled stop signal.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(StopSignal(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Signals the stop (idempotent).
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd. It
        // cannot fail short of the counter overflowing, which would take
        // 2^64 signals; the value only needs to be non-zero.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Whether [`Self::signal`] was called.
    pub fn is_signalled(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: a valid array of one pollfd; zero timeout.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
    }

    /// The eventfd, readable once signalled.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
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

/// Wall time (ns since the epoch) of a kernel monotonic timestamp.
fn wall_ns(monotonic_ns: u64, offset: i128) -> u64 {
    let ns = (i128::from(monotonic_ns) + offset).max(0);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A packet from a ring-buffer record, if it is well-formed, borrowing
/// the record's bytes and the interface name.
fn parse_record<'a>(
    bytes: &'a [u8],
    names: &'a [(u32, String)],
    offset: i128,
) -> Option<PacketRecord<'a>> {
    let header_len = size_of::<RecordHeader>();
    if bytes.len() < header_len {
        return None;
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RecordHeader>()) };
    let data = bytes.get(header_len..header_len + header.cap_len as usize)?;
    Some(PacketRecord {
        ts_ns: wall_ns(header.timestamp_ns, offset),
        ifindex: header.ifindex,
        // A scan: a handful of interfaces, and no hashing per packet.
        iface: names
            .iter()
            .find(|(index, _)| *index == header.ifindex)
            .map_or_else(
                || Cow::Owned(format!("if{}", header.ifindex)),
                |(_, name)| Cow::Borrowed(name.as_str()),
            ),
        direction: if header.direction == DIRECTION_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        wire_len: header.wire_len,
        data: Cow::Borrowed(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_short_ones_are_skipped() {
        let names = [(3u32, "eth0".to_string())];
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
        assert_eq!(*packet.data, [1, 2, 3, 4]);
        assert_eq!(packet.ts_ns, 6_000_000_123);
    }
}

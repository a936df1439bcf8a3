//! `netray packets -r FILE`: packets read from a pcap or pcapng file,
//! filtered by libpcap's interpreter as `tcpdump -r` filters them, and
//! written through the same outputs as a live capture. No eBPF, no root.
//!
//! The format is told by the file's first four bytes (pcap's magic numbers
//! in either byte order and resolution, pcapng's Section Header Block), not
//! by its name, so `-r -` reads either from stdin.
//!
//! What a file does not record is said, not made up: a pcap file has no
//! interface name (`-`) and no direction ([`Direction::Unknown`]); a pcapng
//! packet has the name of its interface's `if_name` option and the
//! direction of its `epb_flags` option when they are there. Timestamps are
//! the file's, at the resolution it declares (`if_tsresol`, `if_tsoffset`).
//! Only Ethernet captures (link-layer type 1) are read: the filter is
//! compiled for Ethernet.

use std::{
    borrow::Cow,
    fs::File,
    io::{self, Read, Write as _},
    ops::ControlFlow,
    path::Path,
};

use anyhow::Context as _;
use pcap_file::{
    DataLink, PcapError,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader,
        blocks::{
            enhanced_packet::EnhancedPacketOption,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            packet::PacketOption,
        },
    },
};

use super::{
    CaptureCounts, Direction, PacketRecord,
    args::{Action, DirectionArg, OutputMode, OutputSink, PacketsConfig, SinkStatus},
    ebpf_filter::{SKF_AD_IFINDEX, SKF_AD_OFF, SKF_AD_PKTTYPE, cbpf},
    filter::Program,
    flows::{FlowCounter, rates, render_table, to_json},
};

/// Interface name for packets whose file names none.
pub const UNNAMED_INTERFACE: &str = "-";

/// Ethernet's link-layer type.
const LINKTYPE_ETHERNET: u32 = 1;

/// `epb_flags` inbound / outbound (the low two bits).
const FLAGS_DIRECTION_MASK: u32 = 0b11;

/// Which of the two formats a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// libpcap's format: one link-layer type, no interfaces, no direction.
    Pcap,
    /// pcapng: interfaces with names, per-packet flags.
    PcapNg,
}

/// A file that cannot be read as an Ethernet capture.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("cannot read {name}: {source}")]
    Io {
        /// The file (`-` for stdin).
        name: String,
        /// Why.
        source: io::Error,
    },
    /// Not a capture file at all.
    #[error("{name} is not a pcap or pcapng file ({what})")]
    NotACapture {
        /// The file.
        name: String,
        /// What it starts with instead.
        what: String,
    },
    /// A link-layer type other than Ethernet.
    #[error(
        "{name}: link-layer type {linktype} ({link_name}) is not supported: netray reads \
         Ethernet captures (link-layer type 1) only"
    )]
    LinkType {
        /// The file.
        name: String,
        /// The link-layer type number.
        linktype: u32,
        /// Its name.
        link_name: String,
    },
    /// A malformed or truncated file, after `packets` good packets.
    #[error("{name}: malformed or truncated after {packets} packets: {reason}")]
    Malformed {
        /// The file.
        name: String,
        /// Packets read before the fault.
        packets: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One thing a file hands out, in file order.
#[derive(Debug)]
pub enum Item<'a> {
    /// An interface, before any packet of it: its id (the record's
    /// `ifindex`) and name.
    Interface {
        /// pcapng interface id (0 for a pcap file).
        ifindex: u32,
        /// Name, [`UNNAMED_INTERFACE`] when the file has none.
        name: &'a str,
    },
    /// A packet, borrowed from the reader's buffer.
    Packet(PacketRecord<'a>),
}

/// What a pcapng Interface Description Block says that packets need.
#[derive(Debug)]
struct Interface {
    name: String,
    linktype: u32,
    /// IDB snaplen (0: none), which bounds a Simple Packet Block's data.
    snaplen: u32,
    /// `if_tsresol`: timestamp units per second, `None` when too large to
    /// represent (then timestamps read as 0).
    units_per_sec: Option<u128>,
    /// `if_tsoffset`, seconds added to every timestamp.
    offset_secs: u64,
}

impl Interface {
    fn from_idb(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut name = None;
        // pcapng's default resolution: microseconds.
        let mut units_per_sec = Some(1_000_000);
        let mut offset_secs = 0;
        for option in &idb.options {
            match option {
                InterfaceDescriptionOption::IfName(n) if !n.is_empty() => {
                    name = Some(n.to_string());
                }
                InterfaceDescriptionOption::IfTsResol(r) => {
                    // High bit clear: 10^-r seconds; set: 2^-(r & 0x7f).
                    let exp = u32::from(r & 0x7f);
                    units_per_sec = if r & 0x80 == 0 {
                        10u128.checked_pow(exp)
                    } else {
                        1u128.checked_shl(exp)
                    };
                }
                InterfaceDescriptionOption::IfTsOffset(s) => offset_secs = *s,
                _ => {}
            }
        }
        Interface {
            name: name.unwrap_or_else(|| UNNAMED_INTERFACE.to_string()),
            linktype: u32::from(idb.linktype),
            snaplen: idb.snaplen,
            units_per_sec,
            offset_secs,
        }
    }

    /// A raw timestamp in this interface's units as ns since the epoch
    /// (saturating: a file cannot make the reader overflow).
    fn ts_ns(&self, raw: u64) -> u64 {
        let Some(units) = self.units_per_sec.filter(|&u| u > 0) else {
            return 0;
        };
        let ns =
            u128::from(raw) * 1_000_000_000 / units + u128::from(self.offset_secs) * 1_000_000_000;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// The reader of either format.
enum Reader {
    Pcap {
        reader: PcapReader<Box<dyn Read>>,
        /// Nanosecond magic (else microseconds).
        nanos: bool,
        /// The one interface was handed out.
        announced: bool,
    },
    PcapNg {
        reader: PcapNgReader<Box<dyn Read>>,
        /// The current section's interfaces, by id.
        interfaces: Vec<Interface>,
    },
}

/// An open capture file.
pub struct CaptureFile {
    /// The name in messages.
    name: String,
    reader: Reader,
    /// Packets handed out so far.
    packets: u64,
}

impl std::fmt::Debug for CaptureFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureFile")
            .field("name", &self.name)
            .field("format", &self.format())
            .field("packets", &self.packets)
            .finish()
    }
}

/// A display name for a link-layer type (`LINUX_SLL`, or the number).
fn link_name(linktype: u32) -> String {
    match DataLink::from(linktype) {
        DataLink::Unknown(n) => format!("unknown type {n}"),
        known => format!("{known:?}"),
    }
}

impl CaptureFile {
    /// Opens `path` (`-`: stdin) and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        if path.as_os_str() == "-" {
            return Self::from_reader(&name, Box::new(io::stdin()));
        }
        let file = File::open(path).map_err(|source| ReadError::Io {
            name: name.clone(),
            source,
        })?;
        Self::from_reader(&name, Box::new(file))
    }

    /// Reads the header of a capture from any reader; `name` is for
    /// messages.
    pub fn from_reader(name: &str, mut input: Box<dyn Read>) -> Result<Self, ReadError> {
        let name = name.to_string();
        let mut magic = [0u8; 4];
        let mut got = 0;
        // A pipe may deliver the first bytes in pieces.
        while got < magic.len() {
            match input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ReadError::Io { name, source }),
            }
        }
        if got < magic.len() {
            let what = if got == 0 {
                "it is empty".to_string()
            } else {
                format!("it has only {got} bytes")
            };
            return Err(ReadError::NotACapture { name, what });
        }
        // The magic goes back in front: the crate's readers parse the
        // whole header themselves.
        let chained: Box<dyn Read> = Box::new(io::Cursor::new(magic).chain(input));
        let header_error = |e: PcapError| ReadError::Malformed {
            name: name.clone(),
            packets: 0,
            reason: describe(e),
        };
        let reader = match u32::from_be_bytes(magic) {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                let reader = PcapReader::new(chained).map_err(header_error)?;
                let header = reader.header();
                let linktype = u32::from(header.datalink);
                if linktype != LINKTYPE_ETHERNET {
                    return Err(ReadError::LinkType {
                        name,
                        linktype,
                        link_name: link_name(linktype),
                    });
                }
                Reader::Pcap {
                    reader,
                    nanos: header.ts_resolution == pcap_file::TsResolution::NanoSecond,
                    announced: false,
                }
            }
            0x0a0d_0d0a => Reader::PcapNg {
                reader: PcapNgReader::new(chained).map_err(header_error)?,
                interfaces: Vec::new(),
            },
            _ => {
                return Err(ReadError::NotACapture {
                    what: format!(
                        "it starts with {:02x} {:02x} {:02x} {:02x}",
                        magic[0], magic[1], magic[2], magic[3]
                    ),
                    name,
                });
            }
        };
        Ok(CaptureFile {
            name,
            reader,
            packets: 0,
        })
    }

    /// The file's format.
    pub fn format(&self) -> FileFormat {
        match self.reader {
            Reader::Pcap { .. } => FileFormat::Pcap,
            Reader::PcapNg { .. } => FileFormat::PcapNg,
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Packets handed out so far.
    pub fn packets_read(&self) -> u64 {
        self.packets
    }

    /// Hands every interface and packet to `visit`, in file order, until
    /// the end of the file or until `visit` breaks.
    ///
    /// A callback rather than an iterator: the packets are borrowed from
    /// the reader's buffer, and handing them out this way costs no copy.
    pub fn read_all(
        &mut self,
        mut visit: impl FnMut(Item<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        let name = &self.name;
        let packets = &mut self.packets;
        let malformed = |packets: u64, reason: String| ReadError::Malformed {
            name: name.clone(),
            packets,
            reason,
        };
        match &mut self.reader {
            Reader::Pcap {
                reader,
                nanos,
                announced,
            } => {
                if !*announced {
                    *announced = true;
                    let item = Item::Interface {
                        ifindex: 0,
                        name: UNNAMED_INTERFACE,
                    };
                    if visit(item).is_break() {
                        return Ok(());
                    }
                }
                while let Some(next) = reader.next_raw_packet() {
                    let raw = next.map_err(|e| malformed(*packets, describe(e)))?;
                    let frac = if *nanos {
                        u64::from(raw.ts_frac)
                    } else {
                        u64::from(raw.ts_frac) * 1000
                    };
                    let record = PacketRecord {
                        ts_ns: u64::from(raw.ts_sec) * 1_000_000_000 + frac,
                        ifindex: 0,
                        iface: UNNAMED_INTERFACE.into(),
                        direction: Direction::Unknown,
                        wire_len: raw.orig_len,
                        data: raw.data,
                    };
                    *packets += 1;
                    if visit(Item::Packet(record)).is_break() {
                        return Ok(());
                    }
                }
            }
            Reader::PcapNg { reader, interfaces } => {
                while let Some(next) = reader.next_block() {
                    let block = next.map_err(|e| malformed(*packets, describe(e)))?;
                    let unknown_interface = |id: u32| {
                        malformed(
                            *packets,
                            format!(
                                "a packet of interface {id}, which the section does not describe"
                            ),
                        )
                    };
                    let (id, raw_ts, wire_len, data, flags) = match block {
                        Block::SectionHeader(_) => {
                            // Interface ids start again in each section.
                            interfaces.clear();
                            continue;
                        }
                        Block::InterfaceDescription(idb) => {
                            let interface = Interface::from_idb(&idb);
                            if interface.linktype != LINKTYPE_ETHERNET {
                                return Err(ReadError::LinkType {
                                    name: name.clone(),
                                    linktype: interface.linktype,
                                    link_name: link_name(interface.linktype),
                                });
                            }
                            interfaces.push(interface);
                            let ifindex = u32::try_from(interfaces.len() - 1).unwrap_or(u32::MAX);
                            let item = Item::Interface {
                                ifindex,
                                name: &interfaces[interfaces.len() - 1].name,
                            };
                            if visit(item).is_break() {
                                return Ok(());
                            }
                            continue;
                        }
                        Block::EnhancedPacket(epb) => {
                            let flags = epb.options.iter().find_map(|o| match o {
                                EnhancedPacketOption::Flags(f) => Some(*f),
                                _ => None,
                            });
                            // The crate stores the raw timestamp as if it
                            // were ns; the interface's resolution says what
                            // it is.
                            let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                            (epb.interface_id, raw, epb.original_len, epb.data, flags)
                        }
                        Block::Packet(pb) => {
                            let flags = pb.options.iter().find_map(|o| match o {
                                PacketOption::Flags(f) => Some(*f),
                                _ => None,
                            });
                            (
                                u32::from(pb.interface_id),
                                pb.timestamp,
                                pb.original_len,
                                pb.data,
                                flags,
                            )
                        }
                        Block::SimplePacket(spb) => {
                            // No interface id (the section's first), no
                            // timestamp, and the crate hands out the block's
                            // padding too: the captured length is the
                            // original length bounded by the snaplen.
                            let interface =
                                interfaces.first().ok_or_else(|| unknown_interface(0))?;
                            let mut cap = spb.original_len as usize;
                            if interface.snaplen > 0 {
                                cap = cap.min(interface.snaplen as usize);
                            }
                            let data = truncate(spb.data, cap);
                            // ts 0: the raw 0 maps to the offset alone.
                            (0, 0, spb.original_len, data, None)
                        }
                        // Name resolution, statistics, journal and unknown
                        // blocks carry no packets.
                        _ => continue,
                    };
                    let interface = interfaces
                        .get(id as usize)
                        .ok_or_else(|| unknown_interface(id))?;
                    let direction = match flags.map(|f| f & FLAGS_DIRECTION_MASK) {
                        Some(1) => Direction::Ingress,
                        Some(2) => Direction::Egress,
                        _ => Direction::Unknown,
                    };
                    let record = PacketRecord {
                        ts_ns: interface.ts_ns(raw_ts),
                        ifindex: id,
                        iface: interface.name.as_str().into(),
                        direction,
                        wire_len,
                        data,
                    };
                    *packets += 1;
                    if visit(Item::Packet(record)).is_break() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The first `len` bytes of `data` (all of them when shorter), without a
/// copy when borrowed.
fn truncate(data: Cow<'_, [u8]>, len: usize) -> Cow<'_, [u8]> {
    match data {
        Cow::Borrowed(d) => Cow::Borrowed(&d[..len.min(d.len())]),
        Cow::Owned(mut d) => {
            d.truncate(len);
            Cow::Owned(d)
        }
    }
}

/// A `pcap-file` error in words: its end-of-file error means a cut file.
fn describe(e: PcapError) -> String {
    match e {
        PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the file ends in the middle of a header or packet".to_string()
        }
        PcapError::IoError(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Runs `netray packets -r FILE`: filters the file's packets into the
/// configured output and prints the accounting to stderr. The
/// configuration's action must be [`Action::Read`].
pub fn run(config: &PacketsConfig) -> anyhow::Result<()> {
    let Action::Read { path, cut } = &config.action else {
        anyhow::bail!("internal error: offline::run without -r");
    };
    let program = Program::compile(config.filter.as_deref().unwrap_or(""), config.snaplen)
        .map_err(super::run::filter_error)?;
    if let Some(message) = savefile_refusal(&program) {
        anyhow::bail!("{message}");
    }
    let mut file = CaptureFile::open(path)?;
    if file.format() == FileFormat::Pcap && config.direction != DirectionArg::Both {
        anyhow::bail!(
            "{} is a pcap file, which records no direction: --direction needs a pcapng file \
             whose packets carry epb_flags",
            file.name()
        );
    }
    if let OutputMode::PcapngFile(out) = &config.output {
        refuse_overwrite(path, out)?;
    }
    let mut counts = CaptureCounts::default();
    let mut wanted = |rec: &PacketRecord<'_>| {
        counts.seen += 1;
        let keep = config.direction.includes(rec.direction)
            && program.matches_captured(&rec.data, rec.wire_len);
        if keep {
            counts.matched += 1;
        }
        keep
    };
    let read = if let OutputMode::Flows { json } = config.output {
        let mut flows = FlowCounter::default();
        // The file's time span, over every packet read: the interval the
        // rates are over.
        let mut span: Option<(u64, u64)> = None;
        let read = file.read_all(|item| {
            if let Item::Packet(rec) = item {
                span = Some(span.map_or((rec.ts_ns, rec.ts_ns), |(lo, hi)| {
                    (lo.min(rec.ts_ns), hi.max(rec.ts_ns))
                }));
                if wanted(&rec) {
                    flows.add(&rec.data, rec.wire_len);
                }
            }
            ControlFlow::Continue(())
        });
        // Every matched packet is counted, as the kernel's flow mode counts
        // each packet it accounts as delivered.
        counts.delivered = counts.matched;
        let interval = span.map_or(std::time::Duration::ZERO, |(lo, hi)| {
            std::time::Duration::from_nanos(hi - lo)
        });
        let rates = rates(&[], &flows.entries(), interval);
        let rows = super::run::FLOW_ROWS;
        let out = if json {
            to_json(&rates, interval, rows).to_string()
        } else {
            render_table(&rates, rows)
        };
        // A closed pipe is no error, as for packets.
        let mut stdout = io::stdout().lock();
        // The table ends in a newline already (the live mode's blank line
        // separates successive tables; there is one here).
        let printed = if json {
            writeln!(stdout, "{out}")
        } else {
            write!(stdout, "{out}")
        };
        match printed.and_then(|()| stdout.flush()) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                return Err(e).context("writing the flow table");
            }
            _ => {}
        }
        read
    } else {
        let mut sink = OutputSink::open(config)
            .context("opening the output")?
            .context("no packet output for this mode")?;
        let mut written = Ok(());
        let read = file.read_all(|item| {
            let status = match item {
                Item::Interface { ifindex, name } => sink
                    .declare_interface(ifindex, name)
                    .map(|()| SinkStatus::Continue),
                Item::Packet(mut rec) => {
                    if !wanted(&rec) {
                        return ControlFlow::Continue(());
                    }
                    if let Some(cut) = cut {
                        // After the filter, as a capture cuts after its
                        // filter; the wire length stays.
                        rec.data = truncate(rec.data, *cut as usize);
                    }
                    sink.write(&rec)
                }
            };
            match status {
                Ok(SinkStatus::Continue) => ControlFlow::Continue(()),
                Ok(SinkStatus::Done) => ControlFlow::Break(()),
                Err(e) => {
                    written = Err(e);
                    ControlFlow::Break(())
                }
            }
        });
        counts.delivered = sink.written();
        written
            .and_then(|()| sink.finish())
            .context("writing the packets")?;
        read
    };
    // The accounting also after a damaged file: what was read is output.
    eprintln!("{}", file_accounting(&counts, file.name()));
    read?;
    Ok(())
}

/// End-of-run accounting of `-r`, in the live capture's words where they
/// hold: "captured" is what was output, "received by filter" what the
/// filter matched; nothing is dropped; the last line counts the packets
/// read from the file (the live mode's "seen by the capture programs").
pub fn file_accounting(counts: &CaptureCounts, name: &str) -> String {
    format!(
        "{} packets captured\n{} packets received by filter\n0 packets dropped by kernel\n{} packets read from {name}\n",
        counts.delivered, counts.matched, counts.seen
    )
}

/// Classic BPF's `ld`/`ldh`/`ldb` with an absolute offset (class LD, mode
/// ABS, any size).
fn is_absolute_load(code: u16) -> bool {
    code & 0x07 == cbpf::LD && code & 0xe0 == cbpf::ABS
}

/// What libpcap says when `tcpdump -r` compiles a filter that needs a live
/// capture's metadata, if `program` needs it.
///
/// Our program comes from a dead handle, for which libpcap on Linux
/// compiles `inbound`, `outbound` and `ifindex` to ancillary loads (the
/// packet type, the interface index), as for a live capture. For a
/// savefile libpcap refuses them instead, with these words: a file has
/// no such metadata, and its interpreter would only reject every packet
/// silently. `--direction` selects by a pcapng file's direction flags.
pub fn savefile_refusal(program: &Program) -> Option<String> {
    program
        .insns()
        .iter()
        .find(|i| is_absolute_load(i.code) && i.k >= SKF_AD_OFF)
        .map(|i| match i.k - SKF_AD_OFF {
            SKF_AD_PKTTYPE => {
                "inbound/outbound not supported on Ethernet when reading savefiles".to_string()
            }
            SKF_AD_IFINDEX => {
                "ifindex not supported on Ethernet when reading savefiles".to_string()
            }
            other => format!(
                "the filter reads Linux packet metadata (ancillary offset {other}), which a file \
                 does not have"
            ),
        })
}

/// Refuses `-w` onto the file being read: creating the output would empty
/// the input before a packet is read.
fn refuse_overwrite(input: &Path, output: &Path) -> anyhow::Result<()> {
    if input.as_os_str() == "-" {
        return Ok(());
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        anyhow::ensure!(
            a != b,
            "-w {} is the file -r reads; write to another file",
            output.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;

    fn frame(n: u8, len: usize) -> Vec<u8> {
        let mut f = vec![n; len];
        f[12] = 0x08;
        f[13] = 0x00;
        f
    }

    fn pcap(datalink: DataLink, nanos: bool, frames: &[Vec<u8>]) -> Vec<u8> {
        let header = PcapHeader {
            datalink,
            ts_resolution: if nanos {
                pcap_file::TsResolution::NanoSecond
            } else {
                pcap_file::TsResolution::MicroSecond
            },
            ..Default::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (i, f) in frames.iter().enumerate() {
            let ts = std::time::Duration::new(1_700_000_000 + i as u64, 123_456_789);
            w.write_packet(&PcapPacket::new(ts, f.len() as u32 + 4, f))
                .unwrap();
        }
        w.into_writer()
    }

    /// What a file handed out, owned: interfaces as `Err((id, name))`.
    type Items = Vec<Result<PacketRecord<'static>, (u32, String)>>;

    /// Everything a file hands out, owned.
    fn read(bytes: Vec<u8>) -> Result<Items, ReadError> {
        let mut file = CaptureFile::from_reader("t", Box::new(io::Cursor::new(bytes)))?;
        let mut out = Vec::new();
        file.read_all(|item| {
            out.push(match item {
                Item::Interface { ifindex, name } => Err((ifindex, name.to_string())),
                Item::Packet(p) => Ok(p.into_owned()),
            });
            ControlFlow::Continue(())
        })?;
        assert_eq!(
            file.packets_read(),
            out.iter().filter(|i| i.is_ok()).count() as u64
        );
        Ok(out)
    }

    #[test]
    fn pcap_micro_and_nano() {
        for nanos in [false, true] {
            let items = read(pcap(
                DataLink::ETHERNET,
                nanos,
                &[frame(1, 60), frame(2, 70)],
            ))
            .unwrap();
            assert_eq!(items[0].as_ref().unwrap_err(), &(0, "-".to_string()));
            let p = items[2].as_ref().unwrap();
            let frac = if nanos { 123_456_789 } else { 123_456_000 };
            assert_eq!(p.ts_ns, 1_700_000_001_000_000_000 + frac);
            assert_eq!((p.data.len(), p.wire_len), (70, 74));
            assert_eq!(p.direction, Direction::Unknown);
            assert_eq!(p.iface, "-");
        }
    }

    #[test]
    fn pcap_other_linktype_is_named() {
        let e = read(pcap(DataLink::LINUX_SLL, false, &[])).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("link-layer type 113 (LINUX_SLL)"), "{text}");
        assert!(text.contains("Ethernet"), "{text}");
    }

    #[test]
    fn not_a_capture() {
        let e = read(Vec::new()).unwrap_err().to_string();
        assert!(e.contains("not a pcap or pcapng file (it is empty)"), "{e}");
        let e = read(b"GET / HTTP/1.1\r\n".to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("it starts with 47 45 54 20"), "{e}");
        let e = read(vec![0xd4, 0xc3]).unwrap_err().to_string();
        assert!(e.contains("only 2 bytes"), "{e}");
        // A pcap header cut short, then a packet cut short.
        let e = read(vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed or truncated after 0 packets"), "{e}");
        let mut cut = pcap(DataLink::ETHERNET, false, &[frame(1, 60), frame(2, 60)]);
        cut.truncate(cut.len() - 10);
        let e = read(cut).unwrap_err().to_string();
        assert!(
            e.contains("after 1 packets: the file ends in the middle"),
            "{e}"
        );
    }

    #[test]
    fn pcapng_interfaces_flags_resolution() {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfName(Cow::Borrowed("eth7"))],
        })
        .unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 64,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .unwrap();
        let f = frame(3, 61);
        for (iface, flags) in [(0, Some(1)), (1, Some(2)), (0, None)] {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: iface,
                // Raw units: µs for interface 0, ns for interface 1.
                timestamp: std::time::Duration::from_nanos(1_700_000_000_000_123),
                original_len: 61,
                data: Cow::Borrowed(&f),
                options: flags.map(EnhancedPacketOption::Flags).into_iter().collect(),
            })
            .unwrap();
        }
        // A simple packet block belongs to the first interface.
        w.write_pcapng_block(SimplePacketBlock {
            original_len: 61,
            data: Cow::Borrowed(&f),
        })
        .unwrap();
        let items = read(w.into_inner()).unwrap();
        assert_eq!(items[0].as_ref().unwrap_err(), &(0, "eth7".to_string()));
        assert_eq!(items[1].as_ref().unwrap_err(), &(1, "-".to_string()));
        let p: Vec<&PacketRecord<'_>> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        assert_eq!(p.len(), 4);
        assert_eq!(
            (p[0].iface.as_ref(), p[0].direction, p[0].ts_ns),
            ("eth7", Direction::Ingress, 1_700_000_000_000_123_000)
        );
        assert_eq!(
            (p[1].iface.as_ref(), p[1].direction, p[1].ts_ns),
            ("-", Direction::Egress, 1_700_000_000_000_123)
        );
        assert_eq!(p[2].direction, Direction::Unknown);
        // Padding is not data.
        assert_eq!((p[3].data.len(), p[3].ts_ns), (61, 0));
        assert_eq!(p[3].data, p[0].data);
    }

    #[test]
    fn pcapng_errors() {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::IEEE802_11,
            snaplen: 0,
            options: vec![],
        })
        .unwrap();
        let e = read(w.into_inner()).unwrap_err().to_string();
        assert!(e.contains("link-layer type 105 (IEEE802_11)"), "{e}");
        // The writer refuses a packet of an undeclared interface: write
        // one declared, then take the declaration out of the bytes.
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .unwrap();
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: std::time::Duration::ZERO,
            original_len: 4,
            data: Cow::Borrowed(&[1, 2, 3, 4]),
            options: vec![],
        })
        .unwrap();
        let mut bytes = w.into_inner();
        let block_len =
            |at: usize| u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let idb = block_len(0);
        let idb_len = block_len(idb);
        bytes.drain(idb..idb + idb_len);
        let e = read(bytes).unwrap_err().to_string();
        assert!(
            e.contains(
                "after 0 packets: a packet of interface 0, which the section does not describe"
            ),
            "{e}"
        );
    }

    #[test]
    fn resolutions() {
        let iface = |options| {
            Interface::from_idb(&InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0,
                options,
            })
        };
        assert_eq!(iface(vec![]).ts_ns(5), 5_000);
        assert_eq!(
            iface(vec![InterfaceDescriptionOption::IfTsResol(0x80 | 10)]).ts_ns(1024),
            1_000_000_000
        );
        assert_eq!(
            iface(vec![InterfaceDescriptionOption::IfTsOffset(2)]).ts_ns(1),
            2_000_001_000
        );
        // Absurd resolutions and values saturate instead of overflowing.
        assert_eq!(
            iface(vec![InterfaceDescriptionOption::IfTsResol(127)]).ts_ns(u64::MAX),
            0
        );
        assert_eq!(
            iface(vec![InterfaceDescriptionOption::IfTsResol(0)]).ts_ns(u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn live_only_filters_are_refused_as_libpcap_refuses_them() {
        let refusal = |text: &str| savefile_refusal(&Program::compile(text, 262_144).unwrap());
        for text in [
            "inbound",
            "outbound",
            "not inbound and tcp",
            "tcp or outbound",
        ] {
            assert_eq!(
                refusal(text).as_deref(),
                Some("inbound/outbound not supported on Ethernet when reading savefiles"),
                "{text}"
            );
        }
        assert_eq!(
            refusal("ifindex 3").as_deref(),
            Some("ifindex not supported on Ethernet when reading savefiles")
        );
        for text in [
            "",
            "tcp",
            "vlan 100 and udp",
            "ip6 protochain 6",
            "ether[0] = 1",
        ] {
            assert_eq!(refusal(text), None, "{text}");
        }
    }

    #[test]
    fn accounting_words() {
        let c = CaptureCounts {
            seen: 10,
            matched: 4,
            delivered: 3,
            lost: 0,
        };
        assert_eq!(
            file_accounting(&c, "x.pcap"),
            "3 packets captured\n4 packets received by filter\n0 packets dropped by kernel\n10 packets read from x.pcap\n"
        );
    }
}

//! Packet tracer (`netray packets`): XDP ingress + TC egress capture with
//! in-kernel filters, text / JSON lines / pcapng output, flow summaries.
//!
//! - [`PacketRecord`]: one captured packet as the capture hands it to output.
//! - [`offline`]: the same outputs for packets read from a pcap or pcapng
//!   file (`-r FILE`), unprivileged.

pub mod capture;
pub mod ebpf_filter;
pub mod filter;

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Direction a packet was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received (XDP).
    Ingress,
    /// Sent (TC egress).
    Egress,
    /// Not recorded: packets read from a pcap file, or from a pcapng
    /// packet block without direction flags (`-r FILE`).
    Unknown,
}

/// One captured packet.
///
/// The capture hands records out borrowed from its ring buffer
/// ([`capture::PacketCapture::drain`]), so that writing a packet to a file
/// costs no allocation; [`PacketRecord::into_owned`] keeps one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord<'a> {
    /// When the kernel saw it: nanoseconds since the Unix epoch (wall
    /// clock, converted from the kernel's monotonic timestamp). Kept as an
    /// integer because every output wants it as one.
    pub ts_ns: u64,
    /// Interface index (for packets read from a file: the pcapng
    /// interface id, 0 for a pcap file).
    pub ifindex: u32,
    /// Interface name (resolved at attach time; from a file: the pcapng
    /// interface's name, `-` when it has none or the file is a pcap).
    pub iface: Cow<'a, str>,
    /// Ingress or egress (unknown for some packets read from a file).
    pub direction: Direction,
    /// Length on the wire.
    pub wire_len: u32,
    /// The captured bytes from the Ethernet header on (at most the snaplen).
    pub data: Cow<'a, [u8]>,
}

impl PacketRecord<'_> {
    /// When the kernel saw it, as a [`SystemTime`].
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.ts_ns)
    }

    /// A copy that owns its bytes (to keep past the ring buffer's turn).
    pub fn into_owned(self) -> PacketRecord<'static> {
        PacketRecord {
            ts_ns: self.ts_ns,
            ifindex: self.ifindex,
            iface: Cow::Owned(self.iface.into_owned()),
            direction: self.direction,
            wire_len: self.wire_len,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}

/// What the kernel could and could not deliver (printed on exit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureCounts {
    /// Packets the programs looked at.
    pub seen: u64,
    /// Packets the filter matched.
    pub matched: u64,
    /// Matched packets that reached userspace.
    pub delivered: u64,
    /// Matched packets lost because the ring buffer was full.
    pub lost: u64,
}

pub mod args;
pub mod decode;
pub mod flows;
pub mod json;
pub mod offline;
pub mod pcapng;
pub mod run;
pub mod text;

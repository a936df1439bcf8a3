//! Packet tracer (`netray packets`): XDP ingress + TC egress capture with
//! in-kernel filters, text / JSON lines / pcapng output, flow summaries.
//!
//! - [`PacketRecord`]: one captured packet as the capture hands it to output.

pub mod capture;
pub mod filter;

use std::time::SystemTime;

/// Direction a packet was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received (XDP).
    Ingress,
    /// Sent (TC egress).
    Egress,
}

/// One captured packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// When the kernel saw it (wall clock, converted from the kernel's
    /// monotonic timestamp).
    pub time: SystemTime,
    /// Interface index.
    pub ifindex: u32,
    /// Interface name (resolved at attach time).
    pub iface: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Length on the wire.
    pub wire_len: u32,
    /// The captured bytes from the Ethernet header on (at most the snaplen).
    pub data: Vec<u8>,
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
pub mod pcapng;
pub mod run;
pub mod text;

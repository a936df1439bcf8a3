//! Types of the in-band traceroute capture (`netray serve`, `netray trace`).
//!
//! The XDP program (ingress) and the TC program (egress) watch the TCP
//! connections userspace registered in the `INBAND_FLOWS` hash map:
//! - egress segments of a flow update the server-side fields of its
//!   [`FlowState`] (what the next probe must look like);
//! - ingress segments from the peer update the peer-side fields and, while the
//!   flow is armed, are reported as [`InbandEvent`]s (the destination's ACK of
//!   a probe carries a D-SACK block naming the probe);
//! - ICMP/ICMPv6 Time Exceeded / Destination Unreachable messages that quote a
//!   registered flow are reported as [`InbandEvent`]s with the router's address.
//!
//! All ports and sequence numbers are in host byte order. Addresses are raw
//! network-order bytes; an IPv4 address fills the first 4 bytes, the rest zero.

/// `FlowKey::family` of an IPv4 flow.
pub const FAMILY_IPV4: u8 = 4;
/// `FlowKey::family` of an IPv6 flow.
pub const FAMILY_IPV6: u8 = 6;

/// The packet mark netray's raw probe sockets set (`SO_MARK`), so the egress
/// program does not mistake probes for the connection's own segments.
pub const PROBE_MARK: u32 = 0x6e72_7072; // "nrpr"

/// Identifies a traced TCP connection from the tracing host's side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// This host's address (the probes' source).
    pub local_addr: [u8; 16],
    /// The peer's address (the probes' destination).
    pub remote_addr: [u8; 16],
    /// This host's port.
    pub local_port: u16,
    /// The peer's port.
    pub remote_port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero (keeps the key free of uninitialised padding).
    pub pad: [u8; 3],
}

/// What the kernel programs learned about a registered flow.
///
/// The segments' TCP options are kept as on the wire and parsed here, in
/// userspace: an option walk in the kernel is a data-dependent loop that
/// newer verifiers (6.12) could not prove bounded within their branch
/// limits, and copying 40 bytes costs less than walking them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Peer's latest sequence number plus its payload length (and SYN/FIN):
    /// the acknowledgment number a probe carries.
    pub peer_seq_next: u32,
    /// Peer's latest acknowledgment number: everything before it is
    /// acknowledged, so probes take their sequence numbers below it.
    pub peer_ack: u32,
    /// Ingress segments seen from the peer since registration.
    pub peer_segments: u32,
    /// Our latest sequence number plus payload length (our snd_nxt).
    pub local_seq_next: u32,
    /// Our latest IPv6 flow label (host order, 20 bits); 0 for IPv4.
    pub local_flow_label: u32,
    /// Egress segments seen from us since registration.
    pub local_segments: u32,
    /// Our latest advertised window (unscaled, as on the wire).
    pub local_window: u16,
    /// Our latest IPv4 TOS / IPv6 traffic class (DSCP and ECN bits).
    pub local_tos: u8,
    /// Peer's latest IP TTL / hop limit as received.
    pub peer_ttl: u8,
    /// Bit 0: peer segments seen; bit 1: local segments seen; bit 2:
    /// `peer_seq_next` is known; bit 4:
    /// `peer_ack` holds an acknowledgment (a SYN carries none); bits 5 and
    /// 6: the peer / we sent a FIN.
    pub seen: u8,
    /// Nonzero: report every ingress segment of the peer as an event.
    pub armed: u8,
    /// Valid bytes of `peer_options`.
    pub peer_options_len: u8,
    /// Valid bytes of `local_options`.
    pub local_options_len: u8,
    /// TCP options of the peer's latest segment, as on the wire.
    pub peer_options: [u8; MAX_TCP_OPTIONS],
    /// TCP options of our latest segment, as on the wire.
    pub local_options: [u8; MAX_TCP_OPTIONS],
}

impl Default for FlowState {
    fn default() -> Self {
        Self {
            peer_seq_next: 0,
            peer_ack: 0,
            peer_segments: 0,
            local_seq_next: 0,
            local_flow_label: 0,
            local_segments: 0,
            local_window: 0,
            local_tos: 0,
            peer_ttl: 0,
            seen: 0,
            armed: 0,
            peer_options_len: 0,
            local_options_len: 0,
            peer_options: [0; MAX_TCP_OPTIONS],
            local_options: [0; MAX_TCP_OPTIONS],
        }
    }
}

impl FlowState {
    /// `seen` bit: a peer segment was seen.
    pub const SEEN_PEER: u8 = 1;
    /// `seen` bit: a local segment was seen.
    pub const SEEN_LOCAL: u8 = 2;
    /// `seen` bit: `peer_seq_next` holds the peer's next sequence number,
    /// from an acceptable peer segment or from our own ACK.
    pub const PEER_SEQ_KNOWN: u8 = 4;
    /// `seen` bit: `peer_ack` was set from a segment with the ACK flag.
    pub const PEER_ACKED: u8 = 16;
    /// `seen` bit: the peer sent a FIN.
    pub const PEER_FIN: u8 = 32;
    /// `seen` bit: we sent a FIN.
    pub const LOCAL_FIN: u8 = 64;

    /// TSval of the peer's latest segment, if it carried a timestamp option
    /// (what a probe echoes as TSecr).
    pub fn peer_tsval(&self) -> Option<u32> {
        timestamp_option(&self.peer_options, self.peer_options_len).map(|(tsval, _)| tsval)
    }

    /// TSval of our latest segment, if it carried a timestamp option.
    pub fn local_tsval(&self) -> Option<u32> {
        timestamp_option(&self.local_options, self.local_options_len).map(|(tsval, _)| tsval)
    }
}

/// The (TSval, TSecr) of the timestamp option (kind 8, length 10) among the
/// first `len` bytes of `options`, walking the options as RFC 9293 lays
/// them out (End of Option List, NOP, kind-length-value).
pub fn timestamp_option(options: &[u8], len: u8) -> Option<(u32, u32)> {
    let options = options.get(..usize::from(len))?;
    let mut i = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            0 => return None,
            1 => i += 1,
            _ => {
                let opt_len = usize::from(*options.get(i + 1)?);
                if opt_len < 2 {
                    return None;
                }
                let value = options.get(i + 2..i + opt_len)?;
                if kind == 8 {
                    if opt_len != 10 {
                        return None;
                    }
                    let tsval = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    let tsecr = u32::from_be_bytes([value[4], value[5], value[6], value[7]]);
                    return Some((tsval, tsecr));
                }
                i += opt_len;
            }
        }
    }
    None
}

/// [`InbandEvent::kind`]: an ICMP(v6) Time Exceeded quoting a registered flow.
pub const EVENT_TIME_EXCEEDED: u8 = 1;
/// [`InbandEvent::kind`]: an ICMP(v6) Destination Unreachable quoting a flow.
pub const EVENT_DEST_UNREACHABLE: u8 = 2;
/// [`InbandEvent::kind`]: a TCP segment from the peer of an armed flow.
pub const EVENT_TCP: u8 = 3;

/// Maximum TCP option bytes copied into an event.
pub const MAX_TCP_OPTIONS: usize = 40;

/// One record of the in-band ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InbandEvent {
    /// `bpf_ktime_get_ns()` when the packet was seen (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// The registered flow the packet belongs to / quotes.
    pub flow: FlowKey,
    /// Outer source address: the router (ICMP) or the peer (TCP).
    pub from_addr: [u8; 16],
    /// ICMP: the quoted TCP sequence number. TCP: the segment's sequence number.
    pub seq: u32,
    /// TCP: the segment's acknowledgment number. ICMP: 0.
    pub ack: u32,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// TCP: payload length. ICMP: 0.
    pub payload_len: u16,
    /// TCP: window (unscaled). ICMP: 0.
    pub window: u16,
    /// One of `EVENT_*`.
    pub kind: u8,
    /// ICMP type and code (ICMPv4 or ICMPv6 numbering per `flow.family`).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// ICMP: TTL/hop limit left in the quoted header. TCP: the segment's TTL.
    pub ttl: u8,
    /// TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 ...). ICMP: 0.
    pub tcp_flags: u8,
    /// Bytes of `options` that are valid.
    pub options_len: u8,
    /// Always zero.
    pub pad: [u8; 2],
    /// TCP options as on the wire (SACK blocks live here).
    pub options: [u8; MAX_TCP_OPTIONS],
}

/// Slots of the per-CPU `INBAND_STATS` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InbandStat {
    /// Packets the XDP program looked at.
    XdpPackets = 0,
    /// ICMP errors that quoted a registered flow (reported).
    IcmpMatched = 1,
    /// ICMP errors that quoted no registered flow (passed, not reported).
    IcmpIgnored = 2,
    /// Peer TCP segments reported.
    TcpReported = 3,
    /// Events lost because the ring buffer was full.
    RingbufDrops = 4,
    /// Packets too short or malformed to parse (passed untouched).
    Malformed = 5,
    /// Egress segments that updated a flow.
    EgressUpdates = 6,
    /// Flows whose state a new SYN on the same 4-tuple reset (a new
    /// connection: nothing of the old one's sequence state may survive).
    FlowsReset = 7,
    /// Flows removed because their connection ended (FIN both ways, our
    /// RST, or the peer's RST at exactly its next sequence number).
    FlowsEnded = 8,
}

impl InbandStat {
    /// Length of the counter array.
    pub const COUNT: u32 = 9;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, integers and byte arrays laid out without
    // implicit padding (explicit `pad` fields); any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InbandEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_option_walks_like_the_kernel() {
        // Linux's usual layout: NOP NOP TS.
        let ts = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
        assert_eq!(timestamp_option(&ts, 12), Some((7, 9)));
        // After SACK blocks, and the bytes of a SACK block that look like a
        // timestamp option are not one.
        let sack_then_ts = [
            1, 1, 5, 10, 8, 10, 0, 0, 0, 1, 0, 0, 1, 1, 8, 10, 0, 0, 0, 3, 0, 0, 0, 4,
        ];
        assert_eq!(timestamp_option(&sack_then_ts, 24), Some((3, 4)));
        // Truncated by len, after End of Option List, bad lengths.
        assert_eq!(timestamp_option(&ts, 11), None);
        assert_eq!(
            timestamp_option(&[0, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9], 11),
            None
        );
        assert_eq!(timestamp_option(&[2, 1, 8, 10], 4), None);
        assert_eq!(timestamp_option(&[8, 6, 0, 0, 0, 0], 6), None);
        assert_eq!(timestamp_option(&ts, 60), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        // 6*4 + 2 + 6*1 + 2*40 = 112, options 8-aligned (word copies).
        assert_eq!(core::mem::size_of::<FlowState>(), 112);
        assert_eq!(core::mem::offset_of!(FlowState, peer_options), 32);
        assert_eq!(core::mem::offset_of!(FlowState, local_options), 72);
        // 8 + 40 + 16 + 4*3 + 2*2 + 8 + 40 = 128
        assert_eq!(core::mem::size_of::<InbandEvent>(), 128);
    }
}

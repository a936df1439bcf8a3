//! Types of the packet tracer capture (`netray packets`).
//!
//! Userspace writes a [`CaptureConfig`] into a single-entry Array map and
//! puts the filter (libpcap's program translated to eBPF) in a program
//! array before attaching; the XDP (ingress) and TC (egress) programs send
//! each packet the filter accepts to the ring buffer as a [`RecordHeader`]
//! followed by the captured bytes, or, in flow mode, parse its 5-tuple
//! into [`field::COUNT`] words and add it to a per-CPU hash of
//! [`FlowKey`] → [`FlowValue`].

/// Bytes of the filters' per-CPU scratch value: the TC filter assembles
/// there the head of a frame whose VLAN tag the skb holds in its metadata
/// (bytes 0..24), and a loop of either filter passes X through it (28..32).
pub const FILTER_SCRATCH: usize = 32;

/// Largest snaplen: the kernel builds each record in a per-CPU scratch
/// value, which must stay under the 32 KiB per-CPU allocation limit.
pub const MAX_SNAPLEN: usize = 16384;

/// Indexes of the 5-tuple words parsed for a flow key (flow mode).
pub mod field {
    /// `vlan_count << 16 | ethertype`: the EtherType after the parsed VLAN
    /// tags, with how many there were (so one comparison checks both).
    pub const ETHER: u8 = 0;
    /// Number of VLAN tags parsed (0..=2).
    pub const VLAN_COUNT: u8 = 1;
    /// VLAN ID (12 bits) of the outer tag, 0 without.
    pub const VLAN_ID0: u8 = 2;
    /// VLAN ID of the second tag, 0 without.
    pub const VLAN_ID1: u8 = 3;
    /// IP protocol (IPv6: Next Header, or the fragment header's Next Header).
    pub const PROTO: u8 = 4;
    /// 1 when [`SPORT`]/[`DPORT`] hold TCP/UDP/SCTP ports.
    pub const PORTS: u8 = 5;
    /// Source port.
    pub const SPORT: u8 = 6;
    /// Destination port.
    pub const DPORT: u8 = 7;
    /// Source address, 4 big-endian words (IPv4 / ARP sender: word 0 only).
    pub const SRC: u8 = 8;
    /// Destination address, 4 big-endian words (IPv4 / ARP target: word 0).
    pub const DST: u8 = 12;
    /// Number of fields.
    pub const COUNT: usize = 16;
}

/// Capture settings, written by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Bytes to copy per packet (the kernel clamps to [`MAX_SNAPLEN`]).
    pub snaplen: u32,
    /// Nonzero: aggregate flows, no per-packet records.
    pub flows: u32,
}

/// [`RecordHeader::direction`] of a packet seen by XDP.
pub const DIRECTION_INGRESS: u32 = 0;
/// [`RecordHeader::direction`] of a packet seen by TC egress.
pub const DIRECTION_EGRESS: u32 = 1;

/// Header of each ring-buffer record; `cap_len` captured bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()` when the program ran (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Interface index.
    pub ifindex: u32,
    /// Frame length on the wire.
    pub wire_len: u32,
    /// Bytes captured (at most the snaplen).
    pub cap_len: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u32,
}

/// Flow-table key (flow mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 and ARP: first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (TCP/UDP/SCTP, else 0).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// EtherType after the VLAN tags.
    pub ethertype: u16,
    /// IP protocol, 0 for non-IP.
    pub proto: u8,
    /// 4 or 6 for IP, 0 otherwise.
    pub family: u8,
}

/// Flow-table value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Packets matched.
    pub packets: u64,
    /// Bytes on the wire.
    pub bytes: u64,
}

/// Indexes of the per-CPU counters.
pub mod stat {
    /// Packets the programs looked at.
    pub const SEEN: u32 = 0;
    /// Packets the filter matched.
    pub const MATCHED: u32 = 1;
    /// Matched packets queued to userspace (flow mode: added to the table).
    pub const DELIVERED: u32 = 2;
    /// Matched packets the ring (or the full flow table) could not take.
    pub const LOST: u32 = 3;
    /// Packets the attached program could not hand to the filter (its
    /// program array slot was empty: never once the capture is set up).
    pub const UNFILTERED: u32 = 4;
    /// Length of the counter array.
    pub const COUNT: u32 = 5;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, integers laid out without implicit padding
    // (two u32); any bit pattern is valid.
    unsafe impl aya::Pod for super::CaptureConfig {}
    // SAFETY: as above (40 bytes: two 16-byte arrays, three u16, two u8).
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above (two u64).
    unsafe impl aya::Pod for super::FlowValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CaptureConfig>(), 8);
        assert_eq!(size_of::<RecordHeader>(), 24);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowValue>(), 16);
    }
}

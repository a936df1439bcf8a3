//! Decoding of captured bytes into a [`PacketSummary`] for text and JSON
//! output.
//!
//! Captures are routinely cut short by the snaplen, so decoding is lax: each
//! layer is decoded as far as the captured bytes allow and a missing or
//! malformed layer only ends the decoding there. Nothing here panics on any
//! input.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LinkSlice};

/// IP protocol number of ICMP.
const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;

/// What could be decoded from one captured frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketSummary {
    /// VLAN ids of the 802.1Q/802.1ad tags, outermost first.
    pub vlans: Vec<u16>,
    /// Ethertype of the innermost link payload (after VLAN tags), if the
    /// Ethernet header was captured.
    pub ethertype: Option<u16>,
    /// The network layer.
    pub net: Net,
    /// The transport layer (only for IP).
    pub transport: Transport,
}

/// Network layer of a [`PacketSummary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Net {
    /// Not decoded (unknown ethertype, or too short).
    #[default]
    None,
    /// An ARP packet.
    Arp(ArpInfo),
    /// An IPv4 or IPv6 packet.
    Ip(IpInfo),
}

/// An ARP packet (Ethernet/IPv4 ARP has both addresses set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// Operation (1 request, 2 reply, ...).
    pub op: u16,
    /// Sender hardware address.
    pub sender_hw: Vec<u8>,
    /// Sender protocol address, when it is IPv4.
    pub sender_ip: Option<Ipv4Addr>,
    /// Target hardware address.
    pub target_hw: Vec<u8>,
    /// Target protocol address, when it is IPv4.
    pub target_ip: Option<Ipv4Addr>,
}

/// An IPv4 or IPv6 header (plus extension headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol of the payload after all extension headers.
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv6 extension headers (their IP protocol numbers) in order; for IPv4
    /// the authentication header when present.
    pub ext_headers: Vec<u8>,
    /// The payload is a fragment (transport headers are then only decoded
    /// for the first fragment).
    pub fragmented: bool,
    /// Fragment offset in bytes (0 for the first fragment and for
    /// unfragmented packets).
    pub frag_offset: u32,
    /// Length of the IP payload on the wire (after extension headers), from
    /// the IP header's length fields, not from the captured length.
    pub payload_len: u32,
}

/// Transport layer of a [`PacketSummary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Not decoded (not IP, non-first fragment, or not captured).
    #[default]
    None,
    /// TCP; fields after the ports are `None` when not captured.
    Tcp(TcpInfo),
    /// UDP.
    Udp(UdpInfo),
    /// ICMP (v4) or ICMPv6.
    Icmp(IcmpInfo),
}

/// A TCP header, as far as it was captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: Option<u32>,
    /// Acknowledgement number.
    pub ack: Option<u32>,
    /// Flag byte (FIN=0x01 .. CWR=0x80).
    pub flags: Option<u8>,
    /// Receive window.
    pub win: Option<u16>,
    /// Payload length on the wire (IP payload minus TCP header).
    pub payload_len: Option<u32>,
}

/// A UDP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpInfo {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Payload length from the UDP length field, when captured.
    pub payload_len: Option<u32>,
}

/// An ICMP or ICMPv6 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpInfo {
    /// ICMPv6 rather than ICMP.
    pub v6: bool,
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Identifier and sequence number of echo request/reply, when captured.
    pub echo: Option<(u16, u16)>,
}

/// TCP flag bits and tcpdump's letters, in the order tcpdump prints them.
const TCP_FLAG_LETTERS: [(u8, char); 8] = [
    (0x01, 'F'),
    (0x02, 'S'),
    (0x04, 'R'),
    (0x08, 'P'),
    (0x10, '.'),
    (0x20, 'U'),
    (0x40, 'E'),
    (0x80, 'W'),
];

/// TCP flags in tcpdump's notation (`S.` for SYN+ACK, `none` for no flags).
pub fn tcp_flags_string(flags: u8) -> String {
    let s: String = TCP_FLAG_LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() { "none".to_string() } else { s }
}

/// Big-endian u16 at `at`, if captured.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Big-endian u32 at `at`, if captured.
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Byte offset of `inner` within `outer`, when `inner` is a sub-slice of it.
///
/// etherparse hands out sub-slices of the frame; comparing addresses gives
/// header lengths (including extension headers) without re-parsing them.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let start = outer.as_ptr() as usize;
    let at = inner.as_ptr() as usize;
    let off = at.checked_sub(start)?;
    (off <= outer.len()).then_some(off)
}

impl PacketSummary {
    /// Decodes an Ethernet frame (possibly truncated).
    pub fn decode(data: &[u8]) -> PacketSummary {
        let mut out = PacketSummary::default();
        // Fails only when not even the Ethernet header was captured.
        let Ok(pkt) = LaxSlicedPacket::from_ethernet(data) else {
            return out;
        };
        if let Some(LinkSlice::Ethernet2(eth)) = &pkt.link {
            out.ethertype = Some(eth.ether_type().0);
        }
        for ext in &pkt.link_exts {
            if let LaxLinkExtSlice::Vlan(v) = ext {
                out.vlans.push(v.vlan_identifier().value());
                out.ethertype = Some(v.ether_type().0);
            }
        }
        match &pkt.net {
            Some(LaxNetSlice::Arp(arp)) => {
                let ipv4 = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from);
                out.net = Net::Arp(ArpInfo {
                    op: arp.operation().0,
                    sender_hw: arp.sender_hw_addr().to_vec(),
                    sender_ip: ipv4(arp.sender_protocol_addr()),
                    target_hw: arp.target_hw_addr().to_vec(),
                    target_ip: ipv4(arp.target_protocol_addr()),
                });
            }
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                let p = ip.payload();
                // Header plus options plus AH, measured in the captured bytes.
                let hdr_len = offset_in(h.slice(), p.payload).unwrap_or(usize::from(h.ihl()) * 4);
                let mut ext_headers = Vec::new();
                if !ip.extensions().is_empty() {
                    ext_headers.push(51); // AH
                }
                let info = IpInfo {
                    src: IpAddr::V4(h.source_addr()),
                    dst: IpAddr::V4(h.destination_addr()),
                    proto: p.ip_number.0,
                    ttl: h.ttl(),
                    ext_headers,
                    fragmented: p.fragmented,
                    frag_offset: u32::from(h.fragments_offset().value()) * 8,
                    payload_len: u32::from(h.total_len()).saturating_sub(hdr_len as u32),
                };
                out.transport = decode_transport(&info, p.payload);
                out.net = Net::Ip(info);
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let h = ip.header();
                let p = ip.payload();
                let hdr_len = offset_in(h.slice(), p.payload).unwrap_or(40);
                let (ext_headers, frag_offset) =
                    ipv6_ext_ids(h.slice().get(6).copied(), ip.extensions().slice());
                let info = IpInfo {
                    src: IpAddr::V6(h.source_addr()),
                    dst: IpAddr::V6(h.destination_addr()),
                    proto: p.ip_number.0,
                    ttl: h.hop_limit(),
                    ext_headers,
                    fragmented: p.fragmented,
                    frag_offset,
                    payload_len: (40 + u32::from(h.payload_length()))
                        .saturating_sub(hdr_len as u32),
                };
                out.transport = decode_transport(&info, p.payload);
                out.net = Net::Ip(info);
            }
            None => {}
        }
        out
    }

    /// Source address (IP, or the ARP sender's IPv4 address).
    pub fn src(&self) -> Option<IpAddr> {
        match &self.net {
            Net::Ip(ip) => Some(ip.src),
            Net::Arp(a) => a.sender_ip.map(IpAddr::V4),
            Net::None => None,
        }
    }

    /// Destination address (IP, or the ARP target's IPv4 address).
    pub fn dst(&self) -> Option<IpAddr> {
        match &self.net {
            Net::Ip(ip) => Some(ip.dst),
            Net::Arp(a) => a.target_ip.map(IpAddr::V4),
            Net::None => None,
        }
    }

    /// Source and destination ports (TCP and UDP only).
    pub fn ports(&self) -> Option<(u16, u16)> {
        match &self.transport {
            Transport::Tcp(t) => Some((t.sport, t.dport)),
            Transport::Udp(u) => Some((u.sport, u.dport)),
            _ => None,
        }
    }

    /// Short protocol name: `tcp`, `udp`, `icmp`, `icmp6`, `arp`, `ipv4` /
    /// `ipv6` with another payload (or `ip-proto-N`), else the ethertype
    /// name or `0xNNNN`, or `unknown` when not even Ethernet was captured.
    pub fn proto_name(&self) -> String {
        match (&self.net, &self.transport) {
            (_, Transport::Tcp(_)) => "tcp".into(),
            (_, Transport::Udp(_)) => "udp".into(),
            (_, Transport::Icmp(i)) => if i.v6 { "icmp6" } else { "icmp" }.into(),
            (Net::Arp(_), _) => "arp".into(),
            (Net::Ip(ip), Transport::None) => match ip.proto {
                IPPROTO_TCP => "tcp".into(),
                IPPROTO_UDP => "udp".into(),
                IPPROTO_ICMP => "icmp".into(),
                IPPROTO_ICMPV6 => "icmp6".into(),
                p => format!("ip-proto-{p}"),
            },
            (Net::None, _) => match self.ethertype {
                Some(t) => ethertype_name(t),
                None => "unknown".into(),
            },
        }
    }
}

/// Name of an ethertype (`ipv4`, `arp`, ...) or `0xNNNN`.
pub fn ethertype_name(t: u16) -> String {
    match t {
        0x0800 => "ipv4".into(),
        0x0806 => "arp".into(),
        0x86dd => "ipv6".into(),
        0x8100 => "vlan".into(),
        0x88a8 => "qinq".into(),
        0x8035 => "rarp".into(),
        0x8847 => "mpls".into(),
        0x8848 => "mpls-mc".into(),
        0x8863 => "pppoe-disc".into(),
        0x8864 => "pppoe".into(),
        0x888e => "eapol".into(),
        0x88cc => "lldp".into(),
        0x88e5 => "macsec".into(),
        0x88f7 => "ptp".into(),
        t => format!("0x{t:04x}"),
    }
}

/// Protocol numbers of the IPv6 extension headers in `exts` (the bytes
/// between the fixed header and the payload), starting from the fixed
/// header's next-header field, and the fragment offset in bytes from a
/// fragment header (0 without one).
fn ipv6_ext_ids(first: Option<u8>, exts: &[u8]) -> (Vec<u8>, u32) {
    let mut ids = Vec::new();
    let mut frag_offset = 0;
    let (Some(mut next), mut rest) = (first, exts) else {
        return (ids, frag_offset);
    };
    while !rest.is_empty() {
        ids.push(next);
        let (Some(&nh), Some(&len)) = (rest.first(), rest.get(1)) else {
            break;
        };
        // AH counts its length in 4-octet units minus 2, fragment headers
        // are fixed at 8 bytes, the others use 8-octet units minus 1.
        let size = match next {
            51 => (usize::from(len) + 2) * 4,
            44 => {
                // Offset in 8-octet units in the top 13 bits of bytes 2..4.
                frag_offset = u32::from(be16(rest, 2).unwrap_or(0) >> 3) * 8;
                8
            }
            _ => (usize::from(len) + 1) * 8,
        };
        next = nh;
        rest = rest.get(size..).unwrap_or(&[]);
    }
    (ids, frag_offset)
}

/// Decodes the transport header from the captured IP payload, keeping
/// whatever fields were captured.
///
/// Done by hand rather than with etherparse's transport slices, which are
/// all-or-nothing: a snaplen that cuts a TCP header still leaves ports and
/// flags worth printing.
fn decode_transport(ip: &IpInfo, p: &[u8]) -> Transport {
    // Only the first fragment starts with the transport header; later
    // ones carry payload bytes that would decode as nonsense ports.
    if p.is_empty() || ip.frag_offset != 0 {
        return Transport::None;
    }
    match ip.proto {
        IPPROTO_TCP => {
            let (Some(sport), Some(dport)) = (be16(p, 0), be16(p, 2)) else {
                return Transport::None;
            };
            let hdr_len = p.get(12).map(|b| u32::from(b >> 4) * 4);
            Transport::Tcp(TcpInfo {
                sport,
                dport,
                seq: be32(p, 4),
                ack: be32(p, 8),
                flags: p.get(13).copied(),
                win: be16(p, 14),
                payload_len: hdr_len.map(|h| ip.payload_len.saturating_sub(h)),
            })
        }
        IPPROTO_UDP => {
            let (Some(sport), Some(dport)) = (be16(p, 0), be16(p, 2)) else {
                return Transport::None;
            };
            Transport::Udp(UdpInfo {
                sport,
                dport,
                payload_len: be16(p, 4).map(|l| u32::from(l).saturating_sub(8)),
            })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let v6 = ip.proto == IPPROTO_ICMPV6;
            let (Some(&ty), Some(&code)) = (p.first(), p.get(1)) else {
                return Transport::None;
            };
            let is_echo = if v6 {
                matches!(ty, 128 | 129)
            } else {
                matches!(ty, 0 | 8)
            };
            let echo = match (is_echo, be16(p, 4), be16(p, 6)) {
                (true, Some(id), Some(seq)) => Some((id, seq)),
                _ => None,
            };
            Transport::Icmp(IcmpInfo { v6, ty, code, echo })
        }
        _ => Transport::None,
    }
}

/// tcpdump-like description of an ICMP type/code (`echo request`, ...).
pub fn icmp_description(i: &IcmpInfo) -> String {
    let name = if i.v6 {
        match (i.ty, i.code) {
            (1, _) => "destination unreachable",
            (2, _) => "packet too big",
            (3, _) => "time exceeded",
            (4, _) => "parameter problem",
            (128, _) => "echo request",
            (129, _) => "echo reply",
            (133, _) => "router solicitation",
            (134, _) => "router advertisement",
            (135, _) => "neighbor solicitation",
            (136, _) => "neighbor advertisement",
            (137, _) => "redirect",
            (143, _) => "multicast listener report v2",
            _ => "",
        }
    } else {
        match (i.ty, i.code) {
            (0, _) => "echo reply",
            (3, 0) => "net unreachable",
            (3, 1) => "host unreachable",
            (3, 2) => "protocol unreachable",
            (3, 3) => "port unreachable",
            (3, 4) => "need to frag",
            (3, _) => "destination unreachable",
            (5, _) => "redirect",
            (8, _) => "echo request",
            (11, 0) => "time exceeded in-transit",
            (11, _) => "time exceeded",
            (12, _) => "parameter problem",
            (13, _) => "time stamp request",
            (14, _) => "time stamp reply",
            _ => "",
        }
    };
    let mut s = if name.is_empty() {
        format!("type {}, code {}", i.ty, i.code)
    } else {
        name.to_string()
    };
    if let Some((id, seq)) = i.echo {
        s.push_str(&format!(", id {id}, seq {seq}"));
    }
    s
}

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};

    /// Builders for synthetic frames shared by the output tests.
    pub(crate) fn tcp_v4(flags_syn_ack: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(443, 5555, 1000, 65535)
            .syn();
        if flags_syn_ack {
            b = b.ack(2000);
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    pub(crate) fn udp_v4(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5353, 53)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    pub(crate) fn udp_v6_vlan(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(100.try_into().unwrap())
            .ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                {
                    let mut a = [0u8; 16];
                    a[0] = 0x20;
                    a[1] = 1;
                    a[2] = 0xd;
                    a[3] = 0xb8;
                    a[15] = 2;
                    a
                },
                64,
            )
            .udp(1234, 53)
            .write(&mut v, payload)
            .unwrap();
        v
    }

    pub(crate) fn icmp_echo_v4() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(7, 3)
            .write(&mut v, &[0u8; 56])
            .unwrap();
        v
    }

    pub(crate) fn arp_request() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([1; 6], [0xff; 6])
            .arp(
                ArpPacket::new(
                    ArpHardwareId::ETHERNET,
                    EtherType::IPV4,
                    ArpOperation::REQUEST,
                    &[1; 6],
                    &[10, 0, 0, 1],
                    &[0; 6],
                    &[10, 0, 0, 2],
                )
                .unwrap(),
            )
            .write(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn tcp_syn_ack() {
        let s = PacketSummary::decode(&tcp_v4(true, b"hello"));
        assert_eq!(s.proto_name(), "tcp");
        assert_eq!(s.ports(), Some((443, 5555)));
        let Transport::Tcp(t) = &s.transport else {
            panic!("{s:?}")
        };
        assert_eq!(tcp_flags_string(t.flags.unwrap()), "S.");
        assert_eq!(t.seq, Some(1000));
        assert_eq!(t.ack, Some(2000));
        assert_eq!(t.win, Some(65535));
        assert_eq!(t.payload_len, Some(5));
    }

    #[test]
    fn flag_letters() {
        assert_eq!(tcp_flags_string(0), "none");
        assert_eq!(tcp_flags_string(0x02), "S");
        assert_eq!(tcp_flags_string(0x18), "P.");
        assert_eq!(tcp_flags_string(0x11), "F.");
        assert_eq!(tcp_flags_string(0xff), "FSRP.UEW");
    }

    #[test]
    fn udp_v6_with_vlan() {
        let s = PacketSummary::decode(&udp_v6_vlan(&[0; 12]));
        assert_eq!(s.vlans, vec![100]);
        assert_eq!(s.ethertype, Some(0x86dd));
        assert_eq!(s.proto_name(), "udp");
        let Transport::Udp(u) = &s.transport else {
            panic!()
        };
        assert_eq!(u.payload_len, Some(12));
        assert_eq!(s.dst().unwrap().to_string(), "2001:db8::2");
    }

    #[test]
    fn icmp_and_arp() {
        let s = PacketSummary::decode(&icmp_echo_v4());
        let Transport::Icmp(i) = &s.transport else {
            panic!()
        };
        assert_eq!(icmp_description(i), "echo request, id 7, seq 3");
        let a = PacketSummary::decode(&arp_request());
        assert_eq!(a.proto_name(), "arp");
        let Net::Arp(arp) = &a.net else { panic!() };
        assert_eq!(arp.op, 1);
        assert_eq!(arp.target_ip, Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn ipv6_extension_headers() {
        let mut v = Vec::new();
        // Hop-by-hop options header (8 bytes) in front of UDP.
        let ip = etherparse::Ipv6Header {
            payload_length: 8 + 8 + 4,
            next_header: etherparse::IpNumber(0),
            hop_limit: 1,
            source: [0; 16],
            destination: [0; 16],
            ..Default::default()
        };
        v.extend_from_slice(&[0u8; 12]);
        v.extend_from_slice(&0x86ddu16.to_be_bytes());
        ip.write(&mut v).unwrap();
        v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        v.extend_from_slice(&[0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4]);
        let s = PacketSummary::decode(&v);
        let Net::Ip(info) = &s.net else {
            panic!("{s:?}")
        };
        assert_eq!(info.ext_headers, vec![0]);
        assert_eq!(info.proto, 17);
        assert_eq!(s.ports(), Some((1, 2)));
    }

    #[test]
    fn fragments() {
        // IPv4 UDP fragment at offset 8 bytes: no ports from payload bytes.
        let mut f = udp_v4(&[0xaa; 16]);
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x01;
        let s = PacketSummary::decode(&f);
        let Net::Ip(ip) = &s.net else { panic!("{s:?}") };
        assert!(ip.fragmented);
        assert_eq!(ip.frag_offset, 8);
        assert_eq!(s.transport, Transport::None);
        assert_eq!(s.ports(), None);
        assert_eq!(s.proto_name(), "udp");
        // First fragment (MF set, offset 0) still has its ports.
        let mut f = udp_v4(&[0xaa; 16]);
        f[14 + 6] = 0x20;
        let s = PacketSummary::decode(&f);
        assert_eq!(s.ports(), Some((5353, 53)));
        // IPv6 fragment header with offset 16 bytes.
        let mut v = vec![0u8; 12];
        v.extend_from_slice(&0x86ddu16.to_be_bytes());
        let ip6 = etherparse::Ipv6Header {
            payload_length: 8 + 8,
            next_header: etherparse::IpNumber(44),
            hop_limit: 1,
            ..Default::default()
        };
        ip6.write(&mut v).unwrap();
        v.extend_from_slice(&[17, 0, 0, 16, 0, 0, 0, 1]);
        v.extend_from_slice(&[0xbb; 8]);
        let s = PacketSummary::decode(&v);
        let Net::Ip(ip) = &s.net else { panic!("{s:?}") };
        assert_eq!(
            (ip.frag_offset, ip.ext_headers.as_slice()),
            (16, &[44u8][..])
        );
        assert_eq!(s.ports(), None);
    }

    #[test]
    fn truncation_never_panics_and_degrades() {
        let frames = [
            tcp_v4(true, b"hello"),
            udp_v4(b"x"),
            udp_v6_vlan(b"abc"),
            icmp_echo_v4(),
            arp_request(),
        ];
        for f in &frames {
            for cut in 0..=f.len() {
                let s = PacketSummary::decode(&f[..cut]);
                let _ = s.proto_name();
            }
        }
        // Cut inside the TCP header after the flags: ports and flags survive.
        let f = tcp_v4(false, b"");
        let s = PacketSummary::decode(&f[..14 + 20 + 14]);
        let Transport::Tcp(t) = &s.transport else {
            panic!("{s:?}")
        };
        assert_eq!((t.sport, t.flags, t.win), (443, Some(0x02), None));
        // Garbage.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = PacketSummary::decode(&junk).proto_name();
        }
    }

    /// Pseudo-random frames behind plausible Ethernet/VLAN/IP headers, fed
    /// to the decoder and all formatters: none may panic.
    #[test]
    fn random_frames_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let prefixes: [&[u8]; 6] = [
            &[0x08, 0x00, 0x45],
            &[0x08, 0x00, 0x46],
            &[0x86, 0xdd, 0x60],
            &[0x08, 0x06, 0x00, 0x01],
            &[0x81, 0x00, 0x00, 0x64, 0x08, 0x00, 0x45],
            &[
                0x88, 0xa8, 0x00, 0x01, 0x81, 0x00, 0x00, 0x02, 0x86, 0xdd, 0x60,
            ],
        ];
        for i in 0..20_000 {
            let len = (next() % 160) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let p = prefixes[i % prefixes.len()];
            if f.len() >= 12 + p.len() {
                f[12..12 + p.len()].copy_from_slice(p);
            }
            let s = PacketSummary::decode(&f);
            let _ = (s.proto_name(), s.src(), s.dst(), s.ports());
            let rec = crate::packets::PacketRecord {
                ts_ns: 0,
                ifindex: 1,
                iface: "x".into(),
                direction: crate::packets::Direction::Ingress,
                wire_len: (next() % 70_000) as u32,
                data: f.into(),
            };
            let _ = crate::packets::text::format_line_with(&rec, &s);
            let _ = crate::packets::json::format_line_with(&rec, &s);
        }
    }
}

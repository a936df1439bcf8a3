//! A fixed set of Ethernet frames for filter conformance tests: netray's
//! compiled filters and tcpdump must keep exactly the same frames of it.
//!
//! [`conformance_frames`] builds 3 000-5 000 frames from a seeded PRNG, so the
//! set is identical on every run and every machine: IPv4 (options,
//! fragments, TCP with every flag combination, UDP, ICMP, SCTP, GRE, IGMP,
//! ESP, AH, VRRP, ...), IPv6 with extension-header chains and ICMPv6, ARP,
//! RARP, LLDP, 802.3 frames with LLC (STP, ISO, NetBEUI, IPX, SNAP), DECnet,
//! AppleTalk, VLAN and QinQ, MPLS stacks, PPPoE discovery and session,
//! Geneve and VXLAN, and truncated copies of all of them (a filter's loads
//! past the end of a frame are where implementations differ most).
//! Addresses, ports, VLAN IDs, MPLS labels and session IDs come from pools
//! that contain the values the conformance expressions name, so most
//! expressions keep some frames and drop others. Checksums are not computed:
//! filters do not look at them.
//!
//! [`write_pcap`] writes frames to a classic pcap file in which frame `i` has
//! the timestamp `i` seconds, which is how [`crate::tcpdump`] tells which
//! frames tcpdump kept.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
};

/// The snapshot length written in the pcap header, tcpdump's default: no
/// frame here is longer, so every frame is stored whole.
pub const PCAP_SNAPLEN: u32 = 262_144;

/// Lengths at which truncated copies are cut: inside the Ethernet header,
/// right after it, inside and right after an IPv4 header without options,
/// at the transport ports, right after a TCP header.
const CUTS: [usize; 7] = [10, 14, 20, 30, 34, 40, 54];

/// xorshift64*: tiny, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 11) as usize % n
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u8()).collect()
    }

    /// A payload length: mostly empty or small, sometimes large enough for
    /// `greater 1000` and frames beyond 1514 bytes.
    fn payload_len(&mut self) -> usize {
        match self.below(10) {
            0..=3 => 0,
            4..=6 => 1 + self.below(100),
            7 | 8 => 100 + self.below(900),
            _ => 1000 + self.below(500),
        }
    }
}

// Pools: the values the conformance expressions name, and a few others.

const MACS: [[u8; 6]; 13] = [
    [0x02, 0x00, 0x05, 0x00, 0xd5, 0x01],
    [0x00, 0x11, 0x22, 0x33, 0x44, 0x55],
    [0x02, 0xfc, 0x00, 0x00, 0x00, 0x01],
    [0xab, 0xcd, 0xef, 0x00, 0x00, 0x01],
    [0xab, 0xcd, 0xef, 0x00, 0x00, 0x02],
    [0xab, 0xcd, 0xef, 0x00, 0x00, 0x03],
    [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6],
    [0x00, 0x10, 0x18, 0xde, 0x38, 0x1e],
    [0xd6, 0xc5, 0x28, 0x21, 0x3e, 0xaf],
    [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc],
    [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f],
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
const GROUP_MACS: [[u8; 6]; 5] = [
    [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
    [0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa],
    [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
    [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00],
    [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e],
];

const V4: [[u8; 4]; 40] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 1, 5],
    [10, 1, 2, 3],
    [10, 20, 30, 40],
    [10, 80, 131, 1],
    [10, 1, 1, 10],
    [10, 1, 1, 100],
    [192, 168, 1, 1],
    [192, 168, 1, 10],
    [192, 168, 1, 4],
    [192, 168, 170, 211],
    [192, 168, 30, 1],
    [192, 168, 243, 1],
    [192, 1, 2, 254],
    [192, 1, 2, 23],
    [192, 0, 2, 20],
    [192, 9, 200, 1],
    [172, 16, 5, 4],
    [172, 17, 89, 30],
    [172, 31, 255, 254],
    [100, 64, 0, 1],
    [127, 0, 0, 1],
    [127, 1, 2, 3],
    [8, 8, 8, 8],
    [1, 1, 1, 1],
    [1, 2, 3, 4],
    [203, 0, 113, 7],
    [198, 51, 100, 9],
    [93, 184, 216, 34],
    [0, 0, 0, 0],
    [224, 0, 0, 1],
    [224, 0, 0, 251],
    [239, 255, 255, 250],
    [255, 255, 255, 255],
    [192, 168, 1, 255],
    [10, 255, 255, 255],
    [169, 254, 1, 1],
];

const V6: [&str; 23] = [
    "::1",
    "fe80::1",
    "fe80::2",
    "fe80::1122:33ff:fe44:5566",
    "fe80::7788:99ff:feaa:bbcc",
    "fe80::d6ca:6dff:fe66:cf60",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:1011:1213:1415:1617:1819:1a1b",
    "2001:db8:1011:1213:1415:1617:1819:1a1c",
    "fd00::1",
    "fd00:a1b2:c3d4::1020:3040:5060:7080",
    "10::1",
    "1234:5678:9abc::123",
    "abcd:e0e1:e3e4:e5e6:e7e8:e9ea:c7c8:5",
    "2606:4700::1111",
    "::ffff:10.0.0.1",
    "::",
    "ff02::1",
    "ff02::2",
    "ff02::fb",
    "ff02::12",
    "ff11:2233:4455:6677:8899:aabb:ccdd:ee01",
];

/// Ports: the well-known ones the expressions name, the edges of the ranges
/// they use, and the range 1000-2000.
const PORTS: [u16; 40] = [
    0, 7, 9, 20, 21, 22, 23, 25, 53, 67, 68, 80, 123, 161, 179, 443, 999, 1000, 1001, 1023, 1024,
    1500, 1999, 2000, 2001, 3306, 4789, 5353, 5672, 6081, 8080, 8443, 32768, 40000, 50000, 60000,
    61000, 65534, 65535, 24,
];

fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>()
        .expect("pool addresses are valid")
        .octets()
}

fn be16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn be32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Ethernet header followed by `payload`.
fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    be16(&mut frame, ethertype);
    frame.extend_from_slice(payload);
    frame
}

/// Pads to the 60-byte minimum, as frames on a wire are (those a host
/// captures on its way out are not, so only some are padded).
fn pad(frame: &mut Vec<u8>) {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
}

/// The destination MAC for a destination IP: broadcast for broadcast, the
/// mapped group address for multicast, else unicast or now and then a
/// group address that does not match (filters see only bytes).
fn dst_mac_for(rng: &mut Rng, ip_first_octet: u8, ip_is_broadcast: bool) -> [u8; 6] {
    if ip_is_broadcast {
        BROADCAST_MAC
    } else if (224..240).contains(&ip_first_octet) || ip_first_octet == 0xff {
        if ip_first_octet == 0xff {
            [0x33, 0x33, 0x00, 0x00, 0x00, rng.pick(&[1, 2, 0xfb])]
        } else {
            [0x01, 0x00, 0x5e, 0x00, 0x00, rng.pick(&[1, 0xfb, 0x12])]
        }
    } else {
        match rng.below(20) {
            0 => BROADCAST_MAC,
            1 => rng.pick(&GROUP_MACS),
            _ => rng.pick(&MACS),
        }
    }
}

fn src_mac(rng: &mut Rng) -> [u8; 6] {
    if rng.chance(3) {
        // A group bit in the source: invalid on a wire, but filters must not care.
        rng.pick(&GROUP_MACS)
    } else {
        rng.pick(&MACS)
    }
}

/// An IPv4 header as the generator varies it.
#[derive(Clone)]
struct Ip4 {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    tos: u8,
    id: u16,
    /// Flags and fragment offset (DF 0x4000, MF 0x2000, offset in 8-byte units).
    frag: u16,
    /// Options, a multiple of 4 bytes, at most 40.
    options: Vec<u8>,
}

impl Ip4 {
    fn random(rng: &mut Rng, proto: u8) -> Self {
        let src = rng.pick(&V4[..33]);
        let dst = if rng.chance(3) {
            src
        } else if rng.chance(8) {
            [10, rng.u8(), rng.u8(), rng.u8()]
        } else {
            rng.pick(&V4)
        };
        let options = if rng.chance(15) {
            ip_options(rng)
        } else {
            Vec::new()
        };
        Ip4 {
            src,
            dst,
            proto,
            ttl: rng.pick(&[1, 2, 32, 63, 64, 64, 64, 128, 128, 255, 0]),
            tos: if rng.chance(20) { rng.u8() } else { 0 },
            id: if rng.chance(10) { 0 } else { rng.u16() },
            frag: if rng.chance(50) { 0x4000 } else { 0 },
            options,
        }
    }

    fn bytes(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let mut out = Vec::with_capacity(header_len + payload.len());
        out.push(0x40 | (header_len / 4) as u8);
        out.push(self.tos);
        be16(&mut out, (header_len + payload.len()) as u16);
        be16(&mut out, self.id);
        be16(&mut out, self.frag);
        out.push(self.ttl);
        out.push(self.proto);
        be16(&mut out, 0);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.options);
        out.extend_from_slice(payload);
        out
    }
}

/// IPv4 options padded to a multiple of 4: router alert (IGMP's), record
/// route, timestamp, NOPs, or the full 40 bytes.
fn ip_options(rng: &mut Rng) -> Vec<u8> {
    let mut options = match rng.below(5) {
        0 => vec![0x94, 0x04, 0x00, 0x00],
        1 => {
            let mut rr = vec![0x07, 39, 4];
            rr.extend(rng.bytes(36));
            rr
        }
        2 => {
            let mut ts = vec![0x44, 12, 5, 0];
            ts.extend(rng.bytes(8));
            ts
        }
        3 => vec![0x01; 4 * (1 + rng.below(3))],
        _ => {
            let mut rr = vec![0x07, 11, 4];
            rr.extend(rng.bytes(8));
            rr
        }
    };
    while options.len() % 4 != 0 {
        options.push(0);
    }
    options
}

fn tcp_segment(rng: &mut Rng, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut options = Vec::new();
    if rng.chance(40) || flags & 0x02 != 0 {
        options.extend_from_slice(&[0x02, 0x04, 0x05, 0xb4]);
        if rng.chance(50) {
            options.extend_from_slice(&[0x04, 0x02, 0x08, 0x0a]);
            options.extend(rng.bytes(8));
            options.extend_from_slice(&[0x01, 0x03, 0x03, 0x07]);
        }
        if rng.chance(20) {
            // Fill up to the 60-byte maximum header.
            options.resize(40, 0x01);
        }
    } else if rng.chance(20) {
        options.extend_from_slice(&[0x01, 0x01, 0x08, 0x0a]);
        options.extend(rng.bytes(8));
    }
    let payload = match rng.below(8) {
        0 => b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n".to_vec(),
        1 => {
            let mut tls = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01];
            tls.extend(rng.bytes(62));
            tls
        }
        _ => {
            let len = rng.payload_len();
            rng.bytes(len)
        }
    };
    let mut out = Vec::with_capacity(20 + options.len() + payload.len());
    be16(&mut out, sport);
    be16(&mut out, dport);
    be32(&mut out, if rng.chance(5) { 0 } else { rng.u32() });
    be32(&mut out, if flags & 0x10 != 0 { rng.u32() } else { 0 });
    out.push((((20 + options.len()) / 4) as u8) << 4 | if rng.chance(3) { 1 } else { 0 });
    out.push(flags);
    let any = rng.u16();
    be16(&mut out, rng.pick(&[0, 512, 29200, 64240, 65535, any]));
    be16(&mut out, 0);
    be16(&mut out, if flags & 0x20 != 0 { rng.u16() } else { 0 });
    out.extend_from_slice(&options);
    out.extend_from_slice(&payload);
    out
}

fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    be16(&mut out, sport);
    be16(&mut out, dport);
    be16(&mut out, (8 + payload.len()) as u16);
    be16(&mut out, 0);
    out.extend_from_slice(payload);
    out
}

/// A UDP payload: DNS queries and answers on port 53, the magic words the
/// expressions look for, RTP-like and IP-in-UDP-like first bytes.
fn udp_payload(rng: &mut Rng, dns: bool) -> Vec<u8> {
    if dns {
        let mut out = Vec::new();
        be16(&mut out, rng.u16());
        be16(&mut out, if rng.chance(50) { 0x0100 } else { 0x8180 });
        be16(&mut out, rng.pick(&[0, 1, 1, 2]));
        be16(&mut out, rng.pick(&[0, 1]));
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(b"\x07example\x03org\x00\x00\x01\x00\x01");
        return out;
    }
    let mut out = match rng.below(10) {
        0 => vec![0xde, 0xad, 0xbe, 0xef],
        1 => vec![0x01, 0x02, 0x03, 0x04],
        2 => {
            let mut v = rng.bytes(4);
            v.extend_from_slice(&[0xca, 0xfe, 0xba, 0xbe]);
            v
        }
        3 => vec![0x45, 0x00],
        4 => vec![0x80, 0x00],
        5 => vec![0x12, 0x34],
        _ => Vec::new(),
    };
    let len = rng.payload_len();
    out.extend(rng.bytes(len));
    out
}

fn icmp_message(rng: &mut Rng) -> Vec<u8> {
    let (kind, code) = match rng.below(16) {
        0..=3 => (8, 0),
        4..=6 => (0, 0),
        7..=8 => (3, rng.pick(&[0, 1, 3, 4, 13])),
        9..=10 => (11, rng.pick(&[0, 1])),
        11 => (5, rng.below(4) as u8),
        12 | 13 => (rng.pick(&[4, 12, 9, 10, 13, 14, 15, 16, 17, 18]), 0),
        14 => (rng.u8(), rng.u8()),
        _ => (8, rng.u8()),
    };
    let mut out = vec![kind, code, 0, 0];
    if matches!(kind, 3 | 4 | 5 | 11 | 12) {
        // Errors quote the offending IPv4 header and 8 bytes of it.
        out.extend_from_slice(&[
            0,
            0,
            if code == 4 { 0x05 } else { 0 },
            if code == 4 { 0xdc } else { 0 },
        ]);
        let inner = Ip4::random(rng, 17).bytes(&udp_datagram(rng.u16(), 33434, &[]));
        out.extend_from_slice(&inner);
    } else {
        be16(&mut out, rng.u16());
        be16(&mut out, rng.u16());
        let len = rng.payload_len();
        out.extend(rng.bytes(len));
    }
    out
}

/// An IPv4 packet of a random protocol, returned whole.
fn ipv4_packet(rng: &mut Rng) -> Vec<u8> {
    let proto = match rng.below(40) {
        0..=12 => 6,
        13..=22 => 17,
        23..=28 => 1,
        29 | 30 => 132,
        31 => 47,
        32 => 2,
        33 => 50,
        34 => 51,
        35 => 112,
        36 => rng.pick(&[89, 103, 9, 88, 4, 41, 108]),
        37 => 17,
        38 => 6,
        _ => rng.u8(),
    };
    ipv4_with(rng, proto)
}

fn ports(rng: &mut Rng) -> (u16, u16) {
    let port = |rng: &mut Rng| match rng.below(20) {
        0..=3 => rng.pick(&[22, 53, 80, 443]),
        4..=11 => rng.pick(&PORTS),
        12..=15 => 900 + rng.below(1200) as u16,
        _ => 1024 + rng.below(64_000) as u16,
    };
    (port(rng), port(rng))
}

fn ipv4_with(rng: &mut Rng, proto: u8) -> Vec<u8> {
    let mut ip = Ip4::random(rng, proto);
    let payload = match proto {
        6 => {
            let (sport, dport) = ports(rng);
            let flags = match rng.below(4) {
                0 => rng.u8(),
                _ => rng.pick(&[
                    0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x38, 0xc2, 0x00,
                ]),
            };
            tcp_segment(rng, sport, dport, flags)
        }
        17 => {
            let (sport, dport) = ports(rng);
            match rng.below(10) {
                0 => tunnel(rng, 6081),
                1 => tunnel(rng, 4789),
                _ => {
                    let dns = sport == 53 || dport == 53;
                    udp_datagram(sport, dport, &udp_payload(rng, dns))
                }
            }
        }
        1 => icmp_message(rng),
        132 => {
            let (sport, dport) = ports(rng);
            let mut sctp = Vec::new();
            be16(&mut sctp, sport);
            be16(&mut sctp, dport);
            sctp.extend(rng.bytes(8));
            sctp.extend_from_slice(&[1, 0, 0, 20]);
            sctp.extend(rng.bytes(16));
            sctp
        }
        47 => {
            // GRE carrying IPv4.
            let mut gre = vec![0, 0, 0x08, 0x00];
            let inner = Ip4::random(rng, 17);
            gre.extend(inner.bytes(&udp_datagram(1234, 53, &[])));
            gre
        }
        2 => {
            ip.dst = rng.pick(&[[224, 0, 0, 1], [224, 0, 0, 22], [239, 255, 255, 250]]);
            ip.ttl = 1;
            if rng.chance(70) {
                ip.options = vec![0x94, 0x04, 0x00, 0x00];
            }
            let mut igmp = vec![rng.pick(&[0x11, 0x16, 0x17, 0x22]), 0, 0, 0];
            igmp.extend_from_slice(&ip.dst);
            igmp
        }
        51 => {
            // AH, then TCP or UDP: protochain follows it.
            let next = rng.pick(&[6u8, 17, 1]);
            let mut ah = vec![next, 4, 0, 0];
            ah.extend(rng.bytes(20));
            let (sport, dport) = ports(rng);
            match next {
                6 => ah.extend(tcp_segment(rng, sport, dport, 0x10)),
                17 => ah.extend(udp_datagram(sport, dport, &[])),
                _ => ah.extend(icmp_message(rng)),
            }
            ah
        }
        112 => {
            ip.dst = [224, 0, 0, 18];
            ip.ttl = 255;
            let mut vrrp = vec![
                rng.pick(&[0x21, 0x31, 0x21, 0x12]),
                rng.u8(),
                rng.pick(&[100, 191, 255, 1]),
                1,
                0,
                1,
            ];
            vrrp.extend(rng.bytes(2));
            vrrp.extend(rng.bytes(4));
            vrrp
        }
        4 => Ip4::random(rng, 6).bytes(&tcp_segment(rng, 80, 1024, 0x02)),
        _ => {
            let len = rng.payload_len().max(8);
            rng.bytes(len)
        }
    };
    if rng.chance(12) {
        fragment(rng, &mut ip, payload)
    } else {
        ip.bytes(&payload)
    }
}

/// One fragment of `payload`: the first (MF), a middle one (MF, offset) or
/// the last (offset only); later fragments carry no transport header.
fn fragment(rng: &mut Rng, ip: &mut Ip4, payload: Vec<u8>) -> Vec<u8> {
    let offset = 1 + rng.below(180) as u16;
    match rng.below(3) {
        0 => {
            ip.frag = 0x2000;
            let cut = payload.len().min(8 * (1 + rng.below(10)));
            ip.bytes(&payload[..cut])
        }
        1 => {
            ip.frag = 0x2000 | offset;
            let len = 8 * (1 + rng.below(60));
            ip.bytes(&rng.bytes(len))
        }
        _ => {
            ip.frag = offset;
            let len = 1 + rng.below(400);
            ip.bytes(&rng.bytes(len))
        }
    }
}

/// A UDP datagram to a Geneve (6081) or VXLAN (4789) port with an inner
/// Ethernet frame (or, for Geneve, now and then a bare IPv4 packet).
fn tunnel(rng: &mut Rng, dport: u16) -> Vec<u8> {
    tunnel_in(rng, dport, true)
}

/// [`tunnel`]; `nest` allows one Geneve inside another.
fn tunnel_in(rng: &mut Rng, dport: u16, nest: bool) -> Vec<u8> {
    let any = rng.u32() & 0xff_ffff;
    let vni = rng.pick(&[10u32, 11, 0xb, 12345, 1, any]);
    let inner_ip = |rng: &mut Rng| {
        if nest && rng.chance(15) {
            let mut ip = Ip4::random(rng, 17);
            ip.frag = 0;
            return ip.bytes(&tunnel_in(rng, 6081, false));
        }
        let proto = rng.pick(&[6, 17, 1]);
        ipv4_with_inner(rng, proto)
    };
    let mut header = Vec::new();
    if dport == 6081 {
        let bare = rng.chance(25);
        header.extend_from_slice(&[0, 0]);
        be16(&mut header, if bare { 0x0800 } else { 0x6558 });
        be32(&mut header, vni << 8);
        let inner = inner_ip(rng);
        if bare {
            header.extend(inner);
        } else {
            header.extend(eth(rng.pick(&MACS), rng.pick(&MACS), 0x0800, &inner));
        }
    } else {
        header.extend_from_slice(&[if rng.chance(80) { 0x08 } else { 0 }, 0, 0, 0]);
        be32(&mut header, vni << 8);
        let inner = inner_ip(rng);
        header.extend(eth(rng.pick(&MACS), rng.pick(&MACS), 0x0800, &inner));
    }
    udp_datagram(40000 + rng.below(1000) as u16, dport, &header)
}

/// A small IPv4 packet for inside tunnels (no further tunnels in it).
fn ipv4_with_inner(rng: &mut Rng, proto: u8) -> Vec<u8> {
    let ip = Ip4::random(rng, proto);
    let (sport, dport) = ports(rng);
    let payload = match proto {
        6 => {
            let flags = rng.pick(&[0x02, 0x10, 0x18]);
            tcp_segment(rng, sport, dport, flags)
        }
        17 => udp_datagram(sport, dport, &udp_payload(rng, false)),
        _ => icmp_message(rng),
    };
    ip.bytes(&payload)
}

/// An IPv6 packet with a random extension-header chain before TCP, UDP,
/// ICMPv6 (echo, neighbour discovery, MLD, errors), SCTP or nothing.
fn ipv6_packet(rng: &mut Rng) -> Vec<u8> {
    let mut src = v6(rng.pick(&V6[..17]));
    let mut dst = if rng.chance(3) {
        src
    } else {
        v6(rng.pick(&V6))
    };
    let any = rng.u8();
    let mut hop_limit = rng.pick(&[1, 64, 64, 255, 128, any]);
    let last = match rng.below(20) {
        0..=6 => 6,
        7..=12 => 17,
        13..=18 => 58,
        _ => rng.pick(&[59, 132, 132, 47, 4, 50, 41, 108]),
    };
    let chain: &[u8] = match rng.below(14) {
        0..=6 => &[],
        7 => &[0],
        8 => &[0, 60],
        9 => &[43],
        10 => &[44],
        11 => &[0, 43, 44, 60],
        12 => &[51],
        _ => &[60],
    };
    let upper = match last {
        6 => {
            let (sport, dport) = ports(rng);
            let flags = if rng.chance(30) {
                rng.u8()
            } else {
                rng.pick(&[0x02, 0x12, 0x10, 0x18, 0x11, 0x04])
            };
            tcp_segment(rng, sport, dport, flags)
        }
        17 => {
            let (sport, dport) = ports(rng);
            udp_datagram(sport, dport, &udp_payload(rng, sport == 53 || dport == 53))
        }
        58 => {
            let kind = rng.pick(&[
                128, 129, 128, 129, 133, 134, 135, 135, 136, 137, 1, 2, 3, 4, 130, 131, 143,
            ]);
            let mut msg = vec![kind, if kind < 128 { rng.below(5) as u8 } else { 0 }, 0, 0];
            match kind {
                133..=137 => {
                    hop_limit = if rng.chance(85) { 255 } else { 64 };
                    msg.extend_from_slice(&[0; 4]);
                    if kind == 135 {
                        let target = v6(rng.pick(&V6[..16]));
                        msg.extend_from_slice(&target);
                        if rng.chance(70) {
                            dst = [
                                0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, target[13],
                                target[14], target[15],
                            ];
                        }
                    }
                    if kind == 133 {
                        dst = v6("ff02::2");
                    }
                    if kind == 134 && rng.chance(70) {
                        dst = v6("ff02::1");
                    }
                    msg.extend_from_slice(&[1, 1]);
                    msg.extend_from_slice(&rng.pick(&MACS));
                }
                130 | 131 | 143 => {
                    hop_limit = 1;
                    dst = v6(rng.pick(&["ff02::1", "ff02::16", "ff02::fb"]));
                    msg.extend(rng.bytes(20));
                }
                1..=4 => {
                    msg.extend_from_slice(&[0; 4]);
                    msg.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
                    msg.extend_from_slice(&dst);
                    msg.extend_from_slice(&src);
                    msg.extend(udp_datagram(rng.u16(), 33434, &[]));
                    std::mem::swap(&mut src, &mut dst);
                }
                _ => {
                    be16(&mut msg, rng.u16());
                    be16(&mut msg, rng.u16());
                    let len = rng.payload_len();
                    msg.extend(rng.bytes(len));
                }
            }
            msg
        }
        132 => {
            let (sport, dport) = ports(rng);
            let mut sctp = Vec::new();
            be16(&mut sctp, sport);
            be16(&mut sctp, dport);
            sctp.extend(rng.bytes(28));
            sctp
        }
        59 => Vec::new(),
        _ => rng.bytes(40),
    };
    // Build the chain from the inside out: each header names the next.
    let mut body = upper;
    let mut next = last;
    let mut later_fragment = false;
    for &header in chain.iter().rev() {
        let mut ext = vec![next];
        match header {
            44 => {
                let offset: u16 = if rng.chance(50) {
                    0
                } else {
                    1 + rng.below(100) as u16
                };
                let more = rng.chance(60) || offset == 0;
                later_fragment = offset != 0;
                ext.push(0);
                be16(&mut ext, offset << 3 | u16::from(more));
                be32(&mut ext, rng.u32());
            }
            51 => {
                ext.push(4);
                ext.extend(rng.bytes(22));
            }
            43 => {
                ext.extend_from_slice(&[2, 0, 1]);
                ext.extend_from_slice(&[0; 4]);
                ext.extend_from_slice(&v6("2001:db8::2"));
            }
            _ => {
                let units = rng.below(2);
                ext.push(units as u8);
                if header == 0 && rng.chance(50) {
                    // Router alert, as MLD sends it.
                    ext.extend_from_slice(&[5, 2, 0, 0, 1, 0]);
                } else {
                    ext.extend_from_slice(&[1, 4, 0, 0, 0, 0]);
                }
                ext.extend(std::iter::repeat_n(0, 8 * units));
            }
        }
        if later_fragment && header == 44 {
            // A later fragment carries the middle of the upper layer.
            let len = 8 + rng.below(200);
            body = rng.bytes(len);
        }
        ext.extend_from_slice(&body);
        body = ext;
        next = header;
    }
    let mut out = Vec::with_capacity(40 + body.len());
    let tc_flow: u32 = if rng.chance(30) {
        rng.u32() & 0x0fff_ffff
    } else {
        0
    };
    be32(&mut out, 0x6000_0000 | tc_flow);
    be16(&mut out, body.len() as u16);
    out.push(next);
    out.push(hop_limit);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&body);
    out
}

/// ARP (operations 1, 2) or RARP (3, 4) on Ethernet/IPv4.
fn arp_packet(rng: &mut Rng, rarp: bool) -> Vec<u8> {
    let mut out = vec![0, 1, 0x08, 0x00, 6, 4];
    let op = if rarp {
        rng.pick(&[3, 4])
    } else {
        rng.pick(&[1, 2, 1])
    };
    be16(&mut out, if rng.chance(3) { rng.u16() } else { op });
    out.extend_from_slice(&rng.pick(&MACS));
    out.extend_from_slice(&if rarp && op == 3 {
        [0; 4]
    } else {
        rng.pick(&V4[..32])
    });
    out.extend_from_slice(&if op == 1 { [0; 6] } else { rng.pick(&MACS) });
    out.extend_from_slice(&rng.pick(&V4[..32]));
    out
}

/// A frame of some other EtherType: LLDP, DECnet, AppleTalk, AARP, IPX,
/// LAT, SCA, MOP, loopback, MACsec, EAPOL, pause, or a random one.
fn other_ethertype(rng: &mut Rng) -> Vec<u8> {
    let src = src_mac(rng);
    let kind = rng.below(14);
    match kind {
        0 => {
            let mut lldp = vec![0x02, 0x07, 0x04];
            lldp.extend_from_slice(&src);
            lldp.extend_from_slice(&[0x04, 0x03, 0x05, b'p', b'1', 0x06, 0x02, 0x00, 0x78, 0, 0]);
            eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], src, 0x88cc, &lldp)
        }
        1..=3 => eth(
            [0xaa, 0x00, 0x04, 0x00, 0x01, 0x04],
            src,
            0x6003,
            &decnet(rng),
        ),
        4 => eth(BROADCAST_MAC, src, 0x809b, &rng.bytes(30)),
        5 => eth(BROADCAST_MAC, src, 0x80f3, &rng.bytes(28)),
        6 => {
            let mut ipx = vec![0xff, 0xff];
            ipx.extend(rng.bytes(28));
            eth(rng.pick(&MACS), src, 0x8137, &ipx)
        }
        7 => eth([0x09, 0, 0x2b, 0, 0, 0x0f], src, 0x6004, &rng.bytes(40)),
        8 => eth(
            rng.pick(&MACS),
            src,
            rng.pick(&[0x6007, 0x6001, 0x6002]),
            &rng.bytes(40),
        ),
        9 => eth(src, src, 0x9000, &rng.bytes(40)),
        10 => eth(rng.pick(&MACS), src, 0x88e5, &rng.bytes(48)),
        11 => eth([0x01, 0x80, 0xc2, 0, 0, 0x03], src, 0x888e, &rng.bytes(20)),
        12 => eth(
            [0x01, 0x80, 0xc2, 0, 0, 0x01],
            src,
            0x8808,
            &[0, 1, 0xff, 0xff],
        ),
        _ => {
            let ethertype = match rng.below(4) {
                0 => 0x0600 + rng.below(0xf9ff) as u16,
                1 | 2 => rng.pick(&[0x0600, 0x0601, 0x05dd, 0xffff, 0x8848, 0x9100]),
                _ => rng.u16() | 0x0600,
            };
            let len = rng.payload_len();
            eth(rng.pick(&MACS), src, ethertype, &rng.bytes(len))
        }
    }
}

/// DECnet Phase IV routing header, short or long, with or without padding,
/// in the layout libpcap's `decnet src|dst|host` looks at.
fn decnet(rng: &mut Rng) -> Vec<u8> {
    let addr = |rng: &mut Rng| -> u16 {
        let any = rng.u16();
        rng.pick(&[
            1025,
            1026,
            10 * 1024 + 2,
            63 * 1024 + 1023,
            50 * 1024 + 764,
            1,
            120,
            17 * 1024,
            any,
        ])
    };
    let (dst, src) = (addr(rng), addr(rng));
    let mut body = Vec::new();
    let padded = rng.chance(30);
    if padded {
        body.push(0x81);
    }
    if rng.chance(50) {
        body.push(0x02 | if rng.chance(50) { 0x08 } else { 0 });
        body.extend_from_slice(&dst.to_le_bytes());
        body.extend_from_slice(&src.to_le_bytes());
        body.push(0);
    } else {
        body.extend_from_slice(&[0x06 | if rng.chance(50) { 0x20 } else { 0 }, 0, 0]);
        body.extend_from_slice(&[0xaa, 0, 4, 0]);
        body.extend_from_slice(&dst.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0xaa, 0, 4, 0]);
        body.extend_from_slice(&src.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0]);
    }
    body.extend(rng.bytes(20));
    let mut out = Vec::new();
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend(body);
    out
}

/// An 802.3 frame (length field) with an LLC header: STP, ISO (CLNP, ES-IS,
/// IS-IS PDUs of every type), NetBEUI, IPX (LLC, SNAP and raw), SNAP with
/// IPv4/AppleTalk/AARP, and random SAPs; I, S and U control fields.
fn llc_frame(rng: &mut Rng) -> Vec<u8> {
    let src = src_mac(rng);
    let u_ctl = |rng: &mut Rng| {
        rng.pick(&[
            0x03u8, 0x6f, 0x7f, 0x43, 0x53, 0x63, 0x73, 0x0f, 0x1f, 0x87, 0x97, 0xaf, 0xbf, 0xe3,
            0xf3,
        ])
    };
    let (dst, body) = match rng.below(10) {
        0 | 1 => {
            let mut stp = vec![
                0x42,
                0x42,
                0x03,
                0,
                0,
                rng.pick(&[0, 2, 3]),
                rng.pick(&[0, 2, 0x80]),
            ];
            stp.extend(rng.bytes(31));
            ([0x01, 0x80, 0xc2, 0, 0, 0], stp)
        }
        2 | 3 => {
            let nlpid = rng.pick(&[0x81, 0x82, 0x83, 0x83, 0x83]);
            let mut iso = vec![0xfe, 0xfe, 0x03, nlpid, 27, 1, 0];
            let pdu = if nlpid == 0x83 {
                let any = rng.u8() & 0x1f;
                rng.pick(&[15, 16, 17, 18, 20, 24, 25, 26, 27, 32, any])
            } else {
                rng.u8()
            };
            iso.push(pdu);
            iso.extend(rng.bytes(40));
            ([0x01, 0x80, 0xc2, 0, 0, rng.pick(&[0x14, 0x15])], iso)
        }
        4 => {
            let mut netbeui = vec![0xf0, 0xf0, u_ctl(rng)];
            netbeui.extend(rng.bytes(40));
            ([0x03, 0, 0, 0, 0, 1], netbeui)
        }
        5 => {
            let mut ipx = match rng.below(3) {
                0 => vec![0xe0, 0xe0, 0x03],
                1 => vec![0xaa, 0xaa, 0x03, 0, 0, 0, 0x81, 0x37],
                _ => vec![0xff, 0xff],
            };
            ipx.extend(rng.bytes(30));
            (BROADCAST_MAC, ipx)
        }
        6 => {
            let mut snap = vec![0xaa, 0xaa, 0x03];
            match rng.below(3) {
                0 => {
                    snap.extend_from_slice(&[0, 0, 0, 0x08, 0x00]);
                    snap.extend(ipv4_with_inner(rng, 17));
                }
                1 => {
                    snap.extend_from_slice(&[0x08, 0, 0x07, 0x80, 0x9b]);
                    snap.extend(rng.bytes(20));
                }
                _ => {
                    snap.extend_from_slice(&[0, 0, 0, 0x80, 0xf3]);
                    snap.extend(rng.bytes(20));
                }
            }
            (rng.pick(&MACS), snap)
        }
        _ => {
            // Random SAPs; I-frames (bit 0 clear) and S-frames have a
            // two-byte control field, U-frames one byte.
            let any = rng.u8();
            let dsap = rng.pick(&[0x00, 0x01, 0x06, any, any]);
            let ssap = if rng.chance(50) { dsap } else { rng.u8() };
            let mut llc = vec![dsap, ssap];

            match rng.below(3) {
                0 => llc.extend_from_slice(&[rng.u8() & 0xfe, rng.u8()]),
                1 => llc.extend_from_slice(&[rng.pick(&[0x01, 0x05, 0x09, 0x0d]), rng.u8()]),
                _ => llc.push(u_ctl(rng)),
            }
            let len = rng.payload_len().min(1400);
            llc.extend(rng.bytes(len));
            (rng.pick(&MACS), llc)
        }
    };
    let mut frame = eth(dst, src, body.len() as u16, &body);
    if rng.chance(5) {
        // A length field that disagrees with the frame.
        frame[12..14].copy_from_slice(&rng.pick(&[0u16, 1500, 46]).to_be_bytes());
    }
    frame
}

/// The L3 packets VLANs, MPLS and PPPoE carry: (EtherType, bytes).
fn inner_l3(rng: &mut Rng) -> (u16, Vec<u8>) {
    match rng.below(10) {
        0..=5 => (0x0800, ipv4_packet(rng)),
        6..=8 => (0x86dd, ipv6_packet(rng)),
        _ => (0x0806, arp_packet(rng, false)),
    }
}

fn vlan_tci(rng: &mut Rng) -> u16 {
    let vid = rng.pick(&[
        0u16, 1, 5, 8, 10, 100, 100, 200, 200, 300, 500, 2014, 2061, 4094, 4095,
    ]);
    let vid = if rng.chance(15) {
        rng.u16() & 0x0fff
    } else {
        vid
    };
    let pcp = if rng.chance(30) {
        rng.below(8) as u16
    } else {
        0
    };
    pcp << 13 | vid
}

/// 802.1Q, QinQ (0x88a8 or 0x8100 outer) and triple tags, around IPv4,
/// IPv6, ARP, MPLS or an LLC payload.
fn vlan_frame(rng: &mut Rng) -> Vec<u8> {
    let tpids: &[u16] = match rng.below(10) {
        0..=5 => &[0x8100],
        6 => &[0x88a8, 0x8100],
        7 => &[0x8100, 0x8100],
        8 => &[0x9100, 0x8100],
        _ => &[0x88a8, 0x8100, 0x8100],
    };
    let (ethertype, payload) = match rng.below(12) {
        0 => {
            let llc = llc_frame(rng);
            ((llc.len() - 14) as u16, llc[14..].to_vec())
        }
        1 => (0x8847, mpls_stack(rng)),
        _ => inner_l3(rng),
    };
    let mut tcis: Vec<u16> = tpids.iter().map(|_| vlan_tci(rng)).collect();
    if ethertype <= 1500 && rng.chance(50) {
        // LLC in VLAN 8, as in libpcap's tests.
        tcis[0] = 8;
    } else if tpids.len() == 2 && rng.chance(20) {
        tcis = vec![2061, 2014];
    }
    let mut body = Vec::new();
    for (i, tci) in tcis.into_iter().enumerate() {
        if i > 0 {
            be16(&mut body, tpids[i]);
        }
        be16(&mut body, tci);
    }
    be16(&mut body, ethertype);
    body.extend(payload);
    let dst = dst_mac_for(rng, 10, false);
    eth(dst, src_mac(rng), tpids[0], &body)
}

/// An MPLS label stack of 1-3 entries (bottom-of-stack bit on the last,
/// now and then missing) over IPv4 or IPv6.
fn mpls_stack(rng: &mut Rng) -> Vec<u8> {
    // Now and then one of the stacks the expressions name, in full.
    let named: &[u32] = match rng.below(12) {
        0 => &[100, 200, 300],
        1 => &[100_000, 1024],
        2 => &[12345, 6789],
        3 => &[7, 1024],
        4 => &[100, 200],
        _ => &[],
    };
    let depth = if named.is_empty() {
        1 + rng.below(3)
    } else {
        named.len()
    };
    let mut out = Vec::new();
    for i in 0..depth {
        let label: u32 = if let Some(&label) = named.get(i) {
            label
        } else if rng.chance(15) {
            rng.u32() & 0xf_ffff
        } else {
            rng.pick(&[
                0, 3, 16, 100, 100, 200, 300, 123, 1024, 6789, 12345, 12345, 100_000, 1_048_575,
            ])
        };
        let bos = u32::from(i + 1 == depth && !rng.chance(3));
        be32(
            &mut out,
            label << 12
                | (rng.below(8) as u32) << 9
                | bos << 8
                | u32::from(rng.pick(&[1u8, 64, 255])),
        );
    }
    let (_, inner) = if rng.chance(70) {
        (0x0800, ipv4_packet(rng))
    } else {
        (0x86dd, ipv6_packet(rng))
    };
    out.extend(inner);
    out
}

/// Frames for combinations the random ones hit only by luck: both
/// addresses of a pair in one packet, an address behind a given VLAN or
/// MPLS label, rare ICMP types.
fn targeted(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mac = |rng: &mut Rng| rng.pick(&MACS);
    let ip4 = |rng: &mut Rng, src: [u8; 4], dst: [u8; 4], proto: u8| Ip4 {
        src,
        dst,
        proto,
        ..Ip4::random(rng, proto)
    };
    let tcp4 = |rng: &mut Rng, src, dst, sport, dport| {
        let segment = tcp_segment(rng, sport, dport, 0x18);
        ip4(rng, src, dst, 6).bytes(&segment)
    };
    let ip6 = |src: &str, dst: &str, next: u8, payload: &[u8]| {
        let mut out = vec![0x60, 0, 0, 0];
        be16(&mut out, payload.len() as u16);
        out.extend_from_slice(&[next, 64]);
        out.extend_from_slice(&v6(src));
        out.extend_from_slice(&v6(dst));
        out.extend_from_slice(payload);
        out
    };
    let mut frames = Vec::new();
    for _ in 0..2 {
        let (a, b) = (mac(rng), mac(rng));
        frames.push(eth(a, b, 0xffff, &rng.bytes(46)));

        let segment = tcp_segment(rng, 40000, 80, 0x02);
        frames.push(eth(
            a,
            b,
            0x86dd,
            &ip6("2001:db8::1", "2001:db8::2", 6, &segment),
        ));
        let packet = ip4(rng, [192, 0, 2, 20], [192, 0, 2, 20], 17).bytes(&udp_datagram(9, 9, &[]));
        frames.push(eth(a, b, 0x0800, &packet));
        let packet = ip4(rng, [0, 0, 0, 0], [255; 4], 17).bytes(&udp_datagram(68, 67, &[1; 240]));
        frames.push(eth(BROADCAST_MAC, b, 0x0800, &packet));
        let mut sctp = Vec::new();
        be16(&mut sctp, 9);
        be16(&mut sctp, 9);
        sctp.extend(rng.bytes(28));
        let packet = ip4(rng, [10, 0, 0, 1], [10, 0, 0, 2], 132).bytes(&sctp);
        frames.push(eth(a, b, 0x0800, &packet));
        let mut icmp = vec![14, 0, 0, 0];
        icmp.extend(rng.bytes(16));
        let packet = ip4(rng, [10, 0, 0, 2], [10, 0, 0, 1], 1).bytes(&icmp);
        frames.push(eth(a, b, 0x0800, &packet));
        // ARP for 192.1.2.254, RARP about 1.2.3.4.
        let mut arp = arp_packet(rng, false);
        arp[7] = 1;
        arp[24..28].copy_from_slice(&[192, 1, 2, 254]);
        frames.push(eth(BROADCAST_MAC, a, 0x0806, &arp));
        let mut rarp = arp_packet(rng, true);
        rarp[7] = 4;
        rarp[24..28].copy_from_slice(&[1, 2, 3, 4]);
        frames.push(eth(a, b, 0x8035, &rarp));
        // VLAN 100 in 200 and alone, TCP port 80 inside.
        for tags in [&[(0x88a8, 100), (0x8100, 200)][..], &[(0x8100, 100)][..]] {
            let mut body = Vec::new();
            for (i, &(tpid, vid)) in tags.iter().enumerate() {
                if i > 0 {
                    be16(&mut body, tpid);
                }
                be16(&mut body, vid);
            }
            be16(&mut body, 0x0800);
            body.extend(tcp4(rng, [10, 0, 0, 1], [10, 0, 0, 2], 40000, 80));
            frames.push(eth(a, b, tags[0].0, &body));
        }
        // MPLS 12345 over IPv4 from 1.2.3.4 and over IPv6 from 1234:5678:9abc::123.
        let mut mpls = Vec::new();
        be32(&mut mpls, 12345 << 12 | 1 << 8 | 64);
        let mut v4 = mpls.clone();
        v4.extend(tcp4(rng, [1, 2, 3, 4], [10, 0, 0, 1], 179, 40000));
        frames.push(eth(a, b, 0x8847, &v4));
        let udp = udp_datagram(53, 53, &udp_payload(rng, true));
        mpls.extend(ip6("1234:5678:9abc::123", "2001:db8::1", 17, &udp));
        frames.push(eth(a, b, 0x8847, &mpls));
        // Geneve with SSH inside.
        let inner = tcp4(rng, [10, 0, 0, 2], [10, 0, 0, 1], 22, 50000);
        let mut geneve = vec![0, 0, 0x65, 0x58, 0, 0, 10, 0];
        geneve.extend(eth(mac(rng), mac(rng), 0x0800, &inner));
        let packet = ip4(rng, [192, 168, 1, 1], [192, 168, 1, 10], 17)
            .bytes(&udp_datagram(40001, 6081, &geneve));
        frames.push(eth(a, b, 0x0800, &packet));
    }
    frames
}

fn mpls_frame(rng: &mut Rng) -> Vec<u8> {
    let ethertype = if rng.chance(85) { 0x8847 } else { 0x8848 };
    eth(rng.pick(&MACS), src_mac(rng), ethertype, &mpls_stack(rng))
}

/// PPPoE discovery (PADI/PADO/PADR/PADS/PADT) or session frames carrying
/// IPv4 (PPP 0x0021), IPv6 (0x0057), MPLS (0x0281) or LCP.
fn pppoe_frame(rng: &mut Rng) -> Vec<u8> {
    let any = rng.u16();
    let session = rng.pick(&[0u16, 1, 0x27, 0x27, 0x3b, 1234, 0x1234, 65535, any]);
    if rng.chance(25) {
        let code = rng.pick(&[0x09, 0x07, 0x19, 0x65, 0xa7]);
        let mut body = vec![0x11, code];
        be16(
            &mut body,
            if code == 0x09 || code == 0x07 {
                0
            } else {
                session
            },
        );
        let tags = [0x01, 0x01, 0x00, 0x00, 0x01, 0x03, 0x00, 0x04, 1, 2, 3, 4];
        be16(&mut body, tags.len() as u16);
        body.extend_from_slice(&tags);
        let dst = if code == 0x09 {
            BROADCAST_MAC
        } else {
            rng.pick(&MACS)
        };
        return eth(dst, src_mac(rng), 0x8863, &body);
    }
    let (proto, payload): (u16, Vec<u8>) = match rng.below(10) {
        0..=5 => (0x0021, ipv4_packet(rng)),
        6..=7 => (0x0057, ipv6_packet(rng)),
        8 => (0x0281, mpls_stack(rng)),
        _ => (0xc021, vec![1, 1, 0, 4]),
    };
    let mut body = vec![0x11, 0x00];
    be16(&mut body, session);
    be16(&mut body, (payload.len() + 2) as u16);
    be16(&mut body, proto);
    body.extend(payload);
    eth(rng.pick(&MACS), src_mac(rng), 0x8864, &body)
}

/// Wraps an L3 packet in a plain Ethernet header with a fitting
/// destination MAC, padded to 60 bytes half of the time.
fn plain(rng: &mut Rng, ethertype: u16, packet: Vec<u8>) -> Vec<u8> {
    let dst = match ethertype {
        0x0800 => dst_mac_for(rng, packet[16], packet[16..20] == [255; 4]),
        0x86dd => dst_mac_for(rng, packet[24], false),
        _ => {
            if rng.chance(50) {
                BROADCAST_MAC
            } else {
                rng.pick(&MACS)
            }
        }
    };
    let mut frame = eth(dst, src_mac(rng), ethertype, &packet);
    if rng.chance(50) {
        pad(&mut frame);
    }
    frame
}

/// Builds one frame of a kind.
type MakeFrame = fn(&mut Rng) -> Vec<u8>;

/// The conformance frames, identical on every call: about 4 400 frames,
/// every kind of the module documentation's list, then truncated copies.
pub fn conformance_frames() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x6e65_7472_6179_2031);
    let mut frames = Vec::new();
    // Every TCP flag combination once, over IPv4.
    for flags in 0..=255u8 {
        let ip = Ip4::random(&mut rng, 6);
        let (sport, dport) = ports(&mut rng);
        let segment = tcp_segment(&mut rng, sport, dport, flags);
        frames.push(plain(&mut rng, 0x0800, ip.bytes(&segment)));
    }
    let kinds: [(usize, MakeFrame); 10] = [
        (850, |rng| {
            let packet = ipv4_packet(rng);
            plain(rng, 0x0800, packet)
        }),
        (500, |rng| {
            let packet = ipv6_packet(rng);
            plain(rng, 0x86dd, packet)
        }),
        (150, |rng| {
            let rarp = rng.chance(30);
            let packet = arp_packet(rng, rarp);
            plain(rng, if rarp { 0x8035 } else { 0x0806 }, packet)
        }),
        (150, other_ethertype),
        (200, llc_frame),
        (400, vlan_frame),
        (220, mpls_frame),
        (220, pppoe_frame),
        (60, |rng| {
            // Tunnels in plain IPv4 (they also appear among the UDP above).
            let mut ip = Ip4::random(rng, 17);
            ip.frag = 0;
            let dport = if rng.chance(60) { 6081 } else { 4789 };
            let packet = ip.bytes(&tunnel(rng, dport));
            plain(rng, 0x0800, packet)
        }),
        (30, |rng| {
            // Noise: random bytes after a random EtherType.
            let len = 14 + rng.below(100);
            rng.bytes(len)
        }),
    ];
    let mut firsts = Vec::new();
    for (count, make) in kinds {
        firsts.push(frames.len());
        for _ in 0..count {
            frames.push(make(&mut rng));
        }
    }
    frames.extend(targeted(&mut rng));
    // Truncated copies: the first 12 frames of every kind at every cut,
    // then a random cut of every fifth frame.
    let whole = frames.len();
    let mut truncated = Vec::new();
    for &first in &firsts {
        for frame in &frames[first..first + 12] {
            for cut in CUTS {
                if cut < frame.len() {
                    truncated.push(frame[..cut].to_vec());
                }
            }
        }
    }
    for frame in frames[..whole].iter().step_by(5) {
        let cut = 1 + rng.below(frame.len().clamp(2, 120) - 1);
        truncated.push(frame[..cut].to_vec());
    }
    frames.extend(truncated);
    frames
}

/// The header of a classic pcap file: little-endian, microsecond
/// timestamps, version 2.4, snaplen [`PCAP_SNAPLEN`], linktype 1 (Ethernet).
pub(crate) fn pcap_header() -> Vec<u8> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&PCAP_SNAPLEN.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    header
}

/// Writes `frames` to a classic pcap file (microsecond timestamps, linktype
/// 1 Ethernet, snaplen [`PCAP_SNAPLEN`]); frame `i` gets the timestamp `i`
/// seconds and 0 microseconds, and caplen = wirelen = its length.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(&pcap_header())?;
    for (i, frame) in frames.iter().enumerate() {
        let seconds = u32::try_from(i).map_err(io::Error::other)?;
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        if len > PCAP_SNAPLEN {
            return Err(io::Error::other(format!(
                "frame {i} longer than the snaplen"
            )));
        }
        out.write_all(&seconds.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(frame)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_sized() {
        let frames = conformance_frames();
        assert_eq!(frames, conformance_frames());
        assert!(
            (3000..=5000).contains(&frames.len()),
            "{} frames",
            frames.len()
        );
        assert!(
            frames
                .iter()
                .all(|frame| !frame.is_empty() && frame.len() <= 1600)
        );
        for cut in CUTS {
            assert!(
                frames.iter().filter(|frame| frame.len() == cut).count() >= 10,
                "cut {cut}"
            );
        }
    }
}

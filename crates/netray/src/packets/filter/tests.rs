//! Filter tests: parser errors, compiled semantics on crafted frames, and
//! the same frames and filters run through `tcpdump -r` (when installed).

use std::{io::Write as _, process::Command};

use etherparse::{PacketBuilder, VlanId};

use super::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const V4_A: [u8; 4] = [10, 0, 0, 1];
const V4_B: [u8; 4] = [10, 0, 1, 2];
const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

fn udp4(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .udp(sport, dport)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

fn tcp4(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_B, V4_A, 64)
        .tcp(sport, dport, 1, 1000)
        .write(&mut out, b"")
        .unwrap();
    out
}

fn udp6(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_A, V6_B, 64)
        .udp(sport, dport)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

fn tcp6(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(V6_B, V6_A, 64)
        .tcp(sport, dport, 1, 1000)
        .write(&mut out, b"x")
        .unwrap();
    out
}

fn icmp4() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

fn icmp6() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_A, V6_B, 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

fn vlan_udp4(id: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(id).unwrap())
        .ipv4(V4_A, V4_B, 64)
        .udp(1000, dport)
        .write(&mut out, b"v")
        .unwrap();
    out
}

fn qinq_udp6(outer: u16, inner: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(
            VlanId::try_new(outer).unwrap(),
            VlanId::try_new(inner).unwrap(),
        )
        .ipv6(V6_A, V6_B, 64)
        .udp(1000, 53)
        .write(&mut out, b"q")
        .unwrap();
    out
}

/// ARP request: who has `target`, tell `sender` (hand-built: 42 bytes).
fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&sender);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target);
    out
}

/// A later IPv4 fragment (offset 8 units) of a UDP datagram to port 53:
/// what follows the IP header is payload, not ports.
fn udp4_later_fragment() -> Vec<u8> {
    let mut frame = udp4(53, 53);
    frame[14 + 6] = 0x00;
    frame[14 + 7] = 0x08;
    frame
}

/// IPv6 UDP to port 53 behind a Fragment header (first fragment).
fn udp6_fragment_header() -> Vec<u8> {
    let frame = udp6(1000, 53);
    let mut out = frame[..14 + 40].to_vec();
    out[14 + 6] = 44;
    let payload_len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(&frame[14 + 40..]);
    out
}

/// IPv6 UDP behind a hop-by-hop header (which libpcap does not walk).
fn udp6_hop_by_hop() -> Vec<u8> {
    let frame = udp6(1000, 53);
    let mut out = frame[..14 + 40].to_vec();
    out[14 + 6] = 0;
    let payload_len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[14 + 40..]);
    out
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("udp4 1000>53", udp4(1000, 53)),
        ("udp4 53>1000", udp4(53, 1000)),
        ("udp4 5000>5001", udp4(5000, 5001)),
        ("tcp4 80>40000", tcp4(80, 40000)),
        ("udp6 1000>53", udp6(1000, 53)),
        ("tcp6 443>50000", tcp6(443, 50000)),
        ("icmp4", icmp4()),
        ("icmp6", icmp6()),
        ("vlan100 udp4", vlan_udp4(100, 53)),
        ("vlan200 udp4", vlan_udp4(200, 7)),
        ("qinq 10/20 udp6", qinq_udp6(10, 20)),
        ("arp A->B", arp(V4_A, V4_B)),
        ("arp other", arp([192, 168, 0, 1], [192, 168, 0, 2])),
        ("udp4 later fragment", udp4_later_fragment()),
        ("udp6 frag header", udp6_fragment_header()),
        ("udp6 hop-by-hop", udp6_hop_by_hop()),
    ]
}

/// Filters the tcpdump comparison runs: everything the language supports.
const FILTERS: &[&str] = &[
    "",
    "ip",
    "ip6",
    "arp",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "port 53",
    "src port 53",
    "dst port 53",
    "udp port 53",
    "tcp port 80",
    "not port 53",
    "portrange 5000-5001",
    "dst portrange 50-60",
    "src or dst port 53",
    "src and dst port 53",
    "host 10.0.0.1",
    "src host 10.0.0.1",
    "dst host 10.0.0.1",
    "arp host 10.0.1.2",
    "ip host 10.0.1.2",
    "host fd00::1",
    "dst host fd00::1",
    "ip6 src host fd00:0:0:1::2",
    "net 10.0.0.0/24",
    "src net 10.0.0.0/16",
    "net 192.168.0.0/16",
    "net fd00::/64",
    "net fd00:0:0:1::/64",
    "net 0.0.0.0/0",
    "host 10.0.0.1 or 10.0.1.2",
    "port 53 or 5001",
    "udp and not port 53",
    "icmp or icmp6 or arp",
    "tcp || (udp && !port 53)",
    "udp or tcp and port 80",
    "not (ip or ip6)",
    "vlan",
    "vlan 100",
    "vlan and ip",
    "vlan 100 and port 53",
    "vlan 200 and udp",
    "vlan and vlan",
    "vlan 10 and vlan 20 and ip6",
    "vlan and vlan and port 53",
    "ip and vlan",
    "not vlan and udp",
    "src and dst host 10.0.0.1",
];

fn expected(name: &str, filter: &str) -> Option<bool> {
    // A few hand-checked expectations (the tcpdump comparison checks all).
    Some(match (name, filter) {
        ("udp4 1000>53", "port 53") => true,
        ("udp4 later fragment", "port 53") => false,
        ("udp4 later fragment", "udp") => true,
        ("udp6 frag header", "udp") => true,
        ("udp6 frag header", "port 53") => false,
        ("udp6 hop-by-hop", "udp") => false,
        ("vlan100 udp4", "ip") => false,
        ("vlan100 udp4", "vlan and ip") => true,
        ("vlan100 udp4", "vlan 100 and port 53") => true,
        ("vlan200 udp4", "vlan 100 and port 53") => false,
        ("qinq 10/20 udp6", "vlan 10 and vlan 20 and ip6") => true,
        ("qinq 10/20 udp6", "vlan and ip") => false,
        ("arp A->B", "host 10.0.0.1") => true,
        ("arp A->B", "ip host 10.0.1.2") => false,
        ("arp A->B", "arp host 10.0.1.2") => true,
        ("tcp4 80>40000", "udp or tcp and port 80") => true,
        ("udp4 1000>53", "udp or tcp and port 80") => false,
        ("tcp6 443>50000", "ip6 src host fd00:0:0:1::2") => true,
        ("udp6 1000>53", "net fd00:0:0:1::/64") => true,
        ("icmp6", "net fd00:0:0:1::/64") => true,
        _ => return None,
    })
}

#[test]
fn hand_checked_expectations() {
    let mut checked = 0;
    for (name, frame) in corpus() {
        for filter in FILTERS {
            if let Some(want) = expected(name, filter) {
                let program = Program::compile(filter).unwrap();
                assert_eq!(program.matches(&frame), want, "{filter:?} on {name}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 20);
}

#[test]
fn every_filter_compiles_within_bounds() {
    for filter in FILTERS {
        let program = Program::compile(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"));
        assert!(program.insns().len() <= MAX_INSNS, "{filter:?}");
        // Jumps stay inside the program and end at a return.
        for (i, insn) in program.insns().iter().enumerate() {
            if insn.op == OP_RANGE {
                assert!(i + 1 + usize::from(insn.jt) < program.insns().len());
                assert!(i + 1 + usize::from(insn.jf) < program.insns().len());
            }
        }
        let raw = program.to_raw();
        assert_eq!(raw.len as usize, program.insns().len());
        assert_eq!(
            run(&raw.insns, &Summary::parse(&udp4(1, 2))),
            program.matches(&udp4(1, 2))
        );
    }
}

#[test]
fn bare_address_is_host() {
    // An extension: libpcap rejects a bare address as the first primitive.
    assert_eq!(
        Program::compile("10.0.0.1").unwrap().insns(),
        Program::compile("host 10.0.0.1").unwrap().insns()
    );
    assert_eq!(
        Program::compile("fd00::1 or fd00::2").unwrap().insns(),
        Program::compile("host fd00::1 or host fd00::2")
            .unwrap()
            .insns()
    );
}

#[test]
fn empty_filter_matches_everything() {
    let program = Program::compile("   ").unwrap();
    assert_eq!(program, Program::default());
    assert!(program.matches(&[]));
    assert!(program.matches(&arp(V4_A, V4_B)));
}

#[test]
fn truncated_frames_never_panic() {
    for (_, frame) in corpus() {
        for len in 0..frame.len() {
            let _ = Summary::parse(&frame[..len]);
        }
    }
}

#[test]
fn summary_fields() {
    let s = Summary::parse(&vlan_udp4(100, 53));
    assert_eq!(s.fields[usize::from(field::ETHER)], 0x1_0800);
    assert_eq!(s.fields[usize::from(field::VLAN_ID0)], 100);
    assert_eq!(s.fields[usize::from(field::PROTO)], 17);
    assert_eq!(s.fields[usize::from(field::PORTS)], 1);
    assert_eq!(s.fields[usize::from(field::DPORT)], 53);
    assert_eq!(s.fields[usize::from(field::SRC)], 0x0a00_0001);
    let s = Summary::parse(&tcp6(443, 50000));
    assert_eq!(s.fields[usize::from(field::SRC + 1)], 1);
    assert_eq!(s.fields[usize::from(field::DST + 3)], 1);
}

fn error(filter: &str) -> String {
    Program::compile(filter).unwrap_err().to_string()
}

#[test]
fn clear_errors() {
    assert_eq!(
        error("greater 100"),
        "unsupported filter primitive 'greater' at column 1"
    );
    assert_eq!(
        error("udp and ether host 1:2:3:4:5:6"),
        "unsupported filter primitive 'ether' at column 9"
    );
    assert!(
        error("foo").starts_with("unsupported filter primitive 'foo'"),
        "{}",
        error("foo")
    );
    assert!(error("host example.com").contains("not an IPv4 or IPv6 address"));
    assert_eq!(
        error("port"),
        "unexpected end of filter: expected a value at column 5"
    );
    assert_eq!(
        error("(udp"),
        "unexpected end of filter: missing ')' at column 5"
    );
    assert_eq!(error("udp)"), "unexpected ')' at column 4");
    assert_eq!(
        error("udp and"),
        "unexpected end of filter: expected a primitive at column 8"
    );
    assert!(error("port 70000").contains("not a port number"));
    assert!(error("port domain").contains("service names"));
    assert!(error("net 10.0.0.1/8").contains("non-network bits"));
    assert!(error("net 10.0.0.0/33").contains("prefix length"));
    assert!(error("tcp host 10.0.0.1").contains("'tcp' cannot qualify 'host'"));
    assert!(error("ip port 53").contains("cannot qualify a port"));
    assert!(error("ip6 host 10.0.0.1").contains("'ip6' cannot qualify"));
    assert!(error("vlan 5000").contains("VLAN ID"));
    assert!(error("vlan and vlan and vlan").contains("at most 2 'vlan'"));
    assert_eq!(
        error("udp $ 1"),
        "unsupported character '$' in filter at column 5"
    );
    assert!(error("icmp[0] == 8").contains("unsupported"));
    let long = (0..20)
        .map(|i| format!("host fd00::{i}"))
        .collect::<Vec<_>>()
        .join(" or ");
    assert!(error(&long).starts_with("filter too complex"));
}

/// Writes `frames` as a classic pcap whose packet `i` has timestamp `i` s.
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    file.write_all(&header).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let mut record = Vec::new();
        record.extend_from_slice(&(i as u32).to_le_bytes());
        record.extend_from_slice(&0u32.to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(frame);
        file.write_all(&record).unwrap();
    }
}

/// Indexes of the packets `tcpdump -r` matches (None: no tcpdump here).
fn tcpdump_matches(pcap: &std::path::Path, filter: &str) -> Option<Vec<usize>> {
    let output = Command::new("tcpdump")
        .args(["-n", "-tt", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .ok()?;
    // libpcap's optimizer reports filters that can never match as errors.
    if String::from_utf8_lossy(&output.stderr).contains("expression rejects all packets") {
        return Some(Vec::new());
    }
    assert!(
        output.status.success(),
        "tcpdump {filter:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split('.').next()?.parse().ok())
            .collect(),
    )
}

#[test]
fn same_matches_as_tcpdump() {
    let corpus = corpus();
    let frames: Vec<Vec<u8>> = corpus.iter().map(|(_, f)| f.clone()).collect();
    let dir = std::env::temp_dir().join(format!("netray-filter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("corpus.pcap");
    write_pcap(&pcap, &frames);
    let mut compared = 0;
    for filter in FILTERS {
        let program = Program::compile(filter).unwrap();
        let ours: Vec<usize> = (0..frames.len())
            .filter(|&i| program.matches(&frames[i]))
            .collect();
        if filter.is_empty() {
            assert_eq!(ours.len(), frames.len());
            continue;
        }
        let Some(theirs) = tcpdump_matches(&pcap, filter) else {
            eprintln!("tcpdump not installed: comparison skipped");
            break;
        };
        let names = |set: &[usize]| set.iter().map(|&i| corpus[i].0).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&theirs), "filter {filter:?}");
        compared += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{compared} filters agree with tcpdump");
}

//! Round trips of the packet tracer's output through Wireshark's tools:
//! pcapng files written by `netray::packets::pcapng` are read back with
//! `tshark` and `capinfos`, and the JSON decoder is cross-checked against
//! tshark's dissectors. The tests fail when tshark is missing (setup installs it).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};
use netray::packets::args::OutputSink;
use netray::packets::decode::tcp_flags_string;
use netray::packets::{Direction, PacketRecord, json};

/// Snaplen used by the tests: cuts the large packets.
const SNAPLEN: u32 = 96;

/// Fails (never skips) when a tool the test needs is missing.
fn require(tool: &str) {
    assert!(
        have(tool),
        "{tool} is not installed: run `cargo xtask setup` (Debian package tshark)"
    );
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Builds a record, cutting the frame at `SNAPLEN` like the capture does.
fn rec(frame: Vec<u8>, iface: &str, ifindex: u32, dir: Direction, n: u64) -> PacketRecord<'static> {
    let wire_len = frame.len() as u32;
    let mut data = frame;
    data.truncate(SNAPLEN as usize);
    PacketRecord {
        ts_ns: 1_700_000_000_000_000_000 + n * 1_000_123,
        ifindex,
        iface: iface.to_string().into(),
        direction: dir,
        wire_len,
        data: data.into(),
    }
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = last;
    a
}

/// TCP/v4, UDP/v6 in a VLAN, ICMP, ICMPv6, ARP, and two packets longer
/// than the snaplen, over three interfaces and both directions.
fn records() -> Vec<PacketRecord<'static>> {
    let mut frames: Vec<(Vec<u8>, &str, u32, Direction)> = Vec::new();
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(443, 5555, 1000, 65535)
        .syn()
        .ack(2000)
        .write(&mut f, b"hi")
        .unwrap();
    frames.push((f, "eth0", 2, Direction::Ingress));
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .single_vlan(100.try_into().unwrap())
        .ipv6(v6(1), v6(2), 64)
        .udp(1234, 53)
        .write(&mut f, &[0xab; 12])
        .unwrap();
    frames.push((f, "eth1", 3, Direction::Egress));
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .icmpv4_echo_request(7, 3)
        .write(&mut f, &[0u8; 56])
        .unwrap();
    frames.push((f, "eth0", 2, Direction::Egress));
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6(v6(1), v6(2), 64)
        .icmpv6_echo_request(9, 1)
        .write(&mut f, &[0u8; 8])
        .unwrap();
    frames.push((f, "eth1", 3, Direction::Ingress));
    let mut f = Vec::new();
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
        .write(&mut f)
        .unwrap();
    frames.push((f, "lo", 1, Direction::Ingress));
    // Longer than the snaplen: captured length < wire length.
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4([192, 168, 1, 1], [192, 168, 1, 2], 64)
        .tcp(40000, 80, 7, 1024)
        .psh()
        .ack(9)
        .write(&mut f, &[0x55; 1000])
        .unwrap();
    frames.push((f, "eth0", 2, Direction::Egress));
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6(v6(3), v6(4), 64)
        .udp(5000, 6000)
        .write(&mut f, &[0x66; 400])
        .unwrap();
    frames.push((f, "eth1", 3, Direction::Ingress));
    frames
        .into_iter()
        .enumerate()
        .map(|(n, (f, i, idx, d))| rec(f, i, idx, d, n as u64))
        .collect()
}

/// Writes the records as pcapng into a buffer through the output sink.
fn pcapng_bytes(recs: &[PacketRecord<'_>], flush_each: bool) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!(
        "netray-packets-output-{}-{flush_each}.pcapng",
        std::process::id()
    ));
    let f = std::fs::File::create(&path).unwrap();
    let mut sink = OutputSink::pcapng(Box::new(f), SNAPLEN, flush_each, None).unwrap();
    for r in recs {
        sink.write(r).unwrap();
    }
    sink.finish().unwrap();
    let b = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    b
}

/// Runs tshark on a pcapng given on stdin; returns stdout.
fn tshark(pcapng: &[u8], args: &[&str]) -> String {
    let mut child = Command::new("tshark")
        .args(["-r", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pcapng).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn field_rows(pcapng: &[u8], fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-T", "fields", "-E", "separator=|"];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    tshark(pcapng, &args)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

#[test]
fn pcapng_round_trips_through_tshark() {
    require("tshark");
    let recs = records();
    for flush_each in [false, true] {
        let file = pcapng_bytes(&recs, flush_each);
        let rows = field_rows(
            &file,
            &[
                "frame.len",
                "frame.cap_len",
                "frame.interface_name",
                "frame.packet_flags_direction",
                "frame.time_epoch",
                "frame.interface_id",
            ],
        );
        assert_eq!(rows.len(), recs.len(), "{rows:?}");
        for (row, r) in rows.iter().zip(&recs) {
            assert_eq!(row[0], r.wire_len.to_string());
            assert_eq!(row[1], r.data.len().to_string());
            assert_eq!(row[2], r.iface);
            // epb_flags bits 0-1: inbound 1, outbound 2 (tshark prints
            // 0x00000001).
            let dir = match r.direction {
                Direction::Ingress => 1,
                Direction::Egress => 2,
                Direction::Unknown => 0,
            };
            assert_eq!(
                u32::from_str_radix(row[3].trim_start_matches("0x"), 16),
                Ok(dir),
                "{row:?}"
            );
            let ns = u128::from(r.ts_ns);
            assert_eq!(
                row[4],
                format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
            );
        }
        // One IDB per interface, in order of first use.
        let ids: Vec<&str> = rows.iter().map(|r| r[5].as_str()).collect();
        assert_eq!(ids, ["0", "1", "0", "1", "2", "0", "1"]);
        assert!(recs.iter().any(|r| (r.data.len() as u32) < r.wire_len));
    }
}

#[test]
fn pcapng_bytes_round_trip() {
    require("tshark");
    let recs = records();
    let file = pcapng_bytes(&recs, false);
    let out = tshark(&file, &["-T", "json", "-x"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pkts = v.as_array().unwrap();
    assert_eq!(pkts.len(), recs.len());
    for (p, r) in pkts.iter().zip(&recs) {
        let hex = p["_source"]["layers"]["frame_raw"][0].as_str().unwrap();
        let want: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
    }
}

#[test]
fn json_decode_agrees_with_tshark() {
    require("tshark");
    let recs = records();
    let file = pcapng_bytes(&recs, false);
    let rows = field_rows(
        &file,
        &[
            "ip.src",
            "ipv6.src",
            "ip.dst",
            "ipv6.dst",
            "tcp.srcport",
            "udp.srcport",
            "tcp.dstport",
            "udp.dstport",
            "vlan.id",
            "arp.opcode",
            "icmp.type",
            "icmpv6.type",
            "tcp.flags",
        ],
    );
    assert_eq!(rows.len(), recs.len());
    for (row, r) in rows.iter().zip(&recs) {
        let j: serde_json::Value = serde_json::from_str(&json::format_line(r)).unwrap();
        let s = |v: &serde_json::Value| match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let or = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else {
                a.to_string()
            }
        };
        let src = if j["proto"] == "arp" {
            String::new()
        } else {
            s(&j["src"])
        };
        let dst = if j["proto"] == "arp" {
            String::new()
        } else {
            s(&j["dst"])
        };
        assert_eq!(or(&row[0], &row[1]), src, "{row:?} {j}");
        assert_eq!(or(&row[2], &row[3]), dst, "{row:?} {j}");
        assert_eq!(or(&row[4], &row[5]), s(&j["sport"]), "{row:?} {j}");
        assert_eq!(or(&row[6], &row[7]), s(&j["dport"]), "{row:?} {j}");
        assert_eq!(row[8], s(&j["vlan"]), "{row:?} {j}");
        assert_eq!(row[9], s(&j["arp_op"]), "{row:?} {j}");
        assert_eq!(or(&row[10], &row[11]), s(&j["icmp_type"]), "{row:?} {j}");
        // tcp.flags is hex like 0x0012; empty for non-TCP.
        let flags = u8::from_str_radix(row[12].trim_start_matches("0x"), 16).ok();
        assert_eq!(
            flags.map(tcp_flags_string).unwrap_or_default(),
            s(&j["tcp_flags"]),
            "{row:?} {j}"
        );
        assert_eq!(j["len"].as_u64(), Some(u64::from(r.wire_len)));
        assert_eq!(j["caplen"].as_u64(), Some(r.data.len() as u64));
    }
}

#[test]
fn capinfos_reads_the_file() {
    require("capinfos");
    let recs = records();
    let path = std::env::temp_dir().join(format!("netray-capinfos-{}.pcapng", std::process::id()));
    std::fs::write(&path, pcapng_bytes(&recs, false)).unwrap();
    let out = Command::new("capinfos")
        .arg(Path::new(&path))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("pcapng"), "{text}");
    assert!(
        text.contains(&format!("Number of packets:   {}", recs.len()))
            || text.contains(&format!("Number of packets: {}", recs.len())),
        "{text}"
    );
    assert!(text.contains("nanoseconds"), "{text}");
    assert!(text.contains("Ethernet"), "{text}");
    assert!(text.contains("Number of interfaces in file: 3"), "{text}");
}

#[test]
fn declared_interfaces_without_packets_are_listed() {
    require("capinfos");
    let path = std::env::temp_dir().join(format!("netray-empty-{}.pcapng", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    let mut sink = OutputSink::pcapng(Box::new(f), SNAPLEN, false, None).unwrap();
    sink.declare_interface(7, "eth9").unwrap();
    sink.declare_interface(8, "wg0").unwrap();
    sink.finish().unwrap();
    let out = Command::new("capinfos").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Number of interfaces in file: 2"), "{text}");
    assert!(
        text.contains("Name = eth9") && text.contains("Name = wg0"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Capture length = {SNAPLEN}")),
        "{text}"
    );
}

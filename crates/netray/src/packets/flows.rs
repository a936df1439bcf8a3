//! `--flows`: per-flow rates and a top-talkers table from successive
//! snapshots of cumulative flow counters.
//!
//! The kernel keeps cumulative packet/byte counters per 5-tuple; userspace
//! reads them periodically, converts them to [`FlowEntry`]s and hands two
//! consecutive snapshots to [`rates`]. For packets read from a file,
//! [`FlowCounter`] keeps the same counters from the frames themselves
//! ([`frame_flow`] keys them as the kernel does). Pure logic, no I/O.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// Address family of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// One flow's cumulative counters as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowEntry {
    /// Address family.
    pub family: Family,
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port (0 for protocols without ports).
    pub dport: u16,
    /// Packets since the flow was first seen.
    pub packets: u64,
    /// Bytes (wire length) since the flow was first seen.
    pub bytes: u64,
}

/// Identity of a flow: everything but the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    /// Address family.
    pub family: Family,
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl FlowEntry {
    /// The flow's identity.
    pub fn key(&self) -> FlowKey {
        FlowKey {
            family: self.family,
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
        }
    }
}

/// The flow an Ethernet frame belongs to, keyed exactly as the kernel's
/// flow mode keys it (`summarize` in netray-ebpf's packets program), so
/// that `--flows -r FILE` shows the flows a live `--flows` would have: up
/// to two VLAN tags (0x8100, 0x88a8, 0x9100) are skipped; IPv4 ports are
/// read at the IHL only in a first fragment; IPv6 ports only when TCP, UDP
/// or SCTP is the first next header (the protocol of a fragment is read
/// from its fragment header, without ports; no other extension header is
/// walked). Fields the bytes do not reach stay zero, as in the kernel.
///
/// `None` for frames that are not IPv4 or IPv6: the table is about IP
/// flows (the live table drops the kernel's other entries too).
pub fn frame_flow(frame: &[u8]) -> Option<FlowKey> {
    let bytes = |off: usize, n: usize| frame.get(off..off.checked_add(n)?);
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let eth = bytes(0, 14)?;
    let mut ethertype = be16(&eth[12..]);
    let mut off = 14;
    for _ in 0..2 {
        if !matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            break;
        }
        let Some(tag) = bytes(off, 4) else { break };
        ethertype = be16(&tag[2..]);
        off += 4;
    }
    let ports = |off: usize| bytes(off, 4).map_or((0, 0), |p| (be16(p), be16(&p[2..])));
    let mut key = FlowKey {
        family: Family::Ipv4,
        proto: 0,
        src: IpAddr::from([0u8; 4]),
        dst: IpAddr::from([0u8; 4]),
        sport: 0,
        dport: 0,
    };
    match ethertype {
        0x0800 => {
            if let Some(h) = bytes(off, 20) {
                key.proto = h[9];
                key.src = IpAddr::from([h[12], h[13], h[14], h[15]]);
                key.dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
                let ihl = usize::from(h[0] & 0x0f) * 4;
                let first = be16(&h[6..]) & 0x1fff == 0;
                if matches!(key.proto, 6 | 17 | 132) && first {
                    (key.sport, key.dport) = ports(off + ihl);
                }
            }
        }
        0x86dd => {
            key.family = Family::Ipv6;
            key.src = IpAddr::from([0u8; 16]);
            key.dst = IpAddr::from([0u8; 16]);
            if let Some(h) = bytes(off, 40) {
                let next = h[6];
                key.proto = match (next, bytes(off + 40, 2)) {
                    (44, Some(frag)) => frag[0],
                    _ => next,
                };
                let addr = |at: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&h[at..at + 16]);
                    IpAddr::from(a)
                };
                key.src = addr(8);
                key.dst = addr(24);
                if matches!(next, 6 | 17 | 132) {
                    (key.sport, key.dport) = ports(off + 40);
                }
            }
        }
        _ => return None,
    }
    Some(key)
}

/// Sums packets and wire bytes per flow of frames fed one by one (`--flows
/// -r FILE`, where userspace sees every frame), as the kernel's flow map
/// does for a live capture.
#[derive(Debug, Default)]
pub struct FlowCounter {
    /// Packets and bytes per flow.
    flows: HashMap<FlowKey, (u64, u64)>,
}

impl FlowCounter {
    /// Counts `frame` (captured bytes) of `wire_len` bytes on the wire;
    /// non-IP frames are not counted.
    pub fn add(&mut self, frame: &[u8], wire_len: u32) {
        if let Some(key) = frame_flow(frame) {
            let (packets, bytes) = self.flows.entry(key).or_default();
            *packets += 1;
            *bytes += u64::from(wire_len);
        }
    }

    /// The flows' totals, largest byte count first (as
    /// [`super::capture::PacketCapture::flows`] orders them).
    pub fn entries(&self) -> Vec<FlowEntry> {
        let mut out: Vec<FlowEntry> = self
            .flows
            .iter()
            .map(|(k, &(packets, bytes))| FlowEntry {
                family: k.family,
                proto: k.proto,
                src: k.src,
                dst: k.dst,
                sport: k.sport,
                dport: k.dport,
                packets,
                bytes,
            })
            .collect();
        out.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.packets.cmp(&a.packets))
                .then(a.key().cmp(&b.key()))
        });
        out
    }
}

/// A flow's activity between two snapshots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRate {
    /// The flow.
    #[serde(flatten)]
    pub key: FlowKey,
    /// Packets in the interval.
    pub packets: u64,
    /// Bytes in the interval.
    pub bytes: u64,
    /// Packets per second over the interval.
    pub pps: f64,
    /// Bits per second over the interval.
    pub bps: f64,
    /// Cumulative packets.
    pub total_packets: u64,
    /// Cumulative bytes.
    pub total_bytes: u64,
}

/// Per-flow rates between snapshot `prev` and snapshot `cur` taken
/// `interval` later, sorted by bytes in the interval (then cumulative
/// bytes, then key, so that the order is stable).
///
/// A flow absent from `prev` counts from zero. A counter that went down
/// means the kernel evicted and re-created the entry, so the new value is
/// all activity since then. Flows gone from `cur` are not reported. A zero
/// interval gives zero rates rather than infinities.
pub fn rates(prev: &[FlowEntry], cur: &[FlowEntry], interval: Duration) -> Vec<FlowRate> {
    let before: HashMap<FlowKey, &FlowEntry> = prev.iter().map(|e| (e.key(), e)).collect();
    let secs = interval.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let mut out: Vec<FlowRate> = cur
        .iter()
        .map(|e| {
            let delta = |now: u64, then: Option<u64>| match then {
                Some(t) if t <= now => now - t,
                _ => now,
            };
            let p = before.get(&e.key());
            let packets = delta(e.packets, p.map(|p| p.packets));
            let bytes = delta(e.bytes, p.map(|p| p.bytes));
            FlowRate {
                key: e.key(),
                packets,
                bytes,
                pps: per_sec(packets),
                bps: per_sec(bytes.saturating_mul(8)),
                total_packets: e.packets,
                total_bytes: e.bytes,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.total_bytes.cmp(&a.total_bytes))
            .then(a.key.cmp(&b.key))
    });
    out
}

/// Keeps the previous snapshot so that callers only feed new ones.
#[derive(Debug, Default)]
pub struct FlowTracker {
    /// Previous snapshot and when it was taken.
    prev: Option<(Vec<FlowEntry>, std::time::Instant)>,
}

impl FlowTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a snapshot taken at `now`; returns the rates since the
    /// previous one, or `None` for the first snapshot (there is no interval
    /// yet, and rates from zero would overstate long-lived flows).
    pub fn update(
        &mut self,
        snapshot: Vec<FlowEntry>,
        now: std::time::Instant,
    ) -> Option<(Vec<FlowRate>, Duration)> {
        let out = self.prev.as_ref().map(|(prev, then)| {
            let interval = now.saturating_duration_since(*then);
            (rates(prev, &snapshot, interval), interval)
        });
        self.prev = Some((snapshot, now));
        out
    }
}

/// Protocol name for the table (`tcp`, `udp`, `icmp`, `icmp6`, or number).
fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// Endpoint as `10.0.0.1:53` / `[2001:db8::1]:53` (bare address without
/// ports).
fn endpoint(a: IpAddr, port: u16, has_ports: bool) -> String {
    match (a, has_ports) {
        (IpAddr::V6(v6), true) => format!("[{v6}]:{port}"),
        (a, true) => format!("{a}:{port}"),
        (a, false) => a.to_string(),
    }
}

/// Human-readable rate with SI prefixes (`1.5M`).
pub fn human(v: f64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in UNITS {
        if v >= scale {
            return format!("{:.1}{unit}", v / scale);
        }
    }
    format!("{v:.0}")
}

/// Renders the top `top` flows (already sorted by [`rates`]) as a table.
pub fn render_table(rates: &[FlowRate], top: usize) -> String {
    let mut s = format!(
        "{:<5} {:<45} {:<45} {:>9} {:>9} {:>10} {:>12}\n",
        "PROTO", "SOURCE", "DESTINATION", "PPS", "BPS", "PACKETS", "BYTES"
    );
    for r in rates.iter().take(top) {
        let has_ports = matches!(r.key.proto, 6 | 17 | 132);
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "{:<5} {:<45} {:<45} {:>9} {:>9} {:>10} {:>12}",
            proto_name(r.key.proto),
            endpoint(r.key.src, r.key.sport, has_ports),
            endpoint(r.key.dst, r.key.dport, has_ports),
            human(r.pps),
            human(r.bps),
            r.total_packets,
            r.total_bytes
        );
    }
    if rates.len() > top {
        let _ = writeln!(s, "... {} more flows", rates.len() - top);
    }
    s
}

/// JSON form of one interval: `{"interval_s": .., "flows": [..]}` with the
/// top `top` flows.
pub fn to_json(rates: &[FlowRate], interval: Duration, top: usize) -> serde_json::Value {
    serde_json::json!({
        "interval_s": interval.as_secs_f64(),
        "flow_count": rates.len(),
        "flows": rates.iter().take(top).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(last: u8, sport: u16, packets: u64, bytes: u64) -> FlowEntry {
        FlowEntry {
            family: Family::Ipv4,
            proto: 6,
            src: IpAddr::from([10, 0, 0, last]),
            dst: IpAddr::from([10, 0, 0, 100]),
            sport,
            dport: 443,
            packets,
            bytes,
        }
    }

    #[test]
    fn rates_between_snapshots() {
        let prev = vec![
            flow(1, 1000, 10, 1000),
            flow(2, 2000, 5, 500),
            flow(9, 9, 1, 1),
        ];
        let cur = vec![
            flow(1, 1000, 30, 3000), // +20 pkts, +2000 bytes
            flow(2, 2000, 2, 200),   // counter reset: counts from 0
            flow(3, 3000, 4, 8000),  // new flow
        ];
        let r = rates(&prev, &cur, Duration::from_secs(2));
        assert_eq!(r.len(), 2 + 1);
        assert_eq!(r[0].key.src, IpAddr::from([10, 0, 0, 3]));
        assert_eq!(
            (r[0].packets, r[0].bytes, r[0].pps, r[0].bps),
            (4, 8000, 2.0, 32000.0)
        );
        assert_eq!(
            (r[1].packets, r[1].bytes, r[1].pps, r[1].bps),
            (20, 2000, 10.0, 8000.0)
        );
        assert_eq!((r[2].packets, r[2].bytes), (2, 200));
        assert_eq!(r[2].total_bytes, 200);
    }

    #[test]
    fn zero_interval_and_empty() {
        let r = rates(&[], &[flow(1, 1, 1, 100)], Duration::ZERO);
        assert_eq!((r[0].pps, r[0].bps), (0.0, 0.0));
        assert!(rates(&[], &[], Duration::from_secs(1)).is_empty());
        let t = render_table(&[], 10);
        assert_eq!(t.lines().count(), 1);
    }

    #[test]
    fn table_and_json() {
        let mut v6 = flow(1, 53, 10, 1_500_000);
        v6.family = Family::Ipv6;
        v6.proto = 17;
        v6.src = "2001:db8::1".parse().unwrap();
        let cur = vec![flow(1, 1000, 10, 100), v6, flow(2, 2000, 1, 50)];
        let r = rates(&[], &cur, Duration::from_secs(1));
        let t = render_table(&r, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PROTO"));
        assert!(lines[1].starts_with("udp   [2001:db8::1]:53"), "{t}");
        assert!(lines[1].contains("12.0M"), "{t}");
        assert!(lines[2].contains("10.0.0.1:1000"), "{t}");
        assert_eq!(lines[3], "... 1 more flows");
        let j = to_json(&r, Duration::from_secs(1), 2);
        assert_eq!(j["flow_count"], 3);
        assert_eq!(j["flows"][0]["src"], "2001:db8::1");
        assert_eq!(j["flows"][0]["family"], "ipv6");
        assert_eq!(j["flows"][0]["bps"], 12_000_000.0);
        assert_eq!(j["flows"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn tracker() {
        let t0 = std::time::Instant::now();
        let mut t = FlowTracker::new();
        assert!(t.update(vec![flow(1, 1, 10, 1000)], t0).is_none());
        let (r, dt) = t
            .update(vec![flow(1, 1, 20, 3000)], t0 + Duration::from_secs(4))
            .unwrap();
        assert_eq!(dt, Duration::from_secs(4));
        assert_eq!((r[0].pps, r[0].bps), (2.5, 4000.0));
    }

    #[test]
    fn frame_flows_keyed_as_the_kernel_keys_them() {
        use crate::packets::decode::tests::{arp_request, tcp_v4, udp_v4, udp_v6_vlan};
        let k = frame_flow(&tcp_v4(false, b"x")).unwrap();
        assert_eq!(
            (k.family, k.proto, k.src, k.dst, k.sport, k.dport),
            (
                Family::Ipv4,
                6,
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([10, 0, 0, 2]),
                443,
                5555
            )
        );
        let v6 = udp_v6_vlan(b"x");
        let k = frame_flow(&v6).unwrap();
        assert_eq!(
            (k.family, k.proto, k.sport, k.dport),
            (Family::Ipv6, 17, 1234, 53)
        );
        assert_eq!(k.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        // A second tag (QinQ) is skipped too.
        let mut qinq = v6[..12].to_vec();
        qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07]);
        qinq.extend_from_slice(&v6[12..]);
        assert_eq!(frame_flow(&qinq), Some(k));
        // Not IP: no flow.
        assert_eq!(frame_flow(&arp_request()), None);
        assert_eq!(frame_flow(&[0u8; 13]), None);
        // A later IPv4 fragment has no ports; an IP header cut short
        // leaves zeros, as in the kernel.
        let mut frag = udp_v4(b"abcd");
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10;
        let k = frame_flow(&frag).unwrap();
        assert_eq!((k.proto, k.sport, k.dport), (17, 0, 0));
        let k = frame_flow(&udp_v4(b"")[..14 + 19]).unwrap();
        assert_eq!((k.proto, k.src), (0, IpAddr::from([0u8; 4])));
        // An IPv6 fragment: the protocol from the fragment header, no ports.
        let mut f6 = v6.clone();
        f6[18 + 6] = 44;
        let k = frame_flow(&f6).unwrap();
        assert_eq!((k.proto, k.sport), (f6[18 + 40], 0));
    }

    #[test]
    fn counter_sums_per_flow() {
        use crate::packets::decode::tests::{arp_request, tcp_v4, udp_v4};
        let mut c = FlowCounter::default();
        c.add(&tcp_v4(false, b""), 1000);
        c.add(&tcp_v4(true, b""), 500);
        c.add(&udp_v4(b""), 60);
        c.add(&arp_request(), 60);
        let e = c.entries();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].proto, e[0].packets, e[0].bytes), (6, 2, 1500));
        assert_eq!((e[1].proto, e[1].packets, e[1].bytes), (17, 1, 60));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1500.0), "1.5k");
        assert_eq!(human(2.5e9), "2.5G");
    }
}

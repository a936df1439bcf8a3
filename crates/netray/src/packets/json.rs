//! JSON lines output: one object per packet.
//!
//! Fields: `ts` (ns since the epoch), `iface`, `ifindex`, `dir`
//! (`ingress`/`egress`, `unknown` for some packets read from a file), `len` (wire length), `caplen`, `proto`, and when
//! they exist `vlan`, `src`, `dst`, `sport`, `dport`, `tcp_flags`,
//! `icmp_type`, `icmp_code`, `arp_op`. Absent fields are omitted rather than
//! `null`, so consumers can test for presence.

use serde::Serialize;

use super::decode::{Net, PacketSummary, Transport, tcp_flags_string};
use super::{Direction, PacketRecord};

/// One JSON line, as serialized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JsonPacket<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts: u64,
    /// Interface name.
    pub iface: &'a str,
    /// Interface index.
    pub ifindex: u32,
    /// `ingress`, `egress` or `unknown`.
    pub dir: Direction,
    /// Length on the wire.
    pub len: u32,
    /// Captured length.
    pub caplen: u32,
    /// VLAN id of the outermost tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// All VLAN ids when there is more than one tag (QinQ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlans: Option<Vec<u16>>,
    /// `tcp`, `udp`, `icmp`, `icmp6`, `arp`, or another protocol name.
    pub proto: String,
    /// Source address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Source port (TCP/UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Destination port (TCP/UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// TCP flags in tcpdump's letters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// ICMP/ICMPv6 type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP/ICMPv6 code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// ARP operation (1 request, 2 reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_op: Option<u16>,
}

impl<'a> JsonPacket<'a> {
    /// Builds the JSON form of a record whose bytes are already decoded.
    pub fn new(rec: &'a PacketRecord<'_>, s: &PacketSummary) -> Self {
        let ts = rec.ts_ns;
        let ports = s.ports();
        let (tcp_flags, icmp) = match &s.transport {
            Transport::Tcp(t) => (t.flags.map(tcp_flags_string), None),
            Transport::Icmp(i) => (None, Some((i.ty, i.code))),
            _ => (None, None),
        };
        JsonPacket {
            ts,
            iface: &rec.iface,
            ifindex: rec.ifindex,
            dir: rec.direction,
            len: rec.wire_len,
            caplen: u32::try_from(rec.data.len()).unwrap_or(u32::MAX),
            vlan: s.vlans.first().copied(),
            vlans: (s.vlans.len() > 1).then(|| s.vlans.clone()),
            proto: s.proto_name(),
            src: s.src().map(|a| a.to_string()),
            dst: s.dst().map(|a| a.to_string()),
            sport: ports.map(|p| p.0),
            dport: ports.map(|p| p.1),
            tcp_flags,
            icmp_type: icmp.map(|i| i.0),
            icmp_code: icmp.map(|i| i.1),
            arp_op: match &s.net {
                Net::Arp(a) => Some(a.op),
                _ => None,
            },
        }
    }
}

/// Formats one record as a JSON line (without the trailing newline).
pub fn format_line(rec: &PacketRecord<'_>) -> String {
    format_line_with(rec, &PacketSummary::decode(&rec.data))
}

/// Formats one record whose bytes are already decoded.
pub fn format_line_with(rec: &PacketRecord<'_>, s: &PacketSummary) -> String {
    // Serializing plain strings and integers cannot fail; keep a valid
    // line even so rather than panicking.
    serde_json::to_string(&JsonPacket::new(rec, s))
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::decode::tests::*;
    use super::*;
    use serde_json::Value;

    fn rec(data: Vec<u8>, dir: Direction) -> PacketRecord<'static> {
        PacketRecord {
            ts_ns: 1_700_000_000_123_456_789,
            ifindex: 3,
            iface: "veth1".into(),
            direction: dir,
            wire_len: data.len() as u32 + 10,
            data: data.into(),
        }
    }

    fn parse(r: &PacketRecord<'_>) -> Value {
        serde_json::from_str(&format_line(r)).unwrap()
    }

    #[test]
    fn tcp_fields() {
        let v = parse(&rec(tcp_v4(true, b""), Direction::Egress));
        assert_eq!(v["ts"], 1_700_000_000_123_456_789u64);
        assert_eq!(v["iface"], "veth1");
        assert_eq!(v["dir"], "egress");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["src"], "10.0.0.1");
        assert_eq!(v["dst"], "10.0.0.2");
        assert_eq!(v["sport"], 443);
        assert_eq!(v["dport"], 5555);
        assert_eq!(v["tcp_flags"], "S.");
        assert_eq!(v["caplen"], 54);
        assert_eq!(v["len"], 64);
        assert!(v.get("vlan").is_none());
    }

    #[test]
    fn other_protocols() {
        let v = parse(&rec(udp_v6_vlan(b"x"), Direction::Ingress));
        assert_eq!(
            (v["proto"].as_str(), v["vlan"].as_u64()),
            (Some("udp"), Some(100))
        );
        assert_eq!(v["dir"], "ingress");
        assert!(v.get("tcp_flags").is_none());
        let v = parse(&rec(icmp_echo_v4(), Direction::Ingress));
        assert_eq!(
            (v["proto"].as_str(), v["icmp_type"].as_u64()),
            (Some("icmp"), Some(8))
        );
        assert!(v.get("sport").is_none());
        let v = parse(&rec(arp_request(), Direction::Ingress));
        assert_eq!(
            (v["proto"].as_str(), v["arp_op"].as_u64()),
            (Some("arp"), Some(1))
        );
        let mut lldp = vec![0u8; 12];
        lldp.extend_from_slice(&[0x88, 0xcc, 0, 0]);
        assert_eq!(parse(&rec(lldp, Direction::Ingress))["proto"], "lldp");
        let mut odd = vec![0u8; 12];
        odd.extend_from_slice(&[0x12, 0x34]);
        assert_eq!(parse(&rec(odd, Direction::Ingress))["proto"], "0x1234");
        assert_eq!(
            parse(&rec(vec![1, 2], Direction::Ingress))["proto"],
            "unknown"
        );
    }
}

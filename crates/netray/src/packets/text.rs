//! tcpdump-style one-line text output.
//!
//! `HH:MM:SS.micro IFACE In|Out IP 10.0.0.1.5353 > 10.0.0.2.53: UDP, length 12`
//!
//! Sequence numbers are absolute (like `tcpdump -S`): netray does not keep
//! per-connection state in the output path. A `[|proto]` marker follows a
//! header that the snaplen cut short, as in tcpdump.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::decode::{
    IpInfo, Net, PacketSummary, Transport, icmp_description, mac_string, tcp_flags_string,
};
use super::{Direction, PacketRecord};

/// Local wall-clock time of day as `HH:MM:SS.uuuuuu`, like tcpdump.
pub fn local_time_of_day(t: SystemTime) -> String {
    let (secs, micros) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
        // Before 1970: show it as the epoch rather than failing.
        Err(_) => (0, 0),
    };
    let (h, m, s) = local_hms(secs);
    format!("{h:02}:{m:02}:{s:02}.{micros:06}")
}

/// Hours, minutes and seconds of `secs` (since the epoch) in local time,
/// falling back to UTC when the C library cannot convert.
fn local_hms(secs: i64) -> (u32, u32, u32) {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call and
    // localtime_r (unlike localtime) does not touch shared static storage.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour as u32, tm.tm_min as u32, tm.tm_sec as u32)
    } else {
        let day = secs.rem_euclid(86_400) as u32;
        (day / 3600, day / 60 % 60, day % 60)
    }
}

/// `In` / `Out` as tcpdump prints the direction on Linux; `-` when the
/// direction is unknown (a packet read from a pcap file), so that the
/// line keeps its columns.
pub fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "In",
        Direction::Egress => "Out",
        Direction::Unknown => "-",
    }
}

/// Address with port in tcpdump notation (`10.0.0.1.53`, `2001:db8::1.53`).
fn addr_port(a: IpAddr, p: Option<u16>) -> String {
    match p {
        Some(p) => format!("{a}.{p}"),
        None => a.to_string(),
    }
}

/// Formats one record as a line (without the trailing newline).
pub fn format_line(rec: &PacketRecord<'_>) -> String {
    let summary = PacketSummary::decode(&rec.data);
    format_line_with(rec, &summary)
}

/// Formats one record whose bytes are already decoded.
pub fn format_line_with(rec: &PacketRecord<'_>, s: &PacketSummary) -> String {
    let mut line = format!(
        "{} {} {} ",
        local_time_of_day(rec.time()),
        rec.iface,
        direction_word(rec.direction)
    );
    for v in &s.vlans {
        line.push_str(&format!("vlan {v} "));
    }
    line.push_str(&body(rec, s));
    line
}

/// Everything after the interface and direction.
fn body(rec: &PacketRecord<'_>, s: &PacketSummary) -> String {
    match &s.net {
        Net::Arp(a) => {
            let ip = |x: Option<std::net::Ipv4Addr>| {
                x.map_or_else(|| "?".to_string(), |x| x.to_string())
            };
            match a.op {
                1 => format!(
                    "ARP, Request who-has {} tell {}, length {}",
                    ip(a.target_ip),
                    ip(a.sender_ip),
                    rec.wire_len
                ),
                2 => format!(
                    "ARP, Reply {} is-at {}, length {}",
                    ip(a.sender_ip),
                    mac_string(&a.sender_hw),
                    rec.wire_len
                ),
                op => format!(
                    "ARP, op {op} {} > {}, length {}",
                    ip(a.sender_ip),
                    ip(a.target_ip),
                    rec.wire_len
                ),
            }
        }
        Net::Ip(ip) => ip_body(ip, &s.transport),
        Net::None => match s.ethertype {
            Some(0x0800) => format!("IP [|ip], length {}", rec.wire_len),
            Some(0x86dd) => format!("IP6 [|ip6], length {}", rec.wire_len),
            Some(0x0806) => format!("ARP [|arp], length {}", rec.wire_len),
            Some(t) => format!(
                "ethertype {} (0x{t:04x}), length {}",
                s.proto_name(),
                rec.wire_len
            ),
            None => format!("[|ether], length {}", rec.wire_len),
        },
    }
}

/// The IP part of a line.
fn ip_body(ip: &IpInfo, t: &Transport) -> String {
    let fam = if ip.src.is_ipv4() { "IP" } else { "IP6" };
    let ports = match t {
        Transport::Tcp(x) => Some((x.sport, x.dport)),
        Transport::Udp(x) => Some((x.sport, x.dport)),
        _ => None,
    };
    let head = format!(
        "{fam} {} > {}: ",
        addr_port(ip.src, ports.map(|p| p.0)),
        addr_port(ip.dst, ports.map(|p| p.1))
    );
    let tail = match t {
        Transport::Tcp(x) => {
            let mut s = match x.flags {
                Some(f) => format!("Flags [{}]", tcp_flags_string(f)),
                None => return format!("{head}[|tcp]"),
            };
            let len = x.payload_len.unwrap_or(0);
            if let Some(seq) = x.seq {
                if len > 0 {
                    s.push_str(&format!(", seq {seq}:{}", seq.wrapping_add(len)));
                } else {
                    s.push_str(&format!(", seq {seq}"));
                }
            }
            // The ack field is meaningful only with the ACK flag.
            if let (Some(ack), Some(f)) = (x.ack, x.flags)
                && f & 0x10 != 0
            {
                s.push_str(&format!(", ack {ack}"));
            }
            match x.win {
                Some(w) => s.push_str(&format!(", win {w}, length {len}")),
                None => s.push_str(" [|tcp]"),
            }
            s
        }
        Transport::Udp(x) => match x.payload_len {
            Some(l) => format!("UDP, length {l}"),
            None => "UDP [|udp]".into(),
        },
        Transport::Icmp(i) => {
            let name = if i.v6 { "ICMP6, " } else { "ICMP " };
            format!("{name}{}, length {}", icmp_description(i), ip.payload_len)
        }
        Transport::None => {
            let what = match ip.proto {
                6 => "tcp",
                17 => "udp",
                1 => "icmp",
                58 => "icmp6",
                _ => "",
            };
            if ip.frag_offset != 0 {
                let what = if what.is_empty() { "ip-proto" } else { what };
                format!(
                    "{what} (frag offset {}), length {}",
                    ip.frag_offset, ip.payload_len
                )
            } else if !what.is_empty() {
                format!("[|{what}]")
            } else {
                format!("ip-proto-{}, length {}", ip.proto, ip.payload_len)
            }
        }
    };
    format!("{head}{tail}")
}

#[cfg(test)]
mod tests {
    use super::super::decode::tests::*;
    use super::*;

    fn rec(data: Vec<u8>, dir: Direction) -> PacketRecord<'static> {
        PacketRecord {
            ts_ns: 1_700_000_000_123_456_000,
            ifindex: 2,
            iface: "eth0".into(),
            direction: dir,
            wire_len: data.len() as u32,
            data: data.into(),
        }
    }

    /// Drops the time-of-day prefix (local time zone dependent).
    fn strip_time(l: &str) -> &str {
        l.split_once(' ').unwrap().1
    }

    #[test]
    fn lines() {
        let l = format_line(&rec(udp_v4(&[0; 12]), Direction::Ingress));
        assert!(l.starts_with(|c: char| c.is_ascii_digit()));
        assert!(l.contains(".123456 "), "{l}");
        assert_eq!(
            strip_time(&l),
            "eth0 In IP 10.0.0.1.5353 > 10.0.0.2.53: UDP, length 12"
        );
        let l = format_line(&rec(tcp_v4(true, b"abc"), Direction::Egress));
        assert_eq!(
            strip_time(&l),
            "eth0 Out IP 10.0.0.1.443 > 10.0.0.2.5555: Flags [S.], seq 1000:1003, ack 2000, win 65535, length 3"
        );
        let l = format_line(&rec(tcp_v4(false, b""), Direction::Egress));
        assert!(
            l.ends_with("Flags [S], seq 1000, win 65535, length 0"),
            "{l}"
        );
        let l = format_line(&rec(icmp_echo_v4(), Direction::Ingress));
        assert!(
            l.ends_with("IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 7, seq 3, length 64"),
            "{l}"
        );
        let l = format_line(&rec(arp_request(), Direction::Ingress));
        assert!(
            l.ends_with("ARP, Request who-has 10.0.0.2 tell 10.0.0.1, length 42"),
            "{l}"
        );
        let l = format_line(&rec(udp_v6_vlan(&[1, 2]), Direction::Ingress));
        assert!(
            l.ends_with("vlan 100 IP6 2001:db8::1.1234 > 2001:db8::2.53: UDP, length 2"),
            "{l}"
        );
    }

    #[test]
    fn truncated_lines() {
        let f = tcp_v4(true, b"");
        let mut r = rec(f[..14 + 20 + 14].to_vec(), Direction::Ingress);
        r.wire_len = f.len() as u32;
        let l = format_line(&r);
        assert!(l.ends_with("Flags [S.], seq 1000, ack 2000 [|tcp]"), "{l}");
        for cut in 0..f.len() {
            let _ = format_line(&rec(f[..cut].to_vec(), Direction::Ingress));
        }
        // A non-first IPv4 fragment: no ports read from payload bytes.
        let mut frag = udp_v4(&[0; 16]);
        frag[14 + 7] = 1;
        let l = format_line(&rec(frag, Direction::Ingress));
        assert!(
            l.ends_with("IP 10.0.0.1 > 10.0.0.2: udp (frag offset 8), length 24"),
            "{l}"
        );
        let l = format_line(&rec(vec![], Direction::Ingress));
        assert!(l.ends_with("[|ether], length 0"), "{l}");
    }
}

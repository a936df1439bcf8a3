//! Output formats: server-sent events and the plain-text (mtr-like) table.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use bytes::Bytes;
use serde::Serialize;

use crate::inband::{Hop, TraceResult};

/// One server-sent event. `data` may span lines: each gets its own `data:`.
pub(crate) fn sse_event(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 16);
    let _ = writeln!(out, "event: {event}");
    for line in data.split('\n') {
        let _ = writeln!(out, "data: {}", line.trim_end_matches('\r'));
    }
    out.push('\n');
    Bytes::from(out)
}

/// Serializes `value` as compact JSON (our types always serialize; the
/// fallback keeps a bug from becoming a panic).
pub(crate) fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| error_json(&format!("serialization failed: {e}")))
}

/// `{"error": "..."}`.
pub(crate) fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Remembers the last version of each hop sent, to send only changes.
#[derive(Debug, Default)]
pub(crate) struct HopDiff {
    sent: BTreeMap<u8, Hop>,
}

impl HopDiff {
    /// The hops of `hops` that are new or differ from what was last sent, in
    /// TTL order; records them as sent.
    pub(crate) fn changed<'a>(&mut self, hops: &'a [Hop]) -> Vec<&'a Hop> {
        let mut out = Vec::new();
        for hop in hops {
            if self.sent.get(&hop.ttl) != Some(hop) {
                self.sent.insert(hop.ttl, hop.clone());
                out.push(hop);
            }
        }
        out.sort_by_key(|h| h.ttl);
        out
    }
}

/// v4-mapped IPv6 socket addresses as plain IPv4 (what is on the wire).
pub(crate) fn plain(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Width of the host column (fits `hostname (IPv4)` of typical routers).
const HOST_WIDTH: usize = 48;

/// The table's title and column header.
pub(crate) fn text_header(server: SocketAddr, client: SocketAddr) -> String {
    format!(
        "netray: in-band traceroute from {} back to you ({})\n{:>3}  {:<HOST_WIDTH$} {:>6} {:>4} {:>4} {:>8} {:>8} {:>8}\n",
        plain(server),
        plain(client),
        "TTL",
        "HOST",
        "LOSS%",
        "SNT",
        "RCV",
        "BEST",
        "AVG",
        "WORST",
    )
}

/// Replaces control characters (a reverse-DNS name is remote input) so that
/// nothing can drive the reader's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One table line (with newline).
pub(crate) fn text_row(hop: &Hop) -> String {
    let host = match (&hop.addr, &hop.hostname) {
        (None, _) => "*".to_owned(),
        (Some(addr), Some(name)) if !name.is_empty() => format!("{} ({addr})", printable(name)),
        (Some(addr), _) => addr.to_string(),
    };
    let mut line = format!("{:>3}  {host:<HOST_WIDTH$}", hop.ttl);
    if hop.rate_limited {
        // Not path loss: the router did not answer every probe (its ICMP
        // rate limit), but the probes went on past it.
        let _ = write!(line, " {:>6} {:>4} {:>4}", "rl", hop.sent, hop.received);
    } else if hop.sent > 0 {
        let lost = hop.sent.saturating_sub(hop.received);
        let loss = f64::from(lost) * 100.0 / f64::from(hop.sent);
        let _ = write!(line, " {loss:>5.1}% {:>4} {:>4}", hop.sent, hop.received);
    } else {
        let _ = write!(line, " {:>6} {:>4} {:>4}", "", hop.sent, hop.received);
    }
    let rtts: Vec<f64> = hop
        .rtt_ms
        .iter()
        .copied()
        .filter(|r| r.is_finite())
        .collect();
    if rtts.is_empty() {
        let _ = write!(line, " {:>8} {:>8} {:>8}", "-", "-", "-");
    } else {
        let best = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let worst = rtts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
        let _ = write!(line, " {best:>8.2} {avg:>8.2} {worst:>8.2}");
    }
    if hop.cached {
        // Not this trace's reply: learned from other visitors' traces.
        line.push_str("  cached");
    }
    if hop.rate_limited {
        line.push_str("  rate-limited");
    }
    if hop.nat {
        line.push_str("  NAT");
    }
    if hop.destination {
        line.push_str("  destination");
    }
    let trimmed = line.trim_end().len();
    line.truncate(trimmed);
    line.push('\n');
    line
}

/// The closing summary line (with newline).
pub(crate) fn text_summary(result: &TraceResult) -> String {
    let hops = result.hops.len();
    if result.destination_reached {
        format!(
            "destination reached in {hops} hop{}, {:.0} ms ({})\n",
            if hops == 1 { "" } else { "s" },
            result.elapsed_ms,
            result.family
        )
    } else {
        format!(
            "destination not reached within {hops} hop{}, {:.0} ms ({})\n",
            if hops == 1 { "" } else { "s" },
            result.elapsed_ms,
            result.family
        )
    }
}

/// Whether hop `index` of a running trace is unlikely to change any more, so
/// the text table can print it: all its probes answered (and named), or a hop
/// two TTLs further on fully answered — its own replies would have arrived by
/// then. A heuristic: the JSON and SSE outputs carry the exact data.
pub(crate) fn settled(hops: &[Hop], index: usize, probes: u32) -> bool {
    let complete = |h: &Hop| h.sent >= probes && h.received >= h.sent;
    let Some(hop) = hops.get(index) else {
        return false;
    };
    if complete(hop) && (hop.addr.is_none() || hop.hostname.is_some()) {
        return true;
    }
    hops.get(index + 2..)
        .is_some_and(|later| later.iter().any(|h| complete(h) && h.addr.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ttl: u8, addr: Option<&str>, rtts: &[f64]) -> Hop {
        Hop {
            ttl,
            addr: addr.map(|a| a.parse().unwrap()),
            hostname: None,
            rtt_ms: rtts.to_vec(),
            sent: 3,
            received: rtts.len() as u32,
            nat: false,
            destination: false,
            cached: false,
            rate_limited: false,
        }
    }

    #[test]
    fn sse_multiline_data() {
        assert_eq!(
            &sse_event("hop", "a\nb")[..],
            b"event: hop\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn rows_look_like_mtr() {
        let mut h = hop(1, Some("192.0.2.1"), &[1.0, 2.0, 3.0]);
        h.hostname = Some("gw\x1b[31m.example".into());
        let row = text_row(&h);
        assert!(row.starts_with("  1  gw?[31m.example (192.0.2.1)"), "{row}");
        assert!(
            row.contains("  0.0%    3    3     1.00     2.00     3.00"),
            "{row}"
        );
        let silent = text_row(&Hop {
            sent: 3,
            ..Hop::silent(2)
        });
        assert!(silent.starts_with("  2  *"), "{silent}");
        assert!(silent.contains("100.0%"), "{silent}");
        let limited = text_row(&Hop {
            cached: true,
            rate_limited: true,
            ..hop(3, Some("192.0.2.3"), &[])
        });
        assert!(!limited.contains('%'), "not shown as path loss: {limited}");
        assert!(limited.contains("   rl    3    0"), "{limited}");
        assert!(limited.ends_with("cached  rate-limited\n"), "{limited}");
    }

    #[test]
    fn diff_sends_changes_only() {
        let mut diff = HopDiff::default();
        let a = vec![hop(1, Some("192.0.2.1"), &[1.0])];
        assert_eq!(diff.changed(&a).len(), 1);
        assert!(diff.changed(&a).is_empty());
        let mut b = a.clone();
        b[0].hostname = Some("x".into());
        assert_eq!(diff.changed(&b).len(), 1);
    }

    #[test]
    fn settled_heuristic() {
        let hops = vec![
            hop(1, Some("192.0.2.1"), &[1.0]),
            hop(2, None, &[]),
            hop(3, Some("192.0.2.3"), &[1.0, 1.0, 1.0]),
        ];
        assert!(settled(&hops, 0, 3));
        assert!(!settled(&hops, 1, 3));
        assert!(!settled(&hops, 2, 3), "no hostname yet");
    }

    #[test]
    fn mapped_addresses_are_plain() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:80".parse().unwrap();
        assert_eq!(plain(mapped), "192.0.2.1:80".parse::<SocketAddr>().unwrap());
    }
}

//! Trace results. The JSON shape is a contract (`GET /trace.json`, `netray
//! trace --json`): fields may be added, never renamed or removed.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// One TTL of a trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hop {
    /// The probes' TTL / hop limit (1-based).
    pub ttl: u8,
    /// Who answered (router, NAT, or the destination); `None` if nobody did.
    pub addr: Option<IpAddr>,
    /// Reverse DNS name of `addr`, when known.
    pub hostname: Option<String>,
    /// Round-trip time of each reply, in milliseconds.
    pub rtt_ms: Vec<f64>,
    /// Probes sent with this TTL.
    pub sent: u32,
    /// Replies received for this TTL.
    pub received: u32,
    /// The reply came from the peer's own address before the destination was
    /// reached: a NAT (or a router behind it) in front of the peer.
    pub nat: bool,
    /// This TTL reached the destination (the peer acknowledged the probe).
    pub destination: bool,
    /// `addr` comes from other recent traces through the same routers, not
    /// from a reply to this trace (routers rate-limit their ICMP errors, and
    /// concurrent traces share the hops near the server).
    pub cached: bool,
    /// An intermediate hop got fewer replies than probes although the probes
    /// went on past it (a later hop answered) and the router is known (it
    /// answered this trace, or other traces: `cached`). The missing replies
    /// are the router's ICMP rate limit (every trace's errors go to the same
    /// server), not loss on the path.
    pub rate_limited: bool,
}

impl Hop {
    /// A hop nobody has answered yet.
    pub const fn silent(ttl: u8) -> Self {
        Self {
            ttl,
            addr: None,
            hostname: None,
            rtt_ms: Vec::new(),
            sent: 0,
            received: 0,
            nat: false,
            destination: false,
            cached: false,
            rate_limited: false,
        }
    }
}

/// Sets [`Hop::rate_limited`] on every hop it applies to (and clears it
/// elsewhere): a known router before the last answering hop with replies
/// missing. A silent hop (no address) is not labelled: nothing shows that
/// its router answers anyone.
pub fn label_rate_limited(hops: &mut [Hop]) {
    let last_answered = hops.iter().rposition(|h| h.received > 0);
    for (i, hop) in hops.iter_mut().enumerate() {
        hop.rate_limited = !hop.destination
            && hop.addr.is_some()
            && hop.received < hop.sent
            && last_answered.is_some_and(|last| last > i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ttl: u8, addr: Option<&str>, sent: u32, received: u32) -> Hop {
        Hop {
            addr: addr.map(|a| a.parse().unwrap()),
            sent,
            received,
            rtt_ms: vec![1.0; received as usize],
            ..Hop::silent(ttl)
        }
    }

    #[test]
    fn missing_replies_of_a_known_router_before_an_answer_are_rate_limits() {
        let mut cached = hop(1, Some("10.0.0.1"), 3, 0);
        cached.cached = true;
        let mut destination = hop(5, Some("198.51.100.7"), 3, 3);
        destination.destination = true;
        let mut hops = vec![
            cached,
            hop(2, None, 3, 0),
            hop(3, Some("10.0.2.1"), 3, 1),
            hop(4, Some("10.0.3.1"), 3, 3),
            destination,
        ];
        label_rate_limited(&mut hops);
        let labels: Vec<bool> = hops.iter().map(|h| h.rate_limited).collect();
        // Cached and partly answered: rate limits; silent: unknown; fully
        // answered and the destination: nothing missing.
        assert_eq!(labels, [true, false, true, false, false]);
    }

    #[test]
    fn loss_where_nothing_answers_behind_stays_loss() {
        // The probes may have been lost on the way: nothing later answered.
        let mut hops = vec![
            hop(1, Some("10.0.0.1"), 3, 3),
            hop(2, Some("10.0.1.1"), 3, 1),
        ];
        hops.push(hop(3, None, 3, 0));
        label_rate_limited(&mut hops);
        assert!(hops.iter().all(|h| !h.rate_limited));
    }
}

/// A finished trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceResult {
    /// The peer, `IP:PORT`.
    pub client: SocketAddr,
    /// Us, `IP:PORT`.
    pub server: SocketAddr,
    /// `"ipv4"` or `"ipv6"`.
    pub family: &'static str,
    /// Whether a probe reached the peer.
    pub destination_reached: bool,
    /// Time from the first probe to the result, in milliseconds.
    pub elapsed_ms: f64,
    /// One entry per TTL from 1 to the destination's TTL (or to max hops).
    pub hops: Vec<Hop>,
}

/// The state of a trace as it progresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceSnapshot {
    /// Hops known so far, by TTL (index 0 is TTL 1); grows and changes as
    /// replies and reverse DNS answers arrive.
    pub hops: Vec<Hop>,
    /// The final result, once the trace is over.
    pub done: Option<TraceResult>,
    /// Set instead of `done` when the trace failed.
    pub error: Option<String>,
}

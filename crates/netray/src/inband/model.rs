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
        }
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

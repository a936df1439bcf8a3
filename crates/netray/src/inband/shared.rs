//! What traces learn about routers, shared with the traces that follow.
//!
//! Every visitor's trace crosses the same routers near the server, and a
//! router rate-limits the ICMP errors it sends to one destination (Linux: a
//! burst of 6, then 1 per second for IPv4). Since every trace's ICMP goes to
//! the same destination, this server, concurrent traces exhaust those budgets
//! and most of them would see the near hops as silent. So each trace records
//! the routers it heard from, and a trace whose probe at some TTL got no
//! answer takes the router from this table, marked `cached`, when the table
//! is sure of it.
//!
//! Sure means: the router at TTL `t` is keyed by the router at TTL `t - 1`
//! (the path so far), and only one router was seen after that one recently.
//! Where paths diverge, a predecessor has several successors and nothing is
//! filled in.
//!
//! And corroborated: a visitor knows its own connection's sequence numbers
//! and can forge Time Exceeded for its own probes, so one visitor's replies
//! must never fill another visitor's trace. A router is used only once the
//! traces of at least two unrelated visitors (different /24 for IPv4, /48
//! for IPv6) saw it at that position.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::model::Hop;

/// How long a learned router stays usable.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// The router at a TTL is keyed by the family, the TTL, and the router
/// before it (`None` at TTL 1: the server's own next hop).
type Key = (bool, u8, Option<IpAddr>);

/// Visitors this far apart are unrelated (IPv4 /24, IPv6 /48).
const CORROBORATING_VISITORS: usize = 2;

/// The network of a visitor, for telling unrelated visitors apart.
fn visitor_prefix(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// Who saw a router at a position, and when (per visitor prefix).
#[derive(Debug, Default)]
struct Seen {
    by: HashMap<IpAddr, Instant>,
}

impl Seen {
    fn forget_before(&mut self, now: Instant) {
        self.by.retain(|_, at| now.duration_since(*at) < FRESH_FOR);
    }

    fn corroborated(&self, now: Instant) -> bool {
        self.by
            .values()
            .filter(|at| now.duration_since(**at) < FRESH_FOR)
            .count()
            >= CORROBORATING_VISITORS
    }
}

/// Routers learned from recent traces.
#[derive(Debug, Default)]
pub struct SharedHops {
    table: Mutex<HashMap<Key, HashMap<IpAddr, Seen>>>,
}

impl SharedHops {
    /// Records the routers that answered `peer`'s trace.
    pub fn learn(&self, peer: IpAddr, hops: &[Hop]) {
        self.learn_at(peer, hops, Instant::now());
    }

    fn learn_at(&self, peer: IpAddr, hops: &[Hop], now: Instant) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let v4 = peer.is_ipv4();
        let mut previous: Option<IpAddr> = None;
        for hop in hops {
            if hop.destination {
                break;
            }
            let answered = hop.received > 0 && !hop.cached;
            match (hop.addr, answered) {
                // NAT hops answer from the peer's own address: per-visitor,
                // nothing to share beyond this point.
                (Some(_), _) if hop.nat => break,
                (Some(addr), true) => {
                    let successors = table.entry((v4, hop.ttl, previous)).or_default();
                    successors
                        .entry(addr)
                        .or_default()
                        .by
                        .insert(visitor_prefix(peer), now);
                    previous = Some(addr);
                }
                (Some(addr), false) => previous = Some(addr),
                // A silent hop hides the path: what follows has no known key.
                (None, _) => break,
            }
        }
        table.retain(|_, successors| {
            successors.retain(|_, seen| {
                seen.forget_before(now);
                !seen.by.is_empty()
            });
            !successors.is_empty()
        });
    }

    /// Fills the silent hops of `peer`'s trace that the table is sure of, in
    /// TTL order (a filled hop is the key for the next one).
    pub fn fill(&self, peer: IpAddr, hops: &mut [Hop]) {
        self.fill_at(peer, hops, Instant::now());
    }

    fn fill_at(&self, peer: IpAddr, hops: &mut [Hop], now: Instant) {
        let Ok(table) = self.table.lock() else {
            return;
        };
        let v4 = peer.is_ipv4();
        let mut previous: Option<IpAddr> = None;
        for hop in hops.iter_mut() {
            if hop.destination || hop.nat {
                break;
            }
            if hop.addr.is_none() {
                // Only corroborated routers count, also when deciding whether
                // the path diverges here: an uncorroborated one (perhaps
                // forged) neither fills a hop nor hides the real router.
                let sure = table.get(&(v4, hop.ttl, previous)).and_then(|successors| {
                    let mut fresh = successors.iter().filter(|(_, seen)| seen.corroborated(now));
                    let (addr, _) = fresh.next()?;
                    fresh.next().is_none().then_some(*addr)
                });
                match sure {
                    Some(addr) => {
                        hop.addr = Some(addr);
                        hop.cached = true;
                    }
                    None => break,
                }
            }
            previous = hop.addr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn answered(ttl: u8, addr: &str) -> Hop {
        Hop {
            addr: Some(ip(addr)),
            rtt_ms: vec![1.0],
            sent: 1,
            received: 1,
            ..Hop::silent(ttl)
        }
    }

    fn destination(ttl: u8, addr: &str) -> Hop {
        Hop {
            destination: true,
            ..answered(ttl, addr)
        }
    }

    #[test]
    fn fills_rate_limited_hops_from_another_visitors_trace() {
        let shared = SharedHops::default();
        for a in ["198.51.100.1", "203.0.113.1"] {
            shared.learn(
                ip(a),
                &[
                    answered(1, "10.0.0.1"),
                    answered(2, "10.0.1.1"),
                    destination(3, a),
                ],
            );
        }
        let b = ip("198.51.100.2");
        let mut hops = vec![
            Hop::silent(1),
            Hop::silent(2),
            destination(3, "198.51.100.2"),
        ];
        shared.fill(b, &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[1].addr, Some(ip("10.0.1.1")));
        assert!(hops[0].cached && hops[1].cached);
        assert_eq!(hops[0].received, 0, "a cached hop is not a reply");
        assert!(!hops[2].cached);
    }

    #[test]
    fn never_fills_where_paths_diverge() {
        let shared = SharedHops::default();
        for visitor in ["198.51.100.1", "203.0.113.1"] {
            shared.learn(
                ip(visitor),
                &[answered(1, "10.0.0.1"), answered(2, "10.0.1.1")],
            );
        }
        // After 10.0.0.1 two different corroborated routers: don't guess.
        for visitor in ["198.51.100.9", "192.0.2.9"] {
            shared.learn(
                ip(visitor),
                &[answered(1, "10.0.0.1"), answered(2, "10.0.9.1")],
            );
        }
        let mut hops = vec![Hop::silent(1), Hop::silent(2)];
        shared.fill(ip("198.51.100.2"), &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[1].addr, None);
        assert!(!hops[1].cached);
    }

    #[test]
    fn silent_and_nat_hops_end_what_is_learned() {
        let shared = SharedHops::default();
        let peer = ip("198.51.100.1");
        let mut nat = answered(2, "198.51.100.1");
        nat.nat = true;
        shared.learn(
            peer,
            &[answered(1, "10.0.0.1"), nat, answered(3, "10.0.5.5")],
        );
        shared.learn(
            peer,
            &[
                answered(1, "10.0.0.1"),
                Hop::silent(2),
                answered(3, "10.0.6.6"),
            ],
        );
        let table = shared.table.lock().unwrap();
        assert_eq!(table.len(), 1, "only TTL 1 was learned: {table:?}");
    }

    #[test]
    fn one_visitors_routers_never_fill_another_visitors_trace() {
        let shared = SharedHops::default();
        // A visitor forges a router at TTL 2 (it knows its own sequence
        // numbers), from several addresses of its /24, many times.
        for i in 1..=20 {
            shared.learn(
                ip(&format!("198.51.100.{i}")),
                &[answered(1, "10.0.0.1"), answered(2, "192.0.2.66")],
            );
        }
        // The real router at TTL 1 is corroborated by another network.
        shared.learn(
            ip("203.0.113.5"),
            &[answered(1, "10.0.0.1"), Hop::silent(2)],
        );
        let mut hops = vec![Hop::silent(1), Hop::silent(2)];
        shared.fill(ip("203.0.113.7"), &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert!(hops[0].cached);
        assert_eq!(hops[1].addr, None, "the forged router was filled in");
        // An IPv6 visitor's addresses within one /48 are one visitor too.
        for (i, visitor) in ["2001:db8:1:1::1", "2001:db8:1:2::1"].iter().enumerate() {
            shared.learn(ip(visitor), &[answered(1, &format!("fd00::{}", i + 1))]);
        }
        let mut hops = vec![Hop::silent(1)];
        shared.fill(ip("2001:db8:2::1"), &mut hops);
        assert_eq!(hops[0].addr, None);
    }

    #[test]
    fn forgets_after_a_while() {
        let shared = SharedHops::default();
        let then = Instant::now();
        shared.learn_at(ip("198.51.100.1"), &[answered(1, "10.0.0.1")], then);
        shared.learn_at(ip("203.0.113.1"), &[answered(1, "10.0.0.1")], then);
        let mut hops = vec![Hop::silent(1)];
        shared.fill_at(
            ip("198.51.100.2"),
            &mut hops,
            then + FRESH_FOR + Duration::from_secs(1),
        );
        assert_eq!(hops[0].addr, None);
    }
}

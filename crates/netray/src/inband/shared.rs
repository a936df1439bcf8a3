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

#[derive(Debug)]
struct Seen {
    at: Instant,
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
                    successors.insert(addr, Seen { at: now });
                    previous = Some(addr);
                }
                (Some(addr), false) => previous = Some(addr),
                // A silent hop hides the path: what follows has no known key.
                (None, _) => break,
            }
        }
        table.retain(|_, successors| {
            successors.retain(|_, seen| now.duration_since(seen.at) < FRESH_FOR);
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
                let sure = table.get(&(v4, hop.ttl, previous)).and_then(|successors| {
                    let mut fresh = successors
                        .iter()
                        .filter(|(_, seen)| now.duration_since(seen.at) < FRESH_FOR);
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
        let a = ip("198.51.100.1");
        shared.learn(
            a,
            &[
                answered(1, "10.0.0.1"),
                answered(2, "10.0.1.1"),
                destination(3, "198.51.100.1"),
            ],
        );
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
        shared.learn(
            ip("198.51.100.1"),
            &[answered(1, "10.0.0.1"), answered(2, "10.0.1.1")],
        );
        // After 10.0.0.1 two different routers were seen: don't guess.
        shared.learn(
            ip("198.51.100.9"),
            &[answered(1, "10.0.0.1"), answered(2, "10.0.9.1")],
        );
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
    fn forgets_after_a_while() {
        let shared = SharedHops::default();
        let then = Instant::now();
        shared.learn_at(ip("198.51.100.1"), &[answered(1, "10.0.0.1")], then);
        let mut hops = vec![Hop::silent(1)];
        shared.fill_at(
            ip("198.51.100.2"),
            &mut hops,
            then + FRESH_FOR + Duration::from_secs(1),
        );
        assert_eq!(hops[0].addr, None);
    }
}

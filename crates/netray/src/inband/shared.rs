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
//! Sure means: the router at TTL `t` is keyed by the nearest router before
//! it, with that router's TTL (the anchor: the router at `t - 1`, or, when
//! the hops between are silent, the last one that answered before the gap;
//! none when nothing before `t` answered), and only one router was seen at
//! `t` after that anchor recently. Keying by the anchor rather than by the
//! hop just before lets the table bridge a router that answers nobody: the
//! hops behind it are as shared as the ones in front. Where paths diverge,
//! an anchor has several successors at a TTL and nothing is filled in.
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

/// The nearest router before a TTL that is known (answered, or filled in):
/// its TTL and address. `None`: nothing before answered (at TTL 1, the
/// server's own next hop).
type Anchor = Option<(u8, IpAddr)>;

/// The router at a TTL is keyed by the family, the TTL, and its anchor.
type Key = (bool, u8, Anchor);

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
        let mut anchor: Anchor = None;
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
                    let successors = table.entry((v4, hop.ttl, anchor)).or_default();
                    successors
                        .entry(addr)
                        .or_default()
                        .by
                        .insert(visitor_prefix(peer), now);
                    anchor = Some((hop.ttl, addr));
                }
                // Cached hops are keys, never answers.
                (Some(addr), false) => anchor = Some((hop.ttl, addr)),
                // A silent hop: the next router is keyed by the one before
                // the gap.
                (None, _) => {}
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
        let mut anchor: Anchor = None;
        for hop in hops.iter_mut() {
            if hop.destination || hop.nat {
                break;
            }
            if hop.addr.is_none() {
                // Only corroborated routers count, also when deciding whether
                // the path diverges here: an uncorroborated one (perhaps
                // forged) neither fills a hop nor hides the real router.
                let sure = table.get(&(v4, hop.ttl, anchor)).and_then(|successors| {
                    let mut fresh = successors.iter().filter(|(_, seen)| seen.corroborated(now));
                    let (addr, _) = fresh.next()?;
                    fresh.next().is_none().then_some(*addr)
                });
                if let Some(addr) = sure {
                    hop.addr = Some(addr);
                    hop.cached = true;
                }
                // Not sure: the hop stays silent, and the next one is keyed
                // by the anchor before it, as the traces that saw the same
                // gap learned it.
            }
            if let Some(addr) = hop.addr {
                anchor = Some((hop.ttl, addr));
            }
        }
    }
}

/// Replies beyond the modelled budget that show a router does not limit
/// its ICMP errors the way Linux does by default (or not at all): the
/// model then stops holding probes back for it. A little slack absorbs
/// clock differences between the router's refill and our receive times.
const OVERDRAFT: f64 = 2.0;

/// A router's modelled ICMP error budget toward this server.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: Instant,
    /// It answered more than the model allows: not (Linux-)limited.
    unlimited: bool,
}

/// Linux's defaults, per destination: a burst of 6 tokens, refilled at 1
/// per second for IPv4 (`net.ipv4.icmp_ratelimit` = 1000 ms) and about 4
/// per second for IPv6 (`net.ipv6.icmp.ratelimit` = 1000 ms, divided by 4
/// for a route to a /64). Returns (burst, tokens per second).
const fn linux_default_budget(v4: bool) -> (f64, f64) {
    if v4 { (6.0, 1.0) } else { (6.0, 4.0) }
}

/// The ICMP error budgets of the routers our traces cross, modelled from
/// the replies every trace gets: routers limit the errors they send per
/// destination, and every trace's errors go to this server, so the traces
/// share one budget per router. A trace that already heard a router holds
/// its extra probes back while that router's budget is spent: they would
/// use up tokens other traces need to learn their hops (a refused probe
/// costs the router nothing, an answered one a token), or go unanswered
/// and read as loss.
#[derive(Debug, Default)]
pub struct IcmpBudgets {
    routers: Mutex<HashMap<IpAddr, Budget>>,
}

impl IcmpBudgets {
    /// Records a reply from `router`: one token of its budget spent.
    pub fn replied(&self, router: IpAddr) {
        self.replied_at(router, Instant::now());
    }

    fn replied_at(&self, router: IpAddr, now: Instant) {
        let Ok(mut routers) = self.routers.lock() else {
            return;
        };
        let (burst, _) = linux_default_budget(router.is_ipv4());
        let budget = routers.entry(router).or_insert(Budget {
            tokens: burst,
            at: now,
            unlimited: false,
        });
        refill(router, budget, now);
        budget.tokens -= 1.0;
        if budget.tokens < -OVERDRAFT {
            budget.unlimited = true;
        }
        // Routers idle for a while are back at a full burst: forget them.
        routers.retain(|_, b| now.duration_since(b.at) < FRESH_FOR);
    }

    /// Whether `router` has (as modelled) no token left for another reply.
    pub fn spent(&self, router: IpAddr) -> bool {
        self.spent_at(router, Instant::now())
    }

    fn spent_at(&self, router: IpAddr, now: Instant) -> bool {
        let Ok(mut routers) = self.routers.lock() else {
            return false;
        };
        routers.get_mut(&router).is_some_and(|budget| {
            refill(router, budget, now);
            !budget.unlimited && budget.tokens < 1.0
        })
    }
}

fn refill(router: IpAddr, budget: &mut Budget, now: Instant) {
    let (burst, per_second) = linux_default_budget(router.is_ipv4());
    let elapsed = now.saturating_duration_since(budget.at).as_secs_f64();
    budget.tokens = (budget.tokens + elapsed * per_second).min(burst);
    budget.at = now;
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
    fn nat_hops_end_what_is_learned_and_silent_ones_do_not() {
        let shared = SharedHops::default();
        let peer = ip("198.51.100.1");
        let mut nat = answered(2, "198.51.100.1");
        nat.nat = true;
        shared.learn(
            peer,
            &[answered(1, "10.0.0.1"), nat, answered(3, "10.0.5.5")],
        );
        {
            let table = shared.table.lock().unwrap();
            assert_eq!(table.len(), 1, "only TTL 1 was learned: {table:?}");
        }
        shared.learn(
            peer,
            &[
                answered(1, "10.0.0.1"),
                Hop::silent(2),
                answered(3, "10.0.6.6"),
            ],
        );
        let table = shared.table.lock().unwrap();
        let behind_gap = &table[&(true, 3, Some((1, ip("10.0.0.1"))))];
        assert!(behind_gap.contains_key(&ip("10.0.6.6")), "{table:?}");
        assert_eq!(table.len(), 2, "{table:?}");
    }

    /// Two visitors of different networks saw `r1, *, r3` with router 2
    /// silent (it answers nobody).
    fn learned_across_a_silent_router() -> SharedHops {
        let shared = SharedHops::default();
        for visitor in ["198.51.100.1", "203.0.113.1"] {
            shared.learn(
                ip(visitor),
                &[
                    answered(1, "10.0.0.1"),
                    Hop::silent(2),
                    answered(3, "10.0.2.1"),
                    answered(4, "10.0.3.1"),
                    destination(5, visitor),
                ],
            );
        }
        shared
    }

    #[test]
    fn fills_the_hops_behind_a_silent_router() {
        let shared = learned_across_a_silent_router();
        // A third visitor whose probes the rate-limited routers ignored; its
        // own router at TTL 4 answered.
        let mut hops = vec![
            Hop::silent(1),
            Hop::silent(2),
            Hop::silent(3),
            answered(4, "10.0.3.1"),
            destination(5, "192.0.2.9"),
        ];
        shared.fill(ip("192.0.2.9"), &mut hops);
        let addrs: Vec<Option<IpAddr>> = hops.iter().map(|h| h.addr).collect();
        assert_eq!(
            addrs,
            [
                Some(ip("10.0.0.1")),
                None,
                Some(ip("10.0.2.1")),
                Some(ip("10.0.3.1")),
                Some(ip("192.0.2.9")),
            ]
        );
        let cached: Vec<bool> = hops.iter().map(|h| h.cached).collect();
        assert_eq!(cached, [true, false, true, false, false]);
    }

    #[test]
    fn a_gap_is_bridged_only_with_corroboration() {
        let shared = SharedHops::default();
        // TTL 1 is corroborated by two networks, but only one network (from
        // many addresses) claims a router behind the silent hop: forgeable.
        shared.learn(
            ip("203.0.113.1"),
            &[answered(1, "10.0.0.1"), Hop::silent(2), Hop::silent(3)],
        );
        for i in 1..=10 {
            shared.learn(
                ip(&format!("198.51.100.{i}")),
                &[
                    answered(1, "10.0.0.1"),
                    Hop::silent(2),
                    answered(3, "192.0.2.66"),
                ],
            );
        }
        let mut hops = vec![Hop::silent(1), Hop::silent(2), Hop::silent(3)];
        shared.fill(ip("192.0.2.9"), &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[2].addr, None, "one network's router was filled in");
    }

    #[test]
    fn paths_diverging_behind_a_gap_are_not_filled() {
        let shared = learned_across_a_silent_router();
        for visitor in ["192.0.2.1", "192.0.3.1"] {
            shared.learn(
                ip(visitor),
                &[
                    answered(1, "10.0.0.1"),
                    Hop::silent(2),
                    answered(3, "10.0.9.1"),
                ],
            );
        }
        let mut hops = vec![Hop::silent(1), Hop::silent(2), Hop::silent(3)];
        shared.fill(ip("192.0.4.1"), &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[2].addr, None);
    }

    #[test]
    fn a_router_heard_in_the_gap_keys_what_follows() {
        let shared = learned_across_a_silent_router();
        // This visitor heard a router at TTL 2 (its path differs there):
        // the routers learned behind the others' gap are not its own.
        let mut hops = vec![Hop::silent(1), answered(2, "10.0.7.1"), Hop::silent(3)];
        shared.fill(ip("192.0.2.9"), &mut hops);
        assert_eq!(hops[0].addr, Some(ip("10.0.0.1")));
        assert_eq!(hops[2].addr, None);
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

    #[test]
    fn a_routers_budget_is_spent_after_the_burst_and_refills() {
        let budgets = IcmpBudgets::default();
        let router = ip("10.0.0.1");
        let then = Instant::now();
        assert!(!budgets.spent_at(router, then), "unknown: not spent");
        for _ in 0..5 {
            budgets.replied_at(router, then);
        }
        assert!(!budgets.spent_at(router, then), "one token left");
        budgets.replied_at(router, then);
        assert!(budgets.spent_at(router, then));
        // IPv4: one token per second.
        assert!(budgets.spent_at(router, then + Duration::from_millis(900)));
        assert!(!budgets.spent_at(router, then + Duration::from_millis(1100)));
        // IPv6 refills about four times as fast.
        let v6 = ip("fd00::1");
        for _ in 0..6 {
            budgets.replied_at(v6, then);
        }
        assert!(budgets.spent_at(v6, then));
        assert!(!budgets.spent_at(v6, then + Duration::from_millis(300)));
    }

    #[test]
    fn a_router_answering_beyond_the_model_is_not_held_back() {
        let budgets = IcmpBudgets::default();
        let router = ip("10.0.0.1");
        let then = Instant::now();
        for _ in 0..6 {
            budgets.replied_at(router, then);
        }
        assert!(budgets.spent_at(router, then));
        // Three replies the model says it could not send: no such limit.
        for _ in 0..3 {
            budgets.replied_at(router, then);
        }
        assert!(!budgets.spent_at(router, then));
    }
}

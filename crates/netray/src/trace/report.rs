//! Per-hop statistics over one or more rounds, and the mtr-like table.

use std::{fmt::Write as _, net::IpAddr};

use crate::inband::model::{Hop, TraceResult};

/// What is known of one TTL over all rounds so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HopStats {
    /// The TTL.
    pub ttl: u8,
    /// Every address that answered at this TTL, first seen first.
    pub addrs: Vec<IpAddr>,
    /// Reverse DNS name of the latest address, when known.
    pub hostname: Option<String>,
    /// Probes sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Smallest RTT (ms).
    pub min_ms: Option<f64>,
    /// Largest RTT (ms).
    pub max_ms: Option<f64>,
    /// Latest RTT (ms).
    pub last_ms: Option<f64>,
    sum_ms: f64,
    timed: u64,
    jitter_sum_ms: f64,
    jitter_samples: u64,
    /// Answered from the destination's own address before the destination
    /// (a NAT in front of it), in the latest round.
    pub nat: bool,
    /// The destination's TTL in the latest round.
    pub destination: bool,
    /// The address came from other traces, not from a reply (latest round).
    pub cached: bool,
}

impl HopStats {
    /// Lost probes in percent (0 when nothing was sent).
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * (self.sent.saturating_sub(self.received)) as f64 / self.sent as f64
    }

    /// Mean RTT (ms).
    pub fn avg_ms(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.sum_ms / self.timed as f64)
    }

    /// Mean absolute difference between consecutive RTTs (ms), as mtr's
    /// "Javg": needs two replies.
    pub fn jitter_ms(&self) -> Option<f64> {
        (self.jitter_samples > 0).then(|| self.jitter_sum_ms / self.jitter_samples as f64)
    }

    fn add(&mut self, hop: &Hop) {
        self.ttl = hop.ttl;
        if let Some(addr) = hop.addr
            && !self.addrs.contains(&addr)
        {
            self.addrs.push(addr);
        }
        if hop.hostname.is_some() {
            self.hostname.clone_from(&hop.hostname);
        }
        self.sent += u64::from(hop.sent);
        self.received += u64::from(hop.received);
        for &rtt in &hop.rtt_ms {
            if let Some(last) = self.last_ms {
                self.jitter_sum_ms += (rtt - last).abs();
                self.jitter_samples += 1;
            }
            self.last_ms = Some(rtt);
            self.sum_ms += rtt;
            self.min_ms = Some(self.min_ms.map_or(rtt, |m| m.min(rtt)));
            self.max_ms = Some(self.max_ms.map_or(rtt, |m| m.max(rtt)));
        }
        // A destination answer that named no probe is received but untimed.
        self.timed += hop.rtt_ms.len() as u64;
        self.nat = hop.nat;
        self.destination = hop.destination;
        self.cached = hop.cached;
    }
}

/// Statistics of every TTL over the rounds of a trace (`--watch`), or of a
/// single round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    hops: Vec<HopStats>,
    /// How many hops the latest round listed.
    shown: usize,
    /// Rounds added.
    pub rounds: u64,
    /// Rounds that reached the destination.
    pub reached: u64,
}

impl Stats {
    /// Adds one round's result.
    pub fn add(&mut self, result: &TraceResult) {
        self.rounds += 1;
        if result.destination_reached {
            self.reached += 1;
        }
        for hop in &result.hops {
            let index = usize::from(hop.ttl.max(1) - 1);
            if self.hops.len() <= index {
                self.hops.resize_with(index + 1, HopStats::default);
            }
            self.hops[index].add(hop);
        }
        // TTLs past this round's destination are not part of the path now.
        for stats in self.hops.iter_mut().skip(result.hops.len()) {
            stats.destination = false;
        }
        self.shown = result.hops.len();
    }

    /// The TTLs of the latest round's path, with their statistics.
    pub fn hops(&self) -> &[HopStats] {
        &self.hops[..self.shown.min(self.hops.len())]
    }

    /// The table: one line per TTL (`jitter`: add the jitter column).
    pub fn table(&self, jitter: bool) -> String {
        let hops = self.hops();
        let addr_of = |h: &HopStats| {
            h.addrs
                .last()
                .map_or_else(|| "*".to_string(), ToString::to_string)
        };
        let name_of = |h: &HopStats| h.hostname.clone().unwrap_or_else(|| "-".to_string());
        let addr_width = hops
            .iter()
            .map(|h| addr_of(h).len())
            .max()
            .unwrap_or(0)
            .max(7);
        let name_width = hops
            .iter()
            .map(|h| name_of(h).len())
            .max()
            .unwrap_or(0)
            .max(8);
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let mut out = String::new();
        let _ = write!(
            out,
            "{:>3}  {:<addr_width$}  {:<name_width$}  {:>6}  {:>4}  {:>4}  {:>8}  {:>8}  {:>8}",
            "TTL", "ADDRESS", "HOSTNAME", "LOSS%", "SENT", "RECV", "MIN ms", "AVG ms", "MAX ms"
        );
        if jitter {
            let _ = write!(out, "  {:>8}", "JITTER");
        }
        out.push_str("  NOTE\n");
        for h in hops {
            let _ = write!(
                out,
                "{:>3}  {:<addr_width$}  {:<name_width$}  {:>5.1}%  {:>4}  {:>4}  {:>8}  {:>8}  {:>8}",
                h.ttl,
                addr_of(h),
                name_of(h),
                h.loss_percent(),
                h.sent,
                h.received,
                ms(h.min_ms),
                ms(h.avg_ms()),
                ms(h.max_ms),
            );
            if jitter {
                let _ = write!(out, "  {:>8}", ms(h.jitter_ms()));
            }
            let mut notes: Vec<String> = Vec::new();
            if h.destination {
                notes.push("destination".into());
            }
            if h.nat {
                notes.push("NAT".into());
            }
            if h.cached {
                notes.push("cached".into());
            }
            if h.addrs.len() > 1 {
                let others: Vec<String> = h.addrs[..h.addrs.len() - 1]
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                notes.push(format!("also {}", others.join(", ")));
            }
            let notes = notes.join(", ");
            if notes.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "  {notes}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ttl: u8, addr: Option<&str>, rtts: &[f64], sent: u32) -> Hop {
        Hop {
            addr: addr.map(|a| a.parse().unwrap()),
            rtt_ms: rtts.to_vec(),
            sent,
            received: rtts.len() as u32,
            ..Hop::silent(ttl)
        }
    }

    fn result(hops: Vec<Hop>) -> TraceResult {
        TraceResult {
            client: "10.0.3.2:443".parse().unwrap(),
            server: "10.0.0.1:40000".parse().unwrap(),
            family: "ipv4",
            destination_reached: hops.last().is_some_and(|h| h.destination),
            elapsed_ms: 1.0,
            hops,
        }
    }

    #[test]
    fn loss_rtt_and_jitter_accumulate_over_rounds() {
        let mut stats = Stats::default();
        let mut dest = hop(3, Some("10.0.2.2"), &[2.0, 4.0], 3);
        dest.destination = true;
        stats.add(&result(vec![
            hop(1, Some("10.0.0.2"), &[1.0, 3.0, 2.0], 3),
            hop(2, None, &[], 3),
            dest.clone(),
        ]));
        stats.add(&result(vec![
            hop(1, Some("10.0.0.2"), &[1.0], 3),
            hop(2, None, &[], 3),
            dest,
        ]));
        let hops = stats.hops();
        assert_eq!(hops.len(), 3);
        assert_eq!((hops[0].sent, hops[0].received), (6, 4));
        assert!((hops[0].loss_percent() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(hops[0].min_ms, Some(1.0));
        assert_eq!(hops[0].max_ms, Some(3.0));
        assert_eq!(hops[0].avg_ms(), Some(7.0 / 4.0));
        // |3-1| + |2-3| + |1-2| over 3 differences.
        assert_eq!(hops[0].jitter_ms(), Some(4.0 / 3.0));
        assert_eq!(hops[1].loss_percent(), 100.0);
        assert!(hops[2].destination);
        assert_eq!(stats.rounds, 2);
        assert_eq!(stats.reached, 2);
        let table = stats.table(true);
        assert!(table.contains("JITTER"), "{table}");
        assert!(table.lines().nth(2).unwrap().contains(" * "), "{table}");
        assert!(
            table.lines().nth(3).unwrap().ends_with("destination"),
            "{table}"
        );
    }

    #[test]
    fn a_shorter_path_hides_the_old_tail_and_changed_routers_are_noted() {
        let mut stats = Stats::default();
        stats.add(&result(vec![
            hop(1, Some("10.0.0.2"), &[1.0], 1),
            hop(2, Some("10.0.1.2"), &[1.0], 1),
        ]));
        let mut dest = hop(1, Some("10.0.9.9"), &[1.0], 1);
        dest.destination = true;
        stats.add(&result(vec![dest]));
        assert_eq!(stats.hops().len(), 1);
        let table = stats.table(false);
        assert!(table.contains("also 10.0.0.2"), "{table}");
        assert!(!table.contains("JITTER"));
    }
}

//! The state of one trace: which probes went out, which replies match them,
//! and what the path looks like so far. Pure logic, fed with kernel events;
//! no I/O, so every rule here is unit-tested without a kernel.
//!
//! Matching rules (so forged or stray ICMP cannot inject hops or end a trace):
//! - the capture only reports ICMP errors whose quoted addresses and ports are
//!   those of a traced flow; here the quoted TCP sequence number must also be
//!   one this trace sent as a probe, else the message is ignored;
//! - a probe reached the destination when the peer's ACK carries a (D-)SACK
//!   block covering the probe's one byte; a peer without SACK or an RST still
//!   marks the destination as reached, at the TTL after the last router, but
//!   only a segment the peer's TCP could have sent counts: an RST or a
//!   duplicate ACK must carry exactly the peer's next sequence number (what
//!   Linux requires of an RST, RFC 5961 3.2), so a blind off-path RST or ACK
//!   cannot end a trace. Such segments are counted as unacceptable.

use std::{collections::HashMap, net::IpAddr};

use netray_common::inband::{
    EVENT_DEST_UNREACHABLE, EVENT_TCP, EVENT_TIME_EXCEEDED, InbandEvent, MAX_TCP_OPTIONS,
};

use super::{
    model::Hop,
    probe::{ProbeTemplate, sack_blocks},
};

/// TCP RST flag bit.
const TCP_RST: u8 = 0x04;
/// TCP SYN flag bit.
const TCP_SYN: u8 = 0x02;
/// TCP FIN flag bit.
const TCP_FIN: u8 = 0x01;

/// How a trace probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Highest TTL probed.
    pub max_hops: u8,
    /// Probes per TTL.
    pub probes_per_ttl: u8,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_hops: 30,
            probes_per_ttl: 3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct SentProbe {
    ttl: u8,
    sent_ns: u64,
    answered: bool,
}

#[derive(Clone, Debug, Default)]
struct TtlState {
    router: Option<IpAddr>,
    router_rtts: Vec<f64>,
    destination_rtts: Vec<f64>,
    sent: u32,
}

/// One TTL's probes and replies so far (see [`Trace::progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TtlProgress {
    /// Somebody answered a probe of this TTL (a router, or the destination).
    pub answered: bool,
    /// The fastest reply to a probe of this TTL, in milliseconds.
    pub fastest_ms: Option<f64>,
    /// When the first probe of this TTL left (CLOCK_MONOTONIC ns).
    pub first_sent_ns: Option<u64>,
    /// When the latest probe of this TTL still unanswered left.
    pub last_unanswered_sent_ns: Option<u64>,
}

/// What an event meant to the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A reply to one of our probes: the trace changed.
    Matched,
    /// A second reply to a probe already answered.
    Duplicate,
    /// Not a reply to any probe of this trace (stray, late, or forged).
    Ignored,
}

/// One trace in progress.
#[derive(Debug)]
pub struct Trace {
    config: EngineConfig,
    peer: IpAddr,
    /// Lowest sequence number already acknowledged by the peer; probes count
    /// down from it.
    acked: u32,
    /// The peer's next sequence number as our TCP expects it (rcv_nxt):
    /// the probes' acknowledgment number, moved on by in-order data.
    peer_next: u32,
    probes: HashMap<u32, SentProbe>,
    ttls: Vec<TtlState>,
    /// Lowest TTL whose probe the peer acknowledged.
    destination_ttl: Option<u8>,
    /// The peer answered (RST, or an ACK without SACK) but we cannot tell which probe.
    destination_unidentified: bool,
    matched: u64,
    ignored: u64,
    /// Peer segments that could not be the peer's TCP answering (RST or
    /// duplicate ACK at another sequence number): blind or forged.
    unacceptable: u64,
}

impl Trace {
    /// A new trace of the flow described by `template`.
    pub fn new(config: EngineConfig, template: &ProbeTemplate) -> Self {
        let max_hops = config.max_hops.max(1);
        Self {
            config: EngineConfig { max_hops, ..config },
            peer: template.peer,
            acked: template.acked,
            peer_next: template.ack,
            probes: HashMap::new(),
            ttls: vec![TtlState::default(); usize::from(max_hops)],
            destination_ttl: None,
            destination_unidentified: false,
            matched: 0,
            ignored: 0,
            unacceptable: 0,
        }
    }

    /// Peer segments ignored as unacceptable (see the module documentation).
    pub const fn unacceptable(&self) -> u64 {
        self.unacceptable
    }

    /// The configuration in force.
    pub const fn config(&self) -> EngineConfig {
        self.config
    }

    /// Sequence number for the `attempt`-th probe (0-based) with `ttl`: each
    /// (ttl, attempt) gets its own byte below the acknowledged edge.
    pub fn probe_seq(&self, ttl: u8, attempt: u8) -> u32 {
        let index =
            u32::from(attempt) * u32::from(self.config.max_hops) + u32::from(ttl.max(1) - 1);
        self.acked.wrapping_sub(1).wrapping_sub(index)
    }

    /// Records that the probe (`ttl`, `attempt`) left at `sent_ns`
    /// (CLOCK_MONOTONIC) and returns its sequence number.
    pub fn record_sent(&mut self, ttl: u8, attempt: u8, sent_ns: u64) -> u32 {
        let seq = self.probe_seq(ttl, attempt);
        self.probes.insert(
            seq,
            SentProbe {
                ttl,
                sent_ns,
                answered: false,
            },
        );
        if let Some(state) = self.ttls.get_mut(usize::from(ttl) - 1) {
            state.sent += 1;
        }
        seq
    }

    /// Feeds one kernel event of this trace's flow.
    pub fn on_event(&mut self, event: &InbandEvent) -> Verdict {
        let verdict = match event.kind {
            EVENT_TIME_EXCEEDED | EVENT_DEST_UNREACHABLE => self.on_icmp(event),
            EVENT_TCP => self.on_peer_segment(event),
            _ => Verdict::Ignored,
        };
        match verdict {
            Verdict::Matched => self.matched += 1,
            Verdict::Ignored => self.ignored += 1,
            Verdict::Duplicate => {}
        }
        verdict
    }

    fn on_icmp(&mut self, event: &InbandEvent) -> Verdict {
        let Some(probe) = self.probes.get_mut(&event.seq) else {
            return Verdict::Ignored;
        };
        if probe.answered {
            return Verdict::Duplicate;
        }
        probe.answered = true;
        let rtt = rtt_ms(probe.sent_ns, event.timestamp_ns);
        let ttl = probe.ttl;
        let from = addr_from_bytes(event.flow.family, event.from_addr);
        let state = &mut self.ttls[usize::from(ttl) - 1];
        // Keep the first responder: in-band probes share the connection's
        // 5-tuple, so ECMP sends them all down one path.
        state.router.get_or_insert(from);
        state.router_rtts.push(rtt);
        Verdict::Matched
    }

    fn on_peer_segment(&mut self, event: &InbandEvent) -> Verdict {
        let in_order = event.seq == self.peer_next;
        if event.tcp_flags & TCP_RST != 0 {
            // Linux resets a connection only for an RST at exactly rcv_nxt
            // (an in-window one gets a challenge ACK); the peer's RST to a
            // probe takes its sequence number from the probe's ACK field,
            // which is rcv_nxt too.
            if !in_order {
                self.unacceptable += 1;
                return Verdict::Ignored;
            }
            if self.probes.is_empty() {
                return Verdict::Ignored;
            }
            self.destination_unidentified = true;
            return Verdict::Matched;
        }
        let seq_len = u32::from(event.payload_len)
            + u32::from(event.tcp_flags & TCP_SYN != 0)
            + u32::from(event.tcp_flags & TCP_FIN != 0);
        if in_order && seq_len > 0 {
            self.peer_next = self.peer_next.wrapping_add(seq_len);
        }
        let options_len = usize::from(event.options_len).min(MAX_TCP_OPTIONS);
        let mut matched = false;
        let mut duplicate = false;
        let blocks = sack_blocks(&event.options[..options_len]);
        for &(left, right) in &blocks {
            // D-SACK blocks name one probe byte; cap the walk so a bogus
            // block cannot make us loop over 4 GiB of sequence space.
            let span = right.wrapping_sub(left).min(256);
            for offset in 0..span {
                let seq = left.wrapping_add(offset);
                let Some(probe) = self.probes.get_mut(&seq) else {
                    continue;
                };
                if probe.answered {
                    duplicate = true;
                    continue;
                }
                probe.answered = true;
                let ttl = probe.ttl;
                let rtt = rtt_ms(probe.sent_ns, event.timestamp_ns);
                self.ttls[usize::from(ttl) - 1].destination_rtts.push(rtt);
                self.destination_ttl = Some(self.destination_ttl.map_or(ttl, |d| d.min(ttl)));
                matched = true;
            }
        }
        if matched {
            return Verdict::Matched;
        }
        if duplicate {
            return Verdict::Duplicate;
        }
        // A duplicate ACK (no data, no SACK, acknowledging exactly the edge
        // our probes sit below) from the peer after we probed: the peer got
        // a probe, but without SACK we cannot tell which. A segment whose
        // SACK blocks name other bytes is not an answer to us, and one at a
        // sequence number other than the peer's next is not the peer's.
        let pure_dup_ack = seq_len == 0 && event.ack == self.acked && blocks.is_empty();
        let probed = !self.probes.is_empty();
        if probed && pure_dup_ack {
            if !in_order {
                self.unacceptable += 1;
                return Verdict::Ignored;
            }
            self.destination_unidentified = true;
            return Verdict::Matched;
        }
        Verdict::Ignored
    }

    /// The destination's TTL, if known: the lowest TTL the peer acknowledged,
    /// or, when the peer's answer named no probe, the TTL after the farthest
    /// router that answered.
    pub fn destination_ttl(&self) -> Option<u8> {
        self.destination_ttl.or_else(|| {
            self.destination_unidentified.then(|| {
                let last_router = self
                    .ttls
                    .iter()
                    .rposition(|t| t.router.is_some())
                    .map_or(0, |i| i + 1);
                (last_router as u8 + 1).min(self.config.max_hops)
            })
        })
    }

    /// The router that answered this trace's own probes at `ttl`, if any.
    pub fn router_at(&self, ttl: u8) -> Option<IpAddr> {
        self.ttls.get(usize::from(ttl).checked_sub(1)?)?.router
    }

    /// What each TTL (index `ttl - 1`, up to `max_hops`) has sent and
    /// heard: what the completion rules ([`super::schedule`]) decide on.
    pub fn progress(&self) -> Vec<TtlProgress> {
        let unidentified_at = if self.destination_ttl.is_none() {
            self.destination_ttl()
        } else {
            None
        };
        let mut progress: Vec<TtlProgress> = self
            .ttls
            .iter()
            .zip(1u8..)
            .map(|(state, ttl)| TtlProgress {
                answered: state.router.is_some()
                    || !state.destination_rtts.is_empty()
                    || unidentified_at == Some(ttl),
                fastest_ms: state
                    .router_rtts
                    .iter()
                    .chain(&state.destination_rtts)
                    .copied()
                    .reduce(f64::min),
                first_sent_ns: None,
                last_unanswered_sent_ns: None,
            })
            .collect();
        for probe in self.probes.values() {
            let Some(ttl) = progress.get_mut(usize::from(probe.ttl) - 1) else {
                continue;
            };
            ttl.first_sent_ns = Some(
                ttl.first_sent_ns
                    .map_or(probe.sent_ns, |t| t.min(probe.sent_ns)),
            );
            if !probe.answered {
                ttl.last_unanswered_sent_ns = Some(
                    ttl.last_unanswered_sent_ns
                        .map_or(probe.sent_ns, |t| t.max(probe.sent_ns)),
                );
            }
        }
        progress
    }

    /// Replies that matched a probe / events that did not.
    pub const fn counts(&self) -> (u64, u64) {
        (self.matched, self.ignored)
    }

    /// The hops as known now: TTL 1 to the destination, or to the farthest
    /// TTL with an answer (all of `max_hops` in the final result when the
    /// destination was not reached, see [`Trace::final_hops`]).
    pub fn hops(&self) -> Vec<Hop> {
        let last = self.destination_ttl().unwrap_or_else(|| {
            self.ttls
                .iter()
                .rposition(|t| t.router.is_some())
                .map_or(0, |i| i as u8 + 1)
        });
        self.hops_to(last)
    }

    /// The hops of the final result: to the destination, or to `max_hops`.
    pub fn final_hops(&self) -> Vec<Hop> {
        self.hops_to(self.destination_ttl().unwrap_or(self.config.max_hops))
    }

    fn hops_to(&self, last: u8) -> Vec<Hop> {
        let destination = self.destination_ttl();
        (1..=last)
            .map(|ttl| {
                let state = &self.ttls[usize::from(ttl) - 1];
                let mut hop = Hop::silent(ttl);
                hop.sent = state.sent;
                if Some(ttl) == destination {
                    hop.destination = true;
                    hop.addr = Some(self.peer);
                    hop.rtt_ms.clone_from(&state.destination_rtts);
                    if hop.rtt_ms.is_empty() && self.destination_ttl.is_none() {
                        // Reached, but the peer's answer named no probe.
                        hop.received = 1;
                    }
                } else {
                    hop.addr = state.router;
                    hop.rtt_ms.clone_from(&state.router_rtts);
                    hop.nat = state.router == Some(self.peer);
                }
                hop.received = hop.received.max(hop.rtt_ms.len() as u32);
                hop
            })
            .collect()
    }
}

/// The address in an event's 16 address bytes (IPv4 in the first four).
fn addr_from_bytes(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == netray_common::inband::FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

fn rtt_ms(sent_ns: u64, received_ns: u64) -> f64 {
    received_ns.saturating_sub(sent_ns) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use netray_common::inband::{FAMILY_IPV4, FlowKey};

    const PEER: &str = "198.51.100.7";

    fn template() -> ProbeTemplate {
        ProbeTemplate::example()
    }

    fn v4(addr: &str) -> [u8; 16] {
        let ip: std::net::Ipv4Addr = addr.parse().unwrap();
        let mut out = [0; 16];
        out[..4].copy_from_slice(&ip.octets());
        out
    }

    fn icmp(seq: u32, from: &str, at_ns: u64) -> InbandEvent {
        InbandEvent {
            timestamp_ns: at_ns,
            flow: FlowKey {
                family: FAMILY_IPV4,
                ..FlowKey::default()
            },
            from_addr: v4(from),
            seq,
            ack: 0,
            ifindex: 1,
            payload_len: 0,
            window: 0,
            kind: EVENT_TIME_EXCEEDED,
            icmp_type: 11,
            icmp_code: 0,
            ttl: 1,
            tcp_flags: 0,
            options_len: 0,
            pad: [0; 2],
            options: [0; MAX_TCP_OPTIONS],
        }
    }

    fn dsack(left: u32, at_ns: u64) -> InbandEvent {
        let mut event = icmp(0, PEER, at_ns);
        event.kind = EVENT_TCP;
        // The peer's next sequence number (the template's ack).
        event.seq = 5000;
        event.ack = 10_000;
        event.tcp_flags = 0x10;
        let mut options = vec![1, 1, 5, 10];
        options.extend_from_slice(&left.to_be_bytes());
        options.extend_from_slice(&left.wrapping_add(1).to_be_bytes());
        event.options[..options.len()].copy_from_slice(&options);
        event.options_len = options.len() as u8;
        event
    }

    fn trace(max_hops: u8, probes: u8) -> Trace {
        let mut trace = Trace::new(
            EngineConfig {
                max_hops,
                probes_per_ttl: probes,
            },
            &template(),
        );
        for attempt in 0..probes {
            for ttl in 1..=max_hops {
                trace.record_sent(ttl, attempt, 1_000_000);
            }
        }
        trace
    }

    #[test]
    fn every_probe_has_its_own_byte_below_the_acked_edge() {
        let t = trace(30, 3);
        let mut seqs: Vec<u32> = (0..3)
            .flat_map(|a| (1..=30).map(move |ttl| (ttl, a)))
            .map(|(ttl, a)| t.probe_seq(ttl, a))
            .collect();
        assert!(seqs.iter().all(|s| (10_000 - 90..10_000).contains(s)));
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 90);
    }

    #[test]
    fn three_routers_then_the_destination() {
        let mut t = trace(8, 1);
        for (ttl, router) in [(1, "10.0.0.1"), (2, "10.0.1.1"), (3, "10.0.2.1")] {
            let seq = t.probe_seq(ttl, 0);
            assert_eq!(t.on_event(&icmp(seq, router, 1_500_000)), Verdict::Matched);
        }
        assert!(!t.progress()[3].answered);
        // Probes with TTL 4..=8 all reach the peer; each is D-SACKed.
        for ttl in (4..=8).rev() {
            assert_eq!(
                t.on_event(&dsack(t.probe_seq(ttl, 0), 2_000_000)),
                Verdict::Matched
            );
        }
        assert_eq!(t.destination_ttl(), Some(4));
        let progress = t.progress();
        assert!(
            progress
                .iter()
                .take(8)
                .all(|p| p.answered && p.last_unanswered_sent_ns.is_none())
        );
        assert_eq!(progress[0].fastest_ms, Some(0.5));
        assert_eq!(progress[3].fastest_ms, Some(1.0));
        let hops = t.final_hops();
        assert_eq!(hops.len(), 4);
        assert_eq!(hops[0].addr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(hops[0].rtt_ms, vec![0.5]);
        assert_eq!(hops[2].addr, Some("10.0.2.1".parse().unwrap()));
        assert!(hops[3].destination);
        assert_eq!(hops[3].addr, Some(PEER.parse().unwrap()));
        assert_eq!(hops[3].rtt_ms, vec![1.0]);
        assert!(hops.iter().all(|h| !h.nat));
    }

    #[test]
    fn forged_icmp_with_an_unknown_sequence_is_ignored() {
        let mut t = trace(8, 1);
        // Right addresses and ports (the capture checked them), wrong sequence.
        assert_eq!(
            t.on_event(&icmp(12_345, "203.0.113.66", 2)),
            Verdict::Ignored
        );
        assert_eq!(
            t.on_event(&icmp(10_000, "203.0.113.66", 2)),
            Verdict::Ignored
        );
        assert!(t.hops().is_empty());
        // A SACK naming bytes we never probed does not end the trace either.
        assert_eq!(t.on_event(&dsack(20_000, 2)), Verdict::Ignored);
        assert_eq!(t.destination_ttl(), None);
        assert_eq!(t.counts(), (0, 3));
    }

    #[test]
    fn duplicates_count_once() {
        let mut t = trace(4, 1);
        let seq = t.probe_seq(1, 0);
        assert_eq!(
            t.on_event(&icmp(seq, "10.0.0.1", 2_000_000)),
            Verdict::Matched
        );
        assert_eq!(
            t.on_event(&icmp(seq, "10.0.0.1", 3_000_000)),
            Verdict::Duplicate
        );
        assert_eq!(t.hops()[0].received, 1);
    }

    #[test]
    fn silent_hop_stays_null_and_the_trace_goes_on() {
        let mut t = trace(8, 2);
        for attempt in 0..2 {
            t.on_event(&icmp(t.probe_seq(1, attempt), "10.0.0.1", 1_200_000));
            t.on_event(&icmp(t.probe_seq(3, attempt), "10.0.2.1", 1_200_000));
            t.on_event(&dsack(t.probe_seq(4, attempt), 1_300_000));
        }
        assert_eq!(t.destination_ttl(), Some(4));
        // TTL 2's probes never answered: the schedule waits them out.
        let progress = t.progress();
        assert!(!progress[1].answered);
        assert_eq!(progress[1].first_sent_ns, Some(1_000_000));
        assert_eq!(progress[1].last_unanswered_sent_ns, Some(1_000_000));
        let hops = t.final_hops();
        assert_eq!(hops[1].addr, None);
        assert_eq!(hops[1].sent, 2);
        assert_eq!(hops[1].received, 0);
        assert_eq!(hops[2].received, 2);
        assert!(hops[3].destination);
    }

    #[test]
    fn nat_hops_answer_from_the_peer_address() {
        let mut t = trace(6, 1);
        t.on_event(&icmp(t.probe_seq(1, 0), "10.0.0.1", 2));
        // The NAT and the router behind it both answer from the NAT's public
        // address, which is the peer address the server sees.
        t.on_event(&icmp(t.probe_seq(2, 0), PEER, 2));
        t.on_event(&icmp(t.probe_seq(3, 0), PEER, 2));
        t.on_event(&dsack(t.probe_seq(4, 0), 2));
        let hops = t.final_hops();
        assert_eq!(hops.len(), 4);
        assert!(!hops[0].nat);
        assert!(hops[1].nat && hops[2].nat);
        assert!(!hops[3].nat && hops[3].destination);
    }

    #[test]
    fn peer_without_sack_still_ends_the_trace() {
        let mut t = trace(8, 1);
        t.on_event(&icmp(t.probe_seq(1, 0), "10.0.0.1", 2));
        t.on_event(&icmp(t.probe_seq(2, 0), "10.0.1.1", 2));
        let mut ack = dsack(0, 3);
        ack.options_len = 0;
        assert_eq!(t.on_event(&ack), Verdict::Matched);
        assert_eq!(t.destination_ttl(), Some(3));
        let hops = t.final_hops();
        assert_eq!(hops.len(), 3);
        assert!(hops[2].destination);
        // Data from the peer is not a probe answer.
        let mut t = trace(8, 1);
        let mut data = dsack(0, 3);
        data.options_len = 0;
        data.payload_len = 100;
        assert_eq!(t.on_event(&data), Verdict::Ignored);
    }

    #[test]
    fn blind_rsts_and_acks_do_not_end_the_trace() {
        let mut t = trace(8, 1);
        t.on_event(&icmp(t.probe_seq(1, 0), "10.0.0.1", 2));
        let mut forged = dsack(0, 3);
        forged.options_len = 0;
        for (i, flags) in [0x04u8, 0x14].into_iter().cycle().take(60).enumerate() {
            forged.tcp_flags = flags;
            // Anywhere but the peer's next sequence number, in window or not.
            forged.seq = 5000u32
                .wrapping_add(1 + i as u32 * 7919)
                .wrapping_mul(2654435761);
            if forged.seq == 5000 {
                forged.seq = 5001;
            }
            assert_eq!(t.on_event(&forged), Verdict::Ignored);
        }
        let mut dup_ack = dsack(0, 3);
        dup_ack.options_len = 0;
        dup_ack.seq = 4999;
        assert_eq!(t.on_event(&dup_ack), Verdict::Ignored);
        assert_eq!(t.unacceptable(), 61);
        assert_eq!(t.destination_ttl(), None);

        // The peer's own RST (sequence number = the probes' ACK) counts.
        let mut rst = dsack(0, 4);
        rst.options_len = 0;
        rst.tcp_flags = 0x04;
        assert_eq!(t.on_event(&rst), Verdict::Matched);
        assert_eq!(t.destination_ttl(), Some(2));
    }

    #[test]
    fn in_order_data_moves_the_peers_next_sequence_number() {
        let mut t = trace(8, 1);
        let mut data = dsack(0, 3);
        data.options_len = 0;
        data.payload_len = 100;
        assert_eq!(t.on_event(&data), Verdict::Ignored);
        // The duplicate ACK after the data carries seq 5100.
        let mut dup_ack = dsack(0, 4);
        dup_ack.options_len = 0;
        assert_eq!(t.on_event(&dup_ack), Verdict::Ignored);
        dup_ack.seq = 5100;
        assert_eq!(t.on_event(&dup_ack), Verdict::Matched);
        assert_eq!(t.unacceptable(), 1);
    }

    #[test]
    fn outbound_probes_below_a_fresh_connections_isn_wrap_around_zero() {
        // `netray trace` right after the handshake: the peer acknowledged
        // only our SYN, so `acked` is ISN + 1 and the probes take the SYN's
        // sequence number and the ones below it, here across zero.
        let mut tpl = template();
        tpl.acked = 3;
        let mut t = Trace::new(
            EngineConfig {
                max_hops: 8,
                probes_per_ttl: 2,
            },
            &tpl,
        );
        for attempt in 0..2 {
            for ttl in 1..=8 {
                t.record_sent(ttl, attempt, 1_000_000);
            }
        }
        assert_eq!(t.probe_seq(1, 0), 2);
        assert_eq!(t.probe_seq(4, 0), u32::MAX);
        assert_eq!(t.probe_seq(8, 1), 3u32.wrapping_sub(16));
        t.on_event(&icmp(t.probe_seq(1, 0), "10.0.0.1", 2_000_000));
        t.on_event(&icmp(t.probe_seq(2, 0), "10.0.1.1", 2_000_000));
        t.on_event(&icmp(t.probe_seq(3, 0), "10.0.2.1", 2_000_000));
        // The peer's D-SACK for the TTL 4 probe: the block [2^32 - 1, 0).
        let mut answer = dsack(t.probe_seq(4, 0), 3_000_000);
        answer.ack = 3;
        assert_eq!(t.on_event(&answer), Verdict::Matched);
        assert_eq!(t.destination_ttl(), Some(4));
        let hops = t.final_hops();
        assert_eq!(hops.len(), 4);
        assert!(hops[3].destination);
        assert_eq!(hops[3].rtt_ms, vec![2.0]);
    }

    #[test]
    fn unreached_destination_lists_every_ttl() {
        let mut t = trace(5, 1);
        t.on_event(&icmp(t.probe_seq(1, 0), "10.0.0.1", 2));
        assert_eq!(t.hops().len(), 1);
        let hops = t.final_hops();
        assert_eq!(hops.len(), 5);
        assert!(hops.iter().all(|h| !h.destination));
    }
}

//! The completion rules: which probes go out when, how long a TTL's silence
//! is waited out, and when a trace is done. Pure: decided from the trace's
//! state ([`Trace::progress`]) and the clock, so every rule is unit-tested
//! without a kernel.
//!
//! - **Round one** sends one probe per TTL, to `max_hops`, at once. When
//!   the peer's distance can be guessed from the TTL its segments arrive
//!   with (64, 128 or 255 minus the routers on the way back), and no other
//!   trace is probing (their ICMP comes out of the same router budgets),
//!   the other probes of the TTLs up to one past that guess go out with it:
//!   on a path where every hop answers, the trace is then done one round
//!   trip after it began. Whatever TTLs up to the destination still lack
//!   their probes get them as soon as the destination is known.
//! - **Waiting out silence** scales with the round trips around the silent
//!   TTL, not with the path's largest one (Butskoy traceroute's
//!   `-w MAX,HERE,NEAR`, with NEAR 3 rather than 10): the missing replies of
//!   a TTL that answered are waited for 3 times that TTL's fastest reply; a
//!   TTL nobody answered, 3 times the fastest reply of the nearest later
//!   TTL that answered (a router farther away, or the destination), and
//!   while no later TTL has answered, 3 times the connection's smoothed RTT
//!   (TCP_INFO). Always at least `slack` beyond that round trip (routers
//!   make ICMP errors on their slow path), never more than `max_wait`.
//! - **Loss**: a TTL nobody answered gets one more probe halfway through its
//!   wait, within the same wait.
//! - **Done** when the destination is known and every TTL up to it has
//!   answered or been waited out; without a destination, when every TTL
//!   has; in any case `2 * max_wait` after round one.

use std::time::Duration;

use super::engine::{EngineConfig, Trace, TtlProgress};

/// How long silence is waited out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The missing replies of a TTL that answered: this many times its
    /// fastest reply.
    pub here_factor: f64,
    /// A TTL nobody answered: this many times the fastest reply of the
    /// nearest later TTL that answered (or the connection's RTT).
    pub near_factor: f64,
    /// Least wait beyond that round trip.
    pub slack: Duration,
    /// Longest wait for any TTL.
    pub max_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            here_factor: 3.0,
            near_factor: 3.0,
            slack: Duration::from_millis(10),
            max_wait: Duration::from_millis(1500),
        }
    }
}

/// Why a probe goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// The first probe of its TTL (round one).
    First,
    /// One of the other `probes_per_ttl - 1` probes of its TTL.
    More,
    /// The one extra probe of a TTL nobody answered.
    Retry,
}

/// A probe to send: TTL, attempt (its sequence number slot, see
/// [`Trace::probe_seq`]) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// TTL / hop limit.
    pub ttl: u8,
    /// 0-based attempt; retries take attempt `probes_per_ttl`.
    pub attempt: u8,
    /// Why it goes out.
    pub kind: ProbeKind,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Probes to send now.
    pub send: Vec<Probe>,
    /// When to look again if no reply comes first (CLOCK_MONOTONIC ns).
    pub wake_at_ns: Option<u64>,
    /// The trace is complete.
    pub done: bool,
}

/// The destination's TTL guessed from the TTL (hop limit) the peer's
/// segments arrive with: senders start at 64, 128 or 255, and each router
/// on the way takes one off. Paths are often asymmetric: a guess, no more.
pub fn destination_guess(peer_ttl: u8) -> Option<u8> {
    if peer_ttl == 0 {
        return None;
    }
    let initial = [64u8, 128, 255].into_iter().find(|&i| i >= peer_ttl)?;
    Some((initial - peer_ttl).saturating_add(1))
}

/// The schedule of one trace.
#[derive(Clone, Debug)]
pub struct Schedule {
    timing: Timing,
    max_hops: u8,
    probes_per_ttl: u8,
    /// The connection's smoothed RTT, in milliseconds.
    prior_rtt_ms: Option<f64>,
    /// TTLs `1..=full_to` have been sent all their probes.
    full_to: u8,
    /// When each TTL's retry left.
    retry_sent_ns: Vec<Option<u64>>,
    started_ns: u64,
}

impl Schedule {
    /// The schedule of a trace starting at `now_ns` with `engine`'s TTLs
    /// and probes. `prior_rtt`: the connection's RTT (TCP_INFO), if known;
    /// `destination_guess`: see [`destination_guess`], `None` to send only
    /// one probe per TTL in round one.
    pub fn new(
        timing: Timing,
        engine: EngineConfig,
        prior_rtt: Option<Duration>,
        destination_guess: Option<u8>,
        now_ns: u64,
    ) -> Self {
        let max_hops = engine.max_hops.max(1);
        Self {
            timing,
            max_hops,
            probes_per_ttl: engine.probes_per_ttl.max(1),
            prior_rtt_ms: prior_rtt
                .filter(|rtt| !rtt.is_zero())
                .map(|rtt| rtt.as_secs_f64() * 1e3),
            full_to: destination_guess.map_or(0, |g| g.saturating_add(1).min(max_hops)),
            retry_sent_ns: vec![None; usize::from(max_hops)],
            started_ns: now_ns,
        }
    }

    /// Round one: a probe for every TTL, then the other probes of the TTLs
    /// up to one past the guessed destination.
    pub fn first_round(&self) -> Vec<Probe> {
        let mut probes: Vec<Probe> = (1..=self.max_hops)
            .map(|ttl| Probe {
                ttl,
                attempt: 0,
                kind: ProbeKind::First,
            })
            .collect();
        for attempt in 1..self.probes_per_ttl {
            probes.extend((1..=self.full_to).map(|ttl| Probe {
                ttl,
                attempt,
                kind: ProbeKind::More,
            }));
        }
        probes
    }

    /// What to do at `now_ns`, given what the trace has heard. Call after
    /// round one, after every reply and at every wake-up time.
    pub fn step(&mut self, trace: &Trace, now_ns: u64) -> Step {
        let mut send = Vec::new();
        let destination = trace.destination_ttl();
        if let Some(destination) = destination
            && destination > self.full_to
        {
            for attempt in 1..self.probes_per_ttl {
                send.extend((self.full_to + 1..=destination).map(|ttl| Probe {
                    ttl,
                    attempt,
                    kind: ProbeKind::More,
                }));
            }
            self.full_to = destination;
        }
        let progress = trace.progress();
        let last = destination.unwrap_or(self.max_hops);
        let mut wake_at: Option<u64> = None;
        // The fastest reply of the nearest later TTL that answered, walking
        // down from the farthest TTL (probes past the destination are
        // answered by the destination).
        let mut near_ms: Option<f64> = None;
        for ttl in (1..=self.max_hops).rev() {
            let Some(state) = progress.get(usize::from(ttl) - 1) else {
                continue;
            };
            if ttl <= last
                && let Some(deadline) = self.pending_until(ttl, state, near_ms, now_ns, &mut send)
            {
                wake_at = Some(wake_at.map_or(deadline, |w| w.min(deadline)));
            }
            if let Some(fastest) = state.fastest_ms {
                near_ms = Some(fastest);
            }
        }
        let cap = self.started_ns + 2 * duration_ns(self.timing.max_wait);
        let done = now_ns >= cap || (wake_at.is_none() && send.is_empty());
        Step {
            send,
            wake_at_ns: if done {
                None
            } else {
                wake_at.map(|w| w.min(cap)).or(Some(cap))
            },
            done,
        }
    }

    /// When TTL `ttl` will have been waited out, or `None` if it is settled
    /// (answered, or waited out already). Queues its retry when it is due.
    fn pending_until(
        &mut self,
        ttl: u8,
        state: &TtlProgress,
        near_ms: Option<f64>,
        now_ns: u64,
        send: &mut Vec<Probe>,
    ) -> Option<u64> {
        if state.answered {
            // The rest of its replies: not needed for the path, but for
            // loss and RTT figures. (An answer that named no probe, a peer
            // without SACK, has no RTT: nothing more to wait for.)
            let fastest = state.fastest_ms?;
            let deadline = state.last_unanswered_sent_ns?
                + self.wait_ns(Some(fastest), self.timing.here_factor);
            return (now_ns < deadline).then_some(deadline);
        }
        let first_sent = state.first_sent_ns?;
        let wait = self.wait_ns(near_ms.or(self.prior_rtt_ms), self.timing.near_factor);
        let slot = &mut self.retry_sent_ns[usize::from(ttl) - 1];
        match *slot {
            None if now_ns >= first_sent + wait / 2 => {
                send.push(Probe {
                    ttl,
                    attempt: self.probes_per_ttl,
                    kind: ProbeKind::Retry,
                });
                *slot = Some(now_ns);
                Some((first_sent + wait).max(now_ns + wait / 2))
            }
            None => Some(first_sent + wait / 2),
            Some(retry_sent) => {
                let deadline = (first_sent + wait).max(retry_sent + wait / 2);
                (now_ns < deadline).then_some(deadline)
            }
        }
    }

    /// The wait for a reply expected within `reference_ms` (none known: the
    /// longest wait).
    fn wait_ns(&self, reference_ms: Option<f64>, factor: f64) -> u64 {
        let max = self.timing.max_wait.as_secs_f64() * 1e3;
        let slack = self.timing.slack.as_secs_f64() * 1e3;
        let ms = reference_ms.map_or(max, |r| (r * factor).max(r + slack).min(max));
        (ms * 1e6) as u64
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inband::probe::ProbeTemplate;
    use netray_common::inband::{
        EVENT_TCP, EVENT_TIME_EXCEEDED, FAMILY_IPV4, FlowKey, InbandEvent, MAX_TCP_OPTIONS,
    };

    const MS: u64 = 1_000_000;

    fn template() -> ProbeTemplate {
        ProbeTemplate::example()
    }

    fn event(kind: u8, seq: u32, from: [u8; 4], at_ns: u64) -> InbandEvent {
        let mut from_addr = [0; 16];
        from_addr[..4].copy_from_slice(&from);
        InbandEvent {
            timestamp_ns: at_ns,
            flow: FlowKey {
                family: FAMILY_IPV4,
                ..FlowKey::default()
            },
            from_addr,
            seq,
            ack: 10_000,
            ifindex: 1,
            payload_len: 0,
            window: 0,
            kind,
            icmp_type: 11,
            icmp_code: 0,
            ttl: 1,
            tcp_flags: 0x10,
            options_len: 0,
            pad: [0; 2],
            options: [0; MAX_TCP_OPTIONS],
        }
    }

    /// A simulated path: router `k` (TTL k) answers after `rtt_ms[k - 1]`,
    /// `None` for a silent one; the destination at TTL `rtt_ms.len() + 1`
    /// answers after `dest_ms`. `lost`: (ttl, attempt) pairs that vanish.
    struct Path {
        rtt_ms: Vec<Option<u64>>,
        dest_ms: u64,
        lost: Vec<(u8, u8)>,
    }

    struct Run {
        done_at_ms: u64,
        sent: Vec<Probe>,
        trace: Trace,
    }

    /// Drives a schedule over `path` the way the tracer does, with a
    /// simulated clock: send, deliver replies in time order, wake up.
    fn run(path: &Path, engine: EngineConfig, prior_ms: Option<u64>, guess: Option<u8>) -> Run {
        let mut trace = Trace::new(engine, &template());
        let mut schedule = Schedule::new(
            Timing::default(),
            engine,
            prior_ms.map(Duration::from_millis),
            guess,
            0,
        );
        let dest_ttl = path.rtt_ms.len() as u8 + 1;
        let mut in_flight: Vec<(u64, InbandEvent)> = Vec::new();
        let mut sent = Vec::new();
        let mut now = 0;
        let mut send = |trace: &mut Trace, probe: Probe, now: u64, in_flight: &mut Vec<_>| {
            let seq = trace.record_sent(probe.ttl, probe.attempt, now);
            sent.push(probe);
            if path.lost.contains(&(probe.ttl, probe.attempt)) {
                return;
            }
            if probe.ttl >= dest_ttl {
                let mut ack = event(EVENT_TCP, 5000, [198, 51, 100, 7], now + path.dest_ms * MS);
                let mut options = vec![1, 1, 5, 10];
                options.extend_from_slice(&seq.to_be_bytes());
                options.extend_from_slice(&seq.wrapping_add(1).to_be_bytes());
                ack.options[..options.len()].copy_from_slice(&options);
                ack.options_len = options.len() as u8;
                in_flight.push((now + path.dest_ms * MS, ack));
            } else if let Some(rtt) = path.rtt_ms[usize::from(probe.ttl) - 1] {
                let at = now + rtt * MS;
                in_flight.push((
                    at,
                    event(EVENT_TIME_EXCEEDED, seq, [10, 0, probe.ttl, 1], at),
                ));
            }
        };
        for probe in schedule.first_round() {
            send(&mut trace, probe, now, &mut in_flight);
        }
        loop {
            let step = schedule.step(&trace, now);
            for probe in step.send {
                send(&mut trace, probe, now, &mut in_flight);
            }
            if step.done {
                break;
            }
            let wake = step.wake_at_ns.expect("a wake-up time while not done");
            assert!(wake > now || !in_flight.is_empty(), "no progress at {now}");
            in_flight.sort_by_key(|(at, _)| *at);
            match in_flight.first() {
                Some(&(at, _)) if at <= wake => {
                    let (at, event) = in_flight.remove(0);
                    now = now.max(at);
                    trace.on_event(&event);
                }
                _ => now = wake.max(now),
            }
            assert!(now < 10_000 * MS, "runaway trace");
        }
        Run {
            done_at_ms: now / MS,
            sent,
            trace,
        }
    }

    fn three() -> EngineConfig {
        EngineConfig {
            max_hops: 30,
            probes_per_ttl: 3,
        }
    }

    /// Eight routers 10 ms apart (5 ms each way), the destination at 90 ms.
    fn delayed(silent: &[usize]) -> Path {
        Path {
            rtt_ms: (1..=8u64)
                .map(|k| (!silent.contains(&(k as usize))).then_some(10 * k))
                .collect(),
            dest_ms: 90,
            lost: Vec::new(),
        }
    }

    fn addrs(trace: &Trace) -> Vec<Option<std::net::IpAddr>> {
        trace.final_hops().iter().map(|h| h.addr).collect()
    }

    #[test]
    fn destination_guess_from_the_arriving_ttl() {
        assert_eq!(destination_guess(64), Some(1));
        assert_eq!(destination_guess(56), Some(9));
        assert_eq!(destination_guess(120), Some(9));
        assert_eq!(destination_guess(250), Some(6));
        assert_eq!(destination_guess(0), None);
    }

    #[test]
    fn every_hop_answering_is_done_one_round_trip_after_the_start() {
        let run = run(&delayed(&[]), three(), Some(90), destination_guess(56));
        assert_eq!(run.done_at_ms, 90);
        assert_eq!(run.trace.destination_ttl(), Some(9));
        assert!(addrs(&run.trace).iter().all(Option::is_some));
        assert!(run.sent.iter().all(|p| p.kind != ProbeKind::Retry));
        // 30 first probes, 2 more each for TTLs 1..=10.
        assert_eq!(run.sent.len(), 30 + 2 * 10);
        assert!(run.trace.final_hops().iter().all(|h| h.received == 3));
    }

    #[test]
    fn without_a_guess_the_other_probes_follow_the_destination() {
        let run = run(&delayed(&[]), three(), Some(90), None);
        // One round trip to learn the destination, one for the rest.
        assert_eq!(run.done_at_ms, 180);
        assert_eq!(run.sent.len(), 30 + 2 * 9);
    }

    #[test]
    fn a_guess_too_short_is_completed_once_the_destination_is_known() {
        let run = run(&delayed(&[]), three(), Some(90), Some(5));
        assert_eq!(run.done_at_ms, 180);
        assert!(run.trace.final_hops().iter().all(|h| h.received == 3));
    }

    #[test]
    fn a_silent_hop_costs_three_round_trips_of_the_hop_after_it() {
        let run = run(&delayed(&[4]), three(), Some(90), destination_guess(56));
        // Router 5 answers in 50 ms: TTL 4 is retried at 75 ms and given
        // up at 150 ms (Butskoy traceroute: 10 x 50 ms).
        assert_eq!(run.done_at_ms, 150);
        let hops = addrs(&run.trace);
        assert_eq!(hops.len(), 9);
        assert_eq!(hops[3], None);
        assert!(hops.iter().enumerate().all(|(i, h)| i == 3 || h.is_some()));
        let retries: Vec<u8> = run
            .sent
            .iter()
            .filter(|p| p.kind == ProbeKind::Retry)
            .map(|p| p.ttl)
            .collect();
        assert_eq!(retries, vec![4]);
        assert_eq!(run.trace.final_hops()[3].sent, 4);
    }

    #[test]
    fn a_lost_probe_is_retried_within_the_wait() {
        let engine = EngineConfig {
            max_hops: 30,
            probes_per_ttl: 1,
        };
        let mut path = delayed(&[]);
        path.lost = vec![(3, 0)];
        let run = run(&path, engine, Some(90), destination_guess(56));
        let hops = addrs(&run.trace);
        assert!(hops.iter().all(Option::is_some), "{hops:?}");
        // TTL 4 answers at 40 ms: TTL 3 is retried at 60 ms, its answer
        // is in at 90.
        assert_eq!(run.done_at_ms, 90);
        let hop = &run.trace.final_hops()[2];
        assert_eq!((hop.sent, hop.received), (2, 1));
    }

    #[test]
    fn a_slow_first_hop_scales_the_waits() {
        // 40 ms to the first hop, then 10 ms per hop; router 2 silent.
        let path = Path {
            rtt_ms: (1..=8u64)
                .map(|k| (k != 2).then_some(40 + 10 * (k - 1)))
                .collect(),
            dest_ms: 120,
            lost: Vec::new(),
        };
        let run = run(&path, three(), Some(120), destination_guess(56));
        // Router 3 answers in 60 ms: TTL 2 is waited out at 180 ms.
        assert_eq!(run.done_at_ms, 180);
        assert_eq!(addrs(&run.trace)[1], None);
        assert_eq!(addrs(&run.trace)[2], Some("10.0.3.1".parse().unwrap()));
    }

    #[test]
    fn fast_paths_wait_at_least_the_slack() {
        let path = Path {
            rtt_ms: vec![Some(0), None, Some(0)],
            dest_ms: 1,
            lost: Vec::new(),
        };
        let run = run(&path, three(), Some(1), destination_guess(61));
        // TTL 3 answers at once: TTL 2 waits 0 + 10 ms.
        assert_eq!(run.done_at_ms, 10);
        assert_eq!(addrs(&run.trace)[1], None);
    }

    #[test]
    fn an_unreachable_destination_ends_after_the_longest_wait() {
        // Nothing past router 3 answers, and the RTT is unknown.
        let mut path = delayed(&[4, 5, 6, 7, 8]);
        path.dest_ms = 100_000;
        let run = run(&path, three(), None, None);
        assert_eq!(run.trace.destination_ttl(), None);
        // TTLs 4..=30 have no later answer and no prior: 1.5 s.
        assert_eq!(run.done_at_ms, 1500);
        assert_eq!(run.trace.final_hops().len(), 30);
    }

    #[test]
    fn the_connection_rtt_bounds_the_wait_before_any_later_ttl_answers() {
        let mut path = delayed(&[4, 5, 6, 7, 8]);
        path.dest_ms = 100_000;
        let run = run(&path, three(), Some(90), None);
        // 3 x 90 ms for the TTLs past router 3.
        assert_eq!(run.done_at_ms, 270);
    }

    #[test]
    fn the_whole_trace_is_capped() {
        let timing = Timing::default();
        let mut trace = Trace::new(three(), &template());
        let mut schedule = Schedule::new(timing, three(), None, None, 0);
        for probe in schedule.first_round() {
            trace.record_sent(probe.ttl, probe.attempt, 0);
        }
        let cap = 2 * duration_ns(timing.max_wait);
        let step = schedule.step(&trace, cap - 1);
        assert!(!step.done);
        assert!(step.wake_at_ns.unwrap() <= cap);
        assert!(schedule.step(&trace, cap).done);
    }
}

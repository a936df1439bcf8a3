//! In-band traceroute capture (see `netray_common::inband` for the contract).
//!
//! - `inband_xdp` (ingress) reports ICMP/ICMPv6 errors quoting a registered
//!   flow, and keeps the peer-side fields of registered flows current
//!   (reporting the peer's segments while a flow is armed).
//! - `inband_tc_egress` keeps the local-side fields current: what the
//!   connection's next segment looks like, so probes can imitate it.
//!
//! Both programs only observe: every packet continues unchanged (XDP_PASS,
//! TC_ACT_UNSPEC), malformed ones included. Every event that cannot be
//! delivered is counted, never lost silently.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use netray_common::inband::{
    EVENT_DEST_UNREACHABLE, EVENT_TCP, EVENT_TIME_EXCEEDED, FAMILY_IPV4, FAMILY_IPV6, FlowKey,
    FlowState, InbandEvent, InbandStat, MAX_TCP_OPTIONS, PROBE_MARK,
};
use netray_ebpf::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IpHeader, OptionsScratch, Packet, Skip, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN, TcPacket, TcpHeader, XdpPacket, copy_words, parse_ethernet,
    parse_ip, parse_ipv4, parse_ipv6, parse_tcp, read_tcp_options, seq_after, zero_words,
};

/// The traced flows: those userspace registered, and every connection to a
/// port in [`INBAND_LISTEN_PORTS`] from its SYN on (so a server knows a
/// connection's sequence state before any trace of it starts, even when the
/// peer then stays silent). An entry follows its connection: a new SYN on
/// its 4-tuple resets it (a reused port must not inherit the old
/// connection's sequence numbers: a new ISN can be "behind" the old one), and
/// it is removed when the connection ends (FIN both ways, an RST). LRU:
/// entries of connections that vanished silently are evicted by new ones,
/// so the table never fills. An eviction racing with an update
/// of that very element would need 65536 newer flows within one packet's
/// processing; the worst outcome is one flow's stale state.
#[map]
static INBAND_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// Nonzero at index `port`: connections to that local port are tracked from
/// their SYN (`netray serve`'s listening ports).
#[map]
static INBAND_LISTEN_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// Events to userspace (128-byte records: 8192 of them fit).
#[map]
static INBAND_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU scratch space for a segment's TCP options (slot 0: XDP, slot 1:
/// TC), too large for the BPF stack next to the parsed headers.
#[map]
static INBAND_SCRATCH: PerCpuArray<OptionsScratch> = PerCpuArray::with_max_entries(2, 0);

/// Per-CPU counters, indexed by [`InbandStat`].
#[map]
static INBAND_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(InbandStat::COUNT, 0);

#[inline(always)]
fn count(stat: InbandStat) {
    if let Some(slot) = INBAND_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from the map; the slot belongs to this
        // CPU and programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

#[xdp]
pub fn inband_xdp(ctx: XdpContext) -> u32 {
    count(InbandStat::XdpPackets);
    let pkt = XdpPacket::new(&ctx);
    if ingress(&ctx, &pkt) == Err(Skip::Malformed) {
        count(InbandStat::Malformed);
    }
    // Observe only: whatever happened above, the stack gets the packet.
    xdp_action::XDP_PASS
}

#[inline(always)]
fn ingress(ctx: &XdpContext, pkt: &XdpPacket) -> Result<(), Skip> {
    let (ethertype, l3_offset) = parse_ethernet(pkt)?;
    let ip = parse_ip(pkt, ethertype, l3_offset)?;
    match (ip.family, ip.proto) {
        (FAMILY_IPV4, IPPROTO_ICMP) | (FAMILY_IPV6, IPPROTO_ICMPV6) => icmp_error(ctx, pkt, &ip),
        (_, IPPROTO_TCP) => peer_segment(ctx, pkt, &ip),
        _ => Ok(()),
    }
}

/// An ICMP(v6) error quoting one of our TCP segments: report which router
/// (outer source) sent it and which segment (quoted sequence number) it was.
/// The quoted sequence number is reported as is: userspace matches it
/// against the probes it sent, which is what rejects forged errors.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, pkt: &XdpPacket, ip: &IpHeader) -> Result<(), Skip> {
    let icmp = pkt.bytes::<8>(ip.l4_offset).ok_or(Skip::Malformed)?;
    let (icmp_type, icmp_code) = (icmp[0], icmp[1]);
    let kind = match (ip.family, icmp_type) {
        (FAMILY_IPV4, 11) | (FAMILY_IPV6, 3) => EVENT_TIME_EXCEEDED,
        (FAMILY_IPV4, 3) | (FAMILY_IPV6, 1) => EVENT_DEST_UNREACHABLE,
        _ => return Ok(()), // echo, neighbour discovery...: not errors
    };
    // The quoted packet follows the 8-byte ICMP header, in the same family.
    let quoted_offset = ip.l4_offset + 8;
    let quoted = if ip.family == FAMILY_IPV4 {
        parse_ipv4(pkt, quoted_offset)
    } else {
        parse_ipv6(pkt, quoted_offset)
    };
    let quoted = match quoted {
        Ok(quoted) if quoted.proto == IPPROTO_TCP => quoted,
        Ok(_) | Err(Skip::Ignore) => {
            count(InbandStat::IcmpIgnored);
            return Ok(());
        }
        Err(Skip::Malformed) => return Err(Skip::Malformed),
    };
    // RFC 792 guarantees the first 8 bytes of the quoted transport header:
    // ports and sequence number.
    let tcp = pkt.bytes::<8>(quoted.l4_offset).ok_or(Skip::Malformed)?;
    let key = quoted
        .flow_key(
            pkt,
            true,
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        )
        .ok_or(Skip::Malformed)?;
    let key = &key.0;
    if INBAND_FLOWS.get_ptr(key).is_none() {
        count(InbandStat::IcmpIgnored);
        return Ok(());
    }
    let Some(mut entry) = INBAND_EVENTS.reserve::<InbandEvent>(0) else {
        count(InbandStat::RingbufDrops);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: as in `peer_segment`: the reserved record is ours until
    // submit, and every field is written.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).flow = *key;
        ip.copy_addr(pkt, true, &raw mut (*event).from_addr);
        (*event).seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        (*event).ack = 0;
        (*event).ifindex = ctx.ingress_ifindex() as u32;
        (*event).payload_len = 0;
        (*event).window = 0;
        (*event).kind = kind;
        (*event).icmp_type = icmp_type;
        (*event).icmp_code = icmp_code;
        (*event).ttl = quoted.ttl;
        (*event).tcp_flags = 0;
        (*event).options_len = 0;
        (*event).pad = [0; 2];
        // Ring-buffer records are 8-byte aligned and `options` sits at
        // offset 88: five aligned words.
        zero_words(
            (&raw mut (*event).options).cast::<u64>(),
            MAX_TCP_OPTIONS / 8,
        );
    }
    entry.submit(0);
    count(InbandStat::IcmpMatched);
    Ok(())
}

/// A segment from the peer of a registered flow: refresh the peer fields
/// (what a probe must acknowledge and echo), and report it if armed.
#[inline(always)]
fn peer_segment(ctx: &XdpContext, pkt: &XdpPacket, ip: &IpHeader) -> Result<(), Skip> {
    let tcp = parse_tcp(pkt, ip.l4_offset)?;
    let key = ip
        .flow_key(pkt, false, tcp.dport, tcp.sport)
        .ok_or(Skip::Malformed)?;
    let key = &key.0;
    let syn = tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    let state = match INBAND_FLOWS.get_ptr_mut(key) {
        Some(state) => {
            if syn {
                // A new connection on this 4-tuple (or a SYN retransmission,
                // which resets to the same).
                // SAFETY: see `reset`.
                unsafe { reset(state) };
            }
            state
        }
        None => {
            // A new connection to a port we serve: start tracking it.
            if !syn || INBAND_LISTEN_PORTS.get(u32::from(tcp.dport)).copied() != Some(1) {
                return Ok(());
            }
            // NOEXIST: a concurrent insert of the same flow wins, unharmed.
            let _ = INBAND_FLOWS.insert(key, FlowState::default(), u64::from(BPF_NOEXIST));
            match INBAND_FLOWS.get_ptr_mut(key) {
                Some(state) => state,
                None => return Ok(()),
            }
        }
    };
    if syn {
        // A SYN sets nothing (see `reset`): the handshake's ACK does.
        return Ok(());
    }
    let payload_len = payload_len(pkt, ip, &tcp)?;
    let Some(options) = INBAND_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot 0, used by this program only; XDP runs do not
    // nest on one CPU.
    let options = unsafe { &mut *options };
    let options_len = read_tcp_options(pkt, ip.l4_offset + 20, tcp.options_len(), options);
    let next = tcp.seq.wrapping_add(tcp.seq_len(payload_len));

    // SAFETY: `state` points into the map element, valid for this run (no
    // preallocation: RCU-freed). Other CPUs may update it concurrently; the
    // fields are independent words and a lost update is refreshed by the
    // next segment. Raw-pointer accesses, no references are formed.
    let (armed, ended) = unsafe {
        let seen = (*state).seen;
        let seq_known = seen & FlowState::PEER_SEQ_KNOWN != 0;
        // Acceptable, as the kernel's TCP would take it: the segment starts
        // exactly at the peer's next sequence number (our rcv_nxt, which our
        // own ACKs also carry: see `local_segment`). Anyone who knows the
        // 4-tuple can send segments; a blind forger's random sequence
        // numbers must not move what probes carry, nor end the flow. A
        // segment out of order (after a loss) is not taken either: our next
        // ACK moves the state once the gap is filled.
        let in_order = !seq_known || tcp.seq == (*state).peer_seq_next;
        // Linux takes an RST only at exactly its rcv_nxt (RFC 5961 3.2): a
        // blind one does not end the connection, so it must not end the
        // flow's state either.
        let ended_by_rst = tcp.flags & TCP_RST != 0 && seq_known && in_order;
        let mut seen = seen | FlowState::SEEN_PEER;
        if in_order {
            // Forward-only: a retransmitted segment must not move the
            // probes' acknowledgment number back.
            if !seq_known || seq_after(next, (*state).peer_seq_next) {
                (*state).peer_seq_next = next;
            }
            seen |= FlowState::PEER_SEQ_KNOWN;
        }
        // A SYN acknowledges nothing: the first ACK-flagged segment sets
        // peer_ack. Later ones move it forward only within what we sent,
        // (peer_ack, snd_nxt], the range the kernel's TCP accepts (RFC 9293
        // 3.10.7.4): a forged ACK with a random number must not make the
        // probes' sequence numbers look like data in flight.
        let acked = seen & FlowState::PEER_ACKED != 0;
        let local_known = seen & FlowState::SEEN_LOCAL != 0;
        if tcp.flags & TCP_ACK != 0
            && (!acked
                || (seq_after(tcp.ack, (*state).peer_ack)
                    && (!local_known || !seq_after(tcp.ack, (*state).local_seq_next))))
        {
            (*state).peer_ack = tcp.ack;
            seen |= FlowState::PEER_ACKED;
        }
        if in_order {
            // Userspace finds the timestamp option in them (TSecr of a
            // probe). Map values are 8-aligned and `peer_options` sits at
            // offset 32.
            copy_words(
                (&raw mut (*state).peer_options).cast::<u64>(),
                options.bytes.as_ptr().cast::<u64>(),
                MAX_TCP_OPTIONS / 8,
            );
            (*state).peer_options_len = options_len as u8;
            (*state).peer_ttl = ip.ttl;
            if tcp.flags & TCP_FIN != 0 {
                seen |= FlowState::PEER_FIN;
            }
        }
        (*state).seen = seen;
        (*state).peer_segments = (*state).peer_segments.wrapping_add(1);
        let both_fins = FlowState::PEER_FIN | FlowState::LOCAL_FIN;
        (
            (*state).armed,
            ended_by_rst || seen & both_fins == both_fins,
        )
    };
    if armed != 0 {
        report_peer_segment(ctx, key, &tcp, ip.ttl, payload_len, options, options_len);
    }
    if ended {
        // The connection is over: nothing of it may be used for a probe,
        // or inherited by the next connection on this 4-tuple.
        let _ = INBAND_FLOWS.remove(key);
        count(InbandStat::FlowsEnded);
    }
    Ok(())
}

/// Resets a flow's state for a new connection on its 4-tuple, keeping only
/// `armed` (userspace's). The SYN itself then sets nothing but what every
/// segment sets: the handshake's ACK (or, on a live connection whose peer
/// answered a forged SYN with a challenge ACK, the genuine next segment)
/// sets the sequence state afresh.
///
/// # Safety
/// `state` must point to a live element of `INBAND_FLOWS` (8-byte aligned).
#[inline(always)]
unsafe fn reset(state: *mut FlowState) {
    // SAFETY: per the contract; FlowState is 112 bytes, 14 words.
    unsafe {
        let armed = (*state).armed;
        zero_words(state.cast::<u64>(), size_of::<FlowState>() / 8);
        (*state).armed = armed;
    }
    count(InbandStat::FlowsReset);
}

/// Reports a peer segment of an armed flow.
#[inline(always)]
fn report_peer_segment(
    ctx: &XdpContext,
    key: &FlowKey,
    tcp: &TcpHeader,
    ttl: u8,
    payload_len: usize,
    options: &OptionsScratch,
    options_len: usize,
) {
    let Some(mut entry) = INBAND_EVENTS.reserve::<InbandEvent>(0) else {
        count(InbandStat::RingbufDrops);
        return;
    };
    // Field by field into the reserved record: building the 128-byte
    // event on the stack first would overflow the 512-byte BPF stack.
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to the reserved record, valid and exclusively
    // ours until submit; every field is written (no padding exists).
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).flow = *key;
        // The peer's address, already in the key: no packet access after
        // the option walk keeps packet pointers (with path-specific verified
        // ranges) out of its state, so the verifier prunes it.
        (*event).from_addr = key.remote_addr;
        (*event).seq = tcp.seq;
        (*event).ack = tcp.ack;
        (*event).ifindex = ctx.ingress_ifindex() as u32;
        (*event).payload_len = payload_len.min(usize::from(u16::MAX)) as u16;
        (*event).window = tcp.window;
        (*event).kind = EVENT_TCP;
        (*event).icmp_type = 0;
        (*event).icmp_code = 0;
        (*event).ttl = ttl;
        (*event).tcp_flags = tcp.flags;
        (*event).options_len = options_len as u8;
        (*event).pad = [0; 2];
        copy_words(
            (&raw mut (*event).options).cast::<u64>(),
            options.bytes.as_ptr().cast::<u64>(),
            MAX_TCP_OPTIONS / 8,
        );
    }
    entry.submit(0);
    count(InbandStat::TcpReported);
}

/// TCP payload length from the IP length fields (the packet length when
/// they are 0 or larger than the packet: GSO, BIG TCP, truncation).
#[inline(always)]
fn payload_len<P: Packet>(pkt: &P, ip: &IpHeader, tcp: &TcpHeader) -> Result<usize, Skip> {
    ip.l4_len(pkt)
        .checked_sub(tcp.header_len)
        .ok_or(Skip::Malformed)
}

#[classifier]
pub fn inband_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the context the kernel passed in.
    let mark = unsafe { (*ctx.skb.skb).mark };
    // netray's own probes must not advance the connection's sequence state.
    if mark != PROBE_MARK {
        let _ = local_segment(&TcPacket::new(&ctx));
    }
    // UNSPEC: with tcx, "continue with the next program"; never drop/alter.
    TC_ACT_UNSPEC
}

/// A segment we send on a registered flow: remember what it looked like.
#[inline(always)]
fn local_segment(pkt: &TcPacket<'_>) -> Result<(), Skip> {
    let (ethertype, l3_offset) = parse_ethernet(pkt)?;
    let ip = parse_ip(pkt, ethertype, l3_offset)?;
    if ip.proto != IPPROTO_TCP {
        return Ok(());
    }
    let tcp = parse_tcp(pkt, ip.l4_offset)?;
    let key = ip
        .flow_key(pkt, true, tcp.sport, tcp.dport)
        .ok_or(Skip::Malformed)?;
    let key = &key.0;
    let Some(state) = INBAND_FLOWS.get_ptr_mut(key) else {
        return Ok(());
    };
    if tcp.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        // We open a new connection on this 4-tuple (`netray trace`).
        // SAFETY: see `reset`.
        unsafe { reset(state) };
    }
    // TC sees GSO super-packets: the IP length fields describe the whole
    // super-packet (or are 0 with BIG TCP, then the skb length is used).
    let payload_len = payload_len(pkt, &ip, &tcp)?;
    let Some(options) = INBAND_SCRATCH.get_ptr_mut(1) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot 1, used by this program only; TC egress runs
    // with bottom halves disabled, so they do not nest on one CPU.
    let options = unsafe { &mut *options };
    let options_len = read_tcp_options(pkt, ip.l4_offset + 20, tcp.options_len(), options);
    let next = tcp.seq.wrapping_add(tcp.seq_len(payload_len));

    // SAFETY: as in `peer_segment`; `local_options` sits at offset 72.
    unsafe {
        let seen = (*state).seen;
        // Forward-only: retransmissions must not move snd_nxt back.
        if seen & FlowState::SEEN_LOCAL == 0 || seq_after(next, (*state).local_seq_next) {
            (*state).local_seq_next = next;
        }
        copy_words(
            (&raw mut (*state).local_options).cast::<u64>(),
            options.bytes.as_ptr().cast::<u64>(),
            MAX_TCP_OPTIONS / 8,
        );
        (*state).local_options_len = options_len as u8;
        (*state).local_window = tcp.window;
        (*state).local_tos = ip.tos;
        (*state).local_flow_label = ip.flow_label;
        let mut seen = seen | FlowState::SEEN_LOCAL;
        // Our ACK carries our kernel's rcv_nxt: the peer's next sequence
        // number as validated by the kernel's TCP. It moves the state past
        // segments the XDP side could not take (out of order, then filled).
        if tcp.flags & TCP_ACK != 0
            && (seen & FlowState::PEER_SEQ_KNOWN == 0 || seq_after(tcp.ack, (*state).peer_seq_next))
        {
            (*state).peer_seq_next = tcp.ack;
            seen |= FlowState::PEER_SEQ_KNOWN;
        }
        if tcp.flags & TCP_FIN != 0 {
            seen |= FlowState::LOCAL_FIN;
        }
        (*state).seen = seen;
        (*state).local_segments = (*state).local_segments.wrapping_add(1);
        let both_fins = FlowState::PEER_FIN | FlowState::LOCAL_FIN;
        // Our RST: our kernel has dropped the connection.
        if tcp.flags & TCP_RST != 0 || seen & both_fins == both_fins {
            let _ = INBAND_FLOWS.remove(key);
            count(InbandStat::FlowsEnded);
        }
    }
    count(InbandStat::EgressUpdates);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

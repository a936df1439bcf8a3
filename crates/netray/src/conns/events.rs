//! Turning the kernel's raw [`ConnEvent`]s into connection records: exact
//! byte counts, attribution, addresses, times.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use netray_common::conns::{
    ConnEvent, EVENT_ACCEPT, EVENT_CLOSE, EVENT_CONNECT, FAMILY_IPV6, FLAG_BASELINE, FLAG_COUNTERS,
    FLAG_FIN_RECEIVED, FLAG_PID_KNOWN, ROLE_ACCEPT, ROLE_CONNECT, ROLE_UNKNOWN,
};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An outgoing connection was established.
    Connect,
    /// A process accepted an incoming connection.
    Accept,
    /// A connection ended.
    Close,
    /// Live counters of an open connection (`--interval`).
    Stats,
}

impl EventKind {
    /// The `event` value in JSON, lower case.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Close => "close",
            Self::Stats => "stats",
        }
    }
}

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This host (`connect`).
    Connect,
    /// The peer (`accept`).
    Accept,
    /// Unknown: the connection predates netray.
    Unknown,
}

impl Role {
    /// JSON / text name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Unknown => "unknown",
        }
    }
}

/// The process a connection belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id that made the connection.
    pub tid: u32,
    /// Command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}

/// Totals at close (or live, for `Stats`).
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    /// Payload bytes the peer acknowledged.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Time since ESTABLISHED; `None` when unknown (predates netray).
    pub duration: Option<Duration>,
    /// Smoothed RTT in µs (0: no sample).
    pub srtt_us: u32,
    /// Retransmitted segments.
    pub retransmits: u32,
    /// Close: TCP state the connection closed from (`FIN_WAIT2`, ...).
    pub state: Option<&'static str>,
    /// The counters are approximate: no ESTABLISHED baseline (the
    /// connection predates netray), the handshake is assumed to have been
    /// a plain SYN exchange.
    pub approximate: bool,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnRecord {
    /// What happened.
    pub kind: EventKind,
    /// Event time, nanoseconds since the Unix epoch.
    pub ts_unix_ns: u64,
    /// The owning process, when known.
    pub process: Option<Process>,
    /// Who opened the connection.
    pub role: Role,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Hostname the process resolved to the remote address.
    pub host: Option<String>,
    /// Close/stats counters.
    pub totals: Option<Totals>,
    /// Identifies the connection across its events (kernel socket address;
    /// never printed).
    pub cookie: u64,
    /// Monotonic ns at ESTABLISHED (0: unknown).
    pub start_ns: u64,
    /// `bytes_acked` / `bytes_received` at ESTABLISHED, for live counters.
    pub baseline: Option<(u64, u64)>,
}

impl ConnRecord {
    /// IPv4 or IPv6.
    pub fn family(&self) -> &'static str {
        if self.remote.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        }
    }
}

/// Name of a kernel TCP state number.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// States from which the socket had queued our FIN (it counts one in
/// `bytes_acked` once acknowledged).
fn fin_queued(oldstate: u8) -> bool {
    matches!(oldstate, 4 | 5 | 6 | 9 | 11)
}

/// The address in an event; IPv4-mapped IPv6 addresses (an IPv6 socket
/// talking IPv4) are shown as the IPv4 addresses they are on the wire.
fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_IPV6 {
        IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// The command name in a NUL-padded kernel buffer.
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Converts the kernel's monotonic clock to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix ns minus monotonic ns.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// Measures the offset now.
    pub fn now() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// A clock with a given offset (tests).
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix ns of monotonic `ns`.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).max(0) as u64
    }

    /// Current monotonic ns (the kernel's `bpf_ktime_get_ns`).
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// For live counters (`tcp_info` of a socket in TCP state `state`): whether
/// `bytes_acked` includes our acknowledged FIN and whether `bytes_received`
/// includes the peer's FIN.
pub fn live_fins(state: u8) -> (bool, bool) {
    // FIN_WAIT2, TIME_WAIT: our FIN acked. CLOSE_WAIT, LAST_ACK, CLOSING,
    // TIME_WAIT: the peer's FIN received.
    (matches!(state, 5 | 6), matches!(state, 6 | 8 | 9 | 11))
}

/// Payload bytes from the kernel's `bytes_acked`/`bytes_received`, which
/// also count the FINs and, on the connecting side, the SYN (before the
/// ESTABLISHED baseline). Returns (sent, received, approximate).
///
/// Without a baseline (the connection predates netray) the SYN's share is
/// unknown: the connecting side's count includes it, the accepting side's
/// does not. `bytes_sent - bytes_retrans` (payload transmitted once, no
/// flags) settles it when everything sent was acknowledged, the usual
/// case at close; otherwise the SYN is assumed counted and the result is
/// marked approximate.
pub fn payload_bytes(e: &ConnEvent) -> (u64, u64, bool) {
    let baseline = e.flags & FLAG_BASELINE != 0;
    let fin_acked = u64::from(fin_queued(e.oldstate) && e.snd_una == e.write_seq);
    let fin_received = u64::from(e.flags & FLAG_FIN_RECEIVED != 0);
    let received_base = if baseline { e.base_received } else { 0 };
    let received = e
        .bytes_received
        .saturating_sub(received_base)
        .saturating_sub(fin_received);
    if baseline {
        let sent = e
            .bytes_acked
            .saturating_sub(e.base_acked)
            .saturating_sub(fin_acked);
        return (sent, received, false);
    }
    let acked = e.bytes_acked.saturating_sub(fin_acked);
    if e.role != ROLE_UNKNOWN {
        // A connect that never got established: nothing was sent.
        return (acked.saturating_sub(1), received, false);
    }
    let transmitted = e.bytes_sent.saturating_sub(e.bytes_retrans);
    if acked == transmitted || acked == transmitted + 1 {
        (transmitted, received, false)
    } else {
        (acked.saturating_sub(1), received, true)
    }
}

/// Decodes a ring buffer record; `None` when malformed.
pub fn decode(record: &[u8], clock: &Clock) -> Option<ConnRecord> {
    if record.len() < size_of::<ConnEvent>() {
        return None;
    }
    // SAFETY: length checked; ConnEvent is plain data valid for any bits.
    let e: ConnEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    from_event(&e, clock)
}

/// Builds the record of a raw event.
pub fn from_event(e: &ConnEvent, clock: &Clock) -> Option<ConnRecord> {
    let kind = match e.kind {
        EVENT_CONNECT => EventKind::Connect,
        EVENT_ACCEPT => EventKind::Accept,
        EVENT_CLOSE => EventKind::Close,
        _ => return None,
    };
    let process = (e.flags & FLAG_PID_KNOWN != 0).then(|| Process {
        pid: e.tgid,
        tid: e.tid,
        comm: comm_str(&e.comm),
    });
    let role = match e.role {
        ROLE_CONNECT => Role::Connect,
        ROLE_ACCEPT => Role::Accept,
        _ => Role::Unknown,
    };
    let totals = (kind == EventKind::Close && e.flags & FLAG_COUNTERS != 0).then(|| {
        let (bytes_sent, bytes_received, approximate) = payload_bytes(e);
        Totals {
            bytes_sent,
            bytes_received,
            duration: (e.start_ns != 0 && e.ts_ns >= e.start_ns)
                .then(|| Duration::from_nanos(e.ts_ns - e.start_ns)),
            srtt_us: e.srtt_us >> 3,
            retransmits: e.total_retrans,
            state: Some(tcp_state_name(e.oldstate)),
            approximate,
        }
    });
    Some(ConnRecord {
        kind,
        ts_unix_ns: clock.unix_ns(e.ts_ns),
        process,
        role,
        local: SocketAddr::new(addr(e.family, e.saddr), e.sport),
        remote: SocketAddr::new(addr(e.family, e.daddr), e.dport),
        host: None,
        totals,
        cookie: e.cookie,
        start_ns: e.start_ns,
        baseline: (e.flags & FLAG_BASELINE != 0).then_some((e.base_acked, e.base_received)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netray_common::conns::FAMILY_IPV4;

    fn close_event() -> ConnEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ConnEvent {
            ts_ns: 3_000_000_000,
            start_ns: 1_000_000_000,
            cookie: 42,
            bytes_acked: 1 + 1000 + 1,
            bytes_received: 5000 + 1,
            bytes_sent: 1000,
            bytes_retrans: 0,
            base_acked: 1,
            base_received: 0,
            tgid: 100,
            tid: 101,
            srtt_us: 800 << 3,
            total_retrans: 2,
            snd_una: 7,
            write_seq: 7,
            comm,
            saddr,
            daddr,
            sport: 40000,
            dport: 80,
            kind: EVENT_CLOSE,
            family: FAMILY_IPV4,
            role: ROLE_CONNECT,
            flags: FLAG_PID_KNOWN | FLAG_BASELINE | FLAG_COUNTERS | FLAG_FIN_RECEIVED,
            oldstate: 5,
            pad: [0; 7],
        }
    }

    #[test]
    fn live_fins_by_state() {
        assert_eq!(live_fins(1), (false, false));
        assert_eq!(live_fins(8), (false, true));
        assert_eq!(live_fins(5), (true, false));
        assert_eq!(live_fins(6), (true, true));
        assert_eq!(live_fins(4), (false, false));
    }

    #[test]
    fn close_counts_only_payload() {
        let r = from_event(&close_event(), &Clock::with_offset(10)).unwrap();
        assert_eq!(r.kind, EventKind::Close);
        assert_eq!(r.ts_unix_ns, 3_000_000_010);
        let t = r.totals.clone().unwrap();
        assert_eq!((t.bytes_sent, t.bytes_received), (1000, 5000));
        assert_eq!(t.duration, Some(Duration::from_secs(2)));
        assert_eq!(t.srtt_us, 800);
        assert_eq!(t.retransmits, 2);
        assert_eq!(t.state, Some("FIN_WAIT2"));
        assert!(!t.approximate);
        let p = r.process.clone().unwrap();
        assert_eq!((p.pid, p.tid, p.comm.as_str()), (100, 101, "curl"));
        assert_eq!(r.local, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(r.remote, "10.0.0.2:80".parse().unwrap());
        assert_eq!(r.family(), "ipv4");
    }

    #[test]
    fn unacked_fin_and_no_fin_received_are_not_subtracted() {
        let mut e = close_event();
        e.bytes_acked = 1 + 1000;
        e.snd_una = 5;
        e.write_seq = 7; // our FIN (and maybe data) not acknowledged
        e.oldstate = 4;
        e.bytes_received = 5000;
        e.flags &= !FLAG_FIN_RECEIVED;
        let t = from_event(&e, &Clock::with_offset(0))
            .unwrap()
            .totals
            .unwrap();
        assert_eq!((t.bytes_sent, t.bytes_received), (1000, 5000));
        // Aborted from ESTABLISHED: no FIN of ours counted even if seqs match.
        e.oldstate = 1;
        e.snd_una = 7;
        let t = from_event(&e, &Clock::with_offset(0))
            .unwrap()
            .totals
            .unwrap();
        assert_eq!(t.bytes_sent, 1000);
    }

    #[test]
    fn preexisting_connection_has_no_process() {
        let mut e = close_event();
        e.flags = FLAG_COUNTERS | FLAG_FIN_RECEIVED;
        e.role = ROLE_UNKNOWN;
        e.start_ns = 0;
        e.comm = [0; 16];
        // Connecting side: SYN + 1000 + FIN acknowledged; 1000 transmitted.
        e.bytes_sent = 1200;
        e.bytes_retrans = 200;
        let r = from_event(&e, &Clock::with_offset(0)).unwrap();
        assert!(r.process.is_none());
        assert_eq!(r.role, Role::Unknown);
        let t = r.totals.clone().unwrap();
        assert!(!t.approximate);
        assert_eq!(t.duration, None);
        assert_eq!((t.bytes_sent, t.bytes_received), (1000, 5000));
        // Accepting side: no SYN in bytes_acked.
        e.bytes_acked = 1000 + 1;
        let t = from_event(&e, &Clock::with_offset(0))
            .unwrap()
            .totals
            .unwrap();
        assert_eq!((t.bytes_sent, t.approximate), (1000, false));
        // Data left unacknowledged: the SYN is assumed, marked approximate.
        e.bytes_acked = 1 + 500 + 1;
        let t = from_event(&e, &Clock::with_offset(0))
            .unwrap()
            .totals
            .unwrap();
        assert_eq!((t.bytes_sent, t.approximate), (500, true));
    }

    #[test]
    fn failed_connect_counts_nothing() {
        let mut e = close_event();
        e.flags = FLAG_PID_KNOWN | FLAG_COUNTERS;
        e.start_ns = 0;
        e.oldstate = 2;
        e.bytes_acked = 0;
        e.bytes_received = 0;
        let t = from_event(&e, &Clock::with_offset(0))
            .unwrap()
            .totals
            .unwrap();
        assert_eq!((t.bytes_sent, t.bytes_received), (0, 0));
        assert!(!t.approximate);
        assert_eq!(t.state, Some("SYN_SENT"));
    }

    #[test]
    fn ipv6_addresses_and_malformed_records() {
        let mut e = close_event();
        e.family = FAMILY_IPV6;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let r = from_event(&e, &Clock::with_offset(0)).unwrap();
        assert_eq!(r.remote, "[fd00::2]:80".parse().unwrap());
        assert_eq!(r.family(), "ipv6");
        e.daddr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
        let r = from_event(&e, &Clock::with_offset(0)).unwrap();
        assert_eq!(r.remote, "10.0.0.9:80".parse().unwrap());
        e.kind = 9;
        assert!(from_event(&e, &Clock::with_offset(0)).is_none());
        assert!(decode(&[0u8; 10], &Clock::with_offset(0)).is_none());
    }
}

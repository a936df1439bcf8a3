//! Types the connection tracer's eBPF programs and userspace share.
//!
//! The kernel side is small: the `sock:inet_sock_set_state` tracepoint keeps
//! one [`ConnState`] per TCP socket (keyed by the `struct sock` address) and
//! sends [`ConnEvent`]s with the raw kernel counters; the
//! `syscalls:sys_exit_accept{,4}` tracepoints attach the accepting process to
//! a passively opened socket. Every offset the programs use (tracepoint
//! fields, `tcp_sock`/`task_struct` members) comes from userspace in
//! [`ConnsConfig`], computed at run time from the tracepoint format files and
//! the kernel's BTF. Userspace turns raw counters into exact byte counts.
//!
//! Addresses are raw network-order bytes; an IPv4 address fills the first 4
//! bytes, the rest zero. Ports are in host byte order.

/// [`ConnEvent::kind`]: an outgoing connection was established.
pub const EVENT_CONNECT: u8 = 1;
/// [`ConnEvent::kind`]: a process accepted an incoming connection.
pub const EVENT_ACCEPT: u8 = 2;
/// [`ConnEvent::kind`]: a connection ended (its socket went to TCP_CLOSE).
pub const EVENT_CLOSE: u8 = 3;

/// [`ConnEvent::family`]: IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// [`ConnEvent::family`]: IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// [`ConnEvent::role`]: role unknown (the connection predates netray).
pub const ROLE_UNKNOWN: u8 = 0;
/// [`ConnEvent::role`]: opened by this host (`connect`).
pub const ROLE_CONNECT: u8 = 1;
/// [`ConnEvent::role`]: opened by the peer (`accept`).
pub const ROLE_ACCEPT: u8 = 2;

/// [`ConnEvent::flags`]: `tgid`, `tid` and `comm` are the process that made
/// the connection (else unknown: zero).
pub const FLAG_PID_KNOWN: u8 = 1;
/// [`ConnEvent::flags`]: `base_acked`/`base_received` hold the counters at
/// ESTABLISHED (else the connection predates netray: no baseline).
pub const FLAG_BASELINE: u8 = 2;
/// [`ConnEvent::flags`]: the socket's `SOCK_DONE` flag was set at close: a
/// FIN was received (and counted in `bytes_received`).
pub const FLAG_FIN_RECEIVED: u8 = 4;
/// [`ConnEvent::flags`]: the counters were read (`tcp_sock` offsets known).
pub const FLAG_COUNTERS: u8 = 8;

/// [`ConnsConfig::flags`]: the counter offsets are valid.
pub const CONFIG_COUNTERS: u32 = 1;
/// [`ConnsConfig::flags`]: the accept fd → socket offsets are valid.
pub const CONFIG_ACCEPT: u32 = 2;
/// [`ConnsConfig::flags`]: the `struct sock` tuple offsets are valid (needed
/// by the `tp_btf` lifecycle hook).
pub const CONFIG_SOCK_TUPLE: u32 = 4;

/// Index in the `CONNS_STATS` per-CPU array: events lost because the ring
/// buffer was full.
pub const STAT_RINGBUF_FULL: u32 = 0;
/// Index: sockets not tracked because the socket table was full.
pub const STAT_TABLE_FULL: u32 = 1;
/// Index: events written to the ring buffer.
pub const STAT_EVENTS: u32 = 2;
/// Index: accept() results whose socket could not be resolved (read error).
pub const STAT_ACCEPT_UNRESOLVED: u32 = 3;
/// Length of the `CONNS_STATS` array.
pub const STAT_COUNT: u32 = 4;

/// How many bytes of the `sock:inet_sock_set_state` record the program
/// copies (one read for all fields); every field used must end within it.
pub const TP_RECORD_MAX: u32 = 128;

/// How many sockets the kernel tracks at once.
pub const MAX_TRACKED: u32 = 131_072;

/// Offsets the programs need, computed by userspace (slot 0 of the
/// `CONNS_CONFIG` array). All in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnsConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// `sock:inet_sock_set_state` field `skaddr` (8 bytes).
    pub tp_skaddr: u32,
    /// Field `oldstate` (int).
    pub tp_oldstate: u32,
    /// Field `newstate` (int).
    pub tp_newstate: u32,
    /// Field `sport` (u16, host order).
    pub tp_sport: u32,
    /// Field `dport` (u16).
    pub tp_dport: u32,
    /// Field `family` (u16, AF_*).
    pub tp_family: u32,
    /// Field `protocol` (u16).
    pub tp_protocol: u32,
    /// Field `saddr` (4 bytes).
    pub tp_saddr: u32,
    /// Field `daddr` (4 bytes).
    pub tp_daddr: u32,
    /// Field `saddr_v6` (16 bytes).
    pub tp_saddr_v6: u32,
    /// Field `daddr_v6` (16 bytes).
    pub tp_daddr_v6: u32,
    /// `syscalls:sys_exit_accept*` field `ret` (long).
    pub tp_accept_ret: u32,
    /// `tcp_sock.bytes_acked` (u64).
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_received` (u64).
    pub bytes_received: u32,
    /// `tcp_sock.srtt_us` (u32, smoothed RTT in µs << 3).
    pub srtt_us: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub total_retrans: u32,
    /// `tcp_sock.snd_una` (u32).
    pub snd_una: u32,
    /// `tcp_sock.write_seq` (u32).
    pub write_seq: u32,
    /// `sock.sk_flags` (`__sk_common.skc_flags`), from the `struct sock` start.
    pub sk_flags: u32,
    /// Bit number of `SOCK_DONE` in `sk_flags`.
    pub sock_done_bit: u32,
    /// `task_struct.files` (pointer).
    pub task_files: u32,
    /// `files_struct.fdt` (pointer).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (unsigned int).
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (pointer to an array of `struct file *`).
    pub fdt_fd: u32,
    /// `file.private_data` (pointer; a `struct socket` for sockets).
    pub file_private_data: u32,
    /// `socket.sk` (pointer).
    pub socket_sk: u32,
    /// `tcp_sock.bytes_sent` (u64: payload bytes transmitted, with
    /// retransmissions; no SYN/FIN).
    pub bytes_sent: u32,
    /// `tcp_sock.bytes_retrans` (u64: payload bytes retransmitted).
    pub bytes_retrans: u32,
    /// `sock.sk_protocol` (u16), for the `tp_btf` lifecycle hook, which
    /// reads the tuple from the socket instead of the tracepoint record.
    pub sk_protocol: u32,
    /// `sock.__sk_common.skc_family` (u16).
    pub skc_family: u32,
    /// `inet_sock.inet_sport` (u16, local port, network order). Not
    /// `skc_num`: the kernel zeroes that when it releases the port, before
    /// the state change to TCP_CLOSE is traced (`inet_put_port`, then
    /// `inet_sk_state_store`); the classic tracepoint reads `inet_sport` too.
    pub inet_sport: u32,
    /// `sock.__sk_common.skc_dport` (u16, network order).
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (4 bytes).
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr` (4 bytes).
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub skc_v6_daddr: u32,
}

/// What the kernel keeps per tracked socket (`CONNS_SOCKS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// `bpf_ktime_get_ns` at ESTABLISHED (0: not yet).
    pub start_ns: u64,
    /// `bytes_acked` at ESTABLISHED (the SYN, when counted).
    pub base_acked: u64,
    /// `bytes_received` at ESTABLISHED.
    pub base_received: u64,
    /// Process (thread group) id of the owner.
    pub tgid: u32,
    /// Thread id of the owner.
    pub tid: u32,
    /// Owner's command name (NUL-padded).
    pub comm: [u8; 16],
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// `FAMILY_*`.
    pub family: u8,
    /// `ROLE_*`.
    pub role: u8,
    /// `FLAG_PID_KNOWN` and `FLAG_BASELINE` bits.
    pub flags: u8,
    /// Always zero.
    pub pad: u8,
}

/// One event (ring buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the event.
    pub ts_ns: u64,
    /// `bpf_ktime_get_ns` at ESTABLISHED; 0 when unknown.
    pub start_ns: u64,
    /// The socket's kernel address: identifies the connection between its
    /// events (never printed).
    pub cookie: u64,
    /// Close: `tcp_sock.bytes_acked` (raw).
    pub bytes_acked: u64,
    /// Close: `tcp_sock.bytes_received` (raw).
    pub bytes_received: u64,
    /// Close: `tcp_sock.bytes_sent` (payload transmitted incl.
    /// retransmissions).
    pub bytes_sent: u64,
    /// Close: `tcp_sock.bytes_retrans`.
    pub bytes_retrans: u64,
    /// Baseline of `bytes_acked` (valid with `FLAG_BASELINE`).
    pub base_acked: u64,
    /// Baseline of `bytes_received` (valid with `FLAG_BASELINE`).
    pub base_received: u64,
    /// Process id (0 when unknown).
    pub tgid: u32,
    /// Thread id (0 when unknown).
    pub tid: u32,
    /// Close: `tcp_sock.srtt_us` (raw, µs << 3).
    pub srtt_us: u32,
    /// Close: `tcp_sock.total_retrans`.
    pub total_retrans: u32,
    /// Close: `tcp_sock.snd_una`.
    pub snd_una: u32,
    /// Close: `tcp_sock.write_seq`.
    pub write_seq: u32,
    /// Command name (NUL-padded; zero when unknown).
    pub comm: [u8; 16],
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// `EVENT_*`.
    pub kind: u8,
    /// `FAMILY_*`.
    pub family: u8,
    /// `ROLE_*`.
    pub role: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Close: the TCP state the socket closed from (kernel `TCP_*` number).
    pub oldstate: u8,
    /// Always zero.
    pub pad: [u8; 7],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, only integers and byte arrays, no implicit
    // padding (explicit `pad` fields); any bit pattern is valid.
    unsafe impl aya::Pod for super::ConnsConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ConnsConfig>(), 37 * 4);
        assert_eq!(core::mem::size_of::<ConnState>(), 24 + 8 + 16 * 3 + 8);
        assert_eq!(
            core::mem::size_of::<ConnEvent>(),
            9 * 8 + 6 * 4 + 16 * 3 + 4 + 5 + 7
        );
    }
}

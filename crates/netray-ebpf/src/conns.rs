//! Connection tracer (`netray conns`).
//!
//! - `conns_state` (`sock:inet_sock_set_state`): the TCP lifecycle. At
//!   CLOSE→SYN_SENT (inside `connect()`, process context) it records the
//!   connecting process; at →ESTABLISHED it records the tuple, start time and
//!   counter baselines (and reports `connect`); at →CLOSE it reports `close`
//!   with the raw `tcp_sock` counters and forgets the socket. Sockets it
//!   never saw (older than netray) are reported at close with no process.
//!   `conns_state_btf` is the same as a BTF tracepoint, used where the
//!   classic tracepoint cannot be (the tuple is then read from the socket).
//! - `conns_accept_fexit4` / `conns_accept_fexit2` (`fexit/inet_csk_accept`,
//!   where fentry works): the accepted socket in the accepting process.
//! - else `conns_accept` / `conns_accept4` (`syscalls:sys_exit_accept{,4}`, process
//!   context): resolve the returned fd to its `struct sock` and, when it is a
//!   tracked passively opened connection, attach the accepting process and
//!   report `accept`.
//!
//! No kernel struct offset is compiled in: userspace computes them from the
//! tracepoint format files and the kernel's BTF and writes them to
//! `CONNS_CONFIG` before attaching.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

#[path = "conns/resolve.rs"]
mod resolve;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::{btf_tracepoint, fexit, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
};
use netray_common::conns::{
    CONFIG_ACCEPT, CONFIG_COUNTERS, CONFIG_SOCK_TUPLE, ConnEvent, ConnState, ConnsConfig,
    EVENT_ACCEPT, EVENT_CLOSE, EVENT_CONNECT, FAMILY_IPV4, FAMILY_IPV6, FLAG_BASELINE,
    FLAG_COUNTERS, FLAG_FIN_RECEIVED, FLAG_PID_KNOWN, MAX_TRACKED, ROLE_ACCEPT, ROLE_CONNECT,
    ROLE_UNKNOWN, STAT_ACCEPT_UNRESOLVED, STAT_COUNT, STAT_EVENTS, STAT_RINGBUF_FULL,
    STAT_TABLE_FULL, TP_RECORD_MAX,
};

/// Offsets (slot 0), written by userspace before attaching.
#[map]
static CONNS_CONFIG: Array<ConnsConfig> = Array::with_max_entries(1, 0);

/// Tracked sockets by `struct sock` address.
#[map]
static CONNS_SOCKS: HashMap<u64, ConnState> = HashMap::with_max_entries(MAX_TRACKED, 0);

/// [`ConnEvent`]s to userspace.
#[map]
static CONNS_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Counters (`STAT_*`), per CPU.
#[map]
static CONNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// `*dst += n` as one atomic instruction (BPF_XADD: the result is unused;
/// the BPF target has no `AtomicU64::fetch_add`).
///
/// # Safety
/// `dst` valid and 8-aligned.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, n: u64) {
    // SAFETY: per the contract.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, n,
        )
    };
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = CONNS_STATS.get_ptr_mut(index) {
        // An atomic add (BPF_XADD): another of these programs can interrupt
        // this one on the same CPU (a state change in softirq during the
        // accept program, or during this program where the kernel runs
        // nested BPF_TRACE_RAW_TP programs: no per-program recursion check
        // before 5.12), and a plain read-modify-write would lose its count.
        // SAFETY: per-CPU map value, 8-aligned, valid for the program's run.
        unsafe { atomic_add(slot, 1) };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `T` at kernel address `base + offset` (0 on failure).
#[inline(always)]
fn kread<T: Default>(base: u64, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.unwrap_or_default()
}

/// How many bytes of the `inet_sock_set_state` record are copied at once
/// (the record is 72 bytes on every kernel so far; userspace checks that
/// every field it uses lies within this many bytes).
const RECORD_MAX: usize = TP_RECORD_MAX as usize;

/// Per-CPU copy of the current tracepoint record: one
/// `bpf_probe_read_kernel` instead of one per field (each costs hundreds
/// of nanoseconds here).
#[repr(C, align(8))]
pub struct Record {
    bytes: [u8; RECORD_MAX],
}

/// Scratch space for [`Record`].
#[map]
static CONNS_RECORD: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// The `T` at `offset` in the copied record (bounds checked).
#[inline(always)]
fn rec<T: Copy>(record: &Record, offset: u32) -> Result<T, i32> {
    let offset = offset as usize;
    if offset > RECORD_MAX - size_of::<T>() {
        return Err(0);
    }
    // SAFETY: offset + size_of::<T>() <= RECORD_MAX (checked above);
    // unaligned read of plain data.
    Ok(unsafe { core::ptr::read_unaligned(record.bytes.as_ptr().add(offset).cast::<T>()) })
}

/// The tuple of a state change, as the tracepoint reports it.
struct Tuple {
    family: u8,
    sport: u16,
    dport: u16,
    saddr: [u64; 2],
    daddr: [u64; 2],
}

#[inline(always)]
fn tuple(record: &Record, cfg: &ConnsConfig) -> Result<Tuple, i32> {
    let af: u16 = rec(record, cfg.tp_family)?;
    let (family, saddr, daddr) = if af == AF_INET6 {
        (
            FAMILY_IPV6,
            rec::<[u64; 2]>(record, cfg.tp_saddr_v6)?,
            rec::<[u64; 2]>(record, cfg.tp_daddr_v6)?,
        )
    } else if af == AF_INET {
        // The low-addressed 4 bytes of the word are the address, the rest 0.
        let s: u32 = rec(record, cfg.tp_saddr)?;
        let d: u32 = rec(record, cfg.tp_daddr)?;
        (FAMILY_IPV4, [u64::from(s), 0], [u64::from(d), 0])
    } else {
        return Err(0);
    };
    Ok(Tuple {
        family,
        sport: rec(record, cfg.tp_sport)?,
        dport: rec(record, cfg.tp_dport)?,
        saddr,
        daddr,
    })
}

/// Copies 16 bytes between 8-aligned places with two word moves.
///
/// # Safety
/// Both pointers 8-aligned and valid for 16 bytes.
#[inline(always)]
unsafe fn copy16(dst: *mut [u8; 16], src: *const [u8; 16]) {
    // SAFETY: per the contract.
    unsafe { *dst.cast::<[u64; 2]>() = *src.cast::<[u64; 2]>() };
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn conns_state(ctx: TracePointContext) -> u32 {
    let _ = try_state(&ctx);
    0
}

fn try_state(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = CONNS_CONFIG.get(0).ok_or(0)?;
    let record = CONNS_RECORD.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU map value, valid and exclusive for the program's run.
    let record = unsafe { &mut *record };
    // SAFETY: bpf_probe_read_kernel validates the source and fails cleanly;
    // the record sits in the per-CPU trace buffer, which is far larger.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut record.bytes) }?;
    let protocol: u16 = rec(record, cfg.tp_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = rec(record, cfg.tp_skaddr)?;
    let old: i32 = rec(record, cfg.tp_oldstate)?;
    let new: i32 = rec(record, cfg.tp_newstate)?;
    if !interesting(new) {
        return Ok(());
    }
    let t = tuple(record, cfg)?;
    state_change(cfg, sk, old, new, &t)
}

/// The same hook as a BTF tracepoint (`tp_btf/inet_sock_set_state`), for
/// kernels where the classic one cannot be used: the arguments are the
/// socket and the two states; the tuple is read from the socket at
/// BTF-computed offsets.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn conns_state_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = try_state_btf(&ctx);
    0
}

fn try_state_btf(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let cfg = CONNS_CONFIG.get(0).ok_or(0)?;
    if cfg.flags & CONFIG_SOCK_TUPLE == 0 {
        return Err(0);
    }
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if !interesting(new) || kread::<u16>(sk, cfg.sk_protocol) != IPPROTO_TCP {
        return Ok(());
    }
    let af: u16 = kread(sk, cfg.skc_family);
    let (family, saddr, daddr) = if af == AF_INET6 {
        (
            FAMILY_IPV6,
            kread::<[u64; 2]>(sk, cfg.skc_v6_rcv_saddr),
            kread::<[u64; 2]>(sk, cfg.skc_v6_daddr),
        )
    } else if af == AF_INET {
        let s: u32 = kread(sk, cfg.skc_rcv_saddr);
        let d: u32 = kread(sk, cfg.skc_daddr);
        (FAMILY_IPV4, [u64::from(s), 0], [u64::from(d), 0])
    } else {
        return Ok(());
    };
    let t = Tuple {
        family,
        sport: u16::from_be(kread(sk, cfg.inet_sport)),
        dport: u16::from_be(kread(sk, cfg.skc_dport)),
        saddr,
        daddr,
    };
    state_change(cfg, sk, old, new, &t)
}

#[inline(always)]
fn interesting(new: i32) -> bool {
    new == TCP_SYN_SENT || new == TCP_ESTABLISHED || new == TCP_CLOSE
}

/// One TCP state change, whichever hook saw it.
#[inline(always)]
fn state_change(cfg: &ConnsConfig, sk: u64, old: i32, new: i32, t: &Tuple) -> Result<(), i32> {
    match new {
        TCP_SYN_SENT => on_syn_sent(t, sk),
        TCP_ESTABLISHED => on_established(t, cfg, sk, old),
        TCP_CLOSE => on_close(t, cfg, sk, old),
        _ => Ok(()),
    }
}

/// Inside `connect()`: the current task is the one connecting.
#[inline(always)]
fn on_syn_sent(t: &Tuple, sk: u64) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let state = ConnState {
        start_ns: 0,
        base_acked: 0,
        base_received: 0,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: t.family,
        role: ROLE_CONNECT,
        flags: FLAG_PID_KNOWN,
        pad: 0,
    };
    if CONNS_SOCKS.insert(sk, state, 0).is_err() {
        bump(STAT_TABLE_FULL);
    }
    Ok(())
}

#[inline(always)]
fn on_established(t: &Tuple, cfg: &ConnsConfig, sk: u64, old: i32) -> Result<(), i32> {
    let (acked, received) = if cfg.flags & CONFIG_COUNTERS != 0 {
        (
            kread::<u64>(sk, cfg.bytes_acked),
            kread::<u64>(sk, cfg.bytes_received),
        )
    } else {
        (0, 0)
    };
    let start = now();
    // A socket that went through SYN_SENT with netray watching (also on a
    // simultaneous open, SYN_SENT → SYN_RECV → ESTABLISHED).
    if let Some(state) = CONNS_SOCKS.get_ptr_mut(sk)
        // SAFETY: map value pointer, valid for the program's run.
        && let state = unsafe { &mut *state }
        && state.role == ROLE_CONNECT
        && state.start_ns == 0
    {
        state.start_ns = start;
        state.base_acked = acked;
        state.base_received = received;
        // SAFETY: fields of 8-aligned map value; arrays of 16 bytes.
        unsafe {
            *(&raw mut state.saddr).cast::<[u64; 2]>() = t.saddr;
            *(&raw mut state.daddr).cast::<[u64; 2]>() = t.daddr;
        }
        state.sport = t.sport;
        state.dport = t.dport;
        state.family = t.family;
        state.flags |= FLAG_BASELINE;
        emit(EVENT_CONNECT, sk, state);
        return Ok(());
    }
    // Passive open (SYN_RECV), or a connect() that began before netray.
    let mut state = ConnState {
        start_ns: start,
        base_acked: acked,
        base_received: received,
        tgid: 0,
        tid: 0,
        comm: [0; 16],
        saddr: [0; 16],
        daddr: [0; 16],
        sport: t.sport,
        dport: t.dport,
        family: t.family,
        role: if old == TCP_SYN_SENT {
            ROLE_CONNECT
        } else {
            ROLE_ACCEPT
        },
        flags: FLAG_BASELINE,
        pad: 0,
    };
    // SAFETY: fields of an 8-aligned struct; arrays of 16 bytes.
    unsafe {
        *(&raw mut state.saddr).cast::<[u64; 2]>() = t.saddr;
        *(&raw mut state.daddr).cast::<[u64; 2]>() = t.daddr;
    }
    if CONNS_SOCKS.insert(sk, state, 0).is_err() {
        bump(STAT_TABLE_FULL);
    }
    if old == TCP_SYN_SENT {
        emit(EVENT_CONNECT, sk, &state);
    }
    Ok(())
}

#[inline(always)]
fn on_close(t: &Tuple, cfg: &ConnsConfig, sk: u64, old: i32) -> Result<(), i32> {
    let tracked = CONNS_SOCKS.get_ptr(sk);
    if old == TCP_LISTEN || old == TCP_CLOSE || (tracked.is_none() && old == TCP_SYN_RECV) {
        // Listeners, double closes, and embryonic children never
        // established are not connections.
        if tracked.is_some() {
            let _ = CONNS_SOCKS.remove(sk);
        }
        return Ok(());
    }
    let Some(mut entry) = CONNS_EVENTS.reserve::<ConnEvent>(0) else {
        bump(STAT_RINGBUF_FULL);
        if tracked.is_some() {
            let _ = CONNS_SOCKS.remove(sk);
        }
        return Ok(());
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is a reserved, 8-aligned ConnEvent; every field is
    // written below. `tracked` points to a live map value.
    unsafe {
        (*e).ts_ns = now();
        (*e).cookie = sk;
        (*e).kind = EVENT_CLOSE;
        (*e).oldstate = old as u8;
        (*e).pad = [0; 7];
        let mut flags = 0u8;
        let mut established = false;
        if let Some(state) = tracked {
            let state = &*state;
            (*e).start_ns = state.start_ns;
            (*e).base_acked = state.base_acked;
            (*e).base_received = state.base_received;
            (*e).tgid = state.tgid;
            (*e).tid = state.tid;
            copy16(&raw mut (*e).comm, &raw const state.comm);
            (*e).role = state.role;
            flags = state.flags;
            established = state.start_ns != 0;
            if established {
                copy16(&raw mut (*e).saddr, &raw const state.saddr);
                copy16(&raw mut (*e).daddr, &raw const state.daddr);
                (*e).sport = state.sport;
                (*e).dport = state.dport;
                (*e).family = state.family;
            }
        } else {
            (*e).start_ns = 0;
            (*e).base_acked = 0;
            (*e).base_received = 0;
            (*e).tgid = 0;
            (*e).tid = 0;
            *(&raw mut (*e).comm).cast::<[u64; 2]>() = [0, 0];
            (*e).role = ROLE_UNKNOWN;
        }
        if !established {
            *(&raw mut (*e).saddr).cast::<[u64; 2]>() = t.saddr;
            *(&raw mut (*e).daddr).cast::<[u64; 2]>() = t.daddr;
            (*e).sport = t.sport;
            (*e).dport = t.dport;
            (*e).family = t.family;
        }
        if cfg.flags & CONFIG_COUNTERS != 0 {
            (*e).bytes_acked = kread::<u64>(sk, cfg.bytes_acked);
            (*e).bytes_received = kread::<u64>(sk, cfg.bytes_received);
            (*e).bytes_sent = kread::<u64>(sk, cfg.bytes_sent);
            (*e).bytes_retrans = kread::<u64>(sk, cfg.bytes_retrans);
            (*e).srtt_us = kread::<u32>(sk, cfg.srtt_us);
            (*e).total_retrans = kread::<u32>(sk, cfg.total_retrans);
            (*e).snd_una = kread::<u32>(sk, cfg.snd_una);
            (*e).write_seq = kread::<u32>(sk, cfg.write_seq);
            let sk_flags = kread::<u64>(sk, cfg.sk_flags);
            if (sk_flags >> (cfg.sock_done_bit & 63)) & 1 != 0 {
                flags |= FLAG_FIN_RECEIVED;
            }
            flags |= FLAG_COUNTERS;
        } else {
            (*e).bytes_acked = 0;
            (*e).bytes_received = 0;
            (*e).bytes_sent = 0;
            (*e).bytes_retrans = 0;
            (*e).srtt_us = 0;
            (*e).total_retrans = 0;
            (*e).snd_una = 0;
            (*e).write_seq = 0;
        }
        (*e).flags = flags;
    }
    entry.submit(0);
    bump(STAT_EVENTS);
    if tracked.is_some() {
        let _ = CONNS_SOCKS.remove(sk);
    }
    Ok(())
}

/// Sends a connect/accept event built from `state`.
#[inline(always)]
fn emit(kind: u8, sk: u64, state: &ConnState) {
    let Some(mut entry) = CONNS_EVENTS.reserve::<ConnEvent>(0) else {
        bump(STAT_RINGBUF_FULL);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is a reserved, 8-aligned ConnEvent; every field is written.
    unsafe {
        (*e).ts_ns = now();
        (*e).start_ns = state.start_ns;
        (*e).cookie = sk;
        (*e).bytes_acked = 0;
        (*e).bytes_received = 0;
        (*e).bytes_sent = 0;
        (*e).bytes_retrans = 0;
        (*e).base_acked = state.base_acked;
        (*e).base_received = state.base_received;
        (*e).tgid = state.tgid;
        (*e).tid = state.tid;
        (*e).srtt_us = 0;
        (*e).total_retrans = 0;
        (*e).snd_una = 0;
        (*e).write_seq = 0;
        copy16(&raw mut (*e).comm, &raw const state.comm);
        copy16(&raw mut (*e).saddr, &raw const state.saddr);
        copy16(&raw mut (*e).daddr, &raw const state.daddr);
        (*e).sport = state.sport;
        (*e).dport = state.dport;
        (*e).kind = kind;
        (*e).family = state.family;
        (*e).role = state.role;
        (*e).flags = state.flags;
        (*e).oldstate = 0;
        (*e).pad = [0; 7];
    }
    entry.submit(0);
    bump(STAT_EVENTS);
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn conns_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn conns_accept(ctx: TracePointContext) -> u32 {
    let _ = try_accept(&ctx);
    0
}

/// On return from accept: fd → `struct file` → `struct socket` → `struct
/// sock`, then attach the current process to the tracked connection.
fn try_accept(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = CONNS_CONFIG.get(0).ok_or(0)?;
    if cfg.flags & CONFIG_ACCEPT == 0 {
        return Ok(());
    }
    // SAFETY: read_at goes through bpf_probe_read_kernel.
    let ret: i64 = unsafe { ctx.read_at::<i64>(cfg.tp_accept_ret as usize) }?;
    if ret < 0 {
        return Ok(());
    }
    let fd = ret as u64;
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, cfg.task_files);
    let fdt: u64 = kread(files, cfg.files_fdt);
    let max_fds: u32 = kread(fdt, cfg.fdt_max_fds);
    let fds: u64 = kread(fdt, cfg.fdt_fd);
    if fd >= u64::from(max_fds) || fds == 0 {
        bump(STAT_ACCEPT_UNRESOLVED);
        return Ok(());
    }
    let file: u64 = kread(fds + fd * 8, 0);
    let socket: u64 = kread(file, cfg.file_private_data);
    let sk: u64 = kread(socket, cfg.socket_sk);
    if sk == 0 {
        bump(STAT_ACCEPT_UNRESOLVED);
        return Ok(());
    }
    accepted(sk)
}

/// `fexit/inet_csk_accept` where fentry works (preferred over the syscall
/// tracepoints: every accept path, also io_uring's and in-kernel ones, the
/// socket without the fd table walk, and a trampoline program's skipped
/// runs are counted since 5.12). Two variants, because the signature
/// changed in 6.10 (`(sk, flags, err, kern)` → `(sk, arg)`) and the return
/// value follows the arguments: userspace loads the 4-argument one first,
/// which the verifier rejects on a 2-argument kernel (no 5th slot).
#[fexit(function = "inet_csk_accept")]
pub fn conns_accept_fexit4(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(4);
    if sk != 0 {
        let _ = accepted(sk);
    }
    0
}

/// See [`conns_accept_fexit4`]: `inet_csk_accept(sk, arg)` (6.10+).
#[fexit(function = "inet_csk_accept")]
pub fn conns_accept_fexit2(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(2);
    if sk != 0 {
        let _ = accepted(sk);
    }
    0
}

/// In the accepting process: attach it to the tracked connection `sk`.
#[inline(always)]
fn accepted(sk: u64) -> Result<(), i32> {
    let Some(state) = CONNS_SOCKS.get_ptr_mut(sk) else {
        return Ok(());
    };
    // SAFETY: map value pointer, valid for the program's run.
    let state = unsafe { &mut *state };
    if state.role != ROLE_ACCEPT || state.flags & FLAG_PID_KNOWN != 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    state.tgid = (pid_tgid >> 32) as u32;
    state.tid = pid_tgid as u32;
    state.comm = bpf_get_current_comm().unwrap_or_default();
    state.flags |= FLAG_PID_KNOWN;
    emit(EVENT_ACCEPT, sk, state);
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

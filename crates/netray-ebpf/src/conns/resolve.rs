//! getaddrinfo uprobes for `netray conns` hostnames.
//!
//! `conns_getaddrinfo_entry` (uprobe on libc's `getaddrinfo(node, service,
//! hints, res)`) saves `node` and `res` keyed by the calling thread;
//! `conns_getaddrinfo_return` (uretprobe), when the call returned 0, copies
//! the name and walks the returned `struct addrinfo` list into one
//! [`ResolveEvent`] on `RESOLVE_EVENTS`. The event is committed before
//! getaddrinfo returns to its caller, so it precedes any connect() made with
//! the result.
//!
//! `struct addrinfo` is libc's userspace ABI (glibc and musl, LP64):
//! `ai_flags` i32 @0, `ai_family` i32 @4, `ai_socktype` i32 @8,
//! `ai_protocol` i32 @12, `ai_addrlen` u32 @16, `ai_addr` @24,
//! `ai_canonname` @32, `ai_next` @40. Userspace attaches only to 64-bit
//! libcs of the host's architecture.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use netray_common::resolve::{
    FAMILY_IPV4, FAMILY_IPV6, RESOLVE_MAX_ADDRS, ResolveEvent, ResolvePending, ResolveStat,
};

/// Calls in flight: thread (pid_tgid) → getaddrinfo's `node` and `res`.
/// LRU, so entries of threads that died inside getaddrinfo age out.
#[map]
pub static RESOLVE_PENDING: LruHashMap<u64, ResolvePending> =
    LruHashMap::with_max_entries(16_384, 0);

/// One [`ResolveEvent`] per successful call (560 bytes with the record
/// header: ~1870 fit).
#[map]
pub static RESOLVE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters, indexed by [`ResolveStat`].
#[map]
pub static RESOLVE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ResolveStat::COUNT, 0);

/// List entries walked at most: getaddrinfo without hints returns one entry
/// per socket type (stream, datagram, raw) for each address.
const MAX_NODES: usize = 3 * RESOLVE_MAX_ADDRS;

/// `AF_INET` in libc's numbering.
const AF_INET: i32 = 2;
/// `AF_INET6` in libc's numbering (Linux).
const AF_INET6: i32 = 10;

/// libc's `struct addrinfo` (LP64).
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrInfo {
    flags: i32,
    family: i32,
    socktype: i32,
    protocol: i32,
    addrlen: u32,
    pad: u32,
    addr: u64,
    canonname: u64,
    next: u64,
}

#[inline(always)]
fn count(stat: ResolveStat) {
    if let Some(slot) = RESOLVE_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from the map; the slot belongs to this
        // CPU. A lost increment under preemption would only undercount.
        unsafe { *slot += 1 };
    }
}

/// Entry of `getaddrinfo(node, service, hints, res)`.
#[uprobe]
pub fn conns_getaddrinfo_entry(ctx: ProbeContext) -> u32 {
    count(ResolveStat::Calls);
    let node: u64 = ctx.arg(0).unwrap_or(0);
    let res: u64 = ctx.arg(3).unwrap_or(0);
    // Tracked even without a name (service-only lookup) or result pointer,
    // so the return probe can tell such a call from an unmatched return;
    // it reports nothing for them.
    let pending = ResolvePending { node, res };
    if RESOLVE_PENDING
        .insert(bpf_get_current_pid_tgid(), pending, 0)
        .is_err()
    {
        count(ResolveStat::PendingDrops);
    }
    0
}

/// Return of `getaddrinfo`.
#[uretprobe]
pub fn conns_getaddrinfo_return(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let pending = match RESOLVE_PENDING.get_ptr(id) {
        // SAFETY: the pointer comes from the map and is valid for this run;
        // the entry is copied out before it is removed.
        Some(p) => unsafe { *p },
        None => {
            count(ResolveStat::Unmatched);
            return 0;
        }
    };
    let _ = RESOLVE_PENDING.remove(id);
    if pending.node == 0 || pending.res == 0 {
        return 0;
    }
    let rc: i32 = ctx.ret();
    if rc != 0 {
        count(ResolveStat::Failed);
        return 0;
    }
    report(id, &pending);
    0
}

#[inline(always)]
fn report(id: u64, pending: &ResolvePending) {
    // SAFETY: bpf_probe_read_user copies from user memory and fails cleanly
    // on a bad pointer.
    let head = match unsafe { bpf_probe_read_user(pending.res as *const u64) } {
        Ok(head) if head != 0 => head,
        _ => {
            count(ResolveStat::ReadErrors);
            return;
        }
    };
    let Some(mut entry) = RESOLVE_EVENTS.reserve::<ResolveEvent>(0) else {
        count(ResolveStat::RingbufDrops);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to the reserved record, valid and exclusively
    // ours until submit/discard. Fields userspace reads are all written:
    // header fields here, `name` up to `name_len`, `families`/`addrs` up to
    // `addr_count`.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).tgid = (id >> 32) as u32;
        (*event).tid = id as u32;
        (*event).addr_count = 0;
        (*event).flags = 0;
        (*event).name_len = 0;
        (*event).pad = [0; 4];
        let families = (&raw mut (*event).families).cast::<u64>();
        core::ptr::write_volatile(families, 0);
        core::ptr::write_volatile(families.add(1), 0);

        let name =
            match bpf_probe_read_user_str_bytes(pending.node as *const u8, &mut (*event).name) {
                Ok(name) => name.len(),
                Err(_) => {
                    entry.discard(0);
                    count(ResolveStat::ReadErrors);
                    return;
                }
            };
        if name == 0 {
            entry.discard(0);
            return;
        }
        if name >= (*event).name.len() - 1 {
            (*event).flags |= ResolveEvent::FLAG_NAME_TRUNCATED;
        }
        (*event).name_len = name as u16;
    }
    walk(head, event);
    entry.submit(0);
    count(ResolveStat::Events);
}

/// Walks the result list from `head` into `event`'s address arrays,
/// skipping an address equal to the one before it (the per-socket-type
/// repeats).
#[inline(always)]
fn walk(head: u64, event: *mut ResolveEvent) {
    let mut node = head;
    let mut last = [0u64; 2];
    let mut last_family = 0u8;
    for _ in 0..MAX_NODES {
        if node == 0 {
            return;
        }
        // SAFETY: reads user memory; fails cleanly on a bad pointer.
        let Ok(ai) = (unsafe { bpf_probe_read_user(node as *const AddrInfo) }) else {
            // The list is cut here: report what was read, flagged.
            break;
        };
        node = ai.next;
        let (family, words) = match ai.family {
            // sockaddr_in: sin_family u16, sin_port u16, sin_addr @4.
            AF_INET if ai.addr != 0 => {
                // SAFETY: as above.
                let Ok(a) =
                    (unsafe { bpf_probe_read_user(ai.addr.wrapping_add(4) as *const [u8; 4]) })
                else {
                    continue;
                };
                let word = [a[0], a[1], a[2], a[3], 0, 0, 0, 0];
                (FAMILY_IPV4, [u64::from_ne_bytes(word), 0])
            }
            // sockaddr_in6: family, port, sin6_flowinfo u32, sin6_addr @8.
            AF_INET6 if ai.addr != 0 => {
                // SAFETY: as above.
                let Ok(a) =
                    (unsafe { bpf_probe_read_user(ai.addr.wrapping_add(8) as *const [u64; 2]) })
                else {
                    continue;
                };
                (FAMILY_IPV6, a)
            }
            _ => continue,
        };
        if family == last_family && words == last {
            continue;
        }
        last = words;
        last_family = family;
        // The count lives in the record (map memory): read back through a
        // volatile load, the verifier knows only the bound checked here, the
        // same in every round, so rounds prune instead of multiplying.
        // SAFETY: `event` is the reserved record.
        let n = usize::from(unsafe { core::ptr::read_volatile(&raw const (*event).addr_count) });
        if n >= RESOLVE_MAX_ADDRS {
            count(ResolveStat::AddrsTruncated);
            // SAFETY: as above.
            unsafe { (*event).flags |= ResolveEvent::FLAG_ADDRS_TRUNCATED };
            return;
        }
        // SAFETY: n < RESOLVE_MAX_ADDRS: both slots are inside the record;
        // each address is 16 bytes at an 8-aligned offset.
        unsafe {
            let slot = (&raw mut (*event).addrs)
                .cast::<[u8; 16]>()
                .add(n)
                .cast::<u64>();
            core::ptr::write_volatile(slot, words[0]);
            core::ptr::write_volatile(slot.add(1), words[1]);
            core::ptr::write_volatile((&raw mut (*event).families).cast::<u8>().add(n), family);
            core::ptr::write_volatile(&raw mut (*event).addr_count, (n + 1) as u8);
        }
    }
    // Entries not walked (more than MAX_NODES, or an unreadable one): the
    // rest of the list is not reported.
    if node != 0 {
        count(ResolveStat::AddrsTruncated);
        // SAFETY: `event` is the reserved record.
        unsafe { (*event).flags |= ResolveEvent::FLAG_ADDRS_TRUNCATED };
    }
}

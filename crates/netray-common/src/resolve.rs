//! Types the getaddrinfo uprobes and userspace share (hostname events).
//!
//! The entry uprobe on libc's `getaddrinfo(node, service, hints, res)` saves
//! `node` and `res` keyed by the calling thread; the return uprobe, when
//! `getaddrinfo` returned 0, reads the name and walks the returned
//! `struct addrinfo` list, and reports one [`ResolveEvent`] per call through
//! the `RESOLVE_EVENTS` ring buffer. Counters live in the per-CPU array
//! `RESOLVE_STATS`, indexed by [`ResolveStat`].
//!
//! Addresses are raw network-order bytes; an IPv4 address fills the first 4
//! bytes, the rest zero (as in [`crate::inband`]).

/// [`ResolveEvent::families`] entry of an IPv4 address.
pub const FAMILY_IPV4: u8 = 4;
/// [`ResolveEvent::families`] entry of an IPv6 address.
pub const FAMILY_IPV6: u8 = 6;

/// Bytes of the looked-up name copied into an event (NUL included). Longer
/// names are cut and flagged with [`ResolveEvent::FLAG_NAME_TRUNCATED`]
/// (a DNS name has at most 253 characters).
pub const RESOLVE_NAME_LEN: usize = 256;

/// Addresses of one `getaddrinfo` result copied into an event. getaddrinfo
/// returns one entry per socket type (stream, datagram, raw) and address, so
/// this holds at least 5 distinct addresses in the worst case, 16 when the
/// caller asked for one socket type.
pub const RESOLVE_MAX_ADDRS: usize = 16;

/// One successful `getaddrinfo` call: the record of the `RESOLVE_EVENTS` ring
/// buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolveEvent {
    /// `bpf_ktime_get_ns()` at the return of getaddrinfo (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Process (thread group) id of the caller, in the initial pid namespace.
    pub tgid: u32,
    /// Thread id of the caller, in the initial pid namespace.
    pub tid: u32,
    /// How many entries of `addrs`/`families` are valid.
    pub addr_count: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Bytes of `name` before its NUL (at most `RESOLVE_NAME_LEN - 1`).
    pub name_len: u16,
    /// Always zero.
    pub pad: [u8; 4],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`] of each address.
    pub families: [u8; RESOLVE_MAX_ADDRS],
    /// The addresses, in the order of the returned list (duplicates and all).
    pub addrs: [[u8; 16]; RESOLVE_MAX_ADDRS],
    /// The name as the caller passed it (`node`), NUL-terminated.
    pub name: [u8; RESOLVE_NAME_LEN],
}

impl ResolveEvent {
    /// `flags` bit: the list had more IPv4/IPv6 entries than `addrs` holds.
    pub const FLAG_ADDRS_TRUNCATED: u8 = 1;
    /// `flags` bit: the name was longer than `name` holds.
    pub const FLAG_NAME_TRUNCATED: u8 = 2;
}

/// Slots of the per-CPU `RESOLVE_STATS` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveStat {
    /// getaddrinfo calls seen (entry uprobe ran).
    Calls = 0,
    /// getaddrinfo returns with a nonzero error code (nothing reported).
    Failed = 1,
    /// Events delivered to the ring buffer.
    Events = 2,
    /// Events lost because the ring buffer was full.
    RingbufDrops = 3,
    /// Calls not tracked because the pending-call map refused the entry.
    PendingDrops = 4,
    /// Successful calls whose name or result list head could not be read
    /// (nothing reported).
    ReadErrors = 5,
    /// Returns with no matching entry: the probe attached mid-call, or the
    /// LRU pending-call map evicted the entry (more calls in flight than it
    /// holds). Nothing reported.
    Unmatched = 6,
    /// Events whose address list is incomplete: more addresses than
    /// `RESOLVE_MAX_ADDRS` (or list entries than the walk's bound), or an
    /// unreadable list entry.
    AddrsTruncated = 7,
}

impl ResolveStat {
    /// Length of the counter array.
    pub const COUNT: u32 = 8;

    /// Every counter, in slot order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::Calls,
        Self::Failed,
        Self::Events,
        Self::RingbufDrops,
        Self::PendingDrops,
        Self::ReadErrors,
        Self::Unmatched,
        Self::AddrsTruncated,
    ];
}

/// What the entry uprobe saves for the return uprobe, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResolvePending {
    /// `const char *node` (may be null: then nothing is reported).
    pub node: u64,
    /// `struct addrinfo **res`.
    pub res: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, integers and byte arrays laid out without
    // implicit padding (explicit `pad` field); any bit pattern is valid.
    unsafe impl aya::Pod for super::ResolveEvent {}
    // SAFETY: as above (two u64).
    unsafe impl aya::Pod for super::ResolvePending {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // 8 + 4 + 4 + 1 + 1 + 2 + 4 + 16 + 16*16 + 256
        assert_eq!(core::mem::size_of::<ResolveEvent>(), 552);
        assert_eq!(core::mem::size_of::<ResolvePending>(), 16);
        assert_eq!(ResolveStat::ALL.len(), ResolveStat::COUNT as usize);
        for (i, stat) in ResolveStat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i);
        }
    }
}

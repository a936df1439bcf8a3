//! Hostnames for `netray conns`: uprobes on libc's `getaddrinfo` (entry and
//! return) on every libc the system has, and an address → name cache.
//!
//! The return uprobe walks the whole `struct addrinfo` result list (IPv4 and
//! IPv6) and sends one event per successful call through its own ring buffer;
//! [`ResolveProbe::drain`] moves the events into a [`HostnameCache`]. The event
//! is committed before getaddrinfo returns to its caller, so draining right
//! before handling a batch of connection events never misses the lookup that
//! preceded a connect().
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use netray::conns::resolve::{HostnameCache, ResolveProbe};
//! netray::loader::raise_memlock_limit();
//! let mut ebpf = aya::Ebpf::load(netray::objects::CONNS)?;
//! let mut probe = ResolveProbe::attach(&mut ebpf)?;
//! eprintln!("hostnames from getaddrinfo in {:?}", probe.libraries());
//! let cache = HostnameCache::default();
//! // Before each batch of connection events:
//! probe.drain(&cache);
//! let host = cache.lookup(Some(1234), "192.0.2.1".parse()?);
//! # let _ = host;
//! # Ok(())
//! # }
//! ```
//!
//! The ring buffer's fd ([`ResolveProbe`] implements `AsRawFd`) is readable
//! while results are pending, for waiting with tokio's `AsyncFd`. Libraries
//! of containers started later are picked up by [`ResolveProbe::attach_new`].

mod cache;
pub mod libs;

use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{UProbe, uprobe::UProbeScope},
};
use netray_common::resolve::{RESOLVE_NAME_LEN, ResolveEvent, ResolveStat};

pub use cache::HostnameCache;
pub use libs::{LibcFile, find_libcs};

/// Name of the entry uprobe program in the `netray-conns` object.
pub const ENTRY_PROGRAM: &str = "conns_getaddrinfo_entry";
/// Name of the return uprobe program in the `netray-conns` object.
pub const RETURN_PROGRAM: &str = "conns_getaddrinfo_return";
/// Ring buffer map of [`ResolveEvent`]s.
pub const EVENTS_MAP: &str = "RESOLVE_EVENTS";
/// Per-CPU counter array indexed by [`ResolveStat`].
pub const STATS_MAP: &str = "RESOLVE_STATS";

/// The libc symbol the uprobes attach to.
const SYMBOL: &str = "getaddrinfo";

/// Counters of the getaddrinfo uprobes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResolveStats {
    /// getaddrinfo calls seen.
    pub calls: u64,
    /// Calls that returned an error (nothing to report).
    pub failed: u64,
    /// Results delivered to userspace.
    pub events: u64,
    /// Results lost: the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Calls not tracked: the pending-call map refused the entry.
    pub pending_drops: u64,
    /// Successful calls whose name or address list could not be read.
    pub read_errors: u64,
    /// Returns without a matching entry: the probe attached mid-call, or the
    /// pending-call map (LRU, 16384 threads) evicted it.
    pub unmatched: u64,
    /// Results delivered with an incomplete address list (more addresses than
    /// an event holds, or an unreadable list entry).
    pub addrs_truncated: u64,
}

impl ResolveStats {
    /// Calls whose result userspace never saw: ring buffer full, pending
    /// entry refused or evicted, unreadable result. (Unmatched returns also
    /// include failed calls that were in flight when the probe attached.)
    pub fn lost(&self) -> u64 {
        self.ringbuf_drops + self.pending_drops + self.read_errors + self.unmatched
    }
}

/// A decoded getaddrinfo result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Process that called getaddrinfo (initial pid namespace).
    pub tgid: u32,
    /// The name it looked up, as passed.
    pub name: String,
    /// The addresses returned, deduplicated, in list order.
    pub addrs: Vec<IpAddr>,
    /// The list had more addresses than the event holds.
    pub addrs_truncated: bool,
}

impl Resolution {
    /// Decodes a ring buffer record; `None` if it is too short or carries
    /// no usable name (numeric lookups such as `getaddrinfo("10.0.0.1")`
    /// name nothing and are skipped too).
    pub fn decode(record: &[u8]) -> Option<Self> {
        if record.len() < size_of::<ResolveEvent>() {
            return None;
        }
        // SAFETY: the record holds at least size_of::<ResolveEvent>() bytes,
        // read unaligned; ResolveEvent is plain data valid for any bits.
        let event: ResolveEvent =
            unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<ResolveEvent>()) };
        let name_len = usize::from(event.name_len).min(RESOLVE_NAME_LEN);
        let raw = event.name.get(..name_len)?;
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(raw)
            .trim_end_matches('.')
            .to_string();
        if name.is_empty() || name.parse::<IpAddr>().is_ok() {
            return None;
        }
        let count = usize::from(event.addr_count).min(event.addrs.len());
        let mut addrs: Vec<IpAddr> = Vec::with_capacity(count);
        for (family, bytes) in event.families.iter().zip(event.addrs.iter()).take(count) {
            if let Some(addr) = cache::addr_from_bytes(*family, *bytes)
                && !addrs.contains(&addr)
            {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return None;
        }
        Some(Self {
            tgid: event.tgid,
            name,
            addrs,
            addrs_truncated: event.flags & ResolveEvent::FLAG_ADDRS_TRUNCATED != 0,
        })
    }
}

/// The attached getaddrinfo uprobes and their ring buffer.
///
/// Dropping it does not detach the programs: they belong to the [`Ebpf`]
/// they were loaded from and are detached when it is dropped.
pub struct ResolveProbe {
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    libraries: Vec<PathBuf>,
    skipped: Vec<(PathBuf, String)>,
    /// (dev, inode) of every library tried, attached or not.
    tried: HashSet<(u64, u64)>,
}

impl std::fmt::Debug for ResolveProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveProbe")
            .field("libraries", &self.libraries)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl ResolveProbe {
    /// Attaches the getaddrinfo entry/return uprobes (programs in the
    /// netray-conns object) to every libc found on the system (see
    /// [`find_libcs`]). Fails only if no libc could be attached; libraries
    /// that failed are listed by [`Self::skipped`].
    pub fn attach(ebpf: &mut Ebpf) -> anyhow::Result<ResolveProbe> {
        let found = find_libcs();
        if found.is_empty() {
            return Err(anyhow!(
                "no dynamic libc found (in /proc/*/maps or the ld.so cache): hostnames \
                 cannot be traced"
            ));
        }
        Self::attach_found(ebpf, found)
    }

    /// Like [`Self::attach`], to the given library files only.
    pub fn attach_to<'a>(
        ebpf: &mut Ebpf,
        libraries: impl IntoIterator<Item = &'a Path>,
    ) -> anyhow::Result<ResolveProbe> {
        let mut found = Vec::new();
        for path in libraries {
            let meta =
                std::fs::metadata(path).with_context(|| format!("library {}", path.display()))?;
            found.push(LibcFile {
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                found_in: "caller".to_string(),
            });
        }
        Self::attach_found(ebpf, found)
    }

    fn attach_found(ebpf: &mut Ebpf, found: Vec<LibcFile>) -> anyhow::Result<ResolveProbe> {
        for name in [ENTRY_PROGRAM, RETURN_PROGRAM] {
            let prog: &mut UProbe = program(ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading the {name} uprobe program"))?;
        }
        let events: RingBuf<MapData> = crate::loader::take_map(ebpf, EVENTS_MAP)?;
        let stats: PerCpuArray<MapData, u64> = crate::loader::take_map(ebpf, STATS_MAP)?;
        let mut probe = ResolveProbe {
            events,
            stats,
            libraries: Vec::new(),
            skipped: Vec::new(),
            tried: HashSet::new(),
        };
        probe.attach_files(ebpf, found);
        if probe.libraries.is_empty() {
            let why: Vec<String> = probe
                .skipped
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect();
            return Err(anyhow!(
                "attaching the getaddrinfo uprobes failed on every libc: {}",
                if why.is_empty() {
                    "no library given".to_string()
                } else {
                    why.join("; ")
                }
            ));
        }
        Ok(probe)
    }

    /// Looks for libcs again (e.g. of containers started since) and attaches
    /// to the ones not tried yet; returns those newly attached. `ebpf` must be
    /// the object [`Self::attach`] was given. Costs a read of every
    /// `/proc/PID/maps`: call it every few seconds at most.
    pub fn attach_new(&mut self, ebpf: &mut Ebpf) -> Vec<PathBuf> {
        let before = self.libraries.len();
        self.attach_files(ebpf, find_libcs());
        self.libraries[before..].to_vec()
    }

    fn attach_files(&mut self, ebpf: &mut Ebpf, found: Vec<LibcFile>) {
        for lib in found {
            if !self.tried.insert((lib.dev, lib.ino)) {
                continue;
            }
            match attach_one(ebpf, &lib.path) {
                Ok(()) => self.libraries.push(lib.path),
                Err(e) => self.skipped.push((lib.path, format!("{e:#}"))),
            }
        }
    }

    /// Non-blocking: moves every pending getaddrinfo result from its ring
    /// buffer into the cache; returns how many.
    pub fn drain(&mut self, cache: &HostnameCache) -> usize {
        self.drain_with(|r| cache.insert(r.tgid, &r.name, &r.addrs))
    }

    /// Non-blocking: hands every pending getaddrinfo result to `f`; returns
    /// how many.
    pub fn drain_with(&mut self, mut f: impl FnMut(Resolution)) -> usize {
        let mut count = 0;
        while let Some(record) = self.events.next() {
            if let Some(resolution) = Resolution::decode(&record) {
                count += 1;
                f(resolution);
            }
        }
        count
    }

    /// getaddrinfo results the kernel could not deliver (ring buffer full,
    /// and the rarer causes counted by [`ResolveStats::lost`]).
    pub fn lost(&self) -> u64 {
        self.stats().lost()
    }

    /// All counters of the uprobes.
    pub fn stats(&self) -> ResolveStats {
        let get = |stat: ResolveStat| -> u64 {
            self.stats
                .get(&(stat as u32), 0)
                .map(|values| values.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        ResolveStats {
            calls: get(ResolveStat::Calls),
            failed: get(ResolveStat::Failed),
            events: get(ResolveStat::Events),
            ringbuf_drops: get(ResolveStat::RingbufDrops),
            pending_drops: get(ResolveStat::PendingDrops),
            read_errors: get(ResolveStat::ReadErrors),
            unmatched: get(ResolveStat::Unmatched),
            addrs_truncated: get(ResolveStat::AddrsTruncated),
        }
    }

    /// The libc files the uprobes are attached to (for a startup message).
    pub fn libraries(&self) -> &[PathBuf] {
        &self.libraries
    }

    /// Libraries found but not attached, with the reason.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The ring buffer, e.g. to register with tokio's `AsyncFd` (its fd is
    /// readable when results are pending).
    pub fn ring_buffer(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }
}

impl AsFd for ResolveProbe {
    /// The ring buffer's fd: readable (epoll) when results are pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl AsRawFd for ResolveProbe {
    /// The ring buffer's fd: readable (epoll) when results are pending.
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the netray-conns object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a uprobe"))
}

/// Attaches both programs to `path`, or neither: an entry probe without
/// its return probe would only fill the pending-call map.
fn attach_one(ebpf: &mut Ebpf, path: &Path) -> anyhow::Result<()> {
    let entry = program(ebpf, ENTRY_PROGRAM)?
        .attach(SYMBOL, path, UProbeScope::AllProcesses)
        .with_context(|| format!("attaching {ENTRY_PROGRAM} to {}:{SYMBOL}", path.display()))?;
    let attached = program(ebpf, RETURN_PROGRAM).and_then(|prog| {
        prog.attach(SYMBOL, path, UProbeScope::AllProcesses)
            .with_context(|| format!("attaching {RETURN_PROGRAM} to {}:{SYMBOL}", path.display()))
    });
    if let Err(e) = attached {
        if let Ok(prog) = program(ebpf, ENTRY_PROGRAM) {
            let _ = prog.detach(entry);
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netray_common::resolve::{FAMILY_IPV4, FAMILY_IPV6, RESOLVE_MAX_ADDRS};

    use super::*;

    fn event(name: &str, addrs: &[(u8, [u8; 16])]) -> ResolveEvent {
        let mut e = ResolveEvent {
            timestamp_ns: 1,
            tgid: 42,
            tid: 43,
            addr_count: addrs.len() as u8,
            flags: 0,
            name_len: name.len() as u16,
            pad: [0; 4],
            families: [0; RESOLVE_MAX_ADDRS],
            addrs: [[0; 16]; RESOLVE_MAX_ADDRS],
            name: [0; RESOLVE_NAME_LEN],
        };
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        for (i, (family, bytes)) in addrs.iter().enumerate() {
            e.families[i] = *family;
            e.addrs[i] = *bytes;
        }
        e
    }

    fn bytes(e: &ResolveEvent) -> Vec<u8> {
        // SAFETY: ResolveEvent is plain data without padding.
        unsafe {
            std::slice::from_raw_parts((e as *const ResolveEvent).cast::<u8>(), size_of_val(e))
        }
        .to_vec()
    }

    fn v4(a: [u8; 4]) -> (u8, [u8; 16]) {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        (FAMILY_IPV4, b)
    }

    #[test]
    fn shareable_across_threads() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<ResolveProbe>();
        sync::<HostnameCache>();
    }

    #[test]
    fn decodes_and_dedupes() {
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let e = event(
            "example.test.",
            &[
                v4([192, 0, 2, 1]),
                v4([192, 0, 2, 1]),
                (FAMILY_IPV6, v6.octets()),
                v4([192, 0, 2, 1]),
                (99, [7; 16]),
            ],
        );
        let r = Resolution::decode(&bytes(&e)).unwrap();
        assert_eq!(r.tgid, 42);
        assert_eq!(r.name, "example.test");
        assert_eq!(r.addrs, [IpAddr::from([192, 0, 2, 1]), IpAddr::V6(v6)]);
        assert!(!r.addrs_truncated);
    }

    #[test]
    fn rejects_bad_records() {
        let good = bytes(&event("a.test", &[v4([10, 0, 0, 1])]));
        assert!(Resolution::decode(&good).is_some());
        for len in 0..good.len() {
            assert!(Resolution::decode(&good[..len]).is_none());
        }
        // Numeric, empty or address-less lookups name nothing.
        assert!(Resolution::decode(&bytes(&event("10.0.0.1", &[v4([10, 0, 0, 1])]))).is_none());
        assert!(Resolution::decode(&bytes(&event("::1", &[v4([10, 0, 0, 1])]))).is_none());
        assert!(Resolution::decode(&bytes(&event("", &[v4([10, 0, 0, 1])]))).is_none());
        assert!(Resolution::decode(&bytes(&event("a.test", &[]))).is_none());
        // Out-of-range lengths are clamped, not trusted.
        let mut e = event("b.test", &[v4([10, 0, 0, 2])]);
        e.name_len = u16::MAX;
        e.addr_count = u8::MAX;
        let r = Resolution::decode(&bytes(&e)).unwrap();
        assert_eq!(r.name, "b.test");
        assert_eq!(r.addrs, [IpAddr::from([10, 0, 0, 2])]);
        // Invalid UTF-8 does not panic.
        let mut e = event("c.test", &[v4([10, 0, 0, 3])]);
        e.name[0] = 0xff;
        assert!(Resolution::decode(&bytes(&e)).is_some());
    }
}

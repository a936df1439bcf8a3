//! The address → name cache: what each process resolved, with expiry.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Entries kept at most (per process and address, plus one per address);
/// past it, expired entries are purged, then the oldest ones.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Clone, Debug)]
struct Entry {
    name: std::sync::Arc<str>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// (tgid, address) → the name that process resolved to the address.
    by_process: HashMap<(u32, IpAddr), Entry>,
    /// address → the most recent name any process resolved to it.
    by_addr: HashMap<IpAddr, Entry>,
}

/// Address → hostname cache fed by getaddrinfo results. Thread-safe (a
/// mutex inside); entries expire `ttl` after their last insertion.
///
/// Lookups prefer the name the connecting process itself resolved and fall
/// back to the most recent name any process resolved to the address.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are stored and looked up as
/// their IPv4 address, so a dual-stack socket connecting to a mapped address
/// finds the A record's name.
#[derive(Debug)]
pub struct HostnameCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for HostnameCache {
    /// A cache with [`HostnameCache::DEFAULT_TTL`].
    fn default() -> Self {
        Self::new(Self::DEFAULT_TTL)
    }
}

impl HostnameCache {
    /// A sensible expiry: a connection opened more than this long after its
    /// lookup is rare, and DNS TTLs are mostly shorter.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, DEFAULT_CAPACITY)
    }

    /// An empty cache whose entries live `ttl`, holding at most about
    /// `capacity` entries per index (at least 1).
    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How long entries live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every
        // mutation is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Name `tgid` resolved to `addr` (the process's own lookup preferred,
    /// else any process's recent one).
    pub fn lookup(&self, tgid: Option<u32>, addr: IpAddr) -> Option<String> {
        self.lookup_at(tgid, addr, Instant::now())
    }

    /// [`Self::lookup`] as of `now` (for tests and replay).
    pub fn lookup_at(&self, tgid: Option<u32>, addr: IpAddr, now: Instant) -> Option<String> {
        let addr = canonical(addr);
        let inner = self.lock();
        let own = tgid.and_then(|tgid| inner.by_process.get(&(tgid, addr)));
        own.filter(|e| e.expires > now)
            .or_else(|| inner.by_addr.get(&addr).filter(|e| e.expires > now))
            .map(|e| e.name.to_string())
    }

    /// Name `tgid` itself resolved to `addr`, without the fallback to other
    /// processes' lookups.
    pub fn lookup_own(&self, tgid: u32, addr: IpAddr) -> Option<String> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .by_process
            .get(&(tgid, canonical(addr)))
            .filter(|e| e.expires > now)
            .map(|e| e.name.to_string())
    }

    /// Records that `tgid` resolved `name` to `addrs` (duplicates are fine).
    pub fn insert(&self, tgid: u32, name: &str, addrs: &[IpAddr]) {
        self.insert_at(tgid, name, addrs, Instant::now());
    }

    /// [`Self::insert`] as of `now` (for tests and replay).
    pub fn insert_at(&self, tgid: u32, name: &str, addrs: &[IpAddr], now: Instant) {
        if name.is_empty() || addrs.is_empty() {
            return;
        }
        let entry = Entry {
            name: name.into(),
            expires: now + self.ttl,
        };
        let mut inner = self.lock();
        for &addr in addrs {
            let addr = canonical(addr);
            inner.by_process.insert((tgid, addr), entry.clone());
            inner.by_addr.insert(addr, entry.clone());
        }
        if inner.by_process.len() > self.capacity || inner.by_addr.len() > self.capacity {
            evict(&mut inner, now, self.capacity);
        }
    }

    /// Drops every expired entry; returns how many entries remain.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.by_process.retain(|_, e| e.expires > now);
        inner.by_addr.retain(|_, e| e.expires > now);
        inner.by_process.len()
    }

    /// Forgets the per-process entries of `tgid` (e.g. when it exits); the
    /// any-process fallback keeps its names until they expire.
    pub fn forget_process(&self, tgid: u32) {
        self.lock().by_process.retain(|(t, _), _| *t != tgid);
    }

    /// Number of (process, address) entries, expired ones included until
    /// they are purged.
    pub fn len(&self) -> usize {
        self.lock().by_process.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// IPv4-mapped IPv6 addresses as IPv4; everything else unchanged.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Purges expired entries, then, while an index is still over `capacity`,
/// removes the entries closest to expiry (the oldest) down to 7/8 of it.
fn evict(inner: &mut Inner, now: Instant, capacity: usize) {
    inner.by_process.retain(|_, e| e.expires > now);
    inner.by_addr.retain(|_, e| e.expires > now);
    let target = capacity - capacity / 8;
    trim_oldest(&mut inner.by_process, capacity, target);
    trim_oldest(&mut inner.by_addr, capacity, target);
}

fn trim_oldest<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Entry>,
    capacity: usize,
    target: usize,
) {
    if map.len() <= capacity {
        return;
    }
    let mut expiries: Vec<Instant> = map.values().map(|e| e.expires).collect();
    let excess = map.len() - target;
    let (_, cutoff, _) = expiries.select_nth_unstable(excess - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    map.retain(|_, e| {
        if removed < excess && e.expires <= cutoff {
            removed += 1;
            false
        } else {
            true
        }
    });
}

/// `Ipv6Addr` helper kept for symmetry with the kernel side's layout: the
/// 16 raw bytes of an event address of `family` 4 or 6.
pub(crate) fn addr_from_bytes(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        netray_common::resolve::FAMILY_IPV4 => {
            Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }
        netray_common::resolve::FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_lookup_preferred_over_other_processes() {
        let cache = HostnameCache::new(Duration::from_secs(60));
        cache.insert(1, "one.example", &[ip("192.0.2.1")]);
        cache.insert(2, "two.example", &[ip("192.0.2.1")]);
        assert_eq!(
            cache.lookup(Some(1), ip("192.0.2.1")).as_deref(),
            Some("one.example")
        );
        assert_eq!(
            cache.lookup(Some(2), ip("192.0.2.1")).as_deref(),
            Some("two.example")
        );
        // Unknown process or none: the most recent lookup of anyone.
        assert_eq!(
            cache.lookup(Some(3), ip("192.0.2.1")).as_deref(),
            Some("two.example")
        );
        assert_eq!(
            cache.lookup(None, ip("192.0.2.1")).as_deref(),
            Some("two.example")
        );
        assert_eq!(cache.lookup_own(3, ip("192.0.2.1")), None);
        assert_eq!(cache.lookup(Some(1), ip("192.0.2.2")), None);
    }

    #[test]
    fn entries_expire() {
        let cache = HostnameCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        cache.insert_at(1, "a.example", &[ip("2001:db8::1")], t0);
        let later = t0 + Duration::from_secs(9);
        assert_eq!(
            cache
                .lookup_at(Some(1), ip("2001:db8::1"), later)
                .as_deref(),
            Some("a.example")
        );
        let expired = t0 + Duration::from_secs(10);
        assert_eq!(cache.lookup_at(Some(1), ip("2001:db8::1"), expired), None);
        assert_eq!(cache.lookup_at(None, ip("2001:db8::1"), expired), None);
        // A fresh lookup renews the entry.
        cache.insert_at(1, "a.example", &[ip("2001:db8::1")], expired);
        assert!(cache.lookup_at(None, ip("2001:db8::1"), expired).is_some());
    }

    #[test]
    fn own_expired_falls_back_to_fresh_other() {
        let cache = HostnameCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        cache.insert_at(1, "old.example", &[ip("192.0.2.9")], t0);
        cache.insert_at(
            2,
            "new.example",
            &[ip("192.0.2.9")],
            t0 + Duration::from_secs(5),
        );
        let at = t0 + Duration::from_secs(12);
        assert_eq!(
            cache.lookup_at(Some(1), ip("192.0.2.9"), at).as_deref(),
            Some("new.example")
        );
    }

    #[test]
    fn duplicates_and_mapped_addresses() {
        let cache = HostnameCache::new(Duration::from_secs(60));
        let v4 = ip("198.51.100.7");
        cache.insert(5, "dup.example", &[v4, v4, v4, ip("2001:db8::7"), v4]);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.lookup(Some(5), ip("::ffff:198.51.100.7")).as_deref(),
            Some("dup.example")
        );
        cache.insert(6, "mapped.example", &[ip("::ffff:203.0.113.1")]);
        assert_eq!(
            cache.lookup(Some(6), ip("203.0.113.1")).as_deref(),
            Some("mapped.example")
        );
        // Nothing inserted for an empty name or list.
        cache.insert(7, "", &[ip("192.0.2.77")]);
        cache.insert(7, "x.example", &[]);
        assert_eq!(cache.lookup(None, ip("192.0.2.77")), None);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn capacity_is_bounded() {
        let cache = HostnameCache::with_capacity(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            cache.insert_at(
                i,
                "many.example",
                &[addr],
                t0 + Duration::from_millis(i.into()),
            );
        }
        assert!(cache.len() <= 100, "{}", cache.len());
        // The newest survive.
        assert!(
            cache
                .lookup_at(Some(999), IpAddr::from(999u32.to_be_bytes()), t0)
                .is_some()
        );
    }

    #[test]
    fn forget_process_keeps_fallback() {
        let cache = HostnameCache::new(Duration::from_secs(60));
        cache.insert(9, "gone.example", &[ip("192.0.2.50")]);
        cache.forget_process(9);
        assert_eq!(cache.lookup_own(9, ip("192.0.2.50")), None);
        assert_eq!(
            cache.lookup(Some(9), ip("192.0.2.50")).as_deref(),
            Some("gone.example")
        );
    }

    #[test]
    fn event_addresses() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(addr_from_bytes(4, b), Some(ip("10.0.0.1")));
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_from_bytes(6, v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(addr_from_bytes(0, b), None);
    }
}

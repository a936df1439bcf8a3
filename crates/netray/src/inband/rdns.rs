//! Reverse DNS for hop addresses, with a cache shared by every trace.
//!
//! Lookups run in the background and never hold a trace back: a trace shows
//! whatever names are known when it publishes, and later traces through the
//! same routers get them from the cache.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{TokioResolver, proto::rr::RData};

use super::model::Hop;

/// How long a name is kept.
const CACHE_TTL: Duration = Duration::from_secs(600);

/// How long a failed lookup (no PTR, timeout, no server) is kept: short, so
/// a transient resolver problem does not hide names for long.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Entry {
    Pending,
    Done(Option<String>, Instant),
}

/// Reverse DNS with a shared cache.
#[derive(Clone)]
pub struct ReverseDns {
    resolver: Option<TokioResolver>,
    cache: Arc<Mutex<HashMap<IpAddr, Entry>>>,
}

impl ReverseDns {
    /// Uses the system resolver configuration (`/etc/resolv.conf`), with a
    /// short timeout so unreachable servers cost little. Without a usable
    /// configuration, names stay unknown.
    pub fn from_system() -> Self {
        let resolver = TokioResolver::builder_tokio().ok().and_then(|mut builder| {
            let options = builder.options_mut();
            options.timeout = Duration::from_secs(2);
            options.attempts = 1;
            builder.build().ok()
        });
        Self {
            resolver,
            cache: Arc::default(),
        }
    }

    /// No lookups at all: every name stays unknown (`netray trace -n`).
    pub fn disabled() -> Self {
        Self {
            resolver: None,
            cache: Arc::default(),
        }
    }

    /// Whether a lookup of `addr` was started and has not finished yet.
    pub fn is_pending(&self, addr: IpAddr) -> bool {
        self.cache
            .lock()
            .is_ok_and(|cache| matches!(cache.get(&addr), Some(Entry::Pending)))
    }

    /// Starts a lookup of `addr` unless it is cached or under way.
    pub fn lookup_in_background(&self, addr: IpAddr) {
        let Some(resolver) = self.resolver.clone() else {
            return;
        };
        {
            let Ok(mut cache) = self.cache.lock() else {
                return;
            };
            match cache.get(&addr) {
                Some(Entry::Pending) => return,
                Some(Entry::Done(name, at)) => {
                    let ttl = if name.is_some() {
                        CACHE_TTL
                    } else {
                        NEGATIVE_TTL
                    };
                    if at.elapsed() < ttl {
                        return;
                    }
                }
                _ => {}
            }
            cache.insert(addr, Entry::Pending);
        }
        let cache = Arc::clone(&self.cache);
        tokio::spawn(async move {
            let name = resolver.reverse_lookup(addr).await.ok().and_then(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .find_map(|record| match &record.data {
                        RData::PTR(ptr) => Some(ptr.0.to_utf8().trim_end_matches('.').to_string()),
                        _ => None,
                    })
            });
            if let Ok(mut cache) = cache.lock() {
                cache.insert(addr, Entry::Done(name, Instant::now()));
            }
        });
    }

    /// The cached name of `addr`, if resolved.
    pub fn cached(&self, addr: IpAddr) -> Option<String> {
        match self.cache.lock().ok()?.get(&addr)? {
            Entry::Done(name, _) => name.clone(),
            Entry::Pending => None,
        }
    }

    /// Fills `hostname` of every hop whose address has a cached name.
    pub fn fill_known(&self, hops: &mut [Hop]) {
        for hop in hops {
            if hop.hostname.is_none() {
                hop.hostname = hop.addr.and_then(|addr| self.cached(addr));
            }
        }
    }
}

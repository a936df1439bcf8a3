//! Admission control: for new traces a global cap, a per-client cap on
//! concurrent traces and a per-client token bucket; for connections a global
//! cap and a per-client cap on open connections (IPv6 clients: per /64).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use super::config::LimitsConfig;

/// Above this many tracked clients, idle entries are swept (bounded memory
/// under address-spraying clients).
const SWEEP_ABOVE: usize = 1024;

/// Why a new trace was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The global cap on concurrent traces is reached.
    Global { limit: u32 },
    /// This client already runs its share of concurrent traces.
    PerClient { limit: u32 },
    /// This client started too many traces recently.
    Rate {
        per_minute: u32,
        retry_after: Duration,
    },
}

impl Refusal {
    /// Label for metrics and the JSON `reason`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Global { .. } => "global",
            Self::PerClient { .. } => "per_client",
            Self::Rate { .. } => "rate",
        }
    }

    /// Human-readable explanation for the response body.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Global { limit } => {
                format!("server busy: {limit} traces are running (global limit), try again shortly")
            }
            Self::PerClient { limit } => format!(
                "too many concurrent traces from your address (per-client limit {limit}), \
                 wait for one to finish"
            ),
            Self::Rate {
                per_minute,
                retry_after,
            } => format!(
                "rate limit: at most {per_minute} new traces per minute per client, \
                 retry in {} s",
                retry_secs(*retry_after)
            ),
        }
    }

    /// `Retry-After` seconds, for the rate limit.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Rate { retry_after, .. } => Some(retry_secs(*retry_after)),
            _ => None,
        }
    }
}

fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The key limits are kept by: IPv4 addresses as such (v4-mapped IPv6 too),
/// IPv6 addresses by /64, since one host usually owns a whole /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !(u128::MAX >> 64);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[derive(Debug)]
struct Client {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct State {
    active: u32,
    clients: HashMap<IpAddr, Client>,
}

/// Shared admission state.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: LimitsConfig,
    state: Mutex<State>,
}

/// A running trace's share of the limits; released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Arc<Limiter>,
    key: IpAddr,
}

impl Limiter {
    pub(crate) fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State {
                active: 0,
                clients: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (plain counters).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capacity(&self) -> f64 {
        f64::from(self.config.rate_limit_per_minute)
    }

    fn refill_per_sec(&self) -> f64 {
        f64::from(self.config.rate_limit_per_minute) / 60.0
    }

    /// Admits a new trace for client `ip`, or says why not. Checks the caps
    /// first so that refused attempts do not also eat rate tokens.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        self.try_acquire_at(ip, Instant::now())
    }

    pub(crate) fn try_acquire_at(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        let key = client_key(ip);
        let capacity = self.capacity();
        let rate = self.refill_per_sec();
        let mut state = self.lock();
        if state.clients.len() > SWEEP_ABOVE {
            state.clients.retain(|_, c| {
                let tokens =
                    c.tokens + now.saturating_duration_since(c.refilled).as_secs_f64() * rate;
                c.active > 0 || tokens < capacity
            });
        }
        if state.active >= self.config.max_traces {
            return Err(Refusal::Global {
                limit: self.config.max_traces,
            });
        }
        let client = state.clients.entry(key).or_insert(Client {
            active: 0,
            tokens: capacity,
            refilled: now,
        });
        if client.active >= self.config.max_traces_per_client {
            return Err(Refusal::PerClient {
                limit: self.config.max_traces_per_client,
            });
        }
        let elapsed = now.saturating_duration_since(client.refilled).as_secs_f64();
        client.tokens = (client.tokens + elapsed * rate).min(capacity);
        client.refilled = now;
        if client.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - client.tokens) / rate);
            return Err(Refusal::Rate {
                per_minute: self.config.rate_limit_per_minute,
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        client.tokens -= 1.0;
        client.active += 1;
        state.active += 1;
        Ok(Permit {
            limiter: self.clone(),
            key,
        })
    }

    /// Traces currently admitted (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn active(&self) -> u32 {
        self.lock().active
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.active = state.active.saturating_sub(1);
        if let Some(client) = state.clients.get_mut(&self.key) {
            client.active = client.active.saturating_sub(1);
        }
    }
}

/// File descriptors per connection: the socket, and the duplicate the
/// tracer keeps for TCP_INFO.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else (listeners, eBPF maps and links,
/// raw sockets, resolver, ACME cache files).
const FDS_RESERVED: u64 = 256;

/// Raises RLIMIT_NOFILE so `max_connections` connections fit (the hard limit
/// too when allowed: root, CAP_SYS_RESOURCE); returns how many connections
/// really fit, lower than asked (with a warning) when the limit cannot be
/// raised enough. Without this the default soft limit (1024) would make
/// accept fail long before the connection caps apply.
pub(crate) fn raise_fd_limit(max_connections: usize) -> usize {
    let wanted = (max_connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(FDS_RESERVED);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
                limit = soft;
            }
        }
    }
    let fit = limit.rlim_cur.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    if fit < max_connections as u64 {
        let fit = usize::try_from(fit).unwrap_or(usize::MAX).max(1);
        tracing::warn!(
            "RLIMIT_NOFILE is {}: --max-connections lowered from {max_connections} to {fit}",
            limit.rlim_cur
        );
        return fit;
    }
    max_connections
}

/// Why a new connection was refused (closed at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnRefusal {
    /// The server holds its maximum of open connections.
    Global,
    /// This client (address, IPv6 /64) holds its maximum of open connections.
    PerClient,
}

impl ConnRefusal {
    /// The `reason` label in metrics.
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerClient => "per_client",
        }
    }
}

/// Open connections, in total and per client key. Entries go away with the
/// client's last connection, so memory is bounded by the global cap.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    max_total: usize,
    max_per_client: u32,
    state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    total: usize,
    per_client: HashMap<IpAddr, u32>,
}

/// One open connection's share of the connection limits; released on drop.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    pub(crate) fn new(max_total: usize, max_per_client: u32) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            state: Mutex::new(ConnState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `peer`, or says why not. The per-client
    /// cap is checked first: a client at its cap is told so even when the
    /// server is full too.
    pub(crate) fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Result<ConnPermit, ConnRefusal> {
        let key = client_key(peer);
        let mut state = self.lock();
        let open = state.per_client.get(&key).copied().unwrap_or(0);
        if open >= self.max_per_client {
            return Err(ConnRefusal::PerClient);
        }
        if state.total >= self.max_total {
            return Err(ConnRefusal::Global);
        }
        state.total += 1;
        *state.per_client.entry(key).or_insert(0) += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// Open connections in total.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(open) = state.per_client.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.per_client.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_per_client_and_global() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a_same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let b_mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a_same_64).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), ConnRefusal::PerClient);
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b_mapped).unwrap_err(), ConnRefusal::Global);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b2 = l.try_acquire(b_mapped).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), ConnRefusal::PerClient);
    }

    #[test]
    fn connection_entries_go_away_with_the_last_connection() {
        let l = ConnectionLimiter::new(10, 1);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        drop(l.try_acquire(a).unwrap());
        assert!(l.lock().per_client.is_empty());
        assert_eq!(l.open(), 0);
        let _again = l.try_acquire(a).unwrap();
    }

    fn limiter(per_client: u32, global: u32, rate: u32) -> Arc<Limiter> {
        Limiter::new(LimitsConfig {
            max_traces_per_client: per_client,
            max_traces: global,
            rate_limit_per_minute: rate,
        })
    }

    #[test]
    fn per_client_and_global_caps_release_on_drop() {
        let l = limiter(2, 3, 1000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err().reason(), "per_client");
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err().reason(), "global");
        drop(p1);
        assert_eq!(l.active(), 2);
        let _p4 = l.try_acquire(a).unwrap();
    }

    #[test]
    fn token_bucket_refills() {
        let l = limiter(100, 100, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let t0 = Instant::now();
        drop(l.try_acquire_at(a, t0).unwrap());
        // Same /64: shares the bucket.
        drop(
            l.try_acquire_at("2001:db8::2".parse().unwrap(), t0)
                .unwrap(),
        );
        let refusal = l.try_acquire_at(a, t0).unwrap_err();
        assert_eq!(refusal.reason(), "rate");
        assert_eq!(refusal.retry_after_secs(), Some(30));
        // 2 per minute: one token after 30 s.
        drop(l.try_acquire_at(a, t0 + Duration::from_secs(30)).unwrap());
        assert!(l.try_acquire_at(a, t0 + Duration::from_secs(31)).is_err());
    }

    #[test]
    fn mapped_addresses_share_the_v4_key() {
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            client_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}

//! Admission control for new traces: a global cap, a per-client cap on
//! concurrent traces and a per-client token bucket.

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

#[cfg(test)]
mod tests {
    use super::*;

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

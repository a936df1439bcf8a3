//! The `netray conns` event loop: reads connection events, attaches
//! hostnames, filters, prints, keeps metrics and (with `--interval`) prints
//! live counters of open connections.

use std::{
    collections::HashMap,
    future::Future,
    io::Write as _,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;

use super::{
    ConnsConfig,
    attach::{KernelStats, Tracer},
    diag,
    events::{self, Clock, ConnRecord, EventKind, Role, Totals},
    metrics::{self, ConnsMetrics},
    output,
    resolve::HostnameCache,
};

/// How long a getaddrinfo answer is kept for matching connections.
const HOSTNAME_TTL: Duration = Duration::from_secs(600);

/// Everything the loop keeps between batches.
struct State {
    config: ConnsConfig,
    clock: Clock,
    cache: HostnameCache,
    /// Open connections (connect/accept seen) by cookie.
    live: HashMap<u64, ConnRecord>,
    /// Per-connection metrics, only kept with `--metrics` (they cost an
    /// allocation and a hash per event).
    metrics: Option<Arc<ConnsMetrics>>,
    /// Output of the current batch.
    out: String,
    printed: u64,
    /// Events read from the ring buffer.
    read: u64,
}

impl State {
    /// The name the connecting process itself looked up for the remote
    /// address. Another process's lookup of the same address would be a
    /// guess (seen: curl, which resolves "localhost" without getaddrinfo,
    /// labelled with a python process's lookup), so none is used.
    fn own_lookup(&self, rec: &ConnRecord) -> Option<String> {
        let pid = rec.process.as_ref()?.pid;
        self.cache.lookup_own(pid, rec.remote.ip())
    }

    fn handle(&mut self, mut rec: ConnRecord) {
        self.read += 1;
        match rec.kind {
            EventKind::Connect | EventKind::Accept => {
                if rec.role == Role::Connect {
                    rec.host = self.own_lookup(&rec);
                }
                self.live.insert(rec.cookie, rec.clone());
            }
            EventKind::Close => {
                if let Some(open) = self.live.remove(&rec.cookie) {
                    rec.host = open.host;
                } else if rec.role == Role::Connect {
                    rec.host = self.own_lookup(&rec);
                }
            }
            EventKind::Stats => {}
        }
        if let Some(metrics) = &self.metrics {
            metrics.record(&rec);
        }
        self.print(&rec);
    }

    fn print(&mut self, rec: &ConnRecord) {
        if !self.config.filter.matches(rec) {
            return;
        }
        if self.config.json {
            output::write_json(rec, &mut self.out);
        } else {
            self.out.push_str(&output::to_text(rec));
        }
        self.out.push('\n');
        self.printed += 1;
    }

    /// Writes the batch; `false` when stdout is gone (stop quietly).
    fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let mut stdout = std::io::stdout().lock();
        let ok = stdout.write_all(self.out.as_bytes()).is_ok() && stdout.flush().is_ok();
        self.out.clear();
        ok
    }

    /// `--interval`: live counters of every open connection, read over
    /// sock_diag in each connection's network namespace.
    fn live_stats(&mut self) {
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
        let mut groups: HashMap<Option<u64>, (Option<PathBuf>, Vec<u64>)> = HashMap::new();
        for rec in self.live.values() {
            let ns = rec
                .process
                .as_ref()
                .map(|p| PathBuf::from(format!("/proc/{}/ns/net", p.pid)))
                .and_then(|path| {
                    let ino = std::fs::metadata(&path).ok()?.ino();
                    Some((ino, path))
                });
            let (key, path) = match ns {
                Some((ino, _)) if Some(ino) == own => (own, None),
                Some((ino, path)) => (Some(ino), Some(path)),
                None => (own, None),
            };
            groups.entry(key).or_default().0 = path;
            groups.entry(key).or_default().1.push(rec.cookie);
        }
        let now = Clock::monotonic_now();
        for (_, (path, cookies)) in groups {
            let sock = match &path {
                Some(path) => diag::socket_in_netns(path),
                None => diag::socket(),
            };
            let Ok(snapshot) = sock.and_then(|s| diag::snapshot(&s)) else {
                continue;
            };
            for cookie in cookies {
                let Some(rec) = self.live.get(&cookie) else {
                    continue;
                };
                let key = (rec.local, rec.remote);
                let Some(info) = snapshot.get(&key) else {
                    continue;
                };
                let (base_acked, base_received) = rec.baseline.unwrap_or((1, 0));
                let (fin_acked, fin_received) = events::live_fins(info.state);
                let mut stats = rec.clone();
                stats.kind = EventKind::Stats;
                stats.ts_unix_ns = self.clock.unix_ns(now);
                stats.totals = Some(Totals {
                    bytes_sent: info
                        .bytes_acked
                        .saturating_sub(base_acked)
                        .saturating_sub(u64::from(fin_acked)),
                    bytes_received: info
                        .bytes_received
                        .saturating_sub(base_received)
                        .saturating_sub(u64::from(fin_received)),
                    duration: (rec.start_ns != 0 && now >= rec.start_ns)
                        .then(|| Duration::from_nanos(now - rec.start_ns)),
                    srtt_us: info.rtt_us,
                    retransmits: info.total_retrans,
                    state: Some(events::tcp_state_name(info.state)),
                    approximate: rec.baseline.is_none(),
                });
                self.print(&stats);
            }
        }
    }
}

fn update_losses(metrics: &ConnsMetrics, kernel: KernelStats, hostname_lost: u64, read: u64) {
    let l = &metrics.losses;
    l.ringbuf_full.store(kernel.ringbuf_full, Ordering::Relaxed);
    l.table_full.store(kernel.table_full, Ordering::Relaxed);
    l.hostname_lost.store(hostname_lost, Ordering::Relaxed);
    l.events.store(read, Ordering::Relaxed);
    l.kernel_skipped
        .store(kernel.kernel_skipped.unwrap_or(0), Ordering::Relaxed);
}

/// Runs until `shutdown` completes (or stdout closes).
pub async fn run(config: ConnsConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(ConnsMetrics::new());
    let listener = match config.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let mut tracer = Tracer::attach(true)?;
    for warning in &tracer.warnings {
        eprintln!("netray conns: warning: {warning}");
    }
    if let Some(listener) = listener {
        let addr = listener.local_addr()?;
        tokio::spawn(metrics::serve(listener, metrics.clone()));
        eprintln!("netray conns: metrics on http://{addr}/metrics");
    }
    let ring = tracer.events.take().context("ring buffer already taken")?;
    let mut ring = crate::loader::async_ring_buffer(ring, &tokio::runtime::Handle::current())?;
    eprintln!(
        "netray conns: tracing ({}); Ctrl-C to stop",
        tracer.hooks.join(", ")
    );

    // getaddrinfo results have their own ring buffer: drain it whenever it
    // has data too (not only before connection events), so that busy
    // resolvers on a host with few new connections do not overflow it.
    let resolve_ready = match tracer.resolve.as_ref() {
        Some(probe) => {
            let fd = probe
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating the hostname ring buffer fd")?;
            // SAFETY: the OwnedFd (a duplicate of the ring buffer map's
            // fd) is owned by the AsyncFd, so it stays open and unchanged
            // while registered.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            Some(
                registered
                    .map_err(std::io::Error::from)
                    .context("registering the hostname ring buffer with tokio")?,
            )
        }
        None => None,
    };
    let mut state = State {
        clock: Clock::now(),
        cache: HostnameCache::new(HOSTNAME_TTL),
        live: HashMap::new(),
        metrics: config.metrics.is_some().then(|| metrics.clone()),
        out: String::new(),
        printed: 0,
        read: 0,
        config: config.clone(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut live_tick = config.interval.map(|period| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    tokio::pin!(shutdown);
    let mut stdout_open = true;
    while stdout_open {
        tokio::select! {
            () = &mut shutdown => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for connection events")?;
                if let Some(resolve) = tracer.resolve.as_mut() {
                    resolve.drain(&state.cache);
                }
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(rec) = events::decode(&item, &state.clock) {
                        state.handle(rec);
                    }
                }
                guard.clear_ready();
                stdout_open = state.flush();
            }
            guard = async {
                match resolve_ready.as_ref() {
                    Some(fd) => fd.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard.context("waiting for hostname results")?;
                if let Some(resolve) = tracer.resolve.as_mut() {
                    resolve.drain(&state.cache);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let lost = tracer.resolve.as_ref().map_or(0, |r| r.lost());
                update_losses(&metrics, tracer.stats(), lost, state.read);
            }
            _ = async {
                match live_tick.as_mut() {
                    Some(i) => i.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                state.live_stats();
                stdout_open = state.flush();
            }
        }
    }
    // What arrived before the signal.
    if let Some(resolve) = tracer.resolve.as_mut() {
        resolve.drain(&state.cache);
    }
    while let Some(item) = ring.get_mut().next() {
        if let Some(rec) = events::decode(&item, &state.clock) {
            state.handle(rec);
        }
    }
    state.flush();
    let kernel = tracer.stats();
    let hostname_lost = tracer.resolve.as_ref().map_or(0, |r| r.lost());
    update_losses(&metrics, kernel, hostname_lost, state.read);
    let skipped = match (kernel.kernel_skipped, tracer.lifecycle_nesting) {
        (Some(n), _) => format!(
            "{n} program runs skipped by the kernel (a BPF program was already running on that \
             CPU; events of those state changes are missing)"
        ),
        // Pre-5.12 kernels: no counter, and the hooks were chosen so that
        // the kernel does not skip them (see the hooks line).
        (None, super::attach::NestedRuns::Run) => {
            "0 program runs skipped by the kernel (this kernel has no counter of skipped runs, \
             and runs nested BTF tracepoint programs instead of skipping them)"
                .to_string()
        }
        (None, _) => "an unknown number of program runs skipped by the kernel (this kernel \
                      does not count them; events of those state changes are missing)"
            .to_string(),
    };
    eprintln!(
        "netray conns: {} events read, {} printed; lost: {} (ring buffer full), {} (socket \
         table full), {} hostname results; {skipped}",
        state.read, state.printed, kernel.ringbuf_full, kernel.table_full, hostname_lost,
    );
    Ok(())
}

//! The in-band tracer: the [`PathTracer`] behind `netray serve`.
//!
//! For each connection it waits until nothing is in flight, then probes and
//! collects replies as the [`schedule`](super::schedule) says: round one at
//! once, the rest as replies come in, silence waited out relative to the
//! round trips around it. Where every hop answers, a trace takes one round
//! trip (two when the peer's distance cannot be guessed).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use netray_common::inband::{EVENT_DEST_UNREACHABLE, EVENT_TIME_EXCEEDED};
use tokio::sync::watch;
use tracing::debug;

use super::{
    Connection, PathTracer, TraceError, TraceOutcomeStats, TracerStats,
    capture::{Capture, FlowSubscription, addr_from_bytes, flow_key},
    engine::{EngineConfig, Trace, Verdict},
    model::{TraceResult, TraceSnapshot},
    probe::ProbeTemplate,
    rdns::ReverseDns,
    schedule::{ProbeKind, Schedule, Timing, destination_guess},
    sender::ProbeSender,
    shared::{IcmpBudgets, SharedHops},
};

/// Timing and probing knobs of the tracer.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// TTLs and probes per TTL.
    pub engine: EngineConfig,
    /// How long to wait for the connection to go idle (nothing in flight)
    /// before giving up.
    pub idle_timeout: Duration,
    /// How long silence is waited out (see [`super::schedule`]).
    pub timing: Timing,
    /// Look up hop names (reverse DNS, in the background). Off: no DNS
    /// queries at all and no hostnames.
    pub reverse_dns: bool,
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            idle_timeout: Duration::from_secs(3),
            timing: Timing::default(),
            reverse_dns: true,
        }
    }
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    probes_sent: AtomicU64,
    probes_held_back: AtomicU64,
    matched: AtomicU64,
    ignored: AtomicU64,
    reached: AtomicU64,
    unreached_no_reply: AtomicU64,
    unreached_max_hops: AtomicU64,
    unreached_connection_closed: AtomicU64,
    peer_segments_unacceptable: AtomicU64,
}

type ConnectionKey = (SocketAddr, SocketAddr);

/// A connection's trace: the connection (to notice it closed) and the
/// trace's updates.
type TraceEntry = (Weak<Connection>, watch::Receiver<TraceSnapshot>);

struct Inner {
    capture: Arc<Capture>,
    sender: ProbeSender,
    config: TracerConfig,
    rdns: ReverseDns,
    shared: SharedHops,
    budgets: IcmpBudgets,
    counters: Counters,
    /// Traces probing now.
    probing: AtomicUsize,
    /// One trace per connection; a finished trace stays while its connection lives.
    traces: Mutex<HashMap<ConnectionKey, TraceEntry>>,
}

/// Traces connections in-band with raw-socket probes and the kernel capture.
#[derive(Clone)]
pub struct InbandTracer {
    inner: Arc<Inner>,
}

impl InbandTracer {
    /// A tracer using `capture` (attached to the interfaces the peers come
    /// in on). Opens the raw probe sockets; must run inside a tokio runtime.
    pub fn new(capture: Arc<Capture>, config: TracerConfig) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                capture,
                sender: ProbeSender::open()?,
                config,
                rdns: if config.reverse_dns {
                    ReverseDns::from_system()
                } else {
                    ReverseDns::disabled()
                },
                shared: SharedHops::default(),
                budgets: IcmpBudgets::default(),
                counters: Counters::default(),
                probing: AtomicUsize::new(0),
                traces: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The capture the tracer uses; register flows for
    /// [`InbandTracer::trace_flow`] with it.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.inner.capture
    }

    /// The reverse DNS cache the tracer fills hop names from.
    pub fn reverse_dns(&self) -> &ReverseDns {
        &self.inner.rdns
    }

    /// Runs one trace of `connection` on a flow the caller registered with
    /// [`InbandTracer::capture`] and keeps registered: the outbound direction
    /// (`netray trace`), which registers the flow before connecting so the
    /// capture sees the handshake, and traces the same connection again and
    /// again with `--watch`.
    ///
    /// Unlike [`PathTracer::trace`] nothing is joined or remembered: every
    /// call is a new round. Events left over from an earlier round are
    /// discarded, the flow is armed for the round and disarmed after it.
    /// `progress` receives the hops as they come in (its `done`/`error` are
    /// left alone: the returned value is the outcome).
    pub async fn trace_flow(
        &self,
        connection: &Connection,
        subscription: &mut FlowSubscription,
        progress: &watch::Sender<TraceSnapshot>,
    ) -> Result<TraceResult, TraceError> {
        let key = (canonical(connection.local), canonical(connection.peer));
        if key.0.is_ipv4() != key.1.is_ipv4() {
            return Err(TraceError::Unsupported("mixed address families".into()));
        }
        if subscription.key != flow_key(key.0, key.1) {
            return Err(TraceError::Unsupported(format!(
                "the subscription is not the flow of {} -> {}",
                key.0, key.1
            )));
        }
        let counters = &self.inner.counters;
        counters.started.fetch_add(1, Relaxed);
        let outcome = run_round(&self.inner, connection, key, subscription, progress).await;
        match &outcome {
            Ok(_) => counters.completed.fetch_add(1, Relaxed),
            Err(_) => counters.failed.fetch_add(1, Relaxed),
        };
        outcome
    }
}

/// The connection's addresses with v4-mapped IPv6 turned into IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl PathTracer for InbandTracer {
    fn trace(
        &self,
        connection: Arc<Connection>,
    ) -> Result<watch::Receiver<TraceSnapshot>, TraceError> {
        let key = (canonical(connection.local), canonical(connection.peer));
        if key.0.is_ipv4() != key.1.is_ipv4() {
            return Err(TraceError::Unsupported("mixed address families".into()));
        }
        let mut traces = self
            .inner
            .traces
            .lock()
            .map_err(|_| TraceError::Internal("trace table poisoned".into()))?;
        // Forget traces whose connection is gone (its 4-tuple may be reused).
        traces.retain(|_, (conn, _)| conn.strong_count() > 0);
        if let Some((_, rx)) = traces.get(&key) {
            return Ok(rx.clone());
        }
        let (tx, rx) = watch::channel(TraceSnapshot::default());
        traces.insert(key, (Arc::downgrade(&connection), rx.clone()));
        drop(traces);
        self.inner.counters.started.fetch_add(1, Relaxed);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let outcome = run_trace(&inner, &connection, key, &tx).await;
            match outcome {
                Ok(result) => {
                    inner.counters.completed.fetch_add(1, Relaxed);
                    tx.send_modify(|s| {
                        s.hops.clone_from(&result.hops);
                        s.done = Some(result);
                    });
                }
                Err(error) => {
                    debug!(peer = %key.1, %error, "trace failed");
                    inner.counters.failed.fetch_add(1, Relaxed);
                    tx.send_modify(|s| s.error = Some(error.to_string()));
                }
            }
        });
        Ok(rx)
    }

    fn stats(&self) -> TracerStats {
        let c = &self.inner.counters;
        let kernel = self.inner.capture.stats();
        TracerStats {
            traces_started: c.started.load(Relaxed),
            traces_completed: c.completed.load(Relaxed),
            traces_failed: c.failed.load(Relaxed),
            probes_sent: c.probes_sent.load(Relaxed),
            probes_held_back: c.probes_held_back.load(Relaxed),
            icmp_matched: c.matched.load(Relaxed),
            // Kernel: ICMP quoting no traced flow; engine: quoting a traced
            // flow but no probe of it (late, stray or forged).
            icmp_ignored: kernel.icmp_ignored + c.ignored.load(Relaxed),
            ringbuf_drops: kernel.ringbuf_drops,
        }
    }

    fn connection_closed(&self, connection: &Connection) {
        if peer_may_linger(&connection.socket) {
            let key = flow_key(canonical(connection.local), canonical(connection.peer));
            self.inner.capture.forget(&key);
        }
    }

    fn outcome_stats(&self) -> TraceOutcomeStats {
        let c = &self.inner.counters;
        TraceOutcomeStats {
            reached: c.reached.load(Relaxed),
            unreached_no_reply: c.unreached_no_reply.load(Relaxed),
            unreached_max_hops: c.unreached_max_hops.load(Relaxed),
            unreached_connection_closed: c.unreached_connection_closed.load(Relaxed),
            peer_segments_unacceptable: c.peer_segments_unacceptable.load(Relaxed),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`, so
/// send times and kernel receive timestamps subtract directly.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Packets our TCP has sent that the peer has not acknowledged (TCP_INFO).
fn unacked_packets(socket: &OwnedFd) -> std::io::Result<u32> {
    let info = tcp_info(socket)?;
    // TCP_ESTABLISHED is 1 in include/net/tcp_states.h (libc does not export it).
    if info.tcpi_state != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "connection is no longer established",
        ));
    }
    Ok(info.tcpi_unacked)
}

/// What the connection tells about the path before the first probe.
#[derive(Clone, Copy, Debug, Default)]
struct PathHints {
    /// Our TCP's smoothed RTT of the connection (TCP_INFO), if measured.
    rtt: Option<Duration>,
    /// The destination's TTL guessed from the TTL the peer's segments
    /// arrive with.
    destination_guess: Option<u8>,
}

/// Our TCP's smoothed RTT of the connection, if it has measured one.
fn smoothed_rtt(socket: &OwnedFd) -> Option<Duration> {
    let info = tcp_info(socket).ok()?;
    (info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// Whether the peer of this socket's connection may still be on its
/// 4-tuple without having sent its FIN (include/net/tcp_states.h:
/// ESTABLISHED 1, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8). In any other
/// state both FINs (or an RST) have passed, so the kernel side removed the
/// flow's entry itself, and an entry on the 4-tuple now belongs to a new
/// connection (a client may reuse its port once the old one closed, while
/// our descriptor still exists).
fn peer_may_linger(socket: &OwnedFd) -> bool {
    tcp_info(socket).is_ok_and(|info| matches!(info.tcpi_state, 1 | 4 | 5 | 8))
}

fn tcp_info(socket: &OwnedFd) -> std::io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zeroed is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

/// Waits until nothing is in flight and the capture knows the flow well
/// enough to forge a probe; returns the template and what the connection
/// tells about the path.
async fn wait_for_template(
    connection: &Connection,
    key: ConnectionKey,
    subscription: &FlowSubscription,
    timeout: Duration,
) -> Result<(ProbeTemplate, PathHints), TraceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let unacked = unacked_packets(&connection.socket)
            .map_err(|e| TraceError::Unsupported(e.to_string()))?;
        let state = subscription
            .state()
            .map_err(|e| TraceError::Internal(format!("reading flow state: {e:#}")))?;
        let template =
            ProbeTemplate::from_flow(key.0.ip(), key.1.ip(), key.0.port(), key.1.port(), &state);
        if let (Ok(template), 0) = (&template, unacked) {
            let hints = PathHints {
                rtt: smoothed_rtt(&connection.socket),
                destination_guess: destination_guess(state.peer_ttl),
            };
            return Ok((*template, hints));
        }
        if Instant::now() >= deadline {
            let why = match template {
                Err(e) => e.to_string(),
                Ok(_) => format!("{unacked} packet(s) still in flight"),
            };
            return Err(TraceError::Internal(format!(
                "connection did not go idle within {timeout:?}: {why}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn run_trace(
    inner: &Inner,
    connection: &Connection,
    key: ConnectionKey,
    tx: &watch::Sender<TraceSnapshot>,
) -> Result<TraceResult, TraceError> {
    let mut subscription = inner
        .capture
        .register(flow_key(key.0, key.1))
        .map_err(|e| TraceError::Internal(format!("{e:#}")))?;
    run_round(inner, connection, key, &mut subscription, tx).await
}

/// One trace of a registered flow: waits for a template, arms the flow,
/// probes, collects, and disarms the flow again (so a caller that keeps the
/// subscription, like `netray trace --watch`, can run the next round).
async fn run_round(
    inner: &Inner,
    connection: &Connection,
    key: ConnectionKey,
    subscription: &mut FlowSubscription,
    tx: &watch::Sender<TraceSnapshot>,
) -> Result<TraceResult, TraceError> {
    // Late replies to an earlier round of this flow are not answers to this one.
    while subscription.events.try_recv().is_ok() {}
    let config = inner.config;
    let (template, hints) =
        wait_for_template(connection, key, subscription, config.idle_timeout).await?;
    subscription
        .set_armed(true)
        .map_err(|e| TraceError::Internal(format!("arming the flow: {e:#}")))?;
    let result =
        probe_and_collect(inner, connection, key, subscription, &template, hints, tx).await;
    if let Err(error) = subscription.set_armed(false) {
        debug!(peer = %key.1, "disarming the flow: {error:#}");
    }
    result
}

/// Counts a trace as probing while it lives.
struct Probing<'a>(&'a AtomicUsize);

impl<'a> Probing<'a> {
    /// Starts probing; also returns how many other traces are probing.
    fn start(count: &'a AtomicUsize) -> (Self, usize) {
        let others = count.fetch_add(1, Relaxed);
        (Self(count), others)
    }
}

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn probe_and_collect(
    inner: &Inner,
    connection: &Connection,
    key: ConnectionKey,
    subscription: &mut FlowSubscription,
    template: &ProbeTemplate,
    hints: PathHints,
    tx: &watch::Sender<TraceSnapshot>,
) -> Result<TraceResult, TraceError> {
    let config = inner.config;
    let started = Instant::now();
    let mut trace = Trace::new(config.engine, template);
    // The other probes of each TTL go out with the first ones only while
    // no other trace is probing: concurrent traces spend the same routers'
    // ICMP budgets, and spread over two rounds, more of them hear each
    // router (see `shared`).
    let (_probing, others) = Probing::start(&inner.probing);
    let guess = if others == 0 {
        hints.destination_guess
    } else {
        None
    };
    let mut schedule = Schedule::new(
        config.timing,
        trace.config(),
        hints.rtt,
        guess,
        monotonic_ns(),
    );
    let mut sent = 0;
    for probe in schedule.first_round() {
        send_probe(inner, template, &mut trace, probe.ttl, probe.attempt)?;
        sent += 1;
    }
    let mut more_since: Option<Instant> = None;
    loop {
        // Before the schedule retries or gives up on anything (it is done,
        // or would send a retry), every reply the kernel queued in time
        // counts: the schedule's clock is userspace time, and on a busy
        // machine the ring buffer's reader or this task can run seconds
        // behind replies that arrived in time (every reply to 90 probes
        // lost that way at 200 concurrent traces in a loaded guest; in a
        // one-vCPU guest, spurious retries that spent the routers' ICMP
        // budgets). A dry run of the step tells.
        let dry = schedule.clone().step(&trace, monotonic_ns());
        if dry.done || dry.send.iter().any(|p| p.kind == ProbeKind::Retry) {
            subscription.deliver_pending(CATCH_UP_MAX).await;
            drain(subscription, &mut trace, inner, tx);
        }
        let step = schedule.step(&trace, monotonic_ns());
        for probe in step.send {
            if probe.kind == ProbeKind::More {
                // Probes while data is in flight would read to our TCP as
                // duplicate ACKs; give a streaming response a moment to be
                // acknowledged (once per trace).
                let since = *more_since.get_or_insert_with(Instant::now);
                while since.elapsed() < Duration::from_millis(200)
                    && unacked_packets(&connection.socket).unwrap_or(0) > 0
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Hop already heard and its router out of ICMP budget: the
                // probe would only take a token another trace needs (or go
                // unanswered and read as loss).
                if trace
                    .router_at(probe.ttl)
                    .is_some_and(|r| inner.budgets.spent(r))
                {
                    inner.counters.probes_held_back.fetch_add(1, Relaxed);
                    continue;
                }
            }
            send_probe(inner, template, &mut trace, probe.ttl, probe.attempt)?;
            sent += 1;
        }
        if step.done {
            break;
        }
        let wake_in = step.wake_at_ns.map_or(config.timing.max_wait, |at| {
            Duration::from_nanos(at.saturating_sub(monotonic_ns()))
        });
        if !collect_for(subscription, &mut trace, wake_in, inner, tx).await {
            break;
        }
    }
    debug!(peer = %key.1, sent, elapsed = ?started.elapsed(), "trace finished");
    let c = &inner.counters;
    c.peer_segments_unacceptable
        .fetch_add(trace.unacceptable(), Relaxed);
    if trace.destination_ttl().is_some() {
        c.reached.fetch_add(1, Relaxed);
    } else if unacked_packets(&connection.socket).is_err() {
        c.unreached_connection_closed.fetch_add(1, Relaxed);
    } else if trace.counts().0 == 0 {
        c.unreached_no_reply.fetch_add(1, Relaxed);
    } else {
        c.unreached_max_hops.fetch_add(1, Relaxed);
    }

    let mut hops = trace.final_hops();
    share(inner, key.1.ip(), &mut hops);
    inner.rdns.fill_known(&mut hops);
    Ok(TraceResult {
        client: key.1,
        server: key.0,
        family: if key.0.is_ipv4() { "ipv4" } else { "ipv6" },
        destination_reached: hops.last().is_some_and(|h| h.destination),
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        hops,
    })
}

/// Exchanges what this trace knows with the other traces: fills this
/// trace's silent hops that other traces heard (the filled ones then key the
/// next TTL), and records what this trace heard. Done on every reply, so
/// concurrent traces see each other's routers within a round trip.
fn share(inner: &Inner, peer: IpAddr, hops: &mut [super::model::Hop]) {
    inner.shared.fill(peer, hops);
    // Cached hops are learned only as keys, never as answers.
    inner.shared.learn(peer, hops);
    super::model::label_rate_limited(hops);
}

fn send_probe(
    inner: &Inner,
    template: &ProbeTemplate,
    trace: &mut Trace,
    ttl: u8,
    attempt: u8,
) -> Result<(), TraceError> {
    // Record before sending: a reply can beat the return of sendto.
    let seq = trace.record_sent(ttl, attempt, monotonic_ns());
    inner
        .sender
        .send(template.peer, &template.packet(seq, ttl))
        .map_err(|e| TraceError::Internal(format!("sending a probe: {e}")))?;
    inner.counters.probes_sent.fetch_add(1, Relaxed);
    Ok(())
}

/// Events fed to a trace in one go, at most: a bound for a flood that
/// outpaces us.
const LATE_EVENTS_MAX: usize = 4096;

/// How long to wait for the capture's reader to catch up at a deadline.
const CATCH_UP_MAX: Duration = Duration::from_secs(2);

/// Feeds the trace its flow's events for up to `wait`, returning after the
/// first batch of events (the schedule then looks again) or when the wait is
/// over. Returns false when the capture is gone.
async fn collect_for(
    subscription: &mut FlowSubscription,
    trace: &mut Trace,
    wait: Duration,
    inner: &Inner,
    tx: &watch::Sender<TraceSnapshot>,
) -> bool {
    match tokio::time::timeout(wait, subscription.events.recv()).await {
        Ok(Some(event)) => on_event(&event, trace, inner, tx),
        Ok(None) => return false,
        Err(_elapsed) => return true,
    }
    drain(subscription, trace, inner, tx);
    true
}

/// Feeds the trace the events already delivered, at most
/// [`LATE_EVENTS_MAX`] (a bound for a flood that outpaces us).
fn drain(
    subscription: &mut FlowSubscription,
    trace: &mut Trace,
    inner: &Inner,
    tx: &watch::Sender<TraceSnapshot>,
) {
    for _ in 0..LATE_EVENTS_MAX {
        let Ok(event) = subscription.events.try_recv() else {
            break;
        };
        on_event(&event, trace, inner, tx);
    }
}

/// One event of the traced flow: into the trace, then into the shared view.
fn on_event(
    event: &netray_common::inband::InbandEvent,
    trace: &mut Trace,
    inner: &Inner,
    tx: &watch::Sender<TraceSnapshot>,
) {
    let peer = addr_from_bytes(event.flow.family, event.flow.remote_addr);
    let verdict = trace.on_event(event);
    if verdict != Verdict::Ignored
        && matches!(event.kind, EVENT_TIME_EXCEEDED | EVENT_DEST_UNREACHABLE)
    {
        // An answer to one of our probes (also a duplicate) cost its router
        // a token of the budget all traces share.
        inner
            .budgets
            .replied(addr_from_bytes(event.flow.family, event.from_addr));
    }
    match verdict {
        Verdict::Matched => {
            inner.counters.matched.fetch_add(1, Relaxed);
            let mut hops = trace.hops();
            for hop in &hops {
                if let Some(addr) = hop.addr {
                    inner.rdns.lookup_in_background(addr);
                }
            }
            share(inner, peer, &mut hops);
            inner.rdns.fill_known(&mut hops);
            tx.send_modify(|s| s.hops = hops);
        }
        Verdict::Ignored => {
            inner.counters.ignored.fetch_add(1, Relaxed);
        }
        Verdict::Duplicate => {}
    }
}

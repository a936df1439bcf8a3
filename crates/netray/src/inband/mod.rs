//! In-band traceroute: trace the path to the peer of an established TCP
//! connection with TTL-limited probes that share the connection's 5-tuple.
//!
//! - [`capture`]: the XDP/TC programs that watch traced flows and catch ICMP.
//! - [`probe`]: probe packets and TCP option parsing.
//! - [`engine`]: one trace's state: matching replies, building the hop list.
//! - [`schedule`]: the completion rules: which probes go out when, how long
//!   silence is waited out, when a trace is done.
//! - [`sender`]: raw sockets that send the probes.
//! - [`rdns`]: reverse DNS of hop addresses, cached across traces.
//! - [`shared`]: routers learned by recent traces, shared with the next ones.
//! - [`tracer`]: [`PathTracer`] implementation tying it all together.
//! - [`model`]: the result types (the `/trace.json` contract).
//! - [`PathTracer`]: what the HTTP server asks of the engine.
//!
//! Both directions use the same engine: `netray serve` traces back to the
//! visitors of its listening ports (the capture tracks those connections
//! from their SYN), `netray trace` traces forward to a service it connects
//! to (it registers the flow before connecting and runs rounds with
//! [`tracer::InbandTracer::trace_flow`]). Either way "local" is this host
//! and "peer" the other end; the probes sit in sequence space the peer has
//! acknowledged, which after a bare handshake is the SYN's sequence number
//! and the bytes just below it.

pub mod capture;
pub mod engine;
pub mod model;
pub mod probe;
pub mod rdns;
pub mod schedule;
pub mod sender;
pub mod shared;
pub mod tracer;

use std::{net::SocketAddr, os::fd::OwnedFd, sync::Arc};

use tokio::sync::watch;

pub use model::{Hop, TraceResult, TraceSnapshot};

/// The TCP connection to trace, as the server accepted it (`netray serve`)
/// or as `netray trace` opened it.
#[derive(Debug)]
pub struct Connection {
    /// Our address and port (the probes' source).
    pub local: SocketAddr,
    /// The peer's address and port (the probes' destination).
    pub peer: SocketAddr,
    /// A duplicate of the connection's socket, for `TCP_INFO` (is anything in
    /// flight?) and the socket's TOS. Closed when the last holder drops it.
    pub socket: OwnedFd,
}

/// Why a trace could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A limit (per client, global, rate) refused the trace; the text says which.
    #[error("too many traces: {0}")]
    Limited(String),
    /// The connection cannot be traced (unsupported family, closed socket...).
    #[error("cannot trace this connection: {0}")]
    Unsupported(String),
    /// An internal failure (kernel map full, raw socket error...).
    #[error("trace failed: {0}")]
    Internal(String),
}

/// Runs traces. One trace per connection: a second request on the same
/// connection joins the running (or finished) trace instead of starting another.
pub trait PathTracer: Send + Sync + 'static {
    /// Starts or joins the trace of `connection`. The receiver sees every
    /// update; the trace is over when [`TraceSnapshot::done`] is `Some`.
    fn trace(
        &self,
        connection: Arc<Connection>,
    ) -> Result<watch::Receiver<TraceSnapshot>, TraceError>;

    /// Counters for `/metrics`.
    fn stats(&self) -> TracerStats;

    /// The server has closed `connection`: nothing of it may outlive it
    /// (kernel flow state included). Default: nothing to do.
    fn connection_closed(&self, connection: &Connection) {
        let _ = connection;
    }

    /// How traces ended and what hostile input was ignored, for `/metrics`
    /// (zero for tracers that do not keep them).
    fn outcome_stats(&self) -> TraceOutcomeStats {
        TraceOutcomeStats::default()
    }
}

/// How traces ended, and peer segments ignored as not the peer's
/// (monotonic since start). A trace that did not reach its destination is
/// counted under exactly one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceOutcomeStats {
    /// Traces that reached the destination.
    pub reached: u64,
    /// Not reached: nothing answered any probe.
    pub unreached_no_reply: u64,
    /// Not reached: routers answered, the destination did not within the
    /// maximum number of hops.
    pub unreached_max_hops: u64,
    /// Not reached: the connection closed during the trace.
    pub unreached_connection_closed: u64,
    /// Peer RSTs and duplicate ACKs at a sequence number the peer's TCP
    /// could not have sent (blind or forged), ignored.
    pub peer_segments_unacceptable: u64,
}

/// Counters a [`PathTracer`] keeps (monotonic since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Traces started.
    pub traces_started: u64,
    /// Traces that produced a result.
    pub traces_completed: u64,
    /// Traces that failed.
    pub traces_failed: u64,
    /// Probe packets sent.
    pub probes_sent: u64,
    /// Extra probes not sent: the trace had heard that hop already and its
    /// router's ICMP budget toward us was spent (see `shared::IcmpBudgets`).
    pub probes_held_back: u64,
    /// ICMP errors that matched a probe of a running trace.
    pub icmp_matched: u64,
    /// ICMP errors seen but not matched (forged, late, other traffic).
    pub icmp_ignored: u64,
    /// Events the kernel could not deliver (ring buffer full).
    pub ringbuf_drops: u64,
}

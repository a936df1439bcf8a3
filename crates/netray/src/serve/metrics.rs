//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
    },
    registry::Registry,
};

use crate::inband::PathTracer;

/// Content type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Values of the `reason` label of `netray_traces_refused_total`.
const REFUSAL_REASONS: [&str; 4] = ["global", "per_client", "rate", "engine"];

/// Labels of `netray_http_requests_total`. Routes are a fixed set (unknown
/// paths are "other") so that clients cannot blow up the label space.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// Values of the `reason` label of `netray_http_connections_refused_total`.
const CONNECTION_REFUSAL_REASONS: [&str; 2] = ["global", "per_client"];

/// Values of the `phase` label of `netray_http_connections_timed_out_total`.
const CONNECTION_TIMEOUT_PHASES: [&str; 2] = ["first_request", "idle"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnRefusedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnTimeoutLabels {
    phase: &'static str,
}

/// Connection admission counters: refused at accept, closed for idleness.
struct AdmissionMetrics {
    refused: Family<ConnRefusedLabels, Counter>,
    timed_out: Family<ConnTimeoutLabels, Counter>,
}

impl AdmissionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let refused = Family::<ConnRefusedLabels, Counter>::default();
        for reason in CONNECTION_REFUSAL_REASONS {
            let _ = refused.get_or_create(&ConnRefusedLabels { reason });
        }
        registry.register(
            "http_connections_refused",
            "Connections closed at accept, by reason (global, per_client)",
            refused.clone(),
        );
        let timed_out = Family::<ConnTimeoutLabels, Counter>::default();
        for phase in CONNECTION_TIMEOUT_PHASES {
            let _ = timed_out.get_or_create(&ConnTimeoutLabels { phase });
        }
        registry.register(
            "http_connections_timed_out",
            "Connections closed for sending no request, by phase (first_request, idle)",
            timed_out.clone(),
        );
        Self { refused, timed_out }
    }
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    traces_refused: Family<RefusedLabels, Counter>,
    connections: Counter,
    connections_open: Gauge,
    tls_handshake_failures: Counter,
    admission: AdmissionMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Reads the engine's counters at scrape time.
struct TracerStatsCollector(Arc<dyn PathTracer>);

impl fmt::Debug for TracerStatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracerStatsCollector")
    }
}

impl Collector for TracerStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.0.stats();
        // The encoder appends "_total" to counter names (but, unlike for
        // registered metrics, no final period to the help text).
        for (name, help, value) in [
            (
                "traces_started",
                "Traces started by the probe engine.",
                s.traces_started,
            ),
            (
                "traces_completed",
                "Traces that produced a result.",
                s.traces_completed,
            ),
            ("traces_failed", "Traces that failed.", s.traces_failed),
            ("probes_sent", "Probe packets sent.", s.probes_sent),
            (
                "probes_held_back",
                "Extra probes not sent: hop already heard, its router's ICMP budget spent.",
                s.probes_held_back,
            ),
            (
                "icmp_matched",
                "ICMP errors matched to a probe.",
                s.icmp_matched,
            ),
            (
                "icmp_ignored",
                "ICMP errors seen but not matched.",
                s.icmp_ignored,
            ),
            (
                "ringbuf_drops",
                "Events the kernel could not deliver (ring buffer full).",
                s.ringbuf_drops,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        encode_outcomes(&self.0.outcome_stats(), &mut encoder)
    }
}

/// How traces ended (`netray_traces_ended_total{outcome}`) and the peer
/// segments ignored as not the peer's.
fn encode_outcomes(
    s: &crate::inband::TraceOutcomeStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "traces_ended",
        "Traces by outcome: reached, or why the destination was not (no_reply, max_hops, connection_closed)",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (outcome, value) in [
        ("reached", s.reached),
        ("no_reply", s.unreached_no_reply),
        ("max_hops", s.unreached_max_hops),
        ("connection_closed", s.unreached_connection_closed),
    ] {
        let labels = [("outcome", outcome)];
        let metric = family.encode_family(&labels)?;
        ConstCounter::new(value).encode(metric)?;
    }
    let counter = ConstCounter::new(s.peer_segments_unacceptable);
    let metric = encoder.encode_descriptor(
        "peer_segments_unacceptable",
        "Peer RSTs and duplicate ACKs ignored: not at the sequence number the peer's TCP would use (blind or forged)",
        None,
        counter.metric_type(),
    )?;
    counter.encode(metric)
}

impl Metrics {
    pub(crate) fn new(tracer: Arc<dyn PathTracer>) -> Self {
        let mut registry = Registry::with_prefix("netray");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let traces_refused = Family::<RefusedLabels, Counter>::default();
        // Export every reason from the start (as 0), so rates work at once.
        for reason in REFUSAL_REASONS {
            let _ = traces_refused.get_or_create(&RefusedLabels { reason });
        }
        registry.register(
            "traces_refused",
            "New traces refused, by reason (global, per_client, rate, engine)",
            traces_refused.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "http_connections",
            "Accepted TCP connections",
            connections.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Currently open TCP connections",
            connections_open.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let admission = AdmissionMetrics::register(&mut registry);
        registry.register_collector(Box::new(TracerStatsCollector(tracer)));
        Self {
            admission,
            registry,
            http_requests,
            traces_refused,
            connections,
            connections_open,
            tls_handshake_failures,
        }
    }

    pub(crate) fn request(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.traces_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.inc();
        self.connections_open.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub(crate) fn tls_failure(&self) {
        self.tls_handshake_failures.inc();
    }

    /// A connection closed at accept; `reason` is one of
    /// [`CONNECTION_REFUSAL_REASONS`].
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.admission
            .refused
            .get_or_create(&ConnRefusedLabels { reason })
            .inc();
    }

    /// A connection closed for idleness; `phase` is one of
    /// [`CONNECTION_TIMEOUT_PHASES`].
    pub(crate) fn connection_timed_out(&self, phase: &'static str) {
        self.admission
            .timed_out
            .get_or_create(&ConnTimeoutLabels { phase })
            .inc();
    }

    /// The exposition text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a formatter error (never from a String); say so rather than panic.
            tracing::warn!("encoding metrics failed: {e}");
        }
        out
    }
}

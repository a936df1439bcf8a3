//! Prometheus metrics of `netray conns` (`--metrics ADDR:PORT`, `GET
//! /metrics`, OpenMetrics text).
//!
//! Connections are labelled by `direction` (connect/accept/unknown) and
//! `remote` (the peer's IP address): one series per peer, so this is meant
//! for hosts talking to a bounded set of peers.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::events::{ConnRecord, EventKind};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    direction: &'static str,
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteLabels {
    remote: String,
}

/// Loss counters updated by the event loop, read at scrape time.
#[derive(Debug, Default)]
pub struct LossCounters {
    /// Connection events lost: ring buffer full.
    pub ringbuf_full: AtomicU64,
    /// Sockets not tracked: socket table full.
    pub table_full: AtomicU64,
    /// getaddrinfo results lost.
    pub hostname_lost: AtomicU64,
    /// Connection events read.
    pub events: AtomicU64,
    /// Program runs the kernel skipped (recursion misses).
    pub kernel_skipped: AtomicU64,
}

struct LossCollector(Arc<LossCounters>);

impl fmt::Debug for LossCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LossCollector")
    }
}

impl Collector for LossCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, value) in [
            (
                "conns_lost_ringbuf_full",
                "Connection events the kernel could not deliver (ring buffer full).",
                &self.0.ringbuf_full,
            ),
            (
                "conns_lost_table_full",
                "Sockets the kernel could not track (socket table full).",
                &self.0.table_full,
            ),
            (
                "conns_lost_hostnames",
                "getaddrinfo results the kernel could not deliver.",
                &self.0.hostname_lost,
            ),
            (
                "conns_lost_kernel_skipped",
                "State changes and accepts the kernel did not run netray's programs for \
                 (another BPF program was running on that CPU).",
                &self.0.kernel_skipped,
            ),
            (
                "conns_events_read",
                "Connection events read from the kernel.",
                &self.0.events,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The registry and the metrics the event loop updates.
pub struct ConnsMetrics {
    registry: Registry,
    opened: Family<ConnLabels, Counter>,
    closed: Family<ConnLabels, Counter>,
    bytes_sent: Family<RemoteLabels, Counter>,
    bytes_received: Family<RemoteLabels, Counter>,
    retransmits: Family<RemoteLabels, Counter>,
    rtt: Histogram,
    /// Loss counters (shared with the event loop).
    pub losses: Arc<LossCounters>,
}

impl fmt::Debug for ConnsMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnsMetrics").finish_non_exhaustive()
    }
}

impl Default for ConnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnsMetrics {
    /// Registers everything under the `netray_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netray");
        let opened = Family::<ConnLabels, Counter>::default();
        registry.register(
            "conns_opened",
            "TCP connections opened, by direction and remote address",
            opened.clone(),
        );
        let closed = Family::<ConnLabels, Counter>::default();
        registry.register(
            "conns_closed",
            "TCP connections closed, by direction and remote address",
            closed.clone(),
        );
        let bytes_sent = Family::<RemoteLabels, Counter>::default();
        registry.register(
            "conns_bytes_sent",
            "Payload bytes acknowledged by the peer, of closed connections, by remote address",
            bytes_sent.clone(),
        );
        let bytes_received = Family::<RemoteLabels, Counter>::default();
        registry.register(
            "conns_bytes_received",
            "Payload bytes received, of closed connections, by remote address",
            bytes_received.clone(),
        );
        let retransmits = Family::<RemoteLabels, Counter>::default();
        registry.register(
            "conns_retransmits",
            "Retransmitted segments of closed connections, by remote address",
            retransmits.clone(),
        );
        // 10 µs .. ~5 s.
        let rtt = Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        registry.register(
            "conns_rtt_seconds",
            "Smoothed RTT of connections at close",
            rtt.clone(),
        );
        let losses = Arc::new(LossCounters::default());
        registry.register_collector(Box::new(LossCollector(losses.clone())));
        Self {
            registry,
            opened,
            closed,
            bytes_sent,
            bytes_received,
            retransmits,
            rtt,
            losses,
        }
    }

    /// Accounts one event (unfiltered: metrics cover every connection).
    pub fn record(&self, r: &ConnRecord) {
        let remote = r.remote.ip().to_string();
        let labels = ConnLabels {
            direction: r.role.name(),
            remote: remote.clone(),
        };
        match r.kind {
            EventKind::Connect | EventKind::Accept => {
                self.opened.get_or_create(&labels).inc();
            }
            EventKind::Close => {
                self.closed.get_or_create(&labels).inc();
                if let Some(t) = &r.totals {
                    let remote = RemoteLabels { remote };
                    self.bytes_sent.get_or_create(&remote).inc_by(t.bytes_sent);
                    self.bytes_received
                        .get_or_create(&remote)
                        .inc_by(t.bytes_received);
                    self.retransmits
                        .get_or_create(&remote)
                        .inc_by(u64::from(t.retransmits));
                    if t.srtt_us > 0 {
                        self.rtt.observe(f64::from(t.srtt_us) / 1e6);
                    }
                }
            }
            EventKind::Stats => {}
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics failed: {e}");
        }
        out
    }
}

/// Binds the metrics endpoint (errors name `--metrics`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen: {e}"))
}

/// Serves `GET /metrics` (anything else: 404) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<ConnsMetrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded, with a timeout).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let response = if method == "GET" && (path == "/metrics" || path == "/metrics/") {
                let body = metrics.encode();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let body = "not found: try GET /metrics\n";
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conns::events::{Process, Role, Totals};

    #[test]
    fn counts_connections_bytes_and_rtt() {
        let m = ConnsMetrics::new();
        let mut r = ConnRecord {
            kind: EventKind::Connect,
            ts_unix_ns: 0,
            process: Some(Process {
                pid: 1,
                tid: 1,
                comm: "x".into(),
            }),
            role: Role::Connect,
            local: "10.0.0.1:1000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
            host: None,
            totals: None,
            cookie: 1,
            start_ns: 0,
            baseline: None,
        };
        m.record(&r);
        r.kind = EventKind::Close;
        r.totals = Some(Totals {
            bytes_sent: 123,
            bytes_received: 456,
            duration: Some(Duration::from_millis(5)),
            srtt_us: 100,
            retransmits: 3,
            state: Some("FIN_WAIT2"),
            approximate: false,
        });
        m.record(&r);
        m.losses.ringbuf_full.store(2, Ordering::Relaxed);
        let text = m.encode();
        for line in [
            "netray_conns_opened_total{direction=\"connect\",remote=\"10.0.0.2\"} 1",
            "netray_conns_closed_total{direction=\"connect\",remote=\"10.0.0.2\"} 1",
            "netray_conns_bytes_sent_total{remote=\"10.0.0.2\"} 123",
            "netray_conns_bytes_received_total{remote=\"10.0.0.2\"} 456",
            "netray_conns_retransmits_total{remote=\"10.0.0.2\"} 3",
            "netray_conns_rtt_seconds_count 1",
            "netray_conns_lost_ringbuf_full_total 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}

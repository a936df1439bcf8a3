//! `netray serve` over real sockets with a fake tracer: routes and formats,
//! limits, HTTP/2 (h2c and TLS), IPv6, flag validation, and ACME issuance
//! against a local pebble. Every server binds port 0, so tests run in
//! parallel; every test is bounded by a timeout.

use std::{
    collections::HashMap,
    future::Future,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use netray::{
    inband::{Connection, Hop, PathTracer, TraceError, TraceResult, TraceSnapshot, TracerStats},
    serve::{ServeArgs, ServeConfig, Server, TlsSource},
};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

// ---------------------------------------------------------------- fake tracer

/// Holds traces after their first hop until opened (once, for good).
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// Builds one of the engine's errors from its message.
type MakeError = fn(String) -> TraceError;

/// What the fake tracer does on `trace()`.
#[derive(Clone, Debug)]
enum Mode {
    /// Emits the script, one step per `step`.
    Run,
    /// Fails at once with this error.
    Refuse(MakeError),
    /// Emits the first hop, then fails with an error snapshot.
    FailDuring,
}

/// A tracer that emits three hops over time (hop 1 updated twice, hop 3 gets
/// its hostname only in the result), dedups per connection (by peer
/// address) and counts calls and starts.
struct FakeTracer {
    mode: Mode,
    step: Duration,
    /// When set, the trace pauses after its first hop until notified.
    gate: Option<Gate>,
    traces: Mutex<HashMap<SocketAddr, watch::Receiver<TraceSnapshot>>>,
    calls: Mutex<HashMap<SocketAddr, u32>>,
    starts: AtomicU64,
}

impl FakeTracer {
    fn new(mode: Mode, step: Duration, gate: Option<Gate>) -> Arc<Self> {
        Arc::new(Self {
            mode,
            step,
            gate,
            traces: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            starts: AtomicU64::new(0),
        })
    }

    fn quick() -> Arc<Self> {
        Self::new(Mode::Run, Duration::from_millis(20), None)
    }

    fn calls(&self) -> HashMap<SocketAddr, u32> {
        self.calls.lock().unwrap().clone()
    }
}

fn hop(ttl: u8, addr: &str, rtts: &[f64], hostname: Option<&str>) -> Hop {
    Hop {
        ttl,
        addr: Some(addr.parse().unwrap()),
        hostname: hostname.map(str::to_owned),
        rtt_ms: rtts.to_vec(),
        sent: 3,
        received: rtts.len() as u32,
        nat: false,
        destination: false,
        cached: false,
        rate_limited: false,
    }
}

impl PathTracer for FakeTracer {
    fn trace(
        &self,
        connection: Arc<Connection>,
    ) -> Result<watch::Receiver<TraceSnapshot>, TraceError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(connection.peer)
            .or_default() += 1;
        if let Mode::Refuse(make) = self.mode {
            return Err(make("fake refusal".into()));
        }
        let mut traces = self.traces.lock().unwrap();
        if let Some(rx) = traces.get(&connection.peer) {
            return Ok(rx.clone());
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = watch::channel(TraceSnapshot::default());
        traces.insert(connection.peer, rx.clone());
        let (mode, step, gate) = (self.mode.clone(), self.step, self.gate.clone());
        tokio::spawn(async move {
            let client_ip = connection.peer.ip().to_string();
            let mut hops = vec![hop(1, "192.0.2.1", &[1.5], None)];
            tokio::time::sleep(step).await;
            tx.send_replace(TraceSnapshot {
                hops: hops.clone(),
                ..Default::default()
            });
            if let Some(gate) = gate {
                gate.wait().await;
            }
            if let Mode::FailDuring = mode {
                tokio::time::sleep(step).await;
                tx.send_replace(TraceSnapshot {
                    hops,
                    done: None,
                    error: Some("raw socket exploded".into()),
                });
                return;
            }
            tokio::time::sleep(step).await;
            hops[0] = hop(1, "192.0.2.1", &[1.5, 2.5, 3.5], Some("gw.example"));
            hops.push(Hop {
                sent: 3,
                ..Hop::silent(2)
            });
            tx.send_replace(TraceSnapshot {
                hops: hops.clone(),
                ..Default::default()
            });
            tokio::time::sleep(step).await;
            let mut dest = hop(3, &client_ip, &[9.0, 10.0, 11.0], None);
            dest.destination = true;
            hops.push(dest.clone());
            tx.send_replace(TraceSnapshot {
                hops: hops.clone(),
                ..Default::default()
            });
            tokio::time::sleep(step).await;
            hops[2].hostname = Some("you.example".into());
            let result = TraceResult {
                client: connection.peer,
                server: connection.local,
                family: if connection.peer.is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                },
                destination_reached: true,
                elapsed_ms: 123.4,
                hops: hops.clone(),
            };
            tx.send_replace(TraceSnapshot {
                hops,
                done: Some(result),
                error: None,
            });
        });
        Ok(rx)
    }

    fn stats(&self) -> TracerStats {
        let started = self.starts.load(Ordering::SeqCst);
        TracerStats {
            traces_started: started,
            traces_completed: started,
            traces_failed: 0,
            probes_sent: started * 9,
            probes_held_back: 0,
            icmp_matched: started * 5,
            icmp_ignored: 1,
            ringbuf_drops: 0,
        }
    }
}

// ---------------------------------------------------------------- harness

fn init() {
    // reqwest is built without a default crypto provider; use ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server running in the background; shut down on drop.
struct TestServer {
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("http listener"))
    }

    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server result");
        }
        started.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn args(edit: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
    let mut args = ServeArgs {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeArgs::default()
    };
    edit(&mut args);
    args
}

async fn spawn_config(config: ServeConfig, tracer: Arc<dyn PathTracer>) -> TestServer {
    let server = Server::bind(config).await.expect("bind");
    let (tx, rx) = oneshot::channel();
    let (http, https) = (server.local_http_addr(), server.local_https_addr());
    let task = tokio::spawn(server.serve(tracer, async {
        let _ = rx.await;
    }));
    TestServer {
        http,
        https,
        shutdown: Some(tx),
        task: Some(task),
    }
}

async fn spawn(args: ServeArgs, tracer: Arc<dyn PathTracer>) -> TestServer {
    spawn_config(ServeConfig::from_args(args).expect("config"), tracer).await
}

/// A whole request, body included, in a TCG guest of the kernel matrix
/// sharing two cores with another one: a trace held open across a test's
/// other requests took over 10 s on 5.10.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// A client whose every request opens a new connection (a new trace).
fn fresh_client() -> reqwest::Client {
    init();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// Runs a test body with a hard time limit: a hang fails rather than
/// stalls. Generous, because the kernel matrix runs these tests in TCG
/// guests, where one test took over 60 s on a loaded machine.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(240), body)
        .await
        .expect("test timed out");
}

#[derive(Debug, PartialEq)]
struct Event {
    name: String,
    data: String,
}

/// Parses a complete `text/event-stream` body (comments skipped).
fn parse_sse(body: &str) -> Vec<Event> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            name.map(|name| Event {
                name,
                data: data.join("\n"),
            })
        })
        .collect()
}

fn assert_hop_shape(hop: &Value) {
    let keys: Vec<&str> = hop
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "addr",
            // Extension beyond the contract: hop learned from other traces.
            "cached",
            "destination",
            "hostname",
            "nat",
            // Extension: missing replies are the router's ICMP rate limit.
            "rate_limited",
            "received",
            "rtt_ms",
            "sent",
            "ttl"
        ]
    );
}

fn assert_result_shape(result: &Value) {
    let mut keys: Vec<&str> = result
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "client",
            "destination_reached",
            "elapsed_ms",
            "family",
            "hops",
            "server"
        ]
    );
    for hop in result["hops"].as_array().unwrap() {
        assert_hop_shape(hop);
    }
}

// ---------------------------------------------------------------- routes

#[tokio::test]
async fn sse_streams_hops_then_done_without_buffering() {
    bounded(async {
        let gate = Gate::new();
        let tracer = FakeTracer::new(Mode::Run, Duration::from_millis(20), Some(gate.clone()));
        let server = spawn(args(|_| {}), tracer.clone()).await;
        let mut resp = client().get(server.url("/trace")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");

        // The trace is held after hop 1 until the gate opens: the first hop
        // event must reach us before that, or something buffers.
        let mut body = String::new();
        while !body.contains("event: hop") {
            let chunk = resp.chunk().await.unwrap().expect("stream ended early");
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(!body.contains("event: done"));
        gate.open();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }

        let events = parse_sse(&body);
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"done"), "{body}");
        assert!(
            names[..names.len() - 1].iter().all(|n| *n == "hop"),
            "{names:?}"
        );
        let hops: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        hops.iter().for_each(assert_hop_shape);
        let ttls: Vec<u64> = hops.iter().map(|h| h["ttl"].as_u64().unwrap()).collect();
        // Hop 1 twice (update), hop 2, hop 3, hop 3 again (hostname arrived).
        assert_eq!(ttls, [1, 1, 2, 3, 3], "{body}");
        assert_eq!(hops[0]["received"], 1);
        assert_eq!(hops[1]["hostname"], "gw.example");
        assert_eq!(hops[4]["hostname"], "you.example");
        let done: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
        assert_result_shape(&done);
        assert_eq!(done["hops"].as_array().unwrap().len(), 3);
        assert_eq!(tracer.starts.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn sse_reports_trace_errors() {
    bounded(async {
        let tracer = FakeTracer::new(Mode::FailDuring, Duration::from_millis(10), None);
        let server = spawn(args(|_| {}), tracer).await;
        let body = client()
            .get(server.url("/trace"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events = parse_sse(&body);
        let last = events.last().unwrap();
        assert_eq!(last.name, "error", "{body}");
        let data: Value = serde_json::from_str(&last.data).unwrap();
        assert_eq!(data["error"], "raw socket exploded");

        let resp = client()
            .get(server.url("/trace.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        let data: Value = resp.json().await.unwrap();
        assert_eq!(data["error"], "raw socket exploded");
    })
    .await;
}

#[tokio::test]
async fn trace_json_matches_the_contract() {
    bounded(async {
        let server = spawn(args(|_| {}), FakeTracer::quick()).await;
        let resp = client()
            .get(server.url("/trace.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let result: Value = resp.json().await.unwrap();
        assert_result_shape(&result);
        assert_eq!(result["family"], "ipv4");
        assert_eq!(result["destination_reached"], true);
        assert!(result["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(
            result["server"].as_str().unwrap(),
            server.http.unwrap().to_string()
        );
        let hops = result["hops"].as_array().unwrap();
        assert_eq!(hops.len(), 3);
        assert_eq!(hops[1]["addr"], Value::Null);
        assert_eq!(hops[2]["destination"], true);
        assert_eq!(hops[2]["addr"], "127.0.0.1");
    })
    .await;
}

#[tokio::test]
async fn root_is_html_for_browsers_and_text_for_curl() {
    bounded(async {
        let tracer = FakeTracer::quick();
        let server = spawn(args(|_| {}), tracer.clone()).await;
        let resp = client()
            .get(server.url("/"))
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(resp.headers()["vary"], "Accept");
        let page = resp.text().await.unwrap();
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("new EventSource(\"/trace\")"));
        assert!(!page.contains("src=\"http"), "no external resources");
        // The page itself starts no trace; its EventSource does.
        assert_eq!(tracer.starts.load(Ordering::SeqCst), 0);

        let resp = client()
            .get(server.url("/"))
            .header("accept", "*/*")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        let text = resp.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("netray: in-band traceroute from 127.0.0.1:"),
            "{text}"
        );
        assert!(
            lines[1].contains("TTL") && lines[1].contains("LOSS%"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("  1  gw.example (192.0.2.1)"),
            "{text}"
        );
        assert!(
            lines[2].contains("  0.0%    3    3     1.50     2.50     3.50"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("  2  *") && lines[3].contains("100.0%"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("  3  you.example (127.0.0.1)"),
            "{text}"
        );
        assert!(lines[4].ends_with("destination"), "{text}");
        assert_eq!(lines[5], "destination reached in 3 hops, 123 ms (ipv4)");
        assert_eq!(lines.len(), 6, "{text}");

        // q=0 means "not HTML".
        let resp = client()
            .get(server.url("/"))
            .header("accept", "text/html;q=0, text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    })
    .await;
}

#[tokio::test]
async fn healthz_metrics_and_errors() {
    bounded(async {
        let server = spawn(args(|_| {}), FakeTracer::quick()).await;
        let c = client();
        let resp = c.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok\n");
        assert_eq!(
            c.get(server.url("/trace.json"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            c.get(server.url("/nope")).send().await.unwrap().status(),
            404
        );
        let resp = c.post(server.url("/trace")).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, HEAD");

        let resp = c.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        for name in [
            "netray_traces_started_total 1",
            "netray_traces_completed_total 1",
            "netray_traces_failed_total 0",
            "netray_probes_sent_total 9",
            "netray_probes_held_back_total 0",
            "netray_icmp_matched_total 5",
            "netray_icmp_ignored_total 1",
            "netray_ringbuf_drops_total 0",
            "netray_http_requests_total{route=\"/trace.json\",status=\"200\"} 1",
            "netray_http_requests_total{route=\"other\",status=\"404\"} 1",
            "netray_http_requests_total{route=\"/trace\",status=\"405\"} 1",
            "netray_traces_refused_total{reason=\"rate\"} 0",
        ] {
            assert!(text.contains(name), "missing {name:?} in:\n{text}");
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_server_keeps_serving() {
    bounded(async {
        let server = spawn(args(|_| {}), FakeTracer::quick()).await;
        let addr = server.http.unwrap();
        let raw = tokio::task::spawn_blocking(move || {
            let mut replies = Vec::new();
            for garbage in [
                &b"GARBAGE\r\n\r\n"[..],
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                b"\x16\x03\x01\x00\x05hello\r\n\r\n",
            ] {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(garbage).unwrap();
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                replies.push(String::from_utf8_lossy(&reply).into_owned());
            }
            replies
        })
        .await
        .unwrap();
        for reply in raw {
            assert!(
                reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
                "{reply}"
            );
        }
        let resp = client().get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    bounded(async {
        let server = spawn(args(|_| {}), FakeTracer::quick()).await;
        init();
        let c = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let resp = c.get(server.url("/trace.json")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    })
    .await;
}

// ---------------------------------------------------------------- limits

async fn assert_429(resp: reqwest::Response, reason: &str) -> Option<String> {
    assert_eq!(resp.status(), 429);
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], reason, "{body}");
    assert!(!body["error"].as_str().unwrap().is_empty());
    retry
}

#[tokio::test]
async fn per_client_limit_refuses_new_traces_but_joining_is_free() {
    bounded(async {
        let gate = Gate::new();
        let tracer = FakeTracer::new(Mode::Run, Duration::from_millis(10), Some(gate.clone()));
        let server = spawn(args(|a| a.max_traces_per_client = 1), tracer.clone()).await;

        // One h2c connection holds the client's only trace.
        init();
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let mut first = h2.get(server.url("/trace")).send().await.unwrap();
        assert_eq!(first.status(), 200);
        let _ = first.chunk().await.unwrap();

        // A new connection from the same address is refused...
        let resp = fresh_client()
            .get(server.url("/trace.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(assert_429(resp, "per_client").await, None);
        let resp = fresh_client().get(server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.text().await.unwrap().contains("per-client limit 1"));

        // ...but a second request on the same connection joins its trace.
        let mut second = h2.get(server.url("/trace")).send().await.unwrap();
        assert_eq!(second.status(), 200);
        let _ = second.chunk().await.unwrap();
        assert_eq!(tracer.starts.load(Ordering::SeqCst), 1);

        // Still serving; and once the trace is over, the slot is free again.
        assert_eq!(
            fresh_client()
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        gate.open();
        assert!(second.text().await.unwrap().contains("event: done"));
        assert!(first.text().await.unwrap().contains("event: done"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let resp = fresh_client()
                .get(server.url("/trace.json"))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = client()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("netray_traces_refused_total{reason=\"per_client\"} 2"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn global_limit_applies_across_clients() {
    bounded(async {
        let gate = Gate::new();
        let tracer = FakeTracer::new(Mode::Run, Duration::from_millis(10), Some(gate.clone()));
        // The second client connects from 127.0.0.2 (all of 127/8 is local).
        let server = spawn(args(|a| a.max_traces = 1), tracer).await;
        let url =
            |host: &str, path: &str| format!("http://{host}:{}{path}", server.http.unwrap().port());
        let mut held = client()
            .get(url("127.0.0.1", "/trace"))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 200);
        let _ = held.chunk().await.unwrap();

        let other = reqwest::Client::builder()
            .no_proxy()
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let resp = other
            .get(url("127.0.0.1", "/trace.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(assert_429(resp, "global").await, None);
        assert_eq!(
            other
                .get(url("127.0.0.1", "/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        gate.open();
        assert!(held.text().await.unwrap().contains("event: done"));
    })
    .await;
}

#[tokio::test]
async fn rate_limit_refuses_with_retry_after() {
    bounded(async {
        let server = spawn(args(|a| a.rate_limit_per_minute = 2), FakeTracer::quick()).await;
        let c = fresh_client();
        for _ in 0..2 {
            assert_eq!(
                c.get(server.url("/trace.json"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        let resp = c.get(server.url("/trace.json")).send().await.unwrap();
        let retry: u64 = assert_429(resp, "rate")
            .await
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        let resp = c.get(server.url("/trace")).send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
        assert!(resp.text().await.unwrap().contains("rate limit"));
        assert_eq!(
            c.get(server.url("/healthz")).send().await.unwrap().status(),
            200
        );
    })
    .await;
}

#[tokio::test]
async fn engine_errors_map_to_statuses() {
    bounded(async {
        let cases: [(MakeError, u16); 3] = [
            (TraceError::Limited, 429),
            (TraceError::Unsupported, 422),
            (TraceError::Internal, 500),
        ];
        for (make, status) in cases {
            let server = spawn(
                args(|_| {}),
                FakeTracer::new(Mode::Refuse(make), Duration::ZERO, None),
            )
            .await;
            let resp = client()
                .get(server.url("/trace.json"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status);
            let body: Value = resp.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("fake refusal"),
                "{body}"
            );
            if status == 429 {
                assert_eq!(body["reason"], "engine");
            }
            let resp = client().get(server.url("/trace")).send().await.unwrap();
            assert_eq!(resp.status(), status);
            assert_eq!(
                client()
                    .get(server.url("/healthz"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------- TLS, IPv6

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("netray-serve-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and a leaf for localhost/127.0.0.1 signed by it:
/// (ca PEM, leaf PEM, leaf key PEM).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "netray test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn tls_client(root_pem: &str, resolve: Option<(&str, SocketAddr)>) -> reqwest::Client {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    init();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .use_preconfigured_tls(config);
    if let Some((name, addr)) = resolve {
        builder = builder.resolve(name, addr);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn http2_over_tls_shares_one_trace_per_connection() {
    bounded(async {
        let dir = TempDir::new("tls");
        let (ca, leaf, key) = test_pki();
        let (cert_path, key_path) = (dir.write("cert.pem", &leaf), dir.write("key.pem", &key));
        let tracer = FakeTracer::new(Mode::Run, Duration::from_millis(50), None);
        let server = spawn(
            args(|a| {
                a.https = Some("127.0.0.1:0".parse().unwrap());
                a.tls_cert = Some(cert_path);
                a.tls_key = Some(key_path);
            }),
            tracer.clone(),
        )
        .await;
        let https = server.https.unwrap();
        let c = tls_client(&ca, Some(("localhost", https)));
        let base = format!("https://localhost:{}", https.port());
        // Establish the (single) HTTP/2 connection first.
        let resp = c.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.text().await.unwrap(), "ok\n");

        let (json, sse) = tokio::join!(
            async { c.get(format!("{base}/trace.json")).send().await.unwrap() },
            async { c.get(format!("{base}/trace")).send().await.unwrap() },
        );
        assert_eq!(json.version(), reqwest::Version::HTTP_2);
        assert_eq!(sse.version(), reqwest::Version::HTTP_2);
        let (json, sse) = tokio::join!(json.text(), sse.text());
        let json: Value = serde_json::from_str(&json.unwrap()).unwrap();
        let sse = sse.unwrap();
        let done: Value = serde_json::from_str(&parse_sse(&sse).last().unwrap().data).unwrap();
        assert_eq!(json, done, "both requests see the same trace");

        let calls = tracer.calls();
        assert_eq!(calls.len(), 1, "one connection: {calls:?}");
        assert_eq!(calls.values().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(tracer.starts.load(Ordering::SeqCst), 1);

        // HTTP/1.1 over TLS works too (ALPN fallback).
        init();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let mut h1 = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let c1 = reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls(h1)
            .resolve("localhost", https)
            .build()
            .unwrap();
        let resp = c1.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        assert_eq!(resp.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn ipv6_listener_and_v4_mapped_peers() {
    bounded(async {
        let v6: SocketAddr = "[::1]:0".parse().unwrap();
        assert!(
            std::net::TcpListener::bind(v6).is_ok(),
            "IPv6 loopback is required (netray serves IPv6)"
        );
        let tracer = FakeTracer::quick();
        let server = spawn(args(|a| a.http = Some(v6)), tracer.clone()).await;
        let result: Value = client()
            .get(server.url("/trace.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            result["client"].as_str().unwrap().starts_with("[::1]:"),
            "{result}"
        );
        assert_eq!(result["family"], "ipv6");
        drop(server);

        // A dual-stack listener reports IPv4 peers as plain IPv4.
        let any: SocketAddr = "[::]:0".parse().unwrap();
        let tracer = FakeTracer::quick();
        let server = spawn(args(|a| a.http = Some(any)), tracer.clone()).await;
        let url = format!(
            "http://127.0.0.1:{}/trace.json",
            server.http.unwrap().port()
        );
        let resp = client().get(url).send().await;
        let resp = resp.expect("a [::] listener accepts IPv4 clients (net.ipv6.bindv6only=0)");
        let result: Value = resp.json().await.unwrap();
        assert!(
            result["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{result}"
        );
        assert!(
            result["server"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{result}"
        );
        assert!(tracer.calls().keys().all(SocketAddr::is_ipv4));
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting() {
    bounded(async {
        let server = spawn(args(|_| {}), FakeTracer::quick()).await;
        let addr = server.http.unwrap();
        assert_eq!(
            client()
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let took = server.stop().await;
        assert!(took < Duration::from_secs(8), "{took:?}");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting"
        );
    })
    .await;
}

// ---------------------------------------------------------------- flags

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn from_cli(argv: &[&str]) -> anyhow::Result<ServeConfig> {
    let cli = Cli::try_parse_from(std::iter::once("netray").chain(argv.iter().copied()))?;
    ServeConfig::from_args(cli.serve)
}

fn error_of(argv: &[&str]) -> String {
    format!("{:#}", from_cli(argv).expect_err("should fail"))
}

#[test]
fn flags_defaults_and_pass_through() {
    let config = from_cli(&[
        "--http",
        "[::]:8080",
        "--interface",
        "eth0",
        "--interface",
        "eth1",
    ])
    .unwrap();
    assert_eq!(config.http, Some("[::]:8080".parse().unwrap()));
    assert_eq!(config.engine.interfaces, ["eth0", "eth1"]);
    assert_eq!(config.engine.max_hops, 30);
    assert_eq!(config.engine.probes, 3);
    assert_eq!(config.limits.max_traces_per_client, 4);
    assert_eq!(config.limits.max_traces, 256);
    assert_eq!(config.limits.rate_limit_per_minute, 60);
    let config = from_cli(&["--http", "0.0.0.0:80", "--max-hops", "64", "--probes", "10"]).unwrap();
    assert_eq!((config.engine.max_hops, config.engine.probes), (64, 10));
}

#[test]
fn bad_flags_give_clear_errors() {
    assert!(error_of(&[]).contains("--http"));
    let e = error_of(&["--https", "0.0.0.0:443"]);
    assert!(
        e.contains("--tls-cert") && e.contains("--tls-key") && e.contains("--acme-domain"),
        "{e}"
    );
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--tls-cert",
        "/nonexistent/cert.pem",
    ]);
    assert!(e.contains("--tls-cert needs --tls-key"), "{e}");
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(e.contains("--tls-key needs --tls-cert"), "{e}");
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(
        e.contains("cannot read --tls-cert file /nonexistent/cert.pem"),
        "{e}"
    );
    let e = error_of(&["--http", "0.0.0.0:80", "--tls-cert", "a", "--tls-key", "b"]);
    assert!(e.contains("--https"), "{e}");
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--tls-cert",
        "a",
        "--tls-key",
        "b",
        "--acme-domain",
        "x.example",
    ]);
    assert!(e.contains("mutually exclusive"), "{e}");
    let e = error_of(&["--http", "0.0.0.0:80", "--acme-cache", "/tmp/x"]);
    assert!(e.contains("need --acme-domain"), "{e}");
    let e = error_of(&["--https", "0.0.0.0:443", "--acme-domain", "*.example.com"]);
    assert!(e.contains("wildcard"), "{e}");
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--acme-domain",
        "a.example",
        "--acme-directory",
        "http://x/dir",
    ]);
    assert!(
        e.contains("--acme-directory must be an https:// URL"),
        "{e}"
    );
    let e = error_of(&[
        "--https",
        "0.0.0.0:443",
        "--acme-domain",
        "a.example",
        "--acme-contact",
        "nobody",
    ]);
    assert!(e.contains("--acme-contact"), "{e}");
    assert!(error_of(&["--http", "0.0.0.0:80", "--max-hops", "0"]).contains("--max-hops"));
    assert!(error_of(&["--http", "0.0.0.0:80", "--max-hops", "65"]).contains("--max-hops"));
    assert!(error_of(&["--http", "0.0.0.0:80", "--probes", "11"]).contains("--probes"));
    assert!(error_of(&["--http", "0.0.0.0:80", "--max-traces", "0"]).contains("--max-traces"));
    assert!(error_of(&["--http", "nonsense"]).contains("--http"));
    assert!(error_of(&["--http", "0.0.0.0:80", "--interface", "a/b"]).contains("--interface"));

    // Programmatic construction is validated too (no clap ranges there).
    let e = ServeConfig::from_args(args(|a| a.probes = 0)).unwrap_err();
    assert!(e.to_string().contains("--probes"), "{e}");
    let e = ServeConfig::from_args(args(|a| a.rate_limit_per_minute = 0)).unwrap_err();
    assert!(e.to_string().contains("--rate-limit-per-minute"), "{e}");
}

#[test]
fn tls_files_are_checked_at_start() {
    let dir = TempDir::new("flags");
    let (_, leaf, key) = test_pki();
    let (_, _, other_key) = test_pki();
    let cert = dir.write("cert.pem", &leaf);
    let key_path = dir.write("key.pem", &key);
    let other = dir.write("other.pem", &other_key);
    let empty = dir.write("empty.pem", "");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let ok = from_cli(&[
        "--https",
        "127.0.0.1:0",
        "--tls-cert",
        &p(&cert),
        "--tls-key",
        &p(&key_path),
    ])
    .unwrap();
    assert!(matches!(ok.tls, Some(TlsSource::Files { .. })));
    let e = format!(
        "{:#}",
        from_cli(&[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &p(&empty),
            "--tls-key",
            &p(&key_path)
        ])
        .unwrap_err()
    );
    assert!(
        e.contains("contains no PEM certificate") && e.contains("empty.pem"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        from_cli(&[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &p(&cert),
            "--tls-key",
            &p(&cert)
        ])
        .unwrap_err()
    );
    assert!(e.contains("--tls-key") && e.contains("private key"), "{e}");
    let e = format!(
        "{:#}",
        from_cli(&[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &p(&cert),
            "--tls-key",
            &p(&other)
        ])
        .unwrap_err()
    );
    assert!(e.contains("do not form a usable certificate"), "{e}");
}

// ---------------------------------------------------------------- ACME

/// A pebble ACME server, killed on drop.
struct Pebble {
    child: Child,
    log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_from_pebble() {
    let pebble_bin = Path::new("/usr/bin/pebble");
    assert!(
        pebble_bin.exists(),
        "pebble is not installed: run `cargo xtask setup`"
    );
    bounded(async {
        let dir = TempDir::new("acme");
        // pebble's own HTTPS (the ACME directory) uses a CA made here.
        let (ca, leaf, key) = test_pki();
        let ca_path = dir.write("ca.pem", &ca);
        let pebble_cert = dir.write("pebble-cert.pem", &leaf);
        let pebble_key = dir.write("pebble-key.pem", &key);
        let (acme_port, mgmt_port) = (free_port(), free_port());

        let config = ServeConfig::from_args(ServeArgs {
            https: Some("127.0.0.1:0".parse().unwrap()),
            acme_domains: vec!["localhost".into()],
            acme_directory: Some(format!("https://127.0.0.1:{acme_port}/dir")),
            acme_ca_cert: Some(ca_path),
            acme_cache: Some(dir.0.join("cache")),
            acme_contacts: vec!["admin@netray.test".into()],
            ..ServeArgs::default()
        })
        .unwrap();
        let server = Server::bind(config).await.unwrap();
        let https = server.local_https_addr().unwrap();

        // pebble validates TLS-ALPN-01 by connecting to <domain>:tlsPort:
        // "localhost" resolves to us, and tlsPort is our bound port.
        let pebble_config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": pebble_cert,
                "privateKey": pebble_key,
                "httpPort": free_port(),
                "tlsPort": https.port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.write("pebble.json", &pebble_config.to_string());
        let log = dir.0.join("pebble.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let pebble = Pebble {
            child: Command::new(pebble_bin)
                .arg("-config")
                .arg(&config_path)
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("start pebble"),
            log,
        };
        let pebble_log = || std::fs::read_to_string(&pebble.log).unwrap_or_default();
        let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", mgmt_port))
            .await
            .is_err()
            || tokio::net::TcpStream::connect(("127.0.0.1", acme_port))
                .await
                .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(FakeTracer::quick(), async {
            let _ = stop_rx.await;
        }));

        // pebble's issuing root (random per run) from its management API.
        let mgmt = tls_client(&ca, None);
        let root = mgmt
            .get(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(root.contains("BEGIN CERTIFICATE"), "{root}");

        // Until the certificate is issued, handshakes fail; then they work.
        let c = tls_client(&root, Some(("localhost", https)));
        let url = format!("https://localhost:{}/healthz", https.port());
        let deadline = Instant::now() + Duration::from_secs(45);
        let resp = loop {
            match c.get(&url).send().await {
                Ok(resp) => break resp,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no certificate from pebble: {e:?}\npebble log:\n{}",
                        pebble_log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok\n");
        // The account and certificate landed in the cache directory.
        let cached: Vec<_> = std::fs::read_dir(dir.0.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            cached.iter().any(|n| n.starts_with("cached_cert_")),
            "{cached:?}"
        );
        let _ = stop_tx.send(());
        serving.await.unwrap().unwrap();
        drop(pebble);
    })
    .await;
}

// ---------------------------------------------------------------- --user

#[test]
fn unknown_user_is_a_clear_error_before_any_setup() {
    let out = Command::new(env!("CARGO_BIN_EXE_netray"))
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--user",
            "netray-no-such-user",
        ])
        .output()
        .expect("run netray");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--user netray-no-such-user: no such user"),
        "{stderr}"
    );
}

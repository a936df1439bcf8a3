//! Traceroute tools on paths with real round trips (a benchmark, not a
//! test: it prints figures and asserts nothing about speed). Needs netem,
//! which only the kernel-matrix guests have here: `cargo xtask bench` runs
//! it in a Debian 6.1 guest; without netem it says so and exits 0.
//!
//! The path: client, 8 routers, server, every link delayed 5 ms each way
//! (a 90 ms round trip to the server), a TCP service on the server. Cases:
//! (a) as is; (b) router 4 silent (sends no ICMP); (c) 2 % loss each way on
//! the middle link (link 4, between routers 4 and 5); (d) 20 ms each way on
//! the first link (40 ms to the first hop).
//!
//! Tools, side by side in interleaved rounds (round r runs every tool once,
//! the order rotated by r; `NETRAY_BENCH_ROUNDS`, default 5), 3 probes per
//! hop where the tool has the option:
//! - `netray trace -n --json` from the client to the service;
//! - `netray serve` on the server, the client fetching `/trace.json` (the
//!   server traces the path back to the client inside that connection);
//! - `traceroute -T` (Debian `traceroute`, TCP SYN probes);
//! - `mtr --report --tcp -c 3` (Debian `mtr-tiny`);
//! - `scamper` (Debian `scamper`) `trace -P tcp -q 3 -Q`, JSON output;
//! - trippy's `trip` in TCP mode, 3 rounds, JSON report (installed from
//!   crates.io into `target/tools` by `cargo xtask bench`; left out, and
//!   said so, when missing; `NETRAY_BENCH_TRIP` names another binary).
//!
//! For each: wall time (process start to exit, `ip netns exec` included; for
//! `netray serve` the HTTP fetch), probing time where the tool reports it
//! (netray's `elapsed_ms`: first probe to result), the probes the tool says
//! it sent, the packets with a TTL below 64 entering the first router from
//! the tracing host (an nftables counter there: every probe of every tool,
//! whatever socket sent it, and none of a connection's own packets, which
//! hosts send with 64; trippy's TCP probes are connect() calls, so its
//! count also holds the ACK and FIN its kernel sends, with the probe's TTL,
//! when a probe reaches the server), and whether its hop list (first
//! responder per TTL) is the path.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netray_testbed::{Family, Netns, RouterBehavior, Side, Spawned, Testbed, Topology, http};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const ROUTERS: usize = 8;
const LINK_DELAY: Duration = Duration::from_millis(5);
/// `netray serve`'s HTTP port on the server.
const SERVE_PORT: u16 = 8080;
/// A run of one tool that takes longer is stopped and reported as such.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// Probes per hop asked of every tool.
const PROBES_PER_HOP: &str = "3";

/// Accepts connections in the server namespace and holds them open until
/// the client closes them (stopped on drop).
struct Service {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    fn start(testbed: &Testbed) -> Service {
        let listener = testbed
            .server()
            .run(|| TcpListener::bind("[::]:0"))
            .expect("server namespace")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("port").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(true);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
                // Connections the client has closed (or reset) are let go:
                // trippy's probes alone open dozens per run.
                held.retain(|s: &std::net::TcpStream| {
                    let mut byte = [0u8; 1];
                    match s.peek(&mut byte) {
                        Ok(n) => n > 0,
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    }
                });
            }
        });
        Service {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `netray serve` on the server, up once `/healthz` answers.
fn start_serve(testbed: &Testbed) -> Spawned {
    let listen = format!("[::]:{SERVE_PORT}");
    let mut process = testbed
        .server()
        .spawn(&[
            NETRAY,
            "serve",
            "--http",
            &listen,
            "--max-traces-per-client",
            "1000",
            "--max-traces",
            "1000",
            "--rate-limit-per-minute",
            "1000000",
        ])
        .unwrap_or_else(|e| panic!("cannot start netray serve: {e:#}"));
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), SERVE_PORT);
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    while !testbed
        .client()
        .run(move || http::get(addr, "/healthz", "*/*", Duration::from_secs(2)))
        .expect("client namespace")
        .is_ok_and(|r| r.status == 200)
    {
        if let Ok(Some(status)) = process.child().try_wait() {
            panic!("netray serve exited before it was up: {status}");
        }
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    process
}

/// Points the resolver of the processes started in a namespace (through
/// `ip netns exec`, which bind-mounts `/etc/netns/NAME/resolv.conf` over
/// `/etc/resolv.conf`) at the namespace's own loopback, where nothing
/// listens: reverse lookups fail at once instead of waiting out timeouts
/// on queries that can only wander along the chain. trippy has no numeric
/// mode (it resolved every hop, 93 s for 3 rounds here without this), and
/// `netray serve` names its hops. The others are run with `-n`.
struct LocalResolver {
    dir: PathBuf,
}

impl LocalResolver {
    fn install(ns: &Netns) -> LocalResolver {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap_or_else(|e| panic!("writing {}/resolv.conf: {e}", dir.display()));
        LocalResolver { dir }
    }
}

impl Drop for LocalResolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts what goes on the wire with a low TTL: IP packets with a TTL (hop limit) below 64
/// that router `k` receives on link `link`, i.e. from the tracing host next
/// to it. Hosts send their own packets with 64; only traceroute probes
/// (and what a tool's TCP socket with a lowered TTL sends) go lower.
struct WireCounter<'a> {
    router: &'a Netns,
}

const COUNTER_TABLE: &str = "netray_bench";

impl<'a> WireCounter<'a> {
    fn install(testbed: &'a Testbed, k: usize, link: usize) -> WireCounter<'a> {
        let router = testbed.router(k);
        let ifname = netray_testbed::link_ifname(link);
        let ruleset = format!(
            "table inet {COUNTER_TABLE} {{\n\
             counter probes {{ }}\n\
             chain pre {{\n\
             type filter hook prerouting priority -400; policy accept;\n\
             iifname \"{ifname}\" ip ttl < 64 counter name \"probes\"\n\
             iifname \"{ifname}\" ip6 hoplimit < 64 counter name \"probes\"\n\
             }}\n}}\n"
        );
        let mut child = router
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing the ruleset to nft");
        let status = child.wait().expect("nft");
        assert!(
            status.success(),
            "cannot install the probe counter in router {k}: nft {status}"
        );
        WireCounter { router }
    }

    /// Packets counted since the last call (reads and resets).
    fn take(&self) -> u64 {
        let out = self
            .router
            .exec(&["nft", "reset", "counter", "inet", COUNTER_TABLE, "probes"])
            .unwrap_or_else(|e| panic!("reading the probe counter: {e:#}"));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in nft's output: {text}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    NetrayTrace,
    NetrayServe,
    Traceroute,
    Mtr,
    Scamper,
    Trippy,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::NetrayTrace => "netray trace",
            Tool::NetrayServe => "netray serve (fetch)",
            Tool::Traceroute => "traceroute -T",
            Tool::Mtr => "mtr --tcp -c 3",
            Tool::Scamper => "scamper tcp -q3 -Q",
            Tool::Trippy => "trippy tcp, 3 rounds",
        }
    }
}

/// One run of one tool.
#[derive(Debug, Default)]
struct Run {
    wall: Duration,
    /// The tool's own probing time (first probe to result), ms.
    probing: Option<f64>,
    /// Probes the tool says it sent.
    tool_probes: Option<u64>,
    /// Packets with a TTL below 64 counted on the wire (see [`WireCounter`]).
    wire_probes: u64,
    /// First responder per TTL.
    hops: Vec<Option<IpAddr>>,
    /// Why the run gave no usable result, if so.
    error: Option<String>,
}

/// What a child process left behind.
struct Finished {
    wall: Duration,
    stdout: String,
    stderr: String,
    status: String,
}

/// Runs `cmd` (stdin null, stdout and stderr captured) and times it,
/// killing it after [`TOOL_TIMEOUT`].
fn timed(mut cmd: Command) -> Finished {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if started.elapsed() > TOOL_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after {} s", TOOL_TIMEOUT.as_secs());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => break format!("wait failed: {e}"),
        }
    };
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Finished {
        wall,
        stdout,
        stderr,
        status,
    }
}

/// A one-line digest of why a tool's output could not be read.
fn failure(what: &str, f: &Finished) -> String {
    let stderr: String = f
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect();
    format!("{what} ({}; stderr: {stderr})", f.status)
}

fn json_hops(result: &Value) -> Vec<Option<IpAddr>> {
    result["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|h| h["addr"].as_str().and_then(|a| a.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn json_sent(result: &Value) -> Option<u64> {
    result["hops"]
        .as_array()
        .map(|hops| hops.iter().filter_map(|h| h["sent"].as_u64()).sum())
}

fn netray_trace(testbed: &Testbed, dest: &str) -> Run {
    let mut cmd = testbed.client().command(NETRAY);
    cmd.args(["trace", "-n", "--json", dest]);
    let f = timed(cmd);
    let Ok(result) = serde_json::from_str::<Value>(f.stdout.trim()) else {
        return Run {
            wall: f.wall,
            error: Some(failure("no JSON result", &f)),
            ..Run::default()
        };
    };
    Run {
        wall: f.wall,
        probing: result["elapsed_ms"].as_f64(),
        tool_probes: json_sent(&result),
        hops: json_hops(&result),
        ..Run::default()
    }
}

fn netray_serve(testbed: &Testbed) -> Run {
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), SERVE_PORT);
    let started = Instant::now();
    let response = testbed
        .client()
        .run(move || http::get(addr, "/trace.json", "*/*", TOOL_TIMEOUT))
        .expect("client namespace");
    let wall = started.elapsed();
    let result = match response {
        Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
            .map_err(|e| format!("GET /trace.json: not JSON: {e}")),
        Ok(r) => Err(format!("GET /trace.json: status {}", r.status)),
        Err(e) => Err(format!("GET /trace.json: {e}")),
    };
    match result {
        Ok(result) => Run {
            wall,
            probing: result["elapsed_ms"].as_f64(),
            tool_probes: json_sent(&result),
            hops: json_hops(&result),
            ..Run::default()
        },
        Err(e) => Run {
            wall,
            error: Some(e),
            ..Run::default()
        },
    }
}

/// `traceroute -T`: one line per TTL after the header; the first address
/// on a line is the first responder (`*` lines have none).
fn traceroute(testbed: &Testbed, server: &str, port: &str) -> Run {
    let mut cmd = testbed.client().command("traceroute");
    cmd.args(["-T", "-n", "-q", PROBES_PER_HOP, "-p", port, server]);
    let f = timed(cmd);
    let hops: Vec<Option<IpAddr>> = f
        .stdout
        .lines()
        .skip(1)
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .find_map(|word| word.parse::<IpAddr>().ok())
        })
        .collect();
    let error = hops.is_empty().then(|| failure("no hop lines", &f));
    Run {
        wall: f.wall,
        // Printed hops times the probes per hop; traceroute sends up to 16
        // probes at once, so it may send more (for TTLs past the server)
        // than it prints: the wire count tells.
        tool_probes: Some(hops.len() as u64 * 3),
        hops,
        error,
        ..Run::default()
    }
}

/// `mtr --report`: `  1.|-- 10.0.0.2  0.0%  3  0.1 ...` (`???` for
/// silence); the column after `Loss%` is `Snt`, probes sent to that TTL.
fn mtr(testbed: &Testbed, server: &str, port: &str) -> Run {
    let mut cmd = testbed.client().command("mtr");
    cmd.args([
        "--report",
        "--tcp",
        "-P",
        port,
        "-n",
        "-c",
        PROBES_PER_HOP,
        server,
    ]);
    let f = timed(cmd);
    let mut hops = Vec::new();
    let mut sent = 0;
    for line in f.stdout.lines().filter(|l| l.contains("|--")) {
        let mut words = line.split("|--").nth(1).unwrap_or("").split_whitespace();
        hops.push(words.next().and_then(|a| a.parse().ok()));
        sent += words
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let error = hops.is_empty().then(|| failure("no report lines", &f));
    Run {
        wall: f.wall,
        tool_probes: Some(sent),
        hops,
        error,
        ..Run::default()
    }
}

/// Hop list of a scamper or trippy trace: for each TTL from 1 to the
/// highest one that answered, the first responder.
fn by_ttl(replies: impl Iterator<Item = (usize, Option<IpAddr>)>) -> Vec<Option<IpAddr>> {
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for (ttl, addr) in replies {
        let Some(addr) = addr else { continue };
        if ttl == 0 {
            continue;
        }
        if hops.len() < ttl {
            hops.resize(ttl, None);
        }
        hops[ttl - 1].get_or_insert(addr);
    }
    hops
}

/// `scamper -O json -c "trace -P tcp -d PORT -q 3 -Q" -i SERVER`: one JSON
/// object per line; the trace's has `"type":"trace"`, `probe_count` and
/// `hops` (one entry per reply, with `probe_ttl` and `addr`).
fn scamper(testbed: &Testbed, server: &str, port: &str) -> Run {
    let mut cmd = testbed.client().command("scamper");
    let trace = format!("trace -P tcp -d {port} -q {PROBES_PER_HOP} -Q");
    cmd.args(["-O", "json", "-c", &trace, "-i", server]);
    let f = timed(cmd);
    let trace = f
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "trace");
    let Some(trace) = trace else {
        return Run {
            wall: f.wall,
            error: Some(failure("no trace object", &f)),
            ..Run::default()
        };
    };
    let replies = trace["hops"].as_array().cloned().unwrap_or_default();
    Run {
        wall: f.wall,
        tool_probes: trace["probe_count"].as_u64(),
        hops: by_ttl(replies.iter().map(|r| {
            (
                r["probe_ttl"].as_u64().unwrap_or(0) as usize,
                r["addr"].as_str().and_then(|a| a.parse().ok()),
            )
        })),
        ..Run::default()
    }
}

/// trippy's binary: `NETRAY_BENCH_TRIP`, else `target/tools/bin/trip`
/// (where `cargo xtask bench` installs it).
fn trippy_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("NETRAY_BENCH_TRIP") {
        return Some(PathBuf::from(path));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/trip");
    path.exists().then_some(path)
}

/// `trip --mode json`: `hops` with `ttl`, `hosts` (`ip`) and `sent`, and
/// the report's start and end timestamps (its probing time).
fn trippy(testbed: &Testbed, trip: &str, server: &str, port: &str) -> Run {
    let mut cmd = testbed.client().command(trip);
    cmd.args([
        "--mode",
        "json",
        "--protocol",
        "tcp",
        "--target-port",
        port,
        "--report-cycles",
        PROBES_PER_HOP,
        server,
    ]);
    let f = timed(cmd);
    let Ok(report) = serde_json::from_str::<Value>(f.stdout.trim()) else {
        return Run {
            wall: f.wall,
            error: Some(failure("no JSON report", &f)),
            ..Run::default()
        };
    };
    let hops = report["hops"].as_array().cloned().unwrap_or_default();
    let stamp = |key: &str| report["info"][key].as_str().and_then(seconds_of_day);
    let probing = match (stamp("start_timestamp"), stamp("end_timestamp")) {
        // Across midnight the end is on the next day.
        (Some(start), Some(end)) => Some((end - start).rem_euclid(86_400.0) * 1e3),
        _ => None,
    };
    Run {
        wall: f.wall,
        probing,
        tool_probes: Some(hops.iter().filter_map(|h| h["sent"].as_u64()).sum()),
        hops: by_ttl(hops.iter().map(|h| {
            (
                h["ttl"].as_u64().unwrap_or(0) as usize,
                h["hosts"]
                    .as_array()
                    .and_then(|hosts| hosts.first())
                    .and_then(|host| host["ip"].as_str())
                    .and_then(|a| a.parse().ok()),
            )
        })),
        ..Run::default()
    }
}

/// Seconds since midnight of an RFC 3339 UTC timestamp
/// (`2026-12-07T20:11:31.954647686Z`).
fn seconds_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.splitn(3, ':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// One case of the benchmark.
struct Case {
    name: &'static str,
    silent: Option<usize>,
    /// Link and percentage.
    loss: Option<(usize, u8)>,
    /// One-way delay of link 0 (the others have [`LINK_DELAY`]).
    first_link: Duration,
}

fn show(path: &[Option<IpAddr>]) -> String {
    if path.is_empty() {
        return "(none)".into();
    }
    path.iter()
        .map(|h| h.map_or("*".to_string(), |a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median (the lower middle for an even count), min and max.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[(v.len() - 1) / 2], v[0], v[v.len() - 1]))
}

fn cell(values: &[f64]) -> String {
    match spread(values) {
        Some((median, min, max)) => format!("{median:7.0} ({min:.0}..{max:.0})"),
        None => format!("{:>7}", "-"),
    }
}

fn run_case(case: &Case, tools: &[Tool], trip: Option<&str>, rounds: usize) {
    let mut topology = Topology::chain(ROUTERS);
    for link in 0..=ROUTERS {
        let delay = if link == 0 {
            case.first_link
        } else {
            LINK_DELAY
        };
        topology = topology.delay(link, delay, Duration::ZERO);
    }
    if let Some(k) = case.silent {
        topology = topology.router(k, RouterBehavior::Silent);
    }
    if let Some((link, percent)) = case.loss {
        topology = topology.loss(link, percent);
    }
    let testbed = topology.build().unwrap_or_else(|e| {
        panic!(
            "cannot build the testbed for case {:?} ({ROUTERS} routers, netem delays): {e:#}",
            case.name
        )
    });
    let _resolvers = [
        LocalResolver::install(testbed.client()),
        LocalResolver::install(testbed.server()),
    ];
    let service = Service::start(&testbed);
    let _serve = start_serve(&testbed);
    // Probes from the client enter router 1 over link 0; those of the
    // server (netray serve) enter router N over link N.
    let client_side = WireCounter::install(&testbed, 1, 0);
    let server_side = WireCounter::install(&testbed, ROUTERS, ROUTERS);

    let silent: Vec<usize> = case.silent.into_iter().collect();
    let forward: Vec<Option<IpAddr>> = (1..=ROUTERS)
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Client, Family::V4)))
        .chain([Some(testbed.server_addr(Family::V4))])
        .collect();
    let backward: Vec<Option<IpAddr>> = (1..=ROUTERS)
        .rev()
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Server, Family::V4)))
        .chain([Some(testbed.client_addr(Family::V4))])
        .collect();
    let rtt_ms = 2.0 * (ms(case.first_link) + ROUTERS as f64 * ms(LINK_DELAY));
    println!("case {}", case.name);
    println!(
        "  {ROUTERS} routers; netem alone: {:.0} ms RTT to the first hop, {rtt_ms:.0} ms to the server",
        2.0 * ms(case.first_link)
    );
    println!("  expected, client -> server: {}", show(&forward));
    println!(
        "  expected, server -> client (netray serve): {}",
        show(&backward)
    );

    let server = testbed.server_addr(Family::V4).to_string();
    let port = service.port.to_string();
    let dest = format!("{server}:{port}");
    let mut runs: Vec<Vec<Run>> = tools.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in 0..tools.len() {
            let t = (i + round) % tools.len();
            let tool = tools[t];
            let counter = if tool == Tool::NetrayServe {
                &server_side
            } else {
                &client_side
            };
            counter.take();
            let mut run = match tool {
                Tool::NetrayTrace => netray_trace(&testbed, &dest),
                Tool::NetrayServe => netray_serve(&testbed),
                Tool::Traceroute => traceroute(&testbed, &server, &port),
                Tool::Mtr => mtr(&testbed, &server, &port),
                Tool::Scamper => scamper(&testbed, &server, &port),
                Tool::Trippy => trippy(&testbed, trip.expect("trippy's path"), &server, &port),
            };
            run.wire_probes = counter.take();
            if let Some(error) = &run.error {
                eprintln!("  round {round}: {}: {error}", tool.label());
            }
            runs[t].push(run);
        }
    }

    println!(
        "  {:<21} {:>22} {:>22} {:>22} {:>11} {:>11} {:>6}",
        "tool",
        "wall ms med (min..max)",
        "probing ms",
        "start-up ms",
        "probes tool",
        "TTL<64 pkts",
        "exact"
    );
    for (t, tool) in tools.iter().enumerate() {
        let runs = &runs[t];
        let want = if *tool == Tool::NetrayServe {
            &backward
        } else {
            &forward
        };
        let walls: Vec<f64> = runs.iter().map(|r| ms(r.wall)).collect();
        let probing: Vec<f64> = runs.iter().filter_map(|r| r.probing).collect();
        let startup: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.probing.map(|p| ms(r.wall) - p))
            .collect();
        let tool_probes: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.tool_probes.map(|n| n as f64))
            .collect();
        let wire: Vec<f64> = runs.iter().map(|r| r.wire_probes as f64).collect();
        let exact = runs.iter().filter(|r| r.hops == *want).count();
        println!(
            "  {:<21} {:>22} {:>22} {:>22} {:>11} {:>11} {:>6}",
            tool.label(),
            cell(&walls),
            cell(&probing),
            cell(&startup),
            spread(&tool_probes).map_or("-".into(), |(m, _, _)| format!("{m:.0}")),
            spread(&wire).map_or("-".into(), |(m, _, _)| format!("{m:.0}")),
            format!("{exact}/{}", runs.len()),
        );
    }
    // The hop lists that were not the path, each once.
    for (t, tool) in tools.iter().enumerate() {
        let want = if *tool == Tool::NetrayServe {
            &backward
        } else {
            &forward
        };
        let mut seen: Vec<&Vec<Option<IpAddr>>> = Vec::new();
        for run in runs[t].iter().filter(|r| r.hops != *want) {
            if seen.contains(&&run.hops) {
                continue;
            }
            seen.push(&run.hops);
            let n = runs[t].iter().filter(|r| r.hops == run.hops).count();
            let why = run
                .error
                .as_deref()
                .map(|e| format!(" [{e}]"))
                .unwrap_or_default();
            println!(
                "  {} differs ({n}x): {}{why}",
                tool.label(),
                show(&run.hops)
            );
        }
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let rounds = std::env::var("NETRAY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(5);
    println!(
        "traceroute tools on delayed paths: {ROUTERS} routers, {} ms each way per link (netem), \
         a TCP service on the server, 3 probes per hop, {rounds} interleaved rounds",
        ms(LINK_DELAY)
    );
    if !netray_testbed::netem_available() {
        println!(
            "no netem (sch_netem) in this kernel: nothing to measure here; `cargo xtask bench` \
             runs this benchmark in a Debian 6.1 guest, which has it"
        );
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    println!(
        "columns: median (min..max) over the rounds. wall: process start to exit, `ip netns \
         exec` included (netray serve: the client's GET /trace.json); probing: the tool's own \
         first probe to result (netray's elapsed_ms, trippy's report timestamps); start-up: \
         wall - probing; probes tool: what the tool says it sent (netray: sum of hops' sent; \
         traceroute: 3 per printed hop; mtr: sum of Snt; scamper: probe_count; trippy: sum of \
         sent); TTL<64 pkts: packets with a TTL below 64 from the tracing host, counted at the \
         first router: every probe, however sent, and for trippy also the ACK and FIN that its \
         connect() probes' sockets send with the probe's TTL after the server's SYN-ACK \
         (medians); exact: runs whose hop list is the path"
    );

    let mut tools = vec![
        Tool::NetrayTrace,
        Tool::NetrayServe,
        Tool::Traceroute,
        Tool::Mtr,
    ];
    let have = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for program in ["traceroute", "mtr"] {
        assert!(
            have(program),
            "{program} is missing (`cargo xtask setup` installs it)"
        );
    }
    if have("scamper") {
        tools.push(Tool::Scamper);
    } else {
        println!(
            "scamper: not installed (Debian package `scamper`; `cargo xtask setup` installs it): left out"
        );
    }
    let trip = trippy_binary().map(|p| p.to_string_lossy().into_owned());
    match &trip {
        Some(path) => {
            tools.push(Tool::Trippy);
            let version = Command::new(path)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            println!("trippy: {path} ({version})");
        }
        None => println!(
            "trippy: not installed (`cargo xtask bench` installs it into target/tools; \
             NETRAY_BENCH_TRIP names another binary): left out"
        ),
    }
    println!();

    let cases = [
        Case {
            name: "(a) no silent hop",
            silent: None,
            loss: None,
            first_link: LINK_DELAY,
        },
        Case {
            name: "(b) router 4 silent",
            silent: Some(4),
            loss: None,
            first_link: LINK_DELAY,
        },
        Case {
            name: "(c) 2 % loss each way on link 4 (routers 4-5)",
            silent: None,
            loss: Some((4, 2)),
            first_link: LINK_DELAY,
        },
        Case {
            name: "(d) 20 ms each way on link 0 (40 ms RTT to the first hop)",
            silent: None,
            loss: None,
            first_link: Duration::from_millis(20),
        },
    ];
    for case in &cases {
        run_case(case, &tools, trip.as_deref(), rounds);
    }
}

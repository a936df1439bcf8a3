//! `netray trace` benchmark (not a test: it prints figures, asserts nothing
//! about speed). Run as root: `cargo xtask bench`.
//!
//! On testbed paths built from network namespaces, side by side in one run,
//! each tool tracing from the client to a TCP service on the server with 3
//! probes per hop: `netray trace` (median of 5 runs), `traceroute -T`
//! (Debian `traceroute`, TCP SYN probes, median of 3 runs) and
//! `mtr --report --tcp` (Debian `mtr-tiny`, 3 cycles, one run): time to a
//! complete result, and whether each tool's hop list is the path.
//! Paths: 8 hops; 8 hops with a silent router; 5 hops with a firewall that
//! drops UDP and ICMP echo (where `traceroute -U`/`-I` stop).

use std::{
    net::{IpAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use netray_testbed::{Family, RouterBehavior, Side, Testbed, Topology};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

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
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
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

fn expected(testbed: &Testbed, silent: &[usize]) -> Vec<Option<IpAddr>> {
    let mut path: Vec<Option<IpAddr>> = (1..=testbed.routers())
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Client, Family::V4)))
        .collect();
    path.push(Some(testbed.server_addr(Family::V4)));
    path
}

fn show(path: &[Option<IpAddr>]) -> String {
    path.iter()
        .map(|h| h.map_or("*".to_string(), |a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `program args` in the client namespace: wall time and stdout.
fn timed(testbed: &Testbed, program: &str, args: &[&str]) -> (Duration, String) {
    let started = Instant::now();
    let out = testbed
        .client()
        .command(program)
        .args(args)
        .env("NETRAY_LOG", "netray=debug")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let took = started.elapsed();
    if program == NETRAY && took > Duration::from_secs(1) {
        eprintln!("SLOW {took:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wall time of the whole `netray trace` process, its hops, the trace's own
/// `elapsed_ms` (first probe to result) and the text table of a second run.
fn netray(testbed: &Testbed, port: u16) -> (Duration, Vec<Option<IpAddr>>, f64, String) {
    let dest = format!("{}:{port}", testbed.server_addr(Family::V4));
    let (took, json) = timed(testbed, NETRAY, &["trace", "-n", "--json", &dest]);
    let result: Value = serde_json::from_str(json.trim()).unwrap_or_default();
    let hops = result["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|h| h["addr"].as_str().and_then(|a| a.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let elapsed = result["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
    let (_, table) = timed(testbed, NETRAY, &["trace", "-n", &dest]);
    (took, hops, elapsed, table)
}

/// First responder per TTL in `traceroute`/`mtr` output lines.
fn addrs(lines: impl Iterator<Item = String>) -> Vec<Option<IpAddr>> {
    lines
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .find_map(|word| word.parse::<IpAddr>().ok())
        })
        .collect()
}

fn traceroute(testbed: &Testbed, port: u16, method: &str) -> (Duration, Vec<Option<IpAddr>>) {
    let dest = testbed.server_addr(Family::V4).to_string();
    let port = port.to_string();
    let mut args = vec![method, "-n", "-q", "3", "-m", "30"];
    if method == "-T" {
        args.extend(["-p", &port]);
    }
    args.push(&dest);
    let (took, out) = timed(testbed, "traceroute", &args);
    (took, addrs(out.lines().skip(1).map(str::to_string)))
}

fn mtr(testbed: &Testbed, port: u16) -> (Duration, Vec<Option<IpAddr>>) {
    let dest = testbed.server_addr(Family::V4).to_string();
    let port = port.to_string();
    let (took, out) = timed(
        testbed,
        "mtr",
        &["--report", "--tcp", "-P", &port, "-n", "-c", "3", &dest],
    );
    // Report lines: `  1.|-- 10.0.0.2   0.0%  3  ...`; `???` for silence.
    let hops = out
        .lines()
        .filter(|l| l.contains("|--"))
        .map(|l| {
            l.split("|--")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
        .collect();
    (took, hops)
}

/// netray runs per path.
const RUNS: usize = 5;

fn median(values: &[Duration]) -> Duration {
    let mut values = values.to_vec();
    values.sort_unstable();
    values[values.len() / 2]
}

fn median_f64(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn row(tool: &str, took: Duration, hops: &[Option<IpAddr>], want: &[Option<IpAddr>]) {
    println!(
        "  {tool:<22} {:9.1} ms  agrees: {:<5}  hops: {}",
        ms(took),
        hops == want,
        show(hops)
    );
}

fn compare(name: &str, routers: usize, behaviors: &[(usize, RouterBehavior)], silent: &[usize]) {
    let mut topology = Topology::chain(routers);
    for &(k, behavior) in behaviors {
        topology = topology.router(k, behavior);
    }
    let testbed = topology.build().expect("testbed");
    let service = Service::start(&testbed);
    let want = expected(&testbed, silent);
    println!("{name}: {} hops, expected {}", want.len(), show(&want));
    let runs: Vec<_> = (0..RUNS).map(|_| netray(&testbed, service.port)).collect();
    let exact = runs.iter().filter(|r| r.1 == want).count();
    let walls: Vec<Duration> = runs.iter().map(|r| r.0).collect();
    let probing: Vec<f64> = runs.iter().map(|r| r.2).collect();
    let (_, hops, _, table) = &runs[RUNS / 2];
    row("netray trace", median(&walls), hops, &want);
    println!(
        "  {:<22} median of {RUNS} runs (max {:.1} ms), {exact}/{RUNS} exact; probing alone \
         (first probe to result) median {:.1} ms, the rest is loading and attaching the eBPF \
         capture and connecting",
        "",
        ms(*walls.iter().max().unwrap()),
        median_f64(&probing),
    );
    let tr: Vec<_> = (0..3)
        .map(|_| traceroute(&testbed, service.port, "-T"))
        .collect();
    let tr_walls: Vec<Duration> = tr.iter().map(|r| r.0).collect();
    row("traceroute -T (median)", median(&tr_walls), &tr[1].1, &want);
    let (took, hops) = mtr(&testbed, service.port);
    row("mtr --report --tcp -c3", took, &hops, &want);
    if behaviors
        .iter()
        .any(|(_, b)| *b == RouterBehavior::DropUdpIcmp)
    {
        for method in ["-U", "-I"] {
            let (took, hops) = traceroute(&testbed, service.port, method);
            row(&format!("traceroute {method}"), took, &hops, &want);
        }
    }
    println!("  netray's table (the median run):");
    for line in table.lines() {
        println!("    {line}");
    }
}

fn main() {
    println!(
        "netray trace benchmark: client -> TCP service, 3 probes per hop (testbed: network \
         namespaces, sub-ms links)"
    );
    println!();
    compare("8-hop path", 7, &[], &[]);
    println!();
    compare(
        "8-hop path, router 4 silent",
        7,
        &[(4, RouterBehavior::Silent)],
        &[4],
    );
    println!();
    compare(
        "5-hop path, router 2 drops UDP and ICMP echo",
        4,
        &[(2, RouterBehavior::DropUdpIcmp)],
        &[],
    );
}

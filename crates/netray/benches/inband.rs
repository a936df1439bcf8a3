//! In-band traceroute benchmark (not a test: it prints figures, asserts
//! nothing about speed). Run as root: `cargo xtask bench`.
//!
//! On testbed paths built from network namespaces, side by side in one run:
//! 1. time to a complete trace: `netray serve` (client fetches /trace.json)
//!    vs `traceroute -T` from the server to the client, on an 8-hop path and
//!    on the same path with one silent router, plus hop-list agreement;
//! 2. 200 concurrent traces from five visitor networks, routers with the
//!    kernel's ICMP rate limits and one silent router: wall time, per-trace
//!    latency, exact hop lists and hops (also those behind the silent
//!    router), and server memory.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use netray_testbed::{Family, RouterBehavior, Side, Spawned, Testbed, Topology, http};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;
const ROUTERS: usize = 7; // + the destination: an 8-hop path

fn start_server(testbed: &Testbed) -> Spawned {
    let listen = format!("[::]:{PORT}");
    let process = testbed
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
        .expect("start netray serve");
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !testbed
        .client()
        .run(move || http::get(addr, "/healthz", "*/*", Duration::from_secs(1)))
        .expect("client namespace")
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

/// The path the server must see: routers from the server side, then the client.
fn expected(testbed: &Testbed, silent: &[usize]) -> Vec<Option<IpAddr>> {
    let mut path: Vec<Option<IpAddr>> = (1..=testbed.routers())
        .rev()
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Server, Family::V4)))
        .collect();
    path.push(Some(testbed.client_addr(Family::V4)));
    path
}

fn hops_of(result: &Value) -> Vec<Option<IpAddr>> {
    result["hops"]
        .as_array()
        .map(|hops| {
            hops.iter()
                .map(|h| h["addr"].as_str().and_then(|a| a.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// One trace as a visitor sees it: wall time of GET /trace.json.
fn netray_trace(testbed: &Testbed) -> (Duration, Value) {
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let started = Instant::now();
    let response = testbed
        .client()
        .run(move || http::get(addr, "/trace.json", "*/*", Duration::from_secs(30)))
        .expect("client namespace")
        .expect("GET /trace.json");
    let took = started.elapsed();
    (took, serde_json::from_slice(&response.body).expect("JSON"))
}

/// `traceroute -T` (TCP SYN probes) from the server to the client: wall
/// time and the first responder per TTL.
fn traceroute_tcp(testbed: &Testbed) -> (Duration, Vec<Option<IpAddr>>) {
    let client = testbed.client_addr(Family::V4).to_string();
    let started = Instant::now();
    let out = testbed
        .server()
        .exec(&["traceroute", "-T", "-n", "-q", "3", "-m", "30", &client])
        .expect("traceroute (Debian package; `cargo xtask setup` installs it)");
    let took = started.elapsed();
    let hops = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .find_map(|word| word.parse::<IpAddr>().ok())
        })
        .collect();
    (took, hops)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn show(path: &[Option<IpAddr>]) -> String {
    path.iter()
        .map(|h| h.map_or("*".to_string(), |a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn compare_single(name: &str, silent: &[usize]) {
    let mut topology = Topology::chain(ROUTERS);
    for &k in silent {
        topology = topology.router(k, RouterBehavior::Silent);
    }
    let testbed = topology.build().expect("testbed");
    let _server = start_server(&testbed);
    let want = expected(&testbed, silent);

    let runs = 10;
    let mut netray_times = Vec::new();
    let mut netray_exact = 0;
    let mut last = Vec::new();
    for _ in 0..runs {
        let (took, result) = netray_trace(&testbed);
        netray_times.push(took);
        last = hops_of(&result);
        netray_exact += usize::from(last == want);
    }
    let mut tr_times = Vec::new();
    let mut tr_hops = Vec::new();
    for _ in 0..3 {
        let (took, hops) = traceroute_tcp(&testbed);
        tr_times.push(took);
        tr_hops = hops;
    }
    let (netray_ms, tr_ms) = (ms(median(netray_times)), ms(median(tr_times)));
    println!("{name}: {} hops, expected {}", want.len(), show(&want));
    println!(
        "  netray serve   median {netray_ms:9.1} ms over {runs} traces; exact hop list {netray_exact}/{runs}; last: {}",
        show(&last)
    );
    println!(
        "  traceroute -T  median {tr_ms:9.1} ms over 3 runs;    hops: {}",
        show(&tr_hops)
    );
    let agree = tr_hops == want;
    println!(
        "  speed-up {:.1}x; traceroute -T agrees with the expected path: {agree}",
        tr_ms / netray_ms
    );
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Router 2 of the 4-hop path of [`concurrent`] sends no ICMP.
const CONCURRENT_SILENT: usize = 2;

fn concurrent(n: usize) {
    let testbed = Topology::chain(3)
        .router(CONCURRENT_SILENT, RouterBehavior::Silent)
        .kernel_icmp_rate_limits()
        .build()
        .expect("testbed");
    let server = start_server(&testbed);
    let pid = server.id();
    let routers = expected(&testbed, &[CONCURRENT_SILENT]);
    let routers = &routers[..routers.len() - 1];
    // The silent router's TTL as the server sees it (router k is at TTL
    // routers + 1 - k).
    let silent_ttl = testbed.routers() + 1 - CONCURRENT_SILENT;
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    // Visitors from five networks (a router is shared only once two
    // networks saw it); two of them trace first, one after the other, as a
    // live server has seen many networks before any burst.
    let visitor = |i: usize| netray_testbed::visitor_addr(i % 5, Family::V4);
    for i in 1..=2 {
        let source = visitor(i);
        testbed
            .client()
            .run(move || {
                http::get_from(source, addr, "/trace.json", "*/*", Duration::from_secs(30))
            })
            .expect("client namespace")
            .expect("warm-up trace");
    }
    let rss_before = rss_kib(pid, "VmRSS:");
    let started = Instant::now();
    let results = testbed
        .client()
        .run(move || {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..n)
                    .map(|i| {
                        scope.spawn(move || {
                            let source = visitor(i);
                            let t = Instant::now();
                            let r = http::get_from(
                                source,
                                addr,
                                "/trace.json",
                                "*/*",
                                Duration::from_secs(60),
                            );
                            (source, t.elapsed(), r)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("worker"))
                    .collect::<Vec<_>>()
            })
        })
        .expect("client namespace");
    let wall = started.elapsed();
    let peak = rss_kib(pid, "VmHWM:");
    let mut latencies = Vec::new();
    let (mut ok, mut exact_lists, mut cached, mut rate_limited) = (0, 0, 0, 0);
    let (mut hops_total, mut hops_exact, mut behind_total, mut behind_exact) = (0, 0, 0, 0);
    for (source, took, response) in results {
        let mut want = routers.to_vec();
        want.push(Some(source));
        hops_total += want.len();
        behind_total += want.len() - silent_ttl;
        let Ok(response) = response else { continue };
        if response.status != 200 {
            continue;
        }
        ok += 1;
        latencies.push(took);
        let result: Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let got = hops_of(&result);
        exact_lists += usize::from(got == want);
        for (i, hop) in want.iter().enumerate() {
            // The destination is exact only as the last hop.
            let exact = got.get(i) == Some(hop) && (i + 1 < want.len() || got.len() == want.len());
            hops_exact += usize::from(exact);
            if i >= silent_ttl {
                behind_exact += usize::from(exact);
            }
        }
        let hops = result["hops"].as_array();
        cached += hops.map_or(0, |h| h.iter().filter(|h| h["cached"] == true).count());
        rate_limited += hops.map_or(0, |h| {
            h.iter().filter(|h| h["rate_limited"] == true).count()
        });
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
    };
    println!(
        "{n} concurrent traces (4-hop path, router at TTL {silent_ttl} silent, routers with kernel ICMP rate limits, visitors from 5 networks): {ok}/{n} answered, {exact_lists}/{n} exact hop lists"
    );
    println!(
        "  hops exact {hops_exact}/{hops_total}; behind the silent router {behind_exact}/{behind_total}; {cached} hops shared from other traces, {rate_limited} labelled rate-limited"
    );
    println!(
        "  wall {:.0} ms; per trace p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        ms(wall),
        pct(0.5).map_or(0.0, ms),
        pct(0.95).map_or(0.0, ms),
        pct(1.0).map_or(0.0, ms),
    );
    println!(
        "  server memory: RSS {} KiB before, peak {} KiB ({} KiB for {n} traces)",
        rss_before,
        peak,
        peak.saturating_sub(rss_before)
    );
    let metrics = testbed
        .client()
        .run(move || http::get(addr, "/metrics", "*/*", Duration::from_secs(10)))
        .expect("client namespace")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    println!(
        "  probes sent {}, held back for routers out of ICMP budget {} (warm-up included)",
        counter("netray_probes_sent_total"),
        counter("netray_probes_held_back_total")
    );
}

fn main() {
    println!("netray in-band traceroute benchmark (testbed: network namespaces, sub-ms links)");
    println!();
    compare_single("8-hop path", &[]);
    println!();
    compare_single("8-hop path, router 4 silent", &[4]);
    println!();
    concurrent(200);
}

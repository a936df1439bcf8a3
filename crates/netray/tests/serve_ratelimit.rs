//! `netray serve` under routers' ICMP rate limits, with a silent router in
//! the path: many visitors at once, from several networks, and the hops
//! behind the silent one must still be exact.
//!
//! Routers rate-limit the ICMP errors they send per destination (Linux: a
//! burst of 6, then 1 per second for IPv4), and every trace's errors go to
//! the same destination, this server. With 20 or 200 traces at once the
//! routers answer only a handful of probes; the rest of the hops must come
//! from what other visitors' traces heard there (corroborated by two
//! networks, marked `cached`), also across the silent hop, which answers
//! nobody. Root is required; these tests fail, never skip, without it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use netray_testbed::{Family, RouterBehavior, Side, Spawned, Testbed, Topology, http};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;

/// Router 2 of `client — r1 — r2 — r3 — server` sends no ICMP: the server
/// sees r3 at TTL 1, nothing at TTL 2, r1 at TTL 3, the visitor at TTL 4.
const SILENT_ROUTER: usize = 2;
const SILENT_TTL: usize = 2;

fn start_server(testbed: &Testbed) -> Spawned {
    let listen = format!("[::]:{PORT}");
    let process = testbed
        .server()
        .spawn(&[
            NETRAY,
            "serve",
            "--http",
            &listen,
            // Many simulated visitors share a few addresses: lift the
            // per-client limits that would otherwise (rightly) refuse them.
            "--max-traces-per-client",
            "256",
            "--max-traces",
            "512",
            "--rate-limit-per-minute",
            "100000",
        ])
        .expect("start netray serve");
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    while !testbed
        .client()
        .run(move || http::get(addr, "/healthz", "*/*", Duration::from_secs(2)))
        .expect("client namespace")
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

/// The routers the server must see per TTL (`None`: the silent one).
fn expected_routers(testbed: &Testbed) -> Vec<Option<IpAddr>> {
    (1..=testbed.routers())
        .rev()
        .map(|k| (k != SILENT_ROUTER).then(|| testbed.router_addr(k, Side::Server, Family::V4)))
        .collect()
}

/// GET /trace.json from `source` (one of the client node's visitor
/// addresses); the connection must not have been disturbed.
fn fetch(source: IpAddr, server: SocketAddr, timeout: Duration) -> Value {
    let response = http::get_from(source, server, "/trace.json", "*/*", timeout)
        .unwrap_or_else(|e| panic!("GET /trace.json from {source}: {e}"));
    assert_eq!(
        response.status,
        200,
        "from {source}: {} {}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.disturbance(), None);
    serde_json::from_slice(&response.body).expect("JSON body")
}

/// What one trace got right, hop by hop.
#[derive(Default, Debug)]
struct Tally {
    /// Hops behind the silent one (routers and the destination), all traces.
    behind: usize,
    behind_exact: usize,
    /// Of the exact ones behind the silent hop, how many came from sharing.
    behind_cached: usize,
    /// Exact hops by TTL behind the silent one (index 0: the router right
    /// behind it).
    exact_by_ttl: Vec<usize>,
    traces: usize,
    /// Broken hard rules, reported after the figures.
    violations: Vec<String>,
    /// The first few traces with a hop behind the silent one not exact, for
    /// the failure message.
    inexact: Vec<String>,
}

/// Checks one result and adds it to `tally`. Hard rules (any violation
/// fails the test): the silent router is never filled in, a cached hop has
/// no replies and is labelled rate-limited.
fn check(tally: &mut Tally, routers: &[Option<IpAddr>], source: IpAddr, result: &Value) {
    let hops = result["hops"].as_array().expect("hops array");
    let addr = |i: usize| -> Option<IpAddr> {
        hops.get(i)
            .and_then(|h| h["addr"].as_str())
            .map(|a| a.parse().unwrap())
    };
    for hop in hops {
        if hop["cached"] == true && hop["received"] != 0 {
            tally
                .violations
                .push(format!("a cached hop is not a reply: {result:#}"));
        }
        if hop["cached"] == true && hop["rate_limited"] != true {
            tally.violations.push(format!(
                "a cached hop is the router's rate limit, not path loss: {result:#}"
            ));
        }
    }
    if addr(SILENT_TTL - 1).is_some() {
        tally.violations.push(format!(
            "the silent router must stay silent (nothing may invent it): {result:#}"
        ));
    }
    tally.traces += 1;
    let exact_before = tally.behind_exact;
    // Behind the silent one: r1 at TTL 3, the visitor at TTL 4.
    let mut want: Vec<Option<IpAddr>> = routers[SILENT_TTL..].to_vec();
    want.push(Some(source));
    for (offset, want) in want.iter().enumerate() {
        let i = SILENT_TTL + offset;
        tally.behind += 1;
        let last = offset + 1 == routers.len() - SILENT_TTL + 1;
        let exact = addr(i) == *want
            && hops.get(i).is_some_and(|h| h["destination"] == last)
            && (!last || hops.len() == i + 1);
        if tally.exact_by_ttl.len() <= offset {
            tally.exact_by_ttl.resize(offset + 1, 0);
        }
        if exact {
            tally.exact_by_ttl[offset] += 1;
            tally.behind_exact += 1;
            if hops[i]["cached"] == true {
                tally.behind_cached += 1;
            }
        }
    }
    if tally.behind_exact - exact_before < want.len() && tally.inexact.len() < 3 {
        tally.inexact.push(format!("from {source}: {result}"));
    }
}

/// `n` visitors at once, spread over five networks, each fetching its own
/// trace, after two visitors of two networks traced one after the other (a
/// server on the Internet has seen many networks before any burst).
fn silent_hop_behind_rate_limits(n: usize, timeout: Duration) {
    let testbed = Topology::chain(3)
        .router(SILENT_ROUTER, RouterBehavior::Silent)
        .kernel_icmp_rate_limits()
        .build()
        .expect("testbed");
    let _server = start_server(&testbed);
    let server = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let routers = expected_routers(&testbed);
    let mut warm_up = Tally::default();
    for network in 1..=2 {
        let source = netray_testbed::visitor_addr(network, Family::V4);
        let result = testbed
            .client()
            .run(move || fetch(source, server, timeout))
            .expect("client namespace");
        check(&mut warm_up, &routers, source, &result);
    }
    let started = Instant::now();
    let results = testbed
        .client()
        .run(move || {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..n)
                    .map(|i| {
                        let source = netray_testbed::visitor_addr(i % 5, Family::V4);
                        scope.spawn(move || (source, fetch(source, server, timeout)))
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("visitor thread"))
                    .collect::<Vec<_>>()
            })
        })
        .expect("client namespace");
    let took = started.elapsed();
    let metrics = testbed
        .client()
        .run(move || http::get(server, "/metrics", "*/*", Duration::from_secs(20)))
        .expect("client namespace")
        .expect("GET /metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    // What the server says it lost or gave up on, for the figures below.
    let server_side: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            [
                "netray_ringbuf_drops",
                "netray_traces_ended",
                "netray_probes_",
                "netray_peer_segments",
                "netray_icmp",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    let mut tally = Tally::default();
    for (source, result) in &results {
        check(&mut tally, &routers, *source, result);
    }
    eprintln!(
        "{n} concurrent traces in {took:?}: {}/{} hops behind the silent router exact ({} of them cached; exact per TTL from {}: {:?}); warm-up {}/{}",
        tally.behind_exact,
        tally.behind,
        tally.behind_cached,
        SILENT_TTL + 1,
        tally.exact_by_ttl,
        warm_up.behind_exact,
        warm_up.behind
    );
    eprintln!("server: {}", server_side.join("; "));
    assert_eq!(tally.traces, n);
    // At least 99 %, counted in integers: exact * 100 >= behind * 99.
    assert!(
        tally.behind_exact * 100 >= tally.behind * 99,
        "only {}/{} hops behind the silent router exact; the first traces with one wrong:\n{}",
        tally.behind_exact,
        tally.behind,
        tally.inexact.join("\n")
    );
    let violations = [warm_up.violations, tally.violations].concat();
    assert!(
        violations.is_empty(),
        "{} violation(s), the first: {}",
        violations.len(),
        violations[0]
    );
    // Proof the limits were in force: far more probes than the routers'
    // budgets, so some hops behind the silent one must have been shared.
    assert!(
        tally.behind_cached > 0,
        "no hop needed sharing: were the rate limits on?"
    );
}

#[test]
fn silent_router_and_rate_limits_20_concurrent_visitors() {
    silent_hop_behind_rate_limits(20, Duration::from_secs(60));
}

#[test]
fn silent_router_and_rate_limits_200_concurrent_visitors() {
    silent_hop_behind_rate_limits(200, Duration::from_secs(240));
}

//! End to end: `netray serve` in the server namespace of a testbed, a client
//! in the client namespace, and the exact hop list the server traces back.
//! Each test builds its own namespaces (unique names, removed on drop), so
//! they run in parallel. Root is required; these tests fail, never skip,
//! without it.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use netray_testbed::{Family, RouterBehavior, Side, Spawned, Testbed, Topology, http::Response};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;

/// Many simulated visitors share one client address: lift the per-client
/// limits that would otherwise (rightly) refuse them.
const MANY_VISITORS: &[&str] = &[
    "--max-traces-per-client",
    "64",
    "--rate-limit-per-minute",
    "6000",
];

/// A running `netray serve` inside the testbed's server namespace.
struct Server {
    process: Spawned,
}

fn start_server(testbed: &Testbed, extra: &[&str]) -> Server {
    let listen = format!("[::]:{PORT}");
    let mut args = vec![NETRAY, "serve", "--http", &listen];
    args.extend_from_slice(extra);
    let process = testbed.server().spawn(&args).expect("start netray serve");
    let mut server = Server { process };
    // Ready when /healthz answers from the client side.
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    loop {
        let ok = testbed
            .client()
            .run(move || http_get(addr, "/healthz").map(|r| r.status == 200))
            .expect("run in client namespace");
        if ok.unwrap_or(false) {
            return server;
        }
        if let Ok(Some(status)) = server.process.child().try_wait() {
            panic!("netray serve exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http_get_with(addr, path, "*/*")
}

fn http_get_with(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<Response> {
    netray_testbed::http::get(addr, path, accept, Duration::from_secs(15))
}

/// Fetches /trace.json from the client namespace and checks the connection
/// was not disturbed.
fn trace_json(testbed: &Testbed, family: Family) -> Value {
    let addr = SocketAddr::new(testbed.server_addr(family), PORT);
    let response = testbed
        .client()
        .run(move || http_get(addr, "/trace.json"))
        .expect("client namespace")
        .expect("GET /trace.json");
    assert_undisturbed(&response);
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

/// Like [`trace_json`], from `source`, one of the client node's addresses.
fn trace_json_from(testbed: &Testbed, source: IpAddr) -> Value {
    let family = if source.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let addr = SocketAddr::new(testbed.server_addr(family), PORT);
    let response = testbed
        .client()
        .run(move || {
            netray_testbed::http::get_from(
                source,
                addr,
                "/trace.json",
                "*/*",
                Duration::from_secs(15),
            )
        })
        .expect("client namespace")
        .expect("GET /trace.json");
    assert_undisturbed(&response);
    serde_json::from_slice(&response.body).expect("JSON")
}

fn assert_undisturbed(response: &Response) {
    assert_eq!(
        response.status,
        200,
        "{} {}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.disturbance(), None);
    if let Some(length) = response.header("content-length") {
        assert_eq!(
            length.parse::<usize>().unwrap(),
            response.body.len(),
            "truncated body"
        );
    }
}

/// The addresses the server must see per TTL (`None`: silent), destination
/// last; every hop answered this trace's own probes.
fn assert_hops(result: &Value, expected: &[Option<IpAddr>], nat_from: Option<usize>) {
    assert_hops_with(result, expected, nat_from, false);
}

/// Like [`assert_hops`]; with `allow_cached`, a hop may instead carry an
/// address learned from other traces (`"cached": true`, no replies).
fn assert_hops_with(
    result: &Value,
    expected: &[Option<IpAddr>],
    nat_from: Option<usize>,
    allow_cached: bool,
) {
    let hops = result["hops"].as_array().expect("hops array");
    let got: Vec<Option<IpAddr>> = hops
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect();
    assert_eq!(got, expected, "hop addresses per TTL in {result:#}");
    for (i, hop) in hops.iter().enumerate() {
        assert_eq!(hop["ttl"], i + 1);
        let last = i + 1 == hops.len();
        assert_eq!(
            hop["destination"], last,
            "only the last hop is the destination"
        );
        let silent = expected[i].is_none();
        let received = hop["received"].as_u64().unwrap();
        let cached = hop["cached"] == true;
        assert!(
            allow_cached || !cached,
            "TTL {} is cached: {result:#}",
            i + 1
        );
        assert_eq!(received == 0, silent || cached, "replies at TTL {}", i + 1);
        assert_eq!(
            hop["rtt_ms"].as_array().unwrap().len() as u64,
            received,
            "one RTT per reply"
        );
        assert!(hop["sent"].as_u64().unwrap() >= received);
        let nat = nat_from.is_some_and(|from| i + 1 >= from) && !last;
        assert_eq!(hop["nat"], nat, "nat flag at TTL {}", i + 1);
    }
    assert_eq!(result["destination_reached"], true);
}

/// Routers as the server sees them: hop 1 is the router next to the server.
fn expected_path(testbed: &Testbed, family: Family, silent: &[usize]) -> Vec<Option<IpAddr>> {
    let n = testbed.routers();
    let mut path: Vec<Option<IpAddr>> = (1..=n)
        .rev()
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Server, family)))
        .collect();
    path.push(Some(testbed.client_addr(family)));
    path
}

fn chain(family: Family) {
    let testbed = Topology::chain(5).build().expect("testbed");
    let _server = start_server(&testbed, &[]);
    let started = Instant::now();
    let result = trace_json(&testbed, family);
    let took = started.elapsed();
    assert_hops(&result, &expected_path(&testbed, family, &[]), None);
    assert_eq!(
        result["family"],
        if family == Family::V4 { "ipv4" } else { "ipv6" }
    );
    let client: SocketAddr = result["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.ip(), testbed.client_addr(family));
    eprintln!("{family:?} 6-hop trace took {took:?}");
}

#[test]
fn ipv4_chain_of_five_routers() {
    chain(Family::V4);
}

#[test]
fn ipv6_chain_of_five_routers() {
    chain(Family::V6);
}

fn silent_router(family: Family) {
    let testbed = Topology::chain(4)
        .router(2, RouterBehavior::Silent)
        .build()
        .expect("testbed");
    let _server = start_server(&testbed, &[]);
    let result = trace_json(&testbed, family);
    assert_hops(&result, &expected_path(&testbed, family, &[2]), None);
}

#[test]
fn ipv4_silent_router() {
    silent_router(Family::V4);
}

#[test]
fn ipv6_silent_router() {
    silent_router(Family::V6);
}

fn nat_in_front_of_client(family: Family) {
    // client — r1 — r2 (NAT) — r3 — server
    let testbed = Topology::chain(3)
        .router(
            2,
            RouterBehavior::Nat {
                masquerade_toward: Side::Server,
            },
        )
        .build()
        .expect("testbed");
    let _server = start_server(&testbed, &[]);
    let result = trace_json(&testbed, family);
    let public = testbed.router_addr(2, Side::Server, family);
    // r3, then the NAT and r1 behind it both answering from the NAT's public
    // address, then the client itself, which the server also sees as `public`.
    let expected = vec![
        Some(testbed.router_addr(3, Side::Server, family)),
        Some(public),
        Some(public),
        Some(public),
    ];
    assert_hops(&result, &expected, Some(2));
    let client: SocketAddr = result["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.ip(), public);
}

#[test]
fn ipv4_nat_in_front_of_client() {
    nat_in_front_of_client(Family::V4);
}

#[test]
fn ipv6_nat_in_front_of_client() {
    nat_in_front_of_client(Family::V6);
}

#[test]
fn concurrent_clients_each_get_the_exact_path() {
    let testbed = Topology::chain(3).build().expect("testbed");
    let _server = start_server(&testbed, MANY_VISITORS);
    let expected_v4 = expected_path(&testbed, Family::V4, &[]);
    let expected_v6 = expected_path(&testbed, Family::V6, &[]);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let family = if i % 2 == 0 { Family::V4 } else { Family::V6 };
                let testbed = &testbed;
                scope.spawn(move || (family, trace_json(testbed, family)))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut clients = std::collections::HashSet::new();
    for (family, result) in &results {
        let expected = if *family == Family::V4 {
            &expected_v4
        } else {
            &expected_v6
        };
        assert_hops(result, expected, None);
        assert!(clients.insert(result["client"].as_str().unwrap().to_string()));
    }
}

#[test]
fn event_stream_sends_hops_then_done() {
    let testbed = Topology::chain(2).build().expect("testbed");
    let _server = start_server(&testbed, &[]);
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let response = testbed
        .client()
        .run(move || http_get_with(addr, "/trace", "text/event-stream"))
        .unwrap()
        .unwrap();
    assert_undisturbed(&response);
    assert!(
        response
            .headers
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    let text = String::from_utf8(response.body).unwrap();
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event:"))?.trim();
            let data = block.lines().find_map(|l| l.strip_prefix("data:"))?.trim();
            Some((event, serde_json::from_str(data).unwrap()))
        })
        .collect();
    let (last, result) = events.last().expect("some events");
    assert_eq!(*last, "done");
    assert!(events[..events.len() - 1].iter().all(|(e, _)| *e == "hop"));
    assert!(
        events.len() >= 4,
        "at least one hop event per hop, then done"
    );
    assert_hops(result, &expected_path(&testbed, Family::V4, &[]), None);
}

#[test]
fn plain_text_for_curl_and_html_for_browsers() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let _server = start_server(&testbed, &[]);
    let addr = SocketAddr::new(testbed.server_addr(Family::V6), PORT);
    let text = testbed
        .client()
        .run(move || http_get_with(addr, "/", "*/*"))
        .unwrap()
        .unwrap();
    assert_undisturbed(&text);
    let body = String::from_utf8(text.body).unwrap();
    let router = testbed.router_addr(1, Side::Server, Family::V6).to_string();
    assert!(
        body.contains(&router),
        "plain text names the router: {body}"
    );
    let html = testbed
        .client()
        .run(move || http_get_with(addr, "/", "text/html"))
        .unwrap()
        .unwrap();
    assert_eq!(html.status, 200);
    let page = String::from_utf8(html.body).unwrap();
    assert!(page.contains("EventSource"), "the page traces live");
}

#[test]
fn concurrent_visitors_share_rate_limited_hops() {
    // Real routers rate-limit ICMP errors per destination (Linux: burst 6,
    // then 1/s). Every trace's errors go to the same server, so 12 visitors
    // at once exhaust the near routers' budgets; the hop lists must still be
    // exact, with what one trace heard shared with the others.
    let testbed = Topology::chain(3)
        .kernel_icmp_rate_limits()
        .build()
        .expect("testbed");
    let _server = start_server(&testbed, MANY_VISITORS);
    // Visitors from several networks: a router is shared only once visitors
    // of two unrelated networks saw it. A server on the Internet has seen
    // many networks before any burst: two visitors of different networks
    // trace first, one after the other (in a slow guest the burst's traces
    // could otherwise all end before a second network heard a router).
    for network in 0..2 {
        let source = netray_testbed::visitor_addr(network, Family::V4);
        let result = trace_json_from(&testbed, source);
        let mut expected = expected_path(&testbed, Family::V4, &[]);
        *expected.last_mut().unwrap() = Some(source);
        assert_hops_with(&result, &expected, None, true);
    }
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..12)
            .map(|i| {
                let testbed = &testbed;
                let source = netray_testbed::visitor_addr(i % 3, Family::V4);
                scope.spawn(move || (source, trace_json_from(testbed, source)))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut cached = 0;
    for (source, result) in &results {
        let mut expected = expected_path(&testbed, Family::V4, &[]);
        *expected.last_mut().unwrap() = Some(*source);
        assert_hops_with(result, &expected, None, true);
        cached += result["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["cached"] == true)
            .count();
    }
    // Proof the limits were in force: 12 traces x 3 probes at each router
    // is far over a burst of 6, so some hops must have come from sharing.
    assert!(
        cached > 0,
        "no hop needed sharing: were the rate limits on?"
    );
}

/// Whether any XDP program is attached in the server namespace.
fn xdp_attached(testbed: &Testbed) -> bool {
    let out = testbed
        .server()
        .exec(&["ip", "-d", "link", "show"])
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn programs_detach_when_the_server_is_killed() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let mut server = start_server(&testbed, &[]);
    assert!(xdp_attached(&testbed), "serve attached XDP");
    // SIGKILL: no cleanup code runs; the kernel closing our bpf_link fds
    // must detach everything by itself.
    server.process.child().kill().expect("SIGKILL");
    server.process.child().wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&testbed) {
        assert!(
            Instant::now() < deadline,
            "XDP still attached after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/etc/netns/NAME/`: `ip netns exec NAME` bind-mounts its files over
/// `/etc`, giving the namespace its own resolv.conf. Removed on drop.
struct NetnsEtc(std::path::PathBuf);

impl NetnsEtc {
    fn resolv_conf(netns: &str, content: &str) -> Self {
        let dir = std::path::Path::new("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME");
        std::fs::write(dir.join("resolv.conf"), content).expect("write resolv.conf");
        Self(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hop_names_come_from_reverse_dns() {
    let testbed = Topology::chain(2).build().expect("testbed");
    let server_ns = testbed.server().name().to_string();
    let _etc = NetnsEtc::resolv_conf(&server_ns, "nameserver 127.0.0.1\n");
    let (dc, isp) = (
        testbed.router_addr(2, Side::Server, Family::V4),
        testbed.router_addr(1, Side::Server, Family::V4),
    );
    // A real resolver in the server's namespace: host records give PTRs.
    let pid_file = format!("/tmp/{server_ns}-dnsmasq.pid");
    let _dns = testbed
        .server()
        .spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--pid-file={pid_file}"),
            &format!("--host-record=dc.netray.test,{dc}"),
            &format!("--host-record=isp.netray.test,{isp}"),
        ])
        .expect("dnsmasq (Debian package; `cargo xtask setup` installs it)");
    // Serve only once the resolver listens, so the first lookups reach it.
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    loop {
        let sockets = testbed
            .server()
            .exec(&["ss", "-Hlun", "sport = :53"])
            .expect("ss");
        if String::from_utf8_lossy(&sockets.stdout).contains("127.0.0.1:53") {
            break;
        }
        assert!(Instant::now() < deadline, "dnsmasq did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _server = start_server(&testbed, &[]);
    // Lookups never hold a trace back: the first trace starts them, and
    // names show up as soon as they are known (here: in the next trace).
    let deadline = Instant::now() + Duration::from_secs(10);
    let names = loop {
        let result = trace_json(&testbed, Family::V4);
        let names: Vec<Option<String>> = result["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hostname"].as_str().map(str::to_string))
            .collect();
        if names[..2].iter().all(Option::is_some) || Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&pid_file);
    assert_eq!(
        names,
        vec![
            Some("dc.netray.test".to_string()),
            Some("isp.netray.test".to_string()),
            None, // the client has no record
        ]
    );
}

/// Paths with real round trips: every link delayed with netem. Only kernels
/// with netem run these (the kernel-matrix guests; `cargo xtask test` leaves
/// this module out on a host kernel without netem and says so).
mod needs_netem {
    use super::*;

    /// One-way delay of every link.
    const LINK_DELAY: Duration = Duration::from_millis(5);

    /// The server traces back over four delayed routers, one of them
    /// silent: exact hops, and no RTT below what the links' delays allow.
    fn delayed_chain_with_a_silent_router(family: Family) {
        let mut topology = Topology::chain(4).router(3, RouterBehavior::Silent);
        for link in 0..=4 {
            topology = topology.delay(link, LINK_DELAY, Duration::ZERO);
        }
        let testbed = topology.build().expect("testbed with delayed links");
        let _server = start_server(&testbed, &[]);
        let result = trace_json(&testbed, family);
        // Router 3 from the client is the server's second hop.
        assert_hops(&result, &expected_path(&testbed, family, &[3]), None);
        for (i, hop) in result["hops"].as_array().unwrap().iter().enumerate() {
            let floor_ms = 2.0 * (i + 1) as f64 * LINK_DELAY.as_secs_f64() * 1000.0;
            for rtt in hop["rtt_ms"].as_array().unwrap() {
                assert!(
                    rtt.as_f64().unwrap() >= floor_ms - 0.5,
                    "TTL {}: faster than the links' delay {floor_ms} ms: {result:#}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn ipv4_delayed_chain_with_a_silent_router() {
        delayed_chain_with_a_silent_router(Family::V4);
    }

    #[test]
    fn ipv6_delayed_chain_with_a_silent_router() {
        delayed_chain_with_a_silent_router(Family::V6);
    }
}

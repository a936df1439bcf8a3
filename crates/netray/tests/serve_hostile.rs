//! `netray serve` against what the open Internet sends: off-path forgeries,
//! reused ports, visitors that lie. End to end, in testbed namespaces (see
//! serve_e2e.rs); every test plays the attacker with real packets and checks
//! the honest result. Root is required; these tests fail, never skip,
//! without it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use netray_testbed::{Family, Side, Spawned, Testbed, Topology};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;

struct Server {
    _process: Spawned,
}

fn start_server(testbed: &Testbed, extra: &[&str]) -> Server {
    let listen = format!("[::]:{PORT}");
    let mut args = vec![NETRAY, "serve", "--http", &listen];
    args.extend_from_slice(extra);
    let mut process = testbed.server().spawn(&args).expect("start netray serve");
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    loop {
        let ok = testbed
            .client()
            .run(move || get(addr, "/healthz", None).map(|(status, _)| status == 200))
            .expect("run in client namespace");
        if ok.unwrap_or(false) {
            return Server { _process: process };
        }
        if let Ok(Some(status)) = process.child().try_wait() {
            panic!("netray serve exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on a fresh connection (from `local_port` if given, with
/// SO_REUSEADDR so a port can be used again), in the calling thread's
/// namespace. Returns the status and the body.
fn get(addr: SocketAddr, path: &str, local_port: Option<u16>) -> std::io::Result<(u16, Vec<u8>)> {
    let stream = connect(addr, local_port)?;
    exchange(stream, path)
}

fn connect(addr: SocketAddr, local_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = local_port else {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(10));
    };
    netray_testbed::http::connect_from(addr, port, Duration::from_secs(10))
}

fn exchange(mut stream: TcpStream, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: netray\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = netray_testbed::http::dechunk(&body);
    }
    Ok((status, body))
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Routers as the server sees them (hop 1 next to the server), then the client.
fn expected_path(testbed: &Testbed, family: Family) -> Vec<Option<IpAddr>> {
    let mut path: Vec<Option<IpAddr>> = (1..=testbed.routers())
        .rev()
        .map(|k| Some(testbed.router_addr(k, Side::Server, family)))
        .collect();
    path.push(Some(testbed.client_addr(family)));
    path
}

fn hop_addrs(result: &Value) -> Vec<Option<IpAddr>> {
    result["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect()
}

/// A port reused after the first connection closed untraced (`/healthz`),
/// late enough that the client's new ISN is "behind" the old one in
/// sequence space: Linux's ISN is a keyed hash of the 4-tuple plus a clock
/// in 64 ns ticks, so after 2^31 ticks (137.4 s, for another 137.4 s) the
/// new connection's numbers compare as older than the old one's. State kept
/// from the old connection would make every probe carry its numbers. The
/// trace of the new connection must be exact.
#[test]
fn reused_port_with_an_isn_behind_the_old_one_traces_exactly() {
    const BEHIND_FROM: Duration = Duration::from_millis(137_439 + 1_000);
    const BEHIND_UNTIL: Duration = Duration::from_millis(274_877 - 5_000);
    let testbed = Topology::chain(3).build().expect("testbed");
    let _server = start_server(&testbed, &[]);
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    // A port the kernel does not hand out on its own (ip_local_port_range
    // starts at 32768).
    let port = 20_000 + (std::process::id() % 10_000) as u16;
    let first_syn = Instant::now();
    let (status, _) = testbed
        .client()
        .run(move || get(addr, "/healthz", Some(port)))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    std::thread::sleep(BEHIND_FROM.saturating_sub(first_syn.elapsed()));
    let second_syn = first_syn.elapsed();
    assert!(
        (BEHIND_FROM..BEHIND_UNTIL).contains(&second_syn),
        "the second SYN left {second_syn:?} after the first: not behind"
    );
    let (status, body) = testbed
        .client()
        .run(move || get(addr, "/trace.json", Some(port)))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let result = json(&body);
    let client: SocketAddr = result["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.port(), port, "the 4-tuple was not reused");
    assert_eq!(
        hop_addrs(&result),
        expected_path(&testbed, Family::V4),
        "{result:#}"
    );
    assert_eq!(result["destination_reached"], true, "{result:#}");
    for hop in result["hops"].as_array().unwrap() {
        assert!(hop["received"].as_u64().unwrap() >= 1, "{result:#}");
        assert_ne!(hop["cached"], true, "{result:#}");
    }
}

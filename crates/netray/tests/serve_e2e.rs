//! End to end: `netray serve` in the server namespace of a testbed, a client
//! in the client namespace, and the exact hop list the server traces back.
//! Each test builds its own namespaces (unique names, removed on drop), so
//! they run in parallel. Root is required; these tests fail, never skip,
//! without it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use netray_testbed::{Family, RouterBehavior, Side, Spawned, Testbed, Topology};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;

/// A running `netray serve` inside the testbed's server namespace.
struct Server {
    _process: Spawned,
}

fn start_server(testbed: &Testbed, extra: &[&str]) -> Server {
    let listen = format!("[::]:{PORT}");
    let mut args = vec![NETRAY, "serve", "--http", &listen];
    args.extend_from_slice(extra);
    let process = testbed.server().spawn(&args).expect("start netray serve");
    let server = Server { _process: process };
    // Ready when /healthz answers from the client side.
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = testbed
            .client()
            .run(move || http_get(addr, "/healthz").map(|r| r.status == 200))
            .expect("run in client namespace");
        if ok.unwrap_or(false) {
            return server;
        }
        assert!(Instant::now() < deadline, "netray serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 response plus what the client's TCP saw of the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
    /// Segments the client had to retransmit on this connection.
    client_retransmits: u32,
    /// Whether the connection ended with an error (RST) instead of a clean close.
    reset: bool,
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http_get_with(addr, path, "*/*")
}

fn http_get_with(addr: SocketAddr, path: &str, accept: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: netray\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let reset = match stream.read_to_end(&mut raw) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => return Err(e),
    };
    let client_retransmits = total_retransmits(&stream);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
        client_retransmits,
        reset,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

fn total_retransmits(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain data; zeroed is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    info.tcpi_total_retrans
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

fn assert_undisturbed(response: &Response) {
    assert_eq!(
        response.status,
        200,
        "{} {}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert!(!response.reset, "the traced connection was reset");
    assert_eq!(
        response.client_retransmits, 0,
        "the client had to retransmit on the traced connection"
    );
    if let Some(length) = response
        .headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
    {
        assert_eq!(length.parse::<usize>().unwrap(), response.body.len(), "truncated body");
    }
}

/// The addresses the server must see per TTL (`None`: silent), destination last.
fn assert_hops(result: &Value, expected: &[Option<IpAddr>], nat_from: Option<usize>) {
    let hops = result["hops"].as_array().expect("hops array");
    let got: Vec<Option<IpAddr>> = hops
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect();
    assert_eq!(got, expected, "hop addresses per TTL in {result:#}");
    for (i, hop) in hops.iter().enumerate() {
        assert_eq!(hop["ttl"], i + 1);
        let last = i + 1 == hops.len();
        assert_eq!(hop["destination"], last, "only the last hop is the destination");
        let silent = expected[i].is_none();
        let received = hop["received"].as_u64().unwrap();
        assert_eq!(received == 0, silent, "replies at TTL {}", i + 1);
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
    let _server = start_server(&testbed, &[]);
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
    assert!(events.len() >= 4, "at least one hop event per hop, then done");
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
    assert!(body.contains(&router), "plain text names the router: {body}");
    let html = testbed
        .client()
        .run(move || http_get_with(addr, "/", "text/html"))
        .unwrap()
        .unwrap();
    assert_eq!(html.status, 200);
    let page = String::from_utf8(html.body).unwrap();
    assert!(page.contains("EventSource"), "the page traces live");
}

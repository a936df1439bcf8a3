//! `netray serve` against what the open Internet sends: off-path forgeries,
//! reused ports, visitors that lie. End to end, in testbed namespaces (see
//! serve_e2e.rs); every test plays the attacker with real packets and checks
//! the honest result. Root is required; these tests fail, never skip,
//! without it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use netray_testbed::{
    Family, RouterBehavior, Side, Spawned, Testbed, Topology,
    forge::{ACK, RST, Segment, TcpSnifferV4, TimeExceededV4},
};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const PORT: u16 = 8080;

struct Server {
    process: Spawned,
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
            return Server { process };
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

/// The value of an OpenMetrics sample line `name` (labels included).
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

fn metrics(testbed: &Testbed) -> String {
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let (status, body) = testbed
        .client()
        .run(move || get(addr, "/metrics", None))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
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

/// A small deterministic generator (xorshift64*): "random" sequence numbers
/// that differ per run through the seed.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// An off-path attacker who knows the 4-tuple but not the sequence numbers
/// sprays RST and RST+ACK while the trace runs, and the destination cannot
/// answer the probes (the client drops them): no RST may end the trace as
/// "destination reached", and the ignored ones are counted.
#[test]
fn blind_rsts_do_not_reach_the_destination() {
    let testbed = Topology::chain(2).build().expect("testbed");
    let server_ip = testbed.server_addr(Family::V4);
    let client_ip = testbed.client_addr(Family::V4);
    // Probes are one-byte segments: 20 + 20 (+ 12 timestamps) + 1 bytes.
    // Real responses and the server's pure ACKs have other lengths.
    let saddr = server_ip.to_string();
    let sport = PORT.to_string();
    for command in [
        vec!["nft", "add", "table", "ip", "hostile"],
        vec![
            "nft",
            "add",
            "chain",
            "ip",
            "hostile",
            "pre",
            "{",
            "type",
            "filter",
            "hook",
            "prerouting",
            "priority",
            "-300",
            ";",
            "}",
        ],
        vec![
            "nft", "add", "rule", "ip", "hostile", "pre", "ip", "saddr", &saddr, "tcp", "sport",
            &sport, "ip", "length", "{", "41,", "53", "}", "counter", "drop",
        ],
    ] {
        testbed.client().exec(&command).expect("nft");
    }
    let _server = start_server(&testbed, &[]);
    let addr = SocketAddr::new(server_ip, PORT);
    let (result, forged) = testbed
        .client()
        .run(move || {
            let stream = connect(addr, None).unwrap();
            let client_port = stream.local_addr().unwrap().port();
            // The trace gives up on the silent destination within a few
            // round trips: spray until the answer is in.
            let answered = Arc::new(AtomicBool::new(false));
            let done = Arc::clone(&answered);
            let forger = std::thread::spawn(move || {
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1;
                let mut rng = Xorshift(seed);
                let mut sent = 0;
                let mut i = 0u32;
                while !done.load(Ordering::Relaxed) {
                    i += 1;
                    let segment = Segment {
                        src: client_ip,
                        dst: server_ip,
                        sport: client_port,
                        dport: PORT,
                        seq: rng.next(),
                        ack: rng.next(),
                        flags: if i.is_multiple_of(2) { RST } else { RST | ACK },
                        ttl: 64,
                        payload: Vec::new(),
                    };
                    if segment.send().is_ok() {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            });
            let (status, body) = exchange(stream, "/trace.json").unwrap();
            answered.store(true, Ordering::Relaxed);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            (json(&body), forger.join().unwrap())
        })
        .unwrap();
    assert!(forged > 0, "the forger could not send");
    assert_eq!(
        result["destination_reached"], false,
        "a blind RST ended the trace: {result:#}"
    );
    // The routers answered; the probes that would have reached the client
    // were dropped.
    let hops = hop_addrs(&result);
    let routers = &expected_path(&testbed, Family::V4)[..testbed.routers()];
    assert_eq!(&hops[..routers.len()], routers, "{result:#}");
    assert!(
        hops[routers.len()..].iter().all(Option::is_none),
        "{result:#}"
    );
    let metrics = metrics(&testbed);
    assert!(
        metric(&metrics, "netray_peer_segments_unacceptable_total") >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "netray_traces_ended_total{outcome=\"reached\"}"),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "netray_traces_ended_total{outcome=\"max_hops\"}"),
        1,
        "{metrics}"
    );
}

/// The entries of the server's kernel flow table (`INBAND_FLOWS`, found
/// among the process's own BPF map descriptors, read with bpftool) whose
/// peer port is `peer_port`.
fn flow_entries(server: &mut Server, peer_port: u16) -> usize {
    let pid = server.process.child().id();
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    let bpftool = |args: &[&str]| -> Value {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    let id = ids
        .into_iter()
        .find(|id| bpftool(&["map", "show", "id", &id.to_string()])["name"] == "INBAND_FLOWS")
        .expect("the server holds no INBAND_FLOWS map");
    let dump = bpftool(&["map", "dump", "id", &id.to_string()]);
    dump.as_array()
        .expect("dump")
        .iter()
        .filter(|entry| {
            // FlowKey: local_addr[16], remote_addr[16], local_port,
            // remote_port (u16, host order = little endian here), ...
            let key: Vec<u8> = entry["key"]
                .as_array()
                .expect("raw key bytes")
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u16::from_le_bytes([key[34], key[35]]) == peer_port
        })
        .count()
}

/// A visitor that never closes its side after the server closed the
/// connection (it vanished, or holds the socket open): the kernel sees only
/// our FIN, never both, so only the server's close can end the flow state.
/// It must go with that close, not linger for a later connection on the
/// 4-tuple to find. (An open connection's entry is there: the check can
/// fail.)
#[test]
fn flow_state_goes_when_the_server_closes() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let mut server = start_server(&testbed, &[]);
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    // Open and idle: tracked from its SYN.
    let idle = testbed
        .client()
        .run(move || connect(addr, None))
        .unwrap()
        .unwrap();
    let idle_port = idle.local_addr().unwrap().port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while flow_entries(&mut server, idle_port) != 1 {
        assert!(
            Instant::now() < deadline,
            "an open connection has no flow entry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Served and closed by the server; the client keeps its socket (no FIN).
    let held = testbed
        .client()
        .run(move || -> std::io::Result<TcpStream> {
            let mut stream = connect(addr, None)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(
                stream,
                "GET /healthz HTTP/1.1\r\nHost: netray\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?; // EOF: the server's FIN came
            assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
            Ok(stream)
        })
        .unwrap()
        .unwrap();
    let held_port = held.local_addr().unwrap().port();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        flow_entries(&mut server, held_port),
        0,
        "the flow state outlived the server's close"
    );
    assert_eq!(flow_entries(&mut server, idle_port), 1);
    drop((idle, held));
}

/// A visitor knows its own connection's sequence numbers, so it can forge
/// Time Exceeded for its own probes: here for the silent router's TTL,
/// naming a router that does not exist, from two addresses of one /24. Its
/// own trace shows the fake router (the forgery works); an honest visitor
/// of another network, whose trace has the same silent hop, must not get
/// it filled in from the shared table: one network's word is not enough.
#[test]
fn a_visitor_cannot_plant_a_router_in_another_visitors_trace() {
    const ROUTERS: usize = 3;
    // `netray serve`'s default: probe sequence numbers count down from the
    // acknowledged edge, max_hops per attempt.
    const MAX_HOPS: u32 = 30;
    let testbed = Topology::chain(ROUTERS)
        .router(2, RouterBehavior::Silent)
        .build()
        .expect("testbed");
    let _server = start_server(&testbed, &[]);
    let IpAddr::V4(server_ip) = testbed.server_addr(Family::V4) else {
        unreachable!()
    };
    let fake = std::net::Ipv4Addr::new(192, 0, 2, 77);
    // From the server, TTL 1 is router 3, TTL 2 the silent router 2.
    let silent_ttl = 2;
    let attacker_net = netray_testbed::visitor_addr(1, Family::V4);
    let IpAddr::V4(first) = attacker_net else {
        unreachable!()
    };
    let second = std::net::Ipv4Addr::from(first.to_bits() + 1);
    testbed
        .client()
        .exec(&["ip", "addr", "add", &format!("{second}/32"), "dev", "lo"])
        .expect("a second attacker address");
    for source in [first, second] {
        let result = testbed
            .client()
            .run(move || -> Value {
                let mut sniffer = TcpSnifferV4::new(Duration::from_millis(100)).unwrap();
                let stream = netray_testbed::http::connect_bound(
                    IpAddr::V4(source),
                    SocketAddr::new(IpAddr::V4(server_ip), PORT),
                    Duration::from_secs(10),
                )
                .unwrap();
                let client_port = stream.local_addr().unwrap().port();
                let forger = std::thread::spawn(move || -> bool {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        let Some(seen) = sniffer.next_segment().unwrap() else {
                            continue;
                        };
                        // The first probe to reach us is of round 1
                        // (attempt 0); it left with TTL `ttl + ROUTERS`
                        // and sequence number acked - 1 - (TTL - 1).
                        if seen.sport != PORT || seen.dport != client_port || seen.payload_len != 1
                        {
                            continue;
                        }
                        let sent_ttl = u32::from(seen.ttl) + ROUTERS as u32;
                        let acked = seen.seq.wrapping_add(sent_ttl);
                        for attempt in 0..3 {
                            let forged = TimeExceededV4 {
                                router: fake,
                                to: server_ip,
                                quoted_src: server_ip,
                                quoted_dst: source,
                                sport: PORT,
                                dport: client_port,
                                seq: acked
                                    .wrapping_sub(1)
                                    .wrapping_sub(attempt * MAX_HOPS + silent_ttl - 1),
                            };
                            forged.send().unwrap();
                        }
                        return true;
                    }
                    false
                });
                let (status, body) = exchange(stream, "/trace.json").unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                assert!(forger.join().unwrap(), "no probe reached the attacker");
                json(&body)
            })
            .unwrap();
        assert_eq!(
            hop_addrs(&result).get(silent_ttl as usize - 1),
            Some(&Some(IpAddr::V4(fake))),
            "the forgery did not even reach the attacker's own trace: {result:#}"
        );
    }
    // The honest visitor: the client's own address, another /24.
    let addr = SocketAddr::new(IpAddr::V4(server_ip), PORT);
    let (status, body) = testbed
        .client()
        .run(move || get(addr, "/trace.json", None))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let result = json(&body);
    let mut expected = expected_path(&testbed, Family::V4);
    expected[silent_ttl as usize - 1] = None;
    assert_eq!(hop_addrs(&result), expected, "{result:#}");
    let (status, text) = testbed
        .client()
        .run(move || get(addr, "/", None))
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        !String::from_utf8_lossy(&text).contains(&fake.to_string()),
        "the fake router is in a later trace's text view: {}",
        String::from_utf8_lossy(&text)
    );
}

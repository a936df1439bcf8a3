//! End to end: `netray trace` in the client namespace of a testbed, a small
//! TCP service in the server namespace, and the exact hop list the client
//! traces to it. Each test builds its own namespaces (unique names, removed
//! on drop, also on panic), so they run in parallel. Root is required; these
//! tests fail, never skip, without it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use netray_testbed::{Family, RouterBehavior, Side, Testbed, Topology};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// A tiny TCP service in the server namespace: answers every HTTP request
/// head with an empty `200 OK`, keeps connections open until the client
/// closes them, and counts what it saw. Stopped (threads joined) on drop.
struct Service {
    port: u16,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    /// The client address of every connection accepted.
    peers: Arc<std::sync::Mutex<Vec<IpAddr>>>,
    resets: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Service {
    fn start(testbed: &Testbed) -> Service {
        Service::start_with(testbed, None)
    }

    /// A service that closes each connection `lifetime` after accepting it.
    fn start_with(testbed: &Testbed, lifetime: Option<Duration>) -> Service {
        // Dual-stack: `[::]` also accepts IPv4 (v4-mapped).
        let listener = testbed
            .server()
            .run(|| TcpListener::bind("[::]:0"))
            .expect("server namespace")
            .expect("bind the service");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let resets = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, connections, resets, peers) = (
                Arc::clone(&stop),
                Arc::clone(&connections),
                Arc::clone(&resets),
                Arc::clone(&peers),
            );
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            peers.lock().unwrap().push(peer.ip().to_canonical());
                            let (stop, resets) = (Arc::clone(&stop), Arc::clone(&resets));
                            workers.push(std::thread::spawn(move || {
                                serve(stream, &stop, &resets, lifetime);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for worker in workers {
                    let _ = worker.join();
                }
            })
        };
        Service {
            port,
            stop,
            connections,
            peers,
            resets,
            acceptor: Some(acceptor),
        }
    }
}

fn serve(
    mut stream: TcpStream,
    stop: &AtomicBool,
    resets: &AtomicUsize,
    lifetime: Option<Duration>,
) {
    let accepted = std::time::Instant::now();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if lifetime.is_some_and(|l| accepted.elapsed() >= l) {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                request.extend_from_slice(&buf[..n]);
                while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    request.drain(..end + 4);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                resets.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {}
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Runs `netray trace ARGS` in the client namespace.
fn netray_trace(testbed: &Testbed, args: &[&str]) -> Output {
    testbed
        .client()
        .command(NETRAY)
        .arg("trace")
        .args(args)
        .output()
        .expect("run netray trace")
}

fn target(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// Runs a JSON trace and returns the result object; the run must succeed.
fn trace_json(testbed: &Testbed, target: &str, extra: &[&str]) -> Value {
    let mut args = vec!["-n", "--json"];
    args.extend_from_slice(extra);
    args.push(target);
    let out = netray_trace(testbed, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netray trace {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}\nstderr: {stderr}"))
}

/// The routers as the client sees them, then the server (`dest`).
fn expected_path(
    testbed: &Testbed,
    family: Family,
    silent: &[usize],
    dest: IpAddr,
) -> Vec<Option<IpAddr>> {
    let mut path: Vec<Option<IpAddr>> = (1..=testbed.routers())
        .map(|k| (!silent.contains(&k)).then(|| testbed.router_addr(k, Side::Client, family)))
        .collect();
    path.push(Some(dest));
    path
}

/// The exact address per TTL (`None`: silent), destination last and
/// detected, NAT marks from TTL `nat_from` on (before the destination).
fn assert_hops(result: &Value, expected: &[Option<IpAddr>], nat_from: Option<usize>) {
    let hops = result["hops"].as_array().expect("hops array");
    let got: Vec<Option<IpAddr>> = hops
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect();
    assert_eq!(got, expected, "hop addresses per TTL in {result:#}");
    assert_eq!(result["destination_reached"], true, "{result:#}");
    for (i, hop) in hops.iter().enumerate() {
        assert_eq!(hop["ttl"], i + 1);
        let last = i + 1 == hops.len();
        assert_eq!(
            hop["destination"], last,
            "only the last hop is the destination: {result:#}"
        );
        assert_eq!(hop["cached"], false, "TTL {}: {result:#}", i + 1);
        let received = hop["received"].as_u64().unwrap();
        assert_eq!(
            received == 0,
            expected[i].is_none(),
            "replies at TTL {}: {result:#}",
            i + 1
        );
        assert_eq!(hop["rtt_ms"].as_array().unwrap().len() as u64, received);
        assert!(hop["sent"].as_u64().unwrap() >= received);
        let nat = nat_from.is_some_and(|from| i + 1 >= from) && !last;
        assert_eq!(hop["nat"], nat, "nat flag at TTL {}: {result:#}", i + 1);
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn chain(family: Family, send: &str) {
    let testbed = Topology::chain(4).build().expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(family);
    let result = trace_json(&testbed, &target(server, service.port), &["--send", send]);
    assert_hops(&result, &expected_path(&testbed, family, &[], server), None);
    assert_eq!(result["family"], family_name(family));
    // `client` is the traced peer, `server` this host (the /trace.json shape).
    let peer: SocketAddr = result["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer, SocketAddr::new(server, service.port));
    let local: SocketAddr = result["server"].as_str().unwrap().parse().unwrap();
    assert_eq!(local.ip(), testbed.client_addr(family));
    drop(testbed);
    assert_eq!(service.connections.load(Ordering::Relaxed), 1);
    assert_eq!(
        service.resets.load(Ordering::Relaxed),
        0,
        "the traced connection was reset"
    );
}

#[test]
fn ipv4_chain_of_four_routers_with_http() {
    chain(Family::V4, "http");
}

#[test]
fn ipv6_chain_of_four_routers_with_http() {
    chain(Family::V6, "http");
}

#[test]
fn ipv4_chain_after_a_bare_handshake() {
    chain(Family::V4, "none");
}

#[test]
fn ipv6_chain_after_a_bare_handshake() {
    chain(Family::V6, "none");
}

fn silent_router(family: Family) {
    let testbed = Topology::chain(4)
        .router(2, RouterBehavior::Silent)
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(family);
    let result = trace_json(&testbed, &target(server, service.port), &[]);
    assert_hops(
        &result,
        &expected_path(&testbed, family, &[2], server),
        None,
    );
}

#[test]
fn ipv4_silent_router() {
    silent_router(Family::V4);
}

#[test]
fn ipv6_silent_router() {
    silent_router(Family::V6);
}

fn nat_in_front_of_server(family: Family) {
    // client — r1 — r2 (port forwarding to the server) — r3 — server
    let testbed = Topology::chain(3)
        .router(2, RouterBehavior::PortForward)
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    let public = testbed.router_addr(2, Side::Client, family);
    let result = trace_json(&testbed, &target(public, service.port), &["--send", "http"]);
    // r1; then the NAT itself, and r3 behind it, whose errors the NAT
    // translates back: both answer from the public address, the address
    // the client connected to; then the server, seen as `public` too.
    let expected = vec![
        Some(testbed.router_addr(1, Side::Client, family)),
        Some(public),
        Some(public),
        Some(public),
    ];
    assert_hops(&result, &expected, Some(2));
    let peer: SocketAddr = result["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip(), public);
}

#[test]
fn ipv4_nat_in_front_of_the_server() {
    nat_in_front_of_server(Family::V4);
}

#[test]
fn ipv6_nat_in_front_of_the_server() {
    nat_in_front_of_server(Family::V6);
}

fn behind_a_nat(family: Family) {
    // client — r1 (masquerading NAT, the client's home router) — r2 — r3 —
    // server: the probes share the connection's conntrack entry, so the NAT
    // translates them and the routers' errors like the connection itself.
    let testbed = Topology::chain(3)
        .router(
            1,
            RouterBehavior::Nat {
                masquerade_toward: Side::Server,
            },
        )
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(family);
    let result = trace_json(&testbed, &target(server, service.port), &[]);
    assert_hops(&result, &expected_path(&testbed, family, &[], server), None);
    // The NAT was in force: the server saw the NAT's address. The trace
    // needs no accept (the handshake alone is enough): the service's accept
    // loop, polling every 5 ms, may record the peer only after it ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while service.peers.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        *service.peers.lock().unwrap(),
        vec![testbed.router_addr(1, Side::Server, family)]
    );
}

#[test]
fn ipv4_client_behind_a_nat() {
    behind_a_nat(Family::V4);
}

#[test]
fn ipv6_client_behind_a_nat() {
    behind_a_nat(Family::V6);
}

/// Hop addresses `traceroute ARGS DEST` printed, per TTL (`None`: `*`).
fn classic_traceroute(testbed: &Testbed, args: &[&str], dest: IpAddr) -> Vec<Option<IpAddr>> {
    let dest = dest.to_string();
    let mut all = vec!["-n", "-q", "1", "-w", "0.5", "-m", "8"];
    all.extend_from_slice(args);
    all.push(&dest);
    let out = testbed
        .client()
        .command("traceroute")
        .args(&all)
        .output()
        .expect("traceroute (Debian package `traceroute`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .skip(1)
        .map(|line| {
            line.split_whitespace()
                .nth(1)
                .and_then(|field| field.parse().ok())
        })
        .collect()
}

fn filtering_router(family: Family) {
    // client — r1 — r2 (firewall) — r3 — r4 — server. The firewall is the
    // common "only TCP gets through" policy: it drops forwarded UDP and
    // ICMP echo requests (both directions) and passes TCP and the ICMP
    // errors routers send back. It still sends its own Time Exceeded.
    let testbed = Topology::chain(4)
        .router(2, RouterBehavior::DropUdpIcmp)
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(family);
    let behind: Vec<IpAddr> = (3..=4)
        .map(|k| testbed.router_addr(k, Side::Client, family))
        .chain([server])
        .collect();
    let flag = if family == Family::V4 { "-4" } else { "-6" };
    for method in ["-U", "-I"] {
        let hops = classic_traceroute(&testbed, &[flag, method], server);
        assert_eq!(
            hops.first().copied().flatten(),
            Some(testbed.router_addr(1, Side::Client, family)),
            "traceroute {method} works up to the firewall: {hops:?}"
        );
        assert!(
            hops.iter().flatten().all(|addr| !behind.contains(addr)),
            "traceroute {method} got past the firewall: {hops:?}"
        );
    }
    let result = trace_json(&testbed, &target(server, service.port), &[]);
    assert_hops(&result, &expected_path(&testbed, family, &[], server), None);
}

#[test]
fn ipv4_traces_past_a_router_that_filters_udp_and_icmp() {
    filtering_router(Family::V4);
}

#[test]
fn ipv6_traces_past_a_router_that_filters_udp_and_icmp() {
    filtering_router(Family::V6);
}

#[test]
fn watch_repeats_rounds_on_one_connection() {
    let testbed = Topology::chain(2).build().expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(Family::V4);
    let target = target(server, service.port);
    let out = netray_trace(
        &testbed,
        &[
            "-n",
            "--json",
            "--watch",
            "--count",
            "3",
            "--interval",
            "0.1",
            "--send",
            "http",
            &target,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rounds: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rounds.len(), 3, "{stdout}");
    let expected = expected_path(&testbed, Family::V4, &[], server);
    for round in &rounds {
        assert_hops(round, &expected, None);
        assert_eq!(round["server"], rounds[0]["server"], "same connection");
    }
    drop(testbed);
    assert_eq!(service.connections.load(Ordering::Relaxed), 1);
}

#[test]
fn watch_table_keeps_loss_and_jitter() {
    let testbed = Topology::chain(2)
        .router(1, RouterBehavior::Silent)
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(Family::V6);
    let out = netray_trace(
        &testbed,
        &[
            "-n",
            "--watch",
            "-c",
            "2",
            "-i",
            "0.1",
            &target(server, service.port),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    eprintln!("{stdout}");
    let last_table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("round 2"))
        .collect();
    assert!(
        last_table[0].contains("reached in 2 of 2 rounds"),
        "{stdout}"
    );
    assert!(last_table[1].contains("JITTER"), "{stdout}");
    let row = |ttl: &str| {
        last_table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(ttl))
            .unwrap_or_else(|| panic!("no TTL {ttl} row: {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // TTL 1 silent: every probe of both rounds lost.
    assert_eq!(row("1")[1..4], ["*", "-", "100.0%"], "{stdout}");
    // One probe per TTL and round by default with --watch, and a TTL
    // nobody answered one retry per round.
    assert_eq!(row("1")[4..6], ["4", "0"], "{stdout}");
    let r2 = testbed.router_addr(2, Side::Client, Family::V6).to_string();
    assert_eq!(
        row("2")[1..6],
        [r2.as_str(), "-", "0.0%", "2", "2"],
        "{stdout}"
    );
    let server = server.to_string();
    let dest = row("3");
    assert_eq!(dest[1..4], [server.as_str(), "-", "0.0%"], "{stdout}");
    assert_eq!(dest.last(), Some(&"destination"), "{stdout}");
}

fn assert_fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn clear_errors_for_bad_targets() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let server = testbed.server_addr(Family::V4);
    // Nothing listens on port 9: the server answers the SYN with a RST.
    let refused = netray_trace(&testbed, &["-n", &target(server, 9)]);
    assert_fails(&refused, "refused");
    // The server's firewall drops SYNs to port 10.
    testbed
        .server()
        .exec(&[
            "nft",
            "add table inet t; add chain inet t in { type filter hook input priority 0; }; \
             add rule inet t in tcp dport 10 drop",
        ])
        .expect("nft");
    let timed_out = netray_trace(&testbed, &["-n", "--timeout", "0.5", &target(server, 10)]);
    assert_fails(&timed_out, "timed out");
    // `.invalid` never resolves (RFC 6761).
    let unresolvable = netray_trace(&testbed, &["-n", "no-such-host.invalid"]);
    assert_fails(
        &unresolvable,
        "cannot resolve host \"no-such-host.invalid\"",
    );
    let wrong_family = netray_trace(&testbed, &["-n", "-6", &server.to_string()]);
    assert_fails(&wrong_family, "IPv4 address");
    let bad_port = netray_trace(&testbed, &["-n", "10.0.1.2:https"]);
    assert_fails(&bad_port, "invalid PORT");
}

#[test]
fn missing_capabilities_are_named() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let server = testbed.server_addr(Family::V4).to_string();
    // Root without any capability (empty bounding set before exec).
    let out = testbed
        .client()
        .command("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            NETRAY,
            "trace",
            "-n",
            &server,
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert_fails(
        &out,
        "missing: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_NET_RAW",
    );
}

/// `/tmp/NAME-PID-N/`, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netray-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn write(&self, file: &str, content: &str) -> String {
        let path = self.0.join(file);
        std::fs::write(&path, content).expect("write temp file");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tls_handshake_then_trace_to_netray_serve() {
    // The service is `netray serve` over HTTPS (a self-signed certificate:
    // `--send tls` completes the handshake without verifying it). Its own
    // capture runs in the server namespace, ours in the client's.
    let testbed = Topology::chain(2).build().expect("testbed");
    let dir = TempDir::new("trace-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["server.test".to_string()]).unwrap();
    let cert_path = dir.write("cert.pem", &cert.cert.pem());
    let key_path = dir.write("key.pem", &cert.signing_key.serialize_pem());
    let _serve = testbed
        .server()
        .spawn(&[
            NETRAY,
            "serve",
            "--https",
            "[::]:8443",
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
        ])
        .expect("start netray serve");
    let deadline = std::time::Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    loop {
        let listening = testbed
            .server()
            .exec(&["ss", "-Hltn", "sport = :8443"])
            .expect("ss");
        if !listening.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "netray serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for family in [Family::V4, Family::V6] {
        let server = testbed.server_addr(family);
        let result = trace_json(&testbed, &target(server, 8443), &["--send", "tls"]);
        assert_hops(&result, &expected_path(&testbed, family, &[], server), None);
    }
    // Without a TLS server on the other end, --send tls says so.
    let service = Service::start(&testbed);
    let out = netray_trace(
        &testbed,
        &[
            "-n",
            "--send",
            "tls",
            "--timeout",
            "0.5",
            &target(testbed.server_addr(Family::V4), service.port),
        ],
    );
    assert_fails(&out, "--send tls");
}

#[test]
fn tracing_this_host_is_refused_clearly() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let own = testbed.client_addr(Family::V4).to_string();
    let out = netray_trace(&testbed, &["-n", &own]);
    assert_fails(&out, "is this host");
}

#[test]
fn watch_reconnects_when_the_server_closes_the_connection() {
    // The server closes every connection 1 s after accepting it; rounds are
    // 1.5 s apart, so every round after the first finds its connection
    // closed, reconnects and traces the new connection.
    let testbed = Topology::chain(1).build().expect("testbed");
    let service = Service::start_with(&testbed, Some(Duration::from_secs(1)));
    let server = testbed.server_addr(Family::V6);
    let out = netray_trace(
        &testbed,
        &[
            "-n",
            "--json",
            "--watch",
            "-c",
            "3",
            "-i",
            "1.5",
            &target(server, service.port),
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let rounds: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rounds.len(), 3, "{stdout}\n{stderr}");
    let expected = expected_path(&testbed, Family::V6, &[], server);
    for round in &rounds {
        assert_hops(round, &expected, None);
    }
    assert_eq!(stderr.matches("reconnecting").count(), 2, "{stderr}");
    // Three connections, three local ports.
    let locals: std::collections::HashSet<&str> = rounds
        .iter()
        .map(|r| r["server"].as_str().unwrap())
        .collect();
    assert_eq!(locals.len(), 3, "{stdout}");
    drop(testbed);
    assert_eq!(service.connections.load(Ordering::Relaxed), 3);
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
fn resolves_the_host_and_names_hops_through_the_resolver() {
    let testbed = Topology::chain(2).build().expect("testbed");
    let service = Service::start(&testbed);
    let client_ns = testbed.client().name().to_string();
    let _etc = NetnsEtc::resolv_conf(&client_ns, "nameserver 127.0.0.1\n");
    let (r1, server) = (
        testbed.router_addr(1, Side::Client, Family::V4),
        testbed.server_addr(Family::V4),
    );
    // Removed on drop, also when the test fails.
    let dns_dir = TempDir::new("trace-dns");
    let pid_file = dns_dir.0.join("dnsmasq.pid");
    let _dns = testbed
        .client()
        .spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--pid-file={}", pid_file.display()),
            &format!("--host-record=isp.netray.test,{r1}"),
            &format!(
                "--host-record=www.netray.test,{server},{}",
                testbed.server_addr(Family::V6)
            ),
        ])
        .expect("dnsmasq (Debian package; `cargo xtask setup` installs it)");
    let deadline = std::time::Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    loop {
        let sockets = testbed
            .client()
            .exec(&["ss", "-Hlun", "sport = :53"])
            .expect("ss");
        if String::from_utf8_lossy(&sockets.stdout).contains("127.0.0.1:53") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // By name: resolved through the same resolver, then traced.
    let out = netray_trace(
        &testbed,
        &["-4", &format!("www.netray.test:{}", service.port)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .starts_with(&format!("netray trace to www.netray.test ({server}) port")),
        "{stdout}"
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(2)
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let r2 = testbed.router_addr(2, Side::Client, Family::V4).to_string();
    let (r1, server) = (r1.to_string(), server.to_string());
    assert_eq!(
        rows[0][..3],
        ["1", r1.as_str(), "isp.netray.test"],
        "{stdout}"
    );
    assert_eq!(rows[1][..3], ["2", r2.as_str(), "-"], "{stdout}");
    assert_eq!(
        rows[2][..3],
        ["3", server.as_str(), "www.netray.test"],
        "{stdout}"
    );
    assert_eq!(rows[2].last(), Some(&"destination"), "{stdout}");
    assert!(stdout.contains("reached at TTL 3"), "{stdout}");
    // -4 / -6 pick the family of a dual-stack name.
    for (flag, family) in [("-6", Family::V6), ("-4", Family::V4)] {
        let result = trace_json(
            &testbed,
            &format!("www.netray.test:{}", service.port),
            &[flag],
        );
        assert_eq!(result["family"], family_name(family));
        let dest = testbed.server_addr(family);
        assert_hops(&result, &expected_path(&testbed, family, &[], dest), None);
    }
}

#[test]
fn max_hops_short_of_the_destination_exits_1_with_every_ttl() {
    let testbed = Topology::chain(4).build().expect("testbed");
    let service = Service::start(&testbed);
    let server = testbed.server_addr(Family::V4);
    let out = netray_trace(
        &testbed,
        &["-n", "--json", "-m", "2", &target(server, service.port)],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(result["destination_reached"], false);
    let hops: Vec<Option<IpAddr>> = result["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect();
    assert_eq!(
        hops,
        vec![
            Some(testbed.router_addr(1, Side::Client, Family::V4)),
            Some(testbed.router_addr(2, Side::Client, Family::V4)),
        ]
    );
    let text = netray_trace(&testbed, &["-n", "-m", "2", &target(server, service.port)]);
    assert_eq!(text.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("not reached within 2 hops"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn watch_stays_exact_under_router_icmp_rate_limits() {
    // Routers with the kernel's ICMP error rate limits (a burst of 6 per
    // destination, then 1 per second): --watch sends one probe per TTL per
    // round, so four quick rounds stay within the burst and every router
    // answers every round (three probes per TTL would need twelve errors
    // from each router).
    let testbed = Topology::chain(3)
        .kernel_icmp_rate_limits()
        .build()
        .expect("testbed");
    let service = Service::start(&testbed);
    for family in [Family::V4, Family::V6] {
        let server = testbed.server_addr(family);
        let out = netray_trace(
            &testbed,
            &[
                "-n",
                "--json",
                "--watch",
                "-c",
                "4",
                "-i",
                "0.1",
                &target(server, service.port),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rounds: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(rounds.len(), 4, "{stdout}");
        let expected = expected_path(&testbed, family, &[], server);
        for round in &rounds {
            assert_hops(round, &expected, None);
            for hop in round["hops"].as_array().unwrap() {
                // One probe per TTL and round; a reply slower than half
                // its wait (a loaded guest) earns the TTL a retry.
                let sent = hop["sent"].as_u64().unwrap();
                assert!((1..=2).contains(&sent), "{round:#}");
            }
        }
    }
}

/// Drops every other probe that would expire at router `k` (IPv4 TTL 1 on
/// arrival, IPv6 hop limit 1), starting with the first: an nftables rule
/// with a counter of its own (`numgen inc`), so which probe is lost is
/// known, not left to chance.
fn drop_every_other_expiring_probe(testbed: &Testbed, k: usize) {
    for rule in [
        "add table inet netray_test_loss",
        "add chain inet netray_test_loss prerouting { type filter hook prerouting priority raw; }",
        "add rule inet netray_test_loss prerouting meta l4proto tcp ip ttl 1 numgen inc mod 2 == 0 drop",
        "add rule inet netray_test_loss prerouting meta l4proto tcp ip6 hoplimit 1 numgen inc mod 2 == 0 drop",
    ] {
        let out = testbed
            .router(k)
            .command("nft")
            .arg(rule)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Traces with one probe per TTL while router `k` loses the first probe
/// that expires there: TTL `k` is heard only thanks to its retry.
fn lost_probe_is_retried(testbed: &Testbed, k: usize) {
    drop_every_other_expiring_probe(testbed, k);
    let service = Service::start(testbed);
    let server = testbed.server_addr(Family::V4);
    let result = trace_json(testbed, &target(server, service.port), &["-q", "1"]);
    assert_hops(
        &result,
        &expected_path(testbed, Family::V4, &[], server),
        None,
    );
    let hop = &result["hops"][k - 1];
    assert_eq!(
        (&hop["sent"], &hop["received"]),
        (&Value::from(2), &Value::from(1)),
        "{result:#}"
    );
}

#[test]
fn a_lost_probe_is_retried() {
    lost_probe_is_retried(&Topology::chain(3).build().expect("testbed"), 2);
}

/// Paths with real round trips: every link delayed with netem. Only kernels
/// with netem run these (the kernel-matrix guests; `cargo xtask test` leaves
/// this module out on a host kernel without netem and says so).
mod needs_netem {
    use super::*;

    /// One-way delay of every link: router k is k links from the client,
    /// so its replies take at least 2·k·5 ms; the server (5 links) 50 ms.
    const LINK_DELAY: Duration = Duration::from_millis(5);
    const ROUTERS: usize = 4;

    fn delayed_chain(family: Family, silent: &[usize]) {
        let mut topology = Topology::chain(ROUTERS);
        for link in 0..=ROUTERS {
            topology = topology.delay(link, LINK_DELAY, Duration::ZERO);
        }
        for &k in silent {
            topology = topology.router(k, RouterBehavior::Silent);
        }
        let testbed = topology.build().expect("testbed with delayed links");
        let service = Service::start(&testbed);
        let server = testbed.server_addr(family);
        let result = trace_json(&testbed, &target(server, service.port), &[]);
        assert_hops(
            &result,
            &expected_path(&testbed, family, silent, server),
            None,
        );
        // netem is the yardstick: no reply can come back sooner than the
        // links' delays, and none should take seconds more.
        for (i, hop) in result["hops"].as_array().unwrap().iter().enumerate() {
            let floor_ms = 2.0 * (i + 1) as f64 * LINK_DELAY.as_secs_f64() * 1000.0;
            for rtt in hop["rtt_ms"].as_array().unwrap() {
                let rtt = rtt.as_f64().unwrap();
                assert!(
                    rtt >= floor_ms - 0.5 && rtt < floor_ms + 2000.0,
                    "TTL {}: RTT {rtt} ms, the path's delay alone is {floor_ms} ms: {result:#}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn ipv4_delayed_chain() {
        delayed_chain(Family::V4, &[]);
    }

    #[test]
    fn ipv6_delayed_chain() {
        delayed_chain(Family::V6, &[]);
    }

    #[test]
    fn ipv4_delayed_chain_with_a_silent_router() {
        delayed_chain(Family::V4, &[2]);
    }

    #[test]
    fn ipv6_delayed_chain_with_a_silent_router() {
        delayed_chain(Family::V6, &[3]);
    }

    /// 20 ms to the first router and back, 5 ms per link after it, router
    /// 2 silent: the silent hop's wait scales with the slow first link.
    #[test]
    fn ipv4_slow_first_link_and_a_silent_router() {
        let first = Duration::from_millis(20);
        let testbed = Topology::chain(ROUTERS)
            .delay(0, first, Duration::ZERO)
            .delay(1, LINK_DELAY, Duration::ZERO)
            .delay(2, LINK_DELAY, Duration::ZERO)
            .delay(3, LINK_DELAY, Duration::ZERO)
            .delay(4, LINK_DELAY, Duration::ZERO)
            .router(2, RouterBehavior::Silent)
            .build()
            .expect("testbed with delayed links");
        let service = Service::start(&testbed);
        let server = testbed.server_addr(Family::V4);
        let result = trace_json(&testbed, &target(server, service.port), &[]);
        assert_hops(
            &result,
            &expected_path(&testbed, Family::V4, &[2], server),
            None,
        );
        let first_ms = 2.0 * first.as_secs_f64() * 1000.0;
        for (i, hop) in result["hops"].as_array().unwrap().iter().enumerate() {
            let floor_ms = first_ms + 2.0 * i as f64 * LINK_DELAY.as_secs_f64() * 1000.0;
            for rtt in hop["rtt_ms"].as_array().unwrap() {
                assert!(
                    rtt.as_f64().unwrap() >= floor_ms - 0.5,
                    "TTL {}: faster than the links' delay {floor_ms} ms: {result:#}",
                    i + 1
                );
            }
        }
    }

    /// Delayed links with jitter and 2 % loss on the middle link (each way):
    /// the hops stay exact (a TTL loses its answer only if its three probes
    /// and its retry are all lost), and what was lost is reported as sent
    /// and not received, never as a wrong hop.
    #[test]
    fn ipv4_delayed_chain_with_jitter_and_loss() {
        let mut topology = Topology::chain(ROUTERS);
        for link in 0..=ROUTERS {
            topology = topology.delay(link, LINK_DELAY, Duration::from_millis(1));
        }
        let testbed = topology.loss(2, 2).build().expect("testbed");
        let service = Service::start(&testbed);
        let server = testbed.server_addr(Family::V4);
        for _ in 0..3 {
            let result = trace_json(&testbed, &target(server, service.port), &[]);
            assert_hops(
                &result,
                &expected_path(&testbed, Family::V4, &[], server),
                None,
            );
        }
    }

    /// The retry on a delayed path: router 3 loses the first probe that
    /// expires there.
    #[test]
    fn ipv4_delayed_chain_retries_a_lost_probe() {
        let mut topology = Topology::chain(ROUTERS);
        for link in 0..=ROUTERS {
            topology = topology.delay(link, LINK_DELAY, Duration::ZERO);
        }
        lost_probe_is_retried(&topology.build().expect("testbed"), 3);
    }
}

//! `netray serve` (the real binary, its in-band tracer on a testbed) under
//! connection floods and idle connections, and after its privilege drop:
//!
//! - 4 300 idle sockets from one address do not keep another address from
//!   `/healthz` and an exact trace; what is refused is counted in /metrics;
//! - connections that send nothing are closed after --first-request-timeout;
//! - an idle HTTP/2 (h2c) connection that keeps PINGing is closed after
//!   --idle-timeout;
//! - the server runs as `nobody` with no capability in any set while traces
//!   work — or, on a kernel that refuses bpf() map operations without
//!   CAP_BPF (measured here independently, cross-checked with the kernel
//!   version), with exactly CAP_BPF effective and permitted and nothing
//!   else — and ACME (local pebble) still issues after the drop; `netray
//!   check` says which.
//!
//! The flood needs ~4 400 descriptors in this process: RLIMIT_NOFILE is
//! raised (soft to hard, hard to 16 384 as root) before it starts; the server
//! raises its own to fit --max-connections.
//! Root is required; these tests fail, never skip, without it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use netray_testbed::{Family, Side, Spawned, Testbed, Topology, http::Response};
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
    let process = testbed.server().spawn(&args).expect("start netray serve");
    let server = Server { process };
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    // Generous: program loading alone takes ~10 s in a TCG guest.
    let deadline = Instant::now() + Duration::from_secs(120);
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

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    netray_testbed::http::get(addr, path, "*/*", Duration::from_secs(15))
}

fn client_get(testbed: &Testbed, family: Family, path: &str) -> Response {
    let addr = SocketAddr::new(testbed.server_addr(family), PORT);
    let path = path.to_string();
    testbed
        .client()
        .run(move || http_get(addr, &path))
        .expect("client namespace")
        .expect("GET from the client")
}

/// The value of one sample line (`name{labels} value`) of the exposition.
fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(testbed: &Testbed) -> String {
    String::from_utf8(client_get(testbed, Family::V4, "/metrics").body).unwrap()
}

/// The exact path the server must trace back to the client (chain topology,
/// every router answering), checked hop by hop.
fn assert_exact_trace(testbed: &Testbed, family: Family) {
    let response = client_get(testbed, family, "/trace.json");
    assert_eq!(
        response.status,
        200,
        "/trace.json over {family:?}: {}",
        String::from_utf8_lossy(&response.body)
    );
    let result: Value = serde_json::from_slice(&response.body).expect("JSON");
    let mut expected: Vec<Option<IpAddr>> = (1..=testbed.routers())
        .rev()
        .map(|k| Some(testbed.router_addr(k, Side::Server, family)))
        .collect();
    expected.push(Some(testbed.client_addr(family)));
    let got: Vec<Option<IpAddr>> = result["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .map(|h| h["addr"].as_str().map(|a| a.parse().unwrap()))
        .collect();
    assert_eq!(got, expected, "hops in {result:#}");
    for hop in result["hops"].as_array().unwrap() {
        assert!(hop["received"].as_u64().unwrap() > 0, "{result:#}");
        assert_eq!(hop["cached"], false, "{result:#}");
    }
    assert_eq!(result["destination_reached"], true);
}

fn raise_nofile(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            limit.rlim_max = limit.rlim_max.max(wanted);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "raise RLIMIT_NOFILE to {wanted}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `n` connections from `node`'s namespace that never send a byte.
fn idle_sockets(node: &netray_testbed::Netns, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    node.run(move || {
        (0..n)
            .map(|i| {
                TcpStream::connect_timeout(&to, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .expect("router namespace")
}

#[test]
fn one_address_at_its_cap_does_not_lock_out_another() {
    const FLOOD: usize = 4300;
    const PER_CLIENT: u64 = 64;
    raise_nofile(16_384);
    let testbed = Topology::chain(2).build().expect("testbed");
    let _server = start_server(
        &testbed,
        &[
            "--max-connections-per-client",
            &PER_CLIENT.to_string(),
            // The flood must stay open for the whole test.
            "--first-request-timeout",
            "600",
        ],
    );
    // The attacker: router 1 (next to the client), its own address.
    let target = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let flood = idle_sockets(testbed.router(1), target, FLOOD);
    let refused = FLOOD as u64 - PER_CLIENT;
    let sample = "netray_http_connections_refused_total{reason=\"per_client\"}";
    // The server accepts (and refuses) at its pace: wait until all are seen.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics(&testbed);
        if metric(&text, sample) == Some(refused) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&text, sample), Some(refused), "{text}");
    assert_eq!(
        metric(
            &text,
            "netray_http_connections_refused_total{reason=\"global\"}"
        ),
        Some(0)
    );
    // Another address gets everything while the flood holds its share.
    for _ in 0..5 {
        let r = client_get(&testbed, Family::V4, "/healthz");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    }
    assert_exact_trace(&testbed, Family::V4);
    assert_exact_trace(&testbed, Family::V6);
    // The admitted ones are still open: the cap refused, it did not reset.
    let text = metrics(&testbed);
    assert!(
        metric(&text, "netray_http_connections_open").unwrap() >= PER_CLIENT,
        "{text}"
    );
    drop(flood);
}

#[test]
fn connections_that_send_nothing_are_closed_after_the_timeout() {
    const SILENT: usize = 50;
    let testbed = Topology::chain(1).build().expect("testbed");
    let _server = start_server(&testbed, &["--first-request-timeout", "2"]);
    let target = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let opened = Instant::now();
    let mut silent = idle_sockets(testbed.router(1), target, SILENT);
    // One more that sends half a request head and stops (slowloris).
    let mut partial = testbed
        .router(1)
        .run(move || TcpStream::connect(target))
        .unwrap()
        .unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    silent.push(partial);
    for (i, socket) in silent.iter_mut().enumerate() {
        socket
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut buf = [0u8; 64];
        match socket.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection {i}: expected a close, got {other:?}"),
        }
    }
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(12),
        "closed after {elapsed:?}, --first-request-timeout 2"
    );
    let text = metrics(&testbed);
    assert_eq!(
        metric(
            &text,
            "netray_http_connections_timed_out_total{phase=\"first_request\"}"
        ),
        Some(SILENT as u64 + 1),
        "{text}"
    );
}

#[test]
fn idle_http2_connection_is_closed_even_when_it_pings() {
    let testbed = Topology::chain(1).build().expect("testbed");
    let _server = start_server(&testbed, &["--idle-timeout", "3"]);
    let target = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let socket = testbed
        .client()
        .run(move || TcpStream::connect(target))
        .unwrap()
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (since_request, idle_for, pings) = runtime.block_on(async move {
        let io = tokio::net::TcpStream::from_std(socket).unwrap();
        let (mut client, mut connection) = h2::client::handshake(io).await.expect("h2 handshake");
        let mut ping_pong = connection.ping_pong().expect("ping_pong");
        let mut driver = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{target}/healthz"))
            .body(())
            .unwrap();
        // The server's idle time starts between these two instants: after
        // the request, once the response's last frame is out.
        let requested = Instant::now();
        let (response, _) = client.send_request(request, true).expect("send");
        let response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk.expect("body");
        }
        let idle_from = Instant::now();
        // Keep the connection busy with PINGs (answered by the server)
        // but send no request: it must still be closed.
        let mut pings = 0u32;
        loop {
            tokio::select! {
                result = &mut driver => {
                    result.unwrap().expect("connection ends cleanly (GOAWAY)");
                    break;
                }
                pong = ping_pong.ping(h2::Ping::opaque()) => {
                    if pong.is_err() {
                        // The server went away between our PINGs.
                        let _ = (&mut driver).await;
                        break;
                    }
                    pings += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                () = tokio::time::sleep(Duration::from_secs(20)) => panic!("idle h2 connection still open after 20 s"),
            }
        }
        (requested.elapsed(), idle_from.elapsed(), pings)
    });
    assert!(pings >= 3, "the server answered {pings} PINGs");
    // Bounds from each side of the server's idle start: a loaded guest can
    // take longer to read the last body frame than the server to send it.
    assert!(
        since_request >= Duration::from_millis(2900) && idle_for < Duration::from_secs(10),
        "closed {since_request:?} after the request and {idle_for:?} after its response, --idle-timeout 3"
    );
    let text = metrics(&testbed);
    assert_eq!(
        metric(
            &text,
            "netray_http_connections_timed_out_total{phase=\"idle\"}"
        ),
        Some(1),
        "{text}"
    );
}

// ------------------------------------------------------------ privileges

/// Every thread of `pid`, from /proc: (uids, cap sets, no_new_privs).
fn thread_privileges(pid: u32) -> Vec<netray::privileges::ThreadPrivileges> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .map(|e| {
            let path = e.unwrap().path().join("status");
            let status = std::fs::read_to_string(&path).unwrap();
            netray::privileges::ThreadPrivileges::from_proc_status(&status)
                .unwrap_or_else(|| panic!("cannot parse {}", path.display()))
        })
        .collect()
}

fn nobody_uid() -> u32 {
    let uid = netray::privileges::lookup_user("nobody", "test")
        .unwrap()
        .uid;
    assert_ne!(uid, 0, "nobody is not root");
    uid
}

/// CAP_BPF's bit (linux/capability.h).
const CAP_BPF: u64 = 1 << 39;
/// CAP_SYS_ADMIN's bit, which the kernel accepts instead of CAP_BPF.
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// Whether this kernel refuses bpf() map operations on a descriptor already
/// open to a thread without CAP_BPF (and CAP_SYS_ADMIN) — measured here
/// with the raw syscalls, not with netray's own probe: a one-entry array map
/// created in this process, then a thread of its own that takes both out of
/// its effective set and looks the map up.
///
/// Cross-checked against the kernel: before 5.19 ("bpf: refine
/// kernel.unprivileged_bpf_disabled behaviour") every bpf() command is
/// refused then while kernel.unprivileged_bpf_disabled is set; since, only
/// map creation and program loading are.
fn kernel_refuses_map_operations_without_cap_bpf() -> bool {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    #[repr(C)]
    struct Elem {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let create = Create {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK, counted per user:
    // root's netray servers of the other tests count too. Raising it needs
    // CAP_SYS_RESOURCE, which a root without it (a container) lacks; newer
    // kernels do not charge memlock, and if the map cannot be created the
    // assertion below says why.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    // SAFETY: BPF_MAP_CREATE (0) with an attribute of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &raw const create, size_of::<Create>()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let fd = fd as i32;
    let refused = std::thread::spawn(move || {
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset of this thread only; it ends right after.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
                0
            );
            let drop = !(CAP_BPF | CAP_SYS_ADMIN);
            data[0].effective &= drop as u32;
            data[1].effective &= (drop >> 32) as u32;
            assert_eq!(
                libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
                0
            );
        }
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
        assert_eq!(
            eff & (CAP_BPF | CAP_SYS_ADMIN),
            0,
            "probe thread CapEff {eff:x}"
        );
        let (key, mut value) = (0u32, 0u32);
        let lookup = Elem {
            map_fd: fd as u32,
            pad: 0,
            key: &raw const key as u64,
            value: &raw mut value as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_LOOKUP_ELEM (1) on locals that outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 1, &raw const lookup, size_of::<Elem>()) };
        let error = std::io::Error::last_os_error();
        assert!(
            rc == 0 || error.raw_os_error() == Some(libc::EPERM),
            "lookup without CAP_BPF: {error}"
        );
        rc != 0
    })
    .join()
    .expect("probe thread");
    // SAFETY: closing the map created above.
    unsafe { libc::close(fd) };
    let sysctl: u32 = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap());
    let version = (numbers.next().unwrap(), numbers.next().unwrap());
    assert_eq!(
        refused,
        sysctl != 0 && version < (5, 19),
        "kernel {} with kernel.unprivileged_bpf_disabled={sysctl}: map lookup without CAP_BPF \
         {}",
        release.trim(),
        if refused { "refused" } else { "allowed" }
    );
    refused
}

/// Every thread of `pid` runs as `uid` with exactly `kept` effective and
/// permitted, no other capability anywhere, and no_new_privs.
fn assert_dropped(pid: u32, uid: u32, kept: u64) {
    let threads = thread_privileges(pid);
    assert!(threads.len() > 1, "a multi-threaded server: {threads:?}");
    for t in threads {
        assert_eq!(t.uids, [uid; 4], "real, effective, saved, fs uid: {t:?}");
        assert_eq!(
            t.caps,
            [0, kept, kept, 0, 0],
            "CapInh, CapPrm, CapEff, CapBnd, CapAmb (want {kept:#x} kept): {t:?}"
        );
        assert!(t.no_new_privs, "{t:?}");
    }
}

/// What serve must keep here: CAP_BPF exactly where the kernel needs it.
fn expected_kept() -> u64 {
    if kernel_refuses_map_operations_without_cap_bpf() {
        CAP_BPF
    } else {
        0
    }
}

#[test]
fn serve_runs_as_nobody_without_capabilities_and_still_traces() {
    let kept = expected_kept();
    let testbed = Topology::chain(2).build().expect("testbed");
    // Started as root, no --user: the default is nobody.
    let server = start_server(&testbed, &[]);
    let pid = server.process.id();
    let nobody = nobody_uid();
    assert_dropped(pid, nobody, kept);
    // New traces after the drop: raw sockets, TCP_INFO, map updates and
    // lookups (flow registration, arming), ring buffer, all through what
    // was opened before.
    for _ in 0..2 {
        assert_exact_trace(&testbed, Family::V4);
        assert_exact_trace(&testbed, Family::V6);
    }
    assert_dropped(pid, nobody, kept);
}

#[test]
fn check_says_what_the_privilege_drop_keeps() {
    let kept = expected_kept();
    let out = std::process::Command::new(NETRAY)
        .args(["check", "--json"])
        .output()
        .expect("run netray check");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netray check --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let serve = &report["capabilities"]["serve"];
    assert_eq!(serve["ok"], true, "{serve:#}");
    let says_cap_bpf = serve["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("privilege drop keeps CAP_BPF"));
    assert_eq!(says_cap_bpf, kept == CAP_BPF, "{serve:#}");
}

/// A directory under the temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("netray-admission-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a `localhost` leaf it signs (pebble's own HTTPS).
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

#[test]
fn acme_issues_after_the_privilege_drop() {
    use std::os::unix::fs::MetadataExt as _;
    const HTTPS: u16 = 8443;
    const ACME: u16 = 14000;
    const MGMT: u16 = 15000;
    let testbed = Topology::chain(1).build().expect("testbed");
    let dir = TempDir::new("acme");
    let (ca, leaf, key) = test_pki();
    let ca_path = dir.write("ca.pem", &ca);
    let pebble_config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{ACME}"),
            "managementListenAddress": format!("127.0.0.1:{MGMT}"),
            "certificate": dir.write("pebble-cert.pem", &leaf),
            "privateKey": dir.write("pebble-key.pem", &key),
            "httpPort": 5002,
            // pebble validates TLS-ALPN-01 at localhost:tlsPort: our --https.
            "tlsPort": HTTPS,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    let config_path = dir.write("pebble.json", &pebble_config.to_string());
    // pebble and netray share the server namespace (its own loopback).
    let _pebble = testbed
        .server()
        .spawn(&[
            "env",
            "PEBBLE_VA_NOSLEEP=1",
            "PEBBLE_WFE_NONCEREJECT=0",
            "/usr/bin/pebble",
            "-config",
            &config_path,
        ])
        .expect("pebble (Debian package; `cargo xtask setup` installs it)");
    // Generous as for every server start: pebble generates its issuing
    // chain first, which takes long in a TCG guest.
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    while !testbed
        .server()
        .run(|| {
            TcpStream::connect(("127.0.0.1", ACME)).is_ok()
                && TcpStream::connect(("127.0.0.1", MGMT)).is_ok()
        })
        .unwrap()
    {
        assert!(Instant::now() < deadline, "pebble did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cache = dir.0.join("cache");
    let https = format!("[::]:{HTTPS}");
    let directory = format!("https://127.0.0.1:{ACME}/dir");
    let server = start_server(
        &testbed,
        &[
            "--https",
            &https,
            "--acme-domain",
            "localhost",
            "--acme-directory",
            &directory,
            "--acme-ca-cert",
            &ca_path,
            "--acme-cache",
            cache.to_str().unwrap(),
            "--acme-contact",
            "admin@netray.test",
            "--user",
            "nobody",
        ],
    );
    let nobody = nobody_uid();
    assert_dropped(server.process.id(), nobody, expected_kept());
    // pebble's issuing root (random per run), then HTTPS with the issued
    // certificate, verified by curl (a client nobody here wrote).
    let root = testbed
        .server()
        .exec(&[
            "curl",
            "-sSf",
            // Our own pebble on the namespace's loopback; what matters is
            // that the issued certificate below verifies against this root.
            "--insecure",
            &format!("https://127.0.0.1:{MGMT}/roots/0"),
        ])
        .expect("pebble root");
    let root_path = dir.write("root.pem", &String::from_utf8(root.stdout).unwrap());
    let url = format!("https://localhost:{HTTPS}/healthz");
    let resolve = format!("localhost:{HTTPS}:127.0.0.1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = testbed
            .server()
            .command("curl")
            .args(["-sf", "--cacert", &root_path, "--resolve", &resolve, &url])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(out.stdout, b"ok\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from pebble after the drop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Written after the drop, by nobody, into the handed-over cache.
    let mut certs = 0;
    for entry in std::fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        assert_eq!(meta.uid(), nobody, "{:?} owned by nobody", entry.path());
        certs += usize::from(
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("cached_cert_"),
        );
    }
    assert_eq!(certs, 1, "one certificate in the cache");
}

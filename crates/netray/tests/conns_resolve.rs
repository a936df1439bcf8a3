//! The getaddrinfo uprobes of `netray conns` against the running kernel and
//! the system's libc: processes resolve names through real resolvers inside
//! network namespaces (`/etc/netns/NAME/hosts`, or a dnsmasq the test
//! starts), and the address → name cache must name their addresses.
//! These tests need root (CI runs them as root); they fail, never skip,
//! without it.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use netray::conns::resolve::{HostnameCache, Resolution, ResolveProbe, find_libcs};
use netray_testbed::Netns;

/// One loaded object and probe for the whole test process: every test's
/// results go into the shared log and cache, so no test's drain steals
/// another's events.
struct Shared {
    ebpf: Mutex<Ebpf>,
    probe: Mutex<ResolveProbe>,
    cache: HostnameCache,
    log: Mutex<Vec<Resolution>>,
    /// Held for writing by the test that floods the ring buffer on purpose,
    /// for reading by every other test while it waits for its events.
    flood: RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        netray::loader::raise_memlock_limit();
        let mut ebpf = Ebpf::load(netray::objects::CONNS).expect("load the netray-conns object");
        let probe = ResolveProbe::attach(&mut ebpf).expect("attach the getaddrinfo uprobes");
        Shared {
            ebpf: Mutex::new(ebpf),
            probe: Mutex::new(probe),
            cache: HostnameCache::new(Duration::from_secs(300)),
            log: Mutex::new(Vec::new()),
            flood: RwLock::new(()),
        }
    })
}

fn no_flood() -> RwLockReadGuard<'static, ()> {
    shared().flood.read().unwrap_or_else(|e| e.into_inner())
}

/// One drain of the shared probe into the shared cache and log.
fn drain() -> usize {
    let s = shared();
    let mut probe = lock(&s.probe);
    let mut log = lock(&s.log);
    probe.drain_with(|r| {
        s.cache.insert(r.tgid, &r.name, &r.addrs);
        log.push(r);
    })
}

fn resolutions_of(pid: u32) -> Vec<Resolution> {
    lock(&shared().log)
        .iter()
        .filter(|r| r.tgid == pid)
        .cloned()
        .collect()
}

/// A name no other test or process resolves: `<tag>-<pid>-<n>.netray.test`.
fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}.netray.test",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// `/etc/netns/NAME/`: `ip netns exec NAME` bind-mounts its files over
/// `/etc`. Removed on drop, also when the test fails.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(netns: &Netns) -> Self {
        let dir = Path::new("/etc/netns").join(netns.name());
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME");
        Self(dir)
    }

    fn file(self, name: &str, content: &str) -> Self {
        std::fs::write(self.0.join(name), content).expect("write /etc/netns/NAME file");
        self
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hosts file with localhost and `entries` (address, name).
fn hosts(entries: &[(&str, &str)]) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (addr, name) in entries {
        s.push_str(&format!("{addr} {name}\n"));
    }
    s
}

/// Runs `args` in `ns` to completion; returns its pid (`ip netns exec`
/// execs the program, so the pid is the program's) and output.
fn run_in(ns: &Netns, args: &[&str]) -> (u32, Output) {
    let mut cmd = ns.command(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn in netns");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for child");
    (pid, out)
}

/// `getent ahosts NAME` in `ns` (getaddrinfo with AF_UNSPEC); returns the
/// pid and the addresses getent printed. Panics if the lookup failed.
fn getent(ns: &Netns, name: &str) -> (u32, Vec<IpAddr>) {
    let (pid, out) = run_in(ns, &["getent", "ahosts", name]);
    assert!(
        out.status.success(),
        "getent ahosts {name}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut addrs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(addr) = line.split_whitespace().next().and_then(|a| a.parse().ok())
            && !addrs.contains(&addr)
        {
            addrs.push(addr);
        }
    }
    (pid, addrs)
}

#[test]
fn hosts_file_names_every_v4_and_v6_address_of_the_process() {
    let _guard = no_flood();
    shared();
    let ns = Netns::new().expect("netns");
    let name = unique_name("multi");
    let expected = [
        ip("192.0.2.11"),
        ip("192.0.2.12"),
        ip("192.0.2.13"),
        ip("2001:db8:11::1"),
        ip("2001:db8:11::2"),
        ip("2001:db8:11::3"),
    ];
    let entries: Vec<(String, &str)> = expected
        .iter()
        .map(|a| (a.to_string(), name.as_str()))
        .collect();
    let entries: Vec<(&str, &str)> = entries.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    let _etc = NetnsEtc::new(&ns).file("hosts", &hosts(&entries));

    let (pid, printed) = getent(&ns, &name);
    let printed: HashSet<IpAddr> = printed.into_iter().collect();
    assert_eq!(
        printed,
        expected.iter().copied().collect::<HashSet<_>>(),
        "the resolver itself"
    );

    // One drain right after the lookup: the event was committed before
    // getaddrinfo returned.
    drain();
    let cache = &shared().cache;
    for addr in expected {
        assert_eq!(
            cache.lookup_own(pid, addr).as_deref(),
            Some(name.as_str()),
            "{addr} of pid {pid}"
        );
        assert_eq!(
            cache.lookup(Some(pid), addr).as_deref(),
            Some(name.as_str())
        );
    }
    // One event, every address once (getaddrinfo lists each per socket type).
    let ours: Vec<Resolution> = resolutions_of(pid)
        .into_iter()
        .filter(|r| r.name == name)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let got: HashSet<IpAddr> = ours[0].addrs.iter().copied().collect();
    assert_eq!(got.len(), ours[0].addrs.len(), "duplicates: {ours:?}");
    assert_eq!(got, expected.iter().copied().collect::<HashSet<_>>());
    assert!(!ours[0].addrs_truncated);
}

#[test]
fn more_addresses_than_an_event_holds_are_cut_and_counted() {
    let _guard = no_flood();
    shared();
    let ns = Netns::new().expect("netns");
    let name = unique_name("many");
    let addrs: Vec<String> = (1..=20).map(|i| format!("198.51.100.{i}")).collect();
    let entries: Vec<(&str, &str)> = addrs.iter().map(|a| (a.as_str(), name.as_str())).collect();
    let _etc = NetnsEtc::new(&ns).file("hosts", &hosts(&entries));
    let before = lock(&shared().probe).stats().addrs_truncated;
    let (pid, printed) = getent(&ns, &name);
    assert_eq!(printed.len(), 20);
    drain();
    let ours: Vec<Resolution> = resolutions_of(pid)
        .into_iter()
        .filter(|r| r.name == name)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(ours[0].addrs_truncated);
    assert_eq!(
        ours[0].addrs.len(),
        netray_common::resolve::RESOLVE_MAX_ADDRS
    );
    for addr in &ours[0].addrs {
        assert!(printed.contains(addr), "{addr} not returned by getaddrinfo");
    }
    assert!(lock(&shared().probe).stats().addrs_truncated > before);
}

/// An HTTP server on every address of `ns` (dual-stack [::]:port) that
/// answers each connection with an empty 200 until dropped.
struct Server {
    port: u16,
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns) -> Self {
        let listener = ns
            .run(|| TcpListener::bind("[::]:0"))
            .expect("enter netns")
            .expect("bind listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(
                            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds `addrs` to `lo` of `ns` so the server can be reached on them.
fn local_addrs(ns: &Netns, addrs: &[&str]) {
    for addr in addrs {
        let prefix = if addr.contains(':') { "128" } else { "32" };
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            "lo",
        ])
        .expect("add address");
    }
}

#[test]
fn dns_server_name_reaches_the_connection_address() {
    let _guard = no_flood();
    shared();
    let ns = Netns::new().expect("netns");
    let name = unique_name("dns");
    let (v4, v6) = ("192.0.2.21", "2001:db8:21::1");
    local_addrs(&ns, &[v4, v6]);
    let _etc = NetnsEtc::new(&ns).file("hosts", &hosts(&[])).file(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
    );
    let pid_file = format!("/tmp/{}-dnsmasq.pid", ns.name());
    let _dns = ns
        .spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            &format!("--pid-file={pid_file}"),
            &format!("--host-record={name},{v4},{v6}"),
        ])
        .expect("start dnsmasq");

    // Wait for the server: the first successful lookup is the one checked.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (pid, printed) = loop {
        let (pid, out) = run_in(&ns, &["getent", "ahosts", &name]);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let addrs: HashSet<IpAddr> = text
                .lines()
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect();
            break (pid, addrs);
        }
        assert!(Instant::now() < deadline, "dnsmasq never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&pid_file);
    assert_eq!(printed, HashSet::from([ip(v4), ip(v6)]));
    drain();
    let cache = &shared().cache;
    assert_eq!(
        cache.lookup_own(pid, ip(v4)).as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        cache.lookup_own(pid, ip(v6)).as_deref(),
        Some(name.as_str())
    );

    // A client that resolves (in a resolver thread: curl's threaded
    // resolver) and then connects: the address it connected to is named,
    // for IPv4 and IPv6 alike.
    let server = Server::start(&ns);
    for family in ["-4", "-6"] {
        let url = format!("http://{name}:{}/", server.port);
        let (pid, out) = run_in(
            &ns,
            &[
                "curl",
                family,
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{remote_ip}",
                &url,
            ],
        );
        assert!(
            out.status.success(),
            "curl {family} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let remote: IpAddr = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl's remote_ip");
        assert_eq!(remote, ip(if family == "-4" { v4 } else { v6 }));
        drain();
        assert_eq!(
            cache.lookup(Some(pid), remote).as_deref(),
            Some(name.as_str()),
            "curl {family} (pid {pid}) connected to {remote}"
        );
        assert_eq!(
            cache.lookup_own(pid, remote).as_deref(),
            Some(name.as_str())
        );
    }
}

#[test]
fn failed_lookup_adds_nothing() {
    let _guard = no_flood();
    shared();
    let ns = Netns::new().expect("netns");
    let name = unique_name("missing");
    // No DNS server listens: the lookup fails fast.
    let _etc = NetnsEtc::new(&ns).file("hosts", &hosts(&[])).file(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let failed_before = lock(&shared().probe).stats().failed;
    let (pid, out) = run_in(&ns, &["getent", "ahosts", &name]);
    assert!(!out.status.success(), "{name} resolved?");
    drain();
    assert!(resolutions_of(pid).is_empty(), "{:?}", resolutions_of(pid));
    assert!(
        lock(&shared().probe).stats().failed > failed_before,
        "the failed call was not counted"
    );
}

#[test]
fn another_process_name_is_only_a_fallback() {
    let _guard = no_flood();
    shared();
    let addr = "192.0.2.31";
    let (ns_a, ns_b) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let (name_a, name_b) = (unique_name("first"), unique_name("second"));
    let _etc_a = NetnsEtc::new(&ns_a).file("hosts", &hosts(&[(addr, &name_a)]));
    let _etc_b = NetnsEtc::new(&ns_b).file("hosts", &hosts(&[(addr, &name_b)]));
    let (pid_a, _) = getent(&ns_a, &name_a);
    drain();
    let (pid_b, _) = getent(&ns_b, &name_b);
    drain();
    let cache = &shared().cache;
    // Each process gets its own name although B resolved the address later.
    assert_eq!(
        cache.lookup(Some(pid_a), ip(addr)).as_deref(),
        Some(name_a.as_str())
    );
    assert_eq!(
        cache.lookup(Some(pid_b), ip(addr)).as_deref(),
        Some(name_b.as_str())
    );
    // A process that resolved nothing: the most recent lookup of anyone.
    let stranger = u32::MAX - 1;
    assert_eq!(cache.lookup_own(stranger, ip(addr)), None);
    assert_eq!(
        cache.lookup(Some(stranger), ip(addr)).as_deref(),
        Some(name_b.as_str())
    );
    assert_eq!(
        cache.lookup(None, ip(addr)).as_deref(),
        Some(name_b.as_str())
    );
}

#[test]
fn attached_to_the_libc_this_process_uses() {
    let libs: Vec<PathBuf> = lock(&shared().probe).libraries().to_vec();
    let t = Instant::now();
    let found = find_libcs();
    println!(
        "attached to {libs:?}; found {found:?} in {:?} ({} processes)",
        t.elapsed(),
        std::fs::read_dir("/proc")
            .map(|d| d
                .filter(|e| e.as_ref().is_ok_and(|e| e
                    .file_name()
                    .to_string_lossy()
                    .parse::<u32>()
                    .is_ok()))
                .count())
            .unwrap_or(0)
    );
    assert!(!libs.is_empty());
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let own = netray::conns::resolve::libs::libcs_in_maps(&maps);
    assert!(!own.is_empty(), "this test binary maps no libc?");
    for path in own {
        let meta = std::fs::metadata(path).expect("stat libc");
        assert!(
            libs.iter().any(|l| std::fs::metadata(l)
                .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))),
            "{path} not among {libs:?}"
        );
    }
}

/// A libc only another mount namespace sees (a container's): found through
/// `/proc/PID/root`, attached by `attach_new`, and its lookups reported.
#[test]
fn libc_of_another_mount_namespace_is_found_and_traced() {
    let _guard = no_flood();
    shared();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let host_libc = netray::conns::resolve::libs::libcs_in_maps(&maps)[0].to_string();
    let dir = TempDir::new("mntns");
    let copy = dir.0.join("libc.so.6");
    std::fs::copy(&host_libc, &copy).expect("copy libc");

    let ns = Netns::new().expect("netns");
    let name = unique_name("container");
    let _etc = NetnsEtc::new(&ns).file(
        "hosts",
        &hosts(&[("192.0.2.41", &name), ("2001:db8:41::1", &name)]),
    );
    // A private mount namespace where the copy is bind-mounted over the
    // libc's path; the shell exec'd after the mount maps the copy.
    let script = format!(
        "mount --bind {copy} {host_libc} && exec sh -c 'echo ready && read _ && exec getent ahosts {name}'",
        copy = copy.display()
    );
    let mut child = ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).expect("child ready");
    assert_eq!(&ready, b"ready\n");
    let copy_meta = std::fs::metadata(&copy).expect("stat copy");
    let found = find_libcs();
    assert!(
        found
            .iter()
            .any(|l| (l.dev, l.ino) == (copy_meta.dev(), copy_meta.ino())
                && l.path.starts_with("/proc/")),
        "the namespace's libc {} not found: {found:?}",
        copy.display()
    );
    let new = {
        let s = shared();
        let mut ebpf = lock(&s.ebpf);
        lock(&s.probe).attach_new(&mut ebpf)
    };
    assert!(
        new.iter().any(|p| std::fs::metadata(p)
            .is_ok_and(|m| (m.dev(), m.ino()) == (copy_meta.dev(), copy_meta.ino()))),
        "attach_new attached {new:?}"
    );
    // Now let it resolve (sh execs getent, keeping the pid).
    let pid = child.id();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("getent output");
    let status = child.wait().expect("wait");
    assert!(status.success(), "getent in the mount namespace: {out}");
    drain();
    let cache = &shared().cache;
    assert_eq!(
        cache.lookup_own(pid, ip("192.0.2.41")).as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        cache.lookup_own(pid, ip("2001:db8:41::1")).as_deref(),
        Some(name.as_str())
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Nothing a user relies on is silently dropped: a burst larger than the
/// ring buffer, not drained meanwhile, is counted as lost, and every call
/// is either delivered or counted. A separate instance with a one-page ring
/// (7 records) keeps the burst small for everyone else's ring buffers.
#[test]
fn ring_buffer_overflow_is_counted() {
    let _exclusive = shared().flood.write().unwrap_or_else(|e| e.into_inner());
    netray::loader::raise_memlock_limit();
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries(netray::conns::resolve::EVENTS_MAP, 4096)
        .load(netray::objects::CONNS)
        .expect("load the netray-conns object");
    let mut probe = ResolveProbe::attach(&mut ebpf).expect("attach");
    probe.drain_with(|_| ());
    let before = probe.stats();
    const CALLS: usize = 200;
    let mut args = vec!["ahosts".to_string()];
    args.extend(std::iter::repeat_n("localhost".to_string(), CALLS));
    let child = Command::new("getent")
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("getent");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait getent");
    assert!(output.status.success());
    let mut delivered = 0;
    probe.drain_with(|r| {
        if r.tgid == pid && r.name == "localhost" {
            delivered += 1;
        }
    });
    let after = probe.stats();
    let lost = after.ringbuf_drops - before.ringbuf_drops;
    assert!(
        lost > 0,
        "{CALLS} undrained results fit a one-page ring buffer?"
    );
    assert!(
        delivered + lost >= CALLS as u64,
        "delivered {delivered} + lost {lost} < {CALLS} calls"
    );
    assert!(probe.lost() >= lost);
    assert!(delivered > 0 && delivered < 8, "{delivered}");
    assert!(after.calls - before.calls >= CALLS as u64);
}

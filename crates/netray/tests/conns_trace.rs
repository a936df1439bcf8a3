//! `netray conns` on a real kernel: the built binary traces connections made
//! by child processes (Python) in testbed namespaces or on loopback.
//!
//! `netray conns` sees the whole host, and tests run in parallel with the
//! same testbed addresses, so every assertion selects events by the child
//! processes' pids and the test's own ports.
//!
//! Needs root (namespaces, eBPF) and `python3`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netray_testbed::{Family, Netns, Testbed, Topology};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// How long `netray conns` may take to load and attach everything: under
/// TCG (the CI's QEMU guests) with another test running, loading the
/// object and attaching the uprobes has taken more than 30 s.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Client and server in one script: exact byte counts both ways; the
/// client connects only when told "go" on stdin (so its pid is known
/// first), the server prints its port.
const HELPER: &str = r#"
import socket, sys
mode = sys.argv[1]
if mode == "server":
    host, send_n, recv_n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(8)
    print(ls.getsockname()[1], flush=True)
    c, _ = ls.accept()
    got = 0
    while got < recv_n:
        d = c.recv(min(65536, recv_n - got))
        if not d:
            break
        got += len(d)
    c.sendall(b"s" * send_n)
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()
    print("done", got, flush=True)
elif mode == "listen-only":
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((sys.argv[2], 0))
    ls.listen(8)
    print(ls.getsockname()[1], flush=True)
    sys.stdin.readline()
    ls.close()
    print("done", flush=True)
elif mode == "refused":
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        socket.create_connection((sys.argv[2], int(sys.argv[3])))
        print("connected", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
else:
    host, port, send_n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    hold = len(sys.argv) > 5 and sys.argv[5] == "hold"
    print("ready", flush=True)
    sys.stdin.readline()
    s = socket.create_connection((host, port))
    s.sendall(b"c" * send_n)
    print(s.getsockname()[1], flush=True)
    if hold:
        sys.stdin.readline()
    got = 0
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
    except ConnectionResetError:
        print("reset", flush=True)
        sys.exit(0)
    s.close()
    print("done", got, flush=True)
"#;

fn python() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is needed by these tests")?;
    ensure!(out.status.success(), "python3 failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A child process, killed and reaped on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn start(mut cmd: Command) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Proc {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "child {} ended early", self.child.id());
        Ok(line.trim().to_string())
    }

    fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn comm(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))?
                .trim()
                .to_string(),
        )
    }

    /// Waits for exit and checks it was clean.
    fn finish(mut self) -> Result<String> {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        ensure!(status.success(), "child exited with {status}");
        Ok(rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn helper_cmd(ns: Option<&Netns>, python: &str, args: &[&str]) -> Command {
    let mut cmd = match ns {
        Some(ns) => ns.command(python),
        None => Command::new(python),
    };
    cmd.arg("-c").arg(HELPER).args(args);
    cmd
}

/// Serializes the flood of [`ring_buffer_overflow_is_counted`] against the
/// other tests: `netray conns` sees the whole host, so the flood would also
/// fill the other tests' ring buffers and could drop their events.
static FLOOD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Every test but the flood holds this for its whole run (once: a second
/// read lock while the flood waits for the write lock would deadlock).
fn no_flood() -> std::sync::RwLockReadGuard<'static, ()> {
    FLOOD.read().unwrap_or_else(|e| e.into_inner())
}

/// A running `netray conns --json`, its output collected by a thread.
struct Netray {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Netray {
    fn start(extra: &[&str]) -> Result<Netray> {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Netray> {
        Self::spawn(extra, env)
    }

    /// `extra` may hold `--text` (a test-only marker): then netray prints
    /// text and each line is collected as a JSON string.
    fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Result<Netray> {
        let text = extra.contains(&"--text");
        let args: Vec<&str> = extra.iter().copied().filter(|a| *a != "--text").collect();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netray"));
        cmd.envs(env.iter().copied()).arg("conns");
        if !text {
            cmd.arg("--json");
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting netray conns")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().context("stdout")?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if text {
                    sink.lock().unwrap().push(Value::String(line));
                    continue;
                }
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(e) => panic!("netray printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        let errsink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = errsink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
                // After storing it: a test may read stderr once ready.
                if line.contains("tracing (") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut netray = Netray {
            child,
            lines,
            stderr,
        };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = netray.child.kill();
            let _ = netray.child.wait();
            bail!(
                "netray conns did not start: {}",
                netray.stderr.lock().unwrap()
            );
        }
        Ok(netray)
    }

    /// Waits until `pred` holds for the collected events, returns them.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if pred(&lines) {
                    return Ok(lines.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; events so far: {:#?}\nstderr: {}",
                    self.lines.lock().unwrap(),
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, clean exit, and the end-of-run summary on stderr.
    fn stop(mut self) -> Result<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        ensure!(status.success(), "netray exited with {status}: {stderr}");
        ensure!(stderr.contains("events read"), "no summary: {stderr}");
        Ok(stderr)
    }
}

impl Drop for Netray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events<'a>(all: &'a [Value], kind: &str, pid: u32, port: u16) -> Vec<&'a Value> {
    all.iter()
        .filter(|v| {
            v["event"] == kind && v["pid"] == pid && (v["sport"] == port || v["dport"] == port)
        })
        .collect()
}

fn one<'a>(all: &'a [Value], kind: &str, pid: u32, port: u16) -> Result<&'a Value> {
    let found = events(all, kind, pid, port);
    ensure!(
        found.len() == 1,
        "expected one {kind} event of pid {pid} port {port}, got {found:#?}\nall: {all:#?}"
    );
    Ok(found[0])
}

/// What one client/server exchange produced.
struct Exchange {
    port: u16,
    client_pid: u32,
    client_comm: String,
    server_pid: u32,
    server_comm: String,
    client_port: u16,
}

/// Server in `server_ns` on `server_addr`, client in `client_ns`: the
/// client sends `up` bytes, the server `down` bytes. `netray` must already
/// run. Returns when both ended cleanly.
fn exchange(
    client_ns: Option<&Netns>,
    server_ns: Option<&Netns>,
    server_addr: IpAddr,
    up: usize,
    down: usize,
) -> Result<Exchange> {
    let py = python()?;
    let host = server_addr.to_string();
    let mut server = Proc::start(helper_cmd(
        server_ns,
        &py,
        &["server", &host, &down.to_string(), &up.to_string()],
    ))?;
    let port: u16 = server.line()?.parse()?;
    let server_comm = server.comm()?;
    let mut client = Proc::start(helper_cmd(
        client_ns,
        &py,
        &["client", &host, &port.to_string(), &up.to_string()],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let client_comm = client.comm()?;
    client.send("go\n")?;
    let client_port: u16 = client.line()?.parse()?;
    let (client_pid, server_pid) = (client.pid(), server.pid());
    let got = client.finish()?;
    ensure!(got.trim() == format!("done {down}"), "client: {got}");
    let got = server.finish()?;
    ensure!(got.trim() == format!("done {up}"), "server: {got}");
    Ok(Exchange {
        port,
        client_pid,
        client_comm,
        server_pid,
        server_comm,
        client_port,
    })
}

fn testbed() -> Result<Testbed> {
    let tb = Topology::chain(0).build()?;
    for family in [Family::V4, Family::V6] {
        ensure!(
            tb.client().ping(tb.server_addr(family), TIMEOUT)?,
            "the testbed link does not answer pings"
        );
    }
    Ok(tb)
}

/// Both sides of one exchange: attribution, tuples, exact bytes, RTT.
fn check_exchange(all: &[Value], x: &Exchange, up: u64, down: u64, family: &str) -> Result<()> {
    let connect = one(all, "connect", x.client_pid, x.port)?;
    ensure!(connect["comm"] == x.client_comm.as_str(), "{connect}");
    ensure!(
        connect["dport"] == x.port && connect["sport"] == x.client_port,
        "failed: connect[\"dport\"] == x.port && connect[\"sport\"] == x.client_port"
    );
    ensure!(connect["family"] == family, "{connect}");
    ensure!(connect["role"] == "connect", "{connect}");
    let accept = one(all, "accept", x.server_pid, x.port)?;
    ensure!(accept["comm"] == x.server_comm.as_str(), "{accept}");
    ensure!(
        accept["sport"] == x.port && accept["dport"] == x.client_port,
        "failed: accept[\"sport\"] == x.port && accept[\"dport\"] == x.client_port"
    );
    ensure!(
        accept["saddr"] == connect["daddr"] && accept["daddr"] == connect["saddr"],
        "failed: accept[\"saddr\"] == connect[\"daddr\"] && accept[\"daddr\"] == connect[\"saddr\"]"
    );

    let client_close = one(all, "close", x.client_pid, x.port)?;
    ensure!(
        client_close["comm"] == x.client_comm.as_str(),
        "failed: client_close[\"comm\"] == x.client_comm.as_str()"
    );
    ensure!(
        client_close["bytes_sent"] == up && client_close["bytes_received"] == down,
        "client close: {client_close}"
    );
    let server_close = one(all, "close", x.server_pid, x.port)?;
    ensure!(
        server_close["bytes_sent"] == down && server_close["bytes_received"] == up,
        "server close: {server_close}"
    );
    for close in [client_close, server_close] {
        let srtt = close["srtt_us"].as_u64().context("srtt_us")?;
        ensure!(srtt > 0 && srtt < 2_000_000, "implausible RTT: {close}");
        ensure!(
            close["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
            "failed: close[\"duration_ms\"].as_f64().is_some_and(|d| d > 0.0)"
        );
        ensure!(
            close["family"] == family,
            "failed: close[\"family\"] == family"
        );
        ensure!(close.get("approximate").is_none(), "{close}");
    }
    Ok(())
}

fn exact_bytes(family: Family, name: &str) -> Result<()> {
    let tb = testbed()?;
    let netray = Netray::start(&[])?;
    let (up, down) = (123_457usize, 1_048_999usize);
    let x = exchange(
        Some(tb.client()),
        Some(tb.server()),
        tb.server_addr(family),
        up,
        down,
    )?;
    let all = netray.wait_for("both close events", |all| {
        !events(all, "close", x.client_pid, x.port).is_empty()
            && !events(all, "close", x.server_pid, x.port).is_empty()
    })?;
    check_exchange(&all, &x, up as u64, down as u64, name)?;
    let connect = one(&all, "connect", x.client_pid, x.port)?;
    ensure!(
        connect["daddr"] == tb.server_addr(family).to_string().as_str(),
        "failed: connect[\"daddr\"] == tb.server_addr(family).to_string().as_str()"
    );
    ensure!(
        connect["saddr"] == tb.client_addr(family).to_string().as_str(),
        "failed: connect[\"saddr\"] == tb.client_addr(family).to_string().as_str()"
    );
    let stderr = netray.stop()?;
    ensure!(stderr.contains("lost: 0 (ring buffer full)"), "{stderr}");
    Ok(())
}

#[test]
fn ipv4_exact_bytes_and_attribution() -> Result<()> {
    let _no_flood = no_flood();
    exact_bytes(Family::V4, "ipv4")
}

#[test]
fn ipv6_exact_bytes_and_attribution() -> Result<()> {
    let _no_flood = no_flood();
    exact_bytes(Family::V6, "ipv6")
}

/// The classic tracepoint as lifecycle hook (forced: netray prefers the
/// BTF tracepoint, which every other test uses).
#[test]
fn loopback_both_families() -> Result<()> {
    let _no_flood = no_flood();
    let netray = Netray::start_with_env(&[], &[("NETRAY_CONNS_LIFECYCLE_HOOK", "tracepoint")])?;
    {
        let stderr = netray.stderr.lock().unwrap();
        ensure!(
            stderr.contains("tracepoint sock:inet_sock_set_state")
                && !stderr.contains("tp_btf inet_sock_set_state"),
            "{stderr}"
        );
    }
    for (addr, family) in [("127.0.0.1", "ipv4"), ("::1", "ipv6")] {
        let x = exchange(None, None, addr.parse()?, 5000, 77)?;
        let all = netray.wait_for("both close events", |all| {
            !events(all, "close", x.client_pid, x.port).is_empty()
                && !events(all, "close", x.server_pid, x.port).is_empty()
        })?;
        check_exchange(&all, &x, 5000, 77, family)?;
    }
    netray.stop()?;
    Ok(())
}

/// The BTF tracepoint lifecycle hook (tuple read from the socket, forced
/// here) gives the same events as the classic tracepoint.
#[test]
fn btf_tracepoint_lifecycle_hook_both_families() -> Result<()> {
    let _no_flood = no_flood();
    let netray = Netray::start_with_env(&[], &[("NETRAY_CONNS_LIFECYCLE_HOOK", "tp_btf")])?;
    {
        let stderr = netray.stderr.lock().unwrap();
        ensure!(
            stderr.contains("tp_btf inet_sock_set_state")
                && !stderr.contains("tracepoint sock:inet_sock_set_state"),
            "{stderr}"
        );
    }
    for (addr, family) in [("127.0.0.1", "ipv4"), ("::1", "ipv6")] {
        let x = exchange(None, None, addr.parse()?, 70_000, 1_234)?;
        let all = netray.wait_for("both close events", |all| {
            !events(all, "close", x.client_pid, x.port).is_empty()
                && !events(all, "close", x.server_pid, x.port).is_empty()
        })?;
        check_exchange(&all, &x, 70_000, 1_234, family)?;
    }
    netray.stop()?;
    let out = Command::new(env!("CARGO_BIN_EXE_netray"))
        .env("NETRAY_CONNS_LIFECYCLE_HOOK", "kprobe")
        .arg("conns")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("NETRAY_CONNS_LIFECYCLE_HOOK"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn text_output() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    let mut server = Proc::start(helper_cmd(None, &py, &["server", "::1", "321", "654"]))?;
    let port: u16 = server.line()?.parse()?;
    let netray = Netray::start(&["--text", "--port", &port.to_string()])?;
    let mut client = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "::1", &port.to_string(), "654"],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let (pid, comm) = (client.pid(), client.comm()?);
    let (server_pid, server_comm) = (server.pid(), server.comm()?);
    client.send("go\n")?;
    let client_port = client.line()?;
    client.finish()?;
    server.finish()?;
    let lines = netray.wait_for("both close lines", |all| {
        all.iter()
            .filter(|l| l.as_str().is_some_and(|l| l.contains(" CLOSE ")))
            .count()
            == 2
    })?;
    let lines: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
    let connect = format!("CONNECT pid={pid} comm={comm} [::1]:{client_port} -> [::1]:{port}");
    ensure!(
        lines.iter().any(|l| l.contains(&connect)),
        "no {connect:?} in {lines:#?}"
    );
    let close = format!("CLOSE   pid={pid} comm={comm} [::1]:{client_port} -> [::1]:{port}");
    let line = lines
        .iter()
        .find(|l| l.contains(&close))
        .with_context(|| format!("no {close:?} in {lines:#?}"))?;
    ensure!(line.contains(" sent=654 received=321 "), "{line}");
    let accept =
        format!("ACCEPT  pid={server_pid} comm={server_comm} [::1]:{port} <- [::1]:{client_port}");
    ensure!(
        lines.iter().any(|l| l.contains(&accept)),
        "no {accept:?} in {lines:#?}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn retransmits_counted_on_a_lossy_link() -> Result<()> {
    let _no_flood = no_flood();
    let tb = Topology::chain(0).loss(0, 15).build()?;
    // One segment per packet (no GSO super-packets), so the random drop
    // applies per segment.
    for ns in [tb.client(), tb.server()] {
        let ifname = netray_testbed::link_ifname(0);
        ns.exec(&["ip", "link", "set", "dev", &ifname, "gso_max_segs", "1"])?;
    }
    let netray = Netray::start(&[])?;
    let (up, down) = (300_000usize, 2_000usize);
    let x = exchange(
        Some(tb.client()),
        Some(tb.server()),
        tb.server_addr(Family::V4),
        up,
        down,
    )?;
    let all = netray.wait_for("both close events", |all| {
        !events(all, "close", x.client_pid, x.port).is_empty()
            && !events(all, "close", x.server_pid, x.port).is_empty()
    })?;
    // Loss makes no difference to what was delivered.
    check_exchange(&all, &x, up as u64, down as u64, "ipv4")?;
    let client_close = one(&all, "close", x.client_pid, x.port)?;
    let server_close = one(&all, "close", x.server_pid, x.port)?;
    let retrans = client_close["retransmits"].as_u64().unwrap_or(0)
        + server_close["retransmits"].as_u64().unwrap_or(0);
    // 15% loss both ways over ~200 data segments: retransmissions are
    // certain for all practical purposes (P(none) < 1e-14).
    ensure!(
        retrans > 0,
        "no retransmits counted: {client_close} {server_close}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn filters_by_pid_comm_and_port() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    // Two servers on loopback; netray filters on the first one's port, and
    // on the pid of the client that talks to it.
    let mut s1 = Proc::start(helper_cmd(None, &py, &["server", "127.0.0.1", "10", "20"]))?;
    let p1: u16 = s1.line()?.parse()?;
    let mut s2 = Proc::start(helper_cmd(None, &py, &["server", "127.0.0.1", "10", "20"]))?;
    let p2: u16 = s2.line()?.parse()?;
    let mut c1 = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "127.0.0.1", &p1.to_string(), "20"],
    ))?;
    let mut c2 = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "127.0.0.1", &p2.to_string(), "20"],
    ))?;
    ensure!(
        c1.line()? == "ready" && c2.line()? == "ready",
        "unexpected output of a helper process"
    );
    let comm = c1.comm()?;
    let by_port = Netray::start(&["--port", &p1.to_string()])?;
    let by_pid = Netray::start(&["--pid", &c1.pid().to_string(), "--comm", &comm])?;
    let by_other_comm = Netray::start(&["--comm", "no-such-comm", "--port", &p1.to_string()])?;
    let (c1_pid, c2_pid, s1_pid) = (c1.pid(), c2.pid(), s1.pid());
    for c in [&mut c1, &mut c2] {
        c.send("go\n")?;
        c.line()?;
    }
    for p in [c1, c2, s1, s2] {
        p.finish()?;
    }
    // Port filter: both sides of connection 1, nothing of connection 2.
    let all = by_port.wait_for("port-filtered closes", |all| {
        !events(all, "close", c1_pid, p1).is_empty() && !events(all, "close", s1_pid, p1).is_empty()
    })?;
    ensure!(
        all.iter().all(|v| v["sport"] == p1 || v["dport"] == p1),
        "--port let other ports through: {all:#?}"
    );
    one(&all, "connect", c1_pid, p1)?;
    one(&all, "accept", s1_pid, p1)?;
    // Pid + comm filter: only client 1's events.
    let all = by_pid.wait_for("pid-filtered close", |all| {
        !events(all, "close", c1_pid, p1).is_empty()
    })?;
    ensure!(
        all.iter()
            .all(|v| v["pid"] == c1_pid && v["comm"] == comm.as_str()),
        "--pid/--comm let others through: {all:#?}"
    );
    ensure!(events(&all, "close", c2_pid, p2).is_empty());
    // A comm nobody has: nothing, even for the right port (checked after
    // the other two instances saw everything).
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        by_other_comm.lines.lock().unwrap().is_empty(),
        "failed: by_other_comm.lines.lock().unwrap().is_empty()"
    );
    by_port.stop()?;
    by_pid.stop()?;
    by_other_comm.stop()?;
    Ok(())
}

#[test]
fn preexisting_connection_reported_at_close_without_process() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    let mut server = Proc::start(helper_cmd(
        None,
        &py,
        &["server", "127.0.0.1", "300", "4000"],
    ))?;
    let port: u16 = server.line()?.parse()?;
    let mut client = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "127.0.0.1", &port.to_string(), "4000", "hold"],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    client.send("go\n")?;
    let client_port: u16 = client.line()?.parse()?;
    // The connection exists (and its bytes are sent) before netray starts.
    std::thread::sleep(Duration::from_millis(200));
    let netray = Netray::start(&["--port", &port.to_string()])?;
    client.send("release\n")?;
    client.finish()?;
    server.finish()?;
    let all = netray.wait_for("two closes", |all| {
        all.iter().filter(|v| v["event"] == "close").count() >= 2
    })?;
    let closes: Vec<&Value> = all.iter().filter(|v| v["event"] == "close").collect();
    ensure!(closes.len() == 2, "{all:#?}");
    ensure!(
        all.iter().all(|v| v["event"] == "close"),
        "no connect/accept expected for an older connection: {all:#?}"
    );
    for close in &closes {
        ensure!(close["pid"].is_null() && close["comm"].is_null(), "{close}");
        ensure!(
            close["role"] == "unknown" && close.get("approximate").is_none(),
            "{close}"
        );
        ensure!(
            close["duration_ms"].is_null(),
            "failed: close[\"duration_ms\"].is_null()"
        );
    }
    let client_side = closes
        .iter()
        .find(|v| v["sport"] == client_port)
        .context("client side close")?;
    ensure!(
        client_side["dport"] == port,
        "failed: client_side[\"dport\"] == port"
    );
    // Both sides' counters hold the whole connection: exact although
    // netray saw neither handshake.
    ensure!(
        client_side["bytes_sent"] == 4000 && client_side["bytes_received"] == 300,
        "{client_side}"
    );
    let server_side = closes
        .iter()
        .find(|v| v["dport"] == client_port)
        .context("server side close")?;
    ensure!(
        server_side["bytes_sent"] == 300 && server_side["bytes_received"] == 4000,
        "{server_side}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn refused_connect_is_a_close_from_syn_sent_with_the_process() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let netray = Netray::start(&["--port", &port.to_string()])?;
    let mut client = Proc::start(helper_cmd(
        None,
        &py,
        &["refused", "127.0.0.1", &port.to_string()],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let (pid, comm) = (client.pid(), client.comm()?);
    client.send("go\n")?;
    ensure!(
        client.line()? == "refused",
        "unexpected output of a helper process"
    );
    client.finish()?;
    let all = netray.wait_for("the close", |all| {
        !events(all, "close", pid, port).is_empty()
    })?;
    ensure!(events(&all, "connect", pid, port).is_empty(), "{all:#?}");
    let close = one(&all, "close", pid, port)?;
    ensure!(
        close["comm"] == comm.as_str()
            && close["state"] == "SYN_SENT"
            && close["role"] == "connect"
            && close["bytes_sent"] == 0
            && close["bytes_received"] == 0
            && close["duration_ms"].is_null()
            && close.get("approximate").is_none(),
        "{close}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn never_accepted_connection_is_reported_at_close_without_process() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    let mut server = Proc::start(helper_cmd(None, &py, &["listen-only", "127.0.0.1"]))?;
    let port: u16 = server.line()?.parse()?;
    let netray = Netray::start(&["--port", &port.to_string()])?;
    let mut client = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "127.0.0.1", &port.to_string(), "100", "hold"],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let client_pid = client.pid();
    client.send("go\n")?;
    let client_port: u16 = client.line()?.parse()?;
    // The listener closes with the connection still in its accept queue:
    // the kernel resets it; the client sees the reset.
    server.send("close\n")?;
    ensure!(
        server.line()? == "done",
        "unexpected output of a helper process"
    );
    server.finish()?;
    client.send("release\n")?;
    ensure!(
        client.line()? == "reset",
        "unexpected output of a helper process"
    );
    client.finish()?;
    let all = netray.wait_for("both closes", |all| {
        all.iter()
            .filter(|v| v["event"] == "close" && v["sport"] == port && v["dport"] == client_port)
            .count()
            == 1
            && !events(all, "close", client_pid, port).is_empty()
    })?;
    one(&all, "connect", client_pid, port)?;
    ensure!(
        !all.iter().any(|v| v["event"] == "accept"),
        "nobody accepted: {all:#?}"
    );
    let server_side = all
        .iter()
        .find(|v| v["event"] == "close" && v["sport"] == port)
        .context("server side")?;
    ensure!(
        server_side["pid"].is_null()
            && server_side["comm"].is_null()
            && server_side["role"] == "accept"
            && server_side["bytes_received"] == 100
            && server_side["bytes_sent"] == 0,
        "{server_side}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn interval_prints_live_counters_in_other_namespaces() -> Result<()> {
    let _no_flood = no_flood();
    let tb = testbed()?;
    let py = python()?;
    let host = tb.server_addr(Family::V4).to_string();
    let mut server = Proc::start(helper_cmd(
        Some(tb.server()),
        &py,
        &["server", &host, "10", "6000"],
    ))?;
    let port: u16 = server.line()?.parse()?;
    let mut client = Proc::start(helper_cmd(
        Some(tb.client()),
        &py,
        &["client", &host, &port.to_string(), "6000", "hold"],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let netray = Netray::start(&["--interval", "0.2", "--port", &port.to_string()])?;
    client.send("go\n")?;
    client.line()?;
    let client_pid = client.pid();
    // The server answers 10 bytes and its FIN once it has the 6000: the
    // client then sits in CLOSE_WAIT until released. Live counts exclude
    // the FIN, as close counts do.
    let all = netray.wait_for("a stats line with the bytes both ways", |all| {
        events(all, "stats", client_pid, port)
            .iter()
            .any(|v| v["bytes_sent"] == 6000 && v["bytes_received"] == 10)
    })?;
    let stats = events(&all, "stats", client_pid, port);
    ensure!(
        stats.iter().all(|v| v["bytes_sent"].as_u64() <= Some(6000)
            && v["bytes_received"].as_u64() <= Some(10)
            && v["srtt_us"].as_u64().is_some()),
        "{stats:#?}"
    );
    client.send("release\n")?;
    client.finish()?;
    server.finish()?;
    netray.wait_for("the close", |all| {
        !events(all, "close", client_pid, port).is_empty()
    })?;
    netray.stop()?;
    Ok(())
}

#[test]
fn hostname_of_the_lookup_before_connect() -> Result<()> {
    let _no_flood = no_flood();
    let py = python()?;
    let netray = Netray::start(&[])?;
    if netray.stderr.lock().unwrap().contains("no hostnames") {
        bail!(
            "the getaddrinfo uprobes did not attach: {}",
            netray.stderr.lock().unwrap()
        );
    }
    let mut server = Proc::start(helper_cmd(None, &py, &["server", "127.0.0.1", "5", "5"]))?;
    let port: u16 = server.line()?.parse()?;
    // The client resolves "localhost" (getaddrinfo) and connects to the
    // answers in turn; the one that reaches the server is 127.0.0.1.
    let mut client = Proc::start(helper_cmd(
        None,
        &py,
        &["client", "localhost", &port.to_string(), "5"],
    ))?;
    ensure!(
        client.line()? == "ready",
        "unexpected output of a helper process"
    );
    let pid = client.pid();
    client.send("go\n")?;
    client.finish()?;
    server.finish()?;
    let all = netray.wait_for("the client's connect and close", |all| {
        all.iter().any(|v| {
            v["event"] == "close"
                && v["pid"] == pid
                && v["dport"] == port
                && v["daddr"] == "127.0.0.1"
        })
    })?;
    let connect = one(&all, "connect", pid, port)?;
    ensure!(connect["host"] == "localhost", "{connect}");
    let close = all
        .iter()
        .find(|v| v["event"] == "close" && v["pid"] == pid && v["daddr"] == "127.0.0.1")
        .context("close")?;
    ensure!(
        close["host"] == "localhost" && close["bytes_sent"] == 5,
        "{close}"
    );
    netray.stop()?;
    Ok(())
}

#[test]
fn metrics_endpoint() -> Result<()> {
    let _no_flood = no_flood();
    let netray = Netray::start(&["--metrics", "127.0.0.1:0"])?;
    let addr = {
        let stderr = netray.stderr.lock().unwrap().clone();
        let line = stderr
            .lines()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .context("no metrics address printed")?
            .to_string();
        line.trim_end_matches("/metrics").to_string()
    };
    let x = exchange(None, None, "127.0.0.1".parse()?, 1234, 4321)?;
    netray.wait_for("the closes", |all| {
        !events(all, "close", x.client_pid, x.port).is_empty()
            && !events(all, "close", x.server_pid, x.port).is_empty()
    })?;
    let mut stream = std::net::TcpStream::connect(&addr)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    ensure!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "netray_conns_opened_total{direction=\"connect\",remote=\"127.0.0.1\"}",
        "netray_conns_closed_total{direction=\"accept\",remote=\"127.0.0.1\"}",
        "netray_conns_bytes_sent_total{remote=\"127.0.0.1\"}",
        "netray_conns_rtt_seconds_bucket",
        "netray_conns_lost_ringbuf_full_total",
        "netray_conns_lost_hostnames_total",
    ] {
        ensure!(text.contains(needle), "missing {needle} in {text}");
    }
    netray.stop()?;
    Ok(())
}

/// Events the kernel cannot deliver (netray stopped, ring buffer full) are
/// counted and reported, never silently dropped.
#[test]
fn ring_buffer_overflow_is_counted() -> Result<()> {
    // More events (4 per connection) than the 4 MiB ring holds (~27k).
    const CONNECTIONS: usize = 12_000;
    let _flood = FLOOD.write().unwrap_or_else(|e| e.into_inner());
    let netray = Netray::spawn(&["--port", "1"], &[])?;
    let ns = Netns::new()?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netray.child.id() as i32, libc::SIGSTOP) };
    let made = ns.run(|| -> Result<usize> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || {
            for _ in 0..CONNECTIONS {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => break,
                }
            }
        });
        let mut made = 0;
        for _ in 0..CONNECTIONS {
            drop(std::net::TcpStream::connect(addr)?);
            made += 1;
        }
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
        Ok(made)
    })??;
    // Let the last closes happen, then let netray drain what the ring kept.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netray.child.id() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(500));
    let stderr = netray.stop()?;
    let summary = stderr
        .lines()
        .find(|l| l.contains("events read"))
        .context("summary")?;
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let (read, lost_ring, skipped) = (numbers[0], numbers[2], numbers[5]);
    ensure!(lost_ring > 0, "nothing counted as lost: {summary}");
    // Every event is read, lost in the ring, or never produced because the
    // kernel skipped the program (counted too).
    ensure!(
        read + lost_ring + skipped >= 4 * made as u64,
        "events unaccounted for ({made} connections): {summary}"
    );
    ensure!(
        read > 10_000,
        "the ring's content was not delivered: {summary}"
    );
    Ok(())
}

#[test]
fn bad_flags_give_clear_errors() -> Result<()> {
    for (args, needle) in [
        (&["--interval", "0"][..], "--interval"),
        (&["--interval", "abc"][..], "--interval"),
        (&["--port", "70000"][..], "--port"),
        (&["--port", "0"][..], "--port"),
        (&["--pid=-3"][..], "--pid"),
        (&["--pid", "abc"][..], "--pid"),
        (&["--metrics", "localhost"][..], "--metrics"),
        (&["--comm", "a-name-longer-than-15"][..], "--comm"),
        (&["--bogus"][..], "--bogus"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_netray"))
            .arg("conns")
            .args(args)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} was accepted");
        ensure!(stderr.contains(needle), "{args:?}: {stderr}");
        ensure!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    Ok(())
}

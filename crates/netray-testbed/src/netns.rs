//! Named network namespaces (`/run/netns/NAME`, as `ip netns` manages them)
//! and ways to run things inside them.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::probe::{self, ProbeReply};

/// Every namespace name starts with this, followed by the owning pid and a
/// `-`; [`cleanup_stale`] relies on that shape.
const PREFIX: &str = "nrt";

/// Per-process counter that makes names unique among the testbeds of one
/// process (tests run as threads of one process); the pid in the name makes
/// them unique across processes.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `ip netns add` sets up the `/run/netns` mount on first use without any
/// locking; concurrent first calls can stack mounts. Serialising the adds of
/// one process keeps that race down to separate processes starting at the
/// same instant on a fresh machine.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A fresh name stem `nrt<pid>-<n>`, unique per call.
pub(crate) fn unique_stem() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}", std::process::id())
}

/// Runs `cmd` to completion (feeding it `stdin` if given) and returns its
/// output, or an error naming the command and carrying its stdout/stderr.
pub(crate) fn run_cmd(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    let desc = describe(cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "`{program}` not found in PATH (netray-testbed needs iproute2's `ip` and `nft` from nftables); running `{desc}`"
            )
        } else {
            anyhow!(e).context(format!("failed to start `{desc}`"))
        }
    })?;
    if let Some(input) = stdin {
        // Dropping the handle at the end of this block closes the pipe.
        let mut pipe = child.stdin.take().context("stdin was piped")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{desc}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{desc}`"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}):\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails with a clear message unless the process may create namespaces:
/// `ip netns add` needs CAP_SYS_ADMIN (mounts), configuring them CAP_NET_ADMIN.
pub(crate) fn check_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let needed = (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN);
    if caps & needed != needed {
        bail!(
            "netray-testbed must run as root: creating network namespaces needs CAP_SYS_ADMIN and \
             CAP_NET_ADMIN (effective capabilities: {caps:#x}); run the tests with sudo"
        );
    }
    Ok(())
}

/// Removes testbed namespaces (`nrt<pid>-...`) whose owning process is gone,
/// e.g. after a test run was SIGKILLed before its `Drop`s ran. Returns how many
/// were removed. [`Topology::build`](crate::Topology::build) calls this first.
///
/// A namespace is only considered stale when no process with its pid exists,
/// so concurrently running test processes never remove each other's testbeds.
pub fn cleanup_stale() -> Result<usize> {
    let dir = match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        remove_netns(&name);
        removed += 1;
    }
    Ok(removed)
}

/// The pid encoded in a testbed namespace name, `None` for foreign names.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

/// Whether process `pid` exists and is not a zombie (a SIGKILLed test
/// process stays a zombie until its parent reaps it; its testbed is stale).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) state ..."; comm may contain anything, even ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Best-effort removal: kills whatever still runs in the namespace (so no
/// process keeps it alive), then `ip netns del`. Errors are ignored, this runs
/// from `Drop`.
fn remove_netns(name: &str) {
    if let Ok(out) = run_cmd(Command::new("ip").args(["netns", "pids", name]), None) {
        let me = std::process::id();
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            // `ip netns pids` looks at thread-group leaders only; never kill
            // ourselves even if someone moved the main thread in.
            if pid == me {
                continue;
            }
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: plain kill(2) on a pid read from `ip netns pids`.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = run_cmd(Command::new("ip").args(["netns", "del", name]), None);
}

/// A named network namespace owned by this value: deleted (after killing any
/// process still inside) when dropped.
///
/// The namespace comes with `lo` up and with these sysctls, so that tests are
/// deterministic: `net.ipv6.conf.{all,default}.accept_dad=0` (no tentative
/// addresses), ICMP error rate limiting off (`net.ipv4.icmp_ratemask=0`,
/// empty `net.ipv6.icmp.ratemask`), and `net.ipv4.ping_group_range=0 2147483647`
/// so unprivileged ICMP echo sockets (used by [`Netns::ping`]) work.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a standalone namespace with a unique `nrt<pid>-<n>-x` name.
    pub fn new() -> Result<Netns> {
        check_privileges()?;
        Netns::create(format!("{}-x", unique_stem()))
    }

    /// Creates namespace `name` and applies the defaults described on [`Netns`].
    pub(crate) fn create(name: String) -> Result<Netns> {
        {
            let _guard = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run_cmd(Command::new("ip").args(["netns", "add", &name]), None)
                .with_context(|| format!("creating network namespace {name}"))?;
        }
        // From here on, Drop removes the namespace if configuring it fails.
        let ns = Netns { name };
        run_cmd(
            Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]),
            None,
        )
        .with_context(|| format!("bringing lo up in {}", ns.name))?;
        for (key, value) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.icmp_ratemask", "0"),
            ("net.ipv6.icmp.ratemask", ""),
            ("net.ipv4.ping_group_range", "0 2147483647"),
        ] {
            ns.sysctl(key, value)?;
        }
        Ok(ns)
    }

    /// The namespace's name, as listed by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and run it as usual.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0]` with arguments `args[1..]` inside the namespace and
    /// waits for it. Fails, with its stdout and stderr, if it exits non-zero.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let (program, rest) = args.split_first().context("exec: empty command line")?;
        run_cmd(self.command(program).args(rest), None)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Like [`exec`](Self::exec) but feeds `input` to the command's stdin.
    pub(crate) fn exec_stdin(&self, args: &[&str], input: &str) -> Result<Output> {
        let (program, rest) = args.split_first().context("exec: empty command line")?;
        run_cmd(self.command(program).args(rest), Some(input))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Starts `args` in the background inside the namespace (stdin null,
    /// stdout/stderr inherited). The process is killed and reaped when the
    /// returned guard is dropped.
    pub fn spawn(&self, args: &[&str]) -> Result<Spawned> {
        let (program, rest) = args.split_first().context("spawn: empty command line")?;
        let mut cmd = self.command(program);
        cmd.args(rest).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        Ok(Spawned { child })
    }

    /// Runs `f` on a fresh thread that has joined this namespace
    /// (`setns(CLONE_NEWNET)`) and returns its result; a panic in `f` is
    /// propagated. Sockets created in `f` stay in this namespace for their
    /// whole life, wherever they are used afterwards, so a common pattern is
    /// to only create sockets in `f` and return them.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // A scoped thread lets `f` borrow from the caller; the thread ends
        // right after `f`, so no other code ever runs in the namespace by
        // accident.
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // SAFETY: `file` is an open /run/netns file kept alive for the
                // call; setns only changes this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {path}"));
                }
                Ok(f())
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value` in
    /// this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net follows the network namespace of the calling thread.
        self.run(|| std::fs::write(&path, format!("{value}\n")))?
            .with_context(|| format!("setting {key}={value:?} in {}", self.name))
    }

    /// Sends ICMP echo requests to `dst` from this namespace until a reply
    /// arrives (`Ok(true)`) or `timeout` passes (`Ok(false)`).
    pub fn ping(&self, dst: IpAddr, timeout: Duration) -> Result<bool> {
        self.run(|| probe::ping(dst, timeout))?
            .with_context(|| format!("pinging {dst} from {}", self.name))
    }

    /// Sends one UDP datagram with TTL/hop limit `ttl` to `dst` from this
    /// namespace and reports what came back; see [`probe::udp_probe`].
    pub fn udp_probe(&self, dst: SocketAddr, ttl: u8, timeout: Duration) -> Result<ProbeReply> {
        self.run(|| probe::udp_probe(dst, ttl, timeout))?
            .with_context(|| format!("UDP probe to {dst} (ttl {ttl}) from {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Guard for a background process started by [`Netns::spawn`]: kills and
/// reaps the process when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
}

impl Spawned {
    /// The process id (of the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to check whether it already exited.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl From<Child> for Spawned {
    /// Takes ownership of any child (e.g. from [`Netns::command`]) so it is
    /// killed and reaped on drop.
    fn from(child: Child) -> Self {
        Spawned { child }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

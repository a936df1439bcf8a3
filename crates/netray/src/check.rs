//! The capability probe behind `netray check`: for each hook kind, load a tiny
//! program, attach it, make the hook fire, and report what really happened.
//!
//! A hook counts as available only when all three steps worked: a program that
//! loads but cannot attach (kprobes without `CONFIG_KPROBES`) or attaches but
//! never runs is reported as unavailable, with the reason. Other commands call
//! [`probe`] (or read a [`CheckReport`]) to pick the best hook that works.
//!
//! Everything the probe attaches to a network device lives in a private network
//! namespace, on its own `lo`, so the probe never touches real traffic; the
//! cgroup programs allow every packet; all links are bpf_links owned by this
//! process, so they go away when it exits, however it exits.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Btf, Ebpf,
    maps::{Array, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, KProbe,
        RawTracePoint, SchedClassifier, SockOps, SocketFilter, TracePoint, UProbe, Xdp, XdpMode,
        uprobe::UProbeScope,
    },
};
use netray_common::check::{CheckEvent, HookKind};
use serde::Serialize;

/// Everything `netray check` reports on, in the order it reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// XDP on a network device.
    Xdp,
    /// TC classifier on a network device.
    Tc,
    /// Classic tracepoint.
    TracePoint,
    /// Raw tracepoint.
    RawTracePoint,
    /// BTF tracepoint (`tp_btf`).
    BtfTracePoint,
    /// kprobe.
    KProbe,
    /// fentry.
    FEntry,
    /// uprobe on libc.
    UProbe,
    /// sock_ops on cgroup v2.
    SockOps,
    /// cgroup_skb on cgroup v2.
    CgroupSkb,
    /// Ring buffer map delivering a record to userspace.
    RingBuf,
    /// Kernel BTF (`/sys/kernel/btf/vmlinux`) present and parseable.
    Btf,
}

impl Hook {
    /// Every hook, in report order.
    pub const ALL: [Self; 12] = [
        Self::Xdp,
        Self::Tc,
        Self::TracePoint,
        Self::RawTracePoint,
        Self::BtfTracePoint,
        Self::KProbe,
        Self::FEntry,
        Self::UProbe,
        Self::SockOps,
        Self::CgroupSkb,
        Self::RingBuf,
        Self::Btf,
    ];

    /// The report key (`--json` object key).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::TracePoint => "tracepoint",
            Self::RawTracePoint => "raw_tracepoint",
            Self::BtfTracePoint => "btf_tracepoint",
            Self::KProbe => "kprobe",
            Self::FEntry => "fentry",
            Self::UProbe => "uprobe",
            Self::SockOps => "sock_ops",
            Self::CgroupSkb => "cgroup_skb",
            Self::RingBuf => "ringbuf",
            Self::Btf => "btf",
        }
    }

    /// The slot of this hook's probe program in the hit counters, if it has one.
    const fn kind(self) -> Option<HookKind> {
        Some(match self {
            Self::Xdp => HookKind::Xdp,
            Self::Tc => HookKind::Tc,
            Self::TracePoint => HookKind::TracePoint,
            Self::RawTracePoint => HookKind::RawTracePoint,
            Self::BtfTracePoint => HookKind::BtfTracePoint,
            Self::KProbe => HookKind::KProbe,
            Self::FEntry => HookKind::FEntry,
            Self::UProbe => HookKind::UProbe,
            Self::SockOps => HookKind::SockOps,
            Self::CgroupSkb => HookKind::CgroupSkb,
            Self::RingBuf => HookKind::RingBuf,
            Self::Btf => return None,
        })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded, attached and ran; the text says where.
    Works(String),
    /// Did not work; the text says which step failed and the kernel's error.
    Fails(String),
}

impl Outcome {
    /// Whether the hook works.
    pub const fn works(&self) -> bool {
        matches!(self, Self::Works(_))
    }

    /// The explanation.
    pub fn text(&self) -> &str {
        match self {
            Self::Works(text) | Self::Fails(text) => text,
        }
    }
}

/// The result of [`probe`]: one [`Outcome`] per [`Hook`].
#[derive(Clone, Debug)]
pub struct CheckReport {
    outcomes: BTreeMap<Hook, Outcome>,
}

impl CheckReport {
    /// Whether `hook` loaded, attached and ran.
    pub fn works(&self, hook: Hook) -> bool {
        self.outcomes.get(&hook).is_some_and(Outcome::works)
    }

    /// The outcome for `hook`.
    pub fn outcome(&self, hook: Hook) -> &Outcome {
        &self.outcomes[&hook]
    }

    /// The `--json` form: one boolean per hook, then `details` with the error
    /// text of every hook that failed.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            works: BTreeMap<&'static str, bool>,
            details: BTreeMap<&'static str, &'a str>,
        }
        let works = Hook::ALL
            .iter()
            .map(|&h| (h.name(), self.works(h)))
            .collect();
        let details = Hook::ALL
            .iter()
            .filter(|&&h| !self.works(h))
            .map(|&h| (h.name(), self.outcome(h).text()))
            .collect();
        serde_json::to_value(Json { works, details }).unwrap_or_default()
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for hook in Hook::ALL {
            let outcome = self.outcome(hook);
            let mark = if outcome.works() { "yes" } else { "NO " };
            out.push_str(&format!("{:<15} {mark}  {}\n", hook.name(), outcome.text()));
        }
        out
    }
}

/// Runs the probe. Needs the capabilities in
/// [`crate::privileges::EBPF_COMMAND`]; fails only when the probe object itself
/// cannot be loaded (every per-hook failure is an [`Outcome::Fails`]).
pub fn probe() -> anyhow::Result<CheckReport> {
    crate::loader::raise_memlock_limit();
    let mut ebpf = Ebpf::load(crate::objects::CHECK)
        .context("loading the probe object (maps: an array and a ring buffer)")?;
    let btf = Btf::from_sys_fs().map_err(|e| format!("/sys/kernel/btf/vmlinux: {e}"));

    let mut attached: BTreeMap<Hook, Result<String, String>> = BTreeMap::new();
    attached.insert(Hook::TracePoint, attach_tracepoint(&mut ebpf));
    attached.insert(Hook::RawTracePoint, attach_raw_tracepoint(&mut ebpf));
    attached.insert(Hook::BtfTracePoint, attach_btf_tracepoint(&mut ebpf, &btf));
    attached.insert(Hook::KProbe, attach_kprobe(&mut ebpf));
    attached.insert(Hook::FEntry, attach_fentry(&mut ebpf, &btf));
    attached.insert(Hook::UProbe, attach_uprobe(&mut ebpf));
    let cgroup = cgroup2_root();
    attached.insert(Hook::SockOps, attach_sock_ops(&mut ebpf, &cgroup));
    attached.insert(Hook::CgroupSkb, attach_cgroup_skb(&mut ebpf, &cgroup));

    // Device hooks and the traffic that fires everything, in a private netns.
    let device = std::thread::scope(|scope| {
        scope
            .spawn(|| device_hooks_and_traffic(&mut ebpf))
            .join()
            .map_err(|_| anyhow!("the probe's network thread panicked"))
    })??;
    attached.insert(Hook::Xdp, device.xdp);
    attached.insert(Hook::Tc, device.tc);
    attached.insert(Hook::RingBuf, device.ringbuf);

    // The uprobe is scoped to this thread: fire it here.
    call_getaddrinfo("localhost");

    let hits = read_hits(&mut ebpf)?;
    let ringbuf_records = if device.ringbuf_ok {
        drain_check_events(&mut ebpf)?
    } else {
        0
    };

    let mut outcomes = BTreeMap::new();
    for hook in Hook::ALL {
        let outcome = match (hook, hook.kind()) {
            (Hook::Btf, _) => match &btf {
                Ok(_) => Outcome::Works("/sys/kernel/btf/vmlinux parsed".into()),
                Err(e) => Outcome::Fails(e.clone()),
            },
            (_, Some(kind)) => match &attached[&hook] {
                Err(e) => Outcome::Fails(e.clone()),
                Ok(where_) => {
                    let runs = hits[kind as usize];
                    if runs == 0 {
                        Outcome::Fails(format!(
                            "loaded and attached ({where_}) but never ran when triggered"
                        ))
                    } else if hook == Hook::RingBuf && ringbuf_records == 0 {
                        Outcome::Fails(
                            "the program wrote a record but userspace read none".to_string(),
                        )
                    } else if hook == Hook::RingBuf {
                        Outcome::Works(format!("{where_}; {ringbuf_records} record(s) read back"))
                    } else {
                        Outcome::Works(format!("{where_}; ran {runs} time(s)"))
                    }
                }
            },
            (_, None) => unreachable!("only btf has no program"),
        };
        outcomes.insert(hook, outcome);
    }
    // Dropping `ebpf` detaches every link and unloads every program.
    drop(ebpf);
    Ok(CheckReport { outcomes })
}

/// Formats an error with its whole source chain, trimmed to a readable size
/// (verifier logs can be long).
fn describe(step: &str, error: impl Into<anyhow::Error>) -> String {
    let text = format!("{step}: {:#}", error.into());
    let mut lines = text.lines();
    let mut out: String = lines.by_ref().take(6).collect::<Vec<_>>().join(" | ");
    if lines.next().is_some() {
        out.push_str(" | …");
    }
    out
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the probe object"))?;
    program.try_into().map_err(|e| describe("program type", e))
}

fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<String, String> {
    let tracefs = crate::tracefs::ensure_mounted().map_err(|e| e.to_string())?;
    let prog: &mut TracePoint = program(ebpf, "check_tracepoint")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach("sock", "inet_sock_set_state")
        .map_err(|e| describe("attach sock:inet_sock_set_state", e))?;
    Ok(match tracefs {
        crate::tracefs::TracefsState::AlreadyMounted(_) => "sock:inet_sock_set_state".into(),
        crate::tracefs::TracefsState::MountedByNetray => format!(
            "sock:inet_sock_set_state (netray mounted tracefs at {})",
            crate::tracefs::MOUNT_POINT
        ),
    })
}

fn attach_raw_tracepoint(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut RawTracePoint = program(ebpf, "check_raw_tracepoint")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach("inet_sock_set_state")
        .map_err(|e| describe("attach inet_sock_set_state", e))?;
    Ok("inet_sock_set_state".into())
}

fn attach_btf_tracepoint(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<String, String> {
    let btf = btf.as_ref().map_err(|e| format!("needs kernel BTF: {e}"))?;
    let prog: &mut BtfTracePoint = program(ebpf, "check_btf_tracepoint")?;
    prog.load("inet_sock_set_state", btf)
        .map_err(|e| describe("load", e))?;
    prog.attach().map_err(|e| describe("attach", e))?;
    Ok("tp_btf/inet_sock_set_state".into())
}

fn attach_kprobe(ebpf: &mut Ebpf) -> Result<String, String> {
    let prog: &mut KProbe = program(ebpf, "check_kprobe")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach("tcp_connect", 0)
        .map_err(|e| describe("attach tcp_connect", e))?;
    Ok("tcp_connect".into())
}

fn attach_fentry(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<String, String> {
    let btf = btf.as_ref().map_err(|e| format!("needs kernel BTF: {e}"))?;
    let prog: &mut FEntry = program(ebpf, "check_fentry")?;
    prog.load("tcp_connect", btf)
        .map_err(|e| describe("load", e))?;
    prog.attach().map_err(|e| describe("attach", e))?;
    Ok("tcp_connect".into())
}

fn attach_uprobe(ebpf: &mut Ebpf) -> Result<String, String> {
    let libc_path = crate::check::loaded_libc().ok_or_else(|| {
        "libc is not mapped in this process (static build?); cannot place the uprobe".to_string()
    })?;
    let prog: &mut UProbe = program(ebpf, "check_uprobe")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach("getaddrinfo", &libc_path, UProbeScope::CallingProcess)
        .map_err(|e| describe(&format!("attach {}:getaddrinfo", libc_path.display()), e))?;
    Ok(format!("{}:getaddrinfo", libc_path.display()))
}

fn attach_sock_ops(ebpf: &mut Ebpf, cgroup: &Result<PathBuf, String>) -> Result<String, String> {
    let (path, dir) = open_cgroup(cgroup)?;
    let prog: &mut SockOps = program(ebpf, "check_sock_ops")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach(dir.as_fd(), cgroup_attach_mode())
        .map_err(|e| describe(&format!("attach to cgroup {}", path.display()), e))?;
    Ok(format!("cgroup {}", path.display()))
}

fn attach_cgroup_skb(ebpf: &mut Ebpf, cgroup: &Result<PathBuf, String>) -> Result<String, String> {
    let (path, dir) = open_cgroup(cgroup)?;
    let prog: &mut CgroupSkb = program(ebpf, "check_cgroup_skb")?;
    prog.load().map_err(|e| describe("load", e))?;
    prog.attach(
        dir.as_fd(),
        CgroupSkbAttachType::Egress,
        cgroup_attach_mode(),
    )
    .map_err(|e| describe(&format!("attach egress to cgroup {}", path.display()), e))?;
    Ok(format!("egress of cgroup {}", path.display()))
}

/// Attach mode that coexists with other programs on the same cgroup. From 5.7
/// aya attaches with a bpf_link, which always stacks and rejects the
/// ALLOW_MULTI flag (EINVAL); before that, `BPF_PROG_ATTACH` needs the flag.
fn cgroup_attach_mode() -> CgroupAttachMode {
    let links = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 7, 0));
    if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

fn open_cgroup(cgroup: &Result<PathBuf, String>) -> Result<(&Path, std::fs::File), String> {
    let path = cgroup.as_ref().map_err(Clone::clone)?;
    let dir = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    Ok((path, dir))
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on unified
/// systems, `/sys/fs/cgroup/unified` on hybrid ones), from mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    cgroup2_mount_point(&mountinfo).ok_or_else(|| "no cgroup2 filesystem is mounted".to_string())
}

/// Finds the first cgroup2 mount point in a mountinfo text.
pub fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The libc this process has mapped, from `/proc/self/maps`.
pub fn loaded_libc() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    libc_in_maps(&maps)
}

/// Finds the path of libc (`libc.so.6`, `libc-2.x.so`, musl's `libc.so`) in a
/// `/proc/PID/maps` text.
pub fn libc_in_maps(maps: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        let file = path.rsplit('/').next()?;
        let is_libc =
            file.starts_with("libc.so") || (file.starts_with("libc-") && file.ends_with(".so"));
        is_libc.then(|| PathBuf::from(path))
    })
}

fn call_getaddrinfo(host: &str) {
    let Ok(node) = CString::new(host) else { return };
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated node, null service and hints, out-pointer to a local.
    let rc =
        unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), std::ptr::null(), &mut res) };
    if rc == 0 && !res.is_null() {
        // SAFETY: res was returned by a successful getaddrinfo.
        unsafe { libc::freeaddrinfo(res) };
    }
}

struct DeviceResults {
    xdp: Result<String, String>,
    tc: Result<String, String>,
    ringbuf: Result<String, String>,
    ringbuf_ok: bool,
}

/// Runs on its own thread: enters a fresh network namespace (so nothing here
/// touches the host's interfaces), attaches XDP and TC to its `lo`, attaches the
/// ring-buffer socket filter, and makes TCP and UDP traffic that fires every
/// probe program (tracepoints, sock_ops and cgroup_skb included).
fn device_hooks_and_traffic(ebpf: &mut Ebpf) -> anyhow::Result<DeviceResults> {
    // SAFETY: unshare only changes this thread's namespaces.
    let private = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
    let place = if private {
        crate::netdev::set_up("lo").context("bringing up lo in the probe's network namespace")?;
        "lo in a private network namespace"
    } else {
        // Without CAP_SYS_ADMIN we cannot make a namespace; the host's lo is the
        // least intrusive device, and the programs pass every packet.
        "the host's lo"
    };

    let xdp = (|| {
        let prog: &mut Xdp = program(ebpf, "check_xdp")?;
        prog.load().map_err(|e| describe("load", e))?;
        prog.attach("lo", XdpMode::Skb)
            .map_err(|e| describe("attach to lo (generic mode)", e))?;
        Ok(format!("{place}, generic mode"))
    })();

    let tc = (|| {
        let prog: &mut SchedClassifier = program(ebpf, "check_tc")?;
        prog.load().map_err(|e| describe("load", e))?;
        crate::loader::attach_tc_egress(prog, "lo").map_err(|e| describe("attach", e))?;
        Ok(format!("egress of {place}"))
    })();

    let socket = UdpSocket::bind("127.0.0.1:0").context("binding the probe's UDP socket")?;
    let ringbuf = (|| {
        let prog: &mut SocketFilter = program(ebpf, "check_ringbuf")?;
        prog.load().map_err(|e| describe("load", e))?;
        prog.attach(socket.as_fd())
            .map_err(|e| describe("attach socket filter", e))?;
        Ok("socket filter on a UDP socket of netray's own".to_string())
    })();
    let ringbuf_ok = ringbuf.is_ok();

    make_traffic(&socket).context("generating the probe's loopback traffic")?;
    Ok(DeviceResults {
        xdp,
        tc,
        ringbuf,
        ringbuf_ok,
    })
}

/// One short TCP exchange (state changes, sock_ops callbacks, packets both
/// ways on lo) and one datagram to the ring-buffer socket.
fn make_traffic(udp: &UdpSocket) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"netray check")?;
    let mut buf = [0u8; 12];
    server.read_exact(&mut buf)?;
    drop(client);
    drop(server);
    udp.send_to(b"netray check", udp.local_addr()?)?;
    let mut buf = [0u8; 64];
    udp.set_read_timeout(Some(Duration::from_secs(1)))?;
    let _ = udp.recv_from(&mut buf)?;
    Ok(())
}

fn read_hits(ebpf: &mut Ebpf) -> anyhow::Result<Vec<u64>> {
    let map = ebpf
        .map_mut("CHECK_HITS")
        .ok_or_else(|| anyhow!("CHECK_HITS map missing from the probe object"))?;
    let hits: Array<_, u64> = Array::try_from(map)?;
    (0..HookKind::COUNT)
        .map(|i| hits.get(&i, 0).map_err(Into::into))
        .collect()
}

/// Reads the records the socket filter wrote, waiting briefly for them.
fn drain_check_events(ebpf: &mut Ebpf) -> anyhow::Result<usize> {
    let map = ebpf
        .map_mut("CHECK_EVENTS")
        .ok_or_else(|| anyhow!("CHECK_EVENTS map missing from the probe object"))?;
    let mut ring = RingBuf::try_from(map)?;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut records = 0;
    while records == 0 && Instant::now() < deadline {
        while let Some(item) = ring.next() {
            let valid = item.len() >= std::mem::size_of::<CheckEvent>() && {
                // SAFETY: length checked; read_unaligned copes with any alignment.
                let event: CheckEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                event.magic == CheckEvent::MAGIC && event.hook == HookKind::RingBuf as u32
            };
            records += usize::from(valid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_systems() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      36 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_point("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn finds_libc_in_maps() {
        let maps = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libm.so.6\n\
                    7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        assert_eq!(
            libc_in_maps(maps),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(libc_in_maps("7f00-7f01 r-xp 0 0:0 0 [vdso]\n"), None);
    }

    #[test]
    fn json_has_exactly_the_documented_keys() {
        let outcomes = Hook::ALL
            .iter()
            .map(|&h| {
                let o = if h == Hook::KProbe {
                    Outcome::Fails("no kprobe PMU".into())
                } else {
                    Outcome::Works("ok".into())
                };
                (h, o)
            })
            .collect();
        let json = CheckReport { outcomes }.to_json();
        let object = json.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().cloned().collect();
        keys.sort();
        let mut expected: Vec<_> = Hook::ALL.iter().map(|h| h.name().to_string()).collect();
        expected.push("details".into());
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(object["kprobe"], false);
        assert_eq!(object["xdp"], true);
        assert_eq!(object["details"]["kprobe"], "no kprobe PMU");
        assert!(object["details"].get("xdp").is_none());
    }
}

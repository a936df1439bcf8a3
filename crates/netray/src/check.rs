//! The capability probe behind `netray check`: for each hook kind, load a tiny
//! program, attach it, make the hook fire, and report what really happened.
//!
//! A hook counts as available only when all three steps worked: a program that
//! loads but cannot attach (kprobes without `CONFIG_KPROBES`) or attaches but
//! never runs is reported as unavailable, with the reason. Other commands call
//! [`probe`] (or read a [`CheckReport`]) to pick the best hook that works.
//!
//! Hooks working is not enough for a command to work: its own, larger
//! programs must also pass this kernel's verifier. So the probe then loads
//! the real programs of `packets`, `serve`/`trace` and `conns` through
//! their own loading APIs ([`probe_capabilities`]) and reports, per
//! command, whether they load and attach, and on which hooks.
//!
//! Exit status of `netray check`: a hook that does not work is information
//! (exit 0, as before); a command whose programs do not load or attach here
//! makes it exit 1, after printing the whole report; 2 is an error of the
//! probe itself (no privileges, the probe object refused).
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
    capabilities: BTreeMap<Capability, CapabilityOutcome>,
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

    /// What loading `capability`'s real programs gave.
    pub fn capability(&self, capability: Capability) -> &CapabilityOutcome {
        &self.capabilities[&capability]
    }

    /// Whether every capability's programs loaded and attached.
    pub fn capabilities_ok(&self) -> bool {
        self.capabilities.values().all(|c| c.ok)
    }

    /// The `--json` form: one boolean per hook, `details` with the error
    /// text of every hook that failed, and `capabilities` with one object
    /// (`ok`, `error`, `hooks`, `warnings`) per command.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            works: BTreeMap<&'static str, bool>,
            details: BTreeMap<&'static str, &'a str>,
            capabilities: BTreeMap<&'static str, &'a CapabilityOutcome>,
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
        let capabilities = self
            .capabilities
            .iter()
            .map(|(c, outcome)| (c.name(), outcome))
            .collect();
        serde_json::to_value(Json {
            works,
            details,
            capabilities,
        })
        .unwrap_or_default()
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        for hook in Hook::ALL {
            let outcome = self.outcome(hook);
            let mark = if outcome.works() { "yes" } else { "NO " };
            out.push_str(&format!("{:<15} {mark}  {}\n", hook.name(), outcome.text()));
        }
        out.push_str("\ncommand's programs (loaded, attached in a private network namespace):\n");
        for (capability, outcome) in &self.capabilities {
            let mark = if outcome.ok { "yes" } else { "NO " };
            out.push_str(&format!(
                "{:<15} {mark}  {}\n",
                capability.name(),
                outcome.hooks.join("; ")
            ));
            if let Some(error) = &outcome.error {
                for line in error.lines() {
                    out.push_str(&format!("{:<20}{line}\n", ""));
                }
            }
            for warning in &outcome.warnings {
                out.push_str(&format!("{:<20}warning: {warning}\n", ""));
            }
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
    let capabilities = probe_capabilities();
    Ok(CheckReport {
        outcomes,
        capabilities,
    })
}

/// Formats an error with its whole source chain; a verifier rejection is
/// reduced to its paragraph (see [`crate::verifier`]).
fn describe(step: &str, error: impl Into<anyhow::Error>) -> String {
    crate::verifier::describe_load_error(step, error)
}

/// The commands whose real programs `netray check` loads (and, where that
/// is harmless, attaches), in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `netray packets`: the packet capture (XDP ingress, TC egress).
    Packets,
    /// `netray serve`: the in-band capture, tracking the served ports.
    Serve,
    /// `netray trace`: the in-band capture.
    Trace,
    /// `netray conns`: the connection tracer.
    Conns,
}

impl Capability {
    /// Every capability, in report order.
    pub const ALL: [Self; 4] = [Self::Packets, Self::Serve, Self::Trace, Self::Conns];

    /// The report key (`capabilities` object key) and command name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Serve => "serve",
            Self::Trace => "trace",
            Self::Conns => "conns",
        }
    }

    /// The hooks the command uses, as far as they are known without
    /// attaching (the conns tracer picks its lifecycle hook at run time).
    fn planned_hooks(self) -> Vec<String> {
        // What crate::loader::attach_tc_egress uses on this kernel.
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        let tc = if tcx {
            "(tcx)"
        } else {
            "(clsact qdisc, netlink filter)"
        };
        match self {
            Self::Packets => vec![
                "xdp packets_xdp (ingress)".into(),
                format!("tc egress packets_tc {tc}"),
            ],
            Self::Serve | Self::Trace => vec![
                "xdp inband_xdp (ingress)".into(),
                format!("tc egress inband_tc_egress {tc}"),
            ],
            Self::Conns => vec![
                "tracepoint sock:inet_sock_set_state, else tp_btf inet_sock_set_state".into(),
                "tracepoints syscalls:sys_exit_accept4 and sys_exit_accept".into(),
                "uprobes getaddrinfo on libc".into(),
            ],
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened when `netray check` loaded a command's real programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapabilityOutcome {
    /// Every program loaded (the verifier accepted it) and attached.
    pub ok: bool,
    /// Why not (one paragraph: see [`crate::verifier`]); `None` when `ok`.
    pub error: Option<String>,
    /// The hooks the command uses (those really attached, when known).
    pub hooks: Vec<String>,
    /// Degradations the command would report at start (conns: no BTF...).
    pub warnings: Vec<String>,
}

impl CapabilityOutcome {
    fn works(hooks: Vec<String>, warnings: Vec<String>) -> Self {
        Self {
            ok: true,
            error: None,
            hooks,
            warnings,
        }
    }

    fn fails(capability: Capability, error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            hooks: capability.planned_hooks(),
            warnings: Vec::new(),
        }
    }
}

/// Loads the programs of `netray packets`, `serve`/`trace` and `conns` the
/// way those commands do, through their own loading APIs, and attaches
/// them where that cannot disturb anything: the device programs to
/// devices of a private network namespace (`lo`, and a veth pair for the
/// in-band capture, which needs Ethernet framing); the conns tracepoints
/// and uprobes only observe. Everything is detached before this returns.
pub fn probe_capabilities() -> BTreeMap<Capability, CapabilityOutcome> {
    let mut outcomes = std::thread::scope(|scope| {
        scope.spawn(device_capabilities).join().unwrap_or_else(|_| {
            let panicked = "the capability probe's network thread panicked".to_string();
            [Capability::Packets, Capability::Serve, Capability::Trace]
                .into_iter()
                .map(|c| (c, CapabilityOutcome::fails(c, panicked.clone())))
                .collect()
        })
    });
    let conns = match crate::conns::attach::Tracer::attach(true) {
        Ok(tracer) => CapabilityOutcome::works(tracer.hooks.clone(), tracer.warnings.clone()),
        Err(e) => CapabilityOutcome::fails(Capability::Conns, crate::verifier::render_error(&e)),
    };
    outcomes.insert(Capability::Conns, conns);
    if let Some(serve) = outcomes.get_mut(&Capability::Serve) {
        serve_privilege_drop(serve);
    }
    outcomes
}

/// What serve's privilege drop keeps on this kernel (see
/// [`crate::privileges::map_operations_need_cap_bpf`]), measured the way
/// serve measures it: as `nobody` when root (serve's default `--user`).
fn serve_privilege_drop(serve: &mut CapabilityOutcome) {
    use crate::privileges;
    let user = privileges::serve_target_user(None).ok().flatten();
    match privileges::map_operations_need_cap_bpf(user.as_ref()) {
        Ok(false) => {}
        Ok(true) => serve.warnings.push(format!(
            "this kernel refuses bpf() map operations without CAP_BPF \
             (kernel.unprivileged_bpf_disabled={}): serve's privilege drop keeps CAP_BPF \
             (effective and permitted, nothing else)",
            privileges::unprivileged_bpf_disabled().map_or("?".to_string(), |v| v.to_string())
        )),
        Err(e) if serve.ok => {
            serve.ok = false;
            serve.error = Some(format!("serve's privilege drop: {e:#}"));
        }
        Err(_) => {}
    }
}

/// Names of the veth pair the in-band capture is attached to, inside the
/// private namespace (nothing outside it can see them).
const VETH: (&str, &str) = ("nrcheck0", "nrcheck1");

fn device_capabilities() -> BTreeMap<Capability, CapabilityOutcome> {
    let mut outcomes = BTreeMap::new();
    let device = [Capability::Packets, Capability::Serve, Capability::Trace];
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        for c in device {
            let text = format!(
                "not tried: attaching needs a private network namespace, and unshare failed \
                 ({e}; needs CAP_SYS_ADMIN), so netray check does not touch real devices"
            );
            outcomes.insert(c, CapabilityOutcome::fails(c, text));
        }
        return outcomes;
    }
    let packets = (|| -> anyhow::Result<Vec<String>> {
        crate::netdev::set_up("lo").context("bringing up lo in the private namespace")?;
        let filter = crate::packets::filter::Program::default();
        let capture = crate::packets::capture::PacketCapture::attach(
            &["lo".to_string()],
            &filter,
            crate::packets::capture::CaptureOptions::default(),
        )?;
        drop(capture);
        Ok(Capability::Packets
            .planned_hooks()
            .into_iter()
            .map(|h| format!("{h} on lo of a private network namespace"))
            .collect())
    })();
    let packets = packets.map_err(|e| crate::verifier::render_error(&e));
    outcomes.insert(Capability::Packets, outcome(Capability::Packets, packets));

    let inband = (|| -> anyhow::Result<Vec<String>> {
        create_veth(VETH.0, VETH.1).context("creating a veth pair in the private namespace")?;
        crate::netdev::set_up(VETH.0)?;
        crate::netdev::set_up(VETH.1)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _context = runtime.enter();
        let capture = crate::inband::capture::Capture::attach(&[VETH.0.to_string()])?;
        // What serve does besides: track the connections to its ports.
        capture.set_listen_ports(&[443])?;
        drop(capture);
        Ok(Capability::Serve
            .planned_hooks()
            .into_iter()
            .map(|h| format!("{h} on a veth of a private network namespace"))
            .collect())
    })();
    // serve and trace load and attach the same object the same way.
    let inband = inband.map_err(|e| crate::verifier::render_error(&e));
    outcomes.insert(
        Capability::Serve,
        outcome(Capability::Serve, inband.clone()),
    );
    outcomes.insert(Capability::Trace, outcome(Capability::Trace, inband));
    outcomes
}

fn outcome(capability: Capability, result: Result<Vec<String>, String>) -> CapabilityOutcome {
    match result {
        Ok(hooks) => CapabilityOutcome::works(hooks, Vec::new()),
        Err(e) => CapabilityOutcome::fails(capability, e),
    }
}

/// Creates the veth pair `a`/`b` in the calling thread's network namespace
/// (one rtnetlink `RTM_NEWLINK` request; no external command).
fn create_veth(a: &str, b: &str) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const VETH_INFO_PEER: u16 = 1;
    const NLA_F_NESTED: u16 = 1 << 15;
    const IFINFOMSG_LEN: usize = 16;

    fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    fn name(text: &str) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    let mut peer = vec![0u8; IFINFOMSG_LEN];
    attr(&mut peer, IFLA_IFNAME, &name(b));
    let mut data = Vec::new();
    attr(&mut data, VETH_INFO_PEER | NLA_F_NESTED, &peer);
    let mut linkinfo = Vec::new();
    attr(&mut linkinfo, IFLA_INFO_KIND, &name("veth"));
    attr(&mut linkinfo, IFLA_INFO_DATA | NLA_F_NESTED, &data);
    let mut body = vec![0u8; IFINFOMSG_LEN];
    attr(&mut body, IFLA_IFNAME, &name(a));
    attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &linkinfo);

    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut message = Vec::with_capacity(16 + body.len());
    message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    message.extend_from_slice(&body);

    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed (pid 0: the kernel) is valid.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // nlmsghdr (16 bytes), then for NLMSG_ERROR the (negative) errno.
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(std::io::Error::other("unexpected rtnetlink reply"));
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno != 0 {
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    Ok(())
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

/// The perf event source kprobes are created through.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// What `netray check` says when this kernel cannot have kprobes at all.
pub const NO_KPROBES: &str = "this kernel has no kprobes: no kprobe PMU at \
     /sys/bus/event_source/devices/kprobe (built without CONFIG_KPROBES)";

fn attach_kprobe(ebpf: &mut Ebpf) -> Result<String, String> {
    if !Path::new(KPROBE_PMU).exists() {
        return Err(NO_KPROBES.to_string());
    }
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
        let capabilities = Capability::ALL
            .iter()
            .map(|&c| {
                let o = if c == Capability::Packets {
                    CapabilityOutcome::fails(c, "rejected".into())
                } else {
                    CapabilityOutcome::works(vec!["a hook".into()], Vec::new())
                };
                (c, o)
            })
            .collect();
        let report = CheckReport {
            outcomes,
            capabilities,
        };
        assert!(!report.capabilities_ok());
        let json = report.to_json();
        let object = json.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().cloned().collect();
        keys.sort();
        let mut expected: Vec<_> = Hook::ALL.iter().map(|h| h.name().to_string()).collect();
        expected.push("details".into());
        expected.push("capabilities".into());
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(object["kprobe"], false);
        assert_eq!(object["xdp"], true);
        assert_eq!(object["details"]["kprobe"], "no kprobe PMU");
        assert!(object["details"].get("xdp").is_none());
        let capabilities = object["capabilities"].as_object().unwrap();
        let mut names: Vec<_> = capabilities.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["conns", "packets", "serve", "trace"]);
        for (name, c) in capabilities {
            let mut keys: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["error", "hooks", "ok", "warnings"], "{name}");
        }
        assert_eq!(capabilities["packets"]["ok"], false);
        assert_eq!(capabilities["packets"]["error"], "rejected");
        assert!(
            capabilities["packets"]["hooks"][0]
                .as_str()
                .unwrap()
                .contains("packets_xdp")
        );
        assert_eq!(capabilities["conns"]["ok"], true);
        assert!(capabilities["conns"]["error"].is_null());
    }
}

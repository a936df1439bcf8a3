//! Loading the `netray-conns` object, configuring it and attaching its
//! programs.
//!
//! Hooks (stable ABIs, working without kprobes or fentry): the
//! `sock:inet_sock_set_state` tracepoint for the lifecycle and the counters
//! (or, where it cannot be used, the same event as a BTF tracepoint), the
//! `syscalls:sys_exit_accept{,4}` tracepoints for accept attribution, and the
//! getaddrinfo uprobes (see [`super::resolve`]). Member offsets come from the
//! kernel's BTF; without BTF the tracer still reports connections, without
//! byte counters and accept attribution, and says so.

use std::{os::fd::AsFd as _, path::PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use netray_common::conns::{
    CONFIG_ACCEPT, CONFIG_SOCK_TUPLE, ConnsConfig, STAT_ACCEPT_UNRESOLVED, STAT_EVENTS,
    STAT_RINGBUF_FULL, STAT_TABLE_FULL,
};

use super::{btf::Btf, offsets, resolve::ResolveProbe};

/// Counters of the kernel side, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Events written to the ring buffer.
    pub events: u64,
    /// Events lost: ring buffer full.
    pub ringbuf_full: u64,
    /// Sockets not tracked: table full.
    pub table_full: u64,
    /// accept() results whose socket could not be resolved.
    pub accept_unresolved: u64,
    /// Times the kernel skipped one of the programs because a BPF program
    /// was already running on that CPU (`recursion_misses`: a state change
    /// in softirq interrupting a program in process context): events that
    /// were never produced.
    pub kernel_skipped: u64,
}

/// The attached tracer.
pub struct Tracer {
    /// Keeps the programs loaded and attached (dropping detaches).
    ebpf: Ebpf,
    /// Connection events.
    pub events: Option<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    /// The getaddrinfo uprobes, when they attached.
    pub resolve: Option<ResolveProbe>,
    /// Human-readable list of what is attached.
    pub hooks: Vec<String>,
    /// Degradations to tell the user about once.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

fn tracepoint(ebpf: &mut Ebpf, name: &str, category: &str, event: &str) -> anyhow::Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the netray-conns object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tracepoint"))?;
    prog.load()
        .with_context(|| format!("loading {name} (for {category}:{event})"))?;
    prog.attach(category, event).with_context(|| {
        format!("attaching {category}:{event} (does `netray check` list tracepoints as working?)")
    })?;
    Ok(())
}

/// The program that follows the TCP lifecycle (`inet_sock_set_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleHook {
    /// Classic tracepoint: the record's stable format gives the tuple.
    TracePoint,
    /// BTF tracepoint: typed arguments, tuple read from the socket at
    /// BTF-computed offsets; needs no tracefs.
    BtfTracePoint,
}

impl LifecycleHook {
    /// Environment variable that forces one hook (`tracepoint` or
    /// `tp_btf`), for tests and troubleshooting; by default netray tries
    /// them in that order and keeps the first that loads and attaches.
    pub const ENV: &'static str = "NETRAY_CONNS_LIFECYCLE_HOOK";

    fn name(self) -> &'static str {
        match self {
            Self::TracePoint => "tracepoint sock:inet_sock_set_state",
            Self::BtfTracePoint => "tp_btf inet_sock_set_state",
        }
    }

    /// The candidates, in order of preference, or the forced one.
    fn candidates() -> anyhow::Result<Vec<Self>> {
        match std::env::var(Self::ENV).ok().as_deref() {
            None | Some("") => Ok(vec![Self::TracePoint, Self::BtfTracePoint]),
            Some("tracepoint") => Ok(vec![Self::TracePoint]),
            Some("tp_btf") => Ok(vec![Self::BtfTracePoint]),
            Some(other) => anyhow::bail!(
                "{}={other:?}: expected \"tracepoint\" or \"tp_btf\"",
                Self::ENV
            ),
        }
    }
}

fn attach_lifecycle(
    ebpf: &mut Ebpf,
    hook: LifecycleHook,
    tracepoint_offsets: &Result<(), String>,
    config: &ConnsConfig,
) -> anyhow::Result<()> {
    match hook {
        LifecycleHook::TracePoint => {
            if let Err(e) = tracepoint_offsets {
                anyhow::bail!("{e}");
            }
            tracepoint(ebpf, "conns_state", "sock", "inet_sock_set_state")
        }
        LifecycleHook::BtfTracePoint => {
            anyhow::ensure!(
                config.flags & CONFIG_SOCK_TUPLE != 0,
                "the struct sock offsets are unknown"
            );
            let btf = aya::Btf::from_sys_fs().context("kernel BTF")?;
            let prog: &mut BtfTracePoint = ebpf
                .program_mut("conns_state_btf")
                .context("program conns_state_btf missing from the netray-conns object")?
                .try_into()?;
            prog.load("inet_sock_set_state", &btf)
                .context("loading conns_state_btf")?;
            prog.attach()
                .context("attaching tp_btf/inet_sock_set_state")?;
            Ok(())
        }
    }
}

impl Tracer {
    /// Loads, configures and attaches everything. `hostnames`: also attach
    /// the getaddrinfo uprobes (a failure there is a warning).
    ///
    /// Hooks are chosen at run time the way `netray check` probes them: each
    /// candidate is loaded and attached, and the first that works is kept.
    pub fn attach(hostnames: bool) -> anyhow::Result<Self> {
        crate::loader::raise_memlock_limit();
        let candidates = LifecycleHook::candidates()?;
        let tracefs_path = match crate::tracefs::ensure_mounted() {
            Ok(crate::tracefs::TracefsState::AlreadyMounted(path)) => Ok(PathBuf::from(path)),
            Ok(crate::tracefs::TracefsState::MountedByNetray) => {
                Ok(PathBuf::from(crate::tracefs::MOUNT_POINT))
            }
            Err(e) => Err(e.to_string()),
        };
        let mut warnings = Vec::new();
        let mut config = ConnsConfig::default();
        let tracepoint_offsets = tracefs_path.clone().and_then(|path| {
            offsets::tracepoint_offsets(&path, &mut config)
                .map_err(|e| format!("reading the tracepoint format: {e:#}"))
        });
        match Btf::from_sys_fs() {
            Ok(btf) => {
                if let Err(e) = offsets::counter_offsets(&btf, &mut config) {
                    warnings.push(format!("no byte/RTT/retransmit counters at close: {e:#}"));
                }
                if let Err(e) = tracefs_path
                    .clone()
                    .map_err(|e| anyhow::anyhow!(e))
                    .and_then(|path| offsets::accept_tracepoint_offsets(&path, &mut config))
                    .and_then(|()| offsets::accept_offsets(&btf, &mut config))
                {
                    warnings.push(format!("accepted connections will have no process: {e:#}"));
                }
                if let Err(e) = offsets::sock_tuple_offsets(&btf, &mut config) {
                    tracing::info!("no tp_btf lifecycle hook: {e:#}");
                }
            }
            Err(e) => warnings.push(format!(
                "kernel BTF unavailable ({e:#}): no counters at close and no process for \
                 accepted connections"
            )),
        }

        let mut ebpf =
            Ebpf::load(crate::objects::CONNS).context("loading the netray-conns object")?;
        let mut cfg: Array<_, ConnsConfig> = Array::try_from(
            ebpf.map_mut("CONNS_CONFIG")
                .context("map CONNS_CONFIG missing from the netray-conns object")?,
        )?;
        cfg.set(0, config, 0).context("writing CONNS_CONFIG")?;

        let mut hooks = Vec::new();
        let mut failures = Vec::new();
        for hook in candidates {
            match attach_lifecycle(&mut ebpf, hook, &tracepoint_offsets, &config) {
                Ok(()) => {
                    hooks.push(hook.name().to_string());
                    break;
                }
                Err(e) => failures.push(format!("{}: {e:#}", hook.name())),
            }
        }
        if hooks.is_empty() {
            anyhow::bail!(
                "no hook for the TCP lifecycle works here ({}); see `netray check`",
                failures.join("; ")
            );
        }
        for failure in &failures {
            tracing::info!("lifecycle hook not used: {failure}");
        }
        // Accept attribution needs the syscall tracepoints (kernels built
        // without CONFIG_FTRACE_SYSCALLS have none): without them netray
        // still reports every connection, accepted ones at close with no
        // process.
        let accept = if config.flags & CONFIG_ACCEPT != 0 {
            tracepoint(&mut ebpf, "conns_accept4", "syscalls", "sys_exit_accept4")
        } else {
            Err(anyhow::anyhow!("offsets unknown"))
        };
        match accept {
            Ok(()) => {
                hooks.push("tracepoint syscalls:sys_exit_accept4".to_string());
                match tracepoint(&mut ebpf, "conns_accept", "syscalls", "sys_exit_accept") {
                    Ok(()) => hooks.push("tracepoint syscalls:sys_exit_accept".to_string()),
                    // Architectures without accept(2) (accept4 only) have no
                    // such event.
                    Err(e) => tracing::info!("sys_exit_accept: {e:#}"),
                }
            }
            Err(e) => warnings.push(format!(
                "no accept events; accepted connections are reported at close with no \
                 process: {e:#}"
            )),
        }
        let events: RingBuf<MapData> = crate::loader::take_map(&mut ebpf, "CONNS_EVENTS")?;
        let stats: PerCpuArray<MapData, u64> = crate::loader::take_map(&mut ebpf, "CONNS_STATS")?;

        let resolve = if hostnames {
            match ResolveProbe::attach(&mut ebpf) {
                Ok(probe) => {
                    hooks.push(format!(
                        "uprobes getaddrinfo on {}",
                        probe
                            .libraries()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    Some(probe)
                }
                Err(e) => {
                    warnings.push(format!("no hostnames (host is null): {e:#}"));
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            ebpf,
            events: Some(events),
            stats,
            resolve,
            hooks,
            warnings,
        })
    }

    /// The kernel counters now.
    pub fn stats(&self) -> KernelStats {
        let get = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        let kernel_skipped = [
            "conns_state",
            "conns_state_btf",
            "conns_accept4",
            "conns_accept",
        ]
        .iter()
        .filter_map(|name| {
            let fd = self.ebpf.program(name)?.fd().ok()?;
            recursion_misses(fd.as_fd()).ok()
        })
        .sum();
        KernelStats {
            events: get(STAT_EVENTS),
            ringbuf_full: get(STAT_RINGBUF_FULL),
            table_full: get(STAT_TABLE_FULL),
            accept_unresolved: get(STAT_ACCEPT_UNRESOLVED),
            kernel_skipped,
        }
    }
}

/// `recursion_misses` of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`; the
/// field is at byte 208 of the stable, append-only `struct bpf_prog_info`,
/// since Linux 5.12; older kernels fill less and it reads 0).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const RECURSION_MISSES: usize = 208 / 8;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u64; 29];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the attribute points to a buffer of `info_len` bytes that
    // lives across the call; the kernel writes at most that many.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info[RECURSION_MISSES])
}

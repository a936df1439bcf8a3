//! Loading the `netray-conns` object, configuring it and attaching its
//! programs.
//!
//! Hooks, chosen at run time so that a run the kernel skips is counted (or
//! cannot happen) on the running kernel: the TCP lifecycle from the
//! `inet_sock_set_state` BTF tracepoint (else the classic tracepoint),
//! accept attribution from the `syscalls:sys_exit_accept{,4}` tracepoints
//! (or, with `NETRAY_CONNS_ACCEPT_HOOK=fexit`, `fexit/inet_csk_accept`), and the getaddrinfo
//! uprobes (see [`super::resolve`]). Member offsets come from the kernel's
//! BTF; without BTF the tracer still reports connections, without byte
//! counters and accept attribution, and says so.

use std::{os::fd::AsFd as _, path::PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, TracePoint},
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
    /// were never produced. `None` when this kernel has no such counter
    /// (before 5.12); the hooks are then chosen so that nothing is skipped
    /// (see [`NestedRuns`]).
    pub kernel_skipped: Option<u64>,
}

/// What the running kernel does with a run of one of netray's programs
/// that would start while a BPF program already runs on the same CPU (a
/// TCP state change in softirq interrupting a program in process context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedRuns {
    /// The nested run happens: nothing is skipped.
    Run,
    /// Skipped and counted in the program's `recursion_misses`.
    Counted,
    /// Skipped and counted nowhere: a loss would be silent.
    Uncounted,
}

impl NestedRuns {
    fn describe(self) -> &'static str {
        match self {
            Self::Run => "nested runs are not skipped",
            Self::Counted => "skipped runs are counted",
            Self::Uncounted => "skipped runs are NOT counted by this kernel",
        }
    }
}

/// What a BTF tracepoint (`BPF_TRACE_RAW_TP`) program does when nested,
/// read from the kernel's own types: raw tracepoint programs skip a run
/// that would nest in a run of the same program on that CPU since
/// 05b24ff9b2cf ("bpf: Prevent bpf program recursion for raw tracepoint
/// probes", 6.1, also in 5.15.80 and 6.0.10), using the per-program
/// `bpf_prog.active` counter of ca06f55b9002 ("bpf: Add per-program
/// recursion prevention mechanism", 5.12), and count the skip in
/// `recursion_misses` (9ed9e9ba2337, 5.12). A kernel whose `struct
/// bpf_prog` has no `active` member has no per-program recursion check at
/// all: nested runs of raw tracepoint programs simply run (5.10).
fn raw_tracepoint_nesting(btf: &Btf, misses_readable: bool) -> NestedRuns {
    match (btf.member("bpf_prog", "active").is_ok(), misses_readable) {
        (false, _) => NestedRuns::Run,
        (true, true) => NestedRuns::Counted,
        // A vendor backport of the check without the counter.
        (true, false) => NestedRuns::Uncounted,
    }
}

/// What the kernel does with a classic tracepoint program that would run
/// while a kprobe, classic tracepoint or perf_event program runs on the
/// same CPU (a TCP state change in softirq interrupting such a program in
/// process context): `trace_call_bpf` skips it (`bpf_prog_active`), and
/// counts the skip in `recursion_misses` only since dd8657894c11 ("bpf:
/// Count missed stats in trace_call_bpf", Linux 6.7); before that nowhere.
///
/// A version boundary, because the behaviour cannot be provoked
/// deterministically from userspace on every kernel: a nested run in the
/// same context (a program triggering a tracepoint itself) is dropped by
/// perf's per-context recursion guard before BPF sees it, uprobe programs
/// do not raise `bpf_prog_active` on recent kernels (a uprobe → printk
/// nesting ran the inner program on 6.18), and the host has no kprobes to
/// build the kernel selftest's kprobe → bpf_trace_printk nesting.
fn tracepoint_nesting() -> NestedRuns {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (6, 7) {
        NestedRuns::Counted
    } else {
        NestedRuns::Uncounted
    }
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
    /// What the kernel does with nested runs of the lifecycle program.
    pub lifecycle_nesting: NestedRuns,
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
    /// `tp_btf`), for tests and troubleshooting. By default netray prefers
    /// the BTF tracepoint: the kernel skips it only when it would nest in
    /// itself, while a classic tracepoint program is skipped whenever any
    /// kprobe/tracepoint/perf program (netray's accept or getaddrinfo
    /// programs, another tool's) runs on that CPU, and on kernels before
    /// 6.7 without counting the skip. Among the hooks that load, one whose
    /// skipped runs would go uncounted is taken only when no other works.
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
            None | Some("") => Ok(vec![Self::BtfTracePoint, Self::TracePoint]),
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

/// Environment variable: `fexit` attaches accept attribution to
/// `fexit/inet_csk_accept` instead of the accept syscalls' tracepoints.
pub const ACCEPT_HOOK_ENV: &str = "NETRAY_CONNS_ACCEPT_HOOK";

/// Accept attribution by `fexit/inet_csk_accept` (see the eBPF side for
/// why two variants): the first that loads and attaches. Its nesting
/// behaviour is the raw tracepoints' (a trampoline program: per-program
/// recursion check and `recursion_misses` since ca06f55b9002 /
/// 9ed9e9ba2337, 5.12; before that nested runs run).
fn attach_accept_fexit(ebpf: &mut Ebpf) -> anyhow::Result<&'static str> {
    let btf = aya::Btf::from_sys_fs().context("kernel BTF")?;
    let mut failures = Vec::new();
    for name in ["conns_accept_fexit4", "conns_accept_fexit2"] {
        let prog: &mut FExit = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the netray-conns object"))?
            .try_into()?;
        match prog
            .load("inet_csk_accept", &btf)
            .map_err(anyhow::Error::from)
            .and_then(|()| prog.attach().map(drop).map_err(anyhow::Error::from))
        {
            Ok(()) => return Ok("fexit inet_csk_accept"),
            Err(e) => {
                failures.push(format!("{name}: {e:#}"));
                let _ = prog.unload();
            }
        }
    }
    anyhow::bail!("{}", failures.join("; "))
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
        let mut raw_tp_nesting = NestedRuns::Uncounted;
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
                raw_tp_nesting = raw_tracepoint_nesting(
                    &btf,
                    btf.member("bpf_prog_info", "recursion_misses").is_ok(),
                );
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

        let tracepoint_nesting = tracepoint_nesting();
        let nesting = |hook: LifecycleHook| match hook {
            LifecycleHook::TracePoint => tracepoint_nesting,
            LifecycleHook::BtfTracePoint => raw_tp_nesting,
        };
        let mut candidates = candidates;
        // Stable: the preference order holds among equally accounted hooks.
        candidates.sort_by_key(|hook| nesting(*hook) == NestedRuns::Uncounted);

        let mut hooks = Vec::new();
        let mut failures = Vec::new();
        let mut lifecycle_nesting = NestedRuns::Uncounted;
        for hook in candidates {
            match attach_lifecycle(&mut ebpf, hook, &tracepoint_offsets, &config) {
                Ok(()) => {
                    lifecycle_nesting = nesting(hook);
                    hooks.push(format!("{} [{}]", hook.name(), nesting(hook).describe()));
                    if nesting(hook) == NestedRuns::Uncounted {
                        warnings.push(format!(
                            "{}: this kernel skips a run of it that would start while another \
                             BPF program runs on that CPU without counting it; state changes \
                             missed that way cannot be reported (no hook that counts them \
                             loads here: {})",
                            hook.name(),
                            if failures.is_empty() {
                                "none other".to_string()
                            } else {
                                failures.join("; ")
                            }
                        ));
                    }
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
        // fexit/inet_csk_accept would also see io_uring and in-kernel
        // accepts, but two attribution tests failed with it on 5.10 and it
        // has not yet passed the whole suite on the guest kernels: opt-in
        // (NETRAY_CONNS_ACCEPT_HOOK=fexit) until it has.
        let accept_fexit = if std::env::var(ACCEPT_HOOK_ENV).as_deref() == Ok("fexit") {
            attach_accept_fexit(&mut ebpf)
        } else {
            Err(anyhow::anyhow!(
                "not selected ({ACCEPT_HOOK_ENV}=fexit selects it)"
            ))
        };
        if let Ok(name) = &accept_fexit {
            hooks.push(format!("{name} [{}]", raw_tp_nesting.describe()));
        }
        let accept = if let Err(fexit_error) = &accept_fexit {
            tracing::info!("accept hook fexit/inet_csk_accept not used: {fexit_error:#}");
            if config.flags & CONFIG_ACCEPT != 0 {
                tracepoint(&mut ebpf, "conns_accept4", "syscalls", "sys_exit_accept4")
            } else {
                Err(anyhow::anyhow!("offsets unknown"))
            }
        } else {
            Ok(())
        };
        // These classic tracepoints are skipped only while bpf_prog_active
        // is raised on the CPU, and they run at syscall exit in process
        // context, below every BPF program that could run on that CPU: a
        // program running there (kprobe, tracepoint, uprobe) has no way to
        // return from a syscall, and the bpf() syscall's own
        // bpf_disable_instrumentation() sections end before it returns.
        // (A task preempted inside such a section, possible since 5.11 with
        // preempt=full, leaves the counter raised for whatever runs next on
        // that CPU; 6.7 and later count what is skipped then.)
        let accept_note = match tracepoint_nesting {
            NestedRuns::Uncounted => "never nested: run at syscall exit",
            other => other.describe(),
        };
        match accept {
            Ok(()) if accept_fexit.is_ok() => {}
            Ok(()) => {
                hooks.push(format!(
                    "tracepoint syscalls:sys_exit_accept4 [{accept_note}]"
                ));
                match tracepoint(&mut ebpf, "conns_accept", "syscalls", "sys_exit_accept") {
                    Ok(()) => hooks.push(format!(
                        "tracepoint syscalls:sys_exit_accept [{accept_note}]"
                    )),
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
            lifecycle_nesting,
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
        let misses: Vec<Option<u64>> = [
            "conns_state",
            "conns_state_btf",
            "conns_accept4",
            "conns_accept",
            "conns_accept_fexit4",
            "conns_accept_fexit2",
        ]
        .iter()
        .filter_map(|name| {
            // Only the loaded (attached) ones have a fd.
            let fd = self.ebpf.program(name)?.fd().ok()?;
            recursion_misses(fd.as_fd()).ok()
        })
        .collect();
        let kernel_skipped = misses.iter().copied().sum::<Option<u64>>();
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
/// since Linux 5.12). `None` when the kernel's `bpf_prog_info` ends before
/// it (it writes back how many bytes it filled).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<u64>> {
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
    if (attr.info_len as usize) < (RECURSION_MISSES + 1) * 8 {
        return Ok(None);
    }
    Ok(Some(info[RECURSION_MISSES]))
}

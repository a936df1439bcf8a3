//! Linux capabilities of the running process, read from `/proc/self/status`.
//!
//! netray asks for capabilities by name before it touches the kernel, so that
//! a user without them gets "missing CAP_BPF" rather than an `EPERM` from deep
//! inside a loader.

use std::fmt;

/// A Linux capability netray may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Configure interfaces, attach XDP/TC programs.
    NetAdmin,
    /// Open raw sockets (probe packets).
    NetRaw,
    /// Catch-all administrative capability; implies BPF and PERFMON on kernels
    /// that predate them.
    SysAdmin,
    /// Tracing programs and perf events (kprobe/uprobe/tracepoint attach).
    Perfmon,
    /// Load eBPF programs and create maps.
    Bpf,
    /// Drop capabilities from the bounding set (serve's privilege drop).
    SetPcap,
}

impl Capability {
    /// Bit number of the capability (see `linux/capability.h`).
    pub const fn bit(self) -> u32 {
        match self {
            Self::NetAdmin => 12,
            Self::NetRaw => 13,
            Self::SysAdmin => 21,
            Self::Perfmon => 38,
            Self::Bpf => 39,
            Self::SetPcap => 8,
        }
    }

    /// The name as `capabilities(7)` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::NetRaw => "CAP_NET_RAW",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
            Self::SetPcap => "CAP_SETPCAP",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The effective capability set of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    /// The effective set of the current process.
    pub fn current() -> std::io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Self::from_proc_status(&status).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no CapEff line in /proc/self/status",
            )
        })
    }

    /// Parses the `CapEff:` line of a `/proc/PID/status` text.
    pub fn from_proc_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    /// Whether the set holds `cap`. CAP_SYS_ADMIN stands in for CAP_BPF and
    /// CAP_PERFMON, as the kernel itself accepts it for both.
    pub const fn has(self, cap: Capability) -> bool {
        match cap {
            Capability::Bpf | Capability::Perfmon => {
                self.holds(cap) || self.holds(Capability::SysAdmin)
            }
            _ => self.holds(cap),
        }
    }

    const fn holds(self, cap: Capability) -> bool {
        self.0 & (1 << cap.bit()) != 0
    }

    /// The capabilities of `required` that this set lacks, in order.
    pub fn missing(self, required: &[Capability]) -> Vec<Capability> {
        required.iter().copied().filter(|&c| !self.has(c)).collect()
    }
}

/// Capabilities every netray command that loads programs needs.
pub const EBPF_COMMAND: &[Capability] = &[
    Capability::Bpf,
    Capability::NetAdmin,
    Capability::Perfmon,
    Capability::NetRaw,
];

/// Fails with a message naming each missing capability.
pub fn require(command: &str, required: &[Capability]) -> anyhow::Result<()> {
    let set = CapabilitySet::current()?;
    let missing = set.missing(required);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<_> = missing.iter().map(|c| c.name()).collect();
    anyhow::bail!(
        "`netray {command}` needs {}; missing: {}. Run it as root, or grant them with \
         `setcap cap_bpf,cap_net_admin,cap_perfmon,cap_net_raw+ep $(which netray)`",
        required
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        names.join(", ")
    )
}

/// The user a long-running command switches to once its privileged setup is
/// done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUser {
    /// The name, as given or defaulted.
    pub name: String,
    /// Its uid.
    pub uid: libc::uid_t,
    /// Its primary group.
    pub gid: libc::gid_t,
}

/// Looks `name` up in the user database (NSS: /etc/passwd, LDAP...).
pub fn lookup_user(name: &str, flag: &str) -> anyhow::Result<TargetUser> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| anyhow::anyhow!("{flag} {name:?} is not a user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r with valid buffers; `found` points into `pwd` or is null.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "{flag} {name}: looking the user up failed: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if found.is_null() {
        anyhow::bail!("{flag} {name}: no such user (create it, or name another with {flag})");
    }
    Ok(TargetUser {
        name: name.to_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// The user `netray serve` switches to: `--user NAME`, else `nobody` when
/// running as root, else none (the current user stays; capabilities are
/// still dropped).
pub fn serve_target_user(user: Option<&str>) -> anyhow::Result<Option<TargetUser>> {
    match user {
        Some(name) => lookup_user(name, "--user").map(Some),
        // SAFETY: geteuid has no failure modes.
        None if unsafe { libc::geteuid() } == 0 => lookup_user("nobody", "--user (default)")
            .map(Some)
            .map_err(|e| e.context("running as root: give --user NAME for an unprivileged user")),
        None => Ok(None),
    }
}

/// Fails, before any setup, when [`drop_privileges`] could not empty the
/// bounding set: that needs CAP_SETPCAP, which root has but a non-root
/// start (systemd `User=` with `AmbientCapabilities=`) must be given.
pub fn require_droppable() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    let privileges = ThreadPrivileges::from_proc_status(&status).ok_or_else(|| {
        anyhow::anyhow!("cannot read the capability sets from /proc/thread-self/status")
    })?;
    let [_, _, effective, bounding, _] = privileges.caps;
    let setpcap = capability_mask(&[Capability::SetPcap]);
    if bounding != 0 && effective & setpcap == 0 {
        anyhow::bail!(
            "the privilege drop empties the capability bounding set, which needs CAP_SETPCAP: \
             grant it too (systemd: add CAP_SETPCAP to AmbientCapabilities= and \
             CapabilityBoundingSet=), or start serve as root"
        );
    }
    Ok(())
}

// ---- dropping privileges on every thread
//
// uid, gid, capability sets, the bounding set and no_new_privs are all
// per-thread in the kernel; the raw syscalls change only the calling thread.
// By the time setup is done the tokio runtime has several threads, so the
// drop runs in every thread of the process: in the caller directly, in the
// others from a signal handler (what glibc does for setuid and libcap's psx
// for capabilities). Only raw syscalls run in the handler
// (async-signal-safe).

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

/// Target of the drop, read by the signal handler (`u32::MAX`: keep the ids).
static DROP_UID: AtomicU32 = AtomicU32::new(u32::MAX);
static DROP_GID: AtomicU32 = AtomicU32::new(u32::MAX);
static DROP_LAST_CAP: AtomicU32 = AtomicU32::new(63);
/// Capabilities kept in the effective and permitted sets (a bit mask; 0:
/// none).
static DROP_KEEP: AtomicU64 = AtomicU64::new(0);
/// Threads that ran the drop, and the first errno any of them saw (0: none).
static DROP_DONE: AtomicUsize = AtomicUsize::new(0);
static DROP_ERRNO: AtomicI32 = AtomicI32::new(0);

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops everything in the calling thread but the capabilities in
/// `DROP_KEEP` (kept effective and permitted; never inheritable, ambient or
/// bounding); returns 0 or the errno of the first failing step. Order
/// matters: the bounding set needs CAP_SETPCAP and the ids
/// CAP_SETUID/CAP_SETGID, so the capability sets are cleared last.
fn drop_this_thread() -> i32 {
    // SAFETY (whole function): raw syscalls with valid arguments only.
    unsafe fn check(rc: libc::c_long) -> Result<(), i32> {
        if rc < 0 {
            // SAFETY: reading errno.
            Err(unsafe { *libc::__errno_location() })
        } else {
            Ok(())
        }
    }
    let steps = || -> Result<(), i32> {
        let last_cap = DROP_LAST_CAP.load(AtomicOrdering::Relaxed);
        let keep = DROP_KEEP.load(AtomicOrdering::Relaxed);
        // SAFETY: raw syscalls with valid arguments only.
        unsafe {
            for cap in 0..=last_cap {
                // Already gone (a second signal): dropping again would need
                // CAP_SETPCAP, which may be gone too.
                let held = libc::syscall(
                    libc::SYS_prctl,
                    libc::PR_CAPBSET_READ,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                    0,
                );
                if held != 1 {
                    continue;
                }
                // EINVAL: the kernel does not know this capability; fine.
                let rc = libc::syscall(
                    libc::SYS_prctl,
                    libc::PR_CAPBSET_DROP,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                    0,
                );
                if rc < 0 && *libc::__errno_location() != libc::EINVAL {
                    return Err(*libc::__errno_location());
                }
            }
            check(libc::syscall(
                libc::SYS_prctl,
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ))?;
            check(libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_NO_NEW_PRIVS,
                1,
                0,
                0,
                0,
            ))?;
            let (uid, gid) = (
                DROP_UID.load(AtomicOrdering::Relaxed),
                DROP_GID.load(AtomicOrdering::Relaxed),
            );
            let ids_differ = libc::syscall(libc::SYS_getuid) != libc::c_long::from(uid)
                || libc::syscall(libc::SYS_getgid) != libc::c_long::from(gid)
                || libc::syscall(libc::SYS_geteuid) != libc::c_long::from(uid);
            if uid != u32::MAX && ids_differ {
                check(libc::syscall(
                    libc::SYS_setgroups,
                    0,
                    std::ptr::null::<libc::gid_t>(),
                ))?;
                check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
                // Leaving uid 0 empties the permitted set unless told to
                // keep it (the effective set is emptied either way); capset
                // below then keeps only `keep` of it.
                set_keep_caps(keep != 0)?;
                check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
                set_keep_caps(false)?;
            }
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let kept = cap_data(keep, keep);
            check(libc::syscall(
                libc::SYS_capset,
                &raw mut header,
                kept.as_ptr(),
            ))?;
        }
        Ok(())
    };
    match steps() {
        Ok(()) => 0,
        Err(errno) => errno,
    }
}

/// `PR_SET_KEEPCAPS` for the calling thread (needs no privilege).
fn set_keep_caps(keep: bool) -> Result<(), i32> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_KEEPCAPS,
            libc::c_ulong::from(keep),
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        // SAFETY: reading errno.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(())
    }
}

/// The two 32-bit halves `capset`/`capget` take, inheritable empty.
const fn cap_data(effective: u64, permitted: u64) -> [CapData; 2] {
    [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ]
}

extern "C" fn drop_signal_handler(_: libc::c_int) {
    // SAFETY: reading and restoring errno around the handler's syscalls.
    let saved = unsafe { *libc::__errno_location() };
    let errno = drop_this_thread();
    if errno != 0 {
        let _ =
            DROP_ERRNO.compare_exchange(0, errno, AtomicOrdering::SeqCst, AtomicOrdering::SeqCst);
    }
    DROP_DONE.fetch_add(1, AtomicOrdering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Thread ids of this process.
fn thread_ids() -> std::io::Result<Vec<libc::pid_t>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// What `/proc/PID/task/TID/status` says about a thread's privileges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadPrivileges {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    /// The NoNewPrivs flag.
    pub no_new_privs: bool,
}

impl ThreadPrivileges {
    /// Parses a `/proc/.../status` text.
    pub fn from_proc_status(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let mut uids = [0; 4];
        let mut parts = field("Uid:")?.split_whitespace();
        for uid in &mut uids {
            *uid = parts.next()?.parse().ok()?;
        }
        let mut caps = [0; 5];
        for (cap, name) in caps
            .iter_mut()
            .zip(["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"])
        {
            *cap = u64::from_str_radix(field(name)?, 16).ok()?;
        }
        Some(Self {
            uids,
            caps,
            no_new_privs: field("NoNewPrivs:")? == "1",
        })
    }

    /// Exactly `kept` (a mask, see [`capability_mask`]) in the effective and
    /// permitted sets, nothing in the inheritable, bounding and ambient
    /// sets, no_new_privs set, and (if given) every uid is `uid`.
    pub fn is_dropped(&self, uid: Option<u32>, kept: u64) -> bool {
        let [inheritable, permitted, effective, bounding, ambient] = self.caps;
        [inheritable, bounding, ambient] == [0; 3]
            && [permitted, effective] == [kept; 2]
            && self.no_new_privs
            && uid.is_none_or(|uid| self.uids.iter().all(|&u| u == uid))
    }
}

/// Switches every thread of the process to `user` (if any), clears every
/// capability set (effective, permitted, inheritable, ambient, bounding)
/// except `keep`, which stays effective and permitted (and nowhere else),
/// and sets no_new_privs, for good. Checks the result in `/proc` for every
/// thread and fails (the caller must then exit) if any thread kept more or
/// less.
pub fn drop_privileges(user: Option<&TargetUser>, keep: &[Capability]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let keep_mask = capability_mask(keep);
    DROP_KEEP.store(keep_mask, AtomicOrdering::SeqCst);
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    DROP_LAST_CAP.store(last_cap, AtomicOrdering::SeqCst);
    if let Some(user) = user {
        DROP_UID.store(user.uid, AtomicOrdering::SeqCst);
        DROP_GID.store(user.gid, AtomicOrdering::SeqCst);
    }
    let signal = libc::SIGRTMIN() + 3;
    // SAFETY: installing a handler that only makes raw syscalls and touches
    // atomics; SA_RESTART keeps interrupted syscalls of other threads going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_signal_handler as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("installing the drop handler");
        }
    }
    // SAFETY: no failure modes.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let status_of = |tid: libc::pid_t| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .ok()
            .and_then(|s| ThreadPrivileges::from_proc_status(&s))
    };
    let want_uid = user.map(|u| u.uid);
    // Threads may start while we work (a new thread inherits its creator's
    // state): go round until every thread is seen dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut dropped_self = false;
    loop {
        let mut pending = Vec::new();
        for tid in thread_ids().context("listing /proc/self/task")? {
            if !status_of(tid).is_some_and(|p| p.is_dropped(want_uid, keep_mask)) {
                pending.push(tid);
            }
        }
        if pending.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("dropping privileges: threads {pending:?} still hold some after 10 s");
        }
        // Others first: dropping ourselves first would take away the right
        // to signal threads of another uid (root's).
        for &tid in pending.iter().filter(|&&t| t != me) {
            // SAFETY: tgkill to a thread of our own process.
            let _ = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        if pending.contains(&me) && pending.len() == 1 && !dropped_self {
            dropped_self = true;
            let errno = drop_this_thread();
            if errno != 0 {
                return Err(std::io::Error::from_raw_os_error(errno))
                    .context("dropping privileges in the main thread");
            }
        }
        let errno = DROP_ERRNO.load(AtomicOrdering::SeqCst);
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(errno))
                .context("dropping privileges in a thread");
        }
    }
    let user_name = user.map_or("(unchanged)", |u| u.name.as_str());
    let threads = DROP_DONE.load(AtomicOrdering::SeqCst) + 1;
    if keep.is_empty() {
        tracing::info!(
            user = user_name,
            threads,
            "privileges dropped: no capabilities, no_new_privs"
        );
    } else {
        let names: Vec<_> = keep.iter().map(|c| c.name()).collect();
        tracing::info!(
            user = user_name,
            threads,
            "privileges dropped: no capabilities but {} (effective and permitted only), \
             no_new_privs",
            names.join(", ")
        );
    }
    Ok(())
}

/// The bit mask of `caps`, as `/proc/PID/status` shows the sets.
pub fn capability_mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |mask, c| mask | 1 << c.bit())
}

// ---- do map operations need CAP_BPF after the drop?
//
// After the drop serve still updates and reads its maps (flows, listening
// ports, counters) through descriptors it already holds. Since Linux 5.19
// ("bpf: refine kernel.unprivileged_bpf_disabled behaviour")
// `kernel.unprivileged_bpf_disabled` refuses only map creation and program
// loading to a process without CAP_BPF; before it, every bpf() command, so
// a process with no capability cannot touch its own maps. Distribution
// kernels backport such changes, so this is measured, not guessed from the
// version: a child process drops exactly as serve will and tries.

/// Whether `bpf()` map operations on a map descriptor already open need
/// CAP_BPF once the process has switched to `user` (if any): a forked child
/// switches to `user`, keeps only CAP_BPF in its permitted set, and updates
/// and looks up a one-entry array map created here, first without CAP_BPF
/// in its effective set, then with it. `Ok(false)`: works with no
/// capability; `Ok(true)`: needs CAP_BPF, and CAP_BPF alone is enough.
/// Fails, saying why, if the map cannot be created or the operations fail
/// even with CAP_BPF.
pub fn map_operations_need_cap_bpf(user: Option<&TargetUser>) -> anyhow::Result<bool> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let map = create_probe_map().map_err(|e| {
        anyhow::anyhow!("creating a one-entry array map to probe map access after the drop: {e}")
    })?;
    let mut pipe = [0; 2];
    // SAFETY: pipe2 into a valid array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(anyhow::Error::from(std::io::Error::last_os_error())
            .context("a pipe for the map-access probe"));
    }
    // SAFETY: both descriptors are new and owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let ids = user.map(|u| (u.uid, u.gid));
    // SAFETY: the child only makes raw syscalls on values prepared here and
    // leaves with _exit (nothing of the parent's runtime runs in it).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(anyhow::Error::from(std::io::Error::last_os_error())
            .context("forking the map-access probe"));
    }
    if child == 0 {
        let result = probe_map_access_in_child(map.as_raw_fd(), ids);
        // SAFETY: writing a plain array to the pipe, then leaving.
        unsafe {
            libc::write(
                write_end.as_raw_fd(),
                result.as_ptr().cast(),
                size_of_val(&result),
            );
            libc::_exit(0)
        }
    }
    drop(write_end);
    let mut result = [0i32; 3];
    // SAFETY: reading into a plain array of the right size.
    let read = unsafe {
        libc::read(
            read_end.as_raw_fd(),
            result.as_mut_ptr().cast(),
            size_of_val(&result),
        )
    };
    let mut status = 0;
    // SAFETY: reaping our own child.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    if usize::try_from(read).ok() != Some(size_of_val(&result)) {
        anyhow::bail!(
            "the map-access probe (a child process) died without an answer (status {status:#x})"
        );
    }
    let [setup, without, with] = result.map(|errno| match errno {
        0 => None,
        errno => Some(std::io::Error::from_raw_os_error(errno)),
    });
    let as_whom = user.map_or_else(
        || "with no capability".to_string(),
        |u| format!("as {} with no capability", u.name),
    );
    if let Some(e) = setup {
        anyhow::bail!("probing map access {as_whom}: dropping privileges in the probe failed: {e}");
    }
    match (without, with) {
        (None, _) => Ok(false),
        (Some(without), None) if without.raw_os_error() == Some(libc::EPERM) => Ok(true),
        (Some(without), Some(with)) if with.raw_os_error() == Some(NOT_TRIED) => anyhow::bail!(
            "bpf() map operations {as_whom} fail on this kernel ({without}; \
             kernel.unprivileged_bpf_disabled={}), and CAP_BPF, which would allow them, is not \
             in this process's permitted set (grant CAP_BPF, not only CAP_SYS_ADMIN)",
            unprivileged_bpf_disabled().map_or("?".to_string(), |v| v.to_string())
        ),
        (Some(without), with) => anyhow::bail!(
            "bpf() map operations {as_whom} fail on this kernel ({without}), and with CAP_BPF \
             kept too ({})",
            with.map_or("they work".to_string(), |e| e.to_string())
        ),
    }
}

/// `kernel.unprivileged_bpf_disabled` (0: allowed, 1: disabled for good,
/// 2: disabled, an admin may re-enable), if readable.
pub fn unprivileged_bpf_disabled() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stands for "not tried" in the probe's answer (not an errno the
/// operations return).
const NOT_TRIED: i32 = libc::ENOTRECOVERABLE;

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

fn create_probe_map() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK.
    crate::loader::raise_memlock_limit();
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // SAFETY: bpf(BPF_MAP_CREATE) with an attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const attr,
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned here.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// One update and one lookup of key 0: 0, or the errno of the first that
/// failed. Raw syscalls only (runs in the forked child).
fn map_update_and_lookup(map_fd: libc::c_int) -> i32 {
    let key = 0u32;
    let mut value = 0u32;
    for (command, flags) in [(BPF_MAP_UPDATE_ELEM, 0), (BPF_MAP_LOOKUP_ELEM, 0)] {
        let attr = MapElemAttr {
            map_fd: map_fd as u32,
            _pad: 0,
            key: &raw const key as u64,
            value: &raw mut value as u64,
            flags,
        };
        // SAFETY: bpf() on pointers to locals that outlive the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, command, &raw const attr, size_of_val(&attr)) };
        if rc < 0 {
            // SAFETY: reading errno.
            return unsafe { *libc::__errno_location() };
        }
    }
    0
}

/// The probe itself, in the forked child: raw syscalls only, no allocation.
/// Returns [errno of the drop, errno without CAP_BPF, errno with CAP_BPF]
/// (0: worked; `NOT_TRIED`: not tried).
fn probe_map_access_in_child(map_fd: libc::c_int, ids: Option<(u32, u32)>) -> [i32; 3] {
    let bpf = 1u64 << Capability::Bpf.bit();
    // SAFETY: reading errno.
    let errno = || unsafe { *libc::__errno_location() };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut current = cap_data(0, 0);
    // SAFETY: raw syscalls with valid arguments.
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut header, current.as_mut_ptr()) < 0 {
            return [errno(), NOT_TRIED, NOT_TRIED];
        }
        let permitted = u64::from(current[0].permitted) | u64::from(current[1].permitted) << 32;
        let keep = permitted & bpf;
        if libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return [errno(), NOT_TRIED, NOT_TRIED];
        }
        if let Some((uid, gid)) = ids {
            if let Err(e) = set_keep_caps(true) {
                return [e, NOT_TRIED, NOT_TRIED];
            }
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                return [errno(), NOT_TRIED, NOT_TRIED];
            }
        }
        let without_bpf = cap_data(0, keep);
        if libc::syscall(libc::SYS_capset, &raw mut header, without_bpf.as_ptr()) < 0 {
            return [errno(), NOT_TRIED, NOT_TRIED];
        }
        let without = map_update_and_lookup(map_fd);
        if without == 0 || keep == 0 {
            return [0, without, NOT_TRIED];
        }
        let with_bpf = cap_data(keep, keep);
        if libc::syscall(libc::SYS_capset, &raw mut header, with_bpf.as_ptr()) < 0 {
            return [errno(), without, NOT_TRIED];
        }
        [0, without, map_update_and_lookup(map_fd)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_root_set() {
        let set = CapabilitySet::from_proc_status("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(set.missing(EBPF_COMMAND).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        // Only CAP_NET_ADMIN (bit 12).
        let set = CapabilitySet::from_proc_status("CapEff:\t0000000000001000\n").unwrap();
        assert_eq!(
            set.missing(EBPF_COMMAND),
            vec![Capability::Bpf, Capability::Perfmon, Capability::NetRaw]
        );
    }

    #[test]
    fn sys_admin_implies_bpf_and_perfmon() {
        let set = CapabilitySet::from_proc_status("CapEff:\t0000000000200000\n").unwrap();
        assert!(set.has(Capability::Bpf));
        assert!(set.has(Capability::Perfmon));
        assert!(!set.has(Capability::NetRaw));
    }

    #[test]
    fn thread_privileges_from_status() {
        let status = "Uid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\n\
                      CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                      CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let p = ThreadPrivileges::from_proc_status(status).unwrap();
        assert!(p.is_dropped(Some(65534), 0));
        assert!(!p.is_dropped(Some(0), 0));
        assert!(!p.is_dropped(Some(65534), capability_mask(&[Capability::Bpf])));
        let bpf_kept = status
            .replace("CapPrm:\t0000000000000000", "CapPrm:\t0000008000000000")
            .replace("CapEff:\t0000000000000000", "CapEff:\t0000008000000000");
        let bpf_kept = ThreadPrivileges::from_proc_status(&bpf_kept).unwrap();
        assert!(bpf_kept.is_dropped(Some(65534), capability_mask(&[Capability::Bpf])));
        assert!(!bpf_kept.is_dropped(Some(65534), 0));
        let root = status.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert!(
            !ThreadPrivileges::from_proc_status(&root)
                .unwrap()
                .is_dropped(None, 0)
        );
    }

    #[test]
    fn unknown_user_is_a_clear_error() {
        let e = lookup_user("netray-no-such-user", "--user").unwrap_err();
        assert!(format!("{e:#}").contains("no such user"), "{e:#}");
    }

    #[test]
    fn missing_line_is_none() {
        assert!(CapabilitySet::from_proc_status("Name: x\n").is_none());
    }
}

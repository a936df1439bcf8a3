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
    fn missing_line_is_none() {
        assert!(CapabilitySet::from_proc_status("Name: x\n").is_none());
    }
}

//! Types of the `netray check` capability probe.

/// One kind of kernel hook that `netray check` loads, attaches and fires.
///
/// The discriminant is the hook's slot in the probe's hit-counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// XDP on a network device.
    Xdp = 0,
    /// TC classifier (clsact or tcx) on a network device.
    Tc = 1,
    /// Classic tracepoint (`sock:inet_sock_set_state`).
    TracePoint = 2,
    /// Raw tracepoint.
    RawTracePoint = 3,
    /// BTF-enabled tracepoint (`tp_btf`).
    BtfTracePoint = 4,
    /// kprobe on a kernel function.
    KProbe = 5,
    /// fentry trampoline on a kernel function.
    FEntry = 6,
    /// uprobe on libc's `getaddrinfo`.
    UProbe = 7,
    /// sock_ops on a cgroup v2.
    SockOps = 8,
    /// cgroup_skb on a cgroup v2.
    CgroupSkb = 9,
    /// Ring buffer map, exercised from a socket filter.
    RingBuf = 10,
}

impl HookKind {
    /// Number of hook kinds, i.e. the length of the hit-counter array.
    pub const COUNT: u32 = 11;
}

/// Record a probe program writes to the check ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckEvent {
    /// Always [`CheckEvent::MAGIC`]: proves the bytes came from our program.
    pub magic: u32,
    /// The [`HookKind`] that produced the record.
    pub hook: u32,
}

impl CheckEvent {
    /// Value of [`CheckEvent::magic`].
    pub const MAGIC: u32 = 0x6e65_7472; // "netr"
}

#[cfg(feature = "user")]
// SAFETY: CheckEvent is repr(C), Copy, made of two u32 (no padding), and any bit pattern is valid.
unsafe impl aya::Pod for CheckEvent {}

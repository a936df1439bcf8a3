//! Loading and attaching eBPF objects: the steps every capability shares.

use std::io;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, MapError, RingBuf},
    programs::{SchedClassifier, TcAttachType, Xdp},
    util::KernelVersion,
};
use tokio::io::{Interest, unix::AsyncFd};

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail there. Harmless where memcg accounting is used.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure is tolerated.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Takes map `name` out of `ebpf` as a typed map.
pub fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// Attaches `xdp` to `iface` in the least disturbing mode that works (see
/// [`crate::netdev::preferred_xdp_modes`]); the error names the interface
/// and both tries.
pub fn attach_xdp(xdp: &mut Xdp, iface: &str) -> anyhow::Result<()> {
    let [first, second] = crate::netdev::preferred_xdp_modes(iface);
    if let Err(first_error) = xdp.attach(iface, first) {
        xdp.attach(iface, second).map_err(|second_error| {
            anyhow!(
                "attaching XDP to {iface}: {first:?} mode: {first_error}; {second:?} mode: \
                 {second_error} (another XDP program already attached?)"
            )
        })?;
    }
    Ok(())
}

/// Attaches `tc` to the egress of `iface`. From 6.6 aya attaches through
/// tcx (a bpf_link, no qdisc needed); before, through a netlink filter that
/// needs the clsact qdisc, which is added then and stays after detaching
/// (harmless, and possibly shared with other users).
pub fn attach_tc_egress(tc: &mut SchedClassifier, iface: &str) -> anyhow::Result<()> {
    let Err(first) = tc.attach(iface, TcAttachType::Egress) else {
        return Ok(());
    };
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
        return Err(
            anyhow::Error::new(first).context(format!("attaching TC egress (tcx) to {iface}"))
        );
    }
    // May exist already: then its error is not the problem.
    let _ = aya::programs::tc::qdisc_add_clsact(iface);
    tc.attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching TC egress to {iface} (first try: {first})"))?;
    Ok(())
}

/// Registers `ring` with the tokio runtime `runtime` for readiness.
pub fn async_ring_buffer(
    ring: RingBuf<MapData>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let _guard = runtime.enter();
    // SAFETY: the RingBuf owns its map's fd (MapData holds an OwnedFd) and
    // keeps it open and unchanged while the AsyncFd owns the RingBuf.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(io::Error::from)
        .context("registering the ring buffer with tokio")
}

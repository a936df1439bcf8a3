//! Network testbeds for netray's tests and benchmarks: a linear chain
//! `client — r1 — … — rN — server` built from network namespaces and veth
//! pairs, dual-stack on every link, removed again on drop.
//!
//! ```no_run
//! use netray_testbed::{Family, RouterBehavior, Side, Topology};
//! # fn main() -> anyhow::Result<()> {
//! let tb = Topology::chain(3)
//!     .router(2, RouterBehavior::Silent)
//!     .loss(3, 10)
//!     .build()?;
//! let out = tb.client().exec(&["ip", "route"])?;
//! let hop1 = tb.router_addr(1, Side::Client, Family::V4); // 10.0.0.2
//! # Ok(()) }
//! ```
//!
//! # Nodes and links
//!
//! Node 0 is the client, nodes `1..=N` are the routers (router `k` is node
//! `k`), node `N + 1` is the server. Link `i` (`0..=N`) connects node `i` and
//! node `i + 1`; at both ends its interface is called `link<i>` (names only
//! need to be unique per namespace, and the veths are created directly
//! inside the namespaces, never in the root namespace).
//!
//! # Addressing plan
//!
//! | link `i`           | client-side end (node `i`) | server-side end (node `i + 1`) |
//! |--------------------|----------------------------|--------------------------------|
//! | IPv4 `10.0.i.0/24` | `10.0.i.1`                 | `10.0.i.2`                     |
//! | IPv6 `fd00:0:0:i::/64` | `fd00:0:0:i::1`        | `fd00:0:0:i::2`                |
//! | IPv6 link-local    | `fe80::1`                  | `fe80::2`                      |
//!
//! (`i` is written in hex in the IPv6 address, as IPv6 always is; it equals
//! the decimal for `i < 10`.) So the client is `10.0.0.1`/`fd00::1`, the
//! server `10.0.N.2`/`fd00:0:0:N::2`, and router `k` is `10.0.(k-1).2` toward
//! the client and `10.0.k.1` toward the server. [`link_addr`] and the
//! [`Testbed`] accessors compute these.
//!
//! Every node's default route points to its neighbour toward the server
//! (the server's to its neighbour toward the client); routers have explicit
//! routes for the subnets on their client side and forward IPv4 and IPv6.
//! IPv6 addresses (also the fixed link-locals, which replace the
//! kernel-generated ones) are added `nodad`, DAD is off, and ICMP error rate
//! limiting is off in every namespace, so results are deterministic. `build` returns
//! only after the client has pinged the server over both families.
//!
//! # Names and cleanup
//!
//! Namespaces are named `nrt<pid>-<n>-<node>` (`c`, `r1`…, `s`), `n` being a
//! per-process counter, so tests may build testbeds in parallel threads and
//! processes. Dropping a [`Testbed`] (or [`Netns`]) kills what still runs
//! inside and deletes the namespaces; [`cleanup_stale`] (run by every
//! `build`) removes those left behind by processes that died without
//! unwinding.
//!
//! Everything needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN), iproute2's `ip` and,
//! for behaviours and loss, `nft`; for delay, `tc` and the kernel's netem.

pub mod forge;
pub mod frames;
pub mod http;
mod netns;
pub mod probe;
pub mod tcpdump;
mod topology;

pub use netns::{Netns, Spawned, cleanup_stale};

/// How long a test waits for a process it started (netray, dnsmasq, a
/// service) to be ready before it fails. Generous on purpose: in the kernel
/// matrix's TCG guests on a loaded machine, verifying netray's programs
/// alone took over 20 s. The deadline only bounds how long a real failure
/// takes to show; tests still fail at once when the process exits.
pub const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
pub use probe::ProbeReply;
pub use topology::{
    Family, LinkDelay, RouterBehavior, Side, Testbed, Topology, VISITOR_NETWORKS, link_addr,
    link_ifname, visitor_addr,
};

/// Whether this kernel can delay links ([`Topology::delay`]): netem is
/// loaded, or its module is there to be loaded. The host kernel of this
/// project's machines has none; the kernel-matrix guests' kernels do.
pub fn netem_available() -> bool {
    std::path::Path::new("/sys/module/sch_netem").exists()
        || std::process::Command::new("modprobe")
            .args(["-q", "-n", "sch_netem"])
            .status()
            .is_ok_and(|status| status.success())
}

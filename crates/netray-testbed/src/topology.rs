//! The chain topology: declaration ([`Topology`]) and the built [`Testbed`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{self, Netns, run_cmd};

/// How long `build` waits for the topology to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// One of the two directions along the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Toward the client (node 0).
    Client,
    /// Toward the server (the last node).
    Server,
}

/// Something special a router does, on top of forwarding. A router may have
/// several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouterBehavior {
    /// Sends no ICMP/ICMPv6 errors at all (time exceeded, unreachable,
    /// packet too big, parameter problem are dropped in the `output` hook);
    /// forwarding is unaffected.
    Silent,
    /// Masquerades (source-NATs to its own address) IPv4 and IPv6 traffic
    /// leaving through its interface toward `masquerade_toward`. With
    /// [`Side::Server`] the server sees the router's server-facing address
    /// as the client; with [`Side::Client`] the router acts as a NAT in
    /// front of the server for server-initiated connections.
    Nat {
        /// The side whose interface traffic is masqueraded on.
        masquerade_toward: Side,
    },
    /// Forwards TCP (and ICMP errors) but drops forwarded UDP and ICMP/ICMPv6
    /// echo requests, both directions, in the `forward` hook.
    DropUdpIcmp,
    /// A NAT in front of the server for client-initiated connections (port
    /// forwarding): TCP arriving on the router's client-facing interface
    /// addressed to the router's client-facing address is destination-NATed
    /// to the server (IPv4 and IPv6, any port), so the client reaches the
    /// server at `router_addr(k, Side::Client, family)`. Replies, and the
    /// ICMP errors that belong to such connections, are translated back by
    /// conntrack as usual. Other traffic is unaffected.
    PortForward,
}

/// Interface name of link `link` at both of its ends (`link<i>`); names only
/// need to be unique within a namespace.
pub fn link_ifname(link: usize) -> String {
    format!("link{link}")
}

/// Address of the `end` of link `link`: [`Side::Client`] is the end on the
/// client side (node `link`), [`Side::Server`] the other one (node `link + 1`).
/// IPv4 `10.0.<link>.1|2`, IPv6 `fd00:0:0:<link>::1|2`.
pub fn link_addr(link: usize, end: Side, family: Family) -> IpAddr {
    let host = match end {
        Side::Client => 1,
        Side::Server => 2,
    };
    match family {
        Family::V4 => {
            let link = u8::try_from(link).expect("link index fits 10.0.<link>.0/24");
            Ipv4Addr::new(10, 0, link, host).into()
        }
        Family::V6 => {
            let link = u16::try_from(link).expect("link index fits fd00:0:0:<link>::/64");
            Ipv6Addr::new(0xfd00, 0, 0, link, 0, 0, 0, host.into()).into()
        }
    }
}

/// The subnet of link `link`: `10.0.<link>.0/24` or `fd00:0:0:<link>::/64`.
/// How many extra visitor networks the client node has (see
/// [`Testbed::visitor_addr`]).
pub const VISITOR_NETWORKS: usize = 4;

/// Address of visitor `j` (`1..=VISITOR_NETWORKS`): IPv4 `10.200.j.1`
/// (its own /24), IPv6 `fd00:c8:j::1` (its own /48); `j = 0` is the client's
/// link address.
pub fn visitor_addr(j: usize, family: Family) -> IpAddr {
    if j == 0 {
        return link_addr(0, Side::Client, family);
    }
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 200, j as u8, 1)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc8, j as u16, 0, 0, 0, 0, 1)),
    }
}

fn visitor_prefix(j: usize, family: Family) -> String {
    match family {
        Family::V4 => format!("10.200.{j}.0/24"),
        Family::V6 => format!("fd00:c8:{j:x}::/48"),
    }
}

fn prefix(link: usize, family: Family) -> String {
    let len = match family {
        Family::V4 => 24,
        Family::V6 => 64,
    };
    let net = match link_addr(link, Side::Client, family) {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(a.to_bits() & !0xff)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(a.to_bits() & !u128::from(u64::MAX))),
    };
    format!("{net}/{len}")
}

/// Declaration of a chain `client — r1 — … — rN — server`; see the crate docs
/// for the addressing plan.
#[derive(Debug, Clone)]
pub struct Topology {
    routers: usize,
    behaviors: Vec<(usize, RouterBehavior)>,
    losses: Vec<(usize, u8)>,
    delays: Vec<(usize, LinkDelay)>,
    kernel_icmp_rate_limits: bool,
}

/// Delay on a link, in each direction (netem on both ends' egress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkDelay {
    /// Mean one-way delay.
    pub delay: Duration,
    /// Jitter around it (netem's uniform default distribution); like
    /// netem's, it can reorder packets.
    pub jitter: Duration,
}

impl Topology {
    /// A chain with `routers` routers (0 connects client and server directly).
    pub fn chain(routers: usize) -> Topology {
        Topology {
            routers,
            behaviors: Vec::new(),
            losses: Vec::new(),
            delays: Vec::new(),
            kernel_icmp_rate_limits: false,
        }
    }

    /// Gives router `k` (1-based from the client side) a behaviour.
    /// An out-of-range `k` makes [`build`](Self::build) fail.
    pub fn router(mut self, k: usize, behavior: RouterBehavior) -> Topology {
        self.behaviors.push((k, behavior));
        self
    }

    /// Randomly drops `percent`% of the IP packets received from link `link`
    /// (0-based, see the crate docs), in both directions: both end nodes get
    /// `iifname "link<i>" numgen random mod 100 < percent drop` in a
    /// `prerouting` hook (priority raw), so forwarded and locally delivered
    /// packets alike are affected. Neighbour discovery is exempt so the link
    /// stays resolvable (ARP is not IP and so is never affected).
    pub fn loss(mut self, link: usize, percent: u8) -> Topology {
        self.losses.push((link, percent));
        self
    }

    /// Delays every packet sent over link `link` (0-based, see the crate
    /// docs) by `delay` (plus up to `jitter` either way) in each direction,
    /// with netem on the egress of both ends: a round trip over the link
    /// takes twice the delay. Needs the kernel's netem (`sch_netem`):
    /// [`build`](Self::build) fails with a clear error where it is missing
    /// (see [`netem_available`](crate::netem_available)).
    pub fn delay(mut self, link: usize, delay: Duration, jitter: Duration) -> Topology {
        self.delays.push((link, LinkDelay { delay, jitter }));
        self
    }

    /// Gives the routers the kernel's default ICMP error rate limits (per
    /// destination: IPv4 a burst of 6 then 1 per second, IPv6 similar) instead
    /// of none, as on real routers. For tests of behaviour under rate limits.
    pub fn kernel_icmp_rate_limits(mut self) -> Topology {
        self.kernel_icmp_rate_limits = true;
        self
    }

    /// Builds the testbed: namespaces, veth pairs, addresses, routes,
    /// forwarding, then checks that the client reaches the server over both
    /// families, and finally installs the behaviours' nftables rules.
    ///
    /// Removes stale testbeds of dead processes first ([`netns::cleanup_stale`]).
    /// On error everything created so far is removed again.
    pub fn build(&self) -> Result<Testbed> {
        netns::check_privileges()?;
        let n = self.routers;
        ensure!(
            n <= 254,
            "at most 254 routers (links are numbered into 10.0.<link>.0/24)"
        );
        for &(k, b) in &self.behaviors {
            ensure!(
                (1..=n).contains(&k),
                "router {k} for {b:?} is not in 1..={n}"
            );
        }
        for &(link, _) in &self.delays {
            ensure!(link <= n, "delay on link {link}, but the links are 0..={n}");
        }
        for &(link, percent) in &self.losses {
            ensure!(link <= n, "loss on link {link}, but the links are 0..={n}");
            ensure!(
                percent <= 100,
                "loss of {percent}% on link {link} is over 100%"
            );
        }
        // Best effort: a failure here must not stop this testbed.
        let _ = netns::cleanup_stale();

        let stem = netns::unique_stem();
        let mut nodes = Vec::with_capacity(n + 2);
        for i in 0..n + 2 {
            let label = match i {
                0 => "c".to_string(),
                i if i == n + 1 => "s".to_string(),
                k => format!("r{k}"),
            };
            nodes.push(Netns::create(format!("{stem}-{label}"))?);
        }
        // From now on dropping `tb` (e.g. on `?`) deletes all namespaces.
        let tb = Testbed { nodes };

        for (i, node) in tb.nodes.iter().enumerate() {
            // Set before the veths exist: new interfaces inherit these.
            // No kernel-generated link-local addresses: they appear only once
            // the carrier is up (asynchronously), and until then a router
            // cannot send neighbour solicitations for forwarded packets (a
            // 1 s stall). node_config adds fixed ones instead.
            node.sysctl("net.ipv6.conf.default.addr_gen_mode", "1")?;
            if (1..=n).contains(&i) {
                node.sysctl("net.ipv4.ip_forward", "1")?;
                node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                if self.kernel_icmp_rate_limits {
                    // The kernel's defaults (Netns::create turns them off).
                    node.sysctl("net.ipv4.icmp_ratemask", "6168")?;
                    node.sysctl("net.ipv6.icmp.ratemask", "0-1,3-127")?;
                }
            }
        }
        for link in 0..=n {
            let name = link_ifname(link);
            let (left, right) = (tb.nodes[link].name(), tb.nodes[link + 1].name());
            // Created directly inside the namespaces: never visible in the
            // root namespace, so equal names across testbeds cannot clash.
            // Distinct ifindexes for the two ends matter: the kernel treats
            // a carrier change as urgent only if a device's ifindex differs
            // from its peer's (both would be 2 in fresh namespaces),
            // otherwise the link stays operationally down for up to 1 s.
            let (left_index, right_index) =
                ((100 + 2 * link).to_string(), (101 + 2 * link).to_string());
            let mut cmd = Command::new("ip");
            cmd.args([
                "link",
                "add",
                &name,
                "index",
                &left_index,
                "netns",
                left,
                "type",
                "veth",
            ])
            .args(["peer", "name", &name, "index", &right_index, "netns", right]);
            run_cmd(&mut cmd, None)
                .with_context(|| format!("creating link {link} ({left} <-> {right})"))?;
        }
        for i in 0..n + 2 {
            let node = &tb.nodes[i];
            node.exec_stdin(&["ip", "-batch", "-"], &node_config(i, n))
                .with_context(|| format!("configuring node {i} ({})", node.name()))?;
        }

        // Readiness, first: every veth operationally up. A packet sent
        // earlier hits the not-yet-activated queue and is dropped; if that
        // packet is a neighbour solicitation, resolution stalls for a second.
        let deadline = Instant::now() + READY_TIMEOUT;
        for (i, node) in tb.nodes.iter().enumerate() {
            let ifnames: Vec<String> = (i.saturating_sub(1)..=i.min(n)).map(link_ifname).collect();
            if !node.run(|| wait_running(&ifnames, deadline))?? {
                bail!(
                    "testbed not ready: {ifnames:?} in {} not up after {READY_TIMEOUT:?}",
                    node.name()
                );
            }
        }
        // Then one round trip per family proves every link, address, route
        // and neighbour entry on the path works (done before any nftables
        // rule can drop the pings).
        for family in [Family::V4, Family::V6] {
            let dst = tb.server_addr(family);
            if !tb.client().ping(dst, READY_TIMEOUT)? {
                bail!(
                    "testbed not ready: client {} cannot ping server {dst}",
                    tb.client().name()
                );
            }
        }

        // Delay last: readiness above is checked at full speed.
        for &(link, LinkDelay { delay, jitter }) in &self.delays {
            let ifname = link_ifname(link);
            for node in [&tb.nodes[link], &tb.nodes[link + 1]] {
                let (delay_us, jitter_us) = (
                    delay.as_micros().to_string(),
                    jitter.as_micros().to_string(),
                );
                let mut args = vec![
                    "tc", "qdisc", "replace", "dev", &ifname, "root", "netem", "delay",
                ];
                let delay_arg = format!("{delay_us}us");
                let jitter_arg = format!("{jitter_us}us");
                args.push(&delay_arg);
                if !jitter.is_zero() {
                    args.push(&jitter_arg);
                }
                // Deep enough for bursts of hundreds of probes in flight.
                args.extend(["limit", "100000"]);
                node.exec(&args).with_context(|| {
                    format!(
                        "delaying link {link} in {} with netem (is sch_netem available? \
                         the host kernel of this project's machines has none; the \
                         kernel-matrix guests do)",
                        node.name()
                    )
                })?;
            }
        }
        for i in 0..n + 2 {
            let rules = self.nft_rules(i);
            if !rules.is_empty() {
                let node = &tb.nodes[i];
                let ruleset = format!("table inet netray {{\n{rules}}}\n");
                node.exec_stdin(&["nft", "-f", "-"], &ruleset)
                    .with_context(|| {
                        format!("loading nftables rules into {}:\n{ruleset}", node.name())
                    })?;
            }
        }
        Ok(tb)
    }

    /// The nftables chains (inside `table inet netray`) for node `i`.
    fn nft_rules(&self, i: usize) -> String {
        let (mut pre, mut out, mut fwd, mut post, mut dnat) = (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        for &(link, percent) in &self.losses {
            // Node i touches link i-1 (client side) and link i (server side).
            if link == i || link + 1 == i {
                let ifname = link_ifname(link);
                let _ = writeln!(
                    pre,
                    "iifname \"{ifname}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect }} accept\n\
                     iifname \"{ifname}\" numgen random mod 100 < {percent} drop"
                );
            }
        }
        for &(k, behavior) in &self.behaviors {
            if k != i {
                continue;
            }
            match behavior {
                RouterBehavior::Silent => out.push_str(
                    "icmp type { destination-unreachable, time-exceeded, parameter-problem } drop\n\
                     icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } drop\n",
                ),
                RouterBehavior::DropUdpIcmp => fwd.push_str(
                    "meta l4proto udp drop\nicmp type echo-request drop\nicmpv6 type echo-request drop\n",
                ),
                RouterBehavior::Nat { masquerade_toward } => {
                    let link = match masquerade_toward {
                        Side::Client => k - 1,
                        Side::Server => k,
                    };
                    let _ = writeln!(post, "oifname \"{}\" masquerade", link_ifname(link));
                }
                RouterBehavior::PortForward => {
                    let ifname = link_ifname(k - 1);
                    for (family, keyword) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
                        let public = link_addr(k - 1, Side::Server, family);
                        let server = link_addr(self.routers, Side::Server, family);
                        let _ = writeln!(
                            dnat,
                            "iifname \"{ifname}\" {keyword} daddr {public} meta l4proto tcp dnat {keyword} to {server}"
                        );
                    }
                }
            }
        }
        [
            ("prerouting", "filter hook prerouting priority raw", pre),
            ("output", "filter hook output priority filter", out),
            ("forward", "filter hook forward priority filter", fwd),
            ("postrouting", "nat hook postrouting priority srcnat", post),
            ("portforward", "nat hook prerouting priority dstnat", dnat),
        ]
        .into_iter()
        .filter(|(_, _, rules)| !rules.is_empty())
        .map(|(name, hook, rules)| {
            format!("chain {name} {{\ntype {hook}; policy accept;\n{rules}}}\n")
        })
        .collect()
    }
}

/// `ip -batch` script for node `i` of a chain with `n` routers: addresses
/// (with fixed link-locals `fe80::1` / `fe80::2`), links up, routes. Default
/// routes point toward the server (the server's toward the client); routers
/// reach the subnets on their client side through explicit routes.
fn node_config(i: usize, n: usize) -> String {
    let mut s = String::new();
    // The links this node is on, and which end of each it is.
    let ends = [
        (i.checked_sub(1), Side::Server),
        ((i <= n).then_some(i), Side::Client),
    ];
    for (link, end) in ends
        .into_iter()
        .filter_map(|(link, end)| Some((link?, end)))
    {
        let ifname = link_ifname(link);
        let v4 = link_addr(link, end, Family::V4);
        let v6 = link_addr(link, end, Family::V6);
        let ll = if end == Side::Client {
            "fe80::1"
        } else {
            "fe80::2"
        };
        let _ = writeln!(
            s,
            "addr add {v4}/24 dev {ifname}\n\
             addr add {v6}/64 dev {ifname} nodad\n\
             addr add {ll}/64 dev {ifname} nodad\n\
             link set {ifname} up"
        );
    }
    if i == 0 {
        // Visitors from other networks, all living on the client node
        // (on lo, so the link address stays the default source).
        for j in 1..=VISITOR_NETWORKS {
            let _ = writeln!(
                s,
                "addr add {}/32 dev lo\naddr add {}/128 dev lo nodad",
                visitor_addr(j, Family::V4),
                visitor_addr(j, Family::V6)
            );
        }
        s.push_str("link set lo up\n");
    }
    for f in [Family::V4, Family::V6] {
        let default = if f == Family::V4 { "0.0.0.0/0" } else { "::/0" };
        let gateway = if i <= n {
            link_addr(i, Side::Server, f)
        } else {
            link_addr(i - 1, Side::Client, f)
        };
        let _ = writeln!(s, "route add {default} via {gateway}");
        if (1..=n).contains(&i) {
            let back = link_addr(i - 1, Side::Client, f);
            for link in 0..i - 1 {
                let _ = writeln!(s, "route add {} via {back}", prefix(link, f));
            }
            for j in 1..=VISITOR_NETWORKS {
                let _ = writeln!(s, "route add {} via {back}", visitor_prefix(j, f));
            }
        }
    }
    s
}

/// Waits until the interfaces `ifnames` of the calling thread's namespace
/// are operationally up (`IFF_RUNNING`); `Ok(false)` after `deadline`.
fn wait_running(ifnames: &[String], deadline: Instant) -> std::io::Result<bool> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    for name in ifnames {
        loop {
            // SAFETY: ifreq is plain old data; all-zero is valid.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            // Interface names are short ASCII; the rest stays NUL.
            for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifru_flags of the
            // valid ifreq we pass.
            if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the ioctl just initialised the flags member.
            let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
            if flags & libc::IFF_RUNNING != 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(true)
}

/// A built chain. Node 0 is the client, nodes `1..=N` the routers, node
/// `N + 1` the server. Dropping it deletes every namespace (and so every
/// veth) it created, also while unwinding from a panic.
#[derive(Debug)]
pub struct Testbed {
    nodes: Vec<Netns>,
}

impl Testbed {
    /// Number of routers `N`.
    pub fn routers(&self) -> usize {
        self.nodes.len() - 2
    }

    /// Node `i` (0 = client, `1..=N` routers, `N + 1` server).
    ///
    /// # Panics
    /// If `i > N + 1`.
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// The client's namespace.
    pub fn client(&self) -> &Netns {
        &self.nodes[0]
    }

    /// The server's namespace.
    pub fn server(&self) -> &Netns {
        &self.nodes[self.nodes.len() - 1]
    }

    /// Router `k`'s namespace (1-based from the client side).
    ///
    /// # Panics
    /// If `k` is not in `1..=N`.
    pub fn router(&self, k: usize) -> &Netns {
        assert!(
            (1..=self.routers()).contains(&k),
            "router {k} is not in 1..={}",
            self.routers()
        );
        &self.nodes[k]
    }

    /// All namespaces, client first, server last.
    pub fn namespaces(&self) -> &[Netns] {
        &self.nodes
    }

    /// The client's address (on link 0).
    pub fn client_addr(&self, family: Family) -> IpAddr {
        link_addr(0, Side::Client, family)
    }

    /// The server's address (on link `N`).
    pub fn server_addr(&self, family: Family) -> IpAddr {
        link_addr(self.routers(), Side::Server, family)
    }

    /// Router `k`'s address on its interface toward `toward`. Linux sources
    /// ICMP errors from the interface the error leaves through, i.e. the one
    /// facing the probe's sender: [`Side::Client`] for probes from the client.
    ///
    /// # Panics
    /// If `k` is not in `1..=N`.
    pub fn router_addr(&self, k: usize, toward: Side, family: Family) -> IpAddr {
        self.router(k);
        match toward {
            Side::Client => link_addr(k - 1, Side::Server, family),
            Side::Server => link_addr(k, Side::Client, family),
        }
    }

    /// Name of node `i`'s interface toward `toward` (see [`link_ifname`]).
    ///
    /// # Panics
    /// If node `i` has no interface on that side (the client toward the
    /// client, the server toward the server) or does not exist.
    pub fn ifname(&self, i: usize, toward: Side) -> String {
        match toward {
            Side::Client => {
                assert!(
                    (1..self.nodes.len()).contains(&i),
                    "node {i} has no client-facing interface"
                );
                link_ifname(i - 1)
            }
            Side::Server => {
                assert!(
                    i <= self.routers(),
                    "node {i} has no server-facing interface"
                );
                link_ifname(i)
            }
        }
    }
}

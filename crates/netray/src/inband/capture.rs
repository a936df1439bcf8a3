//! The kernel side of in-band traceroute, from userspace: loads the
//! `netray-inband` object, attaches its XDP (ingress) and TC (egress)
//! programs to the chosen interfaces, registers the flows to watch, and
//! delivers each flow's [`InbandEvent`]s to whoever registered it.
//!
//! ```no_run
//! # async fn demo(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> anyhow::Result<()> {
//! use netray::inband::capture::{Capture, flow_key, up_interfaces};
//! let capture = Capture::attach(&up_interfaces()?)?;
//! let mut flow = capture.register(flow_key(local, peer))?;
//! flow.set_armed(true)?;
//! while let Some(event) = flow.events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Everything is tied to the [`Capture`]: its programs are attached through
//! bpf_links (netlink on old kernels) owned by the loaded object, so dropping
//! the last `Arc<Capture>` (subscriptions hold one too) detaches everything,
//! and so does the process exiting, however it exits.

use std::{
    collections::HashMap as StdHashMap,
    ffi::{CStr, CString},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use netray_common::inband::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, FlowState, InbandEvent, InbandStat,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
        oneshot,
    },
    task::JoinHandle,
};

/// Name of the XDP program in the object.
const XDP_PROGRAM: &str = "inband_xdp";
/// Name of the TC egress program in the object.
const TC_PROGRAM: &str = "inband_tc_egress";
/// `BPF_NOEXIST`: create only, fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only, fail if the key is gone.
const BPF_EXIST: u64 = 2;
/// Capacity of `INBAND_FLOWS`, as declared in the eBPF object.
/// `ARPHRD_ETHER`: the only link type the programs parse (Ethernet framing).
const ARPHRD_ETHER: u16 = 1;

type FlowMap = HashMap<MapData, FlowKey, FlowState>;
type Subscribers = StdHashMap<FlowKey, UnboundedSender<InbandEvent>>;

/// Locks a mutex, ignoring poisoning: the data behind these locks (a map
/// handle, a table of senders) stays consistent whatever panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The loaded capture programs, attached to some interfaces.
///
/// Create it with [`Capture::attach`]; watch flows with
/// [`Capture::register`]. Dropping the last reference detaches the programs
/// and stops the event reader.
pub struct Capture {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    /// `INBAND_FLOWS`, shared by `register`, the subscriptions and `state`.
    flows: Mutex<FlowMap>,
    /// `INBAND_STATS`.
    stats: PerCpuArray<MapData, u64>,
    /// `INBAND_LISTEN_PORTS`.
    listen_ports: Mutex<Array<MapData, u8>>,
    /// Who gets the events of which flow; shared with the reader task.
    subscribers: Arc<Mutex<Subscribers>>,
    /// Events nobody was subscribed to (userspace counter).
    undeliverable: Arc<AtomicU64>,
    /// Where the programs are attached.
    interfaces: Vec<String>,
    /// The ring-buffer reader; aborted on drop.
    reader: JoinHandle<()>,
    /// Asks the reader to drain the ring buffer now (see
    /// [`FlowSubscription::deliver_pending`]).
    flushes: UnboundedSender<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("interfaces", &self.interfaces)
            .field("flows", &lock(&self.subscribers).len())
            .finish_non_exhaustive()
    }
}

/// Counters of a [`Capture`]: the kernel's per-CPU counters summed, plus
/// what userspace could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Packets the XDP program looked at.
    pub xdp_packets: u64,
    /// ICMP errors quoting a registered flow, reported.
    pub icmp_matched: u64,
    /// ICMP errors quoting no registered flow (or no TCP at all).
    pub icmp_ignored: u64,
    /// Peer segments of armed flows, reported.
    pub tcp_reported: u64,
    /// Events the kernel could not queue (ring buffer full).
    pub ringbuf_drops: u64,
    /// Ingress packets too short or inconsistent to parse (passed untouched).
    pub malformed: u64,
    /// Egress segments that updated a registered flow.
    pub egress_updates: u64,
    /// Flows reset by a new SYN on their 4-tuple.
    pub flows_reset: u64,
    /// Flows removed because their connection ended (FIN both ways, RST).
    pub flows_ended: u64,
    /// Events read from the ring buffer whose flow had no subscriber any
    /// more (it was dropped while the event was in flight).
    pub undeliverable: u64,
}

impl Capture {
    /// Loads the capture object and attaches, on each of `interfaces` (names
    /// in the calling thread's network namespace): the XDP program (driver
    /// mode, falling back to generic/SKB mode) and the TC egress program
    /// (tcx; clsact qdisc + netlink filter on kernels before 6.6).
    ///
    /// Spawns a task on the current tokio runtime that reads the ring buffer
    /// and hands each event to the subscription of its flow, so this must be
    /// called inside a tokio runtime. Errors name the interface and the step
    /// that failed; on error nothing stays attached.
    ///
    /// Only Ethernet-framed interfaces are supported (see [`up_interfaces`]).
    /// A name given twice is attached once.
    pub fn attach(interfaces: &[String]) -> anyhow::Result<Arc<Capture>> {
        let mut unique: Vec<String> = Vec::with_capacity(interfaces.len());
        for iface in interfaces {
            if !unique.contains(iface) {
                unique.push(iface.clone());
            }
        }
        let interfaces = unique.as_slice();
        ensure!(
            !interfaces.is_empty(),
            "no interface to attach the in-band capture to"
        );
        let runtime = tokio::runtime::Handle::try_current()
            .context("Capture::attach must be called inside a tokio runtime")?;
        for iface in interfaces {
            check_ethernet(iface)?;
        }
        crate::loader::raise_memlock_limit();

        let mut ebpf = Ebpf::load(crate::objects::INBAND).context(
            "loading the in-band capture object (maps INBAND_FLOWS, INBAND_EVENTS, INBAND_STATS)",
        )?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the capture object"))?
            .try_into()
            .context(XDP_PROGRAM)?;
        xdp.load()
            .with_context(|| format!("loading {XDP_PROGRAM} (verifier)"))?;
        for iface in interfaces {
            crate::loader::attach_xdp(xdp, iface)?;
        }
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .ok_or_else(|| anyhow!("program {TC_PROGRAM} missing from the capture object"))?
            .try_into()
            .context(TC_PROGRAM)?;
        tc.load()
            .with_context(|| format!("loading {TC_PROGRAM} (verifier)"))?;
        for iface in interfaces {
            crate::loader::attach_tc_egress(tc, iface)?;
        }

        let flows: FlowMap = crate::loader::take_map(&mut ebpf, "INBAND_FLOWS")?;
        let stats: PerCpuArray<MapData, u64> = crate::loader::take_map(&mut ebpf, "INBAND_STATS")?;
        let listen_ports: Array<MapData, u8> =
            crate::loader::take_map(&mut ebpf, "INBAND_LISTEN_PORTS")?;
        let ring: RingBuf<MapData> = crate::loader::take_map(&mut ebpf, "INBAND_EVENTS")?;
        let ring = crate::loader::async_ring_buffer(ring, &runtime)?;
        let subscribers = Arc::new(Mutex::new(Subscribers::new()));
        let undeliverable = Arc::new(AtomicU64::new(0));
        let (flushes, flush_requests) = unbounded_channel();
        let reader = runtime.spawn(read_events(
            ring,
            Arc::clone(&subscribers),
            Arc::clone(&undeliverable),
            flush_requests,
        ));
        Ok(Arc::new(Capture {
            _ebpf: ebpf,
            flows: Mutex::new(flows),
            stats,
            listen_ports: Mutex::new(listen_ports),
            subscribers,
            undeliverable,
            interfaces: interfaces.to_vec(),
            reader,
            flushes,
        }))
    }

    /// Starts watching `key` and returns the subscription that receives the
    /// flow's events; dropping it stops watching and removes the flow from
    /// the kernel map. If the kernel tracks the flow already (a connection to
    /// a port given to [`Capture::set_listen_ports`]), its state is kept;
    /// otherwise a zeroed [`FlowState`] is inserted for the kernel to fill
    /// from the next segments.
    ///
    /// Fails when the flow is already subscribed, when the key is not a
    /// well-formed IPv4/IPv6 key (see [`flow_key`]), or when the kernel map
    /// cannot take it.
    pub fn register(self: &Arc<Self>, key: FlowKey) -> anyhow::Result<FlowSubscription> {
        check_key(&key)?;
        let (sender, events) = unbounded_channel();
        // Subscribe before the kernel can match: no early event is lost.
        {
            let mut subscribers = lock(&self.subscribers);
            if subscribers.contains_key(&key) {
                bail!("flow {} is already registered", describe_key(&key));
            }
            subscribers.insert(key, sender);
        }
        let inserted = lock(&self.flows).insert(key, FlowState::default(), BPF_NOEXIST);
        // EEXIST: the kernel has tracked this connection since its SYN.
        if let Err(error) = inserted.or_else(|e| match errno(&e) {
            Some(libc::EEXIST) => Ok(()),
            _ => Err(e),
        }) {
            lock(&self.subscribers).remove(&key);
            return Err(anyhow::Error::new(error)
                .context(format!("registering flow {}", describe_key(&key))));
        }
        Ok(FlowSubscription {
            key,
            events,
            capture: Arc::clone(self),
        })
    }

    /// Removes the kernel's state of a connection the server has closed,
    /// unless a trace subscribes to it (the subscription removes it when it
    /// drops). The kernel removes an entry when it sees FIN both ways or an
    /// RST; a peer that vanishes after our FIN would leave it behind until
    /// LRU eviction, for a later connection on the 4-tuple to find.
    /// Returns whether an entry was removed.
    pub fn forget(&self, key: &FlowKey) -> bool {
        let subscribers = lock(&self.subscribers);
        if subscribers.contains_key(key) {
            return false;
        }
        // Under the subscribers' lock: a registration racing with this
        // cannot have its fresh entry removed.
        lock(&self.flows).remove(key).is_ok()
    }

    /// The capture's counters (kernel per-CPU counters summed). A counter
    /// that cannot be read counts as 0.
    pub fn stats(&self) -> CaptureStats {
        let read = |stat: InbandStat| -> u64 {
            self.stats
                .get(&(stat as u32), 0)
                .map(|values| values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
                .unwrap_or(0)
        };
        CaptureStats {
            xdp_packets: read(InbandStat::XdpPackets),
            icmp_matched: read(InbandStat::IcmpMatched),
            icmp_ignored: read(InbandStat::IcmpIgnored),
            tcp_reported: read(InbandStat::TcpReported),
            ringbuf_drops: read(InbandStat::RingbufDrops),
            malformed: read(InbandStat::Malformed),
            egress_updates: read(InbandStat::EgressUpdates),
            flows_reset: read(InbandStat::FlowsReset),
            flows_ended: read(InbandStat::FlowsEnded),
            undeliverable: self.undeliverable.load(Ordering::Relaxed),
        }
    }

    /// Tracks every connection to these local ports from its SYN on, so a
    /// later trace of it knows its sequence state even if the peer has gone
    /// quiet (a server's listening ports). Replaces nothing: ports add up.
    pub fn set_listen_ports(&self, ports: &[u16]) -> anyhow::Result<()> {
        let mut map = lock(&self.listen_ports);
        for &port in ports {
            map.set(u32::from(port), 1, 0)
                .with_context(|| format!("tracking connections to port {port}"))?;
        }
        Ok(())
    }

    /// The interfaces the programs are attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    fn flow_state(&self, key: &FlowKey) -> anyhow::Result<FlowState> {
        lock(&self.flows)
            .get(key, 0)
            .with_context(|| format!("reading the state of flow {}", describe_key(key)))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // The programs detach when `_ebpf` drops right after this.
        self.reader.abort();
    }
}

/// A registered flow: its events, and access to its kernel state. Dropping
/// it removes the flow from the kernel map and from the dispatcher.
#[derive(Debug)]
pub struct FlowSubscription {
    /// The flow.
    pub key: FlowKey,
    /// The flow's events, in ring-buffer order (ICMP errors always; peer
    /// segments while armed).
    pub events: UnboundedReceiver<InbandEvent>,
    capture: Arc<Capture>,
}

impl FlowSubscription {
    /// The flow's current kernel state.
    pub fn state(&self) -> anyhow::Result<FlowState> {
        self.capture.flow_state(&self.key)
    }

    /// Arms (every peer segment becomes an event) or disarms the flow.
    ///
    /// The map value is written whole (read, set `armed`, update with
    /// `BPF_EXIST`), so a kernel update landing between the read and the
    /// write is overwritten with the slightly older value. That is accepted
    /// on purpose: every kernel field is refreshed by the next segment, and
    /// the forward-only sequence fields move forward again from the older
    /// value. (Writing the single byte in place would need a mmapable map,
    /// which hash maps are not.)
    pub fn set_armed(&self, armed: bool) -> anyhow::Result<()> {
        let mut flows = lock(&self.capture.flows);
        let mut state = flows
            .get(&self.key, 0)
            .with_context(|| format!("reading flow {}", describe_key(&self.key)))?;
        state.armed = u8::from(armed);
        flows
            .insert(self.key, state, BPF_EXIST)
            .with_context(|| format!("arming flow {}", describe_key(&self.key)))
    }

    /// The capture this flow is registered with.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    /// Returns once every event the kernel had queued when this was called
    /// is in [`FlowSubscription::events`] (or `limit` passed). A trace's
    /// deadline is userspace time: on a busy machine the reader can be
    /// seconds behind replies the kernel saw in time, and those must count.
    pub async fn deliver_pending(&self, limit: std::time::Duration) {
        let (done, drained) = oneshot::channel();
        if self.capture.flushes.send(done).is_ok() {
            let _ = tokio::time::timeout(limit, drained).await;
        }
    }
}

impl Drop for FlowSubscription {
    fn drop(&mut self) {
        // Map first: after this no new event of the flow is produced.
        if let Err(error) = lock(&self.capture.flows).remove(&self.key) {
            tracing::warn!(
                "removing flow {} from the kernel map: {error}",
                describe_key(&self.key)
            );
        }
        lock(&self.capture.subscribers).remove(&self.key);
    }
}

/// Reads the ring buffer until the capture is dropped (the task is
/// aborted) and dispatches each event to its flow's subscriber.
///
/// Answers flush requests too: each is answered after a drain that started
/// after it arrived, so in ring-buffer order every earlier record has been
/// dispatched.
async fn read_events(
    mut ring: AsyncFd<RingBuf<MapData>>,
    subscribers: Arc<Mutex<Subscribers>>,
    undeliverable: Arc<AtomicU64>,
    mut flush_requests: UnboundedReceiver<oneshot::Sender<()>>,
) {
    loop {
        let flush = tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(error) => {
                        tracing::error!("in-band capture: polling the ring buffer failed: {error}");
                        return;
                    }
                };
                dispatch_all(guard.get_inner_mut(), &subscribers, &undeliverable);
                // Only clears readiness seen before this guard was taken: a
                // record committed after the drain above wakes the next
                // iteration.
                guard.clear_ready();
                None
            }
            Some(done) = flush_requests.recv() => Some(done),
        };
        if let Some(done) = flush {
            dispatch_all(ring.get_mut(), &subscribers, &undeliverable);
            let _ = done.send(());
        }
    }
}

/// Reads every record the ring buffer holds and hands each event to its
/// flow's subscriber.
fn dispatch_all(
    ring: &mut RingBuf<MapData>,
    subscribers: &Mutex<Subscribers>,
    undeliverable: &AtomicU64,
) {
    while let Some(item) = ring.next() {
        let Some(event) = parse_event(&item) else {
            tracing::warn!(
                "in-band capture: skipping a ring-buffer record of {} bytes",
                item.len()
            );
            continue;
        };
        let delivered = lock(subscribers)
            .get(&event.flow)
            .is_some_and(|sender| sender.send(event).is_ok());
        if !delivered {
            undeliverable.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An event from a ring-buffer record, if it is large enough.
fn parse_event(bytes: &[u8]) -> Option<InbandEvent> {
    (bytes.len() >= size_of::<InbandEvent>()).then(|| {
        // SAFETY: length checked; InbandEvent is plain data valid for any
        // bit pattern; read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<InbandEvent>()) }
    })
}

/// The errno behind a map syscall failure.
fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// Rejects keys the kernel could never match: unknown family, bytes past an
/// IPv4 address, nonzero padding.
fn check_key(key: &FlowKey) -> anyhow::Result<()> {
    match key.family {
        FAMILY_IPV4 => ensure!(
            key.local_addr[4..].iter().all(|&b| b == 0)
                && key.remote_addr[4..].iter().all(|&b| b == 0),
            "IPv4 flow key with bytes after the address (use flow_key())"
        ),
        FAMILY_IPV6 => {}
        family => bail!("flow key of unknown family {family}"),
    }
    ensure!(key.pad == [0; 3], "flow key with nonzero padding");
    Ok(())
}

/// `local -> remote` for messages.
fn describe_key(key: &FlowKey) -> String {
    let local = SocketAddr::new(addr_from_bytes(key.family, key.local_addr), key.local_port);
    let remote = SocketAddr::new(
        addr_from_bytes(key.family, key.remote_addr),
        key.remote_port,
    );
    format!("{local} -> {remote}")
}

/// The key of the TCP connection between `local` (this host) and `peer`.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as dual-stack sockets
/// report IPv4 peers) become IPv4 keys: on the wire those are IPv4 packets.
/// If only one side is IPv4 (not a real TCP connection), both are keyed as
/// IPv6.
pub fn flow_key(local: SocketAddr, peer: SocketAddr) -> FlowKey {
    let (local_ip, peer_ip) = (local.ip().to_canonical(), peer.ip().to_canonical());
    let (family, local_addr, remote_addr) = match (local_ip, peer_ip) {
        (IpAddr::V4(l), IpAddr::V4(p)) => (FAMILY_IPV4, v4_bytes(l), v4_bytes(p)),
        _ => (
            FAMILY_IPV6,
            v6_of(local.ip()).octets(),
            v6_of(peer.ip()).octets(),
        ),
    };
    FlowKey {
        local_addr,
        remote_addr,
        local_port: local.port(),
        remote_port: peer.port(),
        family,
        pad: [0; 3],
    }
}

fn v4_bytes(addr: Ipv4Addr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&addr.octets());
    bytes
}

fn v6_of(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The address in a [`FlowKey`] / [`InbandEvent`] address field:
/// [`FAMILY_IPV4`] reads the first 4 bytes, anything else all 16 as IPv6.
pub fn addr_from_bytes(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Every interface of the calling thread's network namespace that is up,
/// is not a loopback, and uses Ethernet framing (veth, physical NICs,
/// bridges, VLAN devices...): the default set for `netray serve`.
///
/// Layer-3 devices (WireGuard, tun, ...) are left out: the capture programs
/// parse Ethernet headers. Uses netlink (`if_nameindex`) and ioctls, which
/// follow the thread's namespace (unlike `/sys/class/net`, which shows the
/// namespace sysfs was mounted in).
pub fn up_interfaces() -> io::Result<Vec<String>> {
    let socket = control_socket()?;
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns a NULL-terminated array or NULL.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut entry = list;
    loop {
        // SAFETY: `entry` walks the array up to its terminating entry.
        let (index, name) = unsafe { ((*entry).if_index, (*entry).if_name) };
        if index == 0 || name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let flags = interface_flags(&socket, &name);
        let link_type = link_type(&socket, &name);
        if let (Ok(flags), Ok(link_type)) = (flags, link_type) {
            let up = flags & libc::IFF_UP != 0;
            let loopback = flags & libc::IFF_LOOPBACK != 0;
            if up && !loopback && link_type == ARPHRD_ETHER {
                names.push(name);
            }
        }
        // SAFETY: still inside the array (the terminator was not reached).
        entry = unsafe { entry.add(1) };
    }
    // SAFETY: `list` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}

/// Fails unless `iface` exists and uses Ethernet framing.
fn check_ethernet(iface: &str) -> anyhow::Result<()> {
    let socket = control_socket().context("opening a socket for interface ioctls")?;
    let link_type = link_type(&socket, iface)
        .with_context(|| format!("interface {iface} (does it exist in this network namespace?)"))?;
    ensure!(
        link_type == ARPHRD_ETHER,
        "interface {iface} is not an Ethernet device (link type {link_type}); \
         the in-band capture parses Ethernet framing only"
    );
    Ok(())
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(iface: &str) -> io::Result<libc::ifreq> {
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} is longer than IFNAMSIZ"),
        ));
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn interface_flags(socket: &OwnedFd, iface: &str) -> io::Result<libc::c_int> {
    let mut req = ifreq_for(iface)?;
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// The ARPHRD_* link type of `iface` (from its hardware address family).
fn link_type(socket: &OwnedFd, iface: &str) -> io::Result<u16> {
    let mut req = ifreq_for(iface)?;
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_fill_the_first_four_bytes() {
        let key = flow_key(
            "10.0.3.2:443".parse().unwrap(),
            "10.0.0.1:50000".parse().unwrap(),
        );
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(key.local_addr[..4], [10, 0, 3, 2]);
        assert_eq!(key.local_addr[4..], [0; 12]);
        assert_eq!(key.remote_addr[..4], [10, 0, 0, 1]);
        assert_eq!((key.local_port, key.remote_port), (443, 50000));
        assert_eq!(key.pad, [0; 3]);
        assert!(check_key(&key).is_ok());
    }

    #[test]
    fn v4_mapped_addresses_become_ipv4_keys() {
        let mapped = flow_key(
            "[::ffff:10.0.3.2]:443".parse().unwrap(),
            "[::ffff:10.0.0.1]:50000".parse().unwrap(),
        );
        let plain = flow_key(
            "10.0.3.2:443".parse().unwrap(),
            "10.0.0.1:50000".parse().unwrap(),
        );
        assert_eq!(mapped, plain);
    }

    #[test]
    fn ipv6_keys_use_all_sixteen_bytes() {
        let local: SocketAddr = "[fd00:0:0:3::2]:443".parse().unwrap();
        let peer: SocketAddr = "[fd00::1]:50000".parse().unwrap();
        let key = flow_key(local, peer);
        assert_eq!(key.family, FAMILY_IPV6);
        assert_eq!(addr_from_bytes(key.family, key.local_addr), local.ip());
        assert_eq!(addr_from_bytes(key.family, key.remote_addr), peer.ip());
        assert!(check_key(&key).is_ok());
    }

    #[test]
    fn mixed_families_are_keyed_as_ipv6() {
        let key = flow_key(
            "[fd00::2]:443".parse().unwrap(),
            "10.0.0.1:50000".parse().unwrap(),
        );
        assert_eq!(key.family, FAMILY_IPV6);
        assert_eq!(
            addr_from_bytes(key.family, key.remote_addr),
            "::ffff:10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn addr_from_bytes_round_trips() {
        let v4 = v4_bytes(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(
            addr_from_bytes(FAMILY_IPV4, v4),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_from_bytes(FAMILY_IPV6, v6.octets()), IpAddr::V6(v6));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let mut key = flow_key(
            "10.0.3.2:443".parse().unwrap(),
            "10.0.0.1:1".parse().unwrap(),
        );
        key.local_addr[7] = 1;
        assert!(check_key(&key).is_err());
        let mut key = flow_key(
            "10.0.3.2:443".parse().unwrap(),
            "10.0.0.1:1".parse().unwrap(),
        );
        key.family = 5;
        assert!(check_key(&key).is_err());
    }

    #[test]
    fn short_ring_records_are_skipped() {
        assert!(parse_event(&[0u8; 127]).is_none());
        let mut record = vec![0u8; size_of::<InbandEvent>()];
        record[..8].copy_from_slice(&42u64.to_ne_bytes());
        assert_eq!(parse_event(&record).map(|e| e.timestamp_ns), Some(42));
    }
}

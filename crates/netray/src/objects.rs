//! The eBPF objects built from `netray-ebpf` by `build.rs` and embedded in the
//! binary, one per capability.

/// The `netray check` probe programs (one tiny program per hook kind).
pub static CHECK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netray-check"));

/// The in-band traceroute capture: XDP `inband_xdp` (ingress ICMP errors and
/// peer segments) and TC `inband_tc_egress` (our own segments).
pub static INBAND: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netray-inband"));

/// The packet tracer capture: XDP `packets_xdp` (ingress) and TC
/// `packets_tc` (egress), which tail-call the filter loaded from libpcap's
/// program, the capture programs it tail-calls, ring buffer and flow table.
pub static PACKETS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netray-packets"));

/// The connection tracer (`netray conns`): lifecycle, attribution and counter
/// programs plus the getaddrinfo uprobes.
pub static CONNS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netray-conns"));

//! Test fixtures: programs the integration tests load to create conditions
//! this machine cannot otherwise produce. netray itself never loads them.
//!
//! - `testing_vlan_push` (TC egress): gives IPv4 UDP datagrams to port
//!   [`VLAN_PUSH_PORT`] a VLAN tag in the skb's metadata, as a NIC with
//!   transmit VLAN offload would carry it (this kernel has no 8021q module
//!   to make a VLAN device with). The packet tracer's egress program must
//!   then show the tag.
//! - `testing_rejected` (XDP): reads a packet byte it never bounds-checked,
//!   after a stretch of checked reads, so the verifier rejects it with a
//!   log of some length: netray must summarize that rejection.
//! - `testing_xdp_load_bytes` (XDP): calls `bpf_xdp_load_bytes` (Linux
//!   5.18), so on older kernels it cannot load: netray must say which
//!   helper is missing.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    helpers::generated::{bpf_skb_vlan_push, bpf_xdp_load_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Destination port of the datagrams that get a tag.
const VLAN_PUSH_PORT: u16 = 7002;
/// The tag: priority 5, VLAN ID 42.
const VLAN_PUSH_TCI: u16 = (5 << 13) | 42;

#[classifier]
pub fn testing_vlan_push(ctx: TcContext) -> i32 {
    let (Ok(ethertype), Ok(ip)) = (ctx.load::<[u8; 2]>(12), ctx.load::<[u8; 20]>(14)) else {
        return TC_ACT_UNSPEC;
    };
    if u16::from_be_bytes(ethertype) != 0x0800 || ip[9] != 17 {
        return TC_ACT_UNSPEC;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let Ok(ports) = ctx.load::<[u8; 4]>(14 + ihl) else {
        return TC_ACT_UNSPEC;
    };
    if u16::from_be_bytes([ports[2], ports[3]]) == VLAN_PUSH_PORT {
        // SAFETY: the context's skb; the helper validates its arguments.
        unsafe { bpf_skb_vlan_push(ctx.skb.skb.cast(), 0x8100u16.to_be(), VLAN_PUSH_TCI) };
    }
    TC_ACT_UNSPEC
}

/// Rejected by every verifier: the last read is past any checked bound.
#[xdp]
pub fn testing_rejected(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut sum = 0u32;
    for i in 0..16 {
        // `+ 2`: a `+ 1` check compiles to `p >= end`, from which the
        // verifier learns no range (see netray-ebpf's lib.rs).
        if data + i + 2 <= end {
            // SAFETY: inside the frame (checked just above).
            sum = sum.wrapping_add(u32::from(unsafe {
                core::ptr::read_volatile((data + i) as *const u8)
            }));
        }
    }
    // SAFETY: none; this unchecked read is what the verifier must refuse.
    let unchecked = unsafe { core::ptr::read_volatile((data + 64) as *const u8) };
    let mut keep = sum.wrapping_add(u32::from(unchecked));
    // SAFETY: a local; volatile keeps the reads from being optimized out.
    unsafe { core::ptr::write_volatile(&raw mut keep, keep) };
    XDP_PASS
}

/// Loads on 5.18 and later; older kernels lack the helper.
#[xdp]
pub fn testing_xdp_load_bytes(ctx: XdpContext) -> u32 {
    let mut byte = [0u8; 1];
    // SAFETY: the context's xdp_md and a 1-byte local buffer; the helper
    // checks the offset against the frame.
    unsafe { bpf_xdp_load_bytes(ctx.ctx.cast(), 0, byte.as_mut_ptr().cast(), 1) };
    // SAFETY: a local.
    unsafe { core::ptr::write_volatile(&raw mut byte[0], byte[0]) };
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! Test fixtures: programs the integration tests load to create conditions
//! this machine cannot otherwise produce. netray itself never loads them.
//!
//! - `testing_vlan_push` (TC egress): gives IPv4 UDP datagrams to port
//!   [`VLAN_PUSH_PORT`] a VLAN tag in the skb's metadata, as a NIC with
//!   transmit VLAN offload would carry it (this kernel has no 8021q module
//!   to make a VLAN device with). The packet tracer's egress program must
//!   then show the tag.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC, helpers::generated::bpf_skb_vlan_push, macros::classifier,
    programs::TcContext,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

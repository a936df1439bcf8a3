//! Probe programs for `netray check`: one tiny program per hook kind. Each one
//! only records that it ran, and lets every packet and call through unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{
        btf_tracepoint, cgroup_skb, classifier, fentry, kprobe, map, raw_tracepoint, sock_ops,
        socket_filter, tracepoint, uprobe, xdp,
    },
    maps::{Array, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, SkBuffContext,
        SockOpsContext, TcContext, TracePointContext, XdpContext,
    },
};
use netray_common::check::{CheckEvent, HookKind};

/// How many times each hook kind ran, indexed by [`HookKind`].
#[map]
static CHECK_HITS: Array<u64> = Array::with_max_entries(HookKind::COUNT, 0);

/// Carries [`CheckEvent`]s from the socket filter to userspace.
#[map]
static CHECK_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

#[inline(always)]
fn hit(kind: HookKind) {
    if let Some(slot) = CHECK_HITS.get_ptr_mut(kind as u32) {
        // SAFETY: the pointer comes from the map and is valid for the program's run.
        // A lost increment under concurrency is harmless: userspace only asks "> 0".
        unsafe { *slot += 1 };
    }
}

#[xdp]
pub fn check_xdp(_ctx: XdpContext) -> u32 {
    hit(HookKind::Xdp);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn check_tc(_ctx: TcContext) -> i32 {
    hit(HookKind::Tc);
    // UNSPEC: let the packet continue to any other classifier, untouched.
    TC_ACT_UNSPEC
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn check_tracepoint(_ctx: TracePointContext) -> u32 {
    hit(HookKind::TracePoint);
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn check_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    hit(HookKind::RawTracePoint);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn check_btf_tracepoint(_ctx: BtfTracePointContext) -> i32 {
    hit(HookKind::BtfTracePoint);
    0
}

#[kprobe]
pub fn check_kprobe(_ctx: ProbeContext) -> u32 {
    hit(HookKind::KProbe);
    0
}

#[fentry(function = "tcp_connect")]
pub fn check_fentry(_ctx: FEntryContext) -> u32 {
    hit(HookKind::FEntry);
    0
}

#[uprobe]
pub fn check_uprobe(_ctx: ProbeContext) -> u32 {
    hit(HookKind::UProbe);
    0
}

#[sock_ops]
pub fn check_sock_ops(_ctx: SockOpsContext) -> u32 {
    hit(HookKind::SockOps);
    1
}

#[cgroup_skb]
pub fn check_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    hit(HookKind::CgroupSkb);
    1 // allow
}

#[socket_filter]
pub fn check_ringbuf(_ctx: SkBuffContext) -> i64 {
    let event = CheckEvent {
        magic: CheckEvent::MAGIC,
        hook: HookKind::RingBuf as u32,
    };
    if CHECK_EVENTS.output::<CheckEvent>(&event, 0).is_ok() {
        hit(HookKind::RingBuf);
    }
    // Keep the whole datagram: this filter sits on netray's own probe socket.
    i64::from(u32::MAX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

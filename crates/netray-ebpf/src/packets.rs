//! Packet tracer capture (`netray packets`).
//!
//! - `packets_xdp` (ingress) and `packets_tc` (TC egress, tcx) are the
//!   attached programs: they count the packet and tail-call the filter,
//!   libpcap's classic BPF program that userspace translated to eBPF and
//!   loaded into a one-slot program array (`netray::packets::ebpf_filter`).
//! - The filter tail-calls the capture program of its hook
//!   (`packets_xdp_capture`, `packets_tc_capture`) when it accepts the
//!   packet, which copies up to the snaplen bytes of it to the ring buffer,
//!   or, in flow mode, parses its 5-tuple and adds it to a per-CPU flow
//!   table.
//! - All only observe: XDP_PASS and TC_ACT_UNSPEC always, malformed
//!   packets included.
//! - `packets_xdp_capture_linear` is `packets_xdp_capture` for kernels
//!   without `bpf_xdp_load_bytes` (before 5.18): it copies the frame with
//!   direct packet access. Userspace loads it when the other does not load.
//!
//! Older verifiers (before ~6.8) lose a size argument's bounds across the
//! range check LLVM emits (`len - 1 < MAX` on a copy of `len`): every
//! variable size passed to a helper goes through [`size_arg`].
//!
//! The layouts shared with userspace are in `netray_common::packets`.
#![no_std]
#![no_main]
// `asm!` on the BPF target, for `opaque` (the eBPF crate builds on nightly).
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use netray_ebpf::{Packet, TcPacket, XdpPacket, zero_words};

use netray_common::packets::{
    CaptureConfig as Config, DIRECTION_EGRESS, DIRECTION_INGRESS, FILTER_SCRATCH, FlowKey,
    FlowValue, MAX_SNAPLEN, RecordHeader, field,
    stat::{
        COUNT as STAT_COUNT, DELIVERED as STAT_DELIVERED, LOST as STAT_LOST,
        MATCHED as STAT_MATCHED, SEEN as STAT_SEEN, UNFILTERED as STAT_UNFILTERED,
    },
};

// Summary word indexes, as array indexes.
const FIELDS: usize = field::COUNT;
const F_ETHER: usize = field::ETHER as usize;
const F_VLAN_COUNT: usize = field::VLAN_COUNT as usize;
const F_VLAN_ID0: usize = field::VLAN_ID0 as usize;
const F_VLAN_ID1: usize = field::VLAN_ID1 as usize;
const F_PROTO: usize = field::PROTO as usize;
const F_PORTS: usize = field::PORTS as usize;
const F_SPORT: usize = field::SPORT as usize;
const F_DPORT: usize = field::DPORT as usize;
const F_SRC: usize = field::SRC as usize;
const F_DST: usize = field::DST as usize;

/// Per-CPU working memory: the parsed 5-tuple (flow mode), the flow key,
/// and the record being built (too large for the 512-byte stack).
#[repr(C)]
struct Scratch {
    /// A word whose value the verifier does not track (see `copy_linear`).
    pc: u64,
    fields: [u32; FIELDS],
    key: FlowKey,
    header: RecordHeader,
    data: [u8; MAX_SNAPLEN],
}

/// Slot 0: the XDP filter (loaded by userspace from libpcap's program).
#[map]
static PACKETS_XDP_FILTER: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: the TC filter.
#[map]
static PACKETS_TC_FILTER: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: the XDP capture program, which the XDP filter tail-calls.
#[map]
static PACKETS_XDP_CAPTURE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: the TC capture program, which the TC filter tail-calls.
#[map]
static PACKETS_TC_CAPTURE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The filters' scratch value (see `netray::packets::ebpf_filter`).
#[map]
static PACKETS_FILTER_SCRATCH: PerCpuArray<[u8; FILTER_SCRATCH]> =
    PerCpuArray::with_max_entries(1, 0);

#[map]
static PACKETS_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-packet records (variable length: header + captured bytes).
#[map]
static PACKETS_EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Slot 0: XDP, slot 1: TC.
#[map]
static PACKETS_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);

/// seen, matched, delivered, lost.
#[map]
static PACKETS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Flow mode: packets and bytes per 5-tuple, per CPU. Not preallocated:
/// a preallocated per-CPU table costs entries x CPUs x value size up front
/// (hundreds of MiB on large machines), even when flow mode is off.
#[map]
static PACKETS_FLOWS: PerCpuHashMap<FlowKey, FlowValue> =
    PerCpuHashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[inline(always)]
fn count(stat: u32) {
    if let Some(slot) = PACKETS_STATS.get_ptr_mut(stat) {
        // SAFETY: this CPU's slot; programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(b))
}

/// `value`, which LLVM can no longer relate to anything it computed before
/// (no instruction is emitted).
#[inline(always)]
fn opaque(mut value: u64) -> u64 {
    // SAFETY: an empty asm block: the register is left as it is.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack)) };
    value
}

/// `len` in a register the verifier knows to be within `1..=max`, for a
/// helper's size argument; `None` when it is not.
///
/// LLVM turns `len != 0 && len <= max` into `len - 1 < max` computed in
/// another register, or into a check of whatever `len` was computed from,
/// and then passes `len`, whose bounds verifiers before 6.12 do not learn
/// from that check ("R4 min value is negative", "invalid access to map
/// value ... size=0"). Here `len - 1` is opaque to LLVM, so the check is
/// on it, and the argument is computed from the checked register.
#[inline(always)]
fn size_arg(len: usize, max: usize) -> Option<u32> {
    let below = opaque((len as u64).wrapping_sub(1));
    if below >= max as u64 {
        return None;
    }
    Some((opaque(below) + 1) as u32)
}

/// Fills `f` with the packet's 5-tuple, for its flow key (flow mode).
#[inline(always)]
fn summarize<P: Packet>(pkt: &P, offload: Option<OffloadTag>, f: &mut [u32; FIELDS]) {
    // SAFETY: 64 bytes at the start of an 8-aligned map value.
    unsafe { zero_words(f.as_mut_ptr().cast::<u64>(), FIELDS / 2) };
    let Some(eth) = pkt.bytes::<14>(0) else {
        return;
    };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = 14usize;
    let mut vlans = 0u32;
    // A tag the skb holds in its metadata is the outer one: it goes on the
    // wire before any tag in the bytes.
    if let Some(tag) = offload {
        f[F_VLAN_ID0] = u32::from(tag.tci) & 0xfff;
        vlans = 1;
    }
    for _ in 0..2 {
        if vlans >= 2 {
            break;
        }
        if ethertype != 0x8100 && ethertype != 0x88a8 && ethertype != 0x9100 {
            break;
        }
        let Some(tag) = pkt.bytes::<4>(off) else {
            break;
        };
        let id = be16([tag[0], tag[1]]) & 0xfff;
        if vlans == 0 {
            f[F_VLAN_ID0] = id;
        } else {
            f[F_VLAN_ID1] = id;
        }
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
        vlans += 1;
    }
    f[F_ETHER] = (vlans << 16) | ethertype;
    f[F_VLAN_COUNT] = vlans;
    match ethertype {
        0x0800 => {
            let Some(h) = pkt.bytes::<20>(off) else {
                return;
            };
            let proto = h[9];
            f[F_PROTO] = u32::from(proto);
            f[F_SRC] = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            f[F_DST] = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
            if (proto == 6 || proto == 17 || proto == 132) && first {
                ports(pkt, off + ihl, f);
            }
        }
        0x86dd => {
            let Some(h) = pkt.bytes::<40>(off) else {
                return;
            };
            let next = h[6];
            let mut proto = next;
            if next == 44 {
                // Two bytes: 1-byte XDP bounds checks teach the verifier
                // nothing (see netray_ebpf::read_tcp_options).
                if let Some(frag) = pkt.bytes::<2>(off + 40) {
                    proto = frag[0];
                }
            }
            f[F_PROTO] = u32::from(proto);
            for w in 0..4 {
                let s = 8 + 4 * w;
                let d = 24 + 4 * w;
                f[F_SRC + w] = u32::from_be_bytes([h[s], h[s + 1], h[s + 2], h[s + 3]]);
                f[F_DST + w] = u32::from_be_bytes([h[d], h[d + 1], h[d + 2], h[d + 3]]);
            }
            if next == 6 || next == 17 || next == 132 {
                ports(pkt, off + 40, f);
            }
        }
        0x0806 | 0x8035 => {
            // One read of both addresses (sender at 14, target at 24): with
            // two, LLVM merges the helpers' results into one test, after
            // which verifiers before 6.12 see a path where the first
            // address was never loaded ("R1 !read_ok").
            if let Some(arp) = pkt.bytes::<28>(off) {
                f[F_SRC] = u32::from_be_bytes([arp[14], arp[15], arp[16], arp[17]]);
                f[F_DST] = u32::from_be_bytes([arp[24], arp[25], arp[26], arp[27]]);
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn ports<P: Packet>(pkt: &P, off: usize, f: &mut [u32; FIELDS]) {
    if let Some(p) = pkt.bytes::<4>(off) {
        f[F_PORTS] = 1;
        f[F_SPORT] = be16([p[0], p[1]]);
        f[F_DPORT] = be16([p[2], p[3]]);
    }
}

/// Adds the packet to its flow (flow mode).
#[inline(always)]
fn account_flow(scratch: &mut Scratch, wire_len: u32) {
    let f = &scratch.fields;
    let ethertype = (f[F_ETHER] & 0xffff) as u16;
    let key = &mut scratch.key;
    key.family = match ethertype {
        0x0800 => 4,
        0x86dd => 6,
        _ => 0,
    };
    for w in 0..4 {
        let s = f[F_SRC + w].to_be_bytes();
        let d = f[F_DST + w].to_be_bytes();
        for k in 0..4 {
            key.src[4 * w + k] = s[k];
            key.dst[4 * w + k] = d[k];
        }
    }
    key.sport = f[F_SPORT] as u16;
    key.dport = f[F_DPORT] as u16;
    key.ethertype = ethertype;
    key.proto = f[F_PROTO] as u8;
    let key = &scratch.key;
    if let Some(value) = PACKETS_FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the element.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += u64::from(wire_len);
        }
        count(STAT_DELIVERED);
        return;
    }
    let value = FlowValue {
        packets: 1,
        bytes: u64::from(wire_len),
    };
    if PACKETS_FLOWS
        .insert(key, value, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        count(STAT_DELIVERED);
    } else {
        // Table full (or a racing insert of the same key on this CPU,
        // which cannot happen): counted, never silent.
        count(STAT_LOST);
    }
}

/// Everything but the copy of the bytes, common to both capture programs
/// (the packet matched the filter). Returns the
/// scratch slot and the length to copy when a record is to be sent.
#[inline(always)]
fn handle<P: Packet>(
    pkt: &P,
    offload: Option<OffloadTag>,
    slot: u32,
    ifindex: u32,
    direction: u32,
) -> Option<(*mut Scratch, usize)> {
    count(STAT_MATCHED);
    let scratch = PACKETS_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot, used by one program only; programs of one
    // hook do not nest on a CPU.
    let s = unsafe { &mut *scratch };
    let config = PACKETS_CONFIG.get(0)?;
    // On the wire, an offloaded tag is 4 more bytes.
    let wire_len = pkt.total_len() as u32 + if offload.is_some() { 4 } else { 0 };
    if config.flows != 0 {
        summarize(pkt, offload, &mut s.fields);
        account_flow(s, wire_len);
        return None;
    }
    let mut cap = wire_len as usize;
    if cap > config.snaplen as usize {
        cap = config.snaplen as usize;
    }
    if cap > MAX_SNAPLEN {
        cap = MAX_SNAPLEN;
    }
    // SAFETY: a helper without arguments.
    s.header.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    s.header.ifindex = ifindex;
    s.header.wire_len = wire_len;
    s.header.cap_len = cap as u32;
    s.header.direction = direction;
    Some((scratch, cap))
}

/// Sends the header and the first `cap` bytes of `data` as one record.
#[inline(always)]
fn send(scratch: *mut Scratch, cap: usize) {
    let Some(len) = size_arg(
        size_of::<RecordHeader>() + cap,
        size_of::<RecordHeader>() + MAX_SNAPLEN,
    ) else {
        count(STAT_LOST);
        return;
    };
    // SAFETY: header and data are contiguous in the map value (repr(C), the
    // header's size is a multiple of 8) and `len` stays inside them.
    let record = unsafe {
        core::slice::from_raw_parts((&raw const (*scratch).header).cast::<u8>(), len as usize)
    };
    let sent = PACKETS_EVENTS.output::<[u8]>(record, 0).is_ok();
    count(if sent { STAT_DELIVERED } else { STAT_LOST });
}

/// The attached XDP program: counts the packet and hands it to the filter.
#[xdp]
pub fn packets_xdp(ctx: XdpContext) -> u32 {
    count(STAT_SEEN);
    // SAFETY: a tail call with this program's own context.
    unsafe { PACKETS_XDP_FILTER.tail_call(&ctx, 0) };
    // Only with no filter in the slot, which userspace fills before it
    // attaches: counted all the same.
    count(STAT_UNFILTERED);
    xdp_action::XDP_PASS
}

/// The XDP capture program (the filter accepted the packet).
#[xdp]
pub fn packets_xdp_capture(ctx: XdpContext) -> u32 {
    capture_xdp(&ctx, |scratch, cap| {
        let Some(len) = size_arg(cap, MAX_SNAPLEN) else {
            return false;
        };
        // SAFETY: `data` has room for MAX_SNAPLEN bytes >= len.
        unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, (&raw mut (*scratch).data).cast(), len) == 0 }
    })
}

/// `packets_xdp_capture` for kernels without `bpf_xdp_load_bytes` (before
/// 5.18). XDP frames are linear unless the program declares it handles
/// fragments (these do not), so direct packet access reaches every byte.
#[xdp]
pub fn packets_xdp_capture_linear(ctx: XdpContext) -> u32 {
    // SAFETY: `scratch` is this CPU's slot (see `handle`).
    capture_xdp(&ctx, |scratch, cap| unsafe {
        copy_linear(&ctx, scratch, cap)
    })
}

/// The XDP program, with `copy` copying the first `cap` (> 0) bytes of the
/// frame into the scratch slot's `data`.
#[inline(always)]
fn capture_xdp(ctx: &XdpContext, copy: impl FnOnce(*mut Scratch, usize) -> bool) -> u32 {
    let pkt = XdpPacket::new(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    if let Some((scratch, cap)) = handle(&pkt, None, 0, ifindex, DIRECTION_INGRESS) {
        if cap == 0 || copy(scratch, cap) {
            send(scratch, cap);
        } else {
            count(STAT_LOST);
        }
    }
    // Observe only: the stack always gets the packet.
    xdp_action::XDP_PASS
}

/// Copies the 8 bytes at `src` to `dst` with one 8-byte load and store,
/// whatever their alignment: LLVM splits an unaligned access into 8 byte
/// accesses (16 instructions), and the verifier allows unaligned packet and
/// map value access where the CPU handles it (`!strict_alignment`).
///
/// # Safety
/// Both must be valid for 8 bytes.
#[inline(always)]
unsafe fn copy_word(dst: *mut u8, src: usize) {
    // SAFETY: per the caller's contract.
    unsafe {
        core::arch::asm!(
            "{t} = *(u64 *)({s} + 0)",
            "*(u64 *)({d} + 0) = {t}",
            s = in(reg) src,
            d = in(reg) dst,
            t = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies the 64 bytes at `src` to `dst`, 8 at a time (see [`copy_word`]),
/// in 16 instructions.
///
/// # Safety
/// Both must be valid for 64 bytes.
#[inline(always)]
unsafe fn copy_block(dst: *mut u8, src: usize) {
    // SAFETY: per the caller's contract.
    unsafe {
        core::arch::asm!(
            "{t} = *(u64 *)({s} + 0)",
            "*(u64 *)({d} + 0) = {t}",
            "{t} = *(u64 *)({s} + 8)",
            "*(u64 *)({d} + 8) = {t}",
            "{t} = *(u64 *)({s} + 16)",
            "*(u64 *)({d} + 16) = {t}",
            "{t} = *(u64 *)({s} + 24)",
            "*(u64 *)({d} + 24) = {t}",
            "{t} = *(u64 *)({s} + 32)",
            "*(u64 *)({d} + 32) = {t}",
            "{t} = *(u64 *)({s} + 40)",
            "*(u64 *)({d} + 40) = {t}",
            "{t} = *(u64 *)({s} + 48)",
            "*(u64 *)({d} + 48) = {t}",
            "{t} = *(u64 *)({s} + 56)",
            "*(u64 *)({d} + 56) = {t}",
            s = in(reg) src,
            d = in(reg) dst,
            t = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies the first `cap` bytes of the XDP frame to `data` with direct
/// packet access: 64-byte blocks, then up to eight 8-byte words, the last
/// one ending at the frame's end when the frame ends inside it (bytes
/// between `cap` and the word's end are copied too, and not sent). Frames
/// shorter than a word fail (none exist: Ethernet frames have 14 bytes
/// at least, and drivers and the stack hand XDP nothing shorter).
///
/// # Safety
/// `scratch` must be this CPU's scratch slot.
#[inline(always)]
unsafe fn copy_linear(ctx: &XdpContext, scratch: *mut Scratch, cap: usize) -> bool {
    const BLOCK: usize = 64;
    let data = ctx.data();
    let end = ctx.data_end();
    let frame = end - data;
    if frame < 8 || frame > u16::MAX as usize || cap > frame || cap > MAX_SNAPLEN {
        return false;
    }
    // SAFETY: the caller's slot.
    let dst = unsafe { (&raw mut (*scratch).data).cast::<u8>() };
    // The verifier walks this loop once per iteration (the offset is a
    // known constant in each), ~25 instructions each.
    let mut off = 0usize;
    for _ in 0..MAX_SNAPLEN / BLOCK {
        if off + BLOCK > cap {
            break;
        }
        // LLVM knows off + BLOCK <= cap <= frame and would drop the check
        // the verifier needs: hide where `src` comes from.
        let src = opaque((data + off) as u64) as usize;
        if src + BLOCK > end {
            return false;
        }
        // SAFETY: [off, off + BLOCK) is inside the frame (checked) and
        // inside `data` (off + BLOCK <= cap <= MAX_SNAPLEN).
        unsafe { copy_block(dst.add(off), src) };
        off += BLOCK;
    }
    // The loop leaves at a different constant offset on every iteration:
    // through map memory the tail sees one unknown (bounds-checked) offset,
    // so it is verified once, not once per exit.
    // SAFETY: the caller's slot; `pc` is free once the filter has run.
    let off = unsafe {
        let slot = &raw mut (*scratch).pc;
        core::ptr::write_volatile(slot, off as u64);
        core::ptr::read_volatile(slot) as usize
    };
    if off > MAX_SNAPLEN {
        return false;
    }
    let mut off = off;
    for _ in 0..BLOCK / 8 {
        if off >= cap {
            return true;
        }
        // The word at `off`, or the last one of the frame if the frame
        // ends first (then it covers [off, frame) as frame - 8 < off).
        let at = if off + 8 <= frame { off } else { frame - 8 };
        if at > MAX_SNAPLEN - 8 {
            return false;
        }
        let src = opaque((data + at) as u64) as usize;
        if src + 8 > end {
            return false;
        }
        // SAFETY: [at, at + 8) is inside the frame (checked) and inside
        // `data` (at <= MAX_SNAPLEN - 8).
        unsafe { copy_word(dst.add(at), src) };
        off += 8;
    }
    off >= cap
}

/// A VLAN tag the skb holds in its metadata (transmit offload) rather than
/// in its bytes.
#[derive(Clone, Copy)]
struct OffloadTag {
    /// TPID (0x8100, 0x88a8), host order.
    tpid: u16,
    /// Priority, DEI and VLAN ID, host order.
    tci: u16,
}

/// The attached TC egress program: counts the packet and hands it to the
/// filter.
#[classifier]
pub fn packets_tc(ctx: TcContext) -> i32 {
    count(STAT_SEEN);
    // SAFETY: a tail call with this program's own context.
    unsafe { PACKETS_TC_FILTER.tail_call(&ctx, 0) };
    count(STAT_UNFILTERED);
    TC_ACT_UNSPEC
}

/// The TC capture program (the filter accepted the packet).
#[classifier]
pub fn packets_tc_capture(ctx: TcContext) -> i32 {
    let pkt = TcPacket::new(&ctx);
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the context the kernel passed in.
    let (ifindex, offload) = unsafe {
        let offload = ((*skb).vlan_present != 0).then(|| OffloadTag {
            // __sk_buff.vlan_proto is in network order, vlan_tci in host order.
            tpid: u16::from_be((*skb).vlan_proto as u16),
            tci: (*skb).vlan_tci as u16,
        });
        ((*skb).ifindex, offload)
    };
    if let Some((scratch, cap)) = handle(&pkt, offload, 1, ifindex, DIRECTION_EGRESS) {
        let copied = match offload {
            None => cap == 0 || load_skb(&ctx, 0, scratch, 0, cap),
            // SAFETY: `scratch` is this CPU's slot (see `handle`).
            Some(tag) => unsafe { copy_with_tag(&ctx, scratch, cap, tag) },
        };
        if copied {
            send(scratch, cap);
        } else {
            count(STAT_LOST);
        }
    }
    // UNSPEC: with tcx, "continue with the next program"; never drop/alter.
    TC_ACT_UNSPEC
}

/// Copies `len` bytes of the skb from `offset` to `data[at..]` (`at` is
/// 0 or 16).
#[inline(always)]
fn load_skb(ctx: &TcContext, offset: u32, scratch: *mut Scratch, at: usize, len: usize) -> bool {
    if at > 16 {
        return false;
    }
    let Some(len) = size_arg(len, MAX_SNAPLEN - at) else {
        return false;
    };
    // SAFETY: `data` has room for MAX_SNAPLEN bytes >= at + len.
    unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset,
            (&raw mut (*scratch).data).cast::<u8>().add(at).cast(),
            len,
        ) == 0
    }
}

/// Copies the first `cap` bytes of the frame as it goes on the wire: the
/// MAC addresses, the offloaded tag, then the rest of the skb (what
/// libpcap shows for such packets too).
///
/// # Safety
/// `scratch` must be this CPU's scratch slot.
#[inline(always)]
unsafe fn copy_with_tag(
    ctx: &TcContext,
    scratch: *mut Scratch,
    cap: usize,
    tag: OffloadTag,
) -> bool {
    // The first 16 bytes (MACs + tag), built apart so that a snaplen below
    // 16 still gets a prefix of the tagged frame.
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return false;
    };
    let mut head = [0u8; 16];
    head[..12].copy_from_slice(&macs);
    head[12..14].copy_from_slice(&tag.tpid.to_be_bytes());
    head[14..16].copy_from_slice(&tag.tci.to_be_bytes());
    // All 16 even when `cap` is smaller: only `cap` bytes are sent.
    // SAFETY: the caller's slot; `data` is MAX_SNAPLEN >= 16 bytes long.
    unsafe { (&raw mut (*scratch).data).cast::<[u8; 16]>().write(head) };
    cap <= 16 || load_skb(ctx, 12, scratch, 16, cap - 16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

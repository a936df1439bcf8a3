//! netray's eBPF programs. The programs live in the binary targets (one object
//! per capability); this library holds helpers they share: a small packet
//! parser (Ethernet, VLAN, IPv4, IPv6 with extension headers, TCP) that works
//! the same over XDP's direct packet access and TC's `bpf_skb_load_bytes`.
//!
//! Every function here returns `Err`/`None` instead of panicking: a panic path
//! in eBPF is an infinite loop the verifier rejects.
#![no_std]

use core::mem::MaybeUninit;

use aya_ebpf::programs::{TcContext, XdpContext};
use netray_common::inband::{FlowKey, MAX_TCP_OPTIONS};

/// Zero-fills `words` 8-byte words at `dst` without `memset`.
///
/// bpf-linker has LLVM expand memcpy itself (`--bpf-expand-memcpy-in-order`),
/// which also sets LLVM's inline-memset budget to zero: every memset the
/// optimizer cannot shrink to one 1/2/4/8-byte store (an IPv4 address's 12
/// zero bytes, a 3-byte pad, a 40-byte array) becomes a call to a byte-loop
/// `memset` subprogram that the verifier walks again on every path, which
/// blew its 1M-instruction budget. Volatile word stores are never merged
/// into a memset, and cost one instruction each.
///
/// # Safety
/// `dst` must be 8-byte aligned and valid for `words * 8` bytes of writes.
#[inline(always)]
pub unsafe fn zero_words(dst: *mut u64, words: usize) {
    for i in 0..words {
        // SAFETY: in bounds and aligned per the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), 0) };
    }
}

/// A [`FlowKey`] placed on an 8-byte boundary, so that it can be written
/// with aligned word stores (the verifier rejects misaligned stack access).
#[repr(C, align(8))]
pub struct AlignedKey(pub FlowKey);

/// Largest offset at which a header may start. XDP's direct packet access
/// needs variable offsets with a known upper bound; real headers end far
/// below this (Ethernet + 2 VLAN tags + IPv6 + 4 extension headers of at
/// most 2 KiB each + ICMP + quoted headers stays under 16 KiB).
pub const MAX_HEADER_OFFSET: usize = 0x3fff;

/// Byte access to a packet, from whatever hook it is seen in.
pub trait Packet {
    /// The `N` bytes at `offset`, or `None` when they are not all inside the
    /// packet. Use `N >= 2` with [`XdpPacket`]: see [`read_tcp_options`] for why.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The packet's length in bytes (all of it, as the stack counts it).
    fn total_len(&self) -> usize;
}

/// An XDP frame, read with direct packet access (first buffer only).
pub struct XdpPacket {
    data: usize,
    data_end: usize,
}

impl XdpPacket {
    /// Wraps the frame of `ctx`.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
        }
    }
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Bounding the offset keeps the verifier's range tracking of the
        // packet pointer finite; the comparison with data_end is what makes
        // the access itself legal.
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.data + offset;
        if start + N > self.data_end {
            return None;
        }
        // SAFETY: [start, start + N) lies inside the frame (checked above);
        // byte arrays have no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }

    #[inline(always)]
    fn total_len(&self) -> usize {
        self.data_end - self.data
    }
}

/// A socket buffer seen by a TC program, read with `bpf_skb_load_bytes`:
/// works on non-linear skbs (paged data, GSO super-packets) without
/// `bpf_skb_pull_data`, and never changes the packet.
pub struct TcPacket<'a> {
    ctx: &'a TcContext,
}

impl<'a> TcPacket<'a> {
    /// Wraps the skb of `ctx`.
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        Self { ctx }
    }
}

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        // bpf_skb_load_bytes: fails (rather than reading garbage) past the end.
        self.ctx.load::<[u8; N]>(offset).ok()
    }

    #[inline(always)]
    fn total_len(&self) -> usize {
        self.ctx.len() as usize
    }
}

/// Why a packet was not parsed to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Well-formed but of no interest (ARP, UDP, a later fragment...).
    Ignore,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IPv6 next-header number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// How many IPv6 extension headers are skipped before giving up.
const MAX_EXT_HEADERS: usize = 4;

/// Skips the Ethernet header and up to two VLAN tags (802.1Q, 802.1ad).
/// Returns the EtherType of the payload and its offset.
#[inline(always)]
pub fn parse_ethernet<P: Packet>(pkt: &P) -> Result<(u16, usize), Skip> {
    let eth = pkt.bytes::<14>(0).ok_or(Skip::Malformed)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        // TCI (2 bytes), then the encapsulated EtherType.
        let tag = pkt.bytes::<4>(offset).ok_or(Skip::Malformed)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    Ok((ethertype, offset))
}

/// The parts of an IPv4/IPv6 header netray uses.
#[derive(Clone, Copy)]
pub struct IpHeader {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Offset of the source address; the destination follows it.
    ///
    /// Addresses are not copied out while parsing: copied into locals,
    /// LLVM splits them into 32 one-byte values that it spills to 32 stack
    /// slots of 8 bytes, half the 512-byte BPF stack. They are copied
    /// straight into the key or event that needs them instead.
    pub addr_offset: usize,
    /// The upper-layer protocol after any IPv6 extension headers.
    pub proto: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv6 flow label (20 bits, host order); 0 for IPv4.
    pub flow_label: u32,
    /// Offset of the upper-layer header.
    pub l4_offset: usize,
    /// Upper-layer length the IP header declares (0: not declared, as in
    /// GSO super-packets with IPv4 `tot_len` 0 or IPv6 jumbograms).
    pub l4_declared_len: usize,
}

impl IpHeader {
    /// Address length on the wire.
    #[inline(always)]
    fn addr_len(&self) -> usize {
        if self.family == netray_common::inband::FAMILY_IPV4 {
            4
        } else {
            16
        }
    }

    /// Copies the source (`source`) or destination address into `out` in
    /// the contract's 16-byte layout (IPv4: first 4 bytes, rest zero), with
    /// word stores. Returns false, with `out` zeroed, if the packet is too
    /// short.
    ///
    /// # Safety
    /// `out` must be 8-byte aligned and valid for writes of 16 bytes.
    #[inline(always)]
    pub unsafe fn copy_addr<P: Packet>(&self, pkt: &P, source: bool, out: *mut [u8; 16]) -> bool {
        let offset = if source {
            self.addr_offset
        } else {
            self.addr_offset + self.addr_len()
        };
        let out = out.cast::<u64>();
        // SAFETY: `out` is aligned and valid for 16 bytes per the contract.
        unsafe {
            if self.family == netray_common::inband::FAMILY_IPV4 {
                if let Some(addr) = pkt.bytes::<4>(offset) {
                    // Little or big endian alike, the low-addressed 4 bytes
                    // of the word are the address and the rest are zero.
                    let mut word = [0u8; 8];
                    word[..4].copy_from_slice(&addr);
                    core::ptr::write_volatile(out, u64::from_ne_bytes(word));
                    core::ptr::write_volatile(out.add(1), 0);
                    return true;
                }
            } else if let Some(addr) = pkt.bytes::<16>(offset) {
                let (high, low) = addr.split_at(8);
                let (Ok(high), Ok(low)) = (<[u8; 8]>::try_from(high), <[u8; 8]>::try_from(low))
                else {
                    return false;
                };
                out.write(u64::from_ne_bytes(high));
                out.add(1).write(u64::from_ne_bytes(low));
                return true;
            }
            zero_words(out, 2);
        }
        false
    }

    /// The [`FlowKey`] of this packet's flow, with local = source when
    /// `local_is_source`, else local = destination. Written with word stores
    /// (see [`zero_words`] for why not `memset`).
    #[inline(always)]
    pub fn flow_key<P: Packet>(
        &self,
        pkt: &P,
        local_is_source: bool,
        local_port: u16,
        remote_port: u16,
    ) -> Option<AlignedKey> {
        let mut key = MaybeUninit::<AlignedKey>::uninit();
        let p = key.as_mut_ptr().cast::<FlowKey>();
        // SAFETY: AlignedKey is 8-aligned and every byte of the FlowKey
        // (40 bytes: two addresses, then ports, family and padding as one
        // word) is written before assume_init.
        unsafe {
            if !self.copy_addr(pkt, local_is_source, &raw mut (*p).local_addr)
                || !self.copy_addr(pkt, !local_is_source, &raw mut (*p).remote_addr)
            {
                return None;
            }
            let ports = local_port.to_ne_bytes();
            let remote = remote_port.to_ne_bytes();
            let tail = [
                ports[0],
                ports[1],
                remote[0],
                remote[1],
                self.family,
                0,
                0,
                0,
            ];
            core::ptr::write_volatile(p.cast::<u64>().add(4), u64::from_ne_bytes(tail));
            Some(key.assume_init())
        }
    }

    /// The upper-layer length: the declared one when it fits the packet,
    /// else what the packet holds (GSO super-packets, BIG TCP, truncated
    /// frames). Ethernet padding makes frames longer than declared, which
    /// is why the declared length wins when it fits.
    #[inline(always)]
    pub fn l4_len<P: Packet>(&self, pkt: &P) -> usize {
        let available = pkt.total_len().saturating_sub(self.l4_offset);
        if self.l4_declared_len == 0 || self.l4_declared_len > available {
            available
        } else {
            self.l4_declared_len
        }
    }
}

/// Parses the IP header at `offset` for the given EtherType. `Skip::Ignore`
/// for other EtherTypes and for non-first fragments (they carry no L4 header).
#[inline(always)]
pub fn parse_ip<P: Packet>(pkt: &P, ethertype: u16, offset: usize) -> Result<IpHeader, Skip> {
    match ethertype {
        ETH_P_IP => parse_ipv4(pkt, offset),
        ETH_P_IPV6 => parse_ipv6(pkt, offset),
        _ => Err(Skip::Ignore),
    }
}

/// Parses an IPv4 header (options skipped by IHL).
#[inline(always)]
pub fn parse_ipv4<P: Packet>(pkt: &P, offset: usize) -> Result<IpHeader, Skip> {
    let h = pkt.bytes::<20>(offset).ok_or(Skip::Malformed)?;
    if h[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Skip::Malformed);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Err(Skip::Ignore);
    }
    let tot_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    Ok(IpHeader {
        family: netray_common::inband::FAMILY_IPV4,
        addr_offset: offset + 12,
        proto: h[9],
        ttl: h[8],
        tos: h[1],
        flow_label: 0,
        l4_offset: offset + ihl,
        // tot_len 0 (BIG TCP) or shorter than the header: not usable.
        l4_declared_len: tot_len.saturating_sub(ihl),
    })
}

/// Parses an IPv6 header and skips up to [`MAX_EXT_HEADERS`] extension
/// headers (hop-by-hop, routing, fragment, destination options).
#[inline(always)]
pub fn parse_ipv6<P: Packet>(pkt: &P, offset: usize) -> Result<IpHeader, Skip> {
    let h = pkt.bytes::<8>(offset).ok_or(Skip::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    // The addresses are read later, by whoever needs them; check here that
    // the fixed header is complete.
    pkt.bytes::<2>(offset + 38).ok_or(Skip::Malformed)?;
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next = h[6];
    let mut l4_offset = offset + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            0 | 43 | 60 => {
                let ext = pkt.bytes::<2>(l4_offset).ok_or(Skip::Malformed)?;
                next = ext[0];
                l4_offset += (usize::from(ext[1]) + 1) * 8;
            }
            44 => {
                let frag = pkt.bytes::<8>(l4_offset).ok_or(Skip::Malformed)?;
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    return Err(Skip::Ignore);
                }
                next = frag[0];
                l4_offset += 8;
            }
            _ => break,
        }
    }
    let ext_len = l4_offset - offset - 40;
    Ok(IpHeader {
        family: netray_common::inband::FAMILY_IPV6,
        addr_offset: offset + 8,
        proto: next,
        ttl: h[7],
        tos: (h[0] << 4) | (h[1] >> 4),
        flow_label: (u32::from(h[1] & 0x0f) << 16) | (u32::from(h[2]) << 8) | u32::from(h[3]),
        l4_offset,
        // payload_len 0: jumbogram / BIG TCP. Shorter than the extension
        // headers: inconsistent, fall back to the packet length.
        l4_declared_len: payload_len.saturating_sub(ext_len),
    })
}

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// The fixed part of a TCP header.
#[derive(Clone, Copy)]
pub struct TcpHeader {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Header length in bytes (20..=60).
    pub header_len: usize,
    /// Flags byte.
    pub flags: u8,
    /// Window, unscaled.
    pub window: u16,
}

impl TcpHeader {
    /// Bytes of options (0..=40).
    #[inline(always)]
    pub fn options_len(&self) -> usize {
        self.header_len - 20
    }

    /// Sequence space the segment occupies: payload plus one each for SYN
    /// and FIN.
    #[inline(always)]
    pub fn seq_len(&self, payload_len: usize) -> u32 {
        (payload_len as u32)
            .wrapping_add(u32::from(self.flags & TCP_SYN != 0))
            .wrapping_add(u32::from(self.flags & TCP_FIN != 0))
    }
}

/// Parses the TCP header at `offset`.
#[inline(always)]
pub fn parse_tcp<P: Packet>(pkt: &P, offset: usize) -> Result<TcpHeader, Skip> {
    let h = pkt.bytes::<20>(offset).ok_or(Skip::Malformed)?;
    let header_len = usize::from(h[12] >> 4) * 4;
    if header_len < 20 {
        return Err(Skip::Malformed);
    }
    Ok(TcpHeader {
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        header_len,
        flags: h[13],
        window: u16::from_be_bytes([h[14], h[15]]),
    })
}

/// Size of [`OptionsScratch::bytes`]: the 40 option bytes, five words.
pub const OPTIONS_BUFFER: usize = MAX_TCP_OPTIONS;

const _: () = assert!(OPTIONS_BUFFER.is_multiple_of(8));

/// Per-CPU scratch memory (a map value) for a segment's TCP options: the
/// BPF stack (512 bytes) is too small for them next to the parsed headers.
///
/// The options are not parsed in the kernel: they are copied as they are
/// (into the flow state and the event) and userspace reads the timestamp
/// option out of them. An option walk is a data-dependent loop; the 6.12
/// verifier gave up on it ("sequence of 8193 jumps is too complex").
#[repr(C)]
pub struct OptionsScratch {
    /// The option bytes; past the copied length they are zero (End of
    /// Option List).
    pub bytes: [u8; OPTIONS_BUFFER],
}

/// Copies `words` 8-byte words from `src` to `dst` with volatile word
/// accesses (no `memcpy` call, see [`zero_words`]).
///
/// # Safety
/// Both must be 8-byte aligned, valid for `words * 8` bytes, and not overlap.
#[inline(always)]
pub unsafe fn copy_words(dst: *mut u64, src: *const u64, words: usize) {
    for i in 0..words {
        // SAFETY: in bounds and aligned per the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
}

/// Copies the `len` TCP option bytes at `offset` into `out.bytes` (fewer if
/// the packet ends first) and returns how many were copied. The rest is
/// zeroed, which reads as End of Option List.
///
/// Four bytes at a time: option space is a multiple of 4 (data offset times
/// 4, minus 20), and it avoids 1-byte bounds checks, which LLVM turns from
/// `p + 1 > end` into `p >= end`, a form from which the verifier learns no
/// packet range. A fixed number of rounds with one exit test each: the
/// verifier walks it in a straight line.
#[inline(always)]
pub fn read_tcp_options<P: Packet>(
    pkt: &P,
    offset: usize,
    len: usize,
    out: &mut OptionsScratch,
) -> usize {
    // SAFETY: `bytes` is OPTIONS_BUFFER (a multiple of 8) bytes at offset 0
    // of a map value, which the kernel aligns to 8 bytes.
    unsafe { zero_words(out.bytes.as_mut_ptr().cast::<u64>(), OPTIONS_BUFFER / 8) };
    let mut copied = 0;
    for chunk in 0..MAX_TCP_OPTIONS / 4 {
        let at = chunk * 4;
        if at >= len {
            break;
        }
        let Some(word) = pkt.bytes::<4>(offset + at) else {
            break;
        };
        for (k, byte) in word.into_iter().enumerate() {
            if let Some(slot) = out.bytes.get_mut(at + k) {
                *slot = byte;
            }
        }
        copied = at + 4;
    }
    copied
}

/// `a` comes after `b` in 32-bit sequence space (RFC 1982 style).
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

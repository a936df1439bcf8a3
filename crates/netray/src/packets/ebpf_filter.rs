//! libpcap's classic BPF filter, translated to an eBPF program of its own
//! for each capture hook, and loaded with `BPF_PROG_LOAD`.
//!
//! How the filter reaches the packets: the attached programs of the
//! capture object (`packets_xdp`, `packets_tc`) count the packet and
//! tail-call the filter program through a one-slot program array; the
//! filter tail-calls the capture program (`packets_*_capture`, which copies
//! the packet to the ring buffer or adds it to its flow) when the classic
//! program would accept the packet, and returns "pass" otherwise. Neither
//! a placeholder spliced into the object (pwru, ptcpdump) nor the object's
//! interpreter (netray before issue 12): aya 0.14 can neither patch a
//! function's instructions nor load raw ones, and a tail call costs a
//! few nanoseconds, the interpreter ~100.
//!
//! The translation keeps libpcap's semantics (`bpf_filter` in libpcap's
//! `bpf_filter.c`), instruction by instruction:
//! - A and X are 32-bit (`r7`, `r8`, always zero-extended); M[] is on the
//!   stack, zeroed first.
//! - A load that does not fit in the packet rejects the packet, whatever
//!   comes after (also under `not`). XDP reads the frame with direct packet
//!   access (XDP frames are linear: the programs do not declare fragment
//!   support); TC with direct packet access within the skb's linear head
//!   and `bpf_skb_load_bytes` beyond it (non-linear skbs).
//! - Division or modulo by X = 0 rejects; shifts by 32 or more give 0.
//! - Linux's ancillary loads, which a dead handle emits for `inbound`,
//!   `outbound` and `ifindex N` (tcpdump accepts those for a live capture,
//!   not for a savefile): the packet type is "received" at XDP and
//!   PACKET_OUTGOING at TC egress, the interface index the hook's.
//! - On TC, a VLAN tag the skb holds in its metadata (transmit offload) is
//!   put back between the MAC addresses and the rest, where libpcap on
//!   Linux shows it: offsets from 16 on read the skb 4 bytes earlier, the
//!   first 24 bytes of the tagged frame are assembled in a per-CPU map
//!   value. (A tagged frame shorter than 20 bytes is rejected: it cannot
//!   exist on an Ethernet link.)
//! - A program's length, as for classic BPF, is at most 4096 instructions;
//!   each classic instruction becomes at most ~25 eBPF ones.
//! - Backward jumps (libpcap's `protochain` loop over extension headers):
//!   at most [`MAX_BACKWARD_JUMPS`] per packet, then the packet is
//!   rejected, where libpcap's interpreter would go on (a chain of more
//!   than 32 extension headers).

use std::{
    ffi::c_long,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::filter::Insn;

/// The capture hook a filter program is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP ingress: direct packet access.
    Xdp,
    /// TC egress (`BPF_PROG_TYPE_SCHED_CLS`): `bpf_skb_load_bytes`, VLAN
    /// offload.
    Tc,
}

/// The maps a translated filter uses.
#[derive(Clone, Copy, Debug)]
pub struct FilterMaps<'a> {
    /// One-slot program array holding the capture program it tail-calls on
    /// a match.
    pub capture: BorrowedFd<'a>,
    /// A per-CPU array with one value of at least 32 bytes: TC builds the
    /// first 24 bytes of a frame with an offloaded VLAN tag there, and a
    /// loop passes X through bytes 28..32 (see [`MAX_BACKWARD_JUMPS`]).
    pub scratch: BorrowedFd<'a>,
}

/// A translation error: an instruction libpcap does not emit for Ethernet
/// (ancillary loads, unknown opcodes) or a jump out of the program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("classic BPF instruction {index} ({code:#06x}) cannot be translated: {why}")]
pub struct TranslateError {
    /// Index of the instruction.
    pub index: usize,
    /// Its opcode.
    pub code: u16,
    /// Why.
    pub why: &'static str,
}

// Classic BPF opcode fields (linux/filter.h, pcap/bpf.h).
pub(crate) mod cbpf {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;
    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;
    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;
    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    pub const A: u16 = 0x10;
    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;
    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;
    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
    pub const MEMWORDS: u32 = 16;
}

// eBPF opcodes (linux/bpf.h).
mod op {
    pub const LD: u8 = 0x00;
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;
    pub const W: u8 = 0x00;
    pub const H: u8 = 0x08;
    pub const B: u8 = 0x10;
    pub const DW: u8 = 0x18;
    pub const IMM: u8 = 0x00;
    pub const MEM: u8 = 0x60;
    pub const K: u8 = 0x00;
    pub const X: u8 = 0x08;
    pub const ADD: u8 = 0x00;
    pub const SUB: u8 = 0x10;
    pub const MOV: u8 = 0xb0;
    pub const END: u8 = 0xd0;
    pub const TO_BE: u8 = 0x08;
    pub const JA: u8 = 0x00;
    pub const JEQ: u8 = 0x10;
    pub const JGT: u8 = 0x20;
    pub const JGE: u8 = 0x30;
    pub const JNE: u8 = 0x50;
    pub const CALL: u8 = 0x80;
    pub const EXIT: u8 = 0x90;
    pub const PSEUDO_MAP_FD: u8 = 1;
}

// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const TAIL_CALL: i32 = 12;
const SKB_LOAD_BYTES: i32 = 26;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const CTX: u8 = 6;
const A: u8 = 7;
const X: u8 = 8;
/// XDP: the frame's start. TC: how far offsets from 16 on are moved
/// (4 with an offloaded VLAN tag, else 0).
const R9: u8 = 9;
const FP: u8 = 10;

// Stack slots (offsets from r10).
/// TC: where `bpf_skb_load_bytes` puts a load's bytes.
const STACK_LOAD: i16 = -8;
/// TC: the tagged head's map value pointer, spilled.
const STACK_HEAD: i16 = -16;
/// TC: the map key 0.
const STACK_KEY: i16 = -24;
/// M[0]; M[i] at `STACK_MEM + 4 i`.
const STACK_MEM: i16 = -88;
/// Backward jumps left (see [`MAX_BACKWARD_JUMPS`]).
const STACK_LOOPS: i16 = -96;

/// How many backward jumps a filter may take per packet before it rejects
/// the packet. libpcap emits them only for `protochain`, one per IPv6
/// extension header (or IPv4 AH header) walked; its interpreter has no
/// limit. The verifier must see an end to every loop, and walks each
/// iteration (see `Emitter::loop_back`).
pub const MAX_BACKWARD_JUMPS: i32 = 32;

// Context fields (UAPI: struct xdp_md, struct __sk_buff).
const XDP_DATA: i16 = 0;
const XDP_DATA_END: i16 = 4;
const XDP_INGRESS_IFINDEX: i16 = 12;
const SKB_LEN: i16 = 0;
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_VLAN_PROTO: i16 = 28;

/// Largest offset a load may start at (see `load_ind`).
const MAX_OFFSET: i32 = 0xffff - 4;

// Classic BPF ancillary loads (linux/filter.h): offsets from SKF_AD_OFF.
pub(crate) const SKF_AD_OFF: u32 = 0xffff_f000;
pub(crate) const SKF_AD_PKTTYPE: u32 = 4;
pub(crate) const SKF_AD_IFINDEX: u32 = 8;

/// Where a loop puts X in the scratch value.
const SCRATCH_X: i16 = 28;

/// Bytes of a tagged frame assembled in the map value.
const TAGGED_HEAD: u32 = 24;

// Return codes.
const XDP_PASS: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EbpfInsn {
    /// Opcode.
    pub code: u8,
    /// `dst | src << 4`.
    pub regs: u8,
    /// Offset (jumps, memory).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> EbpfInsn {
    EbpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Where a jump goes, resolved once every block's position is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The first instruction of a classic instruction's block.
    Classic(usize),
    /// A label inside the current block (see [`Emitter::new_label`]).
    Here(usize),
    Accept,
    Reject,
}

struct Emitter {
    hook: Hook,
    out: Vec<EbpfInsn>,
    /// (index of a jump in `out`, its target).
    fixups: Vec<(usize, Target)>,
    /// Position of each [`Target::Here`] label.
    labels: Vec<usize>,
}

impl Emitter {
    fn push(&mut self, i: EbpfInsn) -> usize {
        self.out.push(i);
        self.out.len() - 1
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, target: Target) {
        let at = self.push(insn(code, dst, src, 0, imm));
        self.fixups.push((at, target));
    }
    fn goto(&mut self, target: Target) {
        self.jump(op::JMP | op::JA, 0, 0, 0, target);
    }
    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.push(insn(op::ALU64 | op::MOV | op::K, dst, 0, 0, imm));
    }
    fn mov(&mut self, dst: u8, src: u8) {
        self.push(insn(op::ALU64 | op::MOV | op::X, dst, src, 0, 0));
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.push(insn(op::ALU64 | op::ADD | op::K, dst, 0, 0, imm));
    }
    fn ld_map_fd(&mut self, dst: u8, fd: BorrowedFd<'_>) {
        self.push(insn(
            op::LD | op::DW | op::IMM,
            dst,
            op::PSEUDO_MAP_FD,
            0,
            fd.as_raw_fd(),
        ));
        self.push(EbpfInsn::default());
    }
    fn call(&mut self, helper: i32) {
        self.push(insn(op::JMP | op::CALL, 0, 0, 0, helper));
    }
    /// A forward label: the index the next instruction will have.
    fn here(&self) -> usize {
        self.out.len()
    }

    /// `dst = be(size bytes at the offset in r2)` (TC) or at `r2` (XDP,
    /// a packet pointer); rejects when the bytes are not in the packet.
    /// `size` is 1, 2 or 4.
    fn load_at_r2(&mut self, dst: u8, size: u32) {
        let width = width(size);
        match self.hook {
            Hook::Xdp => {
                // r2: packet pointer, r5: data_end.
                self.mov(R3, R2);
                self.add_imm(R3, size as i32);
                self.jump(op::JMP | op::JGT | op::X, R3, R5, 0, Target::Reject);
                self.push(insn(op::LDX | op::MEM | width, dst, R2, 0, 0));
            }
            Hook::Tc => {
                // The linear head with direct packet access (where the
                // headers are, nearly always), the rest through the helper.
                let slow = self.new_label();
                let done = self.new_label();
                self.push(insn(op::LDX | op::MEM | op::W, R3, CTX, SKB_DATA, 0));
                self.push(insn(op::LDX | op::MEM | op::W, R4, CTX, SKB_DATA_END, 0));
                self.push(insn(op::ALU64 | op::ADD | op::X, R3, R2, 0, 0));
                self.mov(R5, R3);
                self.add_imm(R5, size as i32);
                self.jump(op::JMP | op::JGT | op::X, R5, R4, 0, slow);
                self.push(insn(op::LDX | op::MEM | width, dst, R3, 0, 0));
                self.goto(done);
                self.bind(slow);
                self.mov(R1, CTX);
                self.mov(R3, FP);
                self.add_imm(R3, STACK_LOAD as i32);
                self.mov_imm(R4, size as i32);
                self.call(SKB_LOAD_BYTES);
                self.jump(op::JMP | op::JNE | op::K, R0, 0, 0, Target::Reject);
                self.push(insn(op::LDX | op::MEM | width, dst, FP, STACK_LOAD, 0));
                self.bind(done);
            }
        }
        self.swap_to_host(dst, size);
    }

    /// Network to host order, zero-extended (`BPF_END` to big endian is a
    /// swap on this little-endian machine).
    fn swap_to_host(&mut self, dst: u8, size: u32) {
        if size > 1 {
            self.push(insn(
                op::ALU | op::END | op::TO_BE,
                dst,
                0,
                0,
                (size * 8) as i32,
            ));
        }
    }

    /// `dst = be(size bytes at offset k)`.
    fn load_abs(&mut self, dst: u8, k: u32, size: u32) {
        // Past 64 KiB nothing is in an XDP frame (nor in any skb short of
        // BIG TCP's): no packet has the bytes.
        if k > MAX_OFFSET as u32 {
            self.goto(Target::Reject);
            return;
        }
        match self.hook {
            Hook::Xdp => {
                self.mov(R2, R9);
                self.add_imm(R2, k as i32);
                self.load_at_r2(dst, size);
            }
            Hook::Tc => {
                if k + size <= 12 {
                    self.mov_imm(R2, k as i32);
                    self.load_at_r2(dst, size);
                } else if k >= 16 {
                    // k - shift.
                    self.mov_imm(R2, k as i32);
                    self.push(insn(op::ALU64 | op::SUB | op::X, R2, R9, 0, 0));
                    self.load_at_r2(dst, size);
                } else {
                    self.mov_imm(R2, k as i32);
                    self.tc_tag_region(dst, size);
                }
            }
        }
    }

    /// `dst = be(size bytes at offset X + k)`.
    fn load_ind(&mut self, dst: u8, k: u32, size: u32) {
        if k > MAX_OFFSET as u32 {
            self.goto(Target::Reject);
            return;
        }
        // X + k without 32-bit wrap-around, as libpcap checks it. Beyond
        // 64 KiB minus 4 no packet here has the bytes, and the verifier
        // wants a packet pointer's offset plus the access size within
        // 64 KiB before it learns anything from the end check.
        self.mov(R2, X);
        self.add_imm(R2, k as i32);
        self.jump(op::JMP | op::JGT | op::K, R2, 0, MAX_OFFSET, Target::Reject);
        match self.hook {
            Hook::Xdp => {
                self.push(insn(op::ALU64 | op::ADD | op::X, R2, R9, 0, 0));
                self.load_at_r2(dst, size);
            }
            Hook::Tc => {
                let plain = self.new_label();
                let head = self.new_label();
                let not_after = self.new_label();
                let done = self.new_label();
                // Untagged: the offset as it is.
                self.jump(op::JMP | op::JEQ | op::K, R9, 0, 0, plain);
                // Tagged, from 16 on: 4 bytes earlier in the skb.
                self.jump(op::JMP | op::JGT | op::K, R2, 0, 15, not_after);
                // Tagged, wholly in the MAC addresses (r2 + size <= 12): as
                // it is; crossing into the tag: from the assembled head.
                // Compared on r2 itself: 6.12's verifier, after
                // `r3 = r2; r3 += size; if r3 > 12` linked r2 to r3, turned
                // a later `pkt += r2` into a scalar ("invalid mem access").
                self.jump(op::JMP | op::JGT | op::K, R2, 0, 12 - size as i32, head);
                self.goto(plain);
                self.bind(not_after);
                self.push(insn(op::ALU64 | op::SUB | op::K, R2, 0, 0, 4));
                self.goto(plain);
                self.bind(head);
                self.load_head(dst, size);
                self.goto(done);
                self.bind(plain);
                self.load_at_r2(dst, size);
                self.bind(done);
            }
        }
    }

    /// TC, a constant offset in r2 whose bytes overlap offsets 12..16:
    /// the tag when there is one, the skb's bytes otherwise.
    fn tc_tag_region(&mut self, dst: u8, size: u32) {
        let plain = self.new_label();
        let done = self.new_label();
        self.jump(op::JMP | op::JEQ | op::K, R9, 0, 0, plain);
        self.load_head(dst, size);
        self.goto(done);
        self.bind(plain);
        self.load_at_r2(dst, size);
        self.bind(done);
    }

    /// TC: `dst = be(size bytes at offset r2 < 16)` of the assembled head.
    fn load_head(&mut self, dst: u8, size: u32) {
        let width = width(size);
        // The bound the verifier needs for a variable offset into the map
        // value (r2 < 16 here whatever path led to it).
        self.jump(op::JMP | op::JGT | op::K, R2, 0, 15, Target::Reject);
        self.push(insn(op::LDX | op::MEM | op::DW, R3, FP, STACK_HEAD, 0));
        self.push(insn(op::ALU64 | op::ADD | op::X, R3, R2, 0, 0));
        self.push(insn(op::LDX | op::MEM | width, dst, R3, 0, 0));
        self.swap_to_host(dst, size);
    }

    /// Before a backward jump: counts it (rejecting the packet past
    /// [`MAX_BACKWARD_JUMPS`]), and passes X through map memory, whose
    /// contents the verifier does not track. Each iteration of libpcap's
    /// extension-header walk moves X by a multiple of 8 or of 4 (AH); with
    /// X's exact bounds and bits the verifier would tell the paths apart
    /// and walk 2^n of them, with X unknown (bounded where it is used) the
    /// paths meet at the loop's head and it walks n iterations.
    fn loop_back(&mut self, scratch: BorrowedFd<'_>) {
        self.push(insn(op::LDX | op::MEM | op::DW, R4, FP, STACK_LOOPS, 0));
        self.jump(op::JMP | op::JEQ | op::K, R4, 0, 0, Target::Reject);
        self.add_imm(R4, -1);
        self.push(insn(op::STX | op::MEM | op::DW, FP, R4, STACK_LOOPS, 0));
        self.lookup_scratch(scratch);
        self.push(insn(op::STX | op::MEM | op::W, R0, X, SCRATCH_X, 0));
        self.push(insn(op::LDX | op::MEM | op::W, X, R0, SCRATCH_X, 0));
        if self.hook == Hook::Xdp {
            // The call took r5.
            self.push(insn(op::LDX | op::MEM | op::W, R5, CTX, XDP_DATA_END, 0));
        }
    }

    /// `r0` = this CPU's scratch value (a call: r1-r5 are lost); rejects
    /// the packet if the lookup fails.
    fn lookup_scratch(&mut self, scratch: BorrowedFd<'_>) {
        self.push(insn(op::ST | op::MEM | op::W, FP, 0, STACK_KEY, 0));
        self.ld_map_fd(R1, scratch);
        self.mov(R2, FP);
        self.add_imm(R2, STACK_KEY as i32);
        self.call(MAP_LOOKUP_ELEM);
        self.jump(op::JMP | op::JEQ | op::K, R0, 0, 0, Target::Reject);
    }

    // Labels inside a block: a jump to a label records the label's number;
    // `bind` sets its position.
    fn new_label(&mut self) -> Target {
        self.labels.push(usize::MAX);
        Target::Here(self.labels.len() - 1)
    }
    fn bind(&mut self, label: Target) {
        if let Target::Here(n) = label {
            self.labels[n] = self.here();
        }
    }
}

/// Translates `program` (from libpcap) into an eBPF program for `hook`.
pub fn translate(
    program: &[Insn],
    hook: Hook,
    maps: FilterMaps<'_>,
) -> Result<Vec<EbpfInsn>, TranslateError> {
    let mut e = Emitter {
        hook,
        out: Vec::new(),
        fixups: Vec::new(),
        labels: Vec::new(),
    };
    let fail = |index: usize, code: u16, why: &'static str| TranslateError { index, code, why };
    if program.is_empty() {
        return Err(fail(0, 0, "empty program"));
    }

    // Prologue.
    e.mov(CTX, R1);
    e.mov_imm(A, 0);
    e.mov_imm(X, 0);
    // Zero the scratch words the program uses: the verifier refuses a read
    // of stack it cannot prove written (libpcap always stores first).
    let mut used_mem: Vec<u32> = program
        .iter()
        .filter(|i| {
            let class = i.code & 0x07;
            let mode = i.code & 0xe0;
            class == cbpf::ST
                || class == cbpf::STX
                || ((class == cbpf::LD || class == cbpf::LDX) && mode == cbpf::MEM)
        })
        .map(|i| i.k)
        .filter(|&k| k < cbpf::MEMWORDS)
        .collect();
    used_mem.sort_unstable();
    used_mem.dedup();
    for &k in &used_mem {
        e.push(insn(op::ST | op::MEM | op::W, FP, 0, mem_slot(k), 0));
    }
    // The loop budget, for programs with a loop only.
    if program
        .iter()
        .any(|i| i.code == cbpf::JMP | cbpf::JA && (i.k as i32) < 0)
    {
        e.push(insn(
            op::ST | op::MEM | op::DW,
            FP,
            0,
            STACK_LOOPS,
            MAX_BACKWARD_JUMPS,
        ));
    }
    match hook {
        Hook::Xdp => {
            e.push(insn(op::LDX | op::MEM | op::W, R9, CTX, XDP_DATA, 0));
            e.push(insn(op::LDX | op::MEM | op::W, R5, CTX, XDP_DATA_END, 0));
        }
        Hook::Tc => {
            e.push(insn(
                op::LDX | op::MEM | op::W,
                R9,
                CTX,
                SKB_VLAN_PRESENT,
                0,
            ));
            let body = e.new_label();
            e.jump(op::JMP | op::JEQ | op::K, R9, 0, 0, body);
            // Tagged: assemble MACs, TPID, TCI, 8 more bytes.
            e.lookup_scratch(maps.scratch);
            e.push(insn(op::STX | op::MEM | op::DW, FP, R0, STACK_HEAD, 0));
            e.mov(R1, CTX);
            e.mov_imm(R2, 0);
            e.mov(R3, R0);
            e.mov_imm(R4, 12);
            e.call(SKB_LOAD_BYTES);
            e.jump(op::JMP | op::JNE | op::K, R0, 0, 0, Target::Reject);
            e.push(insn(op::LDX | op::MEM | op::DW, R3, FP, STACK_HEAD, 0));
            // vlan_proto is in network order already; vlan_tci in host order.
            e.push(insn(op::LDX | op::MEM | op::W, R2, CTX, SKB_VLAN_PROTO, 0));
            e.push(insn(op::STX | op::MEM | op::H, R3, R2, 12, 0));
            e.push(insn(op::LDX | op::MEM | op::W, R2, CTX, SKB_VLAN_TCI, 0));
            e.swap_to_host(R2, 2);
            e.push(insn(op::STX | op::MEM | op::H, R3, R2, 14, 0));
            e.mov(R1, CTX);
            e.mov_imm(R2, 12);
            e.add_imm(R3, 16);
            e.mov_imm(R4, (TAGGED_HEAD - 16) as i32);
            e.call(SKB_LOAD_BYTES);
            e.jump(op::JMP | op::JNE | op::K, R0, 0, 0, Target::Reject);
            e.mov_imm(R9, 4);
            e.bind(body);
        }
    }

    let mut starts = Vec::with_capacity(program.len());
    for (pc, i) in program.iter().enumerate() {
        starts.push(e.here());
        let class = i.code & 0x07;
        let size = |code: u16| match code & 0x18 {
            cbpf::W => Some(4),
            cbpf::H => Some(2),
            cbpf::B => Some(1),
            _ => None,
        };
        let next = |off: u8| Target::Classic(pc + 1 + usize::from(off));
        match class {
            cbpf::LD | cbpf::LDX => {
                let dst = if class == cbpf::LD { A } else { X };
                let mode = i.code & 0xe0;
                match mode {
                    cbpf::IMM => {
                        // A 32-bit move zero-extends.
                        e.push(insn(op::ALU | op::MOV | op::K, dst, 0, 0, i.k as i32));
                    }
                    cbpf::MEM => {
                        if i.k >= cbpf::MEMWORDS {
                            return Err(fail(pc, i.code, "scratch memory index out of range"));
                        }
                        e.push(insn(op::LDX | op::MEM | op::W, dst, FP, mem_slot(i.k), 0));
                    }
                    cbpf::LEN => match hook {
                        Hook::Xdp => {
                            // data_end - data (a scalar for privileged
                            // loaders), then zero-extended.
                            e.mov(dst, R5);
                            e.push(insn(op::ALU64 | op::SUB | op::X, dst, R9, 0, 0));
                            e.push(insn(op::ALU | op::MOV | op::X, dst, dst, 0, 0));
                        }
                        Hook::Tc => {
                            e.push(insn(op::LDX | op::MEM | op::W, dst, CTX, SKB_LEN, 0));
                            e.push(insn(op::ALU | op::ADD | op::X, dst, R9, 0, 0));
                        }
                    },
                    cbpf::ABS if class == cbpf::LD => {
                        let Some(size) = size(i.code) else {
                            return Err(fail(pc, i.code, "bad load size"));
                        };
                        if i.k >= SKF_AD_OFF {
                            // Linux's ancillary data, which libpcap uses
                            // for `inbound`, `outbound` and `ifindex`.
                            match (i.k - SKF_AD_OFF, hook) {
                                // A received packet is not PACKET_OUTGOING
                                // (4); all `inbound` asks.
                                (SKF_AD_PKTTYPE, Hook::Xdp) => e.mov_imm(dst, 0),
                                (SKF_AD_PKTTYPE, Hook::Tc) => e.mov_imm(dst, 4),
                                (SKF_AD_IFINDEX, Hook::Xdp) => {
                                    e.push(insn(
                                        op::LDX | op::MEM | op::W,
                                        dst,
                                        CTX,
                                        XDP_INGRESS_IFINDEX,
                                        0,
                                    ));
                                }
                                (SKF_AD_IFINDEX, Hook::Tc) => {
                                    e.push(insn(
                                        op::LDX | op::MEM | op::W,
                                        dst,
                                        CTX,
                                        SKB_IFINDEX,
                                        0,
                                    ));
                                }
                                _ => {
                                    return Err(fail(
                                        pc,
                                        i.code,
                                        "ancillary load other than packet type and interface index",
                                    ));
                                }
                            }
                            continue;
                        }
                        e.load_abs(dst, i.k, size);
                    }
                    cbpf::IND if class == cbpf::LD => {
                        let Some(size) = size(i.code) else {
                            return Err(fail(pc, i.code, "bad load size"));
                        };
                        e.load_ind(dst, i.k, size);
                    }
                    cbpf::MSH if class == cbpf::LDX && i.code & 0x18 == cbpf::B => {
                        e.load_abs(X, i.k, 1);
                        e.push(insn(op::ALU | 0x50 | op::K, X, 0, 0, 0xf)); // and
                        e.push(insn(op::ALU | 0x60 | op::K, X, 0, 0, 2)); // lsh
                    }
                    _ => return Err(fail(pc, i.code, "unknown load")),
                }
            }
            cbpf::ST | cbpf::STX => {
                if i.k >= cbpf::MEMWORDS {
                    return Err(fail(pc, i.code, "scratch memory index out of range"));
                }
                let src = if class == cbpf::ST { A } else { X };
                e.push(insn(op::STX | op::MEM | op::W, FP, src, mem_slot(i.k), 0));
            }
            cbpf::ALU => {
                let operation = i.code & 0xf0;
                let by_x = i.code & 0x08 == cbpf::X;
                let alu_op = match operation {
                    cbpf::ADD => 0x00,
                    cbpf::SUB => 0x10,
                    cbpf::MUL => 0x20,
                    cbpf::DIV => 0x30,
                    cbpf::OR => 0x40,
                    cbpf::AND => 0x50,
                    cbpf::LSH => 0x60,
                    cbpf::RSH => 0x70,
                    cbpf::NEG => 0x80,
                    cbpf::MOD => 0x90,
                    cbpf::XOR => 0xa0,
                    _ => return Err(fail(pc, i.code, "unknown ALU operation")),
                };
                if operation == cbpf::NEG {
                    e.push(insn(op::ALU | 0x80, A, 0, 0, 0));
                    continue;
                }
                let divides = operation == cbpf::DIV || operation == cbpf::MOD;
                let shifts = operation == cbpf::LSH || operation == cbpf::RSH;
                if by_x {
                    if divides {
                        // libpcap: division by zero ends the filter with 0.
                        e.jump(op::JMP | op::JEQ | op::K, X, 0, 0, Target::Reject);
                    }
                    if shifts {
                        let zero = e.new_label();
                        let done = e.new_label();
                        e.jump(op::JMP | op::JGE | op::K, X, 0, 32, zero);
                        e.push(insn(op::ALU | alu_op | op::X, A, X, 0, 0));
                        e.goto(done);
                        e.bind(zero);
                        e.mov_imm(A, 0);
                        e.bind(done);
                    } else {
                        e.push(insn(op::ALU | alu_op | op::X, A, X, 0, 0));
                    }
                } else if divides && i.k == 0 {
                    e.goto(Target::Reject);
                } else if shifts && i.k >= 32 {
                    e.mov_imm(A, 0);
                } else {
                    e.push(insn(op::ALU | alu_op | op::K, A, 0, 0, i.k as i32));
                }
            }
            cbpf::JMP => {
                let operation = i.code & 0xf0;
                if operation == cbpf::JA {
                    // libpcap's interpreter adds k with wrap-around: its
                    // `protochain` walks IPv6 extension headers with a
                    // backward `ja`.
                    let to = (pc as i64) + 1 + i64::from(i.k as i32);
                    let Some(to) = usize::try_from(to).ok().filter(|&t| t < program.len()) else {
                        return Err(fail(pc, i.code, "jump out of the program"));
                    };
                    if to <= pc {
                        e.loop_back(maps.scratch);
                    }
                    e.goto(Target::Classic(to));
                    continue;
                }
                if pc + 1 + usize::from(i.jt.max(i.jf)) >= program.len() {
                    return Err(fail(pc, i.code, "jump out of the program"));
                }
                let jmp_op = match operation {
                    cbpf::JEQ => op::JEQ,
                    cbpf::JGT => op::JGT,
                    cbpf::JGE => op::JGE,
                    cbpf::JSET => 0x40,
                    _ => return Err(fail(pc, i.code, "unknown jump")),
                };
                if i.code & 0x08 == cbpf::X {
                    e.jump(op::JMP32 | jmp_op | op::X, A, X, 0, next(i.jt));
                } else {
                    e.jump(op::JMP32 | jmp_op | op::K, A, 0, i.k as i32, next(i.jt));
                }
                e.goto(next(i.jf));
            }
            cbpf::RET => match i.code & 0x18 {
                cbpf::K => e.goto(if i.k != 0 {
                    Target::Accept
                } else {
                    Target::Reject
                }),
                cbpf::A => {
                    e.jump(op::JMP | op::JNE | op::K, A, 0, 0, Target::Accept);
                    e.goto(Target::Reject);
                }
                _ => return Err(fail(pc, i.code, "unknown return")),
            },
            cbpf::MISC => match i.code & 0xf8 {
                cbpf::TAX => e.mov(X, A),
                cbpf::TXA => e.mov(A, X),
                _ => return Err(fail(pc, i.code, "unknown miscellaneous operation")),
            },
            _ => return Err(fail(pc, i.code, "unknown class")),
        }
    }
    // The last classic instruction is a `ret` (libpcap's always is): a
    // program falling off its end is refused above by the jump checks and
    // here.
    if program.last().is_some_and(|i| i.code & 0x07 != cbpf::RET) {
        return Err(fail(
            program.len() - 1,
            program[program.len() - 1].code,
            "program does not end in ret",
        ));
    }

    let pass = match hook {
        Hook::Xdp => XDP_PASS,
        Hook::Tc => TC_ACT_UNSPEC,
    };
    let accept = e.here();
    e.mov(R1, CTX);
    e.ld_map_fd(R2, maps.capture);
    e.mov_imm(R3, 0);
    e.call(TAIL_CALL);
    // Only when the program array is empty (never once set up).
    let reject = e.here();
    e.mov_imm(R0, pass);
    e.push(insn(op::JMP | op::EXIT, 0, 0, 0, 0));

    for &(at, target) in &e.fixups {
        let to = match target {
            Target::Classic(n) => starts[n],
            Target::Here(n) => e.labels[n],
            Target::Accept => accept,
            Target::Reject => reject,
        };
        let off = to as i64 - at as i64 - 1;
        let Ok(off) = i16::try_from(off) else {
            return Err(fail(0, 0, "program too long for eBPF jumps"));
        };
        e.out[at].off = off;
    }
    Ok(e.out)
}

/// The memory-access width of a 1-, 2- or 4-byte load.
fn width(size: u32) -> u8 {
    match size {
        1 => op::B,
        2 => op::H,
        _ => op::W,
    }
}

fn mem_slot(k: u32) -> i16 {
    STACK_MEM + 4 * k as i16
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

const BPF_MAP_UPDATE_ELEM: c_long = 2;
const BPF_PROG_LOAD: c_long = 5;
const BPF_PROG_TEST_RUN: c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

fn bpf<T>(command: c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the command's layout,
    // valid for its whole size; the kernel reads (and for some commands
    // writes) only that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads a translated filter as a program of `hook`'s type, named `name`
/// (at most 15 bytes are kept). Loaded as aya loads the capture programs
/// (XDP with the `BPF_XDP` attach type, no fragment support), so that the
/// program arrays accept both. A verifier rejection carries the end of
/// the verifier's log.
pub fn load(insns: &[EbpfInsn], hook: Hook, name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (slot, byte) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    let mut attr = ProgLoadAttr {
        prog_type: match hook {
            Hook::Xdp => BPF_PROG_TYPE_XDP,
            Hook::Tc => BPF_PROG_TYPE_SCHED_CLS,
        },
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: match hook {
            Hook::Xdp => BPF_XDP,
            Hook::Tc => 0,
        },
        ..ProgLoadAttr::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel gave us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(first) => {
            // Again with the verifier's log, for the error.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                // SAFETY: as above.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(io::Error::new(
                first.kind(),
                format!("{first}; verifier: {}", tail.join(" / ")),
            ))
        }
    }
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts `program` in slot `index` of the program array `map`.
pub fn set_program(map: BorrowedFd<'_>, index: u32, program: BorrowedFd<'_>) -> io::Result<()> {
    let value = program.as_raw_fd() as u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

/// Runs `program` once on `frame` (`BPF_PROG_TEST_RUN`, at least 14
/// bytes) and returns its return value. For tests and benchmarks of the
/// capture programs without a network.
pub fn test_run(program: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel ID of a loaded program (for `bpftool prog show id`).
pub fn program_id(program: BorrowedFd<'_>) -> io::Result<u32> {
    // The first two fields of struct bpf_prog_info: type, id. The kernel
    // fills as much of it as we ask for.
    let mut head = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: size_of_val(&head) as u32,
        info: head.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(head[1])
}

//! The packet filter of `netray packets`: tcpdump's filter language,
//! compiled by libpcap itself (`pcap_compile` on a dead Ethernet handle, as
//! `tcpdump -d` and `tcpdump -r` do) into classic BPF. The kernel side runs
//! that program translated to eBPF ([`super::ebpf_filter`]); userspace runs
//! it with libpcap's own interpreter (`bpf_filter`). So what a filter means
//! is defined once, by libpcap, for the capture, the tests and `-r FILE`.
//!
//! ```
//! use netray::packets::filter::Program;
//! let program = Program::compile("tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", 262144).unwrap();
//! assert!(program.dump().starts_with("(000) ldh      [12]"));
//! let err = Program::compile("tcp port 99999", 262144).unwrap_err();
//! assert_eq!(err.message, "illegal port number 99999 > 65535");
//! ```
//!
//! Names resolve as tcpdump resolves them, through the same library: hosts
//! with the system resolver, services from /etc/services, protocols from
//! libpcap's tables. The netmask is unknown (0), as for `tcpdump -r`:
//! `ip broadcast` tests for all-zeros and all-ones host parts.
//!
//! VLAN: the programs read tags from the packet bytes, as libpcap's
//! offline programs do. On TC egress, a tag the stack keeps in the skb's
//! metadata (transmit offload) is put back in front of the bytes the
//! program sees, where libpcap on Linux shows it. At XDP ingress, a tag the
//! NIC stripped (`rxvlan` offload) is invisible to XDP: turn the offload off
//! (`ethtool -K IFACE rxvlan off`) to filter on it.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint},
    fmt::Write as _,
};

/// `DLT_EN10MB`: Ethernet.
const DLT_EN10MB: c_int = 1;

/// One classic BPF instruction (`struct bpf_insn` / `struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    /// Operation: class, size, mode / operation, source.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// The constant operand.
    pub k: u32,
}

/// `struct bpf_program`.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut Insn,
}

#[link(name = "pcap")]
unsafe extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut libc::c_void;
    fn pcap_close(p: *mut libc::c_void);
    fn pcap_compile(
        p: *mut libc::c_void,
        fp: *mut BpfProgram,
        text: *const c_char,
        optimize: c_int,
        netmask: u32,
    ) -> c_int;
    fn pcap_geterr(p: *mut libc::c_void) -> *mut c_char;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn bpf_filter(pc: *const Insn, p: *const u8, wirelen: c_uint, buflen: c_uint) -> c_uint;
    fn bpf_image(pc: *const Insn, n: c_int) -> *mut c_char;
}

/// A filter libpcap does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter expression {text:?}: {message}")]
pub struct FilterError {
    /// The expression.
    pub text: String,
    /// libpcap's message, verbatim (what tcpdump prints after
    /// "tcpdump: ").
    pub message: String,
}

/// A compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    text: String,
    insns: Vec<Insn>,
}

impl Default for Program {
    /// The empty filter: every packet (libpcap compiles "" to one `ret`).
    fn default() -> Self {
        Program {
            text: String::new(),
            insns: vec![Insn {
                code: 0x06, // BPF_RET | BPF_K
                k: 262_144,
                ..Insn::default()
            }],
        }
    }
}

impl Program {
    /// Compiles `text` with libpcap for Ethernet, optimized, `snaplen` being
    /// what an accepting `ret` returns (as `tcpdump -s`). An empty (or
    /// all-blank) text matches everything.
    pub fn compile(text: &str, snaplen: u32) -> Result<Program, FilterError> {
        let text = text.trim();
        let error = |message: String| FilterError {
            text: text.to_owned(),
            message,
        };
        let c_text =
            CString::new(text).map_err(|_| error("a NUL byte in the expression".into()))?;
        let snaplen = c_int::try_from(snaplen).unwrap_or(c_int::MAX);
        // SAFETY: libpcap's documented API: a dead handle, compiled into a
        // program we own until pcap_freecode; the instructions are copied
        // out before that; the handle is closed on every path.
        unsafe {
            let handle = pcap_open_dead(DLT_EN10MB, snaplen);
            if handle.is_null() {
                return Err(error("libpcap could not open a dead handle".into()));
            }
            let mut program = BpfProgram {
                bf_len: 0,
                bf_insns: std::ptr::null_mut(),
            };
            // Netmask 0, as `tcpdump -r` and `tcpdump -d` use.
            let rc = pcap_compile(handle, &mut program, c_text.as_ptr(), 1, 0);
            let result = if rc != 0 {
                let message = CStr::from_ptr(pcap_geterr(handle))
                    .to_string_lossy()
                    .into_owned();
                Err(error(message))
            } else {
                let insns = if program.bf_insns.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(program.bf_insns, program.bf_len as usize).to_vec()
                };
                pcap_freecode(&mut program);
                Ok(Program {
                    text: text.to_owned(),
                    insns,
                })
            };
            pcap_close(handle);
            result
        }
    }

    /// The filter text as given (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The classic BPF program.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Whether the whole Ethernet frame `frame` matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.matches_captured(frame, frame.len() as u32)
    }

    /// Whether a packet of `wire_len` bytes on the wire, of which `data`
    /// was captured, matches, by libpcap's interpreter (what `tcpdump -r`
    /// runs): a load past the captured bytes rejects the packet.
    pub fn matches_captured(&self, data: &[u8], wire_len: u32) -> bool {
        if self.insns.is_empty() {
            return false;
        }
        // SAFETY: the program came from pcap_compile (or is the one-`ret`
        // default), which bpf_filter runs within `data`'s bounds.
        unsafe {
            bpf_filter(
                self.insns.as_ptr(),
                data.as_ptr(),
                wire_len.max(data.len() as u32),
                data.len() as c_uint,
            ) != 0
        }
    }

    /// The program as `tcpdump -d` prints it (libpcap's `bpf_image`), one
    /// line per instruction, each ending in a newline.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (i, insn) in self.insns.iter().enumerate() {
            // SAFETY: bpf_image formats one instruction into a static
            // buffer, read before the next call.
            let line = unsafe { CStr::from_ptr(bpf_image(insn, i as c_int)) };
            let _ = writeln!(out, "{}", line.to_string_lossy());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_what_the_old_parser_rejected() {
        for text in [
            "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
            "greater 1000",
            "ether host 00:11:22:33:44:55",
            "ip6 protochain 6",
            "tcp port smtp",
            "net 10.0.0.0 mask 255.0.0.0",
            "pppoes and ip",
            "mpls 100 and ip",
        ] {
            let p = Program::compile(text, 262_144).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.insns().is_empty(), "{text}");
        }
    }

    #[test]
    fn errors_are_libpcaps() {
        let e = Program::compile("tcp port foo", 100).unwrap_err();
        assert_eq!(e.message, "unknown port 'foo'");
        assert!(
            Program::compile("(tcp", 100)
                .unwrap_err()
                .message
                .contains("syntax error")
        );
        assert!(Program::compile("a\0b", 100).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_or_a_program_never_a_crash() {
        let deep = "!".repeat(30_000) + "tcp";
        let _ = Program::compile(&deep, 100);
    }

    #[test]
    fn empty_matches_everything_like_the_default() {
        let p = Program::compile("  ", 262_144).unwrap();
        assert_eq!(p.insns(), Program::default().insns());
        assert!(p.matches(&[0u8; 1]));
    }

    #[test]
    fn truncated_loads_reject_even_under_not() {
        let p = Program::compile("not udp", 262_144).unwrap();
        // Ethernet header only: EtherType IPv4, no IP header.
        let mut frame = vec![0u8; 14];
        frame[12] = 0x08;
        assert!(!p.matches(&frame));
        assert!(p.matches(&[0u8; 60]));
    }

    #[test]
    fn dump_is_tcpdumps() {
        let p = Program::compile("ip", 262_144).unwrap();
        assert_eq!(
            p.dump(),
            "(000) ldh      [12]\n(001) jeq      #0x800           jt 2\tjf 3\n(002) ret      #262144\n(003) ret      #0\n"
        );
    }
}

//! The packet filter of `netray packets`: a subset of the tcpdump /
//! pcap-filter language, compiled to a small bounded program that the kernel
//! (`netray-ebpf/src/packets.rs`) and [`Program::matches`] run with the same
//! semantics.
//!
//! ```
//! use netray::packets::filter::Program;
//! let program = Program::compile("udp port 53 or icmp6").unwrap();
//! assert!(program.insns().len() <= netray::packets::filter::MAX_INSNS);
//! assert!(Program::compile("greater 100").is_err());
//! ```
//!
//! # Language
//!
//! Primitives: `host ADDR`, `net CIDR` (or `net ADDR`), `port N`,
//! `portrange A-B`, each optionally preceded by a direction (`src`, `dst`,
//! `src or dst` (the default), `src and dst`) and by a protocol qualifier
//! (`ip`/`ip6`/`arp` for `host`/`net`, `tcp`/`udp` for `port`/`portrange`);
//! protocols `ip`, `ip6`, `arp`, `tcp`, `udp`, `icmp`, `icmp6`; `vlan [ID]`.
//! Operators `and`/`&&`, `or`/`||`, `not`/`!`, parentheses. As in tcpdump,
//! `and` and `or` have the same precedence and associate left to right
//! (`a or b and c` is `(a or b) and c`), a bare address is `host ADDR` (an
//! extension: libpcap rejects one as the first primitive), and a
//! bare value after `and`/`or` reuses the previous primitive's qualifiers
//! (`host 10.0.0.1 or 10.0.0.2`).
//!
//! # Semantics (those of `tcpdump -r` on an Ethernet capture, libpcap 1.10)
//!
//! - `host`/`net` with an IPv4 value match IPv4 source/destination, and the
//!   sender/target protocol address of ARP and RARP (as libpcap: at fixed
//!   offsets, whatever the ARP header's address lengths say). IPv6 values
//!   match IPv6 source/destination.
//! - `tcp`/`udp`/`icmp6`: the IPv4 protocol, or the IPv6 fixed header's Next
//!   Header, or, when that is a Fragment header, the fragment header's Next
//!   Header. Other IPv6 extension headers are not walked (libpcap does not
//!   either: `tcp` does not match TCP behind a hop-by-hop header).
//! - `port`/`portrange`: TCP, UDP or SCTP ports; IPv4 only for first
//!   fragments (offset 0); IPv6 only when the fixed header's Next Header is
//!   TCP/UDP/SCTP (libpcap reads the ports right after the fixed header).
//! - VLAN: as libpcap on a capture file, every `vlan` keyword moves the
//!   primitives written after it (in the text, whatever the operators) one
//!   tag inwards. A primitive written after `d` `vlan` keywords matches
//!   only frames with exactly `d` VLAN tags (TPID 0x8100, 0x88a8 or 0x9100)
//!   before the protocol it tests: `ip` does not match tagged IPv4,
//!   `vlan and ip` matches single-tagged IPv4, `vlan 100 and host ...` tests
//!   the tag's ID and then the inner packet. At most 2 `vlan` keywords.
//!
//! Known differences from libpcap: filters that can never match (`ip and
//! vlan`) compile here to a program that matches nothing, where libpcap
//! reports "expression rejects all packets". A load past the end of a truncated
//! packet aborts a libpcap filter (no match, even under `not`), while here
//! the missing field simply does not match.
//! (`not port 53` matches a UDP packet truncated inside its header here.)
//! On TC egress a VLAN tag the stack keeps in the skb's metadata (transmit
//! offload) counts as the outer tag, as libpcap shows it; the capture
//! inserts it into the bytes too. At XDP ingress, a tag the NIC stripped
//! into metadata (`rxvlan` offload) is invisible to XDP: turn the offload
//! off (`ethtool -K IFACE rxvlan off`) to filter on it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

// The program layout and field indexes are shared with the kernel side.
pub use netray_common::packets::{Insn, MAX_INSNS, OP_RANGE, OP_RET, RawProgram, field};

/// The fields the filter tests, parsed from a frame by [`Summary::parse`]
/// (and identically by the kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Indexed by the constants of [`field`].
    pub fields: [u32; field::COUNT],
}

const ETH_IP: u32 = 0x0800;
const ETH_IPV6: u32 = 0x86dd;
const ETH_ARP: u32 = 0x0806;
const ETH_RARP: u32 = 0x8035;

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Summary {
    /// Parses an Ethernet frame (from the destination MAC on). Never fails:
    /// what is missing stays zero.
    pub fn parse(frame: &[u8]) -> Summary {
        let mut f = [0u32; field::COUNT];
        let Some(mut ethertype) = be16(frame, 12) else {
            return Summary { fields: f };
        };
        let mut off = 14;
        let mut count = 0u32;
        while count < 2 && matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            let (Some(tci), Some(inner)) = (be16(frame, off), be16(frame, off + 2)) else {
                break;
            };
            f[usize::from(field::VLAN_ID0) + count as usize] = tci & 0xfff;
            ethertype = inner;
            off += 4;
            count += 1;
        }
        f[usize::from(field::ETHER)] = (count << 16) | ethertype;
        f[usize::from(field::VLAN_COUNT)] = count;
        let l3 = frame.get(off..).unwrap_or_default();
        let set_addrs = |f: &mut [u32; field::COUNT], src: usize, dst: usize, words: usize| {
            for w in 0..words {
                if let (Some(s), Some(d)) = (be32(l3, src + 4 * w), be32(l3, dst + 4 * w)) {
                    f[usize::from(field::SRC) + w] = s;
                    f[usize::from(field::DST) + w] = d;
                }
            }
        };
        match ethertype {
            ETH_IP if l3.len() >= 20 => {
                let proto = l3[9];
                f[usize::from(field::PROTO)] = u32::from(proto);
                set_addrs(&mut f, 12, 16, 1);
                let ihl = usize::from(l3[0] & 0x0f) * 4;
                let first_fragment = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff == 0;
                if matches!(proto, 6 | 17 | 132) && first_fragment {
                    set_ports(&mut f, l3, ihl);
                }
            }
            ETH_IPV6 if l3.len() >= 40 => {
                let next = l3[6];
                let proto = match (next, l3.get(40)) {
                    (44, Some(&inner)) => inner,
                    _ => next,
                };
                f[usize::from(field::PROTO)] = u32::from(proto);
                set_addrs(&mut f, 8, 24, 4);
                if matches!(next, 6 | 17 | 132) {
                    set_ports(&mut f, l3, 40);
                }
            }
            ETH_ARP | ETH_RARP if l3.len() >= 28 => set_addrs(&mut f, 14, 24, 1),
            _ => {}
        }
        Summary { fields: f }
    }
}

fn set_ports(f: &mut [u32; field::COUNT], l3: &[u8], at: usize) {
    if let (Some(sport), Some(dport)) = (be16(l3, at), be16(l3, at + 2)) {
        f[usize::from(field::PORTS)] = 1;
        f[usize::from(field::SPORT)] = sport;
        f[usize::from(field::DPORT)] = dport;
    }
}

/// Runs `insns` on `summary`, exactly as the kernel interpreter does.
pub fn run(insns: &[Insn], summary: &Summary) -> bool {
    let mut pc = 0usize;
    // Bounded like the kernel loop; forward jumps end it sooner anyway.
    for _ in 0..MAX_INSNS {
        let Some(insn) = insns.get(pc) else {
            return false;
        };
        if insn.op == OP_RET {
            return insn.lo != 0;
        }
        let Some(&value) = summary.fields.get(usize::from(insn.field)) else {
            return false;
        };
        let value = value & insn.mask;
        let skip = if insn.lo <= value && value <= insn.hi {
            insn.jt
        } else {
            insn.jf
        };
        pc += 1 + usize::from(skip);
    }
    false
}

/// A compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    text: String,
    insns: Vec<Insn>,
}

impl Default for Program {
    /// The empty filter: matches every packet.
    fn default() -> Self {
        Program {
            text: String::new(),
            insns: vec![ret(true)],
        }
    }
}

/// A filter that does not compile: what and where (1-based column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct FilterError {
    /// What is wrong, naming the offending text.
    pub message: String,
    /// 1-based character column in the filter string (its length + 1 for
    /// "unexpected end").
    pub column: usize,
}

impl Program {
    /// Compiles a filter; an empty (or all-blank) string matches everything.
    pub fn compile(text: &str) -> Result<Program, FilterError> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Ok(Program::default());
        }
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            end: text.chars().count() + 1,
            vlan_depth: 0,
            previous: None,
        };
        let cond = parser.expr()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token, "unexpected"));
        }
        let mut codegen = Gen::default();
        codegen.emit(&cond, Label::Accept, Label::Reject);
        let insns = codegen.finish();
        if insns.len() > MAX_INSNS {
            return Err(FilterError {
                message: format!(
                    "filter too complex: {} instructions (at most {MAX_INSNS})",
                    insns.len()
                ),
                column: 1,
            });
        }
        Ok(Program {
            text: text.trim().to_owned(),
            insns,
        })
    }

    /// The filter text as given (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The compiled instructions (at most [`MAX_INSNS`]).
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Whether the Ethernet frame `frame` matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.matches_summary(&Summary::parse(frame))
    }

    /// Whether a parsed frame matches.
    pub fn matches_summary(&self, summary: &Summary) -> bool {
        run(&self.insns, summary)
    }

    /// The program in the kernel map's layout.
    pub fn to_raw(&self) -> RawProgram {
        let mut raw = RawProgram {
            len: self.insns.len() as u32,
            pad: 0,
            insns: [Insn::default(); MAX_INSNS],
        };
        for (slot, insn) in raw.insns.iter_mut().zip(&self.insns) {
            *slot = *insn;
        }
        raw
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, insn) in self.insns.iter().enumerate() {
            if insn.op == OP_RET {
                writeln!(f, "({i:03}) ret {}", insn.lo)?;
            } else {
                writeln!(
                    f,
                    "({i:03}) field[{}] & {:#x} in [{:#x}, {:#x}] jt {} jf {}",
                    insn.field,
                    insn.mask,
                    insn.lo,
                    insn.hi,
                    i + 1 + usize::from(insn.jt),
                    i + 1 + usize::from(insn.jf)
                )?;
            }
        }
        Ok(())
    }
}

fn ret(accept: bool) -> Insn {
    Insn {
        op: OP_RET,
        lo: u32::from(accept),
        ..Insn::default()
    }
}

// ---------------------------------------------------------------- tokens

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    column: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let (tok, len) = if c.is_whitespace() {
            i += 1;
            continue;
        } else if two == "&&" {
            (Tok::And, 2)
        } else if two == "||" {
            (Tok::Or, 2)
        } else if c == '!' {
            (Tok::Not, 1)
        } else if c == '(' {
            (Tok::Open, 1)
        } else if c == ')' {
            (Tok::Close, 1)
        } else if c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || matches!(chars[i], '.' | ':' | '/' | '-' | '_'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = match word.as_str() {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                _ => Tok::Word(word),
            };
            tokens.push(Token { tok, column });
            continue;
        } else {
            return Err(FilterError {
                message: format!("unsupported character '{c}' in filter"),
                column,
            });
        };
        tokens.push(Token { tok, column });
        i += len;
    }
    Ok(tokens)
}

// ---------------------------------------------------------------- parser

/// A boolean condition over summary fields.
#[derive(Clone, Debug)]
enum Cond {
    Cmp {
        field: u8,
        mask: u32,
        lo: u32,
        hi: u32,
    },
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

fn eq(field: u8, value: u32) -> Cond {
    masked(field, u32::MAX, value)
}

fn masked(field: u8, mask: u32, value: u32) -> Cond {
    Cond::Cmp {
        field,
        mask,
        lo: value,
        hi: value,
    }
}

fn range(field: u8, lo: u32, hi: u32) -> Cond {
    Cond::Cmp {
        field,
        mask: u32::MAX,
        lo,
        hi,
    }
}

fn and(a: Cond, b: Cond) -> Cond {
    Cond::And(Box::new(a), Box::new(b))
}

fn or(a: Cond, b: Cond) -> Cond {
    Cond::Or(Box::new(a), Box::new(b))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Ip,
    Ip6,
    Arp,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

impl Proto {
    fn from_word(word: &str) -> Option<Proto> {
        Some(match word {
            "ip" => Proto::Ip,
            "ip6" => Proto::Ip6,
            "arp" => Proto::Arp,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmp6" => Proto::Icmp6,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
            Proto::Arp => "arp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    SrcOrDst,
    SrcAndDst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
}

/// Qualifiers of a primitive with a value (reused by implied primitives).
#[derive(Clone, Copy, Debug)]
struct Quals {
    proto: Option<Proto>,
    dir: Option<Dir>,
    kind: Option<Kind>,
}

/// libpcap keywords outside the supported subset: named in the error.
const UNSUPPORTED: &[&str] = &[
    "greater",
    "less",
    "len",
    "ether",
    "proto",
    "gateway",
    "broadcast",
    "multicast",
    "mpls",
    "pppoed",
    "pppoes",
    "geneve",
    "sctp",
    "rarp",
    "decnet",
    "atalk",
    "aarp",
    "ipx",
    "iso",
    "stp",
    "netbeui",
    "lat",
    "moprc",
    "mopdl",
    "llc",
    "ifname",
    "on",
    "rnr",
    "rulenum",
    "reason",
    "rset",
    "srnr",
    "subrulenum",
    "action",
    "wlan",
    "type",
    "subtype",
    "dir",
    "addr1",
    "addr2",
    "addr3",
    "addr4",
    "ra",
    "ta",
    "inbound",
    "outbound",
    "fddi",
    "tr",
    "mask",
    "protochain",
    "igmp",
    "igrp",
    "pim",
    "vrrp",
    "carp",
    "ah",
    "esp",
    "clnp",
    "esis",
    "isis",
    "l1",
    "l2",
    "iih",
    "lsp",
    "snp",
    "csnp",
    "psnp",
    "vpi",
    "vci",
    "lane",
    "oamf4s",
    "oamf4e",
    "oamf4",
    "oam",
    "metac",
    "bcc",
    "sc",
    "ilmic",
    "connectmsg",
    "metaconnect",
    "radio",
    "hdlc",
];

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    /// Column reported for "unexpected end".
    end: usize,
    /// `vlan` keywords seen so far in the text (libpcap's offset shift).
    vlan_depth: u32,
    /// Qualifiers of the last primitive with a value.
    previous: Option<Quals>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self, at: usize) -> Option<&str> {
        match self.tokens.get(self.pos + at) {
            Some(Token {
                tok: Tok::Word(w), ..
            }) => Some(w),
            _ => None,
        }
    }

    fn error_at(&self, token: &Token, what: &str) -> FilterError {
        let text = match &token.tok {
            Tok::Word(w) => w.clone(),
            Tok::And => "and".into(),
            Tok::Or => "or".into(),
            Tok::Not => "not".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
        };
        FilterError {
            message: format!("{what} '{text}'"),
            column: token.column,
        }
    }

    fn error_end(&self, what: &str) -> FilterError {
        FilterError {
            message: format!("unexpected end of filter: {what}"),
            column: self.end,
        }
    }

    /// expr := unary { (and | or) unary }, left-associative, equal precedence.
    fn expr(&mut self) -> Result<Cond, FilterError> {
        let mut left = self.unary(false)?;
        while let Some(token) = self.peek() {
            let is_and = match token.tok {
                Tok::And => true,
                Tok::Or => false,
                _ => break,
            };
            self.pos += 1;
            let right = self.unary(true)?;
            left = if is_and {
                and(left, right)
            } else {
                or(left, right)
            };
        }
        Ok(left)
    }

    fn unary(&mut self, after_operator: bool) -> Result<Cond, FilterError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.error_end("expected a primitive"));
        };
        match token.tok {
            Tok::Not => {
                self.pos += 1;
                Ok(Cond::Not(Box::new(self.unary(after_operator)?)))
            }
            Tok::Open => {
                self.pos += 1;
                let inner = self.expr()?;
                match self.peek() {
                    Some(Token {
                        tok: Tok::Close, ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(other) => Err(self.error_at(other, "expected ')' instead of")),
                    None => Err(self.error_end("missing ')'")),
                }
            }
            Tok::Word(_) => self.primitive(after_operator),
            _ => Err(self.error_at(&token, "expected a primitive instead of")),
        }
    }

    fn take_word(&mut self) -> Option<(String, usize)> {
        match self.tokens.get(self.pos) {
            Some(Token {
                tok: Tok::Word(w),
                column,
            }) => {
                self.pos += 1;
                Some((w.clone(), *column))
            }
            _ => None,
        }
    }

    fn primitive(&mut self, after_operator: bool) -> Result<Cond, FilterError> {
        let first = self
            .peek()
            .cloned()
            .ok_or_else(|| self.error_end("expected a primitive"))?;
        let Some(word) = self.peek_word(0).map(str::to_owned) else {
            return Err(self.error_at(&first, "expected a primitive instead of"));
        };
        if UNSUPPORTED.contains(&word.as_str()) || word.contains('[') {
            return Err(self.error_at(&first, "unsupported filter primitive"));
        }
        if word == "vlan" {
            self.pos += 1;
            return self.vlan(&first);
        }
        let mut quals = Quals {
            proto: None,
            dir: None,
            kind: None,
        };
        let mut explicit = false;
        if let Some(proto) = Proto::from_word(&word) {
            self.pos += 1;
            explicit = true;
            quals.proto = Some(proto);
            // A protocol alone is a primitive unless a direction or type follows.
            if !self
                .peek_word(0)
                .is_some_and(|w| matches!(w, "src" | "dst" | "host" | "net" | "port" | "portrange"))
            {
                return Ok(self.proto_cond(proto));
            }
        }
        if let Some(dir) = self.peek_word(0).and_then(|w| match w {
            "src" => Some(Dir::Src),
            "dst" => Some(Dir::Dst),
            _ => None,
        }) {
            self.pos += 1;
            explicit = true;
            quals.dir = Some(dir);
            // `src or dst` / `src and dst` (either order).
            let combined = matches!(
                self.tokens.get(self.pos).map(|t| &t.tok),
                Some(Tok::And | Tok::Or)
            ) && matches!(
                (dir, self.peek_word(1)),
                (Dir::Src, Some("dst")) | (Dir::Dst, Some("src"))
            );
            if combined {
                let is_and = self.tokens[self.pos].tok == Tok::And;
                self.pos += 2;
                quals.dir = Some(if is_and {
                    Dir::SrcAndDst
                } else {
                    Dir::SrcOrDst
                });
            }
        }
        if let Some(kind) = self.peek_word(0).and_then(|w| match w {
            "host" => Some(Kind::Host),
            "net" => Some(Kind::Net),
            "port" => Some(Kind::Port),
            "portrange" => Some(Kind::PortRange),
            _ => None,
        }) {
            self.pos += 1;
            explicit = true;
            quals.kind = Some(kind);
        }
        if !explicit {
            // A bare value: after and/or it takes the previous primitive's
            // qualifiers (libpcap), else an address means `host`.
            quals = match (after_operator, self.previous) {
                (true, Some(previous)) => previous,
                _ => Quals {
                    proto: None,
                    dir: None,
                    kind: None,
                },
            };
        }
        let Some((value, column)) = self.take_word() else {
            return Err(match self.peek() {
                Some(token) => self.error_at(token, "expected a value instead of"),
                None => self.error_end("expected a value"),
            });
        };
        if UNSUPPORTED.contains(&value.as_str()) {
            return Err(FilterError {
                message: format!("unsupported filter primitive '{value}'"),
                column,
            });
        }
        let kind = match quals.kind {
            Some(kind) => kind,
            None if value.parse::<IpAddr>().is_ok() => Kind::Host,
            None if explicit => Kind::Host,
            None => {
                return Err(FilterError {
                    message: format!(
                        "unsupported filter primitive '{value}' (keywords: host, net, port, \
                         portrange, src, dst, tcp, udp, icmp, icmp6, ip, ip6, arp, vlan, and, \
                         or, not; host names are not resolved)"
                    ),
                    column,
                });
            }
        };
        quals.kind = Some(kind);
        self.previous = Some(quals);
        let dir = quals.dir.unwrap_or(Dir::SrcOrDst);
        let depth = self.vlan_depth;
        let bad = |message: String| FilterError { message, column };
        match kind {
            Kind::Host | Kind::Net => {
                if let Some(proto) = quals.proto
                    && !matches!(proto, Proto::Ip | Proto::Ip6 | Proto::Arp)
                {
                    return Err(bad(format!(
                        "'{}' cannot qualify '{}'",
                        proto.name(),
                        if kind == Kind::Host { "host" } else { "net" }
                    )));
                }
                let (addr, prefix) = parse_net(&value, kind).map_err(bad)?;
                address_cond(addr, prefix, dir, quals.proto, depth).map_err(bad)
            }
            Kind::Port | Kind::PortRange => {
                if let Some(proto) = quals.proto
                    && !matches!(proto, Proto::Tcp | Proto::Udp)
                {
                    return Err(bad(format!(
                        "'{}' cannot qualify a port (use tcp or udp)",
                        proto.name()
                    )));
                }
                let (lo, hi) = parse_ports(&value, kind).map_err(bad)?;
                let ports = |f: u8| range(f, lo, hi);
                let which = match dir {
                    Dir::Src => ports(field::SPORT),
                    Dir::Dst => ports(field::DPORT),
                    Dir::SrcOrDst => or(ports(field::SPORT), ports(field::DPORT)),
                    Dir::SrcAndDst => and(ports(field::SPORT), ports(field::DPORT)),
                };
                let base = match quals.proto {
                    Some(proto) => self.proto_cond(proto),
                    None => or(ether(depth, ETH_IP), ether(depth, ETH_IPV6)),
                };
                Ok(and(and(base, eq(field::PORTS, 1)), which))
            }
        }
    }

    /// `vlan [ID]`: a tag at the current depth, then the rest moves inwards.
    fn vlan(&mut self, token: &Token) -> Result<Cond, FilterError> {
        let depth = self.vlan_depth;
        if depth >= 2 {
            return Err(self.error_at(token, "at most 2 'vlan' keywords are supported:"));
        }
        let mut cond = range(field::VLAN_COUNT, depth + 1, 2);
        if let Some(value) = self.peek_word(0)
            && value.chars().all(|c| c.is_ascii_digit())
        {
            let (value, column) = self.take_word().unwrap_or_default();
            let id: u32 =
                value
                    .parse()
                    .ok()
                    .filter(|id| *id < 4096)
                    .ok_or_else(|| FilterError {
                        message: format!("VLAN ID '{value}' is not in 0..=4095"),
                        column,
                    })?;
            cond = and(cond, eq(field::VLAN_ID0 + depth as u8, id));
        }
        self.vlan_depth += 1;
        Ok(cond)
    }

    fn proto_cond(&self, proto: Proto) -> Cond {
        let d = self.vlan_depth;
        let ip_any = || or(ether(d, ETH_IP), ether(d, ETH_IPV6));
        match proto {
            Proto::Ip => ether(d, ETH_IP),
            Proto::Ip6 => ether(d, ETH_IPV6),
            Proto::Arp => ether(d, ETH_ARP),
            Proto::Tcp => and(ip_any(), eq(field::PROTO, 6)),
            Proto::Udp => and(ip_any(), eq(field::PROTO, 17)),
            Proto::Icmp => and(ether(d, ETH_IP), eq(field::PROTO, 1)),
            Proto::Icmp6 => and(ether(d, ETH_IPV6), eq(field::PROTO, 58)),
        }
    }
}

/// EtherType `ethertype` after exactly `depth` VLAN tags.
fn ether(depth: u32, ethertype: u32) -> Cond {
    eq(field::ETHER, (depth << 16) | ethertype)
}

fn parse_net(value: &str, kind: Kind) -> Result<(IpAddr, u32), String> {
    let (addr, prefix) = match value.split_once('/') {
        Some((addr, prefix)) if kind == Kind::Net => (addr, Some(prefix)),
        Some(_) => return Err(format!("'{value}': use 'net' for a prefix")),
        None => (value, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!("'{value}' is not an IPv4 or IPv6 address (host names are not resolved)")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("bad prefix length in '{value}' (0..={max})"))?,
    };
    // libpcap rejects host bits set beyond the prefix.
    let bits = match addr {
        IpAddr::V4(a) => u128::from(a.to_bits()) << 96,
        IpAddr::V6(a) => a.to_bits(),
    };
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    if bits & !mask != 0 {
        return Err(format!("non-network bits set in '{value}'"));
    }
    Ok((addr, prefix))
}

fn parse_ports(value: &str, kind: Kind) -> Result<(u32, u32), String> {
    let port = |s: &str| {
        s.parse::<u16>().map(u32::from).map_err(|_| {
            format!("'{s}' is not a port number (0..=65535; service names are not supported)")
        })
    };
    match kind {
        Kind::PortRange => {
            let (a, b) = value
                .split_once('-')
                .ok_or_else(|| format!("'{value}' is not a port range A-B"))?;
            let (a, b) = (port(a)?, port(b)?);
            // libpcap swaps a reversed range.
            Ok((a.min(b), a.max(b)))
        }
        _ => {
            let p = port(value)?;
            Ok((p, p))
        }
    }
}

/// `host`/`net` on `addr/prefix`: IPv4 on IP and ARP/RARP, IPv6 on IPv6.
fn address_cond(
    addr: IpAddr,
    prefix: u32,
    dir: Dir,
    proto: Option<Proto>,
    depth: u32,
) -> Result<Cond, String> {
    let (words, bases): (Vec<u32>, Vec<Cond>) = match addr {
        IpAddr::V4(a) => {
            if proto == Some(Proto::Ip6) {
                return Err(format!("'ip6' cannot qualify the IPv4 address {a}"));
            }
            let mut bases = Vec::new();
            if proto.is_none() || proto == Some(Proto::Ip) {
                bases.push(ether(depth, ETH_IP));
            }
            if proto.is_none() || proto == Some(Proto::Arp) {
                bases.push(or(ether(depth, ETH_ARP), ether(depth, ETH_RARP)));
            }
            (vec![Ipv4Addr::to_bits(a)], bases)
        }
        IpAddr::V6(a) => {
            if matches!(proto, Some(Proto::Ip | Proto::Arp)) {
                return Err(format!("IPv6 address {a} with an IPv4 qualifier"));
            }
            let bits = Ipv6Addr::to_bits(a);
            let words = (0..4).map(|i| (bits >> (96 - 32 * i)) as u32).collect();
            (words, vec![ether(depth, ETH_IPV6)])
        }
    };
    let matches_at = |base_field: u8| -> Option<Cond> {
        let mut cond: Option<Cond> = None;
        for (i, word) in words.iter().enumerate() {
            let bits_here = prefix.saturating_sub(32 * i as u32).min(32);
            if bits_here == 0 {
                break;
            }
            let mask = u32::MAX << (32 - bits_here);
            let cmp = masked(base_field + i as u8, mask, word & mask);
            cond = Some(match cond {
                None => cmp,
                Some(c) => and(c, cmp),
            });
        }
        cond
    };
    let dir_cond = match (matches_at(field::SRC), matches_at(field::DST)) {
        (Some(s), Some(d)) => Some(match dir {
            Dir::Src => s,
            Dir::Dst => d,
            Dir::SrcOrDst => or(s, d),
            Dir::SrcAndDst => and(s, d),
        }),
        // Prefix 0: any address of the family.
        _ => None,
    };
    let mut result: Option<Cond> = None;
    for base in bases {
        let one = match &dir_cond {
            Some(c) => and(base, c.clone()),
            None => base,
        };
        result = Some(match result {
            None => one,
            Some(r) => or(r, one),
        });
    }
    result.ok_or_else(|| "empty address match".to_owned())
}

// ---------------------------------------------------------------- codegen

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Accept,
    Reject,
    At(usize),
}

#[derive(Default)]
struct Gen {
    /// Instructions with symbolic targets (jt, jf).
    code: Vec<(Insn, Label, Label)>,
    /// Where each numbered label was placed.
    labels: Vec<Option<usize>>,
}

impl Gen {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label::At(self.labels.len() - 1)
    }

    fn place(&mut self, label: Label) {
        if let Label::At(n) = label {
            self.labels[n] = Some(self.code.len());
        }
    }

    /// Emits code that jumps to `t` when `cond` holds, else to `f`. Every
    /// target is placed after the code that refers to it: jumps are forward.
    fn emit(&mut self, cond: &Cond, t: Label, f: Label) {
        match cond {
            Cond::Cmp {
                field,
                mask,
                lo,
                hi,
            } => {
                let insn = Insn {
                    op: OP_RANGE,
                    field: *field,
                    jt: 0,
                    jf: 0,
                    mask: *mask,
                    lo: *lo,
                    hi: *hi,
                };
                self.code.push((insn, t, f));
            }
            Cond::And(a, b) => {
                let next = self.label();
                self.emit(a, next, f);
                self.place(next);
                self.emit(b, t, f);
            }
            Cond::Or(a, b) => {
                let next = self.label();
                self.emit(a, t, next);
                self.place(next);
                self.emit(b, t, f);
            }
            Cond::Not(a) => self.emit(a, f, t),
        }
    }

    fn finish(self) -> Vec<Insn> {
        let accept = self.code.len();
        let reject = accept + 1;
        let resolve = |label: Label| match label {
            Label::Accept => accept,
            Label::Reject => reject,
            Label::At(n) => self.labels[n].unwrap_or(reject),
        };
        let mut out: Vec<Insn> = self
            .code
            .iter()
            .enumerate()
            .map(|(i, (insn, t, f))| {
                let skip = |target: usize| (target - (i + 1)).min(usize::from(u8::MAX)) as u8;
                Insn {
                    jt: skip(resolve(*t)),
                    jf: skip(resolve(*f)),
                    ..*insn
                }
            })
            .collect();
        out.push(ret(true));
        out.push(ret(false));
        out
    }
}

#[cfg(test)]
mod tests;

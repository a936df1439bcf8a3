//! Hand-made TCP segments sent from a raw socket, for tests that play an
//! attacker: blind RSTs, ACKs, segments with chosen sequence numbers. Run it
//! in a namespace (with [`crate::Netns::run`]); the kernel routes the
//! packet like any other, but no socket of it owns the segment.

use std::{io, net::IpAddr};

/// A TCP segment to forge. Ports and numbers in host order.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Source address (the one being impersonated).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sent whatever the flags).
    pub ack: u32,
    /// Flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16).
    pub flags: u8,
    /// IP TTL / hop limit.
    pub ttl: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

/// TCP flag RST.
pub const RST: u8 = 0x04;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &byte in *chunk {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Segment {
    /// The TCP header and payload with a correct checksum.
    fn tcp_bytes(&self) -> Vec<u8> {
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, self.flags]);
        tcp.extend_from_slice(&65535u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&self.payload);
        let len = (tcp.len() as u32).to_be_bytes();
        let sum = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum(&[&s.octets(), &d.octets(), &[0, 6], &len[2..], &tcp])
            }
            (s, d) => {
                let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) else {
                    return tcp; // mixed families: rejected by send()
                };
                checksum(&[&s.octets(), &d.octets(), &len, &[0, 0, 0, 6], &tcp])
            }
        };
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        tcp
    }

    /// Sends the segment from a raw socket of the calling thread's network
    /// namespace (IPv4: the whole IP header is ours; IPv6: the kernel adds
    /// it, with our source address, which must be one of its own or
    /// `ip_nonlocal_bind`... so on IPv6 the source must be local).
    pub fn send(&self) -> io::Result<()> {
        let tcp = self.tcp_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let total = (20 + tcp.len()) as u16;
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0, self.ttl, 6, 0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let sum = checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                ip.extend_from_slice(&tcp);
                send_raw_v4(&ip, dst)
            }
            (IpAddr::V6(_), IpAddr::V6(dst)) => {
                let addr = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: dst.octets(),
                    },
                    sin6_scope_id: 0,
                };
                send_raw(
                    libc::AF_INET6,
                    libc::IPPROTO_TCP,
                    &tcp,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in6>(),
                    Some(self.ttl),
                )
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination of different families",
            )),
        }
    }
}

/// Sends a whole IPv4 packet (header included, IPPROTO_RAW) to `dst`.
fn send_raw_v4(packet: &[u8], dst: std::net::Ipv4Addr) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    send_raw(
        libc::AF_INET,
        libc::IPPROTO_RAW,
        packet,
        (&raw const addr).cast(),
        size_of::<libc::sockaddr_in>(),
        None,
    )
}

fn send_raw(
    family: libc::c_int,
    protocol: libc::c_int,
    bytes: &[u8],
    addr: *const libc::sockaddr,
    addr_len: usize,
    hop_limit: Option<u8>,
) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(hops) = hop_limit {
            let hops = libc::c_int::from(hops);
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                (&raw const hops).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let sent = libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            addr,
            addr_len as libc::socklen_t,
        );
        let error = io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// An ICMP Time Exceeded (IPv4) that claims a TCP segment expired at
/// `router`: what an attacker sends to plant a fake hop in a trace. It
/// quotes an IPv4 header and the first 8 bytes of the TCP header (ports and
/// sequence number), the minimum RFC 792 asks of a router.
#[derive(Clone, Debug)]
pub struct TimeExceededV4 {
    /// The router it claims to come from (any address: IPv4 raw sockets
    /// send whatever source they are given).
    pub router: std::net::Ipv4Addr,
    /// Where it goes: the sender of the quoted segment.
    pub to: std::net::Ipv4Addr,
    /// Quoted segment's source address (normally `to`).
    pub quoted_src: std::net::Ipv4Addr,
    /// Quoted segment's destination address.
    pub quoted_dst: std::net::Ipv4Addr,
    /// Quoted source port.
    pub sport: u16,
    /// Quoted destination port.
    pub dport: u16,
    /// Quoted sequence number.
    pub seq: u32,
}

impl TimeExceededV4 {
    /// The whole IPv4 packet, checksums included.
    fn bytes(&self) -> Vec<u8> {
        let mut quoted = vec![0x45, 0, 0, 41, 0, 0, 0x40, 0, 1, 6, 0, 0];
        quoted.extend_from_slice(&self.quoted_src.octets());
        quoted.extend_from_slice(&self.quoted_dst.octets());
        let sum = checksum(&[&quoted]);
        quoted[10..12].copy_from_slice(&sum.to_be_bytes());
        quoted.extend_from_slice(&self.sport.to_be_bytes());
        quoted.extend_from_slice(&self.dport.to_be_bytes());
        quoted.extend_from_slice(&self.seq.to_be_bytes());
        let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let sum = checksum(&[&icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&self.router.octets());
        ip.extend_from_slice(&self.to.octets());
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&icmp);
        ip
    }

    /// Sends it from a raw socket of the calling thread's namespace.
    pub fn send(&self) -> io::Result<()> {
        send_raw_v4(&self.bytes(), self.to)
    }
}

/// A TCP segment (IPv4) as a [`TcpSnifferV4`] saw it arrive.
#[derive(Clone, Copy, Debug)]
pub struct Sniffed {
    /// Source address.
    pub src: std::net::Ipv4Addr,
    /// Destination address.
    pub dst: std::net::Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// IP TTL as received.
    pub ttl: u8,
    /// TCP payload bytes.
    pub payload_len: usize,
}

/// Copies of the IPv4 TCP segments the namespace it was made in receives
/// (a raw socket: what an attacker on the visitor's host sees of the
/// server's probes).
pub struct TcpSnifferV4(socket2::Socket);

impl TcpSnifferV4 {
    /// Opens it in the calling thread's namespace; [`next_segment`](Self::next_segment)
    /// waits at most `timeout` for a segment.
    pub fn new(timeout: std::time::Duration) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::from(libc::SOCK_RAW),
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(Self(socket))
    }

    /// The next segment, or `None` if none came within the timeout.
    pub fn next_segment(&mut self) -> io::Result<Option<Sniffed>> {
        use std::io::Read as _;
        let mut buf = [0u8; 2048];
        let len = match self.0.read(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let packet = &buf[..len];
        let ihl = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
        let Some(tcp) = packet.get(ihl..).filter(|tcp| ihl >= 20 && tcp.len() >= 20) else {
            return Ok(None);
        };
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(len);
        let header_len = usize::from(tcp[12] >> 4) * 4;
        let octets = |at: usize| {
            std::net::Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3])
        };
        Ok(Some(Sniffed {
            src: octets(12),
            dst: octets(16),
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ttl: packet[8],
            payload_len: total.saturating_sub(ihl + header_len),
        }))
    }
}

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
                    &ip,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>(),
                    None,
                )
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

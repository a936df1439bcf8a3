//! Tiny probes for tests, without raw sockets: a UDP datagram with a chosen
//! TTL whose ICMP error is read from the socket's error queue
//! (`IP_RECVERR`/`IPV6_RECVERR`), and ICMP echo over ICMP datagram sockets.
//!
//! These functions use the network namespace of the calling thread; call them
//! through [`Netns::run`](crate::Netns::run) (or the [`Netns::udp_probe`] /
//! [`Netns::ping`] shorthands).
//!
//! [`Netns::udp_probe`]: crate::Netns::udp_probe
//! [`Netns::ping`]: crate::Netns::ping

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// What came back for a [`udp_probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeReply {
    /// An ICMP (v4) or ICMPv6 error about the probe.
    Icmp {
        /// The offender: the node that sent the error.
        from: IpAddr,
        /// ICMP type (ICMPv6 type for IPv6).
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// A UDP datagram came back (something listens at the destination).
    Answer,
    /// Nothing arrived within the timeout.
    Timeout,
}

impl ProbeReply {
    /// The sender of an ICMP "time exceeded in transit" (v4 11/0, v6 3/0).
    pub fn time_exceeded_from(&self) -> Option<IpAddr> {
        self.icmp_from((11, 0), (3, 0))
    }

    /// The sender of an ICMP "port unreachable" (v4 3/3, v6 1/4).
    pub fn port_unreachable_from(&self) -> Option<IpAddr> {
        self.icmp_from((3, 3), (1, 4))
    }

    /// The offender if this is an ICMP error of (type, code) `v4` / `v6`.
    fn icmp_from(&self, v4: (u8, u8), v6: (u8, u8)) -> Option<IpAddr> {
        let ProbeReply::Icmp {
            from,
            icmp_type,
            code,
        } = *self
        else {
            return None;
        };
        let wanted = if from.is_ipv4() { v4 } else { v6 };
        (wanted == (icmp_type, code)).then_some(from)
    }
}

/// Sends one UDP datagram to `dst` with TTL / hop limit `ttl` and waits up to
/// `timeout` for an ICMP error or an answer.
pub fn udp_probe(dst: SocketAddr, ttl: u8, timeout: Duration) -> io::Result<ProbeReply> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any)?;
    let fd = sock.as_raw_fd();
    match dst {
        SocketAddr::V4(_) => {
            sock.set_ttl(ttl.into())?;
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
        }
        SocketAddr::V6(_) => {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl.into())?;
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)?;
        }
    }
    sock.send_to(b"netray-testbed probe", dst)?;

    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ProbeReply::Timeout);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // POLLERR is always reported: something sits in the error queue.
        if pfd.revents & libc::POLLERR != 0 {
            match read_errqueue(fd) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                // A pending socket error without a queue entry: clear it so
                // poll stops reporting it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sock.take_error()?;
                }
                Err(e) => return Err(e),
            }
        } else if pfd.revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 64];
            sock.recv_from(&mut buf)?;
            return Ok(ProbeReply::Answer);
        }
    }
}

/// Reads one entry from the error queue; `None` if it was not an ICMP error.
fn read_errqueue(fd: RawFd) -> io::Result<Option<ProbeReply>> {
    let mut data = [0u8; 256];
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 64]>();
    // SAFETY: msg points at live buffers of the stated sizes.
    if unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: msg was filled by recvmsg; CMSG_* walk within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null cmsg from CMSG_FIRSTHDR/NXTHDR points into `control`.
        let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
        if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
            || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
        {
            // SAFETY: for these cmsg types the kernel stores a
            // sock_extended_err followed by the offender's sockaddr
            // (SO_EE_OFFENDER); the buffer may be unaligned, so read_unaligned.
            let (ee, from) = unsafe {
                let ee_ptr = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                (
                    ee_ptr.read_unaligned(),
                    sockaddr_ip(libc::SO_EE_OFFENDER(ee_ptr)),
                )
            };
            let icmp =
                ee.ee_origin == libc::SO_EE_ORIGIN_ICMP || ee.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
            if let (true, Some(from)) = (icmp, from) {
                return Ok(Some(ProbeReply::Icmp {
                    from,
                    icmp_type: ee.ee_type,
                    code: ee.ee_code,
                }));
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    Ok(None)
}

/// The IP address in a sockaddr_in / sockaddr_in6.
///
/// # Safety
/// `sa` must point to a readable sockaddr of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: guaranteed by the caller; reads are unaligned-safe.
    unsafe {
        match libc::c_int::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = sa.cast::<libc::sockaddr_in>().read_unaligned();
                Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let sin6 = sa.cast::<libc::sockaddr_in6>().read_unaligned();
                Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

/// Pings `dst` (ICMP or ICMPv6 echo) every 100 ms until a reply arrives
/// (`Ok(true)`) or `timeout` passes (`Ok(false)`).
///
/// Uses ICMP datagram sockets, which need the caller's group in
/// `net.ipv4.ping_group_range` (testbed namespaces allow every group).
pub fn ping(dst: IpAddr, timeout: Duration) -> io::Result<bool> {
    let (domain, proto, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own. std's UdpSocket only issues generic
    // datagram calls (connect/send/recv), which ICMP datagram sockets support.
    let sock = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // The kernel fills in the echo id (from the socket) and the checksum, and
    // only delivers replies to our id from the connected peer.
    sock.connect((dst, 0))?;
    let deadline = Instant::now() + timeout;
    let mut seq: u16 = 0;
    while Instant::now() < deadline {
        seq = seq.wrapping_add(1);
        let [hi, lo] = seq.to_be_bytes();
        // A send can fail with an error left by an earlier ICMP error
        // (e.g. host unreachable); like a lost reply, that means "try again".
        let _ = sock.send(&[request, 0, 0, 0, 0, 0, hi, lo, b'n', b'r', b't']);
        let wait_until = (Instant::now() + Duration::from_millis(100)).min(deadline);
        while let Some(left) = wait_until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 128];
            // Errors are timeouts or ICMP errors (unreachable, ...) reported
            // on the connected socket: keep trying until the deadline.
            if matches!(sock.recv(&mut buf), Ok(n) if n > 0 && buf[0] == reply) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int together with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

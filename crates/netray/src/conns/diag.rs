//! Live counters of open connections for `--interval`, from the kernel's
//! sock_diag interface (NETLINK_SOCK_DIAG, `INET_DIAG_INFO` = `struct
//! tcp_info`, as `ss -ti` reads them): no kernel hook, no cost between
//! intervals.
//!
//! sock_diag sees the sockets of one network namespace: the one the netlink
//! socket was created in. [`socket_in_netns`] creates one inside another
//! namespace (that of a connection's process), so connections made in other
//! namespaces get live counters too.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const IPPROTO_TCP: u8 = 6;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// The `tcp_info` fields `--interval` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state`.
    pub state: u8,
    /// `tcpi_rtt`: smoothed RTT in µs.
    pub rtt_us: u32,
    /// `tcpi_total_retrans`.
    pub total_retrans: u32,
    /// `tcpi_bytes_acked` (counts the SYN and FIN like the kernel does).
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`.
    pub bytes_received: u64,
}

/// `(local, remote)` → counters.
pub type Snapshot = HashMap<(SocketAddr, SocketAddr), TcpInfo>;

/// A sock_diag netlink socket in the calling thread's network namespace.
pub fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sock_diag socket inside the network namespace `ns` (a
/// `/proc/PID/ns/net` path), created on a short-lived thread.
pub fn socket_in_netns(ns: &Path) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with an open namespace fd; only this thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            socket()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sock_diag thread panicked")))
    })
}

fn request(family: u8) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + 56);
    msg.extend_from_slice(&(16u32 + 56).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.push(family);
    msg.push(IPPROTO_TCP);
    msg.push(1 << (INET_DIAG_INFO - 1));
    msg.push(0);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    msg.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: wildcard for dumps
    msg
}

/// Dumps every TCP socket of `family` (`AF_INET`/`AF_INET6`) seen by `sock`.
pub fn dump(sock: &OwnedFd, family: i32, out: &mut Snapshot) -> io::Result<()> {
    let req = request(family as u8);
    // SAFETY: sending a buffer we own to the kernel (nl_pid 0).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse(&buf[..n as usize], out)? {
            return Ok(());
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn sockaddr(family: u8, addr: &[u8], port_be: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(port_be.try_into().ok()?);
    let ip = if i32::from(family) == libc::AF_INET6 {
        // IPv4-mapped: as events show them.
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr.get(..16)?).ok()?)).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr.get(..4)?).ok()?))
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one datagram of a dump; `Ok(true)` at the end of the dump.
pub fn parse(mut buf: &[u8], out: &mut Snapshot) -> io::Result<bool> {
    while buf.len() >= 16 {
        let len = u32_at(buf, 0).unwrap_or(0) as usize;
        let kind = u16_at(buf, 4).unwrap_or(0);
        if len < 16 || len > buf.len() {
            return Err(io::Error::other("malformed netlink message"));
        }
        let payload = &buf[16..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).unwrap_or(0) as i32;
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            SOCK_DIAG_BY_FAMILY if payload.len() >= DIAG_MSG_LEN => {
                let family = payload[0];
                let local = sockaddr(family, &payload[8..24], &payload[4..6]);
                let remote = sockaddr(family, &payload[24..40], &payload[6..8]);
                let mut attrs = &payload[DIAG_MSG_LEN..];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16_at(attrs, 0).unwrap_or(0));
                    let atype = u16_at(attrs, 2).unwrap_or(0);
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if atype == INET_DIAG_INFO
                        && let (Some(local), Some(remote)) = (local, remote)
                    {
                        let info = &attrs[4..alen];
                        out.insert(
                            (local, remote),
                            TcpInfo {
                                state: info.first().copied().unwrap_or(0),
                                rtt_us: u32_at(info, 68).unwrap_or(0),
                                total_retrans: u32_at(info, 100).unwrap_or(0),
                                bytes_acked: u64_at(info, 120).unwrap_or(0),
                                bytes_received: u64_at(info, 128).unwrap_or(0),
                            },
                        );
                    }
                    let step = (alen + 3) & !3;
                    attrs = attrs.get(step..).unwrap_or(&[]);
                }
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        buf = buf.get(step..).unwrap_or(&[]);
    }
    Ok(false)
}

/// Both families of the namespace `sock` lives in.
pub fn snapshot(sock: &OwnedFd) -> io::Result<Snapshot> {
    let mut out = Snapshot::new();
    dump(sock, libc::AF_INET, &mut out)?;
    dump(sock, libc::AF_INET6, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_connection() {
        // Needs no privileges: sock_diag dumps are open to every user.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut server, &[7u8; 1000]).unwrap();
        let mut buf = [0u8; 1000];
        std::io::Read::read_exact(&mut (&client), &mut buf).unwrap();
        let snap = snapshot(&socket().unwrap()).unwrap();
        let key = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        let info = snap.get(&key).expect("the server side is listed");
        assert_eq!(info.state, 1);
        // Acknowledged before read_exact returned? Not necessarily: at least
        // the SYN, at most SYN + 1000.
        assert!((1..=1001).contains(&info.bytes_acked), "{info:?}");
        let key = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(snap.get(&key).map(|i| i.bytes_received), Some(1000));
    }

    #[test]
    fn rejects_truncated_messages() {
        let mut out = Snapshot::new();
        let mut msg = vec![0u8; 16];
        msg[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse(&msg, &mut out).is_err());
        msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse(&msg, &mut out).unwrap());
    }
}

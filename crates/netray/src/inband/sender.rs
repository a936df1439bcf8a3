//! Raw sockets that send complete IP packets (probes) built in userspace.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use netray_common::inband::PROBE_MARK;

/// One raw socket per family, `IPPROTO_RAW` (we write the IP header).
#[derive(Debug)]
pub struct ProbeSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL for both families.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("opening a raw socket (needs CAP_NET_RAW): {error}"),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The egress capture skips marked packets: probes must not be taken for
    // the connection's own segments. Setting a mark needs CAP_NET_ADMIN.
    let mark = PROBE_MARK;
    // SAFETY: valid fd and option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("marking the probe socket (needs CAP_NET_ADMIN): {error}"),
        ));
    }
    Ok(fd)
}

impl ProbeSender {
    /// Opens both sockets in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
        })
    }

    /// Sends `packet` (a complete IP packet) towards `dst`.
    pub fn send(&self, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        let rc = match dst {
            IpAddr::V4(ip) => {
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: valid fd, buffer and sockaddr of the stated length.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const addr).cast(),
                        std::mem::size_of_val(&addr) as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(ip) => {
                let addr = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above.
                unsafe {
                    libc::sendto(
                        self.v6.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const addr).cast(),
                        std::mem::size_of_val(&addr) as libc::socklen_t,
                    )
                }
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

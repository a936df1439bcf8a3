//! A minimal blocking HTTP/1.1 client for tests and the demo: one request
//! per connection (`Connection: close`), plus what the client's TCP saw of
//! that connection (retransmissions, reset), so callers can check that
//! tracing a connection did not disturb it.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

/// A response and the client-side view of its connection.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code (0 if the status line was unreadable).
    pub status: u16,
    /// The header block, as text.
    pub headers: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Segments the client retransmitted on this connection after the
    /// handshake (TCP_INFO): what a server's probes could have caused. A SYN
    /// retransmitted during the handshake (a burst of hundreds of connects
    /// at once sometimes loses one, 1 s before anything is traced) is not
    /// counted.
    pub client_retransmits: u32,
    /// Of those, how many the server reported as duplicates (D-SACK, RFC
    /// 2883): the original had arrived, so the retransmission was the
    /// client's timer firing early (a tail loss probe on a stalled machine),
    /// not a segment lost or swallowed on the way.
    pub client_retransmits_dsacked: u32,
    /// The connection ended with a reset instead of a clean close.
    pub reset: bool,
}

impl Response {
    /// What disturbed this connection as its client saw it, if anything: a
    /// reset, or retransmissions whose original the server never reported
    /// receiving (segments that may have been lost). `None` on a connection
    /// that tracing left alone.
    pub fn disturbance(&self) -> Option<String> {
        if self.reset {
            return Some("the traced connection was reset".into());
        }
        let undelivered = self
            .client_retransmits
            .saturating_sub(self.client_retransmits_dsacked);
        (undelivered > 0).then(|| {
            format!(
                "the client had to retransmit on the traced connection ({} retransmissions, {} reported as duplicates by the server)",
                self.client_retransmits, self.client_retransmits_dsacked
            )
        })
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers.lines().find_map(|line| {
            line.to_ascii_lowercase()
                .starts_with(&prefix)
                .then(|| line[prefix.len()..].trim().to_string())
        })
    }
}

/// `GET path` with the given `Accept`, in the calling thread's network
/// namespace; waits at most `timeout` for the whole response.
pub fn get(addr: SocketAddr, path: &str, accept: &str, timeout: Duration) -> io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    get_on(stream, path, accept, timeout)
}

/// Like [`get`], from the local address `source` (one of the namespace's
/// own, e.g. [`crate::visitor_addr`]).
pub fn get_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> io::Result<Response> {
    get_on(connect_bound(source, addr, timeout)?, path, accept, timeout)
}

/// A TCP connection to `addr` from the local address `source` (one of the
/// calling thread's namespace's own), any port.
pub fn connect_bound(
    source: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

fn get_on(
    mut stream: TcpStream,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> io::Result<Response> {
    stream.set_read_timeout(Some(timeout))?;
    let in_handshake = RetransmitCounts::of(&stream)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: netray\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let reset = match stream.read_to_end(&mut raw) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
        Err(e) => return Err(e),
    };
    let at_end = RetransmitCounts::of(&stream)?;
    let client_retransmits = at_end.total.saturating_sub(in_handshake.total);
    let client_retransmits_dsacked = at_end.dsacked.saturating_sub(in_handshake.dsacked);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("response has no end of headers"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut response = Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
        client_retransmits,
        client_retransmits_dsacked,
        reset,
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body);
    }
    Ok(response)
}

/// The body of a `Transfer-Encoding: chunked` message, decoded (chunk
/// extensions ignored; stops at the last chunk or where the data ends).
pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// What TCP_INFO says of a connection's retransmissions.
struct RetransmitCounts {
    /// `tcpi_total_retrans`.
    total: u32,
    /// `tcpi_dsack_dups` (Linux 4.19+): segments the peer reported as
    /// received twice.
    dsacked: u32,
}

impl RetransmitCounts {
    fn of(stream: &TcpStream) -> io::Result<Self> {
        // SAFETY: tcp_info is plain data; zeroed is valid.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointer and length.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // A kernel older than the field returns a shorter struct.
        let dsack_end = std::mem::offset_of!(libc::tcp_info, tcpi_dsack_dups) + 4;
        if (len as usize) < dsack_end {
            return Err(io::Error::other(format!(
                "TCP_INFO of {len} bytes has no tcpi_dsack_dups (Linux 4.19+)"
            )));
        }
        Ok(Self {
            total: info.tcpi_total_retrans,
            dsacked: info.tcpi_dsack_dups,
        })
    }
}

/// A TCP connection to `addr` from `local_port` of the calling thread's
/// namespace, with SO_REUSEADDR so that a test can use one 4-tuple for
/// several connections in a row.
pub fn connect_from(addr: SocketAddr, local_port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    let any: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    socket.bind(&SocketAddr::new(any, local_port).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"zz\r\n"), b"");
        assert_eq!(dechunk(b"10\r\nshort"), b"");
    }
}

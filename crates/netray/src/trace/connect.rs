//! Opening the connection to trace: pick the source address, bind, register
//! the flow with the capture (before the SYN leaves, so the kernel programs
//! see the whole handshake), connect, and optionally talk a little so the
//! server keeps the connection open.
//!
//! What the probes need is a byte range the server has acknowledged. The
//! handshake alone provides one: the SYN's sequence number, and the bytes
//! just below it, are "old" to the server, which answers a one-byte segment
//! there with a duplicate ACK carrying a D-SACK block (RFC 2883) naming it,
//! exactly as for already-delivered data. So a plain connect is enough for
//! any TCP service, including ones that speak first (SSH, SMTP) or never;
//! `--send http` / `--send tls` only make servers that drop idle
//! connections keep this one while `--watch` runs.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
};

use crate::inband::{
    Connection,
    capture::{Capture, FlowSubscription, flow_key},
};

/// What to send once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Send {
    /// Nothing: the handshake alone is enough to trace.
    #[default]
    None,
    /// An HTTP/1.1 `HEAD /` request with `Connection: keep-alive`; the
    /// response headers are read.
    Http,
    /// A full TLS handshake (the certificate is not verified: nothing secret
    /// is sent, the handshake only keeps the server interested).
    Tls,
}

/// An open connection, registered with the capture.
#[derive(Debug)]
pub struct Opened {
    /// The connection as the tracer wants it.
    pub connection: Connection,
    /// The registered flow of the connection.
    pub subscription: FlowSubscription,
    /// What the server answered to `--send http` (its status line), if anything.
    pub greeting: Option<String>,
    /// Owns the stream: reads and discards whatever the server sends until
    /// it closes. Aborting it (or dropping [`Opened`]) closes the connection.
    reader: JoinHandle<()>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The source address the kernel would use toward `peer` (a connected UDP
/// socket sends nothing).
fn source_for(peer: SocketAddr) -> anyhow::Result<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(any).context("opening a socket to look up the route")?;
    socket
        .connect(peer)
        .map_err(|e| anyhow!("no route to {}: {e}", peer.ip()))?;
    Ok(socket.local_addr()?.ip())
}

/// Connects to `peer` and registers the connection's flow with `capture`.
/// `host` is the name given on the command line (HTTP `Host`, TLS SNI).
pub async fn open(
    capture: &Arc<Capture>,
    peer: SocketAddr,
    host: &str,
    send: Send,
    timeout: Duration,
) -> anyhow::Result<Opened> {
    let source = source_for(peer)?;
    if source == peer.ip() || peer.ip().is_loopback() {
        bail!(
            "{} is this host: its traffic never leaves through a network interface, so \
             there is no path to trace",
            peer.ip()
        );
    }
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("opening a TCP socket")?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding a TCP socket to {source}"))?;
    let local = socket.local_addr().context("reading the bound address")?;
    // Registered before the SYN: the capture sees every segment of the flow.
    let subscription = capture.register(flow_key(local, peer))?;
    let stream = match tokio::time::timeout(timeout, socket.connect(peer)).await {
        Err(_) => bail!(
            "connecting to {peer} timed out after {:.1} s (the host is down, or a \
             firewall drops the SYN; try another port)",
            timeout.as_secs_f64()
        ),
        Ok(Err(error)) => {
            return Err(match error.kind() {
                std::io::ErrorKind::ConnectionRefused => anyhow!(
                    "connection to {peer} refused: nothing listens on port {} (or a firewall \
                     rejects it)",
                    peer.port()
                ),
                _ => anyhow!("connecting to {peer}: {error}"),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let socket_fd: OwnedFd = stream
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the socket")?;
    let connection = Connection {
        local: stream.local_addr().unwrap_or(local),
        peer,
        socket: socket_fd,
    };
    let (greeting, reader) = match send {
        Send::None => (None, tokio::spawn(drain(stream))),
        Send::Http => {
            let (greeting, stream) = http_head(stream, host, timeout).await?;
            (Some(greeting), tokio::spawn(drain(stream)))
        }
        Send::Tls => {
            let stream = super::tls::handshake(stream, host, timeout).await?;
            (None, tokio::spawn(drain(stream)))
        }
    };
    Ok(Opened {
        connection,
        subscription,
        greeting,
        reader,
    })
}

/// Sends `HEAD /` and reads the response headers; returns the status line.
async fn http_head(
    mut stream: TcpStream,
    host: &str,
    timeout: Duration,
) -> anyhow::Result<(String, TcpStream)> {
    let host_header = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let request = format!(
        "HEAD / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: netray/{} (in-band trace)\r\n\
         Accept: */*\r\nConnection: keep-alive\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") && response.len() < 64 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            anyhow!(
                "no HTTP response within {:.1} s (--send http)",
                timeout.as_secs_f64()
            )
        })?
        .context("sending the HTTP request (--send http)")?;
    let status = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if !status.starts_with("HTTP/") {
        bail!(
            "the server did not answer HTTP (--send http): {:?}",
            status.chars().take(60).collect::<String>()
        );
    }
    Ok((status, stream))
}

/// Reads and discards until the server closes the connection (or the task
/// is aborted, which drops and so closes the stream).
async fn drain<S: AsyncRead + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    // Keep our end open until aborted: closing now would send a FIN the
    // trace does not want; the tracer notices the peer's close by itself.
    std::future::pending::<()>().await;
    drop(stream);
}

//! NAT, UDP/ICMP filtering and lossy links.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use netray_testbed::{Family, Netns, RouterBehavior, Side, Topology};

const TIMEOUT: Duration = Duration::from_secs(5);
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn any(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Connects over TCP from `from` to a listener in `to` (at `to_addr`) and
/// returns the peer address the listener sees.
fn peer_seen(from: &Netns, to: &Netns, to_addr: IpAddr) -> Result<IpAddr> {
    // Sockets live in the namespace they were created in, so creating them
    // in `run` is enough; they are used from this thread afterwards.
    let listener = to.run(|| TcpListener::bind((any_of(to_addr), 0)))??;
    let dst = SocketAddr::new(to_addr, listener.local_addr()?.port());
    let _stream = from.run(|| TcpStream::connect_timeout(&dst, TIMEOUT))??;
    // The handshake completed, so the connection is already queued.
    let (_conn, peer) = listener.accept()?;
    Ok(peer.ip())
}

fn any_of(addr: IpAddr) -> IpAddr {
    any(if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    })
}

#[test]
fn nat_toward_server_hides_the_client() -> Result<()> {
    let tb = Topology::chain(3)
        .router(
            2,
            RouterBehavior::Nat {
                masquerade_toward: Side::Server,
            },
        )
        .build()?;
    for family in FAMILIES {
        let peer = peer_seen(tb.client(), tb.server(), tb.server_addr(family))?;
        assert_eq!(peer, tb.router_addr(2, Side::Server, family), "{family:?}");
    }
    Ok(())
}

#[test]
fn nat_toward_client_hides_the_server() -> Result<()> {
    let tb = Topology::chain(2)
        .router(
            2,
            RouterBehavior::Nat {
                masquerade_toward: Side::Client,
            },
        )
        .build()?;
    for family in FAMILIES {
        // Server-initiated connections leave router 2 toward the client.
        let peer = peer_seen(tb.server(), tb.client(), tb.client_addr(family))?;
        assert_eq!(peer, tb.router_addr(2, Side::Client, family), "{family:?}");
        // Client-initiated ones are not translated.
        let peer = peer_seen(tb.client(), tb.server(), tb.server_addr(family))?;
        assert_eq!(peer, tb.client_addr(family), "{family:?}");
    }
    Ok(())
}

#[test]
fn port_forward_puts_the_server_behind_the_router_address() -> Result<()> {
    let tb = Topology::chain(3)
        .router(2, RouterBehavior::PortForward)
        .build()?;
    for family in FAMILIES {
        // The client connects to router 2's client-facing address; the
        // server accepts it, seeing the client's own address.
        let public = tb.router_addr(2, Side::Client, family);
        let peer = peer_seen(tb.client(), tb.server(), public)?;
        assert_eq!(peer, tb.client_addr(family), "{family:?}");
        // The server's own address still works directly.
        let peer = peer_seen(tb.client(), tb.server(), tb.server_addr(family))?;
        assert_eq!(peer, tb.client_addr(family), "{family:?}");
    }
    Ok(())
}

#[test]
fn drop_udp_icmp_router_passes_only_tcp_and_icmp_errors() -> Result<()> {
    let tb = Topology::chain(2)
        .router(1, RouterBehavior::DropUdpIcmp)
        .build()?;
    for family in FAMILIES {
        let server = tb.server_addr(family);
        // TCP gets through.
        assert_eq!(
            peer_seen(tb.client(), tb.server(), server)?,
            tb.client_addr(family)
        );

        // UDP does not.
        let rx = tb.server().run(|| UdpSocket::bind((any(family), 0)))??;
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        let dst = SocketAddr::new(server, rx.local_addr()?.port());
        let tx = tb.client().run(|| UdpSocket::bind((any(family), 0)))??;
        for _ in 0..5 {
            tx.send_to(b"x", dst)?;
        }
        let err = rx
            .recv(&mut [0u8; 8])
            .expect_err("UDP crossed the DropUdpIcmp router");
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );

        // Echo requests do not, but the router itself still answers.
        assert!(
            !tb.client().ping(server, Duration::from_millis(500))?,
            "{family:?}: ping crossed"
        );
        assert!(
            tb.client()
                .ping(tb.router_addr(1, Side::Client, family), TIMEOUT)?
        );

        // ICMP errors are forwarded: a TCP SYN whose TTL expires at router 2
        // fails with "host unreachable" instead of timing out (at once for
        // IPv4; IPv6 TCP only gives up on the error for the SYN retransmitted
        // after 1 s).
        let started = Instant::now();
        let err = tb
            .client()
            .run(|| {
                let domain = if family == Family::V4 {
                    socket2::Domain::IPV4
                } else {
                    socket2::Domain::IPV6
                };
                let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                if family == Family::V4 {
                    sock.set_ttl_v4(2)?
                } else {
                    sock.set_unicast_hops_v6(2)?
                }
                sock.connect_timeout(&SocketAddr::new(server, 80).into(), TIMEOUT)
            })?
            .expect_err("connect with ttl 2 cannot succeed");
        assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{family:?}: {err}");
        assert!(started.elapsed() < TIMEOUT);
    }
    Ok(())
}

#[test]
fn lossy_link_drops_about_half() -> Result<()> {
    const SENT: usize = 400;
    let tb = Topology::chain(1).loss(1, 50).build()?;
    for family in FAMILIES {
        let rx = tb.server().run(|| UdpSocket::bind((any(family), 0)))??;
        rx.set_read_timeout(Some(Duration::from_millis(500)))?;
        let dst = SocketAddr::new(tb.server_addr(family), rx.local_addr()?.port());
        let tx = tb.client().run(|| UdpSocket::bind((any(family), 0)))??;
        // Send in small batches and drain in between so no socket buffer or
        // backlog overflow adds to the loss being measured.
        let mut received = 0;
        let mut buf = [0u8; 16];
        for _ in 0..SENT / 20 {
            for _ in 0..20 {
                tx.send_to(b"x", dst)?;
            }
            rx.set_nonblocking(true)?;
            // Give the batch a moment to cross the veths.
            std::thread::sleep(Duration::from_millis(2));
            while rx.recv(&mut buf).is_ok() {
                received += 1;
            }
            rx.set_nonblocking(false)?;
        }
        while rx.recv(&mut buf).is_ok() {
            received += 1;
        }
        // Binomial(400, 0.5): mean 200, sd 10; these bounds are 10 sd away.
        ensure!(
            (100..=300).contains(&received),
            "{family:?}: {received} of {SENT} arrived"
        );
    }
    Ok(())
}

//! The in-band capture on a real kernel: a chain `client — r1 — r2 — r3 —
//! server` (netray-testbed), the capture attached to the server's interface,
//! one TCP connection from the client to the server.
//!
//! For each family: a 1-byte segment the server sends with TTL 2 expires at
//! router 2 and comes back as an ICMP Time Exceeded event naming that router
//! and quoting the segment's sequence number; the client's data comes back
//! as TCP events matching the flow state the kernel keeps; dropping the
//! subscription removes the flow, and dropping the capture detaches the
//! programs.
//!
//! Then hand-made frames, sent raw (AF_PACKET) from the client of a direct
//! link, drive the parser through what real traffic rarely shows: QinQ
//! tags, IPv4 options in outer and quoted headers, IPv6 extension headers
//! (hop-by-hop, destination options, fragment) in outer and quoted headers,
//! a timestamp option after others, truncated and inconsistent headers.
//!
//! Needs root (namespaces, eBPF).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netray::inband::capture::{Capture, FlowSubscription, addr_from_bytes, flow_key};
use netray_common::inband::{EVENT_TCP, EVENT_TIME_EXCEEDED, FlowState, InbandEvent};
use netray_testbed::{Family, Side, Testbed, Topology, forge};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Upper bound for anything to happen; the whole test takes ~1 s.
const TIMEOUT: Duration = Duration::from_secs(5);
const ROUTERS: usize = 3;
const TCP_ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

#[test]
fn ipv4_time_exceeded_and_peer_segments() -> Result<()> {
    scenario(Family::V4)
}

#[test]
fn ipv6_time_exceeded_and_peer_segments() -> Result<()> {
    scenario(Family::V6)
}

/// Both programs pass this kernel's verifier (Debian 6.12's once gave up
/// on the XDP program's TCP option walk: "sequence of 8193 jumps is too
/// complex"); prints how much verifying them took, the figure that tells
/// how close a change brings them to a verifier's limits.
#[test]
fn programs_pass_this_kernels_verifier() -> Result<()> {
    netray::loader::raise_memlock_limit();
    let mut ebpf = aya::Ebpf::load(netray::objects::INBAND)?;
    {
        let started = Instant::now();
        let xdp: &mut aya::programs::Xdp = ebpf
            .program_mut("inband_xdp")
            .context("inband_xdp")?
            .try_into()?;
        xdp.load().context("loading inband_xdp")?;
        let verified = xdp.info()?.verified_instruction_count();
        // verified_insns exists from 5.16 on: None on 5.10.
        eprintln!(
            "inband_xdp: verified instructions {verified:?}, load {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let tc: &mut aya::programs::SchedClassifier = ebpf
        .program_mut("inband_tc_egress")
        .context("inband_tc_egress")?
        .try_into()?;
    tc.load().context("loading inband_tc_egress")?;
    let verified = tc.info()?.verified_instruction_count();
    eprintln!(
        "inband_tc_egress: verified instructions {verified:?}, load {:?}",
        started.elapsed()
    );
    Ok(())
}

fn scenario(family: Family) -> Result<()> {
    let started = Instant::now();
    let tb = Topology::chain(ROUTERS).build()?;
    let iface = tb.ifname(ROUTERS + 1, Side::Client);
    // Sockets and the capture live in the server's namespace, on a thread
    // that joined it; the runtime is created there too.
    tb.server().run(|| -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                in_server_namespace(&tb, family, &iface),
            )
            .await
            .context("the scenario timed out")?
        })
    })??;

    // The Capture (and every subscription) is gone: so are its programs.
    wait_until_detached(&tb, &iface)?;
    eprintln!("{family:?}: {:?}", started.elapsed());
    Ok(())
}

async fn in_server_namespace(tb: &Testbed, family: Family, iface: &str) -> Result<()> {
    let capture = Capture::attach(&[iface.to_string()])?;
    assert_eq!(capture.interfaces(), [iface.to_string()]);
    let programs = attached_programs(tb, iface)?;
    ensure!(
        programs.contains("prog/xdp") && programs.contains("inband_xdp"),
        "XDP not attached to {iface}: {programs}"
    );

    let server_addr = tb.server_addr(family);
    let listener = TcpListener::bind(SocketAddr::new(server_addr, 0)).await?;
    let port = listener.local_addr()?.port();
    let client = tb.client().run(move || {
        std::net::TcpStream::connect_timeout(&SocketAddr::new(server_addr, port), TIMEOUT)
    })??;
    client.set_nonblocking(true)?;
    let mut client = TcpStream::from_std(client)?;
    let (mut server, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .context("accept timed out")??;

    let key = flow_key(server.local_addr()?, server.peer_addr()?);
    let mut flow = capture.register(key)?;
    ensure!(
        capture.register(key).is_err(),
        "a second registration of the same flow must fail"
    );
    flow.set_armed(true)?;
    assert_eq!(flow.state()?.armed, 1);

    // (1) A byte sent with TTL 2 expires at router 2 (r3 is one hop away).
    set_hop_limit(&server, family, 2)?;
    server.write_all(b"x").await?;
    let expired = next_event(&mut flow, |e| e.kind == EVENT_TIME_EXCEEDED).await?;
    set_hop_limit(&server, family, 64)?; // the retransmission gets through
    let state = flow.state()?;
    assert_eq!(expired.flow, key);
    assert_eq!(
        addr_from_bytes(key.family, expired.from_addr),
        tb.router_addr(2, Side::Server, family),
        "Time Exceeded must come from router 2's server-facing address: {expired:?}"
    );
    ensure!(
        state.seen & FlowState::SEEN_LOCAL != 0,
        "egress not seen: {state:?}"
    );
    assert_eq!(
        expired.seq,
        state.local_seq_next.wrapping_sub(1),
        "the quoted sequence number is the byte's: {expired:?} {state:?}"
    );
    assert_eq!(expired.ttl, 1, "quoted TTL as received by router 2");
    let icmp_type = if family == Family::V4 { 11 } else { 3 };
    assert_eq!((expired.icmp_type, expired.icmp_code), (icmp_type, 0));
    ensure!(expired.ifindex != 0 && expired.timestamp_ns != 0);

    let mut byte = [0u8; 1];
    tokio::time::timeout(TIMEOUT, client.read_exact(&mut byte))
        .await
        .context("the retransmitted byte never arrived")??;
    assert_eq!(&byte, b"x");

    // (2) The client's data: TCP events and the peer fields of the state.
    let data = b"hello netray";
    client.write_all(data).await?;
    let mut received = [0u8; 12];
    tokio::time::timeout(TIMEOUT, server.read_exact(&mut received))
        .await
        .context("the client's data never arrived")??;
    let segment = next_event(&mut flow, |e| {
        e.kind == EVENT_TCP && usize::from(e.payload_len) == data.len()
    })
    .await?;
    let state = flow.state()?;
    let client_addr = tb.client_addr(family);
    assert_eq!(addr_from_bytes(key.family, segment.from_addr), client_addr);
    assert_eq!(segment.flow, key);
    ensure!(segment.tcp_flags & TCP_ACK != 0, "{segment:?}");
    assert_eq!(
        segment.ack, state.local_seq_next,
        "the client acknowledges everything we sent"
    );
    assert_eq!(
        state.peer_seq_next,
        segment.seq.wrapping_add(data.len() as u32),
        "{state:?} {segment:?}"
    );
    assert_eq!(state.peer_ack, segment.ack);
    assert_eq!(segment.ttl, 64 - ROUTERS as u8);
    assert_eq!(state.peer_ttl, 64 - ROUTERS as u8);
    ensure!(segment.window > 0, "{segment:?}");
    ensure!(
        state.peer_segments >= 1 && state.local_segments >= 2,
        "{state:?}"
    );
    ensure!(state.seen & FlowState::SEEN_PEER != 0, "{state:?}");
    ensure!(state.local_window > 0, "{state:?}");
    if family == Family::V6 {
        ensure!(
            state.local_flow_label != 0,
            "auto flow label expected: {state:?}"
        );
    } else {
        assert_eq!(state.local_flow_label, 0);
    }
    let options = &segment.options[..usize::from(segment.options_len)];
    match timestamp_option(options) {
        // Linux negotiates timestamps by default: both sides send them.
        Some(tsval) => {
            assert_eq!(state.peer_tsval(), Some(tsval));
            ensure!(
                state.local_tsval().is_some_and(|tsval| tsval != 0),
                "timestamps negotiated but not tracked: {state:?}"
            );
        }
        None => bail!("no timestamp option in {options:?} (tcp_timestamps off?)"),
    }

    // (2b) An off-path forger who knows the 4-tuple but not the sequence
    // numbers: ACKs with random acknowledgment numbers, data and FINs with
    // random sequence numbers, with another TTL. The kernel's TCP ignores
    // them (challenge ACKs at most); the flow state must not move either:
    // the probes would carry the forger's numbers, and a forged FIN would
    // end the flow when ours follows.
    let before = flow.state()?;
    let (client_port, server_port) = (client.local_addr()?.port(), server.local_addr()?.port());
    let forged = tb.client().run(move || -> std::io::Result<usize> {
        let mut sent = 0;
        for i in 0u32..24 {
            // Far from the real numbers: a fixed offset of half the space.
            let seq = before.peer_seq_next.wrapping_add(0x8000_0000 + i * 7919);
            let ack = before.peer_ack.wrapping_add(0x4000_0000 + i * 104_729);
            let (flags, payload) = match i % 3 {
                0 => (forge::ACK, Vec::new()),
                1 => (forge::ACK | PSH, b"forged".to_vec()),
                _ => (forge::ACK | FIN, Vec::new()),
            };
            let segment = forge::Segment {
                src: client_addr,
                dst: server_addr,
                sport: client_port,
                dport: server_port,
                seq,
                ack,
                flags,
                ttl: 33,
                payload,
            };
            segment.send()?;
            sent += 1;
        }
        Ok(sent)
    })??;
    assert_eq!(forged, 24);
    // The forged segments pass the XDP program before the stack: wait until
    // the last one was seen (armed: each one is an event).
    let mut seen_forged = 0;
    while seen_forged < forged {
        next_event(&mut flow, |e| {
            e.kind == EVENT_TCP && e.ttl == 33 - ROUTERS as u8
        })
        .await?;
        seen_forged += 1;
    }
    let after = flow.state().context("forged FINs ended the flow's state")?;
    assert_eq!(
        (after.peer_seq_next, after.peer_ack, after.peer_ttl),
        (before.peer_seq_next, before.peer_ack, before.peer_ttl),
        "forged segments moved the flow state: before {before:?} after {after:?}"
    );
    assert_eq!(after.seen & FlowState::PEER_FIN, 0, "{after:?}");
    // The real peer's next segment still counts.
    client.write_all(b"!").await?;
    tokio::time::timeout(TIMEOUT, server.read_exact(&mut byte))
        .await
        .context("the client's last byte never arrived")??;
    next_event(&mut flow, |e| e.kind == EVENT_TCP && e.payload_len == 1).await?;
    let state = flow.state()?;
    assert_eq!(
        state.peer_seq_next,
        before.peer_seq_next.wrapping_add(1),
        "{state:?}"
    );

    // (2c) A late reader. This runtime has one thread: while this task does
    // not yield, the ring buffer's reader cannot run, as on a machine too
    // busy to schedule it. What the kernel queued meanwhile must reach the
    // subscription through `deliver_pending` (a trace's deadline relies on
    // it), and not before.
    let late = b"late";
    ensure!(client.try_write(late)? == late.len(), "short write");
    std::thread::sleep(Duration::from_millis(300));
    let is_late = |e: &InbandEvent| e.kind == EVENT_TCP && usize::from(e.payload_len) == late.len();
    let early: Vec<InbandEvent> = std::iter::from_fn(|| flow.events.try_recv().ok()).collect();
    ensure!(
        !early.iter().any(is_late),
        "the reader ran while this task did not yield: {early:?}"
    );
    flow.deliver_pending(TIMEOUT).await;
    let delivered: Vec<InbandEvent> = std::iter::from_fn(|| flow.events.try_recv().ok()).collect();
    ensure!(
        delivered.iter().any(is_late),
        "deliver_pending returned before the kernel's event was delivered: {delivered:?}"
    );
    let mut received = [0u8; 4];
    tokio::time::timeout(TIMEOUT, server.read_exact(&mut received))
        .await
        .context("the late bytes never arrived")??;

    // (4) Counters.
    let stats = capture.stats();
    ensure!(stats.icmp_matched >= 1, "{stats:?}");
    ensure!(stats.tcp_reported >= 1, "{stats:?}");
    ensure!(stats.egress_updates >= 2, "{stats:?}");
    ensure!(
        stats.xdp_packets >= stats.icmp_matched + stats.tcp_reported,
        "{stats:?}"
    );
    assert_eq!(stats.ringbuf_drops, 0, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
    assert_eq!(stats.undeliverable, 0, "{stats:?}");

    // (3) Dropping the subscription removes the kernel entry: registering
    // the same flow again (BPF_NOEXIST) works.
    drop(flow);
    let again = capture
        .register(key)
        .context("the flow's map entry survived its subscription")?;
    drop(again);
    drop(capture);
    Ok(())
}

/// Waits for the next event `wanted` accepts, skipping others.
async fn next_event(
    flow: &mut FlowSubscription,
    wanted: impl Fn(&InbandEvent) -> bool,
) -> Result<InbandEvent> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, flow.events.recv())
            .await
            .context("no matching event before the deadline")?
            .context("event channel closed")?;
        if wanted(&event) {
            return Ok(event);
        }
    }
}

/// IP_TTL / IPV6_UNICAST_HOPS of the connection's socket.
fn set_hop_limit(stream: &TcpStream, family: Family, hops: u32) -> Result<()> {
    if family == Family::V4 {
        return Ok(stream.set_ttl(hops)?);
    }
    let value = hops as libc::c_int;
    // SAFETY: setsockopt on an open socket with a correctly sized int.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "IPV6_UNICAST_HOPS: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The TSval of a timestamp option (kind 8, length 10) in raw option bytes.
fn timestamp_option(options: &[u8]) -> Option<u32> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*options.get(i + 1)?);
                if kind == 8 && len == 10 {
                    let tsval = options.get(i + 2..i + 6)?;
                    return Some(u32::from_be_bytes(tsval.try_into().ok()?));
                }
                if len < 2 {
                    return None;
                }
                i += len;
            }
        }
    }
    None
}

/// `ip -d link` of `iface` in the server's namespace: shows the attached
/// XDP program (`prog/xdp id N name inband_xdp`). (bpftool's `net show`
/// does not list tcx programs in every version, so TC is checked through
/// the capture's egress counter instead.)
fn attached_programs(tb: &Testbed, iface: &str) -> Result<String> {
    let link = tb
        .server()
        .exec(&["ip", "-d", "link", "show", "dev", iface])?;
    Ok(String::from_utf8_lossy(&link.stdout).into_owned())
}

/// Link release can be deferred to a kernel work item: poll briefly.
fn wait_until_detached(tb: &Testbed, iface: &str) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = attached_programs(tb, iface)?;
        if !text.contains("prog/xdp") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("programs still attached to {iface} after the capture was dropped:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn crafted_frames_exercise_the_parser() -> Result<()> {
    let tb = Topology::chain(0).build()?;
    let iface = tb.ifname(1, Side::Client);
    let server_mac = mac_of(&tb, tb.namespaces().len() - 1, &iface)?;
    let client_mac = mac_of(&tb, 0, &iface)?;
    let server4 = match tb.server_addr(Family::V4) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => bail!("expected an IPv4 server address"),
    };
    let server6 = match tb.server_addr(Family::V6) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => bail!("expected an IPv6 server address"),
    };
    let peer4 = Ipv4Addr::new(192, 0, 2, 7);
    let router4 = Ipv4Addr::new(198, 51, 100, 1);
    let peer6: Ipv6Addr = "2001:db8::7".parse()?;
    let router6: Ipv6Addr = "2001:db8::1".parse()?;
    let key4 = flow_key(
        SocketAddr::new(server4.into(), 4242),
        SocketAddr::new(peer4.into(), 5555),
    );
    let key6 = flow_key(
        SocketAddr::new(server6.into(), 4243),
        SocketAddr::new(peer6.into(), 5556),
    );
    let eth = |ethertype: u16, payload: &[u8]| -> Vec<u8> {
        [
            &server_mac[..],
            &client_mac[..],
            &ethertype.to_be_bytes(),
            payload,
        ]
        .concat()
    };

    // Timestamp after MSS and SACK-permitted, window scale last.
    let odd_options = [
        2, 4, 5, 180, 4, 2, 8, 10, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 1, 1, 3, 3, 7,
    ];
    let canonical_ts = [1, 1, 8, 10, 1, 2, 3, 4, 0, 0, 0, 9];
    let frames: Vec<Vec<u8>> = vec![
        // v4 Time Exceeded, QinQ-tagged, quoting a header with IPv4 options.
        {
            let quoted_tcp = &tcp(4242, 5555, 0x1122_3344, 0, 0x18, &[], &[])[..8];
            let quoted = ipv4(server4, peer4, 6, 1, &[1, 1, 1, 0], quoted_tcp);
            let icmp = [&[11, 0, 0, 0, 0, 0, 0, 0][..], &quoted].concat();
            let ip = ipv4(router4, server4, 1, 62, &[], &icmp);
            let tags = [&[0, 100, 0x81, 0x00][..], &[0, 200, 0x08, 0x00], &ip].concat();
            eth(0x88a8, &tags)
        },
        // v4 peer segment, outer IPv4 options, odd option layout, 5 bytes.
        eth(
            0x0800,
            &ipv4(
                peer4,
                server4,
                6,
                57,
                &[1, 1, 1, 1, 1, 1, 1, 0],
                &tcp(5555, 4242, 1000, 2000, 0x18, &odd_options, b"hello"),
            ),
        ),
        // v6 Time Exceeded behind destination options, quoting a header
        // with hop-by-hop and (first) fragment headers.
        {
            let tcp8 = &tcp(4243, 5556, 0x5566_7788, 0, 0x18, &[], &[])[..8];
            let frag = [&[6, 0, 0, 0, 0, 0, 0, 42][..], tcp8].concat();
            let hbh = [&[44, 0, 1, 4, 0, 0, 0, 0][..], &frag].concat();
            let quoted = ipv6(server6, peer6, 0, 1, &hbh);
            let icmp = [&[3, 0, 0, 0, 0, 0, 0, 0][..], &quoted].concat();
            let dest_opts = [&[58, 0, 1, 4, 0, 0, 0, 0][..], &icmp].concat();
            eth(0x86dd, &ipv6(router6, server6, 60, 63, &dest_opts))
        },
        // v6 peer segment behind a hop-by-hop header, canonical timestamp.
        {
            let segment = tcp(5556, 4243, 7, 9, 0x10, &canonical_ts, b"abc");
            let hbh = [&[6, 0, 1, 4, 0, 0, 0, 0][..], &segment].concat();
            eth(0x86dd, &ipv6(peer6, server6, 0, 60, &hbh))
        },
        // Ignored: a Time Exceeded quoting an unregistered flow, and one
        // quoting UDP.
        {
            let quoted_tcp = &tcp(1, 2, 3, 0, 0x10, &[], &[])[..8];
            let quoted = ipv4(server4, peer4, 6, 1, &[], quoted_tcp);
            let icmp = [&[11, 0, 0, 0, 0, 0, 0, 0][..], &quoted].concat();
            eth(0x0800, &ipv4(router4, server4, 1, 62, &[], &icmp))
        },
        {
            let quoted = ipv4(server4, peer4, 17, 1, &[], &[0, 53, 0, 53, 0, 8, 0, 0]);
            let icmp = [&[11, 0, 0, 0, 0, 0, 0, 0][..], &quoted].concat();
            eth(0x0800, &ipv4(router4, server4, 1, 62, &[], &icmp))
        },
        // Malformed (6): truncated IPv4 header; IHL 4; TCP data offset 2;
        // IPv6 hop-by-hop header running past the end; truncated VLAN tag;
        // Time Exceeded quoting a truncated header.
        eth(0x0800, &ipv4(peer4, server4, 6, 64, &[], &[])[..10]),
        {
            let mut ip = ipv4(peer4, server4, 6, 64, &[], &[0; 20]);
            ip[0] = 0x44;
            eth(0x0800, &ip)
        },
        {
            let mut segment = tcp(5555, 4242, 1, 1, 0x10, &[], &[]);
            segment[12] = 2 << 4;
            eth(0x0800, &ipv4(peer4, server4, 6, 64, &[], &segment))
        },
        eth(
            0x86dd,
            &ipv6(peer6, server6, 0, 64, &[6, 10, 1, 4, 0, 0, 0, 0]),
        ),
        eth(0x8100, &[0, 1]),
        {
            let quoted = &ipv4(server4, peer4, 6, 1, &[], &[])[..12];
            let icmp = [&[11, 0, 0, 0, 0, 0, 0, 0][..], quoted].concat();
            eth(0x0800, &ipv4(router4, server4, 1, 62, &[], &icmp))
        },
    ];

    tb.server().run(|| -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let capture = Capture::attach(std::slice::from_ref(&iface))?;
            let mut flow4 = capture.register(key4)?;
            let mut flow6 = capture.register(key6)?;
            flow4.set_armed(true)?;
            flow6.set_armed(true)?;
            let sent = tb.client().run(|| send_raw(&iface, &frames))??;
            assert_eq!(sent, frames.len());

            let expired4 = next_event(&mut flow4, |e| e.kind == EVENT_TIME_EXCEEDED).await?;
            assert_eq!(expired4.flow, key4);
            assert_eq!(addr_from_bytes(key4.family, expired4.from_addr), router4);
            assert_eq!(
                (expired4.seq, expired4.ttl, expired4.icmp_type),
                (0x1122_3344, 1, 11)
            );

            let segment4 = next_event(&mut flow4, |e| e.kind == EVENT_TCP).await?;
            assert_eq!(addr_from_bytes(key4.family, segment4.from_addr), peer4);
            assert_eq!(
                (segment4.seq, segment4.ack, segment4.payload_len),
                (1000, 2000, 5)
            );
            assert_eq!(
                (segment4.ttl, segment4.tcp_flags, segment4.window),
                (57, 0x18, 65535)
            );
            assert_eq!(
                &segment4.options[..usize::from(segment4.options_len)],
                &odd_options
            );
            let state4 = flow4.state()?;
            assert_eq!(state4.peer_tsval(), Some(0xaabb_ccdd), "{state4:?}");
            assert_eq!((state4.peer_seq_next, state4.peer_ack), (1005, 2000));

            let expired6 = next_event(&mut flow6, |e| e.kind == EVENT_TIME_EXCEEDED).await?;
            assert_eq!(addr_from_bytes(key6.family, expired6.from_addr), router6);
            assert_eq!(
                (expired6.seq, expired6.ttl, expired6.icmp_type),
                (0x5566_7788, 1, 3)
            );

            let segment6 = next_event(&mut flow6, |e| e.kind == EVENT_TCP).await?;
            assert_eq!(
                (segment6.seq, segment6.ack, segment6.payload_len),
                (7, 9, 3)
            );
            assert_eq!(segment6.ttl, 60);
            let state6 = flow6.state()?;
            assert_eq!(state6.peer_tsval(), Some(0x0102_0304), "{state6:?}");
            assert_eq!(state6.peer_seq_next, 10);

            // The malformed frames are counted, once each, and nothing else
            // is: the kernel's own traffic (ARP, neighbour discovery) parses.
            let deadline = Instant::now() + TIMEOUT;
            let stats = loop {
                let stats = capture.stats();
                if stats.malformed >= 6 && stats.icmp_ignored >= 2 || Instant::now() > deadline {
                    break stats;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(stats.malformed, 6, "{stats:?}");
            assert_eq!(stats.icmp_ignored, 2, "{stats:?}");
            assert_eq!(
                (stats.icmp_matched, stats.tcp_reported),
                (2, 2),
                "{stats:?}"
            );
            assert_eq!(stats.ringbuf_drops, 0, "{stats:?}");

            // The flow table is an LRU (connections to listening ports are
            // tracked from their SYN, and must never fill it): more flows
            // than it holds still register; the least recently used go.
            let mut held = Vec::new();
            for n in 0..66_000u32 {
                let peer = SocketAddr::new(Ipv4Addr::from(0x0a80_0000 + n).into(), 9);
                held.push(
                    capture
                        .register(flow_key(SocketAddr::new(server4.into(), 1), peer))
                        .with_context(|| format!("registration {n}"))?,
                );
            }
            drop(held);
            capture
                .register(key4)
                .err()
                .context("key4 is still registered")?;
            Ok(())
        })
    })??;
    Ok(())
}

/// The MAC address of `iface` in node `node`'s namespace.
fn mac_of(tb: &Testbed, node: usize, iface: &str) -> Result<[u8; 6]> {
    let out = tb
        .node(node)
        .exec(&["cat", &format!("/sys/class/net/{iface}/address")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|b| anyhow::anyhow!("MAC address of {} bytes", Vec::len(&b)))
}

/// Sends each frame as is out of `iface` (AF_PACKET, SOCK_RAW).
fn send_raw(iface: &str, frames: &[Vec<u8>]) -> Result<usize> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain libc calls with valid arguments; the fd is owned below.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}");
    // SAFETY: as above.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    let mut sent = 0;
    for frame in frames {
        // SAFETY: valid buffer and address of the right size.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            n >= 0,
            "sending a raw frame: {}",
            std::io::Error::last_os_error()
        );
        sent += 1;
    }
    Ok(sent)
}

/// An IPv4 packet (checksum left 0: only the capture looks at these).
fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut packet = vec![0x40 | (header_len / 4) as u8, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 1, 0x40, 0, ttl, proto, 0, 0]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(options);
    packet.extend_from_slice(payload);
    packet
}

/// An IPv6 packet; `payload` starts with any extension headers.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[next, hops]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}

/// A TCP segment (window 65535, checksum 0).
fn tcp(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut segment = Vec::with_capacity(header_len + payload.len());
    segment.extend_from_slice(&sport.to_be_bytes());
    segment.extend_from_slice(&dport.to_be_bytes());
    segment.extend_from_slice(&seq.to_be_bytes());
    segment.extend_from_slice(&ack.to_be_bytes());
    segment.extend_from_slice(&[((header_len / 4) as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(options);
    segment.extend_from_slice(payload);
    segment
}

//! The packet capture on a real kernel: a direct link `client — server`
//! (netray-testbed), the capture attached to the server's interface.
//!
//! Known traffic (after warming the neighbour caches, so ARP/NDP stay out of
//! the way of the filters that would see them): `N` UDP datagrams over
//! IPv4 to port 7000, `N` over IPv6 to port 7001, `P` echo requests and
//! replies per family. For each filter, the kernel's matched count must be
//! exact; the frames of an unfiltered capture, written to a classic pcap
//! and run through `tcpdump -r FILTER`, must give the same packets as the
//! userspace evaluator; dropping the capture leaves nothing attached.
//!
//! Needs root (namespaces, eBPF). Each test builds its own namespaces, so
//! they run in parallel.

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netray::packets::{
    CaptureCounts, Direction, PacketRecord,
    capture::{CaptureOptions, Directions, FlowEntry, PacketCapture},
    filter::Program,
};
use netray_testbed::{Family, Netns, Side, Testbed, Topology, frames::conformance_frames};

const N: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(5);
const PORT4: u16 = 7000;
const PORT6: u16 = 7001;

/// What a capture run produced.
struct Run {
    counts: CaptureCounts,
    records: Vec<PacketRecord<'static>>,
    flows: Vec<FlowEntry>,
}

fn testbed() -> Result<(Testbed, String)> {
    let tb = Topology::chain(0).build()?;
    let iface = tb.ifname(1, Side::Client);
    // Warm the neighbour caches both ways: no ARP/NDP during the runs.
    for family in [Family::V4, Family::V6] {
        ensure!(tb.client().ping(tb.server_addr(family), TIMEOUT)?);
        ensure!(tb.server().ping(tb.client_addr(family), TIMEOUT)?);
    }
    Ok((tb, iface))
}

/// Sends the known traffic from the client: `N` UDP datagrams per family
/// to sockets bound on the server (so no ICMP errors come back), then one
/// ping per family.
fn traffic(tb: &Testbed, pings: bool) -> Result<()> {
    let (server4, server6) = (tb.server_addr(Family::V4), tb.server_addr(Family::V6));
    let sinks = tb.server().run(|| -> Result<Vec<UdpSocket>> {
        Ok(vec![
            UdpSocket::bind(SocketAddr::new(server4, PORT4))?,
            UdpSocket::bind(SocketAddr::new(server6, PORT6))?,
        ])
    })??;
    tb.client().run(|| -> Result<()> {
        let v4 = UdpSocket::bind("0.0.0.0:0")?;
        let v6 = UdpSocket::bind("[::]:0")?;
        for i in 0..N {
            v4.send_to(format!("v4 datagram {i}").as_bytes(), (server4, PORT4))?;
            v6.send_to(format!("v6 datagram {i}").as_bytes(), (server6, PORT6))?;
        }
        Ok(())
    })??;
    // Wait until the datagrams arrived (then they were seen by XDP).
    for sink in &sinks {
        sink.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; 64];
        for _ in 0..N {
            sink.recv(&mut buf).context("a datagram did not arrive")?;
        }
    }
    if pings {
        ensure!(tb.client().ping(server4, TIMEOUT)?);
        ensure!(tb.client().ping(server6, TIMEOUT)?);
    }
    Ok(())
}

/// Attaches a capture with `filter` on the server, sends the traffic,
/// waits for the counters to settle and collects everything.
fn run(tb: &Testbed, iface: &str, filter: &str, options: CaptureOptions) -> Result<Run> {
    run_with(tb, iface, filter, options, &|| traffic(tb, true))
}

/// [`run`] with other traffic.
fn run_with(
    tb: &Testbed,
    iface: &str,
    filter: &str,
    options: CaptureOptions,
    traffic: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Run> {
    run_in(tb.server(), iface, filter, options, traffic)
}

/// [`run_with`] on an interface of namespace `ns`.
fn run_in(
    ns: &Netns,
    iface: &str,
    filter: &str,
    options: CaptureOptions,
    traffic: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Run> {
    let program = Program::compile(filter, 262_144)?;
    ns.run(|| -> Result<Run> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut capture = PacketCapture::attach(&[iface.to_string()], &program, options)?;
            let programs = attached_in(ns, iface)?;
            if options.direction != Directions::Out {
                ensure!(
                    programs.contains("packets_xdp"),
                    "XDP not attached: {programs}"
                );
            }
            let ids = capture.program_ids();
            // Per direction: the attached program, the filter, the capture
            // program.
            let wanted = if options.direction == Directions::Both {
                6
            } else {
                3
            };
            ensure!(ids.len() == wanted, "programs loaded: {ids:?}");
            // Blocking here is fine: records wait in the ring buffer.
            traffic()?;
            // Let late egress (echo replies) be counted, then stabilize.
            let mut last = capture.counts();
            let deadline = Instant::now() + TIMEOUT;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = capture.counts();
                if now == last || Instant::now() > deadline {
                    break;
                }
                last = now;
            }
            let counts = capture.counts();
            let mut records = Vec::new();
            // Flow mode delivers into the flow table, not the ring.
            while !options.flows && records.len() < counts.delivered as usize {
                match tokio::time::timeout(TIMEOUT, capture.next()).await {
                    Ok(Some(record)) => records.push(record),
                    _ => bail!(
                        "only {} of {} records arrived",
                        records.len(),
                        counts.delivered
                    ),
                }
            }
            let flows = capture.flows();
            drop(capture);
            wait_until_freed(&ids)?;
            Ok(Run {
                counts,
                records,
                flows,
            })
        })
    })?
}

/// The programs are freed once their links are gone (tcx links do not show
/// in this bpftool's `net show`): poll briefly.
fn wait_until_freed(ids: &[u32]) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    for id in ids {
        loop {
            let show = Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string()])
                .output()?;
            if !show.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "program {id} still loaded after the capture was dropped: {}",
                    String::from_utf8_lossy(&show.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn attached(tb: &Testbed, iface: &str) -> Result<String> {
    attached_in(tb.server(), iface)
}

fn attached_in(ns: &Netns, iface: &str) -> Result<String> {
    let link = ns.exec(&["ip", "-d", "link", "show", "dev", iface])?;
    let tcx = ns.exec(&["bpftool", "net", "show", "dev", iface])?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&link.stdout),
        String::from_utf8_lossy(&tcx.stdout)
    ))
}

/// Link release can be deferred to a kernel work item: poll briefly.
fn wait_until_detached(tb: &Testbed, iface: &str) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = attached(tb, iface)?;
        if !text.contains("prog/xdp") && !text.contains("packets_") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("programs still attached to {iface} after the capture was dropped:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exact_counts_per_filter() -> Result<()> {
    let (tb, iface) = testbed()?;
    let client4 = tb.client_addr(Family::V4);
    let client6 = tb.client_addr(Family::V6);
    // (filter, matched): UDP datagrams are ingress only; each ping is one
    // request in and one reply out.
    let cases: Vec<(String, u64)> = vec![
        (format!("udp port {PORT4}"), N as u64),
        (format!("udp port {PORT6}"), N as u64),
        ("udp".into(), 2 * N as u64),
        (format!("ip and src host {client4} and udp"), N as u64),
        (format!("ip6 and dst host {client6}"), 1),
        (format!("src host {client6} and not icmp6"), N as u64),
        ("icmp".into(), 2),
        (format!("icmp6 and host {client6}"), 2),
        (
            format!("portrange {PORT4}-{PORT6} and (ip or ip6)"),
            2 * N as u64,
        ),
        ("tcp or vlan".into(), 0),
    ];
    for (filter, expected) in cases {
        let run = run(&tb, &iface, &filter, CaptureOptions::default())?;
        let CaptureCounts {
            seen,
            matched,
            delivered,
            lost,
        } = run.counts;
        assert_eq!(matched, expected, "filter {filter:?}: {:?}", run.counts);
        assert_eq!((delivered, lost), (matched, 0), "filter {filter:?}");
        assert!(
            seen >= 2 * N as u64 + 4,
            "filter {filter:?}: {:?}",
            run.counts
        );
        let program = Program::compile(&filter, 262_144)?;
        for record in &run.records {
            assert!(
                program.matches(&record.data),
                "{filter:?}: record {record:?}"
            );
            assert_eq!(record.iface, iface);
            assert_eq!(record.wire_len as usize, record.data.len());
        }
        wait_until_detached(&tb, &iface)?;
    }
    Ok(())
}

#[test]
fn directions_and_snaplen() -> Result<()> {
    let (tb, iface) = testbed()?;
    for (direction, want) in [
        (Directions::In, vec![Direction::Ingress]),
        (Directions::Out, vec![Direction::Egress]),
        (
            Directions::Both,
            vec![Direction::Ingress, Direction::Egress],
        ),
    ] {
        let options = CaptureOptions {
            snaplen: 20,
            direction,
            ..CaptureOptions::default()
        };
        let run = run(&tb, &iface, "icmp", options)?;
        assert_eq!(run.counts.matched, want.len() as u64, "{direction:?}");
        let got: Vec<Direction> = run.records.iter().map(|r| r.direction).collect();
        assert_eq!(got, want);
        for record in &run.records {
            assert_eq!(record.data.len(), 20, "snaplen");
            assert!(record.wire_len > 20);
            let age = record.time().elapsed().unwrap_or_default();
            assert!(
                age < Duration::from_secs(30),
                "wall clock conversion: {age:?}"
            );
        }
        wait_until_detached(&tb, &iface)?;
    }
    Ok(())
}

#[test]
fn flow_mode_sums_in_the_kernel() -> Result<()> {
    let (tb, iface) = testbed()?;
    let options = CaptureOptions {
        flows: true,
        ..CaptureOptions::default()
    };
    let run = run(&tb, &iface, "udp", options)?;
    assert!(run.records.is_empty(), "flow mode sends no records");
    assert_eq!(run.counts.matched, 2 * N as u64);
    assert_eq!(run.counts.delivered, 2 * N as u64);
    let v4: Vec<&FlowEntry> = run.flows.iter().filter(|f| f.dport == PORT4).collect();
    let v6: Vec<&FlowEntry> = run.flows.iter().filter(|f| f.dport == PORT6).collect();
    assert_eq!(v4.len(), 1, "{:?}", run.flows);
    assert_eq!(v6.len(), 1, "{:?}", run.flows);
    assert_eq!(
        (v4[0].packets, v4[0].protocol, v4[0].ethertype),
        (N as u64, 17, 0x0800)
    );
    assert_eq!(v4[0].src, tb.client_addr(Family::V4));
    assert_eq!(v4[0].dst, tb.server_addr(Family::V4));
    assert_eq!((v6[0].packets, v6[0].ethertype), (N as u64, 0x86dd));
    assert_eq!(v6[0].dst, tb.server_addr(Family::V6));
    // Ethernet 14 + IPv4 20 + UDP 8 + "v4 datagram i" (13).
    assert_eq!(v4[0].bytes, N as u64 * (14 + 20 + 8 + 13));
    wait_until_detached(&tb, &iface)?;
    Ok(())
}

/// Writes `frames` as a classic pcap (linktype Ethernet), packet `i` at `i` s.
fn write_pcap(path: &std::path::Path, frames: &[&[u8]]) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    file.write_all(&out)?;
    Ok(())
}

#[test]
fn same_packets_as_tcpdump_on_real_traffic() -> Result<()> {
    let (tb, iface) = testbed()?;
    let all = run(&tb, &iface, "", CaptureOptions::default())?;
    ensure!(
        all.records.len() >= 2 * N + 4,
        "{} records",
        all.records.len()
    );
    let frames: Vec<&[u8]> = all.records.iter().map(|r| &r.data[..]).collect();
    let dir = std::env::temp_dir().join(format!("netray-packets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pcap = dir.join("capture.pcap");
    write_pcap(&pcap, &frames)?;
    let client4 = tb.client_addr(Family::V4);
    let server6 = tb.server_addr(Family::V6);
    let filters = [
        "udp".to_string(),
        format!("port {PORT4}"),
        format!("dst port {PORT6}"),
        "icmp or icmp6".into(),
        format!("host {client4}"),
        format!("src host {server6}"),
        "ip6 and not udp".into(),
        "net 10.0.0.0/8 or net fd00::/8".into(),
        "arp or (udp and portrange 6999-7000)".into(),
    ];
    for filter in &filters {
        let program = Program::compile(filter, 262_144)?;
        let ours: Vec<usize> = (0..frames.len())
            .filter(|&i| program.matches(frames[i]))
            .collect();
        let output = Command::new("tcpdump")
            .args(["-n", "-tt", "-r"])
            .arg(&pcap)
            .arg(filter)
            .output()
            .context("running tcpdump")?;
        ensure!(output.status.success(), "tcpdump {filter:?}: {output:?}");
        let theirs: Vec<usize> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split('.').next()?.parse().ok())
            .collect();
        assert_eq!(ours, theirs, "filter {filter:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn bad_filters_are_clear_errors() {
    // libpcap's own messages.
    let error = Program::compile("tcp port 99999", 262_144).unwrap_err();
    assert_eq!(error.message, "illegal port number 99999 > 65535");
    let error = Program::compile("udp and (port 53", 262_144).unwrap_err();
    assert_eq!(error.message, "can't parse filter expression: syntax error");
}

#[test]
fn attach_errors_leave_nothing_attached() -> Result<()> {
    let (tb, iface) = testbed()?;
    let result = tb.server().run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            PacketCapture::attach(
                &[iface.clone(), "does-not-exist0".into()],
                &Program::default(),
                CaptureOptions::default(),
            )
            .map(|_| ())
        })
    })?;
    let error = result.expect_err("a missing interface must fail");
    assert!(
        format!("{error:#}").contains("does-not-exist0"),
        "{error:#}"
    );
    wait_until_detached(&tb, &iface)
}

/// Sends each frame as is out of `iface` (AF_PACKET, SOCK_RAW), in the
/// calling thread's namespace.
fn send_raw(iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}");
    // SAFETY: plain socket(2) call; the fd is owned below.
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
    for frame in frames {
        // SAFETY: valid buffer and address of the right size.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            n == frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Frames real traffic rarely shows, from 192.0.2.0/24 and 2001:db8::/32.
fn crafted_frames() -> Vec<Vec<u8>> {
    use etherparse::{PacketBuilder, VlanId};
    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const BCAST: [u8; 6] = [0xff; 6];
    let v4 = ([192, 0, 2, 1], [192, 0, 2, 2]);
    let v6a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let v6b: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let build = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        f(&mut out);
        out
    };
    let mut frames = vec![
        build(&|out| {
            PacketBuilder::ethernet2(SRC_MAC, BCAST)
                .single_vlan(VlanId::try_new(100).unwrap())
                .ipv4(v4.0, v4.1, 64)
                .udp(1000, 53)
                .write(out, b"vlan")
                .unwrap()
        }),
        build(&|out| {
            PacketBuilder::ethernet2(SRC_MAC, BCAST)
                .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
                .ipv6(v6a, v6b, 64)
                .udp(1000, 53)
                .write(out, b"qinq")
                .unwrap()
        }),
        build(&|out| {
            PacketBuilder::ethernet2(SRC_MAC, BCAST)
                .ipv4(v4.0, v4.1, 64)
                .tcp(40000, 80, 1, 1000)
                .write(out, b"tcp")
                .unwrap()
        }),
        build(&|out| {
            PacketBuilder::ethernet2(SRC_MAC, BCAST)
                .ipv6(v6b, v6a, 64)
                .icmpv6_echo_request(7, 1)
                .write(out, b"ping")
                .unwrap()
        }),
    ];
    // A later IPv4 fragment of a UDP datagram (ports not readable).
    let mut fragment = build(&|out| {
        PacketBuilder::ethernet2(SRC_MAC, BCAST)
            .ipv4(v4.0, v4.1, 64)
            .udp(53, 53)
            .write(out, b"fragment")
            .unwrap()
    });
    fragment[14 + 7] = 8;
    frames.push(fragment);
    // IPv6 UDP behind a Fragment header, and behind a hop-by-hop header.
    let udp6 = build(&|out| {
        PacketBuilder::ethernet2(SRC_MAC, BCAST)
            .ipv6(v6a, v6b, 64)
            .udp(1000, 53)
            .write(out, b"ext")
            .unwrap()
    });
    for (next, ext) in [
        (44u8, [17u8, 0, 0, 0, 0, 0, 0, 1]),
        (0, [17, 0, 1, 4, 0, 0, 0, 0]),
    ] {
        let mut frame = udp6[..54].to_vec();
        frame[14 + 6] = next;
        let len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
        frame[18..20].copy_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&ext);
        frame.extend_from_slice(&udp6[54..]);
        frames.push(frame);
    }
    // ARP request 192.0.2.1 -> 192.0.2.2.
    let mut arp = BCAST.to_vec();
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&v4.0);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&v4.1);
    frames.push(arp);
    // Truncated: an IPv4 UDP header cut after the source port.
    let mut truncated = frames[2].clone();
    truncated[14 + 9] = 17;
    truncated.truncate(14 + 20 + 2);
    frames.push(truncated);
    frames
}

#[test]
fn kernel_and_userspace_agree_on_crafted_frames() -> Result<()> {
    let tb = Topology::chain(0).build()?;
    let server_iface = tb.ifname(1, Side::Client);
    let client_iface = tb.ifname(0, Side::Server);
    let frames = crafted_frames();
    let filters = [
        "",
        "ip",
        "vlan",
        "vlan 100 and port 53",
        "vlan and vlan and ip6 and udp",
        "udp",
        "port 53",
        "not port 53",
        "host 192.0.2.2",
        "arp",
        "net 2001:db8::/32",
        "tcp or icmp6",
    ];
    let options = CaptureOptions {
        direction: Directions::In,
        ..CaptureOptions::default()
    };
    for filter in filters {
        let program = Program::compile(filter, 262_144)?;
        let send = || tb.client().run(|| send_raw(&client_iface, &frames))?;
        let run = run_with(&tb, &server_iface, filter, options, &send)?;
        let expected: Vec<usize> = (0..frames.len())
            .filter(|&i| program.matches(&frames[i]))
            .collect();
        // Other traffic (neighbour discovery...) may match too: only the
        // crafted frames are compared.
        let got: Vec<usize> = (0..frames.len())
            .filter(|&i| run.records.iter().any(|r| r.data == frames[i]))
            .collect();
        assert_eq!(got, expected, "filter {filter:?}");
        assert_eq!(run.counts.lost, 0);
    }
    assert_eq!(frames.len(), 9);
    Ok(())
}

/// The conformance material end to end over veth, both directions: a
/// sample of the frames (every 15th that fits the link), sent raw by the
/// client, captured at the client's TC egress and at the server's XDP
/// ingress, under a sample of the expressions (every 45th, and the
/// benchmark's two): each side keeps exactly the frames libpcap keeps
/// (which `filter_tcpdump_table` checks against tcpdump on every frame).
#[test]
fn conformance_sample_over_veth_both_directions() -> Result<()> {
    let tb = Topology::chain(0).build()?;
    let server_iface = tb.ifname(1, Side::Client);
    let client_iface = tb.ifname(0, Side::Server);
    let frames: Vec<Vec<u8>> = conformance_frames()
        .into_iter()
        .filter(|f| (14..=1514).contains(&f.len()))
        .step_by(15)
        .collect();
    let table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/filter_expressions.txt"),
    )?;
    let mut filters: Vec<&str> = table
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .step_by(45)
        .collect();
    filters.push("tcp port 9");
    filters.push("tcp[tcpflags] & (tcp-syn|tcp-fin) != 0 and not net 10.0.0.0/8");
    let send = || tb.client().run(|| send_raw(&client_iface, &frames))?;
    let mut checked = 0;
    for filter in &filters {
        let program = Program::compile(filter, 262_144)?;
        let expected: Vec<usize> = (0..frames.len())
            .filter(|&i| program.matches(&frames[i]))
            .collect();
        for (ns, iface, direction) in [
            (tb.client(), &client_iface, Directions::Out),
            (tb.server(), &server_iface, Directions::In),
        ] {
            let options = CaptureOptions {
                direction,
                ..CaptureOptions::default()
            };
            let run = run_in(ns, iface, filter, options, &send)?;
            // Other traffic (neighbour discovery...) may match too: only
            // the sent frames are compared.
            let got: Vec<usize> = (0..frames.len())
                .filter(|&i| run.records.iter().any(|r| r.data == frames[i]))
                .collect();
            assert_eq!(got, expected, "filter {filter:?} {direction:?}");
            assert_eq!(run.counts.lost, 0, "filter {filter:?} {direction:?}");
            checked += 1;
        }
    }
    println!(
        "{} frames x {} expressions x 2 directions",
        frames.len(),
        filters.len()
    );
    assert!(checked >= 40);
    Ok(())
}

/// Environment variable that makes [`sigkill_child`] attach to that
/// interface (the test re-runs its own binary as the process to kill).
/// The ids of the programs loaded together with the XDP program attached to
/// `iface` (one load shares one BTF object), or `None` if none is attached.
/// bpftool cannot tell which process holds a program on this kernel (its
/// pid lookup needs a BPF iterator, a tracing program type that is refused).
fn programs_loaded_with_xdp_on(tb: &Testbed, iface: &str) -> Result<Option<Vec<u32>>> {
    let out = tb
        .server()
        .exec(&["ip", "-j", "-d", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let Some(xdp_id) = links[0]["xdp"]["prog"]["id"].as_u64() else {
        return Ok(None);
    };
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let progs = progs.as_array().context("bpftool prog list")?;
    let btf = progs
        .iter()
        .find(|p| p["id"].as_u64() == Some(xdp_id))
        .and_then(|p| p["btf_id"].as_u64())
        .context("the attached XDP program has no BTF")?;
    Ok(Some(
        progs
            .iter()
            .filter(|p| p["btf_id"].as_u64() == Some(btf))
            .filter_map(|p| p["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect(),
    ))
}

#[test]
fn sigkill_leaves_nothing_attached() -> Result<()> {
    let (tb, iface) = testbed()?;
    // The real command, killed with SIGKILL: no destructor runs; the kernel
    // closing its bpf_link fds must detach everything.
    let mut child = tb
        .server()
        .command(env!("CARGO_BIN_EXE_netray"))
        .args(["packets", "-i", &iface, "--duration", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    let ids = loop {
        let ids = programs_loaded_with_xdp_on(&tb, &iface)?.unwrap_or_default();
        // The attached and the capture program of each direction (the
        // filters, loaded without BTF, are freed with them).
        if ids.len() == 4 && attached(&tb, &iface)?.contains("packets_xdp") {
            break ids;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("netray packets never attached (programs held: {ids:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill()?;
    child.wait()?;
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        // Before tcx (6.6) a TC program hangs off a netlink filter of the
        // clsact qdisc, which no process owns: a SIGKILL leaves it attached
        // (it returns TC_ACT_UNSPEC, so it passes every packet). XDP is a
        // bpf_link and must be gone; the one thing left must be packets_tc,
        // which removing the qdisc then frees.
        let deadline = Instant::now() + TIMEOUT;
        let left = loop {
            let text = attached(&tb, &iface)?;
            if !text.contains("prog/xdp") {
                break text;
            }
            ensure!(
                Instant::now() < deadline,
                "XDP still attached to {iface} after SIGKILL:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            left.contains("packets_tc") && !left.contains("packets_xdp"),
            "after SIGKILL on a kernel without tcx, exactly the TC filter should be left:\n{left}"
        );
        tb.server()
            .exec(&["tc", "qdisc", "del", "dev", &iface, "clsact"])?;
    }
    wait_until_freed(&ids)?;
    wait_until_detached(&tb, &iface)
}

/// Starts `netray packets ARGS` on the server and waits until its XDP
/// program is on the interface.
fn spawn_command(tb: &Testbed, iface: &str, args: &[&str]) -> Result<std::process::Child> {
    let mut child = tb
        .server()
        .command(env!("CARGO_BIN_EXE_netray"))
        .args(["packets", "-i", iface])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + netray_testbed::STARTUP_TIMEOUT;
    while !attached(tb, iface)?.contains("packets_xdp") {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("netray packets never attached");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Waits for `child` to exit by itself; its (stdout, stderr).
fn wait_output(child: std::process::Child) -> Result<(String, String)> {
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "netray packets failed: {output:?}");
    Ok((
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

/// The command's own output path (ring → file on its writer thread):
/// stopped by SIGINT, the pcapng file holds exactly the matching packets,
/// as tshark reads them, and the accounting says so.
#[test]
fn command_writes_every_matching_packet_until_interrupted() -> Result<()> {
    let (tb, iface) = testbed()?;
    let dir = std::env::temp_dir().join(format!("netray-packets-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("udp.pcapng");
    let path = file.to_str().context("UTF-8 path")?;
    let child = spawn_command(&tb, &iface, &["-w", path, "--duration", "60", "udp"])?;
    let sent = traffic(&tb, true);
    // SAFETY: our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let (_, stderr) = wait_output(child)?;
    sent?;
    let output = Command::new("tshark")
        .args([
            "-r",
            path,
            "-T",
            "fields",
            "-e",
            "udp.dstport",
            "-e",
            "frame.interface_name",
        ])
        .output()
        .context("running tshark")?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(output.status.success(), "tshark: {output:?}");
    let mut ports: Vec<String> = String::from_utf8(output.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    ports.sort();
    let mut expected: Vec<String> = [PORT4, PORT6]
        .iter()
        .flat_map(|port| std::iter::repeat_n(format!("{port}\t{iface}"), N))
        .collect();
    expected.sort();
    assert_eq!(ports, expected);
    ensure!(
        stderr.contains(&format!("{} packets captured\n", 2 * N))
            && stderr.contains("0 packets dropped by kernel"),
        "accounting: {stderr}"
    );
    Ok(())
}

/// `-c COUNT` ends the command by itself after exactly COUNT packets, here
/// as JSON lines on stdout.
#[test]
fn command_stops_after_count() -> Result<()> {
    let (tb, iface) = testbed()?;
    let filter = format!("udp dst port {PORT4}");
    let child = spawn_command(&tb, &iface, &["-c", "3", "--json", &filter])?;
    traffic(&tb, false)?;
    let (stdout, _) = wait_output(child)?;
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in &lines {
        assert_eq!(line["proto"], "udp", "{line}");
        assert_eq!(line["dport"], PORT4, "{line}");
        assert_eq!(line["dir"], "ingress", "{line}");
        assert_eq!(line["iface"], iface.as_str(), "{line}");
    }
    Ok(())
}

/// A VLAN tag the skb carries in its metadata (transmit VLAN offload, as
/// NICs and veth do) is on the wire but not in the packet bytes at TC
/// egress. The capture must show it like libpcap does: in the filter
/// (`vlan 42` matches) and in the bytes (tag after the MAC addresses, wire
/// length 4 more). This kernel has no 8021q module, so a fixture program
/// (crates/netray-ebpf/src/testing.rs), attached before ours, gives UDP
/// datagrams to port 7002 the tag with `bpf_skb_vlan_push`.
#[test]
fn egress_shows_offloaded_vlan_tags() -> Result<()> {
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
    const TAGGED_PORT: u16 = 7002;
    const PLAIN_PORT: u16 = 7003;
    const TCI: u16 = (5 << 13) | 42;
    let (tb, iface) = testbed()?;
    let (server4, client4) = (tb.server_addr(Family::V4), tb.client_addr(Family::V4));
    let program = Program::compile("vlan 42 and udp", 262_144)?;
    tb.server().run(|| -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let options = CaptureOptions {
                direction: Directions::Out,
                ..CaptureOptions::default()
            };
            let mut capture =
                PacketCapture::attach(std::slice::from_ref(&iface), &program, options)?;
            let mut fixture = aya::Ebpf::load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/netray-testing"
            )))?;
            let push: &mut SchedClassifier = fixture
                .program_mut("testing_vlan_push")
                .context("fixture program missing")?
                .try_into()?;
            push.load()?;
            // Before ours: first in the tcx chain, or (before 6.6, no tcx)
            // a netlink filter of a higher priority than ours (the
            // kernel gave ours 49152; lower runs first).
            if push
                .attach_with_options(
                    &iface,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .is_err()
            {
                push.attach_with_options(
                    &iface,
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(aya::programs::tc::NlOptions {
                        priority: 1,
                        ..Default::default()
                    }),
                )?;
            }
            let socket = UdpSocket::bind(SocketAddr::new(server4, 0))?;
            for _ in 0..N {
                socket.send_to(b"tagged", (client4, TAGGED_PORT))?;
                socket.send_to(b"plain", (client4, PLAIN_PORT))?;
            }
            let mut records = Vec::new();
            for _ in 0..N {
                let record = tokio::time::timeout(TIMEOUT, capture.next())
                    .await
                    .context("a tagged datagram was not captured")?
                    .context("capture ended")?;
                records.push(record);
            }
            // Nothing else matches: the untagged datagrams stay out.
            let extra = tokio::time::timeout(Duration::from_millis(300), capture.next()).await;
            ensure!(extra.is_err(), "an untagged packet matched: {extra:?}");
            let counts = capture.counts();
            ensure!(counts.matched == N as u64, "{counts:?}");
            // Ethernet + tag + IPv4 + UDP + "tagged".
            let expected_len = 14 + 4 + 20 + 8 + 6;
            for record in &records {
                let data = &record.data;
                ensure!(data.len() == expected_len, "{data:02x?}");
                assert_eq!(record.wire_len as usize, expected_len);
                assert_eq!(data[12..14], [0x81, 0x00], "TPID");
                assert_eq!(data[14..16], TCI.to_be_bytes(), "TCI");
                assert_eq!(data[16..18], [0x08, 0x00], "inner EtherType");
                assert_eq!(data[18 + 20 + 2..18 + 20 + 4], TAGGED_PORT.to_be_bytes());
                assert_eq!(&data[data.len() - 6..], b"tagged");
                assert_eq!(record.direction, Direction::Egress);
            }
            // tcpdump reads the tag where we put it.
            let frames: Vec<&[u8]> = records.iter().map(|r| &r.data[..]).collect();
            let dir = std::env::temp_dir().join(format!("netray-vlan-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let pcap = dir.join("tagged.pcap");
            write_pcap(&pcap, &frames)?;
            let output = Command::new("tcpdump")
                .args(["-n", "-e", "-r"])
                .arg(&pcap)
                .arg("vlan 42 and udp dst port 7002")
                .output()?;
            let _ = std::fs::remove_dir_all(&dir);
            let text = String::from_utf8_lossy(&output.stdout);
            ensure!(
                text.lines().count() == N && text.contains("vlan 42, p 5"),
                "tcpdump: {text}"
            );
            Ok(())
        })
    })?
}

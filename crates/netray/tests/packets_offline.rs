//! `netray packets -r FILE` and `netray packets -d` against tcpdump itself:
//! the frames netray keeps from a file must be the frames `tcpdump -r`
//! keeps, in the same order, with the same bytes, lengths and timestamps;
//! `-d` must print what `tcpdump -d` prints, byte for byte, and refuse what
//! it refuses with libpcap's message. Unprivileged and fast: no eBPF.
//!
//! The tests fail (never skip) when tcpdump is missing (`cargo xtask setup`
//! installs it).
//!
//! Userspace only: in a `host_only` module, which the kernel matrix's
//! guests skip.

/// No kernel interface here: the host stage runs these, the guests skip
/// them (see xtask's `HOST_ONLY`).
mod host_only {
    use std::borrow::Cow;
    use std::fs;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::time::Duration;

    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};
    use pcap_file::DataLink;
    use pcap_file::pcap::{PcapHeader, PcapReader, PcapWriter, RawPcapPacket};
    use pcap_file::pcapng::{Block, PcapNgReader};

    /// The binary under test.
    const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

    /// Frames in the generated capture.
    const FRAMES: usize = 400;

    /// Fails (never skips) when tcpdump is missing.
    fn require_tcpdump() {
        let ok = Command::new("tcpdump")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "tcpdump is not installed: run `cargo xtask setup` (Debian package tcpdump)"
        );
    }

    /// A scratch directory, removed when dropped. World-writable: tcpdump
    /// running as root may switch to its own user before writing (`-Z root`
    /// is passed too, but a build without that option still gets a place it
    /// can write).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("netray-offline-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
            Scratch(dir)
        }

        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// xorshift64*: the same frames on every run, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    const V4: [[u8; 4]; 7] = [
        [10, 0, 0, 1],
        [10, 1, 2, 3],
        [192, 168, 1, 1],
        [192, 168, 1, 77],
        [172, 16, 5, 9],
        [8, 8, 8, 8],
        [255, 255, 255, 255],
    ];

    fn v6(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = last;
        a
    }

    const PORTS: [u16; 9] = [22, 53, 80, 123, 443, 1500, 1999, 8080, 40000];

    /// Ethernet addresses: unicast, broadcast, IPv4 multicast.
    fn macs(rng: &mut Rng) -> ([u8; 6], [u8; 6]) {
        let src = [2, 0, 0, 0, 0, 1 + rng.below(3) as u8];
        let dst = match rng.below(6) {
            0 => [0xff; 6],
            1 => [0x01, 0x00, 0x5e, 0, 0, 0xfb],
            _ => [2, 0, 0, 0, 0, 1 + rng.below(3) as u8],
        };
        (src, dst)
    }

    fn payload(rng: &mut Rng) -> Vec<u8> {
        match rng.below(5) {
            0 => b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
            1 => vec![0; rng.below(1400) as usize],
            _ => (0..rng.below(80)).map(|i| i as u8).collect(),
        }
    }

    /// A hand-made IPv4 header (what etherparse does not build: fragments,
    /// other protocols); the checksum is left zero (filters do not read it).
    fn ipv4_header(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, len: usize) -> Vec<u8> {
        let total = (20 + len) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    /// One frame of a kind chosen by `rng`.
    fn frame(rng: &mut Rng) -> Vec<u8> {
        let (smac, dmac) = macs(rng);
        let mut v = Vec::new();
        match rng.below(13) {
            0..=2 => {
                let mut b = PacketBuilder::ethernet2(smac, dmac)
                    .ipv4(rng.pick(&V4), rng.pick(&V4), 64)
                    .tcp(rng.pick(&PORTS), rng.pick(&PORTS), rng.next() as u32, 65535);
                let flags = rng.below(32);
                if flags & 1 != 0 {
                    b = b.syn();
                }
                if flags & 2 != 0 {
                    b = b.fin();
                }
                if flags & 4 != 0 {
                    b = b.rst();
                }
                if flags & 8 != 0 {
                    b = b.ack(rng.next() as u32);
                }
                if flags & 16 != 0 {
                    b = b.psh();
                }
                b.write(&mut v, &payload(rng)).unwrap();
            }
            3 | 4 => PacketBuilder::ethernet2(smac, dmac)
                .ipv4(rng.pick(&V4), rng.pick(&V4), 64)
                .udp(rng.pick(&PORTS), rng.pick(&PORTS))
                .write(&mut v, &payload(rng))
                .unwrap(),
            5 => {
                let b = PacketBuilder::ethernet2(smac, dmac).ipv4(rng.pick(&V4), rng.pick(&V4), 64);
                let b = if rng.below(2) == 0 {
                    b.icmpv4_echo_request(7, rng.next() as u16)
                } else {
                    b.icmpv4_echo_reply(7, rng.next() as u16)
                };
                b.write(&mut v, &[0; 56]).unwrap();
            }
            6 => PacketBuilder::ethernet2(smac, dmac)
                .ipv6(v6(rng.below(4) as u8), v6(rng.below(4) as u8), 64)
                .tcp(rng.pick(&PORTS), rng.pick(&PORTS), 1, 1000)
                .syn()
                .write(&mut v, &payload(rng))
                .unwrap(),
            7 => {
                let b = PacketBuilder::ethernet2(smac, dmac).ipv6(v6(1), v6(2), 64);
                if rng.below(2) == 0 {
                    b.udp(rng.pick(&PORTS), 53)
                        .write(&mut v, &payload(rng))
                        .unwrap();
                } else {
                    b.icmpv6_echo_request(1, 2).write(&mut v, &[1; 8]).unwrap();
                }
            }
            8 => PacketBuilder::ethernet2(smac, dmac)
                .single_vlan(rng.pick(&[100u16, 200]).try_into().unwrap())
                .ipv4(rng.pick(&V4), rng.pick(&V4), 64)
                .udp(rng.pick(&PORTS), rng.pick(&PORTS))
                .write(&mut v, &payload(rng))
                .unwrap(),
            9 => PacketBuilder::ethernet2(smac, dmac)
                .double_vlan(10.try_into().unwrap(), 100.try_into().unwrap())
                .ipv6(v6(3), v6(4), 64)
                .tcp(443, rng.pick(&PORTS), 1, 1000)
                .ack(5)
                .write(&mut v, &payload(rng))
                .unwrap(),
            10 => PacketBuilder::ethernet2(smac, [0xff; 6])
                .arp(
                    ArpPacket::new(
                        ArpHardwareId::ETHERNET,
                        EtherType::IPV4,
                        if rng.below(2) == 0 {
                            ArpOperation::REQUEST
                        } else {
                            ArpOperation::REPLY
                        },
                        &smac,
                        &rng.pick(&V4),
                        &[0; 6],
                        &rng.pick(&V4),
                    )
                    .unwrap(),
                )
                .write(&mut v)
                .unwrap(),
            11 => {
                // IPv4 by hand: a later fragment of UDP, or GRE.
                v.extend_from_slice(&dmac);
                v.extend_from_slice(&smac);
                v.extend_from_slice(&[0x08, 0x00]);
                let body = payload(rng);
                let (proto, frag) = if rng.below(2) == 0 {
                    (17, 0x00b9)
                } else {
                    (47, 0)
                };
                v.extend(ipv4_header(
                    proto,
                    rng.pick(&V4),
                    rng.pick(&V4),
                    frag,
                    body.len(),
                ));
                v.extend(body);
            }
            _ => {
                // IPv6 with a hop-by-hop header before TCP (protochain), or an
                // LLDP frame.
                v.extend_from_slice(&dmac);
                v.extend_from_slice(&smac);
                if rng.below(2) == 0 {
                    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 28, 0, 64]);
                    v.extend_from_slice(&v6(5));
                    v.extend_from_slice(&v6(6));
                    v.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
                    v.extend_from_slice(&80u16.to_be_bytes());
                    v.extend_from_slice(&443u16.to_be_bytes());
                    v.extend_from_slice(&[0; 8]);
                    v.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
                } else {
                    v.extend_from_slice(&[0x88, 0xcc]);
                    v.extend((0..40).map(|i| i as u8));
                }
            }
        }
        v
    }

    /// One packet as a file holds it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Packet {
        ts: Duration,
        orig_len: u32,
        data: Vec<u8>,
    }

    /// The test capture: varied frames, one in five cut short (caplen below
    /// the wire length), so that filters that load past the captured bytes
    /// are exercised too.
    fn packets() -> Vec<Packet> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..FRAMES)
            .map(|i| {
                let data = frame(&mut rng);
                let orig_len = data.len() as u32;
                let cap = if rng.below(5) == 0 {
                    14 + rng.below(data.len() as u64 - 13) as usize
                } else {
                    data.len()
                };
                Packet {
                    ts: Duration::new(
                        1_700_000_000 + i as u64 / 10,
                        (i as u32 % 10) * 100_000_000 + 1000,
                    ),
                    orig_len,
                    data: data[..cap].to_vec(),
                }
            })
            .collect()
    }

    fn write_pcap(path: &Path, datalink: DataLink, packets: &[Packet]) {
        let header = PcapHeader {
            datalink,
            snaplen: 65535,
            ..Default::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for p in packets {
            w.write_raw_packet(&RawPcapPacket {
                ts_sec: p.ts.as_secs() as u32,
                ts_frac: p.ts.subsec_micros(),
                incl_len: p.data.len() as u32,
                orig_len: p.orig_len,
                data: Cow::Borrowed(&p.data),
            })
            .unwrap();
        }
        fs::write(path, w.into_writer()).unwrap();
    }

    /// The packets of a pcap (tcpdump's output) or pcapng (netray's) file.
    fn read_capture(path: &Path) -> Vec<Packet> {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out = Vec::new();
        if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
            let mut r = PcapNgReader::new(&bytes[..]).unwrap();
            while let Some(block) = r.next_block() {
                if let Block::EnhancedPacket(e) = block.unwrap() {
                    // netray writes if_tsresol 9: the crate's raw value is ns.
                    out.push(Packet {
                        ts: e.timestamp,
                        orig_len: e.original_len,
                        data: e.data.into_owned(),
                    });
                }
            }
        } else {
            let mut r = PcapReader::new(&bytes[..]).unwrap();
            let nanos = r.header().ts_resolution == pcap_file::TsResolution::NanoSecond;
            while let Some(p) = r.next_raw_packet() {
                let p = p.unwrap();
                let frac = if nanos { p.ts_frac } else { p.ts_frac * 1000 };
                out.push(Packet {
                    ts: Duration::new(u64::from(p.ts_sec), frac),
                    orig_len: p.orig_len,
                    data: p.data.into_owned(),
                });
            }
        }
        out
    }

    fn run(cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    fn netray(args: &[&str]) -> Output {
        run(Command::new(NETRAY).arg("packets").args(args))
    }

    fn tcpdump(args: &[&str]) -> Output {
        // -Z root: as root, tcpdump would switch to its own user before
        // opening the output; harmless when not root.
        run(Command::new("tcpdump").args(["-Z", "root"]).args(args))
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Filters for `-r`: every kind of primitive the test frames can match,
    /// some reading past the bytes a cut packet has.
    const READ_FILTERS: &[&str] = &[
        "",
        "tcp",
        "udp port 53",
        "icmp or icmp6",
        "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0 and not net 10.0.0.0/8",
        "tcp[tcpflags] == (tcp-ack|tcp-push)",
        "vlan",
        "vlan 100 and udp",
        "vlan and vlan 100 and ip6",
        "ip6 and tcp",
        "ip6 protochain 6",
        "arp",
        "greater 1000",
        "less 80",
        "ip[6:2] & 0x1fff != 0",
        "host 192.168.1.1",
        "net 172.16.0.0/12 or dst host 8.8.8.8",
        "ether broadcast",
        "ether multicast and not ether broadcast",
        "not ip and not ip6",
        "tcp dst port 443 or udp src port 123",
        "portrange 1000-2000",
        "ip proto 47",
        "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
        "ether host 02:00:00:00:00:01 and ip broadcast",
        "udp[8:2] = 0 and len > 100",
    ];

    /// `netray packets -r IN -w OUT FILTER` keeps exactly what
    /// `tcpdump -r IN -w OUT FILTER` keeps.
    fn compare_read(scratch: &Scratch, input: &Path, filter: &str, tag: &str) -> usize {
        let ours = scratch.path(&format!("netray-{tag}.pcapng"));
        let theirs = scratch.path(&format!("tcpdump-{tag}.pcap"));
        let input = input.to_str().unwrap();
        let mut args = vec!["-r", input, "-w", ours.to_str().unwrap()];
        if !filter.is_empty() {
            args.push(filter);
        }
        let out = netray(&args);
        assert!(
            out.status.success(),
            "netray {args:?}: {}",
            text(&out.stderr)
        );
        let mut args = vec!["-r", input, "-w", theirs.to_str().unwrap()];
        if !filter.is_empty() {
            args.push(filter);
        }
        let t = tcpdump(&args);
        assert!(t.status.success(), "tcpdump {args:?}: {}", text(&t.stderr));
        let kept = read_capture(&ours);
        let expected = read_capture(&theirs);
        assert_eq!(
            kept.len(),
            expected.len(),
            "filter {filter:?} on {input}: netray kept {} packets, tcpdump {}",
            kept.len(),
            expected.len()
        );
        for (i, (a, b)) in kept.iter().zip(&expected).enumerate() {
            assert_eq!(a, b, "filter {filter:?} on {input}: packet {i} differs");
        }
        // The accounting counts what was kept and what was read.
        let stderr = text(&out.stderr);
        let total = read_capture(Path::new(input)).len();
        assert!(
            stderr.contains(&format!(
                "{n} packets captured\n{n} packets received by filter\n0 packets dropped by kernel\n{total} packets read from {input}\n",
                n = kept.len()
            )),
            "{stderr}"
        );
        kept.len()
    }

    #[test]
    fn read_keeps_what_tcpdump_keeps() {
        require_tcpdump();
        let scratch = Scratch::new("read");
        let input = scratch.path("in.pcap");
        let all = packets();
        write_pcap(&input, DataLink::ETHERNET, &all);
        let mut kept = Vec::new();
        for (i, filter) in READ_FILTERS.iter().enumerate() {
            kept.push(compare_read(&scratch, &input, filter, &format!("pcap{i}")));
        }
        // The filters are not vacuous: each keeps something, and most leave
        // something out.
        assert_eq!(kept[0], FRAMES);
        for (filter, n) in READ_FILTERS.iter().zip(&kept) {
            assert!(*n > 0, "{filter:?} kept nothing");
        }
        assert!(kept.iter().filter(|&&n| n < FRAMES).count() >= READ_FILTERS.len() - 1);

        // The same packets as pcapng (netray's own output, read by both).
        let pcapng = scratch.path("in.pcapng");
        let out = netray(&[
            "-r",
            input.to_str().unwrap(),
            "-w",
            pcapng.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            read_capture(&pcapng),
            all,
            "a pcap to pcapng copy changes nothing"
        );
        for (i, filter) in READ_FILTERS.iter().enumerate().step_by(3) {
            compare_read(&scratch, &pcapng, filter, &format!("ng{i}"));
        }
    }

    #[test]
    fn read_outputs_and_limits() {
        require_tcpdump();
        let scratch = Scratch::new("outputs");
        let input = scratch.path("in.pcap");
        write_pcap(&input, DataLink::ETHERNET, &packets());
        let input = input.to_str().unwrap();
        let udp = read_capture_count(&scratch, input, "udp");

        // Text: one line per packet, with the file's time of day, no
        // interface name and no direction (a pcap file has neither).
        let out = netray(&["-r", input, "udp"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines = text(&out.stdout);
        assert_eq!(lines.lines().count(), udp);
        assert!(
            lines
                .lines()
                .all(|l| l.split(' ').nth(1) == Some("-") && l.split(' ').nth(2) == Some("-")),
            "{lines}"
        );
        // JSON lines.
        let out = netray(&["-r", input, "--json", "udp"]);
        let json = text(&out.stdout);
        assert_eq!(json.lines().count(), udp);
        for l in json.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(
                (v["dir"].as_str(), v["iface"].as_str()),
                (Some("unknown"), Some("-"))
            );
            assert!(v["ts"].as_u64().unwrap() >= 1_700_000_000_000_000_000);
        }
        // -c stops after COUNT packets and says what it read.
        let out = netray(&["-r", input, "-c", "3", "tcp"]);
        assert_eq!(text(&out.stdout).lines().count(), 3);
        assert!(
            text(&out.stderr).starts_with("3 packets captured\n3 packets received by filter\n")
        );
        // stdin.
        let mut child = Command::new(NETRAY)
            .args(["packets", "-r", "-", "--json", "udp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&fs::read(input).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), json);
        // -s cuts what is written, after the filter.
        let cut = scratch.path("cut.pcapng");
        let out = netray(&["-r", input, "-s", "40", "-w", cut.to_str().unwrap(), "udp"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let cut = read_capture(&cut);
        assert_eq!(cut.len(), udp);
        assert!(
            cut.iter()
                .all(|p| p.data.len() <= 40 && p.orig_len as usize >= p.data.len())
        );

        // Flows: one table over the file's time span.
        let out = netray(&["-r", input, "--flows", "--json", "udp or tcp"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert!(v["flow_count"].as_u64().unwrap() > 20, "{v}");
        assert!(v["interval_s"].as_f64().unwrap() > 30.0, "{v}");
        let dns = read_capture_count(&scratch, input, "udp port 53");
        let out = netray(&["-r", input, "--flows", "udp port 53"]);
        let table = text(&out.stdout);
        assert!(table.starts_with("PROTO"), "{table}");
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert!(rows.iter().all(|l| l.starts_with("udp ")), "{table}");
        let packets: usize = rows
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .nth(5)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert_eq!(packets, dns, "{table}");
    }

    /// How many packets tcpdump keeps for `filter`.
    fn read_capture_count(scratch: &Scratch, input: &str, filter: &str) -> usize {
        let out = scratch.path("count.pcap");
        let t = tcpdump(&["-r", input, "-w", out.to_str().unwrap(), filter]);
        assert!(t.status.success(), "{}", text(&t.stderr));
        read_capture(&out).len()
    }

    #[test]
    fn read_refuses_clearly() {
        require_tcpdump();
        let scratch = Scratch::new("refuse");
        let sll = scratch.path("sll.pcap");
        write_pcap(&sll, DataLink::LINUX_SLL, &[]);
        let fails = |args: &[&str], needle: &str| {
            let out = netray(args);
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        };
        fails(
            &["-r", sll.to_str().unwrap()],
            "link-layer type 113 (LINUX_SLL) is not supported",
        );
        let junk = scratch.path("junk");
        fs::write(&junk, "hello, world").unwrap();
        fails(
            &["-r", junk.to_str().unwrap()],
            "is not a pcap or pcapng file",
        );
        fails(
            &["-r", "/nonexistent/x.pcap"],
            "cannot read /nonexistent/x.pcap",
        );
        fails(&["-r", "x.pcap", "-i", "lo"], "cannot be combined with -i");
        fails(&["-r", "x.pcap", "--duration", "1"], "--duration");
        let good = scratch.path("good.pcap");
        write_pcap(&good, DataLink::ETHERNET, &packets()[..10]);
        let good = good.to_str().unwrap();
        fails(
            &["-r", good, "tcp port 99999"],
            "netray: illegal port number 99999 > 65535",
        );
        fails(&["-r", good, "--direction", "in"], "records no direction");
        // What needs a live capture's metadata, refused in tcpdump's words.
        for filter in [
            "inbound",
            "not outbound and tcp",
            "ifindex 2",
            "udp or ifindex 2",
        ] {
            let theirs = tcpdump(&["-r", good, filter]);
            assert!(!theirs.status.success(), "tcpdump -r accepts {filter:?}");
            let message = text(&theirs.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("tcpdump: ").map(str::to_string))
                .unwrap_or_else(|| panic!("{filter:?}: {}", text(&theirs.stderr)));
            let ours = netray(&["-r", good, filter]);
            assert!(!ours.status.success(), "netray -r accepts {filter:?}");
            assert_eq!(
                text(&ours.stderr),
                format!("netray: {message}\n"),
                "{filter:?}"
            );
        }
        fails(&["-r", good, "-w", good], "is the file -r reads");
        // A file cut in the middle: what was read is output and counted,
        // then the error.
        let mut bytes = fs::read(good).unwrap();
        bytes.truncate(bytes.len() - 5);
        let cut = scratch.path("cut.pcap");
        fs::write(&cut, bytes).unwrap();
        let out = netray(&["-r", cut.to_str().unwrap()]);
        assert!(!out.status.success());
        assert_eq!(text(&out.stdout).lines().count(), 9);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("9 packets read from"), "{stderr}");
        assert!(
            stderr.contains("malformed or truncated after 9 packets"),
            "{stderr}"
        );
    }

    /// As root, -r also works for an unprivileged user: it needs no eBPF.
    #[test]
    fn read_needs_no_privilege() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            // Already unprivileged: the other tests are the proof.
            let out = netray(&["-d", "tcp"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            return;
        }
        let scratch = Scratch::new("unpriv");
        let input = scratch.path("in.pcap");
        write_pcap(&input, DataLink::ETHERNET, &packets()[..50]);
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
        for args in [
            vec!["-r", input.to_str().unwrap(), "tcp"],
            vec!["-d", "tcp"],
        ] {
            let out = run(Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                ])
                .arg(NETRAY)
                .arg("packets")
                .args(&args));
            assert!(
                out.status.success(),
                "as nobody, {args:?}: {}",
                text(&out.stderr)
            );
            assert!(!out.stdout.is_empty());
        }
    }

    /// Filters for `-d`, as tcpdump's users write them.
    const DUMP_FILTERS: &[&str] = &[
        "",
        "ip",
        "tcp",
        "udp port 53",
        "tcp port 443 and not host 10.0.0.1",
        "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0 and not net 10.0.0.0/8",
        "tcp[tcpflags] == tcp-syn",
        "icmp[icmptype] == icmp-echo",
        "icmp6 and ip6[40] == 128",
        "vlan 100 and tcp",
        "vlan and vlan",
        "mpls 100 and ip",
        "pppoes and ip",
        "ether host 00:11:22:33:44:55",
        "ether broadcast or ether multicast",
        "arp or rarp",
        "greater 1000",
        "less 64",
        "ip6 protochain 6",
        "ip proto 47",
        "net 192.168.0.0/16 and src port 22",
        "net 10.0.0.0 mask 255.0.0.0",
        "portrange 1000-2000",
        "tcp port smtp",
        "ip[6:2] & 0x1fff != 0",
        "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
        "udp[8:2] = 0 and len > 100",
        "ip multicast",
        "ip6 multicast",
        "not (tcp or udp or icmp)",
        "dst host 2001:db8::1 and tcp dst port 80",
        "ether proto 0x88cc",
        "sctp",
        "ip and ip[8] < 5",
    ];

    #[test]
    fn dump_is_tcpdumps() {
        require_tcpdump();
        for snaplen in [None, Some("100"), Some("65535")] {
            for filter in DUMP_FILTERS {
                let mut args = vec!["-d"];
                if let Some(s) = snaplen {
                    args.extend(["-s", s]);
                }
                if !filter.is_empty() {
                    args.push(filter);
                }
                let ours = netray(&args);
                let theirs = tcpdump(&args);
                assert!(
                    theirs.status.success(),
                    "tcpdump {args:?}: {}",
                    text(&theirs.stderr)
                );
                assert!(
                    ours.status.success(),
                    "netray {args:?}: {}",
                    text(&ours.stderr)
                );
                assert_eq!(
                    text(&ours.stdout),
                    text(&theirs.stdout),
                    "netray packets {args:?} differs from tcpdump"
                );
                assert!(!ours.stdout.is_empty());
            }
        }
        // The snaplen is what an accepting instruction returns.
        let out = netray(&["-d", "-s", "100", "ip"]);
        assert!(text(&out.stdout).contains("ret      #100\n"));
    }

    #[test]
    fn dump_refuses_what_tcpdump_refuses() {
        require_tcpdump();
        for filter in [
            "tcp port 99999",
            "(tcp",
            "foo bar",
            "tcp port nosuchservice",
            "tcp[tcpflags] & tcp-bogus != 0",
            "ether host 00:11:22",
            "ip6 and ip[0] = 1 and",
            "vlan 5000",
        ] {
            let theirs = tcpdump(&["-d", filter]);
            assert!(!theirs.status.success(), "tcpdump accepts {filter:?}");
            // tcpdump prints libpcap's message after its name (the message
            // itself starts "can't parse filter expression:" for syntax
            // errors).
            let message = text(&theirs.stderr)
                .lines()
                .find_map(|l| l.strip_prefix("tcpdump: ").map(str::to_string))
                .unwrap_or_else(|| {
                    panic!("tcpdump's words for {filter:?}: {}", text(&theirs.stderr))
                });
            let ours = netray(&["-d", filter]);
            assert!(!ours.status.success(), "netray accepts {filter:?}");
            assert!(ours.stdout.is_empty());
            assert_eq!(
                text(&ours.stderr),
                format!("netray: {message}\n"),
                "{filter:?}"
            );
        }
        // Options that would capture are refused with -d.
        let out = netray(&["-d", "-w", "x.pcapng", "tcp"]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("cannot be combined with -w"),
            "{}",
            text(&out.stderr)
        );
    }
}

//! The filter conformance material of issue 12, checked against tcpdump
//! itself: `tests/data/filter_expressions.txt` (every line must compile for
//! an Ethernet savefile), `tests/data/filter_invalid.txt` (every line must be
//! rejected) and `netray_testbed::frames::conformance_frames` (the frames
//! must tell the expressions apart: most expressions keep some frames and
//! drop others, or agreeing with tcpdump on them would prove little).
//!
//! tcpdump's verdicts (which frames each expression keeps) are computed once
//! per test binary, in parallel, and shared by the comparisons with netray:
//! - netray compiles every expression (libpcap, as netray links it) and its
//!   userspace evaluation keeps exactly tcpdump's frames;
//! - netray rejects every invalid expression with tcpdump's message;
//! - (in `filter_kernel`, on every kernel of the matrix: the real capture
//!   programs keep exactly the frames libpcap keeps, so tcpdump's.)
//!
//! No kernel interface here: the tests are in a `host_only` module, which
//! the matrix's guests skip (a thousand tcpdump processes cost minutes
//! there, and their verdicts do not depend on the kernel). Needs no root,
//! but tcpdump: the tests fail, never
//! skip, when it is missing. Set `NETRAY_FILTER_TABLE_PCAP=PATH` to keep a
//! copy of the frames (frame `i` at `i` seconds) for a look with tcpdump or
//! Wireshark.

/// See the module docs: the guests skip these (xtask's `HOST_ONLY`).
mod host_only {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::Instant;

    use netray::packets::filter::Program;
    use netray_testbed::frames::{PCAP_SNAPLEN, conformance_frames, write_pcap};
    use netray_testbed::tcpdump::{
        read_expressions, tcpdump_error, tcpdump_kept_many, tcpdump_version,
    };

    /// Share of the expressions that must keep some frames but not all.
    const MIN_DISCRIMINATING: f64 = 0.80;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    /// The expressions, the frames, and the frames tcpdump keeps for each
    /// expression (indexes into the frames), computed once.
    struct Table {
        expressions: Vec<String>,
        frames: Vec<Vec<u8>>,
        kept: Vec<Vec<usize>>,
    }

    fn require_tcpdump() {
        if let Err(err) = tcpdump_version() {
            panic!("{err:#}");
        }
    }

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| {
            require_tcpdump();
            let expressions =
                read_expressions(&data("filter_expressions.txt")).expect("reading the expressions");
            let frames = conformance_frames();
            let dir =
                std::env::temp_dir().join(format!("netray-filter-table-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("creating a temporary directory");
            let pcap = dir.join("frames.pcap");
            write_pcap(&pcap, &frames).expect("writing the frames");
            if let Some(copy) = std::env::var_os("NETRAY_FILTER_TABLE_PCAP") {
                write_pcap(Path::new(&copy), &frames).expect("writing the frames' copy");
            }
            let start = Instant::now();
            let results = tcpdump_kept_many(&pcap, &expressions);
            println!(
                "tcpdump: {} expressions over {} frames in {:.1?}",
                expressions.len(),
                frames.len(),
                start.elapsed()
            );
            let _ = std::fs::remove_dir_all(&dir);
            let mut failures = Vec::new();
            let mut kept = Vec::new();
            for (expr, result) in expressions.iter().zip(results) {
                match result {
                    Ok(indexes) => kept.push(indexes),
                    Err(err) => {
                        failures.push(format!("{expr:?}: {err:#}"));
                        kept.push(Vec::new());
                    }
                }
            }
            assert!(
                failures.is_empty(),
                "tcpdump failed on {} expressions:\n{}",
                failures.len(),
                failures.join("\n")
            );
            Table {
                expressions,
                frames,
                kept,
            }
        })
    }

    #[test]
    fn expressions_are_many_distinct_and_accepted() {
        require_tcpdump();
        let expressions =
            read_expressions(&data("filter_expressions.txt")).expect("reading the expressions");
        assert!(
            expressions.len() >= 400,
            "only {} expressions",
            expressions.len()
        );
        let mut sorted = expressions.clone();
        sorted.sort();
        let duplicates: Vec<_> = sorted.windows(2).filter(|w| w[0] == w[1]).collect();
        assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
        let start = Instant::now();
        // One tcpdump per expression: spread them over the CPUs.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rejected: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = expressions
                .chunks(expressions.len().div_ceil(workers))
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .filter_map(|expr| {
                                tcpdump_error(expr).map(|err| format!("{expr:?}: {err}"))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("tcpdump -d worker"))
                .collect()
        });
        println!(
            "tcpdump -d: {} expressions in {:.1?}",
            expressions.len(),
            start.elapsed()
        );
        assert!(
            rejected.is_empty(),
            "libpcap rejects {} expressions:\n{}",
            rejected.len(),
            rejected.join("\n")
        );
    }

    #[test]
    fn invalid_expressions_are_rejected() {
        require_tcpdump();
        let invalid = read_expressions(&data("filter_invalid.txt")).expect("reading the table");
        assert!(invalid.len() >= 40, "only {} expressions", invalid.len());
        let mut accepted = Vec::new();
        for expr in &invalid {
            match tcpdump_error(expr) {
                Some(err) => println!("{expr:<50} {err}"),
                None => accepted.push(expr),
            }
        }
        assert!(accepted.is_empty(), "libpcap accepts {accepted:?}");
    }

    #[test]
    fn frames_tell_expressions_apart() {
        let table = table();
        assert!(
            (3000..=5000).contains(&table.frames.len()),
            "{} frames",
            table.frames.len()
        );
        let all = table.frames.len();
        let mut none = Vec::new();
        let mut every = Vec::new();
        for (expr, kept) in table.expressions.iter().zip(&table.kept) {
            assert!(
                kept.windows(2).all(|w| w[0] < w[1]) && kept.last().is_none_or(|&i| i < all),
                "{expr:?}: tcpdump's output is not a subset of the frames in order"
            );
            match kept.len() {
                0 => none.push(expr.as_str()),
                n if n == all => every.push(expr.as_str()),
                _ => {}
            }
        }
        let discriminating = table.expressions.len() - none.len() - every.len();
        let share = discriminating as f64 / table.expressions.len() as f64;
        println!(
            "{discriminating} of {} expressions ({:.1} %) keep some frames but not all",
            table.expressions.len(),
            100.0 * share
        );
        println!("keep nothing ({}): {none:?}", none.len());
        println!("keep everything ({}): {every:?}", every.len());
        assert!(
            share >= MIN_DISCRIMINATING,
            "only {:.1} % of the expressions discriminate",
            100.0 * share
        );
    }

    /// Expressions that must keep something, so that a frame generator change
    /// that loses a kind of frame shows here rather than as a silently weaker
    /// conformance test.
    #[test]
    fn every_kind_of_frame_is_there() {
        let table = table();
        let must_keep = [
            "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
            "ip[6:2] & 0x1fff != 0",
            "ip and ip[0] & 0xf > 5",
            "ip6 protochain 6",
            "ip6[40] == 135",
            "ip6 protochain 44",
            "arp",
            "rarp",
            "ether proto 0x88cc",
            "vlan and vlan",
            "vlan 100 and vlan 200",
            "mpls 100 and mpls 200 and mpls 300",
            "pppoes 0x27 and ip",
            "pppoes and ip6",
            "pppoed",
            "stp",
            "isis",
            "netbeui",
            "decnet src 1.1",
            "geneve and ip",
            "sctp",
            "ip proto 47",
            "greater 1000",
            "less 64",
            "len > 1500",
            "len < 34",
            "len == 14",
            "len = 10",
        ];
        let missing: Vec<&str> = must_keep
            .iter()
            .copied()
            .filter(|expr| {
                let i = table
                    .expressions
                    .iter()
                    .position(|e| e == expr)
                    .unwrap_or_else(|| panic!("{expr:?} is not in the table"));
                table.kept[i].is_empty()
            })
            .collect();
        assert!(missing.is_empty(), "no frame for {missing:?}");
    }

    /// Expressions libpcap compiles for a live capture only (Linux ancillary
    /// data): tcpdump refuses them for a savefile, netray (a live capture)
    /// takes them.
    const LIVE_ONLY: [&str; 3] = ["inbound", "outbound", "ifindex 1"];

    #[test]
    fn netray_keeps_what_tcpdump_keeps_in_userspace() {
        let table = table();
        let mut wrong = Vec::new();
        for (expr, kept) in table.expressions.iter().zip(&table.kept) {
            let program = match Program::compile(expr, PCAP_SNAPLEN) {
                Ok(program) => program,
                Err(err) => {
                    wrong.push(format!("{expr:?}: {err}"));
                    continue;
                }
            };
            let ours: Vec<usize> = (0..table.frames.len())
                .filter(|&i| program.matches(&table.frames[i]))
                .collect();
            if &ours != kept {
                wrong.push(format!(
                    "{expr:?}: netray keeps {} frames, tcpdump {}",
                    ours.len(),
                    kept.len()
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn netray_rejects_what_tcpdump_rejects_with_its_message() {
        require_tcpdump();
        let invalid = read_expressions(&data("filter_invalid.txt")).expect("reading the table");
        let mut wrong = Vec::new();
        for expr in &invalid {
            let ours = Program::compile(expr, PCAP_SNAPLEN);
            if LIVE_ONLY.contains(&expr.as_str()) {
                if let Err(err) = ours {
                    wrong.push(format!(
                        "{expr:?}: a live capture takes it, netray says {err}"
                    ));
                }
                continue;
            }
            let theirs = tcpdump_error(expr).unwrap_or_default();
            match ours {
                Ok(_) => wrong.push(format!("{expr:?}: accepted, tcpdump says {theirs}")),
                Err(err) if err.message != theirs => {
                    wrong.push(format!(
                        "{expr:?}: netray says {:?}, tcpdump {theirs:?}",
                        err.message
                    ));
                }
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

//! `netray packets` command-line arguments, their validation, and the
//! [`OutputSink`] that writes records as text, JSON lines or pcapng and
//! reports the end-of-run accounting.
//!
//! Three actions share the filter and the outputs: a live capture (eBPF,
//! root), `-r FILE` (packets read from a pcap or pcapng file, unprivileged)
//! and `-d` (print the compiled filter as `tcpdump -d` does, capture
//! nothing).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::json;
use super::pcapng::PcapNgSink;
use super::text;
use super::{CaptureCounts, Direction, PacketRecord};

/// Default snaplen: the kernel side's maximum (tcpdump's 262144 would only be
/// clamped to it); larger than any non-GSO frame.
pub const DEFAULT_SNAPLEN: u32 = crate::packets::capture::MAX_SNAPLEN;

/// tcpdump's default snaplen (its maximum): what `-d` and `-r` compile the
/// filter with when `-s` is not given, so that `netray packets -d` prints
/// what `tcpdump -d` prints (the accepting `ret` returns the snaplen).
pub const TCPDUMP_SNAPLEN: u32 = 262_144;

/// Which directions to capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    /// Received packets only (XDP).
    In,
    /// Sent packets only (TC egress).
    Out,
    /// Both.
    #[default]
    Both,
}

impl DirectionArg {
    /// Whether packets in direction `d` are wanted.
    pub fn includes(self, d: Direction) -> bool {
        matches!(
            (self, d),
            (DirectionArg::Both, _)
                | (DirectionArg::In, Direction::Ingress)
                | (DirectionArg::Out, Direction::Egress)
        )
    }
}

/// Arguments of `netray packets`.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct PacketsArgs {
    /// Interface to capture on (repeatable; default: all up interfaces).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Print one JSON object per packet instead of text lines.
    #[arg(long)]
    pub json: bool,
    /// Write packets to a pcapng file (`-` for stdout) instead of printing.
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Stop after COUNT packets.
    #[arg(short = 'c', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,
    /// Stop after SECS seconds (fractions allowed).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Capture at most BYTES bytes of each packet [default: 16384]. With -r,
    /// cut the packets read to BYTES (default: as in the file); with -d, the
    /// value the program returns (default: 262144, as tcpdump).
    #[arg(short = 's', long, value_name = "BYTES")]
    pub snaplen: Option<u32>,
    /// Show per-flow packet and byte rates (top talkers) instead of packets.
    #[arg(long)]
    pub flows: bool,
    /// Which direction(s) to capture. With -r: the packets a pcapng file
    /// marks inbound or outbound (pcap files record no direction).
    #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
    pub direction: DirectionArg,
    /// Read packets from a pcap or pcapng file (`-` for stdin) instead of
    /// capturing: no eBPF, no root. Ethernet captures only.
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub read: Option<PathBuf>,
    /// Print the compiled filter program as `tcpdump -d` does, and exit
    /// without capturing (no root needed).
    #[arg(short = 'd')]
    pub dump: bool,
    /// Filter expression in tcpdump's language, compiled by libpcap (e.g.
    /// `tcp port 443`, `tcp[tcpflags] & tcp-syn != 0`).
    #[arg(value_name = "FILTER", trailing_var_arg = true, num_args = 0..)]
    pub filter: Vec<String>,
}

/// Where and how packets are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// tcpdump-like lines on stdout.
    Text,
    /// JSON lines on stdout.
    Json,
    /// pcapng to stdout (`-w -`).
    PcapngStdout,
    /// pcapng to a file.
    PcapngFile(PathBuf),
    /// Flow table (`--flows`), as JSON when `json` is set.
    Flows {
        /// Print the table as JSON lines.
        json: bool,
    },
}

/// What a `netray packets` run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Capture live on the interfaces (eBPF; needs root).
    Capture,
    /// `-r FILE`: filter the packets of a pcap or pcapng file (`-` is
    /// stdin) into the output.
    Read {
        /// The file.
        path: PathBuf,
        /// `-s`: cut the packets read to this many bytes (after filtering,
        /// as a capture cuts after its filter); `None` keeps them as the
        /// file has them.
        cut: Option<u32>,
    },
    /// `-d`: print the compiled filter program and exit.
    Dump,
}

/// Validated settings for a capture run.
#[derive(Clone, Debug, PartialEq)]
pub struct PacketsConfig {
    /// Capture, read a file, or print the filter program.
    pub action: Action,
    /// Interfaces (empty: all).
    pub interfaces: Vec<String>,
    /// The filter words joined with spaces, if any.
    pub filter: Option<String>,
    /// Output.
    pub output: OutputMode,
    /// Packet limit.
    pub count: Option<u64>,
    /// Time limit.
    pub duration: Option<Duration>,
    /// Snaplen (bytes): what the capture copies of each packet and the
    /// filter program's accepting `ret` returns ([`DEFAULT_SNAPLEN`] for a
    /// capture, [`TCPDUMP_SNAPLEN`] for `-d` and `-r` unless `-s` is
    /// given).
    pub snaplen: u32,
    /// Direction(s).
    pub direction: DirectionArg,
}

/// An invalid combination or value of arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// `--snaplen 0`.
    #[error("--snaplen must be at least 1 byte (got 0); the default is {DEFAULT_SNAPLEN}")]
    ZeroSnaplen,
    /// `-c 0`.
    #[error("-c/--count must be at least 1 (omit it to capture until interrupted)")]
    ZeroCount,
    /// Bad `--duration`.
    #[error("--duration must be a positive number of seconds (got {0})")]
    BadDuration(String),
    /// `--flows` with `-w`.
    #[error("--flows prints a flow table and writes no packets, so it cannot be combined with -w")]
    FlowsWithWrite,
    /// `--flows` with `-c`.
    #[error("--flows does not deliver packets, so -c cannot stop it; use --duration")]
    FlowsWithCount,
    /// `--json` with `-w`.
    #[error("--json and -w both choose the output format; use one of them")]
    JsonWithWrite,
    /// `-w ""`.
    #[error("-w needs a file name (or - for stdout)")]
    EmptyWritePath,
    /// `-i ""`.
    #[error("-i needs an interface name")]
    EmptyInterface,
    /// `-r ""`.
    #[error("-r needs a file name (or - for stdin)")]
    EmptyReadPath,
    /// `-r` with `-i`.
    #[error("-r reads packets from a file, so it cannot be combined with -i")]
    ReadWithInterface,
    /// `-r` with `--duration`.
    #[error(
        "--duration stops a live capture; -r reads the file to its end (use -c to stop earlier)"
    )]
    ReadWithDuration,
    /// `-d` with an option about packets (named in the message).
    #[error(
        "-d prints the compiled filter and captures nothing, so it cannot be combined with {0}"
    )]
    DumpWith(&'static str),
}

impl PacketsArgs {
    /// Checks the arguments and turns them into a [`PacketsConfig`].
    pub fn validate(&self) -> Result<PacketsConfig, ArgsError> {
        if self.snaplen == Some(0) {
            return Err(ArgsError::ZeroSnaplen);
        }
        if self.count == Some(0) {
            return Err(ArgsError::ZeroCount);
        }
        if self.interfaces.iter().any(|i| i.trim().is_empty()) {
            return Err(ArgsError::EmptyInterface);
        }
        let duration = match self.duration {
            None => None,
            Some(d) => Some(
                Duration::try_from_secs_f64(d)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| ArgsError::BadDuration(d.to_string()))?,
            ),
        };
        let action = if self.dump {
            // -i is accepted (tcpdump -d -i IFACE is common): every
            // interface netray captures on is Ethernet, so the program is
            // the same. --direction does not change the program either.
            let conflict = [
                (self.read.is_some(), "-r"),
                (self.write.is_some(), "-w"),
                (self.json, "--json"),
                (self.flows, "--flows"),
                (self.count.is_some(), "-c"),
                (self.duration.is_some(), "--duration"),
            ]
            .into_iter()
            .find_map(|(given, name)| given.then_some(name));
            if let Some(name) = conflict {
                return Err(ArgsError::DumpWith(name));
            }
            Action::Dump
        } else if let Some(path) = &self.read {
            if path.as_os_str().is_empty() {
                return Err(ArgsError::EmptyReadPath);
            }
            if !self.interfaces.is_empty() {
                return Err(ArgsError::ReadWithInterface);
            }
            if duration.is_some() {
                return Err(ArgsError::ReadWithDuration);
            }
            Action::Read {
                path: path.clone(),
                cut: self.snaplen,
            }
        } else {
            Action::Capture
        };
        let output = match (&self.write, self.flows, self.json) {
            (Some(_), true, _) => return Err(ArgsError::FlowsWithWrite),
            (Some(_), _, true) => return Err(ArgsError::JsonWithWrite),
            (Some(p), false, false) if p.as_os_str().is_empty() => {
                return Err(ArgsError::EmptyWritePath);
            }
            (Some(p), false, false) if p.as_os_str() == "-" => OutputMode::PcapngStdout,
            (Some(p), false, false) => OutputMode::PcapngFile(p.clone()),
            (None, true, json) => {
                if self.count.is_some() {
                    return Err(ArgsError::FlowsWithCount);
                }
                OutputMode::Flows { json }
            }
            (None, false, true) => OutputMode::Json,
            (None, false, false) => OutputMode::Text,
        };
        let snaplen = self.snaplen.unwrap_or(match action {
            Action::Capture => DEFAULT_SNAPLEN,
            Action::Read { .. } | Action::Dump => TCPDUMP_SNAPLEN,
        });
        let filter = self.filter.join(" ");
        Ok(PacketsConfig {
            action,
            interfaces: self.interfaces.clone(),
            filter: (!filter.trim().is_empty()).then(|| filter.trim().to_string()),
            output,
            count: self.count,
            duration,
            snaplen,
            direction: self.direction,
        })
    }
}

/// Whether the caller should keep feeding packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkStatus {
    /// Keep going.
    Continue,
    /// Stop: the `-c` limit is reached, or the reader went away (closed
    /// pipe, e.g. `netray packets | head`).
    Done,
}

/// The format an [`OutputSink`] writes.
enum SinkKind {
    /// Text lines.
    Text(Box<dyn Write + Send>),
    /// JSON lines.
    Json(Box<dyn Write + Send>),
    /// pcapng blocks.
    Pcapng(PcapNgSink<Box<dyn Write + Send>>),
}

/// Writes [`PacketRecord`]s in the chosen format and enforces `-c`.
pub struct OutputSink {
    /// Format and destination.
    kind: SinkKind,
    /// Packets written so far.
    written: u64,
    /// `-c`.
    limit: Option<u64>,
    /// Set once [`SinkStatus::Done`] was returned.
    done: bool,
}

impl OutputSink {
    /// Opens the destination of a validated configuration. Returns `None`
    /// for [`OutputMode::Flows`], which prints tables instead (see
    /// [`super::flows`]).
    pub fn open(cfg: &PacketsConfig) -> io::Result<Option<Self>> {
        // Buffered: the capture loop calls `flush` after each batch it
        // drains from the ring (a few milliseconds of packets at most), so
        // output stays live, including for a reader on a pipe such as
        // `wireshark -k -i -`, without a write per packet.
        let stdout = || -> Box<dyn Write + Send> { Box::new(BufWriter::new(io::stdout())) };
        // The snaplen a pcapng file declares (and the sink enforces): a
        // capture's, or for packets read from a file the -s cut, else none
        // (0: the packets stay as the input file has them).
        let snaplen = match &cfg.action {
            Action::Read { cut, .. } => cut.unwrap_or(0),
            Action::Capture | Action::Dump => cfg.snaplen,
        };
        let kind = match &cfg.output {
            OutputMode::Text => SinkKind::Text(stdout()),
            OutputMode::Json => SinkKind::Json(stdout()),
            OutputMode::PcapngStdout => {
                SinkKind::Pcapng(PcapNgSink::new(stdout(), snaplen, false)?)
            }
            OutputMode::PcapngFile(p) => {
                let f = File::create(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create {}: {e}", p.display()))
                })?;
                SinkKind::Pcapng(PcapNgSink::new(
                    Box::new(BufWriter::with_capacity(1 << 20, f)) as Box<dyn Write + Send>,
                    snaplen,
                    false,
                )?)
            }
            OutputMode::Flows { .. } => return Ok(None),
        };
        Ok(Some(Self {
            kind,
            written: 0,
            limit: cfg.count,
            done: false,
        }))
    }

    /// Text output to any writer (tests, embedding).
    pub fn text(w: Box<dyn Write + Send>, limit: Option<u64>) -> Self {
        Self {
            kind: SinkKind::Text(w),
            written: 0,
            limit,
            done: false,
        }
    }

    /// JSON-lines output to any writer.
    pub fn json(w: Box<dyn Write + Send>, limit: Option<u64>) -> Self {
        Self {
            kind: SinkKind::Json(w),
            written: 0,
            limit,
            done: false,
        }
    }

    /// pcapng output to any writer.
    pub fn pcapng(
        w: Box<dyn Write + Send>,
        snaplen: u32,
        flush_each: bool,
        limit: Option<u64>,
    ) -> io::Result<Self> {
        let sink = PcapNgSink::new(w, snaplen, flush_each)?;
        Ok(Self {
            kind: SinkKind::Pcapng(sink),
            written: 0,
            limit,
            done: false,
        })
    }

    /// Writes one record. After [`SinkStatus::Done`] further records are
    /// ignored. A closed pipe ends the output quietly (like tcpdump);
    /// other I/O errors are returned.
    pub fn write(&mut self, rec: &PacketRecord<'_>) -> io::Result<SinkStatus> {
        if self.done {
            return Ok(SinkStatus::Done);
        }
        let res = match &mut self.kind {
            SinkKind::Text(w) => writeln!(w, "{}", text::format_line(rec)),
            SinkKind::Json(w) => writeln!(w, "{}", json::format_line(rec)),
            SinkKind::Pcapng(p) => p.write(rec),
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.done = true;
                return Ok(SinkStatus::Done);
            }
            Err(e) => return Err(e),
        }
        self.written += 1;
        if self.limit.is_some_and(|l| self.written >= l) {
            self.done = true;
            return Ok(SinkStatus::Done);
        }
        Ok(SinkStatus::Continue)
    }

    /// Declares an interface before any packet from it, so that a pcapng
    /// file lists every capture interface even if some saw no traffic.
    /// Does nothing for text and JSON output.
    pub fn declare_interface(&mut self, ifindex: u32, name: &str) -> io::Result<()> {
        if let SinkKind::Pcapng(p) = &mut self.kind {
            p.add_interface(ifindex, name)?;
        }
        Ok(())
    }

    /// Hands what is buffered to the destination (after each batch; a
    /// closed pipe ends the output quietly, like [`Self::write`]).
    pub fn flush(&mut self) -> io::Result<SinkStatus> {
        let res = match &mut self.kind {
            SinkKind::Text(w) | SinkKind::Json(w) => w.flush(),
            SinkKind::Pcapng(p) => p.flush(),
        };
        match res {
            Ok(()) if self.done => Ok(SinkStatus::Done),
            Ok(()) => Ok(SinkStatus::Continue),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.done = true;
                Ok(SinkStatus::Done)
            }
            Err(e) => Err(e),
        }
    }

    /// Packets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes everything (call before printing the accounting).
    pub fn finish(mut self) -> io::Result<()> {
        let res = match &mut self.kind {
            SinkKind::Text(w) | SinkKind::Json(w) => w.flush(),
            SinkKind::Pcapng(p) => p.flush(),
        };
        match res {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }
}

/// End-of-run accounting in tcpdump's words, for stderr.
///
/// "captured" is what reached userspace, "received by filter" what the
/// in-kernel filter matched, "dropped by kernel" the matched packets lost
/// to a full ring buffer. Losses are always printed, and flagged, because
/// a silently incomplete capture is worse than a failed one.
pub fn accounting(counts: &CaptureCounts) -> String {
    let mut s = format!(
        "{} packets captured\n{} packets received by filter\n{} packets dropped by kernel\n{} packets seen by the capture programs\n",
        counts.delivered, counts.matched, counts.lost, counts.seen
    );
    if counts.lost > 0 {
        s.push_str(&format!(
            "warning: {} matched packets were lost (ring buffer full); narrow the filter or lower --snaplen\n",
            counts.lost
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::{Arc, Mutex};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        a: PacketsArgs,
    }

    fn parse(args: &[&str]) -> Result<PacketsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("packets").chain(args.iter().copied())).map(|c| c.a)
    }

    fn cfg(args: &[&str]) -> Result<PacketsConfig, ArgsError> {
        parse(args).unwrap().validate()
    }

    #[test]
    fn parses_everything() {
        let c = cfg(&[
            "-i",
            "eth0",
            "-i",
            "lo",
            "--snaplen",
            "96",
            "-c",
            "10",
            "--duration",
            "1.5",
            "--direction",
            "in",
            "tcp",
            "port",
            "443",
        ])
        .unwrap();
        assert_eq!(c.interfaces, vec!["eth0", "lo"]);
        assert_eq!(c.filter.as_deref(), Some("tcp port 443"));
        assert_eq!(c.snaplen, 96);
        assert_eq!(c.count, Some(10));
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert_eq!(c.direction, DirectionArg::In);
        assert_eq!(c.output, OutputMode::Text);
        let d = cfg(&[]).unwrap();
        assert_eq!(
            (d.snaplen, d.filter, d.direction),
            (DEFAULT_SNAPLEN, None, DirectionArg::Both)
        );
        assert_eq!(cfg(&["--json"]).unwrap().output, OutputMode::Json);
        assert_eq!(cfg(&["-w", "-"]).unwrap().output, OutputMode::PcapngStdout);
        assert_eq!(
            cfg(&["-w", "x.pcapng"]).unwrap().output,
            OutputMode::PcapngFile("x.pcapng".into())
        );
        assert_eq!(
            cfg(&["--flows", "--json"]).unwrap().output,
            OutputMode::Flows { json: true }
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(cfg(&["--snaplen", "0"]), Err(ArgsError::ZeroSnaplen));
        assert_eq!(cfg(&["-c", "0"]), Err(ArgsError::ZeroCount));
        assert_eq!(cfg(&["--flows", "-w", "f"]), Err(ArgsError::FlowsWithWrite));
        assert_eq!(cfg(&["--flows", "-c", "3"]), Err(ArgsError::FlowsWithCount));
        assert_eq!(cfg(&["--json", "-w", "f"]), Err(ArgsError::JsonWithWrite));
        // clap already refuses an empty path; the check covers callers
        // that build the arguments in code.
        assert!(parse(&["-w", ""]).is_err());
        let a = PacketsArgs {
            write: Some(PathBuf::new()),
            snaplen: Some(1),
            ..Default::default()
        };
        assert_eq!(a.validate(), Err(ArgsError::EmptyWritePath));
        assert_eq!(cfg(&["-i", ""]), Err(ArgsError::EmptyInterface));
        assert!(matches!(
            cfg(&["--duration", "0"]),
            Err(ArgsError::BadDuration(_))
        ));
        assert!(matches!(
            cfg(&["--duration=-1"]),
            Err(ArgsError::BadDuration(_))
        ));
        assert!(matches!(
            cfg(&["--duration", "NaN"]),
            Err(ArgsError::BadDuration(_))
        ));
        let e = parse(&["--direction", "sideways"]).unwrap_err().to_string();
        assert!(
            e.contains("sideways") && e.contains("possible values: in, out, both"),
            "{e}"
        );
        assert!(parse(&["--snaplen", "-5"]).is_err());
        assert!(ArgsError::ZeroSnaplen.to_string().contains("--snaplen"));
    }

    #[test]
    fn read_flag() {
        let c = cfg(&["-r", "in.pcap", "-w", "out.pcapng", "tcp", "port", "80"]).unwrap();
        assert_eq!(
            c.action,
            Action::Read {
                path: "in.pcap".into(),
                cut: None
            }
        );
        assert_eq!(c.output, OutputMode::PcapngFile("out.pcapng".into()));
        assert_eq!(c.filter.as_deref(), Some("tcp port 80"));
        // The filter compiles as tcpdump -r compiles it; no cut unless -s.
        assert_eq!(c.snaplen, TCPDUMP_SNAPLEN);
        let c = cfg(&["--read", "-", "-s", "64", "--json", "-c", "5"]).unwrap();
        assert_eq!(
            c.action,
            Action::Read {
                path: "-".into(),
                cut: Some(64)
            }
        );
        assert_eq!((c.snaplen, c.count), (64, Some(5)));
        assert_eq!(c.output, OutputMode::Json);
        assert!(matches!(
            cfg(&["-r", "f", "--flows"]).unwrap().action,
            Action::Read { .. }
        ));
        // A live capture keeps the kernel side's default.
        assert_eq!(cfg(&[]).unwrap().action, Action::Capture);
        assert_eq!(cfg(&[]).unwrap().snaplen, DEFAULT_SNAPLEN);
    }

    #[test]
    fn read_conflicts() {
        assert_eq!(
            cfg(&["-r", "f", "-i", "eth0"]),
            Err(ArgsError::ReadWithInterface)
        );
        assert_eq!(
            cfg(&["-r", "f", "--duration", "2"]),
            Err(ArgsError::ReadWithDuration)
        );
        assert_eq!(cfg(&["-r", "f", "-s", "0"]), Err(ArgsError::ZeroSnaplen));
        // The live mode's output conflicts hold for files too.
        assert_eq!(
            cfg(&["-r", "f", "--flows", "-c", "2"]),
            Err(ArgsError::FlowsWithCount)
        );
        assert_eq!(
            cfg(&["-r", "f", "--json", "-w", "o"]),
            Err(ArgsError::JsonWithWrite)
        );
        assert!(parse(&["-r", ""]).is_err());
        let a = PacketsArgs {
            read: Some(PathBuf::new()),
            ..Default::default()
        };
        assert_eq!(a.validate(), Err(ArgsError::EmptyReadPath));
        assert!(parse(&["-r"]).is_err());
        assert!(ArgsError::ReadWithInterface.to_string().contains("-i"));
    }

    #[test]
    fn dump_flag() {
        let c = cfg(&["-d", "tcp[tcpflags]", "&", "tcp-syn", "!=", "0"]).unwrap();
        assert_eq!(c.action, Action::Dump);
        assert_eq!(c.filter.as_deref(), Some("tcp[tcpflags] & tcp-syn != 0"));
        // tcpdump -d's default snaplen, or -s.
        assert_eq!(c.snaplen, TCPDUMP_SNAPLEN);
        assert_eq!(cfg(&["-d", "-s", "100", "ip"]).unwrap().snaplen, 100);
        assert_eq!(cfg(&["-d"]).unwrap().filter, None);
        // Options that change nothing in the program are accepted.
        assert_eq!(
            cfg(&["-d", "-i", "eth0", "--direction", "in"])
                .unwrap()
                .action,
            Action::Dump
        );
        for (extra, name) in [
            (&["-w", "o.pcapng"][..], "-w"),
            (&["-r", "in.pcap"], "-r"),
            (&["--json"], "--json"),
            (&["--flows"], "--flows"),
            (&["-c", "3"], "-c"),
            (&["--duration", "1"], "--duration"),
            // The dump conflict is named first, not the output one.
            (&["--flows", "-c", "3"], "--flows"),
        ] {
            let args: Vec<&str> = std::iter::once("-d").chain(extra.iter().copied()).collect();
            assert_eq!(cfg(&args), Err(ArgsError::DumpWith(name)), "{args:?}");
        }
        assert!(
            ArgsError::DumpWith("-w")
                .to_string()
                .contains("cannot be combined with -w")
        );
        assert_eq!(cfg(&["-d", "-s", "0"]), Err(ArgsError::ZeroSnaplen));
    }

    #[test]
    fn direction_filter() {
        assert!(DirectionArg::In.includes(Direction::Ingress));
        assert!(!DirectionArg::In.includes(Direction::Egress));
        assert!(DirectionArg::Out.includes(Direction::Egress));
        assert!(DirectionArg::Both.includes(Direction::Ingress));
        // Unknown (a pcap file's packets) is neither in nor out.
        assert!(DirectionArg::Both.includes(Direction::Unknown));
        assert!(!DirectionArg::In.includes(Direction::Unknown));
        assert!(!DirectionArg::Out.includes(Direction::Unknown));
    }

    /// A writer the test can inspect after handing it to the sink.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Fails like a closed pipe.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn rec() -> PacketRecord<'static> {
        PacketRecord {
            ts_ns: 0,
            ifindex: 1,
            iface: "lo".into(),
            direction: Direction::Ingress,
            wire_len: 3,
            data: vec![1, 2, 3].into(),
        }
    }

    #[test]
    fn sink_count_and_formats() {
        let buf = Shared::default();
        let mut s = OutputSink::json(Box::new(buf.clone()), Some(2));
        assert_eq!(s.write(&rec()).unwrap(), SinkStatus::Continue);
        assert_eq!(s.write(&rec()).unwrap(), SinkStatus::Done);
        assert_eq!(s.write(&rec()).unwrap(), SinkStatus::Done);
        assert_eq!(s.written(), 2);
        s.finish().unwrap();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 2);
        for l in out.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        let buf = Shared::default();
        let mut s = OutputSink::text(Box::new(buf.clone()), None);
        s.write(&rec()).unwrap();
        assert!(
            String::from_utf8(buf.0.lock().unwrap().clone())
                .unwrap()
                .contains(" lo In ")
        );
        let buf = Shared::default();
        let mut s = OutputSink::pcapng(Box::new(buf.clone()), 64, true, None).unwrap();
        s.write(&rec()).unwrap();
        // Flushed per packet: the EPB is already in the buffer.
        assert!(buf.0.lock().unwrap().len() > 28 + 20 + 32);
    }

    #[test]
    fn closed_pipe_ends_quietly() {
        let mut s = OutputSink::text(Box::new(Closed), None);
        assert_eq!(s.write(&rec()).unwrap(), SinkStatus::Done);
        assert_eq!(s.written(), 0);
        s.finish().unwrap();
    }

    #[test]
    fn accounting_text() {
        let c = CaptureCounts {
            seen: 100,
            matched: 10,
            delivered: 8,
            lost: 2,
        };
        let a = accounting(&c);
        assert!(a.starts_with(
            "8 packets captured\n10 packets received by filter\n2 packets dropped by kernel\n100 packets seen"
        ));
        assert!(a.contains("warning: 2 matched packets were lost"));
        assert!(!accounting(&CaptureCounts::default()).contains("warning"));
    }
}

//! `netray packets` command-line arguments, their validation, and the
//! [`OutputSink`] that writes records as text, JSON lines or pcapng and
//! reports the end-of-run accounting.

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
    /// Capture at most BYTES bytes of each packet.
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = DEFAULT_SNAPLEN)]
    pub snaplen: u32,
    /// Show per-flow packet and byte rates (top talkers) instead of packets.
    #[arg(long)]
    pub flows: bool,
    /// Which direction(s) to capture.
    #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
    pub direction: DirectionArg,
    /// Filter expression (tcpdump-like words, e.g. `tcp port 443`).
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

/// Validated settings for a capture run.
#[derive(Clone, Debug, PartialEq)]
pub struct PacketsConfig {
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
    /// Snaplen (bytes).
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
}

impl PacketsArgs {
    /// Checks the arguments and turns them into a [`PacketsConfig`].
    pub fn validate(&self) -> Result<PacketsConfig, ArgsError> {
        if self.snaplen == 0 {
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
        let filter = self.filter.join(" ");
        Ok(PacketsConfig {
            interfaces: self.interfaces.clone(),
            filter: (!filter.trim().is_empty()).then(|| filter.trim().to_string()),
            output,
            count: self.count,
            duration,
            snaplen: self.snaplen,
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
        let kind = match &cfg.output {
            OutputMode::Text => SinkKind::Text(stdout()),
            OutputMode::Json => SinkKind::Json(stdout()),
            OutputMode::PcapngStdout => {
                SinkKind::Pcapng(PcapNgSink::new(stdout(), cfg.snaplen, false)?)
            }
            OutputMode::PcapngFile(p) => {
                let f = File::create(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create {}: {e}", p.display()))
                })?;
                SinkKind::Pcapng(PcapNgSink::new(
                    Box::new(BufWriter::with_capacity(1 << 20, f)) as Box<dyn Write + Send>,
                    cfg.snaplen,
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
            snaplen: 1,
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
    fn direction_filter() {
        assert!(DirectionArg::In.includes(Direction::Ingress));
        assert!(!DirectionArg::In.includes(Direction::Egress));
        assert!(DirectionArg::Out.includes(Direction::Egress));
        assert!(DirectionArg::Both.includes(Direction::Ingress));
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

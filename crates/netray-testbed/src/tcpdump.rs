//! tcpdump as the reference for filter conformance: which frames of a pcap
//! file an expression keeps, and whether libpcap accepts the expression.
//!
//! Everything runs tcpdump on savefiles, never on an interface, so no root
//! is needed, and expressions are compiled the way libpcap compiles them
//! for a savefile: `inbound`, `outbound` and `ifindex`, which need a live
//! Linux capture's metadata, are rejected, as they are in netray's own
//! savefile-style compilation.

use std::{
    io::{self, Write},
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, bail, ensure};

use crate::frames::pcap_header;

/// tcpdump's version line (`tcpdump version 4.99.3`), or an error saying
/// that tcpdump is missing and how to install it. Tests call it first so
/// they fail with that message instead of a confusing one.
pub fn tcpdump_version() -> anyhow::Result<String> {
    let output = Command::new("tcpdump")
        .arg("--version")
        .output()
        .context("tcpdump is not installed: run `cargo xtask setup` (Debian package tcpdump)")?;
    ensure!(
        output.status.success(),
        "tcpdump --version failed: {output:?}"
    );
    // 4.99 prints the versions on stdout, older ones on stderr.
    let text = [output.stdout, output.stderr].concat();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// libpcap's error for an expression it rejects on an Ethernet savefile
/// (`tcpdump -r - -d -- EXPR`, reading a pcap file without frames from
/// stdin: it sets the linktype and savefile mode), without tcpdump's
/// `tcpdump: ` prefix, e.g. `can't parse filter expression: syntax error`;
/// `None` when the expression compiles.
///
/// # Panics
///
/// When tcpdump cannot be run at all: a missing tool must not read as
/// "every expression is invalid".
pub fn tcpdump_error(expr: &str) -> Option<String> {
    let cannot_run = |err: io::Error| -> ! {
        panic!("cannot run tcpdump (run `cargo xtask setup` if it is missing): {err}")
    };
    let mut child = Command::new("tcpdump")
        .args(["-r", "-", "-d", "--", expr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| cannot_run(err));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // tcpdump may exit before reading all of it: ignore a broken pipe.
    let _ = stdin.write_all(&pcap_header());
    drop(stdin);
    let output = child
        .wait_with_output()
        .unwrap_or_else(|err| cannot_run(err));
    if output.status.success() {
        return None;
    }
    Some(error_line(&output))
}

/// The last line of tcpdump's stderr that is not its "reading from file"
/// banner or a warning: the error.
fn error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .rfind(|line| !line.starts_with("reading from file") && !line.starts_with("Warning:"))
        .unwrap_or("tcpdump failed without a message");
    line.strip_prefix("tcpdump: ").unwrap_or(line).to_owned()
}

/// The indexes of the frames of `pcap` that tcpdump keeps with `expr`, in
/// order. The file must be one of [`crate::frames::write_pcap`]'s, where frame `i` has the
/// timestamp `i` seconds: tcpdump writes the kept frames to its stdout as a
/// pcap file (`-w -`, so it never has to create a file, as whichever user it
/// may switch to) and their timestamps are the indexes. Errors carry
/// tcpdump's error, e.g. for an expression libpcap rejects.
pub fn tcpdump_kept(pcap: &Path, expr: &str) -> anyhow::Result<Vec<usize>> {
    let output = Command::new("tcpdump")
        .arg("-r")
        .arg(pcap)
        .args(["-w", "-", "--", expr])
        .output()
        .context("running tcpdump (run `cargo xtask setup` if it is missing)")?;
    if !output.status.success() {
        bail!("tcpdump rejected {expr:?}: {}", error_line(&output));
    }
    pcap_timestamps(&output.stdout)
        .with_context(|| format!("reading tcpdump's output for {expr:?}"))
}

/// [`tcpdump_kept`] for many expressions, run in parallel (one tcpdump per
/// CPU), results in the order of `exprs`.
pub fn tcpdump_kept_many(pcap: &Path, exprs: &[String]) -> Vec<anyhow::Result<Vec<usize>>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<anyhow::Result<Vec<usize>>>> = exprs.iter().map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(expr) = exprs.get(i) else { break };
                    let result = tcpdump_kept(pcap, expr);
                    slots.lock().expect("no worker panics holding the lock")[i] = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|result| result.expect("every expression was run"))
        .collect()
}

/// The seconds of every record's timestamp in a classic pcap file, in
/// either byte order (tcpdump writes its host's).
fn pcap_timestamps(data: &[u8]) -> anyhow::Result<Vec<usize>> {
    ensure!(data.len() >= 24, "{} bytes, no pcap header", data.len());
    let magic = [data[0], data[1], data[2], data[3]];
    let word: fn([u8; 4]) -> u32 = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => u32::from_le_bytes,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => u32::from_be_bytes,
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let read = |at: usize| word([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    let mut indexes = Vec::new();
    let mut at = 24;
    while at < data.len() {
        ensure!(at + 16 <= data.len(), "record header cut at byte {at}");
        let caplen = read(at + 8) as usize;
        ensure!(
            at + 16 + caplen <= data.len(),
            "record data cut at byte {at}"
        );
        indexes.push(read(at) as usize);
        at += 16 + caplen;
    }
    Ok(indexes)
}

/// The lines of a filter table (`tests/data/filter_*.txt`): one expression
/// per line, trimmed; blank lines and lines starting with `#` skipped.
pub fn read_expressions(path: &Path) -> io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

//! `netray conns` benchmark (not a test: it prints figures, asserts nothing
//! about speed). Run as root: `cargo xtask bench`, or
//! `cargo bench -p netray --bench conns`.
//!
//! Connection churn on loopback, in a private network namespace (so the
//! TIME_WAIT sockets and port usage stay out of the host's way; `lo` there
//! is the same loopback driver): worker threads connect to one of several
//! listeners, the server side accepts, both close (client first). Every
//! connection is four `netray conns` events (connect, accept, two closes).
//! Side by side in one run:
//! 1. connections/s at full speed without and with `netray conns --json`
//!    attached (output to /dev/null); rounds alternate off/on so that drift
//!    of the VM affects both equally; medians and their ratio;
//! 2. events lost at fixed connection rates, increasing up to full speed:
//!    connections made, events netray read, events lost (ring buffer full,
//!    socket table full, from netray's end-of-run summary) and netray's CPU
//!    time per event, and program runs the kernel skipped (a BPF program
//!    already running on that CPU: events never produced, counted from the
//!    programs' `recursion_misses`); the first rate with a loss is reported
//!    (or that none was found up to full speed).
//!
//! Everything is cleaned up on exit and on panic: the namespace by
//! `Netns`'s Drop, netray by the `Netray` guard's Drop.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use netray_testbed::Netns;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
/// Seconds per churn run.
const SECS: f64 = 3.0;
/// Alternating off/on rounds in part 1.
const ROUNDS: usize = 3;
/// Client threads (the VM has 2 cores; the server side has one thread per
/// listener, mostly blocked in accept).
const WORKERS: usize = 2;
/// Listeners (distinct ports spread the 4-tuples).
const LISTENERS: usize = 8;
/// Fixed rates of part 2, connections/s (0: full speed).
const RATES: [u64; 8] = [1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 20_000, 0];

/// A running `netray conns`, killed on drop.
struct Netray {
    child: Child,
}

impl Netray {
    fn start() -> Netray {
        let mut child = Command::new(NETRAY)
            .args(["conns", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netray conns");
        // Wait for "tracing (...)" on stderr.
        let mut stderr = child.stderr.take().expect("stderr");
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("tracing (") {
            let n = stderr.read(&mut buf).expect("reading netray's stderr");
            assert!(n > 0, "netray exited: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        child.stderr = Some(stderr);
        Netray { child }
    }

    /// CPU seconds (user + system) so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the ")" of comm: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }

    /// SIGINT, then the summary: (events read, lost in the ring buffer or
    /// the socket table, program runs the kernel skipped).
    fn stop(mut self) -> (u64, u64, u64) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        let _ = self.child.wait();
        let summary = text
            .lines()
            .find(|l| l.contains("events read"))
            .unwrap_or_else(|| panic!("no summary from netray: {text}"))
            .to_string();
        let numbers: Vec<u64> = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        // "N events read, P printed; lost: R (ring buffer full), T (socket
        // table full), H hostname results; S state changes the kernel did
        // not run netray's program for": (read, lost, skipped).
        (numbers[0], numbers[2] + numbers[3], numbers[5])
    }
}

impl Drop for Netray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the churn for `SECS` at `rate` connections/s (0: full speed) in a
/// fresh namespace (so no TIME_WAIT sockets of earlier runs slow the port
/// allocator down); returns connections completed and the elapsed time.
fn churn(rate: u64) -> (u64, f64) {
    let ns = Netns::new().expect("creating a network namespace (run as root)");
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        .expect("sysctl");
    ns.run(|| {
        let listeners: Vec<TcpListener> = (0..LISTENERS)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for listener in &listeners {
                let stop = stop.clone();
                s.spawn(move || {
                    listener.set_nonblocking(false).ok();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((mut conn, _)) = listener.accept() {
                            // Wait for the client's FIN, then close.
                            let mut buf = [0u8; 16];
                            let _ = conn.read(&mut buf);
                        }
                    }
                });
            }
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(SECS);
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let addrs = addrs.clone();
                    let done = done.clone();
                    s.spawn(move || {
                        let mut i = 0u64;
                        loop {
                            let now = Instant::now();
                            if now >= deadline {
                                break;
                            }
                            if rate > 0 {
                                // Connection i of this worker is due at
                                // (i * WORKERS + w) / rate seconds.
                                let due = start
                                    + Duration::from_secs_f64(
                                        (i * WORKERS as u64 + w as u64) as f64 / rate as f64,
                                    );
                                if due > now {
                                    std::thread::sleep(due - now);
                                }
                            }
                            let addr = addrs[(i as usize + w) % addrs.len()];
                            if let Ok(conn) = TcpStream::connect(addr) {
                                drop(conn);
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            i += 1;
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            let elapsed = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            // Unblock the accept loops.
            for addr in &addrs {
                let _ = TcpStream::connect(addr);
            }
            (done.load(Ordering::Relaxed), elapsed)
        })
    })
    .expect("running in the namespace")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    // Warm-up (page cache, first connections).
    let _ = churn(0);

    println!("netray conns benchmark: loopback connection churn in a private netns");
    println!(
        "({WORKERS} client threads, {LISTENERS} listeners, {SECS} s per run, each connection = 4 events)"
    );
    println!();
    println!("1. connections/s at full speed, without vs with `netray conns --json > /dev/null`");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // (achieved connections/s, events lost) of every run with netray.
    let mut runs: Vec<(f64, u64)> = Vec::new();
    for round in 1..=ROUNDS {
        let (n, secs) = churn(0);
        off.push(n as f64 / secs);
        let netray = Netray::start();
        let (m, secs_on) = churn(0);
        let (events, lost, skipped) = netray.stop();
        on.push(m as f64 / secs_on);
        runs.push((m as f64 / secs_on, lost + skipped));
        println!(
            "   round {round}: off {:>8.0}/s   on {:>8.0}/s   (on: {events} events read, {lost} \
             lost, {skipped} skipped by the kernel)",
            n as f64 / secs,
            m as f64 / secs_on,
        );
    }
    let (off_m, on_m) = (median(off), median(on));
    println!(
        "   median: off {off_m:.0}/s, on {on_m:.0}/s, ratio on/off {:.3} ({:+.1}%)",
        on_m / off_m,
        (on_m / off_m - 1.0) * 100.0
    );
    println!();
    println!("2. events lost at fixed connection rates (netray attached, JSON to /dev/null)");
    println!(
        "   {:>12} {:>12} {:>10} {:>12} {:>10} {:>10} {:>14}",
        "target/s", "achieved/s", "4 x conns", "events read", "lost", "skipped", "netray µs/ev"
    );
    for rate in RATES {
        let netray = Netray::start();
        let cpu0 = netray.cpu_secs();
        let (n, secs) = churn(rate);
        // Let netray drain what is left.
        std::thread::sleep(Duration::from_millis(300));
        let cpu = netray.cpu_secs() - cpu0;
        let (events, lost, skipped) = netray.stop();
        let achieved = n as f64 / secs;
        let target = if rate == 0 {
            "max".to_string()
        } else {
            rate.to_string()
        };
        println!(
            "   {target:>12} {achieved:>12.0} {:>10} {events:>12} {lost:>10} {skipped:>10} {:>14.2}",
            n * 4,
            if events > 0 {
                cpu * 1e6 / events as f64
            } else {
                0.0
            }
        );
        runs.push((achieved, lost + skipped));
    }
    println!();
    let lossy: Vec<f64> = runs.iter().filter(|r| r.1 > 0).map(|r| r.0).collect();
    let first_loss = lossy.iter().copied().fold(f64::INFINITY, f64::min);
    let clean_below = runs
        .iter()
        .filter(|r| r.1 == 0 && r.0 < first_loss)
        .map(|r| r.0)
        .fold(0.0, f64::max);
    if lossy.is_empty() {
        println!(
            "   events lost: none in any run, up to {clean_below:.0} connections/s ({:.0} \
             events/s); the churn generator saturated first",
            clean_below * 4.0
        );
    } else {
        println!(
            "   events lost: zero up to {clean_below:.0} connections/s ({:.0} events/s); loss \
             starts at about {first_loss:.0} connections/s ({} of {} runs with netray lost \
             events)",
            clean_below * 4.0,
            lossy.len(),
            runs.len()
        );
    }
}

//! The real capture programs on every kernel of the matrix, without a
//! network: for each expression of `tests/data/filter_expressions.txt`,
//! libpcap's program translated to eBPF is loaded into the XDP and the TC
//! path (attached program, filter, capture program), and every frame of
//! `netray_testbed::frames::conformance_frames` (every 4th in the guests)
//! is run through both with `BPF_PROG_TEST_RUN`. The frames each path sends to the ring buffer must
//! be exactly those libpcap's own interpreter (`bpf_filter`, what `tcpdump
//! -r` runs) keeps; `filter_tcpdump_table` checks, on the host, that those
//! are tcpdump's on every frame.

use std::path::Path;
use std::time::Instant;

use netray::packets::{capture::TestCapture, ebpf_filter::Hook, filter::Program};
use netray_testbed::frames::{PCAP_SNAPLEN, conformance_frames};
use netray_testbed::tcpdump::read_expressions;

/// Whether the kernel may refuse `frame` for a TC test run: an IPv4 or IPv6
/// frame cut inside its fixed IP header (the skb test run wants that
/// header whole).
fn tc_untestable(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        _ => false,
    }
}

#[test]
fn kernel_programs_keep_what_libpcap_keeps() -> anyhow::Result<()> {
    let expressions = read_expressions(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/filter_expressions.txt"),
    )?;
    let all = conformance_frames();
    // The kernel builds no test packet under 14 bytes (nor do the hooks
    // ever see one). In the matrix's guests (TCG, ~30 times slower per
    // test run) every 4th frame, which still holds every kind and cut:
    // each expression is loaded and verified on each kernel all the same.
    let stride = match std::env::var("NETRAY_KERNEL_STAGE").as_deref() {
        Ok("guest") => 4,
        _ => 1,
    };
    let testable: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].len() >= 14)
        .step_by(stride)
        .collect();
    let frames: Vec<&[u8]> = testable.iter().map(|&i| all[i].as_slice()).collect();
    let start = Instant::now();
    let mut capture = TestCapture::load(&Program::default())?;
    let mut wrong = Vec::new();
    let mut untested = 0usize;
    for expr in &expressions {
        let program = Program::compile(expr, PCAP_SNAPLEN)?;
        if let Err(err) = capture.set_filter(&program) {
            wrong.push(format!("{expr:?}: {err:#}"));
            continue;
        }
        for hook in [Hook::Xdp, Hook::Tc] {
            let verdicts = capture.run(hook, &frames)?;
            for (n, verdict) in verdicts.iter().enumerate() {
                let i = testable[n];
                let theirs = program.matches(frames[n]);
                match verdict {
                    Some(ours) if *ours != theirs => wrong.push(format!(
                        "{expr:?} {hook:?}: frame {i} ({} bytes): kernel {ours}, libpcap {theirs}",
                        frames[n].len()
                    )),
                    Some(_) => {}
                    None if hook == Hook::Tc && tc_untestable(frames[n]) => untested += 1,
                    None => wrong.push(format!(
                        "{expr:?} {hook:?}: frame {i}: the kernel refused to run it"
                    )),
                }
            }
        }
    }
    println!(
        "kernel: {} expressions x {} frames (1 testable frame in {stride}) x 2 hooks in {:.1?} \
         ({untested} truncated IP frames the kernel does not test-run at TC)",
        expressions.len(),
        frames.len(),
        start.elapsed()
    );
    let shown: Vec<&String> = wrong.iter().take(40).collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "{} disagreements with libpcap, first ones:\n{}",
        wrong.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn live_only_expressions_see_the_hooks_direction_and_interface() -> anyhow::Result<()> {
    let mut frame = vec![0u8; 60];
    frame[12] = 0x08;
    frame[14] = 0x45;
    let mut capture = TestCapture::load(&Program::default())?;
    for (expr, xdp, tc) in [("inbound", true, false), ("outbound", false, true)] {
        capture.set_filter(&Program::compile(expr, PCAP_SNAPLEN)?)?;
        assert_eq!(
            capture.run(Hook::Xdp, &[&frame])?,
            vec![Some(xdp)],
            "{expr} at XDP"
        );
        assert_eq!(
            capture.run(Hook::Tc, &[&frame])?,
            vec![Some(tc)],
            "{expr} at TC"
        );
    }
    // A test run's packets come from loopback (XDP: ingress ifindex 1).
    capture.set_filter(&Program::compile("ifindex 1", PCAP_SNAPLEN)?)?;
    assert_eq!(capture.run(Hook::Xdp, &[&frame])?, vec![Some(true)]);
    capture.set_filter(&Program::compile("ifindex 12345", PCAP_SNAPLEN)?)?;
    assert_eq!(capture.run(Hook::Xdp, &[&frame])?, vec![Some(false)]);
    assert_eq!(capture.run(Hook::Tc, &[&frame])?, vec![Some(false)]);
    Ok(())
}

//! Developer tasks, the aya ecosystem's `cargo xtask` convention:
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent).
//! - `cargo xtask demo`:  setup, build, and run the self-contained demo.
//! - `cargo xtask test [--kernel host|guests|5.10|6.1|6.12|all]`: setup, then fmt,
//!   clippy and the whole test suite, kernel tests included, on the host
//!   kernel and in QEMU guests booted with Debian's distribution kernels
//!   (default: all); fails if any test failed or was skipped on any kernel.
//! - `cargo xtask vm --kernel 6.1 -- CMD...`: one command in such a guest.
//! - `cargo xtask bench`: setup, then the benchmarks (figures, not pass/fail),
//!   the one of delayed paths in a Debian 6.1 guest.
//!
//! Setup downloads nothing but crates, Debian packages (the 5.10 kernel from
//! Debian 11's suite of the same archive), virtme-ng from PyPI and the
//! nightly toolchain's `rust-src` component; `bench` also builds trippy from
//! crates.io.

mod matrix;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use matrix::Selection;

/// Debian packages the tests, benchmarks and demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    // netray links libpcap: its filters are libpcap's (pcap_compile).
    "libpcap-dev",
    "iproute2",
    "nftables",
    "tcpdump",
    "tshark",
    "traceroute",
    "mtr-tiny",
    "iperf3",
    "bpftool",
    "dnsmasq",
    "pebble",
    "curl",
    "util-linux",
    // The connection tracer's tests run python3 client/server processes.
    "python3-minimal",
    // The delayed-path benchmark compares netray with scamper (TCP traces).
    "scamper",
];

/// trippy, one of the traceroute tools the delayed-path benchmark compares
/// with (crates.io; builds with the workspace's rustc 1.95), installed by
/// `cargo xtask bench` into `target/tools` (see [`install_trippy`]).
const TRIPPY_VERSION: &str = "0.13.0";

/// The bpf-linker version that matches rustc's LLVM (see DEVELOPERS.md).
const BPF_LINKER_VERSION: &str = "0.10.4";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let started = Instant::now();
    let result = match task {
        "setup" => setup().and_then(|()| {
            if args.iter().any(|a| a == "--kernels") {
                setup_kernels()
            } else {
                Ok(())
            }
        }),
        "demo" => setup().and_then(|()| demo(&args[1..])),
        "test" => kernel_selection(&args[1..]).and_then(|selection| {
            setup()?;
            if !selection.guests().is_empty() {
                setup_kernels()?;
            }
            test(&selection)
        }),
        "bench" => setup().and_then(|()| bench()),
        "vm" => vm(&args[1..]),
        // Inside a guest (see matrix.rs); not for developers.
        "guest-run" => match (args.get(1), args.get(2), args.get(3).map(|s| s.parse())) {
            (Some(dir), Some(boot), Some(Ok(seconds))) => {
                matrix::guest_run(Path::new(dir), boot, seconds)
            }
            _ => Err("guest-run RUN_DIR BOOT SECONDS".to_string()),
        },
        "guest-prepare" => matrix::guest_prepare(),
        "guest-bench" => match args.get(1) {
            Some(bench) => {
                let extra: Vec<&Path> = args[2..].iter().map(Path::new).collect();
                matrix::guest_bench(Path::new(bench), &extra)
            }
            None => Err("guest-bench BENCH_EXECUTABLE [BINARY...]".to_string()),
        },
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <setup [--kernels]|demo|test [--kernel host|guests|5.10|6.1|6.12|all]|bench|vm --kernel K -- CMD>"
            );
            return ExitCode::SUCCESS;
        }
        other => Err(format!(
            "unknown task {other:?}; expected setup, demo, test, bench or vm"
        )),
    };
    match result {
        Ok(()) => {
            eprintln!(
                "xtask {task}: done in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("xtask {task}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `--kernel NAME` (or `--kernel=NAME`) among `args`; all when absent.
fn kernel_selection(args: &[String]) -> Result<Selection> {
    let mut selection = Selection::All;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--kernel" {
            iter.next()
                .ok_or("--kernel needs a value: host, guests, all, 5.10, 6.1 or 6.12")?
                .as_str()
        } else if let Some(value) = arg.strip_prefix("--kernel=") {
            value
        } else {
            return Err(format!("unknown argument {arg:?}"));
        };
        selection = Selection::parse(value)?;
    }
    Ok(selection)
}

/// `cargo xtask vm --kernel NAME -- CMD...`
fn vm(args: &[String]) -> Result {
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let selection = kernel_selection(&args[..split])?;
    let Selection::Guest(name) = selection else {
        return Err("vm needs --kernel with one guest kernel: 5.10, 6.1 or 6.12".into());
    };
    setup_kernels()?;
    matrix::run_command_in_guest(
        &workspace_root(),
        &name,
        args.get(split + 1..).unwrap_or(&[]),
    )
}

fn run(cmd: &mut Command) -> Result {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

/// A command that runs as root: itself when we are root, else through sudo.
fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

fn setup() -> Result {
    let started = Instant::now();
    // The eBPF crate builds with nightly's -Z build-std=core, which needs rust-src.
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .ok_or(
        "the nightly toolchain is missing (`rustup toolchain list`); it builds the eBPF programs",
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }

    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask setup: installing Debian packages: {}",
            missing.join(" ")
        );
        run(privileged("apt-get").arg("update").arg("-qq"))?;
        run(privileged("env")
            .args([
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-qq",
            ])
            .args(&missing))?;
    }
    eprintln!(
        "xtask setup: ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs the demo: builds the release binary and runs `netray demo` as root.
fn demo(extra: &[String]) -> Result {
    run(cargo().args(["build", "--release", "--package", "netray"]))?;
    let binary = workspace_root().join("target/release/netray");
    let mut cmd = privileged(binary.to_str().ok_or("non-UTF-8 path")?);
    if extra.is_empty() {
        cmd.arg("demo");
    } else {
        cmd.args(extra);
    }
    run(&mut cmd)
}

/// Runs the benchmarks (root needed: they build namespaces and load eBPF):
/// in-band traceroute, packet tracer, connection tracer, outbound trace on
/// the host; then the traceroute tools on delayed paths (netem, which this
/// project's host kernel lacks) in a Debian 6.1 guest.
fn bench() -> Result {
    host_benches()?;
    delay_bench()
}

fn host_benches() -> Result {
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "--package",
        "netray",
        "--bench",
        "inband",
        "--bench",
        "packets",
        "--bench",
        "conns",
        "--bench",
        "trace",
    ]);
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    run(&mut cmd)
}

/// `trace_delay` (traceroute tools on paths with real round trips) in a
/// 6.1 guest: trippy installed first, the bench built on the host, then run
/// in the guest with netray and trippy read from memory.
/// `NETRAY_BENCH_ROUNDS` (default 5) is passed on.
fn delay_bench() -> Result {
    let trip = install_trippy()?;
    setup_kernels()?;
    let out = cargo()
        .args([
            "bench",
            "--package",
            "netray",
            "--bench",
            "trace_delay",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo bench --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo bench --no-run failed: {}", out.status));
    }
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "trace_delay")
        .and_then(|m| m["executable"].as_str().map(str::to_string))
        .ok_or("cargo bench --no-run named no trace_delay executable")?;
    let xtask = env::current_exe().map_err(|e| format!("locating xtask: {e}"))?;
    let mut command = vec!["env".to_string()];
    if let Ok(rounds) = env::var("NETRAY_BENCH_ROUNDS") {
        command.push(format!("NETRAY_BENCH_ROUNDS={rounds}"));
    }
    command.extend([
        xtask.to_string_lossy().into_owned(),
        "guest-bench".into(),
        executable,
        trip.to_string_lossy().into_owned(),
    ]);
    eprintln!("xtask bench: traceroute tools on delayed paths, in a Debian 6.1 guest");
    matrix::run_command_in_guest(&workspace_root(), "6.1", &command)?;
    eprintln!(
        "xtask bench: the delayed-path figures are also in {}",
        matrix::BENCH_REPORT
    );
    Ok(())
}

/// Installs trippy [`TRIPPY_VERSION`] from crates.io into `target/tools`
/// unless it is there already; returns the path of its `trip`.
fn install_trippy() -> Result<PathBuf> {
    let root = workspace_root().join("target/tools");
    let trip = root.join("bin/trip");
    let installed = output(Command::new(&trip).arg("--version")).unwrap_or_default();
    if installed.split_whitespace().nth(1) != Some(TRIPPY_VERSION) {
        run(Command::new("cargo")
            .args([
                "install",
                &format!("trippy@{TRIPPY_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&root))?;
    }
    Ok(trip)
}

/// Installs what the kernel matrix's guests need: QEMU, busybox (virtme-ng's
/// init), virtme-ng (PyPI) and Debian's kernels 6.1 and 6.12 (Debian 12) and
/// 5.10 (Debian 11's suite of the same archive, pinned so that nothing else
/// is ever taken from it). Idempotent.
fn setup_kernels() -> Result {
    let started = Instant::now();
    let mut packages: Vec<String> = ["qemu-system-x86", "busybox-static"]
        .iter()
        .filter(|pkg| !dpkg_installed(pkg))
        .map(|pkg| (*pkg).to_string())
        .collect();
    if matrix::kernel_image("6.1").is_err() {
        packages.push("linux-image-amd64".into());
    }
    if matrix::kernel_image("6.12").is_err() {
        packages.push("linux-image-6.12-amd64".into());
    }
    let need_5_10 = matrix::kernel_image("5.10").is_err();
    if need_5_10 {
        add_bullseye_source()?;
    }
    if !packages.is_empty() || need_5_10 {
        run(privileged("apt-get").arg("update").arg("-qq"))?;
    }
    if need_5_10 {
        // The ABI number changes with Debian's updates: take the newest.
        let search = output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-5\.10\.0-[0-9]+-amd64$",
        ]))
        .unwrap_or_default();
        let mut names: Vec<&str> = search
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        names.sort_by_key(|n| {
            n.split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse::<u64>().ok())
                .collect::<Vec<_>>()
        });
        let newest = names
            .last()
            .ok_or("no linux-image-5.10.0-*-amd64 in the bullseye suite")?;
        packages.push((*newest).to_string());
    }
    if !packages.is_empty() {
        eprintln!(
            "xtask setup: installing the matrix's kernels and QEMU: {}",
            packages.join(" ")
        );
        // INITRD=No: virtme-ng boots the kernels without an initramfs, so
        // the minutes update-initramfs would spend are saved.
        run(privileged("env")
            .args([
                "DEBIAN_FRONTEND=noninteractive",
                "INITRD=No",
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(&packages))?;
    }
    if output(Command::new("vng").arg("--version")).is_none() {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]))?;
    }
    eprintln!(
        "xtask setup: kernel matrix ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// virtme-ng, which boots the guests (PyPI).
const VIRTME_NG_VERSION: &str = "1.42";

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Debian 11's suite of the machine's archive, for the 5.10 kernel only.
fn add_bullseye_source() -> Result {
    let sources = Path::new("/etc/apt/sources.list.d/netray-bullseye.sources");
    let preferences = Path::new("/etc/apt/preferences.d/netray-bullseye");
    if sources.exists() && preferences.exists() {
        return Ok(());
    }
    // The same archive as the machine's own sources.
    let current =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let uri = current
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| !u.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string();
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(
        sources,
        format!(
            "Types: deb\nURIs: {uri}\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    // Priority 1: never chosen on its own, only when named (the kernel).
    write(
        preferences,
        "Package: *\nPin: release n=bullseye\nPin-Priority: 1\n".into(),
    )
}

/// Passed/failed/ignored tests, summed over `test result:` lines.
#[derive(Clone, Copy, Debug, Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Left out by a `--skip` (only the host stage passes one, said aloud).
    filtered: u64,
}

impl TestTotals {
    fn add(&mut self, other: TestTotals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.filtered += other.filtered;
    }
}

fn test(selection: &Selection) -> Result {
    let started = Instant::now();
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .map_err(|e| format!("{e} (run `cargo fmt --all`)"))?;
    // Userspace crates for the host; the eBPF crate for its own target
    // (it is no_std and only builds for bpfel with nightly's build-std).
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "netray-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("cargo")
        .current_dir(workspace_root().join("crates/netray-ebpf"))
        .args([
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))?;

    let mut stages: Vec<(String, TestTotals, f64)> = Vec::new();
    let mut errors = Vec::new();
    if selection.host() {
        let stage_started = Instant::now();
        match host_tests() {
            Ok(totals) => {
                stages.push(("host".into(), totals, stage_started.elapsed().as_secs_f64()))
            }
            Err(e) => errors.push(format!("host kernel: {e}")),
        }
    }
    let guests = selection.guests();
    if !guests.is_empty() {
        match matrix::run_suites_in_guests(cargo(), &workspace_root(), &guests, guest_jobs()) {
            Ok(results) => {
                for (name, result, seconds) in results {
                    match result {
                        Ok(totals) => stages.push((name, totals, seconds)),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    println!("kernel matrix:");
    let mut all = TestTotals::default();
    for (name, totals, seconds) in &stages {
        println!(
            "  {name:<5} {} passed, {} failed, {} ignored, {seconds:.0} s",
            totals.passed, totals.failed, totals.ignored
        );
        all.add(*totals);
    }
    for error in &errors {
        println!("  FAILED {error}");
    }
    println!("  total {:.0} s", started.elapsed().as_secs_f64());
    if !errors.is_empty() {
        return Err(format!("{} kernel stage(s) failed", errors.len()));
    }
    println!("summary: {} passed, 0 failed", all.passed);
    Ok(())
}

/// How many guests run at once (`NETRAY_GUEST_JOBS`, default 2). With
/// TCG a guest is CPU-bound while it verifies and runs programs, but much of
/// the suite waits (timeouts, paced probes, a test that sleeps 138 s for a
/// port's ISN to move behind), so two guests on two cores overlap that;
/// the tests' deadlines are set for it (see `netray_testbed::STARTUP_TIMEOUT`).
fn guest_jobs() -> usize {
    env::var("NETRAY_GUEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The whole suite on the host kernel, through `cargo test`.
fn host_tests() -> Result<TestTotals> {
    // Kernel tests need root: run the test binaries through sudo when we are not.
    let mut cmd = cargo();
    // --no-fail-fast: every test binary runs, so one failure does not hide
    // the others (the guests run them all too).
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "netray-ebpf",
        "--release",
        "--no-fail-fast",
    ]);
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
    }
    cmd.env("NETRAY_KERNEL_STAGE", "host");
    // Paths with real round trips need netem, which this project's host
    // kernel lacks; the guest stages run those tests (and fail if netem is
    // missing there). Said here, not skipped silently.
    let netem = netem_available();
    if !netem {
        cmd.args(["--", "--skip", NEEDS_NETEM]);
        println!(
            "xtask: host kernel: no netem (sch_netem); tests in `{NEEDS_NETEM}` modules run in the guest stages only"
        );
    }
    // Output to a file, not a pipe: a process a test leaked (or left behind
    // by a crash) could hold a pipe open and stall us; we wait for cargo.
    let log_path = env::temp_dir().join(format!("netray-test-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let status = cmd
        .stdout(log)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = std::fs::read_to_string(&log_path)
        .map_err(|e| format!("reading {}: {e}", log_path.display()))?;
    let _ = std::fs::remove_file(&log_path);
    print!("{stdout}");
    let totals = test_totals(&stdout);
    if !status.success() {
        return Err(format!("cargo test failed: {status}"));
    }
    if totals.ignored > 0 {
        return Err(format!(
            "{} test(s) were skipped (ignored); every test, kernel tests included, must run",
            totals.ignored
        ));
    }
    if totals.passed == 0 {
        return Err("no test ran".into());
    }
    if !netem {
        println!(
            "xtask: host kernel: {} test(s) left to the guest stages (`{NEEDS_NETEM}`)",
            totals.filtered
        );
    }
    Ok(totals)
}

/// The module path that marks tests needing netem (delayed links).
const NEEDS_NETEM: &str = "needs_netem::";

/// Whether the running kernel has netem, loaded or as a module (the same
/// check as `netray_testbed::netem_available`).
fn netem_available() -> bool {
    Path::new("/sys/module/sch_netem").exists()
        || Command::new("modprobe")
            .args(["-q", "-n", "sch_netem"])
            .status()
            .is_ok_and(|status| status.success())
}

/// Sums `N passed`, `N failed` and `N ignored` over every `test result:` line.
fn test_totals(stdout: &str) -> TestTotals {
    let mut totals = TestTotals::default();
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(mut label), Some(mut number)) = (words.next(), words.next()) else {
                continue;
            };
            // "N filtered out"
            if (label, number) == ("out", "filtered") {
                let Some(n) = words.next() else { continue };
                (label, number) = ("filtered", n);
            }
            let number: u64 = number.parse().unwrap_or(0);
            match label {
                "passed" => totals.passed += number,
                "failed" => totals.failed += number,
                "ignored" => totals.ignored += number,
                "filtered" => totals.filtered += number,
                _ => {}
            }
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::test_totals;

    #[test]
    fn totals_count_filtered_tests() {
        let out = "test result: ok. 4 passed; 1 failed; 2 ignored; 0 measured; 3 filtered out; finished in 1.24s\n\
                   test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out; finished in 0.1s\n";
        let totals = test_totals(out);
        assert_eq!(
            (
                totals.passed,
                totals.failed,
                totals.ignored,
                totals.filtered
            ),
            (5, 1, 2, 8)
        );
    }
}

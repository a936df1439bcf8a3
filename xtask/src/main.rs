//! Developer tasks, the aya ecosystem's `cargo xtask` convention:
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent).
//! - `cargo xtask demo`:  setup, build, and run the self-contained demo.
//! - `cargo xtask test`:  setup, then fmt, clippy and the whole test suite,
//!   kernel tests included; fails if any test was skipped.
//! - `cargo xtask bench`: setup, then the benchmarks (figures, not pass/fail).
//!
//! Setup downloads nothing but crates, Debian packages and the nightly
//! toolchain's `rust-src` component.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

/// Debian packages the tests, benchmarks and demo use.
const DEBIAN_PACKAGES: &[&str] = &[
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
];

/// The bpf-linker version that matches rustc's LLVM (see DEVELOPERS.md).
const BPF_LINKER_VERSION: &str = "0.10.4";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let started = Instant::now();
    let result = match task {
        "setup" => setup(),
        "demo" => setup().and_then(|()| demo(&args[1..])),
        "test" => setup().and_then(|()| test()),
        "bench" => setup().and_then(|()| bench()),
        "help" | "--help" | "-h" => {
            println!("usage: cargo xtask <setup|demo|test|bench>");
            return ExitCode::SUCCESS;
        }
        other => Err(format!(
            "unknown task {other:?}; expected setup, demo, test or bench"
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
/// in-band traceroute, packet tracer, connection tracer, outbound trace.
fn bench() -> Result {
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

fn test() -> Result {
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

    // Kernel tests need root: run the test binaries through sudo when we are not.
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "netray-ebpf",
        "--release",
    ]);
    if !is_root() {
        cmd.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
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
    if !status.success() {
        return Err(format!("cargo test failed: {status}"));
    }
    let (passed, ignored) = test_totals(&stdout);
    if ignored > 0 {
        return Err(format!(
            "{ignored} test(s) were skipped (ignored); every test, kernel tests included, must run"
        ));
    }
    if passed == 0 {
        return Err("no test ran".into());
    }
    println!("summary: {passed} passed, 0 failed");
    Ok(())
}

/// Sums `N passed` and `N ignored` over every `test result:` line.
fn test_totals(stdout: &str) -> (u64, u64) {
    let mut passed = 0;
    let mut ignored = 0;
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let number: u64 = number.parse().unwrap_or(0);
            match label {
                "passed" => passed += number,
                "ignored" => ignored += number,
                _ => {}
            }
        }
    }
    (passed, ignored)
}

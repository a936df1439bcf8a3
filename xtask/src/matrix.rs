//! The kernel matrix: the test suite on the host kernel and, inside QEMU
//! guests (virtme-ng, the host's filesystem over 9p), on Debian's
//! distribution kernels.
//!
//! The test binaries are built once, on the host; each guest boots a
//! kernel from `/boot`, prepares what a booted Debian system would have
//! (bpffs, a writable `/etc/netns`), runs every test binary the way
//! `cargo test` does (one after the other, from its package's directory)
//! and leaves the output in a run directory that the host reads back.

use std::{
    env, fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, TestTotals, test_totals};

/// The kernels of the matrix besides the host's: the name a developer
/// types, and the prefix of the kernel image in `/boot`.
pub const GUEST_KERNELS: &[(&str, &str)] = &[
    ("5.10", "vmlinuz-5.10."),
    ("6.1", "vmlinuz-6.1."),
    ("6.12", "vmlinuz-6.12."),
];

/// How long one guest may take for the whole suite (TCG is slow; a hung
/// test must not eat CI's budget).
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What `--kernel` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The host kernel and every guest kernel.
    All,
    /// Only the host kernel.
    Host,
    /// One guest kernel, by its short name ("6.1").
    Guest(String),
}

impl Selection {
    /// Parses the value of `--kernel`.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "all" => Ok(Self::All),
            "host" => Ok(Self::Host),
            name if GUEST_KERNELS.iter().any(|(n, _)| *n == name) => Ok(Self::Guest(name.into())),
            other => Err(format!(
                "--kernel {other:?}: expected host, all or one of {}",
                GUEST_KERNELS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Whether the host kernel's stage runs.
    pub fn host(&self) -> bool {
        matches!(self, Self::All | Self::Host)
    }

    /// The guest kernels to run, by short name.
    pub fn guests(&self) -> Vec<&str> {
        match self {
            Self::All => GUEST_KERNELS.iter().map(|(n, _)| *n).collect(),
            Self::Host => Vec::new(),
            Self::Guest(name) => GUEST_KERNELS
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| n == name)
                .collect(),
        }
    }
}

/// The newest `/boot` kernel image of a matrix kernel ("6.1").
pub fn kernel_image(name: &str) -> Result<PathBuf> {
    let prefix = GUEST_KERNELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("unknown kernel {name:?}"))?;
    let mut images: Vec<PathBuf> = fs::read_dir("/boot")
        .map_err(|e| format!("reading /boot: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with("-amd64"))
        })
        .collect();
    images.sort_by_key(|path| version_key(path));
    images.pop().ok_or_else(|| {
        format!("no {prefix}*-amd64 in /boot: `cargo xtask setup --kernels` installs it")
    })
}

/// Orders `vmlinuz-6.1.0-57-amd64` after `vmlinuz-6.1.0-9-amd64`.
fn version_key(path: &Path) -> Vec<u64> {
    path.to_string_lossy()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// One test executable and the directory `cargo test` would run it from.
struct TestBinary {
    executable: String,
    package_dir: String,
}

/// Lists the test executables of `cargo test --release` (building what is
/// missing), from cargo's JSON messages.
fn test_binaries(mut cargo: Command) -> Result<Vec<TestBinary>> {
    let out = cargo
        .args([
            "test",
            "--workspace",
            "--exclude",
            "netray-ebpf",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run failed: {}", out.status));
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let (Some(executable), Some(manifest)) = (
            message["executable"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let package_dir = Path::new(manifest)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        binaries.push(TestBinary {
            executable: executable.into(),
            package_dir,
        });
    }
    if binaries.is_empty() {
        return Err("cargo test --no-run listed no test executable".into());
    }
    Ok(binaries)
}

/// Whether QEMU can use this machine's KVM for a stock kernel. On these
/// machines /dev/kvm is a nested paravirtual one on which QEMU aborts at
/// once ("failed to set MSR"); TCG works everywhere, several times slower.
fn kvm_works(image: &Path, run_dir: &Path) -> bool {
    if fs::metadata("/dev/kvm").is_err() {
        return false;
    }
    let marker = run_dir.join("kvm-probe");
    let _ = fs::remove_file(&marker);
    let status = vng(image, run_dir, false)
        .arg("--memory")
        .arg("1G")
        .arg("--exec")
        .arg(format!("touch {}", marker.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let works = status.is_ok_and(|s| s.success()) && marker.exists();
    let _ = fs::remove_file(&marker);
    works
}

/// `vng --run IMAGE` with the options every guest run shares.
fn vng(image: &Path, run_dir: &Path, disable_kvm: bool) -> Command {
    let mut cmd = Command::new("vng");
    cmd.arg("--run")
        .arg(image)
        .args(["--cpus", "2"])
        .arg("--rwdir")
        .arg(run_dir)
        .stdin(Stdio::null());
    if disable_kvm {
        cmd.arg("--disable-kvm");
    }
    cmd
}

/// Chooses KVM or TCG once per xtask run.
fn accelerator(image: &Path, run_dir: &Path) -> bool {
    match env::var("NETRAY_GUEST_KVM").as_deref() {
        Ok("0") => true,
        Ok("1") => false,
        _ => {
            let disable = !kvm_works(image, run_dir);
            eprintln!(
                "xtask: guests run with {}",
                if disable {
                    "TCG (this machine's KVM cannot boot a stock kernel)"
                } else {
                    "KVM"
                }
            );
            disable
        }
    }
}

/// Runs the whole test suite in guests booted with each kernel of `names`,
/// up to `jobs` guests at a time; returns each kernel's totals (or why it
/// failed) and the seconds it took, in the order of `names`.
pub fn run_suites_in_guests(
    cargo: Command,
    workspace: &Path,
    names: &[&str],
    jobs: usize,
) -> Result<Vec<(String, Result<TestTotals>, f64)>> {
    let binaries = test_binaries(cargo)?;
    let first = kernel_image(names.first().ok_or("no guest kernel selected")?)?;
    let probe_dir = workspace.join("target/kernel-matrix");
    fs::create_dir_all(&probe_dir).map_err(|e| format!("creating {}: {e}", probe_dir.display()))?;
    let disable = accelerator(&first, &probe_dir);
    let mut results = Vec::new();
    for chunk in names.chunks(jobs.max(1)) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|name| {
                    let binaries = &binaries;
                    scope.spawn(move || {
                        let started = Instant::now();
                        let result = run_suite_in_guest(binaries, workspace, name, disable);
                        (name.to_string(), result, started.elapsed().as_secs_f64())
                    })
                })
                .collect();
            for handle in handles {
                results.push(
                    handle.join().unwrap_or_else(|_| {
                        ("?".into(), Err("a guest thread panicked".into()), 0.0)
                    }),
                );
            }
        });
    }
    Ok(results)
}

/// Runs the whole test suite in a guest booted with kernel `name`; returns
/// its totals. Fails if a binary fails, a test is ignored, or the guest
/// does not report back.
fn run_suite_in_guest(
    binaries: &[TestBinary],
    workspace: &Path,
    name: &str,
    disable: bool,
) -> Result<TestTotals> {
    let started = Instant::now();
    let image = kernel_image(name)?;
    let run_dir = workspace.join("target/kernel-matrix").join(name);
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir).map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
    let mut plan = String::new();
    for binary in binaries {
        plan.push_str(&format!("{}\t{}\n", binary.package_dir, binary.executable));
    }
    fs::write(run_dir.join("plan"), plan).map_err(|e| format!("writing the plan: {e}"))?;

    let xtask = env::current_exe().map_err(|e| format!("locating xtask: {e}"))?;
    let console = fs::File::create(run_dir.join("console.log"))
        .map_err(|e| format!("creating console.log: {e}"))?;
    let console_err = console
        .try_clone()
        .map_err(|e| format!("console.log: {e}"))?;
    eprintln!(
        "xtask: kernel {name} ({}): booting a guest for {} test binaries",
        image.display(),
        binaries.len()
    );
    let mut child = vng(&image, &run_dir, disable)
        .args(["--memory", "6G"])
        .arg("--exec")
        .arg(format!(
            "{} guest-run {}",
            shell_quote(&xtask.to_string_lossy()),
            shell_quote(&run_dir.to_string_lossy())
        ))
        .env("PATH", env::var("PATH").unwrap_or_default())
        .stdout(console)
        .stderr(console_err)
        // Its own process group: at a timeout, QEMU (vng's child) must go too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start vng (is virtme-ng installed?): {e}"))?;
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for vng: {e}"))?
        {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let elapsed = started.elapsed().as_secs_f64();

    let results = fs::read_to_string(run_dir.join("results")).unwrap_or_default();
    let mut totals = TestTotals::default();
    let mut failures = Vec::new();
    let mut unreported = Vec::new();
    for (index, binary) in binaries.iter().enumerate() {
        let log = run_dir.join(format!("{index}.log"));
        let output = fs::read_to_string(&log).unwrap_or_default();
        print!("{output}");
        totals.add(test_totals(&output));
        let line = results
            .lines()
            .find(|l| l.split('\t').next() == Some(&index.to_string()));
        match line.and_then(|l| l.split('\t').nth(1)) {
            Some("0") => {}
            Some(code) => failures.push(format!(
                "{} exited {code} (log: {})",
                short_name(&binary.executable),
                log.display()
            )),
            None => unreported.push(short_name(&binary.executable)),
        }
    }
    if !unreported.is_empty() {
        failures.push(format!("did not run to the end: {}", unreported.join(" ")));
    }
    let console_log = run_dir.join("console.log");
    let console_text = fs::read_to_string(&console_log).unwrap_or_default();
    let last_running = console_text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("guest: running "))
        .map(short_name)
        .unwrap_or_else(|| "(none started)".into());
    match status {
        None => failures.push(format!(
            "the guest did not finish within {} min, last running {last_running} (console: {})",
            GUEST_TIMEOUT.as_secs() / 60,
            console_log.display()
        )),
        Some(s) if !s.success() => failures.push(format!(
            "vng exited {s} (console: {})",
            console_log.display()
        )),
        Some(_) => {}
    }
    eprintln!(
        "xtask: kernel {name}: {} passed, {} failed, {} ignored in {elapsed:.0} s",
        totals.passed, totals.failed, totals.ignored
    );
    if !failures.is_empty() {
        return Err(format!("kernel {name}: {}", failures.join("; ")));
    }
    if totals.ignored > 0 {
        return Err(format!(
            "kernel {name}: {} test(s) were skipped (ignored); every test must run",
            totals.ignored
        ));
    }
    if totals.passed == 0 {
        return Err(format!("kernel {name}: no test ran"));
    }
    Ok(totals)
}

/// Runs one command in a guest (`cargo xtask vm --kernel 6.1 -- CMD...`),
/// prepared like the test guests, with the workspace writable.
pub fn run_command_in_guest(workspace: &Path, name: &str, command: &[String]) -> Result {
    if command.is_empty() {
        return Err("usage: cargo xtask vm --kernel NAME -- COMMAND [ARGS...]".into());
    }
    let image = kernel_image(name)?;
    let run_dir = workspace
        .join("target/kernel-matrix")
        .join(format!("vm-{name}"));
    fs::create_dir_all(&run_dir).map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
    let disable = accelerator(&image, &run_dir);
    let xtask = env::current_exe().map_err(|e| format!("locating xtask: {e}"))?;
    let cwd = env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let quoted: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    let status = vng(&image, &run_dir, disable)
        .args(["--memory", "6G"])
        .arg("--rwdir")
        .arg(workspace)
        .arg("--cwd")
        .arg(&cwd)
        .arg("--exec")
        .arg(format!(
            "{} guest-prepare && {}",
            shell_quote(&xtask.to_string_lossy()),
            quoted.join(" ")
        ))
        .env("PATH", env::var("PATH").unwrap_or_default())
        .status()
        .map_err(|e| format!("cannot start vng (is virtme-ng installed?): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the command in the {name} guest failed: {status}"))
    }
}

/// `trace_e2e` for `.../deps/trace_e2e-0123abcd`.
fn short_name(executable: &str) -> String {
    let file = Path::new(executable)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.into(),
        _ => file,
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Inside the guest: what a booted Debian system has and virtme-ng's
/// minimal init does not set up.
pub fn guest_prepare() -> Result {
    let mounted = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounted
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
    {
        crate::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    // /etc is a copy-on-write view of the host's /etc, where `ip netns`
    // cannot bind-mount its per-namespace files ("File exists").
    fs::create_dir_all("/etc/netns").map_err(|e| format!("creating /etc/netns: {e}"))?;
    crate::run(Command::new("mount").args(["-t", "tmpfs", "netns", "/etc/netns"]))?;
    crate::run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    Ok(())
}

/// Inside the guest: runs every test binary of the plan in `run_dir`,
/// output to `run_dir/N.log`, exit codes to `run_dir/results`.
pub fn guest_run(run_dir: &Path) -> Result {
    guest_prepare()?;
    let plan =
        fs::read_to_string(run_dir.join("plan")).map_err(|e| format!("reading plan: {e}"))?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("guest: kernel {}", release.trim());
    let mut results = String::new();
    for (index, line) in plan.lines().enumerate() {
        let Some((dir, executable)) = line.split_once('\t') else {
            continue;
        };
        let log_path = run_dir.join(format!("{index}.log"));
        let log = fs::File::create(&log_path).map_err(|e| format!("creating log: {e}"))?;
        let started = Instant::now();
        eprintln!("guest: running {executable}");
        let code = match Command::new(executable)
            .current_dir(dir)
            .env("CARGO_MANIFEST_DIR", dir)
            .env("NETRAY_KERNEL_STAGE", "guest")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("log: {e}"))?)
            .stderr(log)
            .status()
        {
            Ok(status) => status
                .code()
                .map_or_else(|| format!("{status}"), |c| c.to_string()),
            Err(e) => format!("cannot run: {e}"),
        };
        eprintln!(
            "guest: {executable}: exit {code} after {:.0} s",
            started.elapsed().as_secs_f64()
        );
        results.push_str(&format!("{index}\t{code}\n"));
        // Written after every binary: a guest that dies later still tells
        // which binaries finished.
        fs::write(run_dir.join("results"), &results)
            .map_err(|e| format!("writing results: {e}"))?;
    }
    Ok(())
}

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
/// test must not eat CI's budget). Measured: 5.10 sharing the two cores
/// with the other guests took 2 640 s for the suite in one full `.ci/run`
/// (2026-12-02) and, in the next, 36 min for its first 8 of 21 binaries
/// (trace_e2e alone over 1 200 s): these shared machines vary by 2x. 70 min
/// leaves room for a slow day and, with the ~16 min host stage, still ends
/// a hung guest inside CI's 90.
const GUEST_TIMEOUT: Duration = Duration::from_secs(70 * 60);

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
    // A pool of `jobs` workers taking the kernels in order: the next guest
    // starts as soon as any finishes (guests take unequal times).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, names.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(name) = names.get(index) else { break };
                    let started = Instant::now();
                    let result = run_suite_in_guest(&binaries, workspace, name, disable);
                    let entry = (name.to_string(), result, started.elapsed().as_secs_f64());
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(entry);
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Report in the matrix's order, whatever order they finished in.
    results.sort_by_key(|(name, _, _)| names.iter().position(|n| n == name));
    Ok(results)
}

/// Runs the whole test suite in a guest booted with kernel `name`; returns
/// its totals. Fails if a binary fails, a test is ignored, or the guest
/// does not report back.
///
/// A guest that dies (vng exits abnormally: seen twice on 6.12 under TCG on
/// a loaded machine, with no panic and no test failure reported) is booted
/// once more for the binaries it did not report, and that is said in the
/// output; a binary that fails, or a guest that dies again or times out,
/// fails the stage.
fn run_suite_in_guest(
    binaries: &[TestBinary],
    workspace: &Path,
    name: &str,
    disable: bool,
) -> Result<TestTotals> {
    let started = Instant::now();
    let run_dir = workspace.join("target/kernel-matrix").join(name);
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir).map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
    let mut codes: Vec<Option<String>> = vec![None; binaries.len()];
    let mut failures = Vec::new();
    for boot in 1..=2 {
        let pending: Vec<usize> = (0..binaries.len())
            .filter(|&i| codes[i].is_none())
            .collect();
        let outcome = boot_guest(binaries, &pending, &run_dir, name, disable, boot)?;
        for (index, code) in outcome.codes {
            codes[index] = Some(code);
        }
        let unreported = codes.iter().filter(|c| c.is_none()).count();
        match outcome.exit {
            GuestExit::Finished => break,
            GuestExit::Died(ref why) if boot == 1 && unreported > 0 => {
                eprintln!(
                    "xtask: kernel {name}: the guest died ({why}) while running {}; \
                     booting a fresh guest once for the {unreported} unreported test binaries",
                    outcome.last_running
                );
                println!(
                    "xtask: kernel {name}: guest died ({why}) during {}, rerun in a fresh guest",
                    outcome.last_running
                );
            }
            GuestExit::Died(why) | GuestExit::TimedOut(why) => {
                failures.push(why);
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut totals = TestTotals::default();
    let mut unreported = Vec::new();
    for (index, binary) in binaries.iter().enumerate() {
        let log = run_dir.join(format!("{index}.log"));
        let output = fs::read_to_string(&log).unwrap_or_default();
        print!("{output}");
        match &codes[index] {
            Some(code) => {
                totals.add(test_totals(&output));
                if code == TIMED_OUT {
                    failures.push(format!(
                        "{} was killed at the guest's time limit ({} min a binary, {} min in all), still running: {} (log: {})",
                        short_name(&binary.executable),
                        BINARY_TIMEOUT.as_secs() / 60,
                        GUEST_RUN_BUDGET.as_secs() / 60,
                        running_tests(&output).join(" "),
                        log.display()
                    ));
                } else if code != "0" {
                    failures.push(format!(
                        "{} exited {code} (log: {})",
                        short_name(&binary.executable),
                        log.display()
                    ));
                }
            }
            None => {
                let running = running_tests(&output);
                if !running.is_empty() {
                    failures.push(format!(
                        "{} had been running for over 60 s: {}",
                        short_name(&binary.executable),
                        running.join(" ")
                    ));
                }
                unreported.push(short_name(&binary.executable));
            }
        }
    }
    if !unreported.is_empty() {
        failures.push(format!("did not run to the end: {}", unreported.join(" ")));
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
    if totals.filtered > 0 {
        return Err(format!(
            "kernel {name}: {} test(s) were filtered out; the guests run every test",
            totals.filtered
        ));
    }
    if totals.passed == 0 {
        return Err(format!("kernel {name}: no test ran"));
    }
    Ok(totals)
}

/// How a guest ended.
enum GuestExit {
    /// vng exited successfully.
    Finished,
    /// vng exited abnormally (why, with the console log's path).
    Died(String),
    /// Killed at [`GUEST_TIMEOUT`].
    TimedOut(String),
}

/// What one boot of a guest reported.
struct BootOutcome {
    /// (binary index, exit code) for every binary that finished.
    codes: Vec<(usize, String)>,
    exit: GuestExit,
    /// The binary running last, for messages.
    last_running: String,
}

/// Boots one guest that runs the binaries `pending` (indices into
/// `binaries`; each logs to `INDEX.log` in `run_dir`).
fn boot_guest(
    binaries: &[TestBinary],
    pending: &[usize],
    run_dir: &Path,
    name: &str,
    disable: bool,
    boot: usize,
) -> Result<BootOutcome> {
    let image = kernel_image(name)?;
    let mut plan = String::new();
    for &index in pending {
        let binary = &binaries[index];
        plan.push_str(&format!(
            "{index}\t{}\t{}\n",
            binary.package_dir, binary.executable
        ));
    }
    fs::write(run_dir.join("plan"), plan).map_err(|e| format!("writing the plan: {e}"))?;
    let _ = fs::remove_file(run_dir.join("results"));

    let xtask = env::current_exe().map_err(|e| format!("locating xtask: {e}"))?;
    let console_log = run_dir.join(if boot == 1 {
        "console.log".to_string()
    } else {
        format!("console-{boot}.log")
    });
    let console =
        fs::File::create(&console_log).map_err(|e| format!("creating console log: {e}"))?;
    let console_err = console
        .try_clone()
        .map_err(|e| format!("console log: {e}"))?;
    eprintln!(
        "xtask: kernel {name} ({}): booting a guest for {} test binaries",
        image.display(),
        pending.len()
    );
    let mut child = vng(&image, run_dir, disable)
        .args(["--memory", "6G"])
        // The kernel's messages in the console log: a guest that dies or
        // hangs (seen on 6.12 and 6.1 under TCG) says why there.
        .arg("--verbose")
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
    let status = wait_until(&mut child, Instant::now() + GUEST_TIMEOUT)
        .map_err(|e| format!("waiting for vng: {e}"))?;
    if status.is_none() {
        kill_group(&mut child);
    }
    let results = fs::read_to_string(run_dir.join("results")).unwrap_or_default();
    let codes = results
        .lines()
        .filter_map(|line| {
            let (index, code) = line.split_once('\t')?;
            Some((index.parse().ok()?, code.to_string()))
        })
        .collect();
    let console_text = fs::read_to_string(&console_log).unwrap_or_default();
    let last_running = console_text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("guest: running "))
        .map(short_name)
        .unwrap_or_else(|| "(none started)".into());
    if !status.is_some_and(|s| s.success()) {
        // What CI shows of a failure is its output's tail: the kernel's
        // last words go there, not only into a log file nobody can read.
        let lines: Vec<&str> = console_text.lines().collect();
        eprintln!(
            "xtask: kernel {name}: the console's last lines ({}):",
            console_log.display()
        );
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  | {line}");
        }
    }
    let kernel_said = kernel_trouble(&console_text)
        .map(|line| format!(", the kernel said {line:?}"))
        .unwrap_or_default();
    let exit = match status {
        None => GuestExit::TimedOut(format!(
            "the guest did not finish within {} min, last running {last_running}{kernel_said} (console: {})",
            GUEST_TIMEOUT.as_secs() / 60,
            console_log.display()
        )),
        Some(s) if !s.success() => GuestExit::Died(format!(
            "vng exited {s}{kernel_said} (console: {})",
            console_log.display()
        )),
        Some(_) => GuestExit::Finished,
    };
    Ok(BootOutcome {
        codes,
        exit,
        last_running,
    })
}

/// The first line of a console log where the guest kernel reported trouble
/// (panic, oops, lockup, hung task, OOM kill), if any.
fn kernel_trouble(console: &str) -> Option<&str> {
    const SIGNS: &[&str] = &[
        "Kernel panic",
        "BUG:",
        "Oops",
        "soft lockup",
        "hard LOCKUP",
        "rcu_sched self-detected stall",
        "rcu: INFO",
        "blocked for more than",
        "Out of memory",
        "WARNING: CPU",
    ];
    console
        .lines()
        .find(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .map(str::trim)
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

/// How long one test binary may run in a guest. The slowest measured:
/// trace_e2e on 5.10 sharing the two cores with another guest, 647 s in
/// one full run and over 1 200 s in another (the first try of this limit,
/// 20 min, killed it in its last two tests). A binary that hangs (CI,
/// 2026-12-02: serve_e2e on 6.1 used up the guest's whole hour and left no
/// word of which test hung) is killed at this limit, or before the guest's
/// own [`GUEST_TIMEOUT`] (see [`GUEST_RUN_BUDGET`]), with what it was doing
/// written to its log, and the guest goes on.
const BINARY_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// How long the binaries of one guest may run in all: the guest's limit
/// less a margin for booting and for the host to read the results, so that
/// a binary still running near the end is killed, and reported, by the
/// guest's watchdog rather than silently with the whole guest.
const GUEST_RUN_BUDGET: Duration = GUEST_TIMEOUT.saturating_sub(Duration::from_secs(3 * 60));

/// The exit "code" recorded for a binary killed at its time limit.
const TIMED_OUT: &str = "timed-out";

/// Waits for `child` until `deadline`: its exit status, or `None` if it is
/// still running then.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills `child`'s whole process group (it was spawned as its leader) and
/// reaps `child`.
fn kill_group(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a test binary for [`BINARY_TIMEOUT`], or until `budget_end`
/// if that comes first; then appends to its log which tests were still
/// running and what its processes are blocked in, and kills its process
/// group. Returns the exit code, the signal, or [`TIMED_OUT`].
fn wait_or_kill(mut child: std::process::Child, log_path: &Path, budget_end: Instant) -> String {
    let limit = BINARY_TIMEOUT.min(budget_end.saturating_duration_since(Instant::now()));
    match wait_until(&mut child, Instant::now() + limit) {
        Ok(Some(status)) => {
            return status
                .code()
                .map_or_else(|| format!("{status}"), |c| c.to_string());
        }
        Ok(None) => {}
        Err(e) => return format!("cannot wait: {e}"),
    }
    let report = blocked_processes(child.id());
    if let Ok(mut log) = fs::OpenOptions::new().append(true).open(log_path) {
        use std::io::Write as _;
        let _ = writeln!(
            log,
            "\nguest: killed after {} s, still running: {}\n{report}",
            limit.as_secs(),
            running_tests(&fs::read_to_string(log_path).unwrap_or_default()).join(" ")
        );
    }
    kill_group(&mut child);
    TIMED_OUT.into()
}

/// For every process of process group `group`: its command line, state,
/// and the kernel stack of each of its threads (where a hang in the kernel
/// shows), read from /proc.
fn blocked_processes(group: u32) -> String {
    let mut report = String::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return report;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state ppid pgrp ...
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2) != Some(&group.to_string().as_str()) {
            continue;
        }
        let cmdline = fs::read_to_string(entry.path().join("cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        report.push_str(&format!(
            "process {pid} state {}: {}\n",
            fields.first().unwrap_or(&"?"),
            cmdline.trim()
        ));
        let Ok(tasks) = fs::read_dir(entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stack = fs::read_to_string(task.path().join("stack")).unwrap_or_default();
            let wchan = fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            report.push_str(&format!(
                "  thread {} {} wchan {wchan}\n",
                task.file_name().to_string_lossy(),
                comm.trim()
            ));
            for frame in stack.lines().take(12) {
                report.push_str(&format!("    {frame}\n"));
            }
        }
    }
    report
}

/// The tests libtest said had been running for over 60 seconds and that
/// have not reported a result since, in the order it said so.
fn running_tests(log: &str) -> Vec<String> {
    let mut running: Vec<String> = Vec::new();
    for line in log.lines() {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" has been running for over 60 seconds"))
        {
            if !running.iter().any(|n| n == name) {
                running.push(name.to_string());
            }
        } else if let Some((name, _)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            running.retain(|n| n != name);
        }
    }
    running
}

/// Inside the guest: runs every test binary of the plan in `run_dir`,
/// output to `run_dir/N.log`, exit codes to `run_dir/results`.
pub fn guest_run(run_dir: &Path) -> Result {
    let budget_end = Instant::now() + GUEST_RUN_BUDGET;
    guest_prepare()?;
    let plan =
        fs::read_to_string(run_dir.join("plan")).map_err(|e| format!("reading plan: {e}"))?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("guest: kernel {}", release.trim());
    let mut results = String::new();
    for line in plan.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(index), Some(dir), Some(executable)) =
            (fields.next(), fields.next(), fields.next())
        else {
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
            // Its own process group: a hung binary is killed with what it
            // started (servers, `ip netns exec` children).
            .process_group(0)
            .spawn()
        {
            Ok(child) => wait_or_kill(child, &log_path, budget_end),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_trouble_finds_the_first_sign() {
        let console = "[    1.0] virtme-ng-init: mounting\n\
                       guest: running /x/serve_e2e\n\
                       [ 812.5] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [serve_e2e:311]\n\
                       [ 900.1] Kernel panic - not syncing: softlockup: hung tasks\n";
        assert_eq!(
            kernel_trouble(console),
            Some("[ 812.5] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [serve_e2e:311]")
        );
        assert_eq!(kernel_trouble("guest: running /x/check\n"), None);
    }

    #[test]
    fn running_tests_are_those_without_a_result_since() {
        let log = "running 3 tests\n\
                   test a has been running for over 60 seconds\n\
                   test b::c has been running for over 60 seconds\n\
                   test a ... ok\n\
                   test d ... ok\n";
        assert_eq!(running_tests(log), ["b::c"]);
        assert!(running_tests("test a ... FAILED\n").is_empty());
    }

    #[test]
    fn a_hung_binary_is_killed_with_its_group_and_reported() {
        let dir = env::temp_dir().join(format!("xtask-watchdog-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("0.log");
        fs::write(
            &log_path,
            "test slow has been running for over 60 seconds\n",
        )
        .unwrap();
        // A shell whose child (the sleep) shares its process group.
        let child = Command::new("sh")
            .args(["-c", "sleep 600 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = child.id();
        // The guest's budget ends in 300 ms: that, not BINARY_TIMEOUT, is the limit.
        let code = wait_or_kill(
            child,
            &log_path,
            Instant::now() + Duration::from_millis(300),
        );
        assert_eq!(code, TIMED_OUT);
        let log = fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("still running: slow"), "{log}");
        assert!(
            log.contains("sleep 600"),
            "the group's processes are listed: {log}"
        );
        // Nothing of the group is left running (the orphaned sleep may
        // stay a zombie until init reaps it).
        std::thread::sleep(Duration::from_millis(200));
        let left = blocked_processes(group);
        assert!(
            left.lines()
                .filter(|l| l.starts_with("process "))
                .all(|l| l.contains(" state Z:")),
            "{left}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

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

/// What `--kernel` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The host kernel and every guest kernel.
    All,
    /// Only the host kernel.
    Host,
    /// Every guest kernel, not the host's.
    Guests,
    /// One guest kernel, by its short name ("6.1").
    Guest(String),
}

impl Selection {
    /// Parses the value of `--kernel`.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "all" => Ok(Self::All),
            "host" => Ok(Self::Host),
            "guests" => Ok(Self::Guests),
            name if GUEST_KERNELS.iter().any(|(n, _)| *n == name) => Ok(Self::Guest(name.into())),
            other => Err(format!(
                "--kernel {other:?}: expected host, guests, all or one of {}",
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
            Self::All | Self::Guests => GUEST_KERNELS.iter().map(|(n, _)| *n).collect(),
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
    /// Its tests in [`HOST_ONLY`] modules, which the guests leave out.
    host_only: u64,
}

/// The module path of tests that touch no kernel interface (userspace
/// against outside tools, e.g. libpcap against tcpdump over a thousand
/// expressions): the host stage runs them, the guests skip them (said
/// aloud, and counted: nothing else may be left out).
pub const HOST_ONLY: &str = "host_only::";

/// How many tests of `executable` are in [`HOST_ONLY`] modules (from its
/// `--list`).
fn host_only_tests(executable: &str) -> Result<u64> {
    let out = Command::new(executable)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot list the tests of {executable}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{executable} --list failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test") && l.contains(HOST_ONLY))
        .count() as u64)
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
            host_only: host_only_tests(executable)?,
        });
    }
    if binaries.is_empty() {
        return Err("cargo test --no-run listed no test executable".into());
    }
    Ok(binaries)
}

/// Whether QEMU can use this machine's KVM for a stock kernel. On these
/// machines /dev/kvm is a nested paravirtual one on which QEMU either
/// aborts at once ("failed to set MSR", seen 2026-12-02) or spins without
/// ever booting (a 5.10 guest still silent after 60 s, 2026-12-07); TCG
/// works everywhere, several times slower. A guest under working KVM
/// boots in a few seconds, so the probe gets [`KVM_PROBE_TIMEOUT`].
fn kvm_works(image: &Path, run_dir: &Path) -> bool {
    if fs::metadata("/dev/kvm").is_err() {
        return false;
    }
    let marker = run_dir.join("kvm-probe");
    let _ = fs::remove_file(&marker);
    let child = vng(image, run_dir, false)
        .arg("--memory")
        .arg("1G")
        .arg("--exec")
        .arg(format!("touch {}", marker.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: at the timeout QEMU goes with vng.
        .process_group(0)
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let status = wait_until(&mut child, Instant::now() + KVM_PROBE_TIMEOUT);
    if !matches!(status, Ok(Some(_))) {
        kill_group(&mut child);
    }
    let works = matches!(status, Ok(Some(s)) if s.success()) && marker.exists();
    let _ = fs::remove_file(&marker);
    works
}

/// How long a guest under KVM may take to boot and run one command before
/// the probe decides KVM does not work here.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(45);

/// `vng --run IMAGE` with the options every guest run shares.
fn vng(image: &Path, run_dir: &Path, disable_kvm: bool) -> Command {
    let mut cmd = Command::new("vng");
    cmd.arg("--run")
        .arg(image)
        .arg("--cpus")
        .arg(guest_cpus().to_string())
        // Under TCG the kernel distrusts the TSC and falls back to the HPET,
        // whose every read is an emulated device access (and no vDSO); the
        // TSC that QEMU emulates follows the host's clock and is stable.
        // Measured side by side on 6.1, one guest alone: inband_capture
        // 12.6 s with the TSC against 13.8 and 18.0 s with the HPET,
        // verifier_budget 10.9 s against 12.1 and 11.4 s.
        .args(["--append", "clocksource=tsc tsc=reliable"])
        .arg("--rwdir")
        .arg(run_dir)
        .stdin(Stdio::null());
    if disable_kvm {
        cmd.arg("--disable-kvm");
    }
    cmd
}

/// vCPUs per guest (`NETRAY_GUEST_CPUS`, default 1). Under TCG a guest's
/// vCPUs are host threads, and a guest kernel spinning on a lock held by a
/// vCPU the host has descheduled wastes its time slice: two guests of two
/// vCPUs each on two cores got through the same binaries at about half the
/// rate of two guests of one vCPU each. Measured on 6.1 (2026-12-07),
/// inband_capture + serve_http + packets_output: two guests of 1 vCPU side
/// by side, 98 s each; one guest of 2 vCPUs alone, 98 s; two of 2 vCPUs
/// side by side, 178 s each.
fn guest_cpus() -> usize {
    env::var("NETRAY_GUEST_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
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
/// failed) and the seconds from its first guest's boot to its last
/// guest's end, in the order of `names`.
///
/// The unit of work is one test binary on one kernel. Every guest of a
/// kernel takes the next binary of that kernel's plan that no other guest
/// has taken (a claim is a directory created in the shared run directory:
/// `mkdir` is atomic on the host's filesystem, which the guests reach over
/// 9p), slowest first. A worker whose guest has run out of binaries boots
/// a guest for the kernel with the most left, so a second guest helps
/// with the slowest kernel instead of the stage waiting on one guest
/// running it alone.
///
/// The first guest of a kernel that dies (vng exits abnormally: seen on
/// 6.12 under TCG on a loaded machine, with no panic and no test failure
/// reported) gives the binaries it had taken and not finished back, and
/// that is said in the output; a binary that fails, or a second guest that
/// dies, or one that runs past the stage's budget, fails the kernel's
/// stage, and that kernel gets no more guests.
pub fn run_suites_in_guests(
    cargo: Command,
    workspace: &Path,
    names: &[&str],
    jobs: usize,
) -> Result<Vec<(String, Result<TestTotals>, f64)>> {
    let mut binaries = test_binaries(cargo)?;
    if let Ok(only) = env::var("NETRAY_GUEST_BINARIES") {
        // For debugging one binary on the guests; never in CI, where every
        // binary runs.
        if env::var_os("CI").is_some() {
            return Err("NETRAY_GUEST_BINARIES is for debugging; CI runs every binary".into());
        }
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        binaries.retain(|b| only.contains(&short_name(&b.executable).as_str()));
        eprintln!(
            "xtask: NETRAY_GUEST_BINARIES: the guests run only {} binaries: {}",
            binaries.len(),
            only.join(" ")
        );
        if binaries.is_empty() {
            return Err("NETRAY_GUEST_BINARIES names no test binary".into());
        }
    }
    let first = kernel_image(names.first().ok_or("no guest kernel selected")?)?;
    let probe_dir = workspace.join("target/kernel-matrix");
    fs::create_dir_all(&probe_dir).map_err(|e| format!("creating {}: {e}", probe_dir.display()))?;
    let disable = accelerator(&first, &probe_dir);
    let plan = plan_text(&binaries);
    let mut kernels = Vec::new();
    for name in names {
        let run_dir = workspace.join("target/kernel-matrix").join(name);
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(run_dir.join(CLAIMS))
            .map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
        fs::write(run_dir.join("plan"), &plan).map_err(|e| format!("writing the plan: {e}"))?;
        kernels.push(KernelRun {
            name: name.to_string(),
            image: kernel_image(name)?,
            run_dir,
            running: 0,
            boots: 0,
            gave_back: false,
            failures: Vec::new(),
            first_boot: None,
            last_end: None,
        });
    }
    let deadline = Instant::now() + STAGE_BUDGET;
    let kernels = std::sync::Mutex::new(kernels);
    let lock = || {
        kernels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    // Pick a kernel and book a guest for it under the lock.
                    let (index, name, image, run_dir, boot) = {
                        let mut kernels = lock();
                        if Instant::now() >= deadline {
                            break;
                        }
                        let Some(index) = next_kernel(&kernels, binaries.len()) else {
                            break;
                        };
                        let kernel = &mut kernels[index];
                        kernel.running += 1;
                        kernel.boots += 1;
                        kernel.first_boot.get_or_insert_with(Instant::now);
                        (
                            index,
                            kernel.name.clone(),
                            kernel.image.clone(),
                            kernel.run_dir.clone(),
                            kernel.boots,
                        )
                    };
                    let outcome = boot_guest(&image, &run_dir, &name, disable, boot, deadline);
                    let mut kernels = lock();
                    let kernel = &mut kernels[index];
                    kernel.running -= 1;
                    kernel.last_end = Some(Instant::now());
                    match outcome {
                        Ok(GuestExit::Finished) => {}
                        Ok(GuestExit::Died(why)) => {
                            let lost = lost_binaries(&run_dir, boot);
                            if !kernel.gave_back {
                                kernel.gave_back = true;
                                let lost_names: Vec<String> = lost
                                    .iter()
                                    .map(|&i| short_name(&binaries[i].executable))
                                    .collect();
                                for &i in &lost {
                                    let _ = fs::remove_dir(run_dir.join(CLAIMS).join(i.to_string()));
                                }
                                eprintln!(
                                    "xtask: kernel {name}: guest {boot} died ({why}) while running {}; \
                                     its unfinished binaries go to a fresh guest, once",
                                    lost_names.join(" ")
                                );
                                println!(
                                    "xtask: kernel {name}: guest died ({why}) during {}, rerun in a fresh guest",
                                    lost_names.join(" ")
                                );
                            } else {
                                kernel.failures.push(why);
                            }
                        }
                        Ok(GuestExit::TimedOut(why)) => kernel.failures.push(why),
                        Err(e) => kernel.failures.push(e),
                    }
                }
            });
        }
    });
    let kernels = kernels
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(kernels
        .into_iter()
        .map(|kernel| {
            let seconds = match (kernel.first_boot, kernel.last_end) {
                (Some(start), Some(end)) => end.duration_since(start).as_secs_f64(),
                _ => 0.0,
            };
            let result = kernel_report(&binaries, &kernel, seconds);
            (kernel.name, result, seconds)
        })
        .collect())
}

/// How long the whole guest stage may take, from its first boot: no guest
/// starts a binary after it, and a guest still running 3 min later is
/// killed. CI allows 90 min for everything, and setup, builds, clippy and
/// the host stage take about 15 min of it on a fresh machine. Measured
/// (2026-12-07, two 1-vCPU guests at a time): 5.10 1 940 s in one guest
/// while 6.1 (956 s) and 6.12 (1 010 s, two guests) shared the other
/// slot, 292 tests each; the stage 2 015 s with the KVM probe.
const STAGE_BUDGET: Duration = Duration::from_secs(60 * 60);

/// How long after [`STAGE_BUDGET`] a guest may still run (its watchdog
/// stops binaries at the budget, then the guest must power off and the
/// host read its results) before the host kills it.
const GUEST_GRACE: Duration = Duration::from_secs(3 * 60);

/// The directory of a kernel's run directory where guests claim binaries.
const CLAIMS: &str = "claims";

/// The test binaries, slowest first, as measured in the guests: a guest
/// takes them in this order, so that the long ones start early and the
/// short ones fill the gaps at the end. Binaries not named here come after
/// these, in cargo's order.
const SLOWEST_FIRST: &[&str] = &[
    "trace_e2e",
    "filter_kernel",
    "conns_trace",
    "serve_e2e",
    "packets_capture",
    "packets_output",
    "serve_http",
    "serve_hostile",
    "serve_admission",
    "serve_ratelimit",
    "inband_capture",
    "check",
    "netray",
    "conns_resolve",
    "verifier_budget",
];

/// The plan every guest of a kernel works through: `INDEX\tDIR\tEXECUTABLE`
/// lines, slowest binary first (see [`SLOWEST_FIRST`]).
fn plan_text(binaries: &[TestBinary]) -> String {
    let mut order: Vec<usize> = (0..binaries.len()).collect();
    order.sort_by_key(|&i| {
        let name = short_name(&binaries[i].executable);
        SLOWEST_FIRST
            .iter()
            .position(|n| *n == name)
            .unwrap_or(SLOWEST_FIRST.len())
    });
    order
        .into_iter()
        .map(|i| {
            format!(
                "{i}\t{}\t{}\n",
                binaries[i].package_dir, binaries[i].executable
            )
        })
        .collect()
}

/// One kernel's share of the guest stage.
struct KernelRun {
    name: String,
    image: PathBuf,
    run_dir: PathBuf,
    /// Guests booted and not yet ended.
    running: usize,
    /// Guests booted so far (each one's number names its files).
    boots: usize,
    /// Whether a dead guest's unfinished binaries were given back already.
    gave_back: bool,
    /// Why the stage fails, besides what the binaries reported.
    failures: Vec<String>,
    first_boot: Option<Instant>,
    last_end: Option<Instant>,
}

/// The kernel to boot the next guest for: among those with binaries no
/// guest has taken, the one with the fewest guests running, then the most
/// binaries left, then the first in the matrix's order (5.10, the slowest).
/// A kernel whose stage has failed already (a guest that could not start,
/// died a second time, or ran out of time) gets no more guests: a guest
/// that cannot boot must not be retried until the budget is gone.
fn next_kernel(kernels: &[KernelRun], binaries: usize) -> Option<usize> {
    kernels
        .iter()
        .enumerate()
        .filter(|(_, kernel)| kernel.failures.is_empty())
        .map(|(index, kernel)| (index, kernel.running, unclaimed(&kernel.run_dir, binaries)))
        .filter(|&(_, _, left)| left > 0)
        .min_by_key(|&(index, running, left)| (running, std::cmp::Reverse(left), index))
        .map(|(index, _, _)| index)
}

/// How many of the plan's `binaries` no guest has claimed yet.
fn unclaimed(run_dir: &Path, binaries: usize) -> usize {
    (0..binaries)
        .filter(|i| !run_dir.join(CLAIMS).join(i.to_string()).exists())
        .count()
}

/// The binaries guest `boot` claimed and did not report a result for.
fn lost_binaries(run_dir: &Path, boot: usize) -> Vec<usize> {
    let claimed = fs::read_to_string(run_dir.join(format!("claimed-{boot}"))).unwrap_or_default();
    let reported: Vec<usize> = results(run_dir, Some(boot))
        .into_iter()
        .map(|r| r.index)
        .collect();
    claimed
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|i| !reported.contains(i))
        .collect()
}

/// One line of a guest's `results-BOOT` file.
struct BinaryResult {
    index: usize,
    /// The exit code, a signal, or [`TIMED_OUT`].
    code: String,
    seconds: f64,
}

/// The results every guest (or guest `boot` only) of a run directory wrote.
fn results(run_dir: &Path, boot: Option<usize>) -> Vec<BinaryResult> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = file.strip_prefix("results-") else {
            continue;
        };
        if boot.is_some_and(|b| number != b.to_string()) {
            continue;
        }
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        all.extend(text.lines().filter_map(|line| {
            let mut fields = line.split('\t');
            Some(BinaryResult {
                index: fields.next()?.parse().ok()?,
                code: fields.next()?.to_string(),
                seconds: fields.next().and_then(|s| s.parse().ok()).unwrap_or(0.0),
            })
        }));
    }
    all
}

/// A kernel's verdict from what its guests left in its run directory:
/// its totals, or why it failed (a binary failed or did not run to the
/// end, a test was ignored or filtered out, a guest died or timed out).
fn kernel_report(binaries: &[TestBinary], kernel: &KernelRun, seconds: f64) -> Result<TestTotals> {
    let name = &kernel.name;
    let mut codes: Vec<Option<(String, f64)>> = vec![None; binaries.len()];
    for result in results(&kernel.run_dir, None) {
        if let Some(slot) = codes.get_mut(result.index) {
            *slot = Some((result.code, result.seconds));
        }
    }
    let mut failures = kernel.failures.clone();
    let mut totals = TestTotals::default();
    let mut host_only = 0;
    let mut unreported = Vec::new();
    let mut timings = Vec::new();
    for (index, binary) in binaries.iter().enumerate() {
        let log = kernel.run_dir.join(format!("{index}.log"));
        let output = fs::read_to_string(&log).unwrap_or_default();
        print!("{output}");
        let short = short_name(&binary.executable);
        match &codes[index] {
            Some((code, secs)) => {
                totals.add(test_totals(&output));
                host_only += binary.host_only;
                timings.push((short.clone(), *secs));
                if code == TIMED_OUT {
                    failures.push(format!(
                        "{short} was killed at its time limit ({} min a binary, or the stage's {} min), still running: {} (log: {})",
                        BINARY_TIMEOUT.as_secs() / 60,
                        STAGE_BUDGET.as_secs() / 60,
                        running_tests(&output).join(" "),
                        log.display()
                    ));
                } else if code != "0" {
                    failures.push(format!("{short} exited {code} (log: {})", log.display()));
                }
            }
            None => {
                let running = running_tests(&output);
                if !running.is_empty() {
                    failures.push(format!(
                        "{short} had been running for over 60 s: {}",
                        running.join(" ")
                    ));
                }
                unreported.push(short);
            }
        }
    }
    if !unreported.is_empty() {
        failures.push(format!("did not run to the end: {}", unreported.join(" ")));
    }
    timings.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = timings
        .iter()
        .take(6)
        .map(|(n, s)| format!("{n} {s:.0}"))
        .collect();
    eprintln!(
        "xtask: kernel {name}: {} passed, {} failed, {} ignored in {seconds:.0} s over {} guest(s); slowest binaries (s): {}",
        totals.passed,
        totals.failed,
        totals.ignored,
        kernel.boots,
        slowest.join(", ")
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
    if totals.filtered != host_only {
        return Err(format!(
            "kernel {name}: {} test(s) were filtered out, {host_only} of them `{HOST_ONLY}` \
             (host stage only); the guests run every other test",
            totals.filtered
        ));
    }
    if host_only > 0 {
        eprintln!(
            "xtask: kernel {name}: {host_only} test(s) in `{HOST_ONLY}` modules (no kernel interface) left to the host stage"
        );
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
    /// Killed [`GUEST_GRACE`] after the stage's budget.
    TimedOut(String),
}

/// Boots guest number `boot` of kernel `name`, which takes binaries from
/// the plan in `run_dir` until none is left or the stage's `deadline`.
fn boot_guest(
    image: &Path,
    run_dir: &Path,
    name: &str,
    disable: bool,
    boot: usize,
    deadline: Instant,
) -> Result<GuestExit> {
    let xtask = env::current_exe().map_err(|e| format!("locating xtask: {e}"))?;
    let console_log = run_dir.join(format!("console-{boot}.log"));
    let console =
        fs::File::create(&console_log).map_err(|e| format!("creating console log: {e}"))?;
    let console_err = console
        .try_clone()
        .map_err(|e| format!("console log: {e}"))?;
    eprintln!(
        "xtask: kernel {name} ({}): booting guest {boot}",
        image.display()
    );
    let seconds_left = deadline.saturating_duration_since(Instant::now()).as_secs();
    let mut child = vng(image, run_dir, disable)
        .args(["--memory", "6G"])
        // The kernel's messages in the console log: a guest that dies or
        // hangs (seen on 6.12 and 6.1 under TCG) says why there.
        .arg("--verbose")
        .arg("--exec")
        .arg(format!(
            "{} guest-run {} {boot} {seconds_left}",
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
    let status = wait_until(&mut child, deadline + GUEST_GRACE)
        .map_err(|e| format!("waiting for vng: {e}"))?;
    if status.is_none() {
        kill_group(&mut child);
    }
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
    Ok(match status {
        None => GuestExit::TimedOut(format!(
            "guest {boot} was still running {} min after the stage's {} min, last running {last_running}{kernel_said} (console: {})",
            GUEST_GRACE.as_secs() / 60,
            STAGE_BUDGET.as_secs() / 60,
            console_log.display()
        )),
        Some(s) if !s.success() => GuestExit::Died(format!(
            "vng exited {s}, last running {last_running}{kernel_said} (console: {})",
            console_log.display()
        )),
        Some(_) => GuestExit::Finished,
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
/// one full run and over 1 200 s in another. A binary that hangs (CI,
/// 2026-12-02: serve_e2e on 6.1 used up the guest's whole hour and left no
/// word of which test hung) is killed at this limit, or at the end of the
/// stage's [`STAGE_BUDGET`], with what it was doing written to its log, and
/// the guest goes on.
const BINARY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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

/// Puts a copy of `netray`, which the tests start hundreds of times, in
/// memory and mounts it over the original. The guest's root is the host's
/// over 9p without a page cache, so every start read its 15 MB again:
/// measured under load, 10 starts of `netray --version` took 10.0 s from
/// 9p and 2.3 s from tmpfs on 5.10 (4.3 and 1.2 s on 6.1).
fn netray_from_memory(netray: &Path) -> Result {
    binaries_from_memory(&[netray])
}

/// [`netray_from_memory`] for several binaries (those missing are left
/// alone): one tmpfs, a copy of each mounted over its original.
fn binaries_from_memory(binaries: &[&Path]) -> Result {
    let present: Vec<&Path> = binaries.iter().copied().filter(|b| b.exists()).collect();
    if present.is_empty() {
        return Ok(());
    }
    let dir = Path::new("/run/netray-bin");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    crate::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "netray-bin"])
            .arg(dir),
    )?;
    for (i, binary) in present.into_iter().enumerate() {
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        let copy = dir.join(format!("{i}-{name}"));
        fs::copy(binary, &copy).map_err(|e| format!("copying {}: {e}", binary.display()))?;
        crate::run(Command::new("mount").arg("--bind").arg(&copy).arg(binary))?;
    }
    Ok(())
}

/// Inside the guest: runs benchmark executable `bench` (`--bench`, from
/// its package's directory as `cargo bench` does), with `netray` and the
/// other tools it starts many times (`extra`) read from memory (see
/// [`netray_from_memory`]), so that their start-up is not that of 9p.
pub fn guest_bench(bench: &Path, extra: &[&Path]) -> Result {
    let workspace = crate::workspace_root();
    let netray = workspace.join("target/release/netray");
    let mut binaries = vec![netray.as_path()];
    binaries.extend_from_slice(extra);
    binaries_from_memory(&binaries)?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "guest: kernel {}, running {}",
        release.trim(),
        bench.display()
    );
    let package_dir = workspace.join("crates/netray");
    let mut child = Command::new(bench)
        .arg("--bench")
        .current_dir(&package_dir)
        .env("CARGO_MANIFEST_DIR", &package_dir)
        .env("NETRAY_KERNEL_STAGE", "guest")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bench.display()))?;
    // The figures, also in a file: the guest's console mixes them with
    // the host's messages.
    let report = workspace.join(BENCH_REPORT);
    if let Some(dir) = report.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut file =
        fs::File::create(&report).map_err(|e| format!("creating {}: {e}", report.display()))?;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.map_err(|e| format!("reading the benchmark's output: {e}"))?;
            println!("{line}");
            std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())
                .map_err(|e| format!("writing {}: {e}", report.display()))?;
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", bench.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", bench.display()))
    }
}

/// Where [`guest_bench`] writes the delayed-path benchmark's figures too
/// (relative to the workspace).
pub const BENCH_REPORT: &str = "target/bench/trace_delay.txt";

/// Claims binary `index` of the plan in `run_dir` for this guest: true if
/// no other guest had (`mkdir` succeeds for exactly one caller, on the
/// host's filesystem as over 9p).
fn claim(run_dir: &Path, index: &str) -> Result<bool> {
    match fs::create_dir(run_dir.join(CLAIMS).join(index)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("claiming binary {index}: {e}")),
    }
}

/// Inside the guest (number `boot` of its kernel): takes the binaries of
/// the plan in `run_dir` that no other guest has taken, in the plan's
/// order, until none is left or `seconds` have passed; output to
/// `run_dir/INDEX.log`, what it took to `claimed-BOOT`, exit codes and
/// times to `results-BOOT`.
pub fn guest_run(run_dir: &Path, boot: &str, seconds: u64) -> Result {
    let budget_end = Instant::now() + Duration::from_secs(seconds);
    guest_prepare()?;
    netray_from_memory(&crate::workspace_root().join("target/release/netray"))?;
    let plan =
        fs::read_to_string(run_dir.join("plan")).map_err(|e| format!("reading plan: {e}"))?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("guest: kernel {}", release.trim());
    let mut results = String::new();
    let mut claimed = String::new();
    for line in plan.lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(index), Some(dir), Some(executable)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if Instant::now() >= budget_end {
            eprintln!("guest: the stage's time is up; leaving the rest of the plan");
            break;
        }
        if !claim(run_dir, index)? {
            continue;
        }
        claimed.push_str(&format!("{index}\n"));
        fs::write(run_dir.join(format!("claimed-{boot}")), &claimed)
            .map_err(|e| format!("writing claims: {e}"))?;
        let log_path = run_dir.join(format!("{index}.log"));
        let log = fs::File::create(&log_path).map_err(|e| format!("creating log: {e}"))?;
        let started = Instant::now();
        eprintln!("guest: running {executable}");
        let code = match Command::new(executable)
            .args(["--skip", HOST_ONLY])
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
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!("guest: {executable}: exit {code} after {elapsed:.0} s");
        results.push_str(&format!("{index}\t{code}\t{elapsed:.1}\n"));
        // Written after every binary: a guest that dies later still tells
        // which binaries finished.
        fs::write(run_dir.join(format!("results-{boot}")), &results)
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

    fn binary(name: &str) -> TestBinary {
        TestBinary {
            executable: format!("/t/release/deps/{name}-0123abcd"),
            package_dir: "/w/crates/netray".into(),
            host_only: 0,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(CLAIMS)).unwrap();
        dir
    }

    #[test]
    fn the_plan_puts_the_slowest_binaries_first() {
        let binaries = [
            binary("zeta"),
            binary("check"),
            binary("trace_e2e"),
            binary("alpha"),
            binary("conns_trace"),
        ];
        let plan = plan_text(&binaries);
        let order: Vec<&str> = plan
            .lines()
            .map(|l| l.split('\t').next().unwrap())
            .collect();
        // Named ones by measured cost, then the others in cargo's order.
        assert_eq!(order, ["2", "4", "1", "0", "3"]);
    }

    #[test]
    fn each_binary_is_claimed_by_exactly_one_guest() {
        let dir = scratch("claims");
        let won: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let guests: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..200)
                            .filter(|i| claim(&dir, &i.to_string()).unwrap())
                            .collect::<Vec<usize>>()
                    })
                })
                .collect();
            guests.into_iter().map(|g| g.join().unwrap()).collect()
        });
        let mut all: Vec<usize> = won.concat();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        assert_eq!(unclaimed(&dir, 200), 0);
        assert_eq!(unclaimed(&dir, 203), 3);
        let _ = fs::remove_dir_all(&dir);
    }

    fn kernel(name: &str, run_dir: &Path, running: usize) -> KernelRun {
        KernelRun {
            name: name.into(),
            image: PathBuf::new(),
            run_dir: run_dir.into(),
            running,
            boots: running,
            gave_back: false,
            failures: Vec::new(),
            first_boot: None,
            last_end: None,
        }
    }

    #[test]
    fn the_next_guest_goes_where_fewest_run_and_most_is_left() {
        let dirs: Vec<PathBuf> = ["a", "b", "c"]
            .iter()
            .map(|n| scratch(&format!("next-{n}")))
            .collect();
        // a: 1 of 4 binaries left, b: 3 left, c: none left.
        for i in 0..3 {
            claim(&dirs[0], &i.to_string()).unwrap();
        }
        claim(&dirs[1], "0").unwrap();
        for i in 0..4 {
            claim(&dirs[2], &i.to_string()).unwrap();
        }
        let mut kernels = vec![
            kernel("a", &dirs[0], 0),
            kernel("b", &dirs[1], 0),
            kernel("c", &dirs[2], 0),
        ];
        assert_eq!(next_kernel(&kernels, 4), Some(1), "most left");
        kernels[1].running = 1;
        assert_eq!(next_kernel(&kernels, 4), Some(0), "fewest running");
        kernels[0].running = 1;
        assert_eq!(next_kernel(&kernels, 4), Some(1), "a tie: most left");
        kernels[1].failures.push("its guest could not start".into());
        assert_eq!(
            next_kernel(&kernels, 4),
            Some(0),
            "a failed kernel gets no guest"
        );
        kernels[1].failures.clear();
        claim(&dirs[0], "3").unwrap();
        for i in 1..4 {
            claim(&dirs[1], &i.to_string()).unwrap();
        }
        assert_eq!(next_kernel(&kernels, 4), None, "everything taken");
        for dir in dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_dead_guest_lost_what_it_claimed_and_did_not_report() {
        let dir = scratch("lost");
        fs::write(dir.join("claimed-2"), "4\n0\n7\n").unwrap();
        fs::write(dir.join("results-2"), "4\t0\t12.5\n").unwrap();
        fs::write(dir.join("claimed-1"), "1\n").unwrap();
        fs::write(dir.join("results-1"), "1\ttimed-out\t1800.0\n").unwrap();
        assert_eq!(lost_binaries(&dir, 2), [0, 7]);
        assert!(lost_binaries(&dir, 1).is_empty());
        let mut all: Vec<(usize, String)> = results(&dir, None)
            .into_iter()
            .map(|r| (r.index, r.code))
            .collect();
        all.sort();
        assert_eq!(all, [(1, TIMED_OUT.to_string()), (4, "0".to_string())]);
        let _ = fs::remove_dir_all(&dir);
    }
}

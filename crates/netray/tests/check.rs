//! `netray check` against the running kernel: it must report what the kernel
//! really does, clean up after itself, and refuse clearly without privileges.
//! These tests need root (CI runs them as root); they fail, never skip, without it.

use std::{path::Path, process::Command};

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

const KEYS: [&str; 12] = [
    "xdp",
    "tc",
    "tracepoint",
    "raw_tracepoint",
    "btf_tracepoint",
    "kprobe",
    "fentry",
    "uprobe",
    "sock_ops",
    "cgroup_skb",
    "ringbuf",
    "btf",
];

fn check_json() -> Value {
    let out = Command::new(NETRAY)
        .args(["check", "--json"])
        .output()
        .expect("run netray");
    assert!(
        out.status.success(),
        "netray check failed (these tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check --json prints one JSON object")
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let json = check_json();
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected: Vec<&str> = KEYS.iter().copied().chain(["details"]).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for key in KEYS {
        assert!(object[key].is_boolean(), "{key} must be a boolean");
        // A failure always comes with the kernel's reason, a success never does.
        let detail = object["details"].get(key);
        if object[key] == false {
            let text = detail.and_then(Value::as_str).unwrap_or_default();
            assert!(!text.is_empty(), "{key} is false without a reason");
        } else {
            assert!(detail.is_none(), "{key} is true but has a failure detail");
        }
    }
}

#[test]
fn agrees_with_the_kernel() {
    let json = check_json();
    // Independent evidence for the hooks whose availability the system shows.
    let has_kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(json["kprobe"], has_kprobe_pmu, "kprobe vs the kprobe PMU");
    let has_btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(json["btf"], has_btf, "btf vs /sys/kernel/btf/vmlinux");
    if !has_btf {
        assert_eq!(json["fentry"], false);
        assert_eq!(json["btf_tracepoint"], false);
    }
    // Every other hook is available on any kernel netray supports (>= 5.8 with
    // BTF): the probe reports true only after the program really ran, so a
    // false here is a real regression (or a kernel without these features).
    for key in [
        "xdp",
        "tc",
        "tracepoint",
        "raw_tracepoint",
        "uprobe",
        "sock_ops",
        "cgroup_skb",
        "ringbuf",
    ] {
        assert_eq!(json[key], true, "{key}: {}", json["details"][key]);
    }
    // This machine class: no CONFIG_KPROBES, fentry refused (lockdown).
    if !has_kprobe_pmu {
        assert!(
            json["details"]["kprobe"]
                .as_str()
                .unwrap()
                .contains("kprobe"),
            "the kprobe failure names the missing kprobe support"
        );
    }
}

/// Probe programs (`check_*`) that no live process holds.
fn orphaned_probe_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success());
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|prog| {
            prog["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("check_"))
        })
        .filter(|prog| {
            !prog["pids"].as_array().into_iter().flatten().any(|pid| {
                let pid = pid["pid"].as_u64().unwrap_or(0);
                Path::new(&format!("/proc/{pid}")).exists()
            })
        })
        .map(|prog| format!("{} (id {})", prog["name"], prog["id"]))
        .collect()
}

#[test]
fn leaves_no_program_behind() {
    let _ = check_json();
    // Programs of a `netray check` that just exited (this test's, or a
    // concurrent test's) are freed by the kernel shortly after: allow that
    // moment, but a program nobody holds must not stay loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let orphans = orphaned_probe_programs();
        if orphans.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe programs still loaded with no live holder: {orphans:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn without_capabilities_names_what_is_missing() {
    // Stay uid 0 (so file permissions of the checkout do not matter) but empty
    // the bounding set: after exec the process has no capability at all.
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            NETRAY,
            "check",
            "--json",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        !out.status.success(),
        "must exit non-zero without privileges"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_NET_RAW"] {
        assert!(stderr.contains(cap), "stderr names {cap}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "no partial report on stdout");
}

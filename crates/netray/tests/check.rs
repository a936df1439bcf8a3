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

const CAPABILITIES: [&str; 4] = ["packets", "serve", "trace", "conns"];

/// `netray check --json`: exit 0 when every command's programs work here,
/// 1 (with the whole report) when one does not, 2 on an error.
fn check_json() -> Value {
    let out = Command::new(NETRAY)
        .args(["check", "--json"])
        .output()
        .expect("run netray");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "netray check failed ({code:?}; these tests need root): {stderr}"
    );
    let json: Value =
        serde_json::from_slice(&out.stdout).expect("check --json prints one JSON object");
    let all_ok = CAPABILITIES
        .iter()
        .all(|c| json["capabilities"][c]["ok"] == true);
    assert_eq!(
        code,
        Some(if all_ok { 0 } else { 1 }),
        "exit status 1 exactly when a capability fails: {}",
        json["capabilities"]
    );
    json
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let json = check_json();
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected: Vec<&str> = KEYS
        .iter()
        .copied()
        .chain(["details", "capabilities"])
        .collect();
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
    let capabilities = object["capabilities"].as_object().unwrap();
    let mut names: Vec<&str> = capabilities.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["conns", "packets", "serve", "trace"]);
    for (name, capability) in capabilities {
        let mut keys: Vec<&str> = capability
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["error", "hooks", "ok", "warnings"], "{name}");
        assert!(capability["ok"].is_boolean(), "{name}.ok");
        let hooks = capability["hooks"].as_array().unwrap();
        assert!(!hooks.is_empty(), "{name} names its hooks");
        assert!(hooks.iter().all(Value::is_string));
        assert!(capability["warnings"].is_array());
        if capability["ok"] == true {
            assert!(capability["error"].is_null(), "{name}: ok with an error");
        } else {
            let error = capability["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "{name} failed without a reason");
            // One paragraph, never the verifier's whole log.
            assert!(
                error.len() < 3000 && error.lines().count() <= 16,
                "{name}: error too long ({} bytes): {error}",
                error.len()
            );
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
    // A hook the kernel cannot have is said in one line, exactly.
    if !has_kprobe_pmu {
        assert_eq!(
            json["details"]["kprobe"],
            "this kernel has no kprobes: no kprobe PMU at \
             /sys/bus/event_source/devices/kprobe (built without CONFIG_KPROBES)",
        );
    }
}

/// What `netray check` says about each command agrees with running that
/// command: `netray packets` on lo of a fresh namespace for one second, and
/// `netray conns` until it says it is tracing.
#[test]
fn capabilities_agree_with_the_commands() {
    let json = check_json();
    let ns = netray_testbed::Netns::new().expect("a test namespace");
    let packets = ns
        .command(NETRAY)
        .args(["packets", "-i", "lo", "--duration", "1", "-c", "1000"])
        .output()
        .expect("run netray packets");
    assert_eq!(
        json["capabilities"]["packets"]["ok"],
        packets.status.success(),
        "check says {}, netray packets said: {}",
        json["capabilities"]["packets"],
        String::from_utf8_lossy(&packets.stderr)
    );
    if !packets.status.success() {
        let stderr = String::from_utf8_lossy(&packets.stderr);
        assert!(
            stderr.len() < 3000,
            "netray packets printed {} bytes",
            stderr.len()
        );
    }

    let mut conns = Command::new(NETRAY)
        .arg("conns")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run netray conns");
    let mut stderr = conns.stderr.take().unwrap();
    // Read until it says it is tracing, or exits (stderr closes).
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&text).contains("tracing (") {
                break;
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = conns.kill();
    let _ = conns.wait();
    let text = reader.join().unwrap();
    assert_eq!(
        json["capabilities"]["conns"]["ok"],
        text.contains("netray conns: tracing ("),
        "check says {}, netray conns said: {text}",
        json["capabilities"]["conns"]
    );
}

/// Programs no live process holds: the probe's (`check_*`) and those of the
/// commands it loads (`packets_*`, `inband_*`, `conns_*`).
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
            prog["name"].as_str().is_some_and(|name| {
                ["check_", "packets_", "inband_", "conns_"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
            })
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

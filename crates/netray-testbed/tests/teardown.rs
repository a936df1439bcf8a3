//! Namespaces disappear on drop, on panic, and after their process died.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use netray_testbed::{RouterBehavior, Topology, cleanup_stale};

fn netns_list() -> Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8(out.stdout)?)
}

fn assert_gone(names: &[String]) -> Result<()> {
    let list = netns_list()?;
    for name in names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} still exists"
        );
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "{name} listed"
        );
    }
    // The veths are created inside the namespaces; none may ever show up in
    // the root namespace (where other tests run concurrently, too).
    let links = Command::new("ip").args(["-o", "link"]).output()?;
    let links = String::from_utf8(links.stdout)?;
    assert!(
        !links.contains(": link"),
        "stray testbed veth in the root namespace:\n{links}"
    );
    Ok(())
}

#[test]
fn drop_removes_everything() -> Result<()> {
    let tb = Topology::chain(2)
        .router(1, RouterBehavior::Silent)
        .loss(0, 5)
        .build()?;
    let names: Vec<String> = tb
        .namespaces()
        .iter()
        .map(|ns| ns.name().to_string())
        .collect();
    assert_eq!(names.len(), 4);
    for name in &names {
        assert!(
            name.starts_with(&format!("nrt{}-", std::process::id())),
            "{name}"
        );
        assert!(Path::new("/run/netns").join(name).exists());
    }
    // A background process must not keep a namespace alive.
    let _sleeper = tb.server().spawn(&["sleep", "600"])?;
    // Not wrapped in `Spawned`: the namespace's teardown must kill it. No
    // inherited stdio, so a process escaping that still cannot hold the test
    // runner's pipes open.
    let _leaked = tb
        .client()
        .command("sleep")
        .arg("600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    drop(tb);
    assert_gone(&names)
}

#[test]
fn panic_inside_test_still_tears_down() -> Result<()> {
    let names = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let tb = Topology::chain(1).build().expect("build");
        *names.lock().unwrap() = tb
            .namespaces()
            .iter()
            .map(|ns| ns.name().to_string())
            .collect();
        panic!("test failure while the testbed is alive");
    }));
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    assert_gone(&names)
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() -> Result<()> {
    // A pid that surely is dead: a child we already reaped.
    let mut child = Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    let stale = format!("nrt{dead}-0-c");
    let status = Command::new("ip").args(["netns", "add", &stale]).status()?;
    assert!(status.success());
    assert!(cleanup_stale()? >= 1);
    assert_gone(&[stale])
}

#[test]
fn exec_reports_failures_with_output() -> Result<()> {
    let tb = Topology::chain(0).build()?;
    let out = tb.client().exec(&["ip", "-br", "addr", "show", "link0"])?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.0.0.1/24"));
    let err = tb
        .client()
        .exec(&["ip", "link", "show", "nosuchdev"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nosuchdev") && msg.contains(tb.client().name()),
        "{msg}"
    );
    // `run` executes in the namespace: only lo and link0 exist there.
    let names = tb
        .server()
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    assert!(names.contains("link0:") && names.contains("lo:"), "{names}");
    assert!(
        !tb.client()
            .ping("10.0.0.99".parse()?, Duration::from_millis(300))?
    );
    Ok(())
}

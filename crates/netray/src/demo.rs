//! `netray demo`: a self-contained run of the in-band traceroute server.
//!
//! Builds a small simulated Internet path out of network namespaces
//!
//! ```text
//! visitor — home router (NAT) — isp — transit (silent) — dc — server
//! ```
//!
//! starts `netray serve` on the server, has the visitor fetch `/` over IPv4
//! and IPv6 (what `curl http://server/` shows), prints the traced paths, and
//! removes every namespace again (also on error or Ctrl-C).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use netray_testbed::{Family, RouterBehavior, Side, Topology, http};

const PORT: u16 = 8080;

/// Runs the demo, printing to stdout.
pub fn run() -> anyhow::Result<()> {
    let testbed = Topology::chain(4)
        .router(
            1,
            RouterBehavior::Nat {
                masquerade_toward: Side::Server,
            },
        )
        .router(3, RouterBehavior::Silent)
        .build()
        .context("building the simulated path (network namespaces)")?;
    println!("netray demo: a simulated path in network namespaces");
    println!();
    println!("  visitor ── home router (NAT) ── isp ── transit (sends no ICMP) ── dc ── server");
    for family in [Family::V4, Family::V6] {
        println!(
            "  {family:?}: visitor {}, NAT public address {}, server {}",
            testbed.client_addr(family),
            testbed.router_addr(1, Side::Server, family),
            testbed.server_addr(family),
        );
    }
    println!();

    let exe = std::env::current_exe().context("locating the netray binary")?;
    let exe = exe.to_str().context("netray's path is not UTF-8")?;
    let listen = format!("[::]:{PORT}");
    let _server = testbed
        .server()
        .spawn(&[exe, "serve", "--http", &listen])
        .context("starting netray serve in the server namespace")?;
    wait_until_serving(&testbed)?;

    for family in [Family::V4, Family::V6] {
        let addr = SocketAddr::new(testbed.server_addr(family), PORT);
        println!("$ curl http://{addr}/      # from the visitor");
        let started = Instant::now();
        let response = testbed
            .client()
            .run(move || http::get(addr, "/", "*/*", Duration::from_secs(20)))?
            .with_context(|| format!("fetching http://{addr}/ from the visitor"))?;
        if response.status != 200 {
            bail!("the server answered {}", response.status);
        }
        print!("{}", String::from_utf8_lossy(&response.body));
        println!(
            "(whole request {:.0} ms; visitor retransmissions: {})",
            started.elapsed().as_secs_f64() * 1e3,
            response.client_retransmits
        );
        println!();
    }
    println!("netray demo: done; the namespaces are removed.");
    Ok(())
}

fn wait_until_serving(testbed: &netray_testbed::Testbed) -> anyhow::Result<()> {
    let addr = SocketAddr::new(testbed.server_addr(Family::V4), PORT);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = testbed
            .client()
            .run(move || http::get(addr, "/healthz", "*/*", Duration::from_secs(1)))?
            .is_ok_and(|r| r.status == 200);
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("netray serve did not answer on {addr} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

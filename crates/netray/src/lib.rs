//! netray: network observability with eBPF.
//!
//! The binary `netray` is a thin CLI over this library; tests and benchmarks
//! use the same modules.
//!
//! - [`check`]: which kernel hooks load, attach and run on this machine. Other
//!   commands use it to choose hooks at run time.
//! - [`conns`]: connection tracer (`netray conns`).
//! - [`demo`]: `netray demo`, a self-contained run on a simulated path.
//! - [`inband`]: in-band traceroute (probe engine, capture, result model).
//! - [`packets`]: packet tracer (capture, filters, output).
//! - [`privileges`]: which Linux capabilities the process has.
//! - [`trace`]: outbound in-band trace (`netray trace HOST[:PORT]`).
//! - [`serve`]: the in-band traceroute web server (`netray serve`).
//! - [`loader`]: loading and attaching eBPF objects (shared steps).
//! - [`netdev`]: small network-device helpers (interface flags, listing).
//! - [`objects`]: the eBPF objects embedded at build time.
//! - [`tracefs`]: makes sure tracefs is mounted for classic tracepoints.

pub mod check;
pub mod conns;
pub mod demo;
pub mod inband;
pub mod loader;
pub mod netdev;
pub mod objects;
pub mod packets;
pub mod privileges;
pub mod serve;
pub mod tracefs;
pub mod trace;

/// Completes on Ctrl-C or SIGTERM, the signals every long-running command
/// stops on. (On SIGKILL the kernel closes our bpf_link fds, which detaches
/// the programs all the same.)
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

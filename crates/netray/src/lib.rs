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
//! - [`verifier`]: verifier rejections in one short paragraph.

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
pub mod trace;
pub mod tracefs;
pub mod verifier;

/// Completes on Ctrl-C (SIGINT) or SIGTERM, the signals every
/// long-running command stops on. (On SIGKILL the kernel closes our
/// bpf_link fds, which detaches the programs all the same.)
///
/// Called inside a tokio runtime, it takes over both signals at once, so
/// that one arriving while the command is still setting up ends it through
/// its normal exit path (accounting printed, output flushed) rather than
/// the default action, which kills the process. Called outside, it takes
/// them over when first polled.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let listen = || -> std::io::Result<(Signal, Signal)> {
        Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    };
    let early = tokio::runtime::Handle::try_current().ok().map(|_| listen());
    async move {
        match early.unwrap_or_else(listen) {
            Ok((mut interrupt, mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            // No signal handling available (never expected): run until
            // the process is killed.
            Err(error) => {
                tracing::warn!("cannot listen for SIGINT/SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// [`shutdown_signal`] for a command that drives `runtime` with
/// `block_on`: created in the runtime's context, so that the signals are
/// taken over before the command's setup runs.
pub fn shutdown_signal_for(
    runtime: &tokio::runtime::Runtime,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let _context = runtime.enter();
    shutdown_signal()
}

//! netray: network observability with eBPF.
//!
//! The binary `netray` is a thin CLI over this library; tests and benchmarks
//! use the same modules.
//!
//! - [`check`]: which kernel hooks load, attach and run on this machine. Other
//!   commands use it to choose hooks at run time.
//! - [`demo`]: `netray demo`, a self-contained run on a simulated path.
//! - [`inband`]: in-band traceroute (probe engine, capture, result model).
//! - [`packets`]: packet tracer (capture, filters, output).
//! - [`privileges`]: which Linux capabilities the process has.
//! - [`serve`]: the in-band traceroute web server (`netray serve`).
//! - [`loader`]: loading and attaching eBPF objects (shared steps).
//! - [`netdev`]: small network-device helpers (interface flags, listing).
//! - [`objects`]: the eBPF objects embedded at build time.
//! - [`tracefs`]: makes sure tracefs is mounted for classic tracepoints.

pub mod check;
pub mod demo;
pub mod inband;
pub mod loader;
pub mod netdev;
pub mod objects;
pub mod packets;
pub mod privileges;
pub mod serve;
pub mod tracefs;

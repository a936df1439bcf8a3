//! Connection tracer (`netray conns`). Scaffold: filled in by the conns work.
#![no_std]
#![no_main]

#[path = "conns/resolve.rs"]
mod resolve;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

/// Placeholder so the object links; replaced by the real lifecycle programs.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn conns_state(_ctx: TracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

//! Plain-old-data types that netray's eBPF programs and its userspace exchange
//! through maps and ring buffers. Everything here is `#[repr(C)]`, has no
//! padding surprises, and is `no_std` so the kernel side can use it.
#![no_std]

pub mod check;
pub mod conns;
pub mod inband;
pub mod packets;
pub mod resolve;

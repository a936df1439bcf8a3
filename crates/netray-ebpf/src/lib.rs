//! netray's eBPF programs. The programs live in the binary targets (one object
//! per capability); this library holds helpers they share.
#![no_std]

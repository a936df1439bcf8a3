//! Types the connection tracer's eBPF programs and userspace share.

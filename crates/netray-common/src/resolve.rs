//! Types the getaddrinfo uprobes and userspace share (hostname events).

//! Hostnames for `netray conns`: getaddrinfo uprobes on the system's libc and
//! an address → name cache. Scaffold: filled in by the hostname work.

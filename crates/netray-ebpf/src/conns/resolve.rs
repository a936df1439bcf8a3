//! getaddrinfo uprobes for `netray conns` hostnames. Scaffold: filled in by the
//! hostname work.

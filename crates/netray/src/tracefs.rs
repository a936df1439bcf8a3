//! Makes sure tracefs is mounted: classic tracepoints (and aya's lookup of
//! their ids) need it, and some machines boot without it mounted.
//!
//! aya looks for tracefs once per process and caches the answer, so call
//! [`ensure_mounted`] before the first tracepoint is attached.

use std::{ffi::CString, io, path::Path};

/// Where tracefs is mounted when netray has to mount it.
pub const MOUNT_POINT: &str = "/sys/kernel/tracing";

/// What [`ensure_mounted`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracefsState {
    /// tracefs was already mounted at this path.
    AlreadyMounted(&'static str),
    /// netray mounted it at [`MOUNT_POINT`]; it stays mounted after exit, as
    /// when the system mounts it at boot.
    MountedByNetray,
}

fn populated(path: &str) -> bool {
    Path::new(path)
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
}

/// Mounts tracefs at [`MOUNT_POINT`] unless it is mounted already (at that
/// path or under debugfs).
pub fn ensure_mounted() -> io::Result<TracefsState> {
    for path in [MOUNT_POINT, "/sys/kernel/debug/tracing"] {
        if populated(path) {
            return Ok(TracefsState::AlreadyMounted(path));
        }
    }
    let source = CString::new("tracefs").expect("no NUL");
    let target = CString::new(MOUNT_POINT).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("tracefs is not mounted and mounting it at {MOUNT_POINT} failed: {error}"),
        ));
    }
    Ok(TracefsState::MountedByNetray)
}

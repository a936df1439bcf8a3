//! Finding the libc files of the system the way its processes see them: every
//! libc mapped by a running process (`/proc/PID/maps`, reached through
//! `/proc/PID/root` for processes in other mount namespaces, e.g. containers)
//! and the default libc of the dynamic linker's cache (`/etc/ld.so.cache`).
//! Uprobes are per file (inode), so each distinct file is listed once.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The dynamic linker's cache of library paths.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// A libc file found on the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcFile {
    /// A path to it that this process can open (through `/proc/PID/root` for
    /// a file only another mount namespace sees).
    pub path: PathBuf,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Where it was found: `"ld.so.cache"` or `"pid N"` (the first process
    /// seen mapping it).
    pub found_in: String,
}

/// Every distinct libc file (by device and inode) of this machine's ELF
/// class and architecture: the ld.so cache's first, then those mapped by
/// running processes. Unreadable processes and files are skipped.
pub fn find_libcs() -> Vec<LibcFile> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let machine = host_machine();
    let mut add = |path: PathBuf, found_in: String| {
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        if machine.is_some() && elf_machine(&path) != machine {
            return;
        }
        found.push(LibcFile {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            found_in,
        });
    };
    if let Ok(cache) = fs::read(LD_SO_CACHE) {
        for path in ld_so_cache_libcs(&cache) {
            add(path, "ld.so.cache".to_string());
        }
    }
    for (path, pid) in mapped_libcs() {
        add(path, format!("pid {pid}"));
    }
    found
}

/// Whether a file name is a libc: glibc's `libc.so.6` (and old
/// `libc-2.NN.so`), musl's `libc.so` and its dynamic linker `ld-musl-*`
/// (musl's libc is its dynamic linker).
pub fn is_libc_name(file_name: &str) -> bool {
    file_name == "libc.so"
        || file_name.starts_with("libc.so.")
        || (file_name.starts_with("libc-") && file_name.ends_with(".so"))
        || (file_name.starts_with("ld-musl-") && file_name.contains(".so"))
        || (file_name.starts_with("libc.musl-") && file_name.contains(".so"))
}

/// The path of the file mapped by one `/proc/PID/maps` line, if any (not
/// anonymous or special mappings, not deleted files).
pub fn maps_line_path(line: &str) -> Option<&str> {
    // address perms offset dev inode [path]: the path may contain spaces.
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace)?;
        rest = &rest[end..];
    }
    let path = rest.trim();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// The libc paths named in a `/proc/PID/maps` text (each once).
pub fn libcs_in_maps(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = Vec::new();
    for path in maps.lines().filter_map(maps_line_path) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if is_libc_name(name) && !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// Libcs mapped by running processes: (openable path, pid), each path of a
/// mount namespace once.
fn mapped_libcs() -> Vec<(PathBuf, u32)> {
    let own_ns = mount_ns("self");
    let mut seen: HashSet<(Option<u64>, String)> = HashSet::new();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut ns_of: HashMap<u32, Option<u64>> = HashMap::new();
    for pid in pids {
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for path in libcs_in_maps(&maps) {
            let ns = *ns_of
                .entry(pid)
                .or_insert_with(|| mount_ns(&pid.to_string()));
            if !seen.insert((ns, path.to_string())) {
                continue;
            }
            let openable = if ns.is_some() && ns == own_ns {
                PathBuf::from(path)
            } else {
                Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
            };
            out.push((openable, pid));
        }
    }
    out
}

/// Inode of the mount namespace of `/proc/<pid>`.
fn mount_ns(pid: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// `e_machine` of a 64-bit little-endian ELF file; `None` otherwise. The
/// uprobes read `struct addrinfo` with the LP64 layout, so 32-bit libcs
/// (multilib) must not get them.
fn elf_machine(path: &Path) -> Option<u16> {
    let mut header = [0u8; 20];
    fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    let is_elf64_le = header[..4] == *b"\x7fELF" && header[4] == 2 && header[5] == 1;
    is_elf64_le.then(|| u16::from_le_bytes([header[18], header[19]]))
}

/// `e_machine` of this program (the architecture whose libcs to probe).
fn host_machine() -> Option<u16> {
    elf_machine(Path::new("/proc/self/exe"))
}

/// The libc paths in an ld.so cache (glibc's `glibc-ld.so.cache1.1` format,
/// standalone or after the old `ld.so-1.7.0` table). Garbage gives nothing.
pub fn ld_so_cache_libcs(cache: &[u8]) -> Vec<PathBuf> {
    const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
    const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    let u32_at = |at: usize| -> Option<usize> {
        let bytes = cache.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let start = if cache.starts_with(NEW_MAGIC) {
        0
    } else if cache.starts_with(OLD_MAGIC) {
        // Old header: magic (12 bytes with padding), nlibs, then 12-byte
        // entries; the new table follows, 8-byte aligned.
        let Some(old_entries) = u32_at(12) else {
            return Vec::new();
        };
        let end = old_entries.saturating_mul(12).saturating_add(16);
        end.next_multiple_of(8)
    } else {
        return Vec::new();
    };
    let Some(table) = cache.get(start..) else {
        return Vec::new();
    };
    if !table.starts_with(NEW_MAGIC) {
        return Vec::new();
    }
    let string_at = |offset: usize| -> Option<&str> {
        let bytes = table.get(offset..)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok()
    };
    let Some(nlibs) = u32_at(start + 20) else {
        return Vec::new();
    };
    // Header of the new format: 48 bytes; entries of 24 bytes: flags (i32),
    // key, value (string offsets from the table start), osversion, hwcap.
    let mut out: Vec<PathBuf> = Vec::new();
    for i in 0..nlibs.min(1 << 20) {
        let entry = start + 48 + i * 24;
        let (Some(key), Some(value)) = (u32_at(entry + 4), u32_at(entry + 8)) else {
            break;
        };
        let (Some(key), Some(value)) = (string_at(key), string_at(value)) else {
            continue;
        };
        if is_libc_name(key) && value.starts_with('/') {
            let path = PathBuf::from(value);
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_names() {
        for name in [
            "libc.so.6",
            "libc-2.31.so",
            "libc.so",
            "ld-musl-x86_64.so.1",
            "ld-musl-aarch64.so.1",
            "libc.musl-x86_64.so.1",
        ] {
            assert!(is_libc_name(name), "{name}");
        }
        for name in [
            "libcrypt.so.1",
            "libc++.so.1",
            "libcap.so.2",
            "ld-linux-x86-64.so.2",
            "libcurl.so.4",
            "libc-client.so.2007e",
        ] {
            assert!(!is_libc_name(name), "{name}");
        }
    }

    #[test]
    fn maps_lines() {
        let maps = "\
55d0a0a00000-55d0a0a28000 r--p 00000000 fd:01 1234  /usr/bin/cat
7f0000000000-7f0000028000 r--p 00000000 fd:01 4321  /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f00001bd000 r-xp 00028000 fd:01 4321  /usr/lib/x86_64-linux-gnu/libc.so.6
7f1000000000-7f1000001000 r-xp 00000000 fd:01 99    /opt/my dir/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 fd:01 98    /old/libc.so.6 (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]
7ffd00030000-7ffd00031000 rw-p 00000000 00:00 0
";
        assert_eq!(
            libcs_in_maps(maps),
            [
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/opt/my dir/libc.so.6"
            ]
        );
        assert_eq!(maps_line_path("garbage"), None);
        assert_eq!(maps_line_path(""), None);
    }

    fn new_format_cache(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let header = 48 + entries.len() * 24;
        let mut table = Vec::new();
        for (key, value) in entries {
            let k = header + strings.len();
            strings.extend_from_slice(key.as_bytes());
            strings.push(0);
            let v = header + strings.len();
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
            table.extend_from_slice(&0x0303i32.to_le_bytes());
            table.extend_from_slice(&(k as u32).to_le_bytes());
            table.extend_from_slice(&(v as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut out = b"glibc-ld.so.cache1.1".to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.resize(48, 0);
        out.extend(table);
        out.extend(strings);
        out
    }

    #[test]
    fn ld_so_cache_new_format() {
        let cache = new_format_cache(&[
            ("libcap.so.2", "/lib/x86_64-linux-gnu/libcap.so.2"),
            ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            ("libc.so.6", "/lib32/libc.so.6"),
        ]);
        assert_eq!(
            ld_so_cache_libcs(&cache),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib32/libc.so.6")
            ]
        );
        // Truncated or garbage input: nothing, no panic.
        for len in 0..cache.len() {
            let _ = ld_so_cache_libcs(&cache[..len]);
        }
        assert!(ld_so_cache_libcs(b"not a cache").is_empty());
        let mut huge = cache.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = ld_so_cache_libcs(&huge);
    }

    #[test]
    fn ld_so_cache_old_and_new_format() {
        let new = new_format_cache(&[("libc.so.6", "/usr/lib64/libc.so.6")]);
        // Old header with one 12-byte entry: new table at 16 + 12 = 28,
        // aligned up to 32.
        let mut cache = b"ld.so-1.7.0\0".to_vec();
        cache.extend_from_slice(&1u32.to_le_bytes());
        cache.extend_from_slice(&[0u8; 12]);
        cache.resize(32, 0);
        cache.extend_from_slice(&new);
        assert_eq!(
            ld_so_cache_libcs(&cache),
            [PathBuf::from("/usr/lib64/libc.so.6")]
        );
        // An old-only cache (no new table) names nothing.
        assert!(ld_so_cache_libcs(&cache[..32]).is_empty());
    }

    #[test]
    fn ld_so_cache_of_this_system() {
        // Where the cache exists it must parse and name a libc.
        if let Ok(cache) = fs::read(LD_SO_CACHE) {
            assert!(
                !ld_so_cache_libcs(&cache).is_empty(),
                "{LD_SO_CACHE} has no libc"
            );
        }
    }
}

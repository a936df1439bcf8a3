//! The offsets the eBPF programs need, computed at run time: tracepoint
//! fields from their format files (tracefs), kernel struct members from the
//! kernel's BTF. Nothing is hard-coded.

use std::path::Path;

use anyhow::{Context as _, anyhow, ensure};
use netray_common::conns::{
    CONFIG_ACCEPT, CONFIG_COUNTERS, CONFIG_SOCK_TUPLE, ConnsConfig, TP_RECORD_MAX,
};

use super::btf::Btf;

/// One field of a tracepoint format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// Field name (array suffix removed).
    pub name: String,
    /// Offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("field:")?;
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.trim().parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.trim().parse().ok();
                } else if decl.is_none() && !part.is_empty() {
                    decl = Some(part);
                }
            }
            // "const void * skaddr", "__u8 saddr[4]": the name is the last word.
            let last = decl?.split_whitespace().last()?;
            let name = last.split('[').next()?.trim_start_matches('*').to_string();
            Some(FormatField {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

/// Offset of `name` in `fields`, checking its size.
fn offset_of(fields: &[FormatField], event: &str, name: &str, size: u32) -> anyhow::Result<u32> {
    let field = fields
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| anyhow!("tracepoint {event} has no field {name}"))?;
    ensure!(
        field.size == size,
        "tracepoint {event} field {name} has size {} (expected {size})",
        field.size
    );
    Ok(field.offset)
}

/// Like [`offset_of`], for a field the program reads from its copy of the
/// first [`TP_RECORD_MAX`] bytes of the record.
fn record_offset(
    fields: &[FormatField],
    event: &str,
    name: &str,
    size: u32,
) -> anyhow::Result<u32> {
    let offset = offset_of(fields, event, name, size)?;
    ensure!(
        offset + size <= TP_RECORD_MAX,
        "tracepoint {event} field {name} ends at byte {}, past the {TP_RECORD_MAX} bytes \
         netray copies",
        offset + size
    );
    Ok(offset)
}

fn read_format(tracefs: &Path, event: &str) -> anyhow::Result<Vec<FormatField>> {
    let path = tracefs.join("events").join(event).join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_format(&text))
}

/// Fills the tracepoint offsets of `config` from the format files under
/// `tracefs`.
pub fn tracepoint_offsets(tracefs: &Path, config: &mut ConnsConfig) -> anyhow::Result<()> {
    let event = "sock/inet_sock_set_state";
    let f = read_format(tracefs, event)?;
    config.tp_skaddr = record_offset(&f, event, "skaddr", 8)?;
    config.tp_oldstate = record_offset(&f, event, "oldstate", 4)?;
    config.tp_newstate = record_offset(&f, event, "newstate", 4)?;
    config.tp_sport = record_offset(&f, event, "sport", 2)?;
    config.tp_dport = record_offset(&f, event, "dport", 2)?;
    config.tp_family = record_offset(&f, event, "family", 2)?;
    config.tp_protocol = record_offset(&f, event, "protocol", 2)?;
    config.tp_saddr = record_offset(&f, event, "saddr", 4)?;
    config.tp_daddr = record_offset(&f, event, "daddr", 4)?;
    config.tp_saddr_v6 = record_offset(&f, event, "saddr_v6", 16)?;
    config.tp_daddr_v6 = record_offset(&f, event, "daddr_v6", 16)?;
    Ok(())
}

/// Fills the offset of `ret` in the `syscalls:sys_exit_accept{,4}` records
/// (both share the syscall-exit layout; checked).
pub fn accept_tracepoint_offsets(tracefs: &Path, config: &mut ConnsConfig) -> anyhow::Result<()> {
    let accept4 = read_format(tracefs, "syscalls/sys_exit_accept4")?;
    config.tp_accept_ret = offset_of(&accept4, "syscalls/sys_exit_accept4", "ret", 8)?;
    if let Ok(accept) = read_format(tracefs, "syscalls/sys_exit_accept") {
        ensure!(
            offset_of(&accept, "syscalls/sys_exit_accept", "ret", 8)? == config.tp_accept_ret,
            "sys_exit_accept and sys_exit_accept4 differ in layout"
        );
    }
    Ok(())
}

fn sized(btf: &Btf, strukt: &str, member: &str, size: u32) -> anyhow::Result<u32> {
    let (offset, actual) = btf.member(strukt, member)?;
    ensure!(
        actual == size,
        "{strukt}.{member} is {actual} bytes (expected {size})"
    );
    Ok(offset)
}

/// Offset of the `struct sock` inside a `struct tcp_sock`
/// (tcp_sock.inet_conn.icsk_inet.sk; 0 on every kernel so far, but computed).
fn sock_in_tcp_sock(btf: &Btf) -> anyhow::Result<u32> {
    Ok(btf.member_offset("tcp_sock", "inet_conn")?
        + btf.member_offset("inet_connection_sock", "icsk_inet")?
        + btf.member_offset("inet_sock", "sk")?)
}

/// Fills the `tcp_sock` counter offsets (sets `CONFIG_COUNTERS`).
pub fn counter_offsets(btf: &Btf, config: &mut ConnsConfig) -> anyhow::Result<()> {
    let sock = sock_in_tcp_sock(btf)?;
    // The tracepoint's skaddr is the struct sock; tcp_sock members are
    // relative to the tcp_sock, which starts `sock` bytes earlier.
    let tcp = |member: &str, size: u32| -> anyhow::Result<u32> {
        let offset = sized(btf, "tcp_sock", member, size)?;
        offset
            .checked_sub(sock)
            .ok_or_else(|| anyhow!("tcp_sock.{member} precedes the struct sock"))
    };
    config.bytes_acked = tcp("bytes_acked", 8)?;
    config.bytes_received = tcp("bytes_received", 8)?;
    config.bytes_sent = tcp("bytes_sent", 8)?;
    config.bytes_retrans = tcp("bytes_retrans", 8)?;
    config.srtt_us = tcp("srtt_us", 4)?;
    config.total_retrans = tcp("total_retrans", 4)?;
    config.snd_una = tcp("snd_una", 4)?;
    config.write_seq = tcp("write_seq", 4)?;
    // `sk_flags` is a macro for `__sk_common.skc_flags`.
    config.sk_flags =
        btf.member_offset("sock", "__sk_common")? + sized(btf, "sock_common", "skc_flags", 8)?;
    let done = btf.enum_value("SOCK_DONE")?;
    ensure!((0..64).contains(&done), "SOCK_DONE = {done} out of range");
    config.sock_done_bit = done as u32;
    config.flags |= CONFIG_COUNTERS;
    Ok(())
}

/// Fills the fd → socket offsets for accept attribution (sets
/// `CONFIG_ACCEPT`).
pub fn accept_offsets(btf: &Btf, config: &mut ConnsConfig) -> anyhow::Result<()> {
    config.task_files = sized(btf, "task_struct", "files", 8)?;
    config.files_fdt = sized(btf, "files_struct", "fdt", 8)?;
    config.fdt_max_fds = sized(btf, "fdtable", "max_fds", 4)?;
    config.fdt_fd = sized(btf, "fdtable", "fd", 8)?;
    config.file_private_data = sized(btf, "file", "private_data", 8)?;
    config.socket_sk = sized(btf, "socket", "sk", 8)?;
    config.flags |= CONFIG_ACCEPT;
    Ok(())
}

/// Fills the `struct sock` tuple offsets the `tp_btf` lifecycle hook reads
/// (sets `CONFIG_SOCK_TUPLE`).
pub fn sock_tuple_offsets(btf: &Btf, config: &mut ConnsConfig) -> anyhow::Result<()> {
    let common = btf.member_offset("sock", "__sk_common")?;
    let c = |member: &str, size: u32| -> anyhow::Result<u32> {
        Ok(common + sized(btf, "sock_common", member, size)?)
    };
    config.skc_family = c("skc_family", 2)?;
    // Offsets from the `struct sock` pointer: inet_sock starts with it.
    config.inet_sport =
        sized(btf, "inet_sock", "inet_sport", 2)? - btf.member_offset("inet_sock", "sk")?;
    config.skc_dport = c("skc_dport", 2)?;
    config.skc_rcv_saddr = c("skc_rcv_saddr", 4)?;
    config.skc_daddr = c("skc_daddr", 4)?;
    config.skc_v6_rcv_saddr = c("skc_v6_rcv_saddr", 16)?;
    config.skc_v6_daddr = c("skc_v6_daddr", 16)?;
    config.sk_protocol = sized(btf, "sock", "sk_protocol", 2)?;
    config.flags |= CONFIG_SOCK_TUPLE;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\nID: 2287\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\nprint fmt: \"family=%s\"\n";

    /// The running kernel (BTF and tracefs are there on every kernel netray
    /// supports): every offset is found, and the fields that are never first
    /// in their struct are not at 0.
    #[test]
    fn offsets_of_the_running_kernel() {
        let btf = Btf::from_sys_fs().unwrap();
        let mut config = ConnsConfig::default();
        counter_offsets(&btf, &mut config).unwrap();
        accept_offsets(&btf, &mut config).unwrap();
        sock_tuple_offsets(&btf, &mut config).unwrap();
        assert_eq!(
            config.flags,
            CONFIG_COUNTERS | CONFIG_ACCEPT | CONFIG_SOCK_TUPLE
        );
        for offset in [
            config.bytes_acked,
            config.bytes_received,
            config.srtt_us,
            config.total_retrans,
            config.snd_una,
            config.write_seq,
            config.task_files,
            config.fdt_fd,
            config.file_private_data,
            config.socket_sk,
            config.inet_sport,
            config.skc_v6_daddr,
            config.sk_protocol,
        ] {
            assert_ne!(offset, 0);
        }
        assert!(config.sock_done_bit < 64);
    }

    #[test]
    fn parses_format_fields() {
        let fields = parse_format(FORMAT);
        assert_eq!(fields.len(), 4);
        assert_eq!(offset_of(&fields, "e", "skaddr", 8).unwrap(), 8);
        assert_eq!(offset_of(&fields, "e", "oldstate", 4).unwrap(), 16);
        assert_eq!(offset_of(&fields, "e", "saddr_v6", 16).unwrap(), 40);
        assert!(offset_of(&fields, "e", "oldstate", 8).is_err());
        assert!(offset_of(&fields, "e", "newstate", 4).is_err());
        assert_eq!(record_offset(&fields, "e", "saddr_v6", 16).unwrap(), 40);
        let far = vec![FormatField {
            name: "x".into(),
            offset: TP_RECORD_MAX - 2,
            size: 4,
        }];
        assert!(record_offset(&far, "e", "x", 4).is_err());
    }
}

//! Verifier rejections, told in one short paragraph.
//!
//! When the kernel refuses a program, aya's `ProgramError::LoadError`
//! carries the verifier's whole log, and its `Display` prints all of it:
//! hundreds of kilobytes for netray's larger programs. Everything netray
//! prints about a load error goes through [`render_error`] (the top-level
//! error printer of `netray`) or [`describe_load_error`] (`netray check`),
//! which keep: the program, the kernel's errno, the verifier's last
//! meaningful lines before its `processed N insns` statistics, and where
//! the full log is: written to a file in the temporary directory whose path
//! is printed, or, with `NETRAY_VERIFIER_LOG=stderr`, printed whole.
//!
//! A program that calls a helper the running kernel does not have can never
//! load there; that case is said in one line naming the helper
//! ([`missing_helper`]).

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::ProgramError;

/// Environment variable: `stderr` (or `1`, `full`) prints the whole
/// verifier log along with the summary instead of only writing it to a file.
pub const FULL_LOG_ENV: &str = "NETRAY_VERIFIER_LOG";

/// How many of the verifier's last meaningful lines a summary keeps.
pub const SUMMARY_LINES: usize = 8;

/// Longest line a summary keeps whole (register-state dumps run to
/// hundreds of characters); longer ones are cut.
const MAX_LINE: usize = 200;

/// What the kernel's verifier said about a rejected program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Instructions the verifier processed, from its statistics line.
    pub processed_insns: Option<u64>,
    /// The last meaningful lines before the statistics, in order.
    pub last_lines: Vec<String>,
    /// A helper this kernel does not have, if that is why it refused.
    pub missing_helper: Option<String>,
    /// Lines in the whole log.
    pub total_lines: usize,
}

/// Summarizes a verifier log: see [`Summary`].
pub fn summarize(log: &str) -> Summary {
    let lines: Vec<&str> = log.lines().collect();
    // The error is printed right before the statistics line; the last one
    // counts (the log of a retry may hold several passes).
    let stats = lines
        .iter()
        .rposition(|line| processed_count(line).is_some());
    let before = &lines[..stats.unwrap_or(lines.len())];
    // A line repeated back to back (the same warning on every state) is
    // kept once, with its count.
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for line in before.iter().rev().map(|line| line.trim()) {
        if !is_meaningful(line) {
            continue;
        }
        if let Some((last, count)) = runs.last_mut()
            && *last == line
        {
            *count += 1;
        } else if runs.len() == SUMMARY_LINES {
            break;
        } else {
            runs.push((line, 1));
        }
    }
    let mut last_lines: Vec<String> = runs
        .into_iter()
        .map(|(line, count)| match count {
            1 => shorten(line),
            n => format!("{} (×{n})", shorten(line)),
        })
        .collect();
    last_lines.reverse();
    Summary {
        processed_insns: stats.and_then(|i| processed_count(lines[i])),
        last_lines,
        missing_helper: missing_helper(log),
        total_lines: lines.len(),
    }
}

/// `N` from the verifier's `processed N insns (limit ...) ...` line.
pub fn processed_insns(log: &str) -> Option<u64> {
    log.lines().rev().find_map(processed_count)
}

fn processed_count(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("processed ")?;
    let (count, rest) = rest.split_once(' ')?;
    rest.starts_with("insns").then(|| count.parse().ok())?
}

fn is_meaningful(line: &str) -> bool {
    !line.is_empty()
        && !line.starts_with("verification time")
        && !line.starts_with("stack depth")
        && !line.starts_with("-- BEGIN PROG LOAD LOG --")
        && !line.starts_with("-- END PROG LOAD LOG --")
}

fn shorten(line: &str) -> String {
    if line.chars().count() <= MAX_LINE {
        return line.to_string();
    }
    let mut out: String = line.chars().take(MAX_LINE).collect();
    out.push('…');
    out
}

/// The helper a rejected program called that this kernel does not provide,
/// as `bpf_NAME (#ID)`. Kernels say `invalid func unknown#ID` for ids past
/// their last helper (they do not know the name) and `unknown func
/// bpf_NAME#ID` for ids they know but do not implement.
pub fn missing_helper(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let line = line.trim();
        let call = line
            .strip_prefix("invalid func ")
            .or_else(|| line.strip_prefix("unknown func "))?;
        let (name, id) = call.rsplit_once('#')?;
        let id: usize = id.trim().parse().ok()?;
        let name = match helper_name(id) {
            Some(known) => format!("bpf_{known}"),
            None if name != "unknown" => name.to_string(),
            None => "a helper this netray does not know".to_string(),
        };
        Some(format!("{name} (#{id})"))
    })
}

/// The name of BPF helper `id` (without `bpf_`), from the kernel's UAPI
/// list of `enum bpf_func_id` (as aya-obj 0.3's bindings have it).
pub fn helper_name(id: usize) -> Option<&'static str> {
    HELPER_NAMES.split_whitespace().nth(id).filter(|_| id > 0)
}

/// The symbolic name of an errno the verifier returns.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::E2BIG => "E2BIG",
        libc::ENOSPC => "ENOSPC",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EMFILE => "EMFILE",
        libc::ENOENT => "ENOENT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        524 => "ENOTSUPP",
        _ => return None,
    })
}

/// Where the full log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullLog {
    /// Written to a file in the temporary directory, its path printed.
    File,
    /// Printed whole after the summary (`NETRAY_VERIFIER_LOG=stderr`).
    Inline,
}

impl FullLog {
    /// What [`FULL_LOG_ENV`] asks for.
    pub fn from_env() -> Self {
        match std::env::var(FULL_LOG_ENV).ok().as_deref() {
            Some("stderr" | "1" | "full" | "inline") => Self::Inline,
            _ => Self::File,
        }
    }
}

/// The paragraph for a rejected load: `errno` and `log` as the kernel gave
/// them. Writes the full log to a file (or appends it, see [`FullLog`]).
pub fn paragraph(errno: &io::Error, log: &str, full: FullLog) -> String {
    let summary = summarize(log);
    let code = errno
        .raw_os_error()
        .and_then(errno_name)
        .map(|name| format!("{name}: "))
        .unwrap_or_default();
    let mut out = String::new();
    if let Some(helper) = &summary.missing_helper {
        let _ = write!(
            out,
            "this kernel ({}) has no BPF helper {helper}, which the program calls; it cannot \
             load here ({code}{errno})",
            kernel_release()
        );
        return out;
    }
    if log.trim().is_empty() {
        // Refused before the verifier ran (lockdown, a missing attach
        // target, bad attributes...): there is nothing to summarize.
        let _ = write!(
            out,
            "the kernel refused to load the program ({code}{errno}) without a verifier log"
        );
        return out;
    }
    let _ = write!(
        out,
        "the kernel's verifier rejected the program ({code}{errno})"
    );
    if let Some(n) = summary.processed_insns {
        let _ = write!(out, " after {n} instructions");
    }
    out.push_str(", last lines of its log:");
    for line in &summary.last_lines {
        let _ = write!(out, "\n    {line}");
    }
    match full {
        FullLog::Inline => {
            let _ = write!(
                out,
                "\n--- full verifier log ---\n{}\n--- end of log ---",
                log.trim_end()
            );
        }
        FullLog::File => match save_log(log) {
            Ok(path) => {
                let _ = write!(
                    out,
                    "\n  full log ({} lines): {} (or set {FULL_LOG_ENV}=stderr to print it)",
                    summary.total_lines,
                    path.display()
                );
            }
            Err(e) => {
                let _ = write!(
                    out,
                    "\n  full log: could not be saved ({e}); set {FULL_LOG_ENV}=stderr to print it"
                );
            }
        },
    }
    out
}

/// Writes `log` to a new file `netray-verifier-PID-N.log` in the temporary
/// directory: created exclusively (never through a planted symlink), mode
/// 0600.
fn save_log(log: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir();
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("netray-verifier-{}-{n}.log", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(log.as_bytes())?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free file name",
    ))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "Linux".to_string())
}

/// `error` as one line per cause (joined by `: `, like anyhow's `{:#}`),
/// with any verifier log reduced to its [`paragraph`].
pub fn render_error(error: &anyhow::Error) -> String {
    render_chain(error.chain(), FullLog::from_env())
}

/// [`render_error`] for a single error that may be a load error, with the
/// step that failed in front (`netray check`'s details).
pub fn describe_load_error(step: &str, error: impl Into<anyhow::Error>) -> String {
    let error = error.into();
    format!("{step}: {}", render_chain(error.chain(), FullLog::File))
}

fn render_chain<'a>(
    chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
    full: FullLog,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in chain {
        if let Some(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = cause.downcast_ref::<ProgramError>()
        {
            // Its source is `io_error`, which the paragraph names.
            parts.push(paragraph(io_error, &verifier_log.to_string(), full));
            break;
        }
        let text = summarize_embedded(&cause.to_string(), full);
        // Wrappers that print their source (`{0}`) would repeat it.
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Marker of aya's `LoadError` text.
const LOAD_ERROR_PREFIX: &str = "the BPF_PROG_LOAD syscall returned ";
const LOG_MARKER: &str = ". Verifier output: ";

/// Replaces every verifier log found in `text` (a `LoadError` that was
/// turned into a string before it reached us) by its paragraph. The log
/// runs up to the end of its statistics line, or to the end of the text.
pub fn summarize_embedded(text: &str, full: FullLog) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(LOAD_ERROR_PREFIX) {
        let after = &rest[start + LOAD_ERROR_PREFIX.len()..];
        let Some(marker) = after.find(LOG_MARKER) else {
            break;
        };
        let errno_text = &after[..marker];
        let log_and_more = &after[marker + LOG_MARKER.len()..];
        let end = log_end(log_and_more);
        let log = &log_and_more[..end];
        let errno =
            parse_os_error(errno_text).unwrap_or_else(|| io::Error::other(errno_text.to_string()));
        out.push_str(&rest[..start]);
        out.push_str(&paragraph(&errno, log, full));
        rest = &log_and_more[end..];
    }
    out.push_str(rest);
    out
}

/// Byte offset where the log at the start of `text` ends: after its last
/// statistics lines (`processed ...`, then `verification time`/`stack
/// depth` when the stats level is on), else the whole text.
fn log_end(text: &str) -> usize {
    let mut offset = 0;
    let mut end = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        offset += line.len();
        if processed_count(trimmed).is_some() {
            end = Some(offset);
        } else if end.is_some() {
            if trimmed.starts_with("verification time") || trimmed.starts_with("stack depth") {
                end = Some(offset);
            } else {
                break;
            }
        }
    }
    // Keep a separator that followed the log on the outside.
    let end = end.unwrap_or(text.len());
    end - usize::from(end > 0 && end < text.len() && text.as_bytes()[end - 1] == b'\n')
}

/// `io::Error`'s Display form `... (os error N)` back to an error.
fn parse_os_error(text: &str) -> Option<io::Error> {
    let n = text.rsplit_once("(os error ")?.1.strip_suffix(')')?;
    Some(io::Error::from_raw_os_error(n.parse().ok()?))
}

/// The names of the kernel's BPF helpers, indexed by helper id.
const HELPER_NAMES: &str = "\
    unspec map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns \
    trace_printk get_prandom_u32 get_smp_processor_id skb_store_bytes l3_csum_replace \
    l4_csum_replace tail_call clone_redirect get_current_pid_tgid get_current_uid_gid \
    get_current_comm get_cgroup_classid skb_vlan_push skb_vlan_pop skb_get_tunnel_key \
    skb_set_tunnel_key perf_event_read redirect get_route_realm perf_event_output \
    skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt skb_set_tunnel_opt \
    skb_change_proto skb_change_type skb_under_cgroup get_hash_recalc get_current_task \
    probe_write_user current_task_under_cgroup skb_change_tail skb_pull_data csum_update \
    set_hash_invalid get_numa_node_id skb_change_head xdp_adjust_head probe_read_str \
    get_socket_cookie get_socket_uid set_hash setsockopt skb_adjust_room redirect_map \
    sk_redirect_map sock_map_update xdp_adjust_meta perf_event_read_value \
    perf_prog_read_value getsockopt override_return sock_ops_cb_flags_set msg_redirect_map \
    msg_apply_bytes msg_cork_bytes msg_pull_data bind xdp_adjust_tail skb_get_xfrm_state \
    get_stack skb_load_bytes_relative fib_lookup sock_hash_update msg_redirect_hash \
    sk_redirect_hash lwt_push_encap lwt_seg6_store_bytes lwt_seg6_adjust_srh lwt_seg6_action \
    rc_repeat rc_keydown skb_cgroup_id get_current_cgroup_id get_local_storage \
    sk_select_reuseport skb_ancestor_cgroup_id sk_lookup_tcp sk_lookup_udp sk_release \
    map_push_elem map_pop_elem map_peek_elem msg_push_data msg_pop_data rc_pointer_rel \
    spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock \
    skc_lookup_tcp tcp_check_syncookie sysctl_get_name sysctl_get_current_value \
    sysctl_get_new_value sysctl_set_new_value strtol strtoul sk_storage_get sk_storage_delete \
    send_signal tcp_gen_syncookie skb_output probe_read_user probe_read_kernel \
    probe_read_user_str probe_read_kernel_str tcp_send_ack send_signal_thread jiffies64 \
    read_branch_records get_ns_current_pid_tgid xdp_output get_netns_cookie \
    get_current_ancestor_cgroup_id sk_assign ktime_get_boot_ns seq_printf seq_write \
    sk_cgroup_id sk_ancestor_cgroup_id ringbuf_output ringbuf_reserve ringbuf_submit \
    ringbuf_discard ringbuf_query csum_level skc_to_tcp6_sock skc_to_tcp_sock \
    skc_to_tcp_timewait_sock skc_to_tcp_request_sock skc_to_udp6_sock get_task_stack \
    load_hdr_opt store_hdr_opt reserve_hdr_opt inode_storage_get inode_storage_delete d_path \
    copy_from_user snprintf_btf seq_printf_btf skb_cgroup_classid redirect_neigh per_cpu_ptr \
    this_cpu_ptr redirect_peer task_storage_get task_storage_delete get_current_task_btf \
    bprm_opts_set ktime_get_coarse_ns ima_inode_hash sock_from_file check_mtu \
    for_each_map_elem snprintf sys_bpf btf_find_by_name_kind sys_close timer_init \
    timer_set_callback timer_start timer_cancel get_func_ip get_attach_cookie task_pt_regs \
    get_branch_snapshot trace_vprintk skc_to_unix_sock kallsyms_lookup_name find_vma loop \
    strncmp get_func_arg get_func_ret get_func_arg_cnt get_retval set_retval xdp_get_buff_len \
    xdp_load_bytes xdp_store_bytes copy_from_user_task skb_set_tstamp ima_file_hash kptr_xchg \
    map_lookup_percpu_elem skc_to_mptcp_sock dynptr_from_mem ringbuf_reserve_dynptr \
    ringbuf_submit_dynptr ringbuf_discard_dynptr dynptr_read dynptr_write dynptr_data \
    tcp_raw_gen_syncookie_ipv4 tcp_raw_gen_syncookie_ipv6 tcp_raw_check_syncookie_ipv4 \
    tcp_raw_check_syncookie_ipv6 ktime_get_tai_ns user_ringbuf_drain cgrp_storage_get \
    cgrp_storage_delete \
";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a real rejection (kernel 6.x, log level 1 | stats):
    /// a long walk through the program, the error, then the statistics.
    fn rejection_log(walk_lines: usize) -> String {
        let mut log = String::from("func#0 @0\n0: R1=ctx() R10=fp0\n");
        for i in 0..walk_lines {
            log.push_str(&format!(
                "{i}: (bf) r{} = r{}                      ; R1=ctx() R2=pkt(r=14) R3=pkt_end() \
                 R10=fp0 fp-8=mmmmmmmm\n",
                i % 9,
                (i + 1) % 9
            ));
        }
        log.push_str(
            "; let b = *(data + 64) @ testing.rs:66\n\
             412: (71) r2 = *(u8 *)(r1 +64)\n\
             invalid access to packet, off=64 size=1, R1(id=0,off=64,r=16)\n\
             R1 offset is outside of the packet\n\
             processed 4123 insns (limit 1000000) max_states_per_insn 4 total_states 310 \
             peak_states 310 mark_read 12\n\
             verification time 1532 usec\n\
             stack depth 24\n",
        );
        log
    }

    #[test]
    fn summary_keeps_the_last_lines_before_the_statistics() {
        let log = rejection_log(5000);
        assert!(log.len() > 300_000, "a log of the size seen on 6.1");
        let summary = summarize(&log);
        assert_eq!(summary.processed_insns, Some(4123));
        assert_eq!(summary.last_lines.len(), SUMMARY_LINES);
        assert_eq!(
            summary.last_lines.last().unwrap(),
            "R1 offset is outside of the packet"
        );
        assert!(
            summary
                .last_lines
                .contains(&"412: (71) r2 = *(u8 *)(r1 +64)".to_string())
        );
        assert!(
            summary
                .last_lines
                .iter()
                .all(|l| l.chars().count() <= MAX_LINE + 1)
        );
        assert_eq!(summary.missing_helper, None);
        assert_eq!(summary.total_lines, log.lines().count());
    }

    #[test]
    fn repeated_lines_are_kept_once_with_their_count() {
        let log = "0: (b7) r1 = 37\nREG INVARIANTS VIOLATION (alu): const tnum out of sync\n\
                   REG INVARIANTS VIOLATION (alu): const tnum out of sync\n\
                   REG INVARIANTS VIOLATION (alu): const tnum out of sync\n\
                   The sequence of 8193 jumps is too complex.\n\
                   processed 32354 insns (limit 1000000) max_states_per_insn 4\n";
        assert_eq!(
            summarize(log).last_lines,
            [
                "0: (b7) r1 = 37",
                "REG INVARIANTS VIOLATION (alu): const tnum out of sync (×3)",
                "The sequence of 8193 jumps is too complex."
            ]
        );
    }

    #[test]
    fn paragraph_is_short_and_says_where_the_full_log_is() {
        let log = rejection_log(5000);
        let errno = io::Error::from_raw_os_error(libc::EACCES);
        let text = paragraph(&errno, &log, FullLog::File);
        assert!(text.len() < 2000, "{} bytes", text.len());
        assert!(text.starts_with(
            "the kernel's verifier rejected the program (EACCES: Permission denied (os error \
             13)) after 4123 instructions"
        ));
        assert!(text.contains("R1 offset is outside of the packet"));
        let path = text
            .split_whitespace()
            .find(|w| w.ends_with(".log"))
            .expect("a file name");
        assert_eq!(std::fs::read_to_string(path).unwrap(), log);
        std::fs::remove_file(path).unwrap();
        assert!(text.contains("NETRAY_VERIFIER_LOG=stderr"));

        let inline = paragraph(&errno, &log, FullLog::Inline);
        assert!(inline.contains(log.trim_end()), "printed whole on request");
    }

    #[test]
    fn a_missing_helper_is_named_in_one_line() {
        // 5.10 does not know helper 189 by name.
        let log = "0: R1=ctx(id=0,off=0,imm=0) R10=fp0\n\
                   0: (85) call unknown#189\n\
                   invalid func unknown#189\n\
                   processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 \
                   peak_states 0 mark_read 0\n";
        assert_eq!(
            missing_helper(log).as_deref(),
            Some("bpf_xdp_load_bytes (#189)")
        );
        let text = paragraph(
            &io::Error::from_raw_os_error(libc::EINVAL),
            log,
            FullLog::File,
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("has no BPF helper bpf_xdp_load_bytes (#189)"),
            "{text}"
        );
        assert!(text.contains("EINVAL"), "{text}");
        // Newer kernels name it.
        assert_eq!(
            missing_helper("unknown func bpf_loop#181\n").as_deref(),
            Some("bpf_loop (#181)")
        );
        assert_eq!(helper_name(1), Some("map_lookup_elem"));
        assert_eq!(helper_name(130), Some("ringbuf_output"));
        assert_eq!(helper_name(181), Some("loop"));
        assert_eq!(helper_name(0), None);
        assert_eq!(helper_name(100_000), None);
    }

    #[test]
    fn a_log_already_turned_into_text_is_summarized_too() {
        // What `format!("{e:#}")` of aya's LoadError gives, inside a
        // message of its own (conns joins its hook failures with "; ").
        let log = rejection_log(3000);
        let text = format!(
            "no hook works (tracepoint: loading conns_state: the BPF_PROG_LOAD syscall \
             returned Permission denied (os error 13). Verifier output: {log}; tp_btf: kernel \
             BTF missing); see `netray check`"
        );
        let out = summarize_embedded(&text, FullLog::File);
        assert!(out.len() < 2500, "{} bytes: {out}", out.len());
        assert!(out.starts_with("no hook works (tracepoint: loading conns_state: the kernel's verifier rejected the program (EACCES"));
        assert!(
            out.ends_with("; tp_btf: kernel BTF missing); see `netray check`"),
            "{out}"
        );
        let path = out
            .split_whitespace()
            .find(|w| w.ends_with(".log"))
            .expect("a file name");
        assert_eq!(
            std::fs::read_to_string(path).unwrap().trim_end(),
            log.trim_end()
        );
        std::fs::remove_file(path).unwrap();
        // Text without a log is left alone.
        assert_eq!(
            summarize_embedded("plain error", FullLog::File),
            "plain error"
        );
    }

    #[test]
    fn a_refusal_without_log_says_so() {
        let text = paragraph(
            &io::Error::from_raw_os_error(libc::EPERM),
            "",
            FullLog::File,
        );
        assert_eq!(
            text,
            "the kernel refused to load the program (EPERM: Operation not permitted (os error \
             1)) without a verifier log"
        );
    }

    #[test]
    fn other_errors_print_as_anyhow_does() {
        // (A real LoadError in the chain: tests/verifier_budget.rs, which
        // makes the kernel reject a fixture; aya-obj's VerifierLog cannot
        // be built here.)
        let plain = anyhow::anyhow!("no such device").context("attaching XDP to eth9");
        assert_eq!(render_error(&plain), format!("{plain:#}"));
    }
}

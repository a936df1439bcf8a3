//! Filters and output formats (text lines, JSON lines) of `netray conns`.

use serde_json::{Value, json};

use super::events::{ConnRecord, EventKind};

/// Which connections to report (all given conditions must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only connections of this process id (unknown owners never match).
    pub pid: Option<u32>,
    /// Only connections of processes with exactly this command name.
    pub comm: Option<String>,
    /// Only connections with this local or remote port.
    pub port: Option<u16>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &ConnRecord) -> bool {
        if let Some(pid) = self.pid
            && record.process.as_ref().is_none_or(|p| p.pid != pid)
        {
            return false;
        }
        if let Some(comm) = &self.comm
            && record.process.as_ref().is_none_or(|p| &p.comm != comm)
        {
            return false;
        }
        if let Some(port) = self.port
            && record.local.port() != port
            && record.remote.port() != port
        {
            return false;
        }
        true
    }
}

/// `2026-11-22T06:40:01.123456Z` for a Unix time in ns.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One JSON object (a line of `--json`).
pub fn to_json(r: &ConnRecord) -> Value {
    let mut v = json!({
        "event": r.kind.name(),
        "ts": rfc3339(r.ts_unix_ns),
        "pid": r.process.as_ref().map(|p| p.pid),
        "tid": r.process.as_ref().map(|p| p.tid),
        "comm": r.process.as_ref().map(|p| p.comm.clone()),
        "role": r.role.name(),
        "family": r.family(),
        "saddr": r.local.ip().to_string(),
        "sport": r.local.port(),
        "daddr": r.remote.ip().to_string(),
        "dport": r.remote.port(),
        "host": r.host,
    });
    if let (Some(t), Some(obj)) = (&r.totals, v.as_object_mut()) {
        obj.insert("bytes_sent".into(), t.bytes_sent.into());
        obj.insert("bytes_received".into(), t.bytes_received.into());
        obj.insert(
            "duration_ms".into(),
            t.duration
                .map_or(Value::Null, |d| json!(d.as_micros() as f64 / 1000.0)),
        );
        obj.insert("srtt_us".into(), t.srtt_us.into());
        obj.insert("retransmits".into(), t.retransmits.into());
        if let Some(state) = t.state {
            obj.insert("state".into(), state.into());
        }
        if t.approximate {
            obj.insert("approximate".into(), true.into());
        }
    }
    v
}

fn json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

/// Appends the `--json` line of `r` to `out` (the same object as
/// [`to_json`], written without building a `Value`: this is the hot path).
pub fn write_json(r: &ConnRecord, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{{\"event\":\"{}\",\"ts\":\"{}\"",
        r.kind.name(),
        rfc3339(r.ts_unix_ns)
    );
    match &r.process {
        Some(p) => {
            let _ = write!(out, ",\"pid\":{},\"tid\":{},\"comm\":", p.pid, p.tid);
            json_str(out, &p.comm);
        }
        None => out.push_str(",\"pid\":null,\"tid\":null,\"comm\":null"),
    }
    let _ = write!(
        out,
        ",\"role\":\"{}\",\"family\":\"{}\",\"saddr\":\"{}\",\"sport\":{},\"daddr\":\"{}\",\"dport\":{},\"host\":",
        r.role.name(),
        r.family(),
        r.local.ip(),
        r.local.port(),
        r.remote.ip(),
        r.remote.port()
    );
    match &r.host {
        Some(host) => json_str(out, host),
        None => out.push_str("null"),
    }
    if let Some(t) = &r.totals {
        let _ = write!(
            out,
            ",\"bytes_sent\":{},\"bytes_received\":{},\"duration_ms\":",
            t.bytes_sent, t.bytes_received
        );
        match t
            .duration
            .and_then(|d| serde_json::Number::from_f64(d.as_micros() as f64 / 1000.0))
        {
            Some(ms) => {
                let _ = write!(out, "{ms}");
            }
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"srtt_us\":{},\"retransmits\":{}",
            t.srtt_us, t.retransmits
        );
        if let Some(state) = t.state {
            let _ = write!(out, ",\"state\":\"{state}\"");
        }
        if t.approximate {
            out.push_str(",\"approximate\":true");
        }
    }
    out.push('}');
}

fn fmt_duration_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.3}s", ms / 1000.0)
    } else {
        format!("{ms:.3}ms")
    }
}

/// One text line.
pub fn to_text(r: &ConnRecord) -> String {
    let time = rfc3339(r.ts_unix_ns);
    let time = time.get(11..23).unwrap_or(&time);
    let who = match &r.process {
        Some(p) => format!("pid={} comm={}", p.pid, p.comm),
        None => "pid=? comm=?".to_string(),
    };
    let arrow = if r.role == super::events::Role::Accept {
        "<-"
    } else {
        "->"
    };
    let mut line = format!(
        "{time} {:<7} {who} {} {arrow} {}",
        r.kind.name().to_uppercase(),
        r.local,
        r.remote
    );
    if let Some(host) = &r.host {
        line.push_str(&format!(" host={host}"));
    }
    if let Some(t) = &r.totals {
        line.push_str(&format!(
            " sent={} received={} duration={} rtt={} retrans={}",
            t.bytes_sent,
            t.bytes_received,
            t.duration.map_or("?".to_string(), |d| fmt_duration_ms(
                d.as_secs_f64() * 1000.0
            )),
            fmt_duration_ms(f64::from(t.srtt_us) / 1000.0),
            t.retransmits,
        ));
        if let Some(state) = t.state {
            // Close: the state it closed from; stats: the state it is in.
            let label = if r.kind == EventKind::Stats {
                "state"
            } else {
                "from"
            };
            line.push_str(&format!(" {label}={state}"));
        }
        if t.approximate {
            line.push_str(" (predates netray: counts approximate)");
        }
    }
    if r.kind != EventKind::Stats && r.process.is_none() {
        line.push_str(" [process unknown]");
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conns::events::{Process, Role, Totals};

    fn record() -> ConnRecord {
        ConnRecord {
            kind: EventKind::Close,
            ts_unix_ns: 1_763_793_601_123_456_789,
            process: Some(Process {
                pid: 42,
                tid: 43,
                comm: "curl".into(),
            }),
            role: Role::Connect,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:443".parse().unwrap(),
            host: Some("example.com".into()),
            totals: Some(Totals {
                bytes_sent: 10,
                bytes_received: 20,
                duration: Some(Duration::from_millis(1500)),
                srtt_us: 250,
                retransmits: 1,
                state: Some("FIN_WAIT2"),
                approximate: false,
            }),
            cookie: 1,
            start_ns: 1,
            baseline: Some((1, 0)),
        }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_763_793_601_123_456_789),
            "2025-11-22T06:40:01.123456Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v = to_json(&record());
        for key in [
            "event",
            "ts",
            "pid",
            "comm",
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "host",
            "bytes_sent",
            "bytes_received",
            "duration_ms",
            "srtt_us",
            "retransmits",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["event"], "close");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["duration_ms"], 1500.0);
        assert_eq!(v["host"], "example.com");
        let mut r = record();
        r.process = None;
        r.totals = None;
        r.host = None;
        let v = to_json(&r);
        assert!(v["pid"].is_null() && v["comm"].is_null() && v["host"].is_null());
        assert!(v.get("bytes_sent").is_none());
    }

    #[test]
    fn fast_json_writer_matches_the_value() {
        let mut variants = vec![record()];
        let mut r = record();
        r.process = None;
        r.host = Some("quote\"and\\back".into());
        variants.push(r.clone());
        r.totals = None;
        variants.push(r.clone());
        let mut r = record();
        if let Some(t) = r.totals.as_mut() {
            t.duration = None;
            t.approximate = true;
            t.state = None;
        }
        r.remote = "[fd00::2]:443".parse().unwrap();
        r.local = "[fd00::1]:5000".parse().unwrap();
        variants.push(r);
        for r in variants {
            let mut line = String::new();
            write_json(&r, &mut line);
            let parsed: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed, to_json(&r), "{line}");
        }
    }

    #[test]
    fn text_line() {
        assert_eq!(
            to_text(&record()),
            "06:40:01.123 CLOSE   pid=42 comm=curl 10.0.0.1:40000 -> 10.0.0.2:443 \
             host=example.com sent=10 received=20 duration=1.500s rtt=0.250ms retrans=1 \
             from=FIN_WAIT2"
        );
        let mut r = record();
        r.process = None;
        r.totals = None;
        r.host = None;
        r.kind = EventKind::Connect;
        assert!(to_text(&r).ends_with("[process unknown]"));
    }

    #[test]
    fn filters() {
        let r = record();
        assert!(Filter::default().matches(&r));
        let f = |pid, comm: Option<&str>, port| Filter {
            pid,
            comm: comm.map(str::to_string),
            port,
        };
        assert!(f(Some(42), None, None).matches(&r));
        assert!(!f(Some(7), None, None).matches(&r));
        assert!(f(None, Some("curl"), Some(443)).matches(&r));
        assert!(f(None, None, Some(40000)).matches(&r));
        assert!(!f(None, Some("cur"), None).matches(&r));
        assert!(!f(None, None, Some(80)).matches(&r));
        let mut unknown = r.clone();
        unknown.process = None;
        assert!(!f(Some(42), None, None).matches(&unknown));
        assert!(!f(None, Some("curl"), None).matches(&unknown));
    }
}

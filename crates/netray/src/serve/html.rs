//! The browser page: self-contained (inline CSS and JS, nothing external), it
//! follows `/trace` with an `EventSource` and renders a live hop table.

/// The page. Remote data (hostnames) is only ever set with `textContent`.
pub(crate) const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netray: the path to you</title>
<style>
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fbfbfc; --mute: #6a737d; --line: #d8dde3; --accent: #0969da; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --mute: #8b949e; --line: #30363d; --accent: #58a6ff; --ok: #3fb950; --warn: #d29922; --bad: #f85149; } }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
p.sub { color: var(--mute); margin: 0 0 1.25rem; }
#status { margin: .75rem 0; font-weight: 600; }
#status.running::before { content: ""; display: inline-block; width: .6rem; height: .6rem; margin-right: .5rem; border-radius: 50%; background: var(--accent); animation: pulse 1s infinite alternate; }
@keyframes pulse { from { opacity: .25; } to { opacity: 1; } }
#status.ok { color: var(--ok); } #status.warn { color: var(--warn); } #status.bad { color: var(--bad); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--mute); font-weight: 600; font-size: .85rem; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; }
td.addr { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
td.host { max-width: 24rem; overflow: hidden; text-overflow: ellipsis; }
tr.silent td { color: var(--mute); }
tr.dest td { font-weight: 600; }
.badge { display: inline-block; font-size: .75rem; padding: .05rem .4rem; border-radius: .6rem; margin-right: .25rem; border: 1px solid currentColor; }
.badge.nat { color: var(--warn); } .badge.cached { color: var(--muted, #888); } .badge.dest { color: var(--ok); }
footer { margin-top: 1.5rem; color: var(--mute); font-size: .85rem; }
a { color: var(--accent); }
</style>
</head>
<body>
<h1>The network path from this server to you</h1>
<p class="sub">Traced in-band: the probes travel inside your own connection to this page, so they take the same path your traffic takes.</p>
<div id="status" class="running">Tracing&hellip;</div>
<table>
<thead><tr><th class="num">TTL</th><th>Address</th><th>Hostname</th><th class="num">Loss</th><th class="num">Sent / Recv</th><th class="num">Best</th><th class="num">Avg</th><th class="num">Worst</th><th>Notes</th></tr></thead>
<tbody id="hops"></tbody>
</table>
<footer>Machine-readable: <a href="/trace.json">/trace.json</a> &middot; live events: <a href="/trace">/trace</a> &middot; <code>curl</code> this URL for a text table.</footer>
<noscript><p>This page needs JavaScript; <a href="/trace.json">/trace.json</a> has the result without it.</p></noscript>
<script>
"use strict";
(function () {
  const tbody = document.getElementById("hops");
  const status = document.getElementById("status");
  const rows = new Map();
  function setStatus(text, cls) { status.textContent = text; status.className = cls; }
  function ms(v) { return v.toFixed(v < 10 ? 2 : 1) + " ms"; }
  function cell(tr, i) { return tr.children[i]; }
  function render(h) {
    let tr = rows.get(h.ttl);
    if (!tr) {
      tr = document.createElement("tr");
      const cls = ["num", "addr", "host", "num", "num", "num", "num", "num", ""];
      for (const c of cls) { const td = document.createElement("td"); if (c) td.className = c; tr.appendChild(td); }
      tr.dataset.ttl = String(h.ttl);
      let before = null;
      for (const row of tbody.children) { if (Number(row.dataset.ttl) > h.ttl) { before = row; break; } }
      tbody.insertBefore(tr, before);
      rows.set(h.ttl, tr);
    }
    const rtts = (h.rtt_ms || []).filter(Number.isFinite);
    cell(tr, 0).textContent = String(h.ttl);
    cell(tr, 1).textContent = h.addr || "*";
    cell(tr, 2).textContent = h.hostname || "";
    cell(tr, 2).title = h.hostname || "";
    cell(tr, 3).textContent = h.rate_limited ? "rate-limited" : h.sent ? (100 * Math.max(0, h.sent - h.received) / h.sent).toFixed(0) + "%" : "";
    cell(tr, 4).textContent = h.sent + " / " + h.received;
    cell(tr, 5).textContent = rtts.length ? ms(Math.min(...rtts)) : "";
    cell(tr, 6).textContent = rtts.length ? ms(rtts.reduce((a, b) => a + b, 0) / rtts.length) : "";
    cell(tr, 7).textContent = rtts.length ? ms(Math.max(...rtts)) : "";
    const notes = cell(tr, 8);
    notes.replaceChildren();
    function badge(text, cls, title) { const b = document.createElement("span"); b.className = "badge " + cls; b.textContent = text; b.title = title; notes.appendChild(b); }
    if (h.cached) badge("cached", "cached", "no reply to this trace's probe: the router other visitors' traces saw here");
    if (h.rate_limited) badge("rate-limited", "cached", "fewer replies than probes, but later hops answered: the router limits its ICMP errors, this is not loss on the path");
    if (h.nat) badge("NAT", "nat", "answered with your address before reaching you: a NAT in front of you");
    if (h.destination) badge("you", "dest", "this hop reached your connection");
    tr.className = (h.addr ? "" : "silent") + (h.destination ? " dest" : "");
  }
  if (!window.EventSource) { setStatus("This browser lacks EventSource; see /trace.json.", "bad"); return; }
  const es = new EventSource("/trace");
  let finished = false;
  es.addEventListener("hop", function (e) { try { render(JSON.parse(e.data)); } catch (err) { /* skip a bad event */ } });
  es.addEventListener("done", function (e) {
    finished = true;
    es.close();
    let r;
    try { r = JSON.parse(e.data); } catch (err) { setStatus("Bad result from server.", "bad"); return; }
    for (const h of r.hops) render(h);
    const n = r.hops.length;
    const text = (r.destination_reached ? "Reached you in " + n + " hop" + (n === 1 ? "" : "s") : "Did not reach you within " + n + " hops")
      + " \u00b7 " + r.elapsed_ms.toFixed(0) + " ms \u00b7 " + r.server + " \u2192 " + r.client + " (" + r.family + ")";
    setStatus(text, r.destination_reached ? "ok" : "warn");
  });
  es.addEventListener("error", function (e) {
    if (e.data) {
      finished = true;
      es.close();
      let msg = e.data;
      try { msg = JSON.parse(e.data).error || msg; } catch (err) { /* plain text */ }
      setStatus("Trace failed: " + msg, "bad");
    } else if (!finished && es.readyState === EventSource.CLOSED) {
      setStatus("Could not trace (server busy, rate limit, or connection lost). Reload to try again.", "bad");
    }
  });
})();
</script>
</body>
</html>
"#;

"""Results: the JSON document, a plain-text summary, and PNG plots.

JSON (``--json FILE``) carries at least: scenario, params, started_at,
duration_s, sent, acked, delivered, lost, duplicated, reordered,
throughput_per_s, ack_ms and deliver_ms (p50, p90, p99, p999, max), server
(rss_bytes, cpu_s, processes), errors, versions, machine (cores, memory), plus
client cost, per-second ``series`` and, for ``max``, every ``steps`` entry.
``warmup`` (duration_s, sent, acked, delivered, ack_ms, deliver_ms) describes the
messages of the warm-up (``--warmup``): counted in sent/acked/delivered and
judged by the checker like the others, their latencies only there;
``throughput_per_s`` and ``duration_s`` of each step are the measured part's.
``connections.placement`` says whether users were placed by the cluster's slot
map or spread over the URLs, ``connections.redirected`` how many connections a
node sent elsewhere before one accepted them, ``connections.reconnected`` how
many connections the server closed during the run were brought back (synced,
unacknowledged messages resent with their ids; closes with codes other than
1000 and 1001 are also counted in ``errors`` as ``close_<code>``),
``connections.gap_syncs`` how many times a conversation's gap stayed open a
second and the connection synced (a message whose push went to the user's
previous node while its sessions moved).

Plots (``--plot DIR``, matplotlib imported only then, Agg backend):
``latency_over_time.png``, ``latency_cdf.png``, ``connections.png``,
``throughput.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["cdf", "summary_lines", "write_json", "write_plots"]

_CDF_POINTS = (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)


def cdf(h: HdrHistogram) -> list[list[float]]:
    """[[percentile, ms], ...] for the CDF plot (empty when nothing was recorded)."""
    if h.get_total_count() == 0:
        return []
    return [[p, h.get_value_at_percentile(p) / 1000.0] for p in _CDF_POINTS]


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


def summary_lines(r: dict[str, Any]) -> list[str]:
    a, d = r["ack_ms"], r["deliver_ms"]
    lines = [
        f"{r['scenario']}: {r['duration_s']:.1f} s, sent {r['sent']}, acked {r['acked']}, "
        f"delivered {r['delivered']}, lost {r['lost']}, duplicated {r['duplicated']}, "
        f"reordered {r['reordered']}",
        f"throughput {r['throughput_per_s']:.0f} msg/s, deliveries "
        f"{r.get('deliveries_per_s', 0):.0f}/s",
        f"send->ack ms p50 {a['p50']:.2f} p90 {a['p90']:.2f} p99 {a['p99']:.2f} "
        f"p99.9 {a['p999']:.2f} max {a['max']:.2f}",
        f"send->deliver ms p50 {d['p50']:.2f} p90 {d['p90']:.2f} p99 {d['p99']:.2f} "
        f"p99.9 {d['p999']:.2f} max {d['max']:.2f}",
    ]
    fs = r.get("deliver_from_send_ms")
    if fs and fs.get("count"):
        lines.append(f"  from the frame's write (client lag left out): p50 {fs['p50']:.2f} "
                     f"p90 {fs['p90']:.2f} p99 {fs['p99']:.2f} p99.9 {fs['p999']:.2f}")
    w = r.get("warmup", {})
    if w.get("duration_s"):
        lines.append(f"warm-up {w['duration_s']:g} s (checked, latencies apart): sent "
                     f"{w['sent']}, acked {w['acked']}, send->ack p99 "
                     f"{w['ack_ms']['p99']:.2f} ms, send->deliver p99 "
                     f"{w['deliver_ms']['p99']:.2f} ms")
    c = r.get("connections", {})
    if c:
        lines.append(f"connections {c.get('open')}/{c.get('requested')} open, "
                     f"{c.get('failed')} failed, {c.get('rate_per_s', 0):.0f}/s, "
                     f"{c.get('redirected', 0)} redirected"
                     + (f", {c['reconnected']} reconnected" if c.get("reconnected") else "")
                     + (f", {c['gap_syncs']} gap syncs" if c.get("gap_syncs") else "")
                     + f" (placement: {c.get('placement', 'spread')})")
    s = r.get("server", {})
    if s.get("rss_bytes"):
        per = s.get("rss_per_connection_bytes")
        lines.append(f"server RSS {s['rss_bytes'] / 2**20:.1f} MiB"
                     + (f" ({per / 1024:.1f} KiB per connection)" if per else "")
                     + f", CPU {s.get('cpu_s', 0):.1f} s")
    ll = s.get("loop_lag")
    if ll and ll.get("probes"):
        p99 = ll.get("p99_ms_at_most")
        lines.append(f"server event loop lag: p99 <= {p99:g} ms" if p99 is not None
                     else "server event loop lag: p99 over 10 s")
        lines[-1] += f", {ll['over_10ms_pct']:g}% of {ll['probes']} probes over 10 ms"
    cl = r.get("client", {})
    if cl:
        lines.append(f"client CPU {cl.get('cpu_s', 0):.1f} s "
                     f"({cl.get('cpu_us_per_msg') or 0:.1f} µs per message sent or delivered), "
                     f"lag p99 {cl.get('lag_ms', {}).get('p99', 0):.2f} ms")
    mb = r.get("machine", {}).get("busy")
    if mb:
        lines.append(f"machine (every process): {mb['busy_cores']:.2f} of "
                     f"{r['machine'].get('cores', '?')} cores busy ({mb['busy_pct']:.1f}%), "
                     f"iowait {mb['iowait_pct']:.1f}%, steal {mb['steal_pct']:.1f}%")
    dp = r.get("disk_probe")
    if dp:
        lines.append(f"disk flush ({dp['dir']}): {dp['count']} flushes, p50 {dp['p50']:.2f} "
                     f"p99 {dp['p99']:.2f} max {dp['max']:.2f} ms; {dp['over_stall']} over "
                     f"{dp['stall_ms']:g} ms" + (f" (stopped: {dp['error']})"
                                                  if dp.get("error") else ""))
    if "max_rate_per_s" in r:
        lines.append(f"highest sustained rate: {r['max_rate_per_s']:g} msg/s "
                     f"({r.get('stop_reason', '')})")
    if r.get("errors"):
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(r["errors"].items())))
    return lines


def write_plots(r: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    series = r.get("series", [])
    t = [p["t"] for p in series]
    files = []
    title = f"parley bench {r['scenario']}"

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("ack_ms", "send->ack"), ("deliver_ms", "send->deliver")):
        for pct, style in (("p50", "-"), ("p99", "--"), ("p999", ":")):
            ax.plot(t, [p[key][pct] for p in series], style, label=f"{label} {pct}")
    if "disk_probe" in r:  # a server's stall that lines up with a disk stall is the disk's
        ax.plot(t, [p.get("disk_flush_max_ms") or float("nan") for p in series], "k.",
                label="disk flush max")
    ax.set(xlabel="time (s)", ylabel="latency (ms)", title=f"{title}: latency per second")
    ax.legend(fontsize="small")
    files.append(_save(fig, out / "latency_over_time.png", plt))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("ack", "send->ack"), ("deliver", "send->deliver")):
        pts = r.get("cdf", {}).get(key, [])
        if pts:
            ax.plot([ms for _, ms in pts], [p for p, _ in pts], marker=".", label=label)
    ax.set(xlabel="latency (ms)", ylabel="percentile", title=f"{title}: latency CDF")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.legend(fontsize="small")
    files.append(_save(fig, out / "latency_cdf.png", plt))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [p["connections"] for p in series], label="open connections")
    ax.plot(t, [p["connect_failed"] for p in series], label="failed connects")
    ax.set(xlabel="time (s)", ylabel="connections", title=f"{title}: connections")
    ax.legend(fontsize="small")
    files.append(_save(fig, out / "connections.png", plt))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key, label in (("sent_per_s", "sent/s"), ("acked_per_s", "acked/s"),
                       ("delivered_per_s", "delivered/s")):
        ax.plot(t, [p[key] for p in series], label=label)
    ax.set(xlabel="time (s)", ylabel="messages per second", title=f"{title}: throughput")
    ax.legend(fontsize="small")
    files.append(_save(fig, out / "throughput.png", plt))
    return files


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

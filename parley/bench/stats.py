"""Facts around a run: server RSS and CPU, versions, the machine."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = ["CpuTimes", "LoopLag", "ServerSample", "ServerStats", "loop_lag_summary", "machine",
           "machine_busy", "machine_cpu", "versions"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_METRIC = re.compile(r"^(process_resident_memory_bytes|process_cpu_seconds_total)\s+(\S+)$",
                     re.MULTILINE)
_LAG_BUCKET = re.compile(
    r'^parley_event_loop_lag_seconds_bucket\{le="([^"]+)"\}\s+(\S+)$', re.MULTILINE)

LoopLag = dict[float, float]
"""Cumulative probe counts of ``parley_event_loop_lag_seconds`` by upper bound (s)."""


@dataclass(frozen=True, slots=True)
class ServerSample:
    rss_bytes: int
    cpu_s: float
    processes: int
    source: str


class ServerStats:
    """Sum of RSS and CPU of the server's processes: /proc/<pid> when pids are known,
    else ``process_*`` metrics of each node's /metrics endpoint."""

    def __init__(self, pids: list[int], metrics_urls: list[str]) -> None:
        self.pids = pids
        self.metrics_urls = metrics_urls

    def sample(self) -> ServerSample | None:
        if self.pids:
            rss = cpu = 0.0
            alive = 0
            for pid in self.pids:
                try:
                    rss += _proc_rss(pid)
                    cpu += _proc_cpu(pid)
                    alive += 1
                except OSError:
                    continue
            return ServerSample(int(rss), cpu, alive, "proc") if alive else None
        if self.metrics_urls:
            from parley.bench.parley_target import http_get

            rss = cpu = 0.0
            alive = 0
            for url in self.metrics_urls:
                try:
                    values = dict(_METRIC.findall(http_get(url)))
                except OSError:
                    continue
                rss += float(values.get("process_resident_memory_bytes", 0))
                cpu += float(values.get("process_cpu_seconds_total", 0))
                alive += 1
            return ServerSample(int(rss), cpu, alive, "metrics") if alive else None
        return None

    def loop_lag(self) -> LoopLag | None:
        """The nodes' event-loop lag histograms, summed (read from /metrics even when
        pids are known: only the node measures its own loop).  None: no node answered."""
        if not self.metrics_urls:
            return None
        from parley.bench.parley_target import http_get

        total: LoopLag = {}
        answered = False
        for url in self.metrics_urls:
            try:
                text = http_get(url)
            except OSError:
                continue
            answered = True
            for le, n in _LAG_BUCKET.findall(text):
                bound = float(le)  # "+Inf" parses as inf
                total[bound] = total.get(bound, 0.0) + float(n)
        return total if answered else None


def loop_lag_summary(before: LoopLag | None, after: LoopLag | None) -> dict[str, Any] | None:
    """The probes of a window (``after`` minus ``before``): how many, the share later
    than 10 ms, and the smallest bucket bound holding 99% of them (an upper bound of
    the p99; None when the probes never ran, e.g. a node older than this metric)."""
    if not after:
        return None
    before = before or {}
    bounds = sorted(after)
    cum = [max(0.0, after[b] - before.get(b, 0.0)) for b in bounds]
    probes = cum[-1]
    if probes <= 0:
        return {"probes": 0, "over_10ms_pct": 0.0, "p99_ms_at_most": None}
    within_10ms = max((c for b, c in zip(bounds, cum, strict=True) if b <= 0.01), default=0.0)
    p99 = next(b for b, c in zip(bounds, cum, strict=True) if c >= 0.99 * probes)
    return {"probes": int(probes), "over_10ms_pct": round(100 * (1 - within_10ms / probes), 3),
            "p99_ms_at_most": None if p99 == float("inf") else p99 * 1000}


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The whole machine's CPU time so far, all cores summed (``/proc/stat``), seconds."""

    busy_s: float  # user, nice, system, irq, softirq (guest time is within user)
    idle_s: float
    iowait_s: float
    steal_s: float  # wanted to run, the hypervisor ran something else

    @property
    def total_s(self) -> float:
        return self.busy_s + self.idle_s + self.iowait_s + self.steal_s


def machine_cpu(path: str = "/proc/stat") -> CpuTimes | None:
    """The machine's CPU times now; None where ``/proc/stat`` is not there."""
    try:
        with open(path) as f:
            head = f.readline().split()
    except OSError:
        return None
    if not head or head[0] != "cpu" or len(head) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) / _CLK_TCK
                                                             for x in head[1:9])
    return CpuTimes(user + nice + system + irq + softirq, idle, iowait, steal)


def machine_busy(before: CpuTimes | None, after: CpuTimes | None,
                 cores: int | None = None) -> dict[str, float] | None:
    """How busy the whole machine was between two ``machine_cpu`` readings: every
    process, the server's, the database's and the load client's alike.  A run whose
    cores were ~100% busy measured the machine as much as the server."""
    if before is None or after is None:
        return None
    total = after.total_s - before.total_s
    if total <= 0:
        return None
    n = cores or os.cpu_count() or 1
    busy = after.busy_s - before.busy_s
    return {"busy_cores": round(n * busy / total, 3),
            "busy_pct": round(100 * busy / total, 2),
            "iowait_pct": round(100 * (after.iowait_s - before.iowait_s) / total, 2),
            "steal_pct": round(100 * (after.steal_s - before.steal_s) / total, 2)}


def _proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("parley", "picows", "uvloop", "msgspec", "hdrhistogram", "rich"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def machine() -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cores": os.cpu_count() or 0, "memory_bytes": mem, "platform": platform.platform(),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else []}

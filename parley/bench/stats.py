"""Facts around a run: server RSS and CPU, versions, the machine."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = ["ServerSample", "ServerStats", "machine", "versions"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_METRIC = re.compile(r"^(process_resident_memory_bytes|process_cpu_seconds_total)\s+(\S+)$",
                     re.MULTILINE)


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

"""Every metric Parley exports, named in one place.

A ``Metrics`` instance owns its own Prometheus registry (no global state), is
built by the composition root and handed to the parts that count things.  A
feature that needs a new number adds it here, with a ``parley_`` name, a unit
suffix and help text, so ``GET /metrics`` documents the node by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "ProcessStats"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from 0.25 ms to 10 s: Parley's targets are in milliseconds.
_LATENCY = (
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Event-loop lag from 1 ms (uvloop's timer resolution, see parley.looplag) to 10 s.
_LOOP_LAG = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProcessStats(Collector):
    """``process_*`` as prometheus_client's ``ProcessCollector`` exports them, with
    the open descriptors counted at most every ``fds_every_s`` seconds.

    The stock collector counts them by listing ``/proc/self/fd`` at every scrape:
    13.5-25 ms with the 16,500 sockets of a busy node, on the event loop (a scrape
    of such a node took 27 ms of CPU in all).  ``parley bench`` reads each node's
    ``/metrics`` every second, so six nodes holding 100,000 connections lost
    ~0.16 of a core and a 27 ms stall a second each to being watched.  CPU,
    memory and start time still come fresh from ``/proc/self/stat`` (one small
    read); ``process_open_fds`` is the last count.  Where there is no ``/proc``
    (macOS, Windows) it exports nothing, as the stock collector does.
    """

    def __init__(self, fds_every_s: float = 30.0, proc: str = "/proc/self",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = proc
        self._every = fds_every_s
        self._clock = clock
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._fds = 0
        self._fds_at: float | None = None
        self._boot = _boot_time()

    def collect(self) -> Iterable[Metric]:
        if self._boot is None:
            return []
        try:
            with open(f"{self._proc}/stat", "rb") as f:
                parts = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return []
        now = self._clock()
        if self._fds_at is None or now - self._fds_at >= self._every:
            try:
                self._fds = len(os.listdir(f"{self._proc}/fd"))
                self._fds_at = now
            except OSError:
                pass
        import resource  # POSIX only: this collector runs only where /proc is

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        t = self._ticks
        return [
            GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                              value=float(parts[20])),
            GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                              value=float(parts[21]) * self._page),
            GaugeMetricFamily("process_start_time_seconds",
                              "Start time of the process since unix epoch in seconds.",
                              value=float(parts[19]) / t + self._boot),
            CounterMetricFamily("process_cpu_seconds_total",
                                "Total user and system CPU time spent in seconds.",
                                value=(float(parts[11]) + float(parts[12])) / t),
            GaugeMetricFamily("process_open_fds", "Number of open file descriptors "
                              f"(counted at most every {self._every:g} s).", value=self._fds),
            GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                              value=float(soft)),
        ]


def _boot_time() -> float | None:
    """The machine's boot time (Unix seconds), None without ``/proc/stat``."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class Metrics:
    """The node's metrics.  Attribute names mirror the exported names."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, str], Counter] = {}
        if _boot_time() is None:  # no /proc: the stock collector (it exports nothing there)
            ProcessCollector(registry=r)
        else:
            r.register(ProcessStats())
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # -- node ----------------------------------------------------------
        self.build_info = Gauge(
            "parley_build_info", "Always 1; labels tell the version and backend.",
            ["version", "backend"], registry=r,
        )
        self.start_time = Gauge(
            "parley_start_time_seconds", "When this node started (Unix time).", registry=r
        )
        self.up = Gauge("parley_up", "1 while the node serves, 0 while it drains.", registry=r)
        self.event_loop_lag = Histogram(
            "parley_event_loop_lag_seconds",
            "How late a probe due every 0.1 s ran on the node's event loop (1 ms "
            "resolution, parley.looplag); a high p99 means the node is out of CPU.",
            buckets=_LOOP_LAG, registry=r,
        )

        # -- HTTP ----------------------------------------------------------
        self.http_requests = Counter(
            "parley_http_requests_total", "HTTP requests answered.",
            ["method", "route", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "parley_http_request_duration_seconds", "HTTP request handling time.",
            ["route"], buckets=_LATENCY, registry=r,
        )

        # -- database ------------------------------------------------------
        self.db_up = Gauge(
            "parley_db_up", "1 when the last database check succeeded.", registry=r
        )
        self.db_commit_duration = Histogram(
            "parley_db_commit_duration_seconds", "Time of one batched message commit.",
            buckets=_LATENCY, registry=r,
        )
        self.db_batch_size = Histogram(
            "parley_db_batch_size", "Messages per batched commit (group commit).",
            buckets=_SIZES, registry=r,
        )
        self.db_commit_errors = Counter(
            "parley_db_commit_errors_total", "Batched commits that failed.", registry=r
        )

        # -- gateway -------------------------------------------------------
        self.ws_connections = Gauge(
            "parley_ws_connections", "Open WebSocket connections.", registry=r
        )
        self.ws_connects = Counter(
            "parley_ws_connects_total", "WebSocket upgrades, by outcome.", ["outcome"], registry=r
        )
        self.ws_closes = Counter(
            "parley_ws_closes_total", "WebSocket closes, by close code.", ["code"], registry=r
        )
        self.ws_frames_in = Counter(
            "parley_ws_frames_received_total", "Client frames received, by type.", ["type"],
            registry=r,
        )
        self.ws_frames_out = Counter(
            "parley_ws_frames_sent_total", "Frames sent to clients.", registry=r
        )
        self.ws_errors = Counter(
            "parley_ws_errors_total", "Error frames sent, by code.", ["code"], registry=r
        )

        # -- messaging -----------------------------------------------------
        self.messages_sent = Counter(
            "parley_messages_stored_total", "Messages committed, by kind.", ["kind"], registry=r
        )
        self.messages_duplicate = Counter(
            "parley_messages_duplicate_total", "Resends answered with the original ack.",
            registry=r,
        )
        self.send_duration = Histogram(
            "parley_send_duration_seconds", "From a send frame to its ack (commit included).",
            buckets=_LATENCY, registry=r,
        )
        self.deliveries = Counter(
            "parley_deliveries_total", "Message frames pushed to devices.", registry=r
        )
        self.redeliveries = Counter(
            "parley_redeliveries_total", "Pushes repeated after the ack timeout.", registry=r
        )

    def child(self, metric: Counter, label: str) -> Counter:
        """``metric.labels(label)``, remembered: ``labels()`` takes a lock and builds
        a key on every call, and the send path counts every message and frame (2% of
        the node's CPU at 2,000 msg/s).  Labels come from small fixed sets."""
        key = (id(metric), label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(label)
        return found

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""``process_*`` from ``parley.metrics.ProcessStats``: the stock collector's series,
with the open descriptors recounted at most every ``fds_every_s`` (counting them
lists ``/proc/self/fd``: 13-25 ms with a busy node's 16,500 sockets, at every scrape)."""

from __future__ import annotations

import socket
import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from parley.metrics import ProcessStats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _values(collector: object) -> dict[str, float]:
    return {m.name + ("_total" if m.type == "counter" else ""): m.samples[0].value
            for m in collector.collect()}  # type: ignore[attr-defined]


def test_the_same_series_as_the_stock_collector() -> None:
    ours = _values(ProcessStats())
    stock = _values(ProcessCollector(registry=CollectorRegistry()))
    assert set(ours) == set(stock)
    for name in ("process_max_fds", "process_open_fds", "process_start_time_seconds"):
        assert ours[name] == stock[name], name
    assert ours["process_resident_memory_bytes"] > 0
    assert 0 < ours["process_cpu_seconds_total"] <= stock["process_cpu_seconds_total"] + 0.1


def test_open_descriptors_are_recounted_only_after_the_interval() -> None:
    now = [0.0]
    stats = ProcessStats(fds_every_s=30.0, clock=lambda: now[0])
    before = _values(stats)["process_open_fds"]
    socks = [socket.socket() for _ in range(50)]
    try:
        now[0] = 29.0
        assert _values(stats)["process_open_fds"] == before  # the last count
        now[0] = 30.0
        assert _values(stats)["process_open_fds"] >= before + 50
    finally:
        for s in socks:
            s.close()

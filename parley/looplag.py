"""How late the node's event loop runs what is due: the one number that says a node is saturated.

A node is one thread running one asyncio loop.  When its callbacks take longer
than the time between events -- too many frames, a slow synchronous call, a
long collector pause -- every socket of the node waits, and no per-request
histogram shows why: each request measures its own wait, not the loop's.
``LoopLagMonitor`` asks the loop to run a probe every ``interval_s`` and
records how late it ran, in ``parley_event_loop_lag_seconds`` (no separate
maximum: the buckets reach 10 s, and a lifetime maximum would mostly show the
start, whose collection and freeze block the loop by design).  A healthy
node's probes run within a millisecond; a p99 of tens of milliseconds means
the node is out of CPU (add nodes, see docs/operations.md), and single
probes of seconds point at a blocking call.

The probe is one timer callback, no task (10 per second at the default
interval: nothing measurable beside the node's other work).  Its lag is
measured with ``time.monotonic`` against the deadline it was scheduled for,
not with ``loop.time()``: uvloop caches that at the start of each iteration,
which would hide the callbacks that ran before the probe in the same one.
Resolution: uvloop (libuv) rounds timers to whole milliseconds, so lags under
1 ms are timer granularity, not load; the lowest bucket is 1 ms for that reason.
Like ``HeapKeeper``, it is a registry collector holding plain numbers: the
probe takes no lock and allocates only its next timer handle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LAG_BUCKETS", "LoopLagMonitor"]

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopLagMonitor(Collector):
    """Probes its loop every ``interval_s`` and exports how late each probe ran."""

    def __init__(self, *, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._counts = [0] * (len(LAG_BUCKETS) + 1)  # last bucket is +Inf
        self._sum = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def probes(self) -> int:
        """Probes run since start."""
        return sum(self._counts)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin probing ``loop`` (default: the running one); idempotent."""
        if self._handle is not None:
            return
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._probe)

    def _probe(self) -> None:
        lag = max(0.0, time.monotonic() - self._due)
        self._sum += lag
        for i, bound in enumerate(LAG_BUCKETS):
            if lag <= bound:
                self._counts[i] += 1
                break
        else:
            self._counts[-1] += 1
        self._schedule()

    def collect(self) -> Iterable[Any]:
        cumulative, running = [], 0
        for bound, count in zip((*LAG_BUCKETS, float("inf")), self._counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        lag = HistogramMetricFamily(
            "parley_event_loop_lag_seconds",
            f"How late a probe scheduled every {self.interval_s:g} s ran on the node's "
            "event loop (1 ms resolution); a high p99 means the node is out of CPU.",
            buckets=cumulative, sum_value=self._sum,
        )
        return [lag]

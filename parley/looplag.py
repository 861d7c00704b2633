"""How late the node's event loop runs what is due: the one number that says a node is saturated.

A node is one thread running one asyncio loop.  When its callbacks take longer
than the time between events -- too many frames, a slow synchronous call, a
long collector pause -- every socket of the node waits, and no per-request
histogram shows why: each request measures its own wait, not the loop's.
``LoopLagMonitor`` asks the loop to run a probe every ``interval_s`` and
observes how late it ran into ``parley_event_loop_lag_seconds``
(``Metrics.event_loop_lag``; no separate maximum: the buckets reach 10 s, and
a lifetime maximum would mostly show the start, whose collection and freeze
block the loop by design).  A healthy node's probes run within a millisecond;
a p99 of tens of milliseconds means the node is out of CPU (add nodes, see
docs/operations.md), and single probes of seconds point at a blocking call.

The probe is one timer callback, no task (10 per second at the default
interval: nothing measurable beside the node's other work).  Its lag is
measured with ``time.monotonic`` against the deadline it was scheduled for,
not with ``loop.time()``: uvloop caches that at the start of each iteration,
which would hide the callbacks that ran before the probe in the same one.
Resolution: uvloop (libuv) rounds timers to whole milliseconds, so lags under
1 ms are timer granularity, not load; the lowest bucket is 1 ms for that reason.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Probes its loop every ``interval_s`` and observes how late each probe ran."""

    def __init__(self, histogram: Histogram, *, interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.probes = 0
        """Probes run since start."""
        self._histogram = histogram
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

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
        self._histogram.observe(max(0.0, time.monotonic() - self._due))
        self.probes += 1
        self._schedule()

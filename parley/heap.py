"""The node's heap policy: long-lived objects are frozen, so full collections stay short.

CPython's cycle collector runs a full (generation 2) collection whenever the
objects that survived into the old generation grew by a quarter since the last
one, and each full collection walks *every* tracked object that is not frozen.
A node's long-lived objects are mostly its connections (~22 tracked objects
each); a node holding 16,500 of them paused 0.9-1.1 s per full collection in
the c100k run, and a ramp to that size ran about eight of them, each one
stalling every socket of the node.

``HeapKeeper`` freezes (``gc.freeze``) what survived a full collection that
took longer than ``freeze_after_s``: those objects are alive by definition and
mostly stay so, and the next full collection walks only what was allocated
since.  Frozen objects are still freed by reference counting when their last
reference goes (a closed connection is: ``tests/e2e/test_session_memory.py``
holds the node to that); only a frozen object that ends up in a garbage
*cycle* is never reclaimed.  Below the threshold nothing is frozen, so short
collections keep collecting cycles as usual; the threshold also bounds how
often a freeze happens (only when the live heap grew by a pause's worth).

The callback counts pauses per generation for ``/metrics``.  (There is no
gauge of the frozen objects: ``gc.get_freeze_count`` walks the whole frozen
list, 140 ms per scrape on a node holding 15,000 connections.)  It runs inside
the collector, on whatever thread allocated, so it takes no lock and touches
only plain integers and floats; the collector below reads them at scrape time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

__all__ = ["PAUSE_BUCKETS", "HeapKeeper", "freeze_startup_heap"]

# Collector pauses, seconds: young collections take tens of microseconds,
# full ones up to a second on a large unfrozen heap.
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def freeze_startup_heap() -> None:
    """Collect once, then move everything allocated while starting into the
    permanent generation (imports, settings, routes, caches: ~170,000 objects,
    a 105 ms walk, that no later full collection has to repeat)."""
    gc.collect()
    gc.freeze()


class HeapKeeper(Collector):
    """Freezes survivors of slow full collections; exports collector pauses.

    ``install`` once per process (the callback is process-wide), ``uninstall``
    when the node stops.  ``freeze_after_s`` <= 0 turns freezing off and keeps
    only the pause metrics.
    """

    def __init__(self, *, freeze_after_s: float = 0.02) -> None:
        self.freeze_after_s = freeze_after_s
        self.freezes = 0
        n = len(PAUSE_BUCKETS) + 1
        self._buckets = [[0] * n for _ in range(3)]  # per generation; last bucket is +Inf
        self._sums = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self._sums[generation] += pause
        buckets = self._buckets[generation]
        for i, bound in enumerate(PAUSE_BUCKETS):
            if pause <= bound:
                buckets[i] += 1
                break
        else:
            buckets[-1] += 1
        if generation == 2 and self.freeze_after_s > 0 and pause >= self.freeze_after_s:
            # Everything still tracked survived this collection: alive now.
            gc.freeze()
            self.freezes += 1

    def collect(self) -> Iterable[Any]:
        pauses = HistogramMetricFamily(
            "parley_gc_pause_seconds",
            "Cycle-collector pauses of this process, by generation (2 = full collection).",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, running = [], 0
            for bound, count in zip((*PAUSE_BUCKETS, float("inf")), self._buckets[generation],
                                    strict=True):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            pauses.add_metric([str(generation)], cumulative, self._sums[generation])
        freezes = CounterMetricFamily(
            "parley_gc_freezes",
            "Full collections after which the surviving heap was frozen, since start.",
            value=self.freezes,
        )
        return [pauses, freezes]

"""The event-loop lag probe: a blocked loop shows in the histogram; a stopped probe stops."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from prometheus_client import generate_latest

from parley.looplag import LoopLagMonitor
from parley.metrics import Metrics
from tests.waiting import until


def _monitor(interval_s: float) -> tuple[LoopLagMonitor, Metrics]:
    metrics = Metrics()
    return LoopLagMonitor(metrics.event_loop_lag, interval_s=interval_s), metrics


def _scrape(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {k: float(v) for k, v in re.findall(r"^(parley_event_loop_lag\S*) (\S+)$", text, re.M)}


async def test_a_blocked_loop_shows_as_one_late_probe() -> None:
    m, metrics = _monitor(0.01)
    m.start()
    try:
        await until(lambda: m.probes >= 3, what="three probes")
        # Block the loop (the point of the test): the probe due within 10 ms runs ~0.3 s late.
        time.sleep(0.3)  # noqa: ASYNC251
        before = m.probes
        await until(lambda: m.probes > before, what="the late probe")
        got = _scrape(metrics)
        late = got["parley_event_loop_lag_seconds_count"] - got[
            'parley_event_loop_lag_seconds_bucket{le="0.25"}']
        assert late >= 1
        assert got["parley_event_loop_lag_seconds_sum"] >= 0.28
    finally:
        m.stop()


async def test_a_stopped_monitor_probes_no_more() -> None:
    m, metrics = _monitor(0.005)
    m.start()
    await until(lambda: m.probes >= 2, what="two probes")
    m.stop()
    count = m.probes
    # Timers fire in deadline order: a probe still scheduled (due within 5 ms)
    # would run before this 50 ms sleep ends.
    await asyncio.sleep(0.05)
    assert m.probes == count
    assert _scrape(metrics)["parley_event_loop_lag_seconds_count"] == count


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        _monitor(0)

"""The load worker's precise wake-up (a timerfd on the running loop): it fires,
never before its deadline; re-arming moves the deadline; a deadline already
past fires on the loop's next turn."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

import pytest

from parley.bench.clock import PreciseTimer, precise_timer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="timerfd is Linux's")


def _timer(loop: asyncio.AbstractEventLoop,
           fired: list[int]) -> tuple[PreciseTimer, asyncio.Event]:
    event = asyncio.Event()

    def callback() -> None:
        fired.append(time.monotonic_ns())
        event.set()

    timer = precise_timer(loop, callback)
    assert timer is not None
    return timer, event


async def _wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 5)


async def test_fires_once_and_never_before_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer, event = _timer(loop, fired)
    try:
        for delay_ns in (3_000_000, 300_000, 50_000):
            event.clear()
            deadline = time.monotonic_ns() + delay_ns
            timer.at(deadline)
            await _wait(event)
            assert fired[-1] >= deadline
        assert len(fired) == 3
    finally:
        timer.close()


async def test_rearming_moves_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    fired_a: list[int] = []
    fired_b: list[int] = []
    a, event_a = _timer(loop, fired_a)
    b, event_b = _timer(loop, fired_b)
    try:
        now = time.monotonic_ns()
        a.at(now + 2_000_000)
        a.at(now + 20_000_000)  # moved later
        b.at(now + 10_000_000)
        await _wait(event_b)
        assert fired_a == []  # the first deadline was replaced
        await _wait(event_a)
        assert fired_a[0] >= now + 20_000_000
    finally:
        a.close()
        b.close()


async def test_a_past_deadline_fires_at_once_and_close_is_idempotent() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer, event = _timer(loop, fired)
    timer.at(time.monotonic_ns() - 1_000_000)
    await _wait(event)
    assert len(fired) == 1
    timer.close()
    timer.close()


def test_unavailable_where_there_is_no_timerfd(monkeypatch: pytest.MonkeyPatch) -> None:
    import parley.bench.clock as clock

    monkeypatch.delattr(os, "timerfd_create", raising=False)
    monkeypatch.setattr(clock, "_libc", lambda: None)
    callback: Callable[[], None] = lambda: None  # noqa: E731
    loop = asyncio.new_event_loop()
    try:
        assert precise_timer(loop, callback) is None
    finally:
        loop.close()

"""The worker's open-loop schedule (one worker, no server): every send on time or
late, never early; on loop timers the worker sleeps at least a millisecond
between ticks (a shorter uvloop sleep is a busy loop), on a timerfd at least
``_PRECISE_TICK_NS``; a failing send fails the run."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from parley.bench import worker as worker_mod
from parley.bench.clock import PreciseTimer
from parley.bench.targets import ParleyConnector
from parley.bench.worker import (
    _PRECISE_TICK_NS,
    _PRECISE_UP_TO,
    _TICK_S,
    UserSpec,
    WorkerSpec,
    _Schedule,
    _Worker,
)

URL = "ws://127.0.0.1:1/v1/ws"


@pytest.fixture
def worker() -> Iterator[_Worker]:
    users = (UserSpec(0, "", URL, "7", 1), UserSpec(1, "", URL, "7", 1))
    parent, child = mp.Pipe()
    try:
        yield _Worker(WorkerSpec(0, ParleyConnector(), users, "127.0.0.1", None, 1, 60), child)
    finally:
        parent.close()
        child.close()


class _Conn:
    def __init__(self, fail: bool = False) -> None:
        self.sends: list[tuple[int, int]] = []  # (token, when sent)
        self.payloads: list[bytes] = []
        self.fail = fail

    def send(self, conv: str, payload: bytes, token: int) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.sends.append((token, time.monotonic_ns()))
        self.payloads.append(payload)

    def close(self) -> None:
        pass


async def test_sends_follow_the_schedule_in_ticks_of_at_least_a_millisecond(
        worker: _Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    conns = [_Conn(), _Conn()]
    for u, c in zip(worker.users, conns, strict=True):
        u.conn = c
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        if isinstance(getattr(callback, "__self__", None), _Schedule):
            delays.append(delay)
        return call_later(delay, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_later", spy)
    monkeypatch.setattr(worker_mod, "precise_timer", lambda loop, callback: None)
    t0 = time.monotonic_ns() + 5_000_000
    await worker.run(t0, 0.1, 10_000.0)  # a send every 0.1 ms
    assert worker.sent == 1000
    assert [len(c.sends) for c in conns] == [500, 500]
    assert delays and min(delays) >= _TICK_S
    assert len(delays) <= 110  # ticks, not sends
    for sender, c in zip(worker.users, conns, strict=True):
        due = worker.ledger.inflight[sender.index]
        assert all(sent_at >= due[token] for token, sent_at in c.sends)  # never early
    assert worker.lag_hist.get_total_count() > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
async def test_on_a_timerfd_ticks_are_at_least_the_precise_tick_apart(
        worker: _Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    conns = [_Conn(), _Conn()]
    for u, c in zip(worker.users, conns, strict=True):
        u.conn = c
    arms: list[tuple[int, int]] = []  # (deadline, when armed)
    at = PreciseTimer.at

    def spy(self: PreciseTimer, when_ns: int) -> None:
        arms.append((when_ns, time.monotonic_ns()))
        at(self, when_ns)

    monkeypatch.setattr(PreciseTimer, "at", spy)
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "call_later", None)  # the schedule must not use loop timers
    t0 = time.monotonic_ns() + 5_000_000
    await worker.run(t0, 0.1, _PRECISE_UP_TO)  # the fastest rate it serves
    assert worker.sent == int(0.1 * _PRECISE_UP_TO)
    assert [len(c.sends) for c in conns] == [worker.sent // 2] * 2
    # A tick runs after its deadline and arms the next one at least a tick after
    # its own clock reading, so deadlines are at least a tick apart.
    deadlines = [d for d, _ in arms]
    assert all(b - a >= _PRECISE_TICK_NS for a, b in itertools.pairwise(deadlines))
    assert len(arms) <= worker.sent + 1
    for sender, c in zip(worker.users, conns, strict=True):
        due = worker.ledger.inflight[sender.index]
        assert all(sent_at >= due[token] for token, sent_at in c.sends)  # never early


def test_loop_timers_above_the_precise_rate(worker: _Worker) -> None:
    loop = asyncio.new_event_loop()
    try:
        fast = _Schedule(worker, loop, 0, 0, 1, _PRECISE_UP_TO * 2)
        slow = _Schedule(worker, loop, 0, 0, 1, _PRECISE_UP_TO)
        assert fast.timer is None
        assert slow.timer is not None or not sys.platform.startswith("linux")
        fast.stop()
        slow.stop()
    finally:
        loop.close()


async def test_a_failing_send_fails_the_run(worker: _Worker) -> None:
    worker.users[0].conn = _Conn(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        await worker.run(time.monotonic_ns(), 0.05, 1000.0)


async def test_a_report_takes_each_histogram_delta(worker: _Worker) -> None:
    await worker.run(time.monotonic_ns(), 0.02, 1000.0)
    for seq in list(worker.ledger.inflight[0]):
        worker.users[0].acked(seq)
    first = worker.report()
    assert first.ack_hist and first.lag_hist and worker.ack_hist.get_total_count() == 0
    second = worker.report()
    assert second.ack_hist == b"" and second.sent == first.sent


async def test_a_delivery_is_timed_from_its_intended_time_and_from_its_write(
        worker: _Worker) -> None:
    conns = [_Conn(), _Conn()]
    for u, c in zip(worker.users, conns, strict=True):
        u.conn = c
    await worker.run(time.monotonic_ns(), 0.05, 1000.0)
    c = conns[0]
    due = worker.ledger.inflight[0]
    for (token, sent_at), payload in zip(c.sends, c.payloads, strict=True):
        index, seq, intended, late_us = (int(x) for x in payload.split(b"."))
        assert (index, seq, intended) == (0, token, due[token])
        assert 0 <= late_us * 1000 <= sent_at - intended  # how late this send was written
    # A delivery of a send written 30 ms late, arriving 50 ms after its intended time:
    # 50 ms from the intended time, 20 ms from the write.
    intended = time.monotonic_ns() - 50_000_000
    worker.users[1].delivered(b"0.99.%d.30000" % intended)
    from_intended = worker.deliver_hist.get_max_value()
    from_write = worker.sent_deliver_hist.get_max_value()
    assert 50_000 <= from_intended < 60_000
    assert from_write == pytest.approx(from_intended - 30_000, abs=100)

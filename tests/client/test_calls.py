"""Backoff, slots and call bookkeeping (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from parley.client.calls import QUEUED, WIRE, Backoff, Call, Calls, Slots
from parley.client.errors import ClientClosed, ConnectionLost


def test_backoff_grows_caps_and_jitters() -> None:
    b = Backoff(initial=0.2, maximum=10.0, factor=2.0, jitter=0.5)
    assert b.delay(0, 0.0) == pytest.approx(0.2)
    assert b.delay(3, 0.0) == pytest.approx(1.6)
    assert b.delay(50, 0.0) == pytest.approx(10.0)
    assert b.delay(50, 0.999) == pytest.approx(5.005)
    with pytest.raises(ValueError):
        Backoff(initial=0)


async def test_calls_requeue_resendable_and_fail_the_others() -> None:
    loop = asyncio.get_running_loop()
    calls = Calls()
    keep = Call(calls.next_rid(), b"a", loop.create_future(), resend=True)
    lose = Call(calls.next_rid(), b"b", loop.create_future(), resend=False)
    idle = Call(calls.next_rid(), b"c", loop.create_future(), resend=False)
    for c in (keep, lose, idle):
        calls.add(c)
    keep.state = lose.state = WIRE
    calls.connection_lost()
    assert keep.state == QUEUED and calls.get(keep.rid) is keep
    assert calls.get(lose.rid) is None
    assert isinstance(lose.future.exception(), ConnectionLost)
    assert [c.rid for c in calls.queued()] == [keep.rid, idle.rid]
    calls.fail_all(ClientClosed())
    assert len(calls) == 0 and isinstance(keep.future.exception(), ClientClosed)
    assert isinstance(idle.future.exception(), ClientClosed)


async def test_slots_bound_and_fail_waiters() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()
    await waiter
    third = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.fail_all(ClientClosed())
    with pytest.raises(ClientClosed):
        await third

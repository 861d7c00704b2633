"""Requests in flight (``send`` and every frame with a ``rid``), slots, and backoff.

A :class:`Call` is one request: its encoded frame (``rid`` baked in, so a
resend is the very same bytes, hence the same ``mid``), the future its caller
awaits, and where it stands:

* ``QUEUED``: not on the current connection; sent when the session is ready;
* ``WIRE``: written to the current connection, waiting for its answer;
* ``BACKOFF``: refused with a retryable error; a timer puts it back to ``QUEUED``.

When a connection drops, ``WIRE`` calls that may be repeated (``resend``) go
back to ``QUEUED``; the others fail with :class:`ConnectionLost` because their
outcome is unknown.  A call leaves :class:`Calls` when answered, failed, or
abandoned by its caller (timeout, cancellation): it is never sent again then.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConnectionLost

__all__ = ["BACKOFF", "QUEUED", "WIRE", "Backoff", "Call", "Calls", "Slots"]

QUEUED: Final = 0
WIRE: Final = 1
BACKOFF: Final = 2


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` waits
    ``min(maximum, initial * factor**n) * (1 - jitter * r)`` for ``r`` uniform in [0, 1)."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError("need 0 < initial <= maximum, factor >= 1, 0 <= jitter <= 1")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt`` (0-based); ``rand`` in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand)


class Call:
    """One request in flight (see the module docstring)."""

    __slots__ = ("attempts", "frame", "future", "resend", "rid", "state", "timer")

    def __init__(self, rid: int, frame: bytes, future: asyncio.Future[Any], resend: bool) -> None:
        self.rid = rid
        self.frame = frame
        self.future = future
        self.resend = resend
        self.state = QUEUED
        self.attempts = 0
        self.timer: asyncio.TimerHandle | None = None


class Calls:
    """The calls in flight by ``rid``; rids are unique for the client's life."""

    __slots__ = ("_by_rid", "_next")

    def __init__(self) -> None:
        self._by_rid: dict[int, Call] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._by_rid)

    def next_rid(self) -> int:
        self._next += 1
        return self._next

    def add(self, call: Call) -> None:
        self._by_rid[call.rid] = call

    def get(self, rid: int) -> Call | None:
        return self._by_rid.get(rid)

    def discard(self, rid: int) -> None:
        """Forget ``rid`` (answered or abandoned) and stop its retry timer."""
        call = self._by_rid.pop(rid, None)
        if call is not None and call.timer is not None:
            call.timer.cancel()
            call.timer = None

    def queued(self) -> Iterator[Call]:
        """Calls waiting to be (re)sent, oldest first.  Safe to change states while iterating."""
        return iter([c for c in self._by_rid.values() if c.state == QUEUED])

    def connection_lost(self) -> None:
        """The connection dropped: requeue repeatable calls on the wire, fail the others."""
        for call in list(self._by_rid.values()):
            if call.state != WIRE:
                continue
            if call.resend:
                call.state = QUEUED
            else:
                self.discard(call.rid)
                if not call.future.done():
                    call.future.set_exception(ConnectionLost(
                        "the connection dropped before the answer came; the outcome is unknown"
                    ))

    def fail_all(self, exc: BaseException) -> None:
        """Fail every call with ``exc`` (the client is finished)."""
        calls = list(self._by_rid.values())
        for call in calls:
            self.discard(call.rid)
            if not call.future.done():
                call.future.set_exception(exc)


class Slots:
    """A counting bound on calls in flight whose waiters can all be failed at once."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting (FIFO) while none is free.  Raises what :meth:`fail_all` gave."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # the slot was handed to us as we were cancelled
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def release(self) -> None:
        """Give a slot back (to the oldest waiter, if any)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    def fail_all(self, exc: BaseException) -> None:
        """Wake every waiter with ``exc``."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

"""A bounded cache whose entries expire: what the send path remembers between
database reads (memberships, send rules).  Oldest entries go first when full.

``load`` reads through with one load per missing key at a time ("single
flight"): a burst of sends for a key nobody has cached yet costs one database
read, not one per send -- without it a cold cache under load turns into a
queue of identical reads that starves the connection pool.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from parley.clock import Clock

__all__ = ["TtlCache"]

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, clock: Clock, ttl_s: float, max_entries: int) -> None:
        self._clock, self._ttl, self._max = clock, ttl_s, max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    def get(self, key: K) -> V | None:
        """The value if present and not expired."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._clock.monotonic():
            return hit[1]
        return None

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    async def load(self, key: K, loader: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, else ``loader()``'s (cached unless None); concurrent
        callers for one key share one load and see its result or its exception."""
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            value = await loader()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters (if any) re-raise it
            raise
        else:
            fut.set_result(value)
        finally:
            self._loading.pop(key, None)
        if value is not None:
            self.put(key, value)
        return value

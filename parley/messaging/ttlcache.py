"""A bounded cache whose entries expire: what the send path remembers between
database reads (memberships, send rules).  Oldest entries go first when full."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from parley.clock import Clock

__all__ = ["TtlCache"]

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, clock: Clock, ttl_s: float, max_entries: int) -> None:
        self._clock, self._ttl, self._max = clock, ttl_s, max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

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

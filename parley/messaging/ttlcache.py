"""A bounded cache whose entries expire: what the send path remembers between
database reads (memberships, send rules).  Oldest entries go first when full.

``load`` reads through with one load per missing key at a time ("single
flight"): a burst of sends for a key nobody has cached yet costs one database
read, not one per send -- without it a cold cache under load turns into a
queue of identical reads that starves the connection pool.

Refresh ahead: an entry read during the last ``refresh_fraction`` of its life
is returned at once and reloaded in the background, so a key in steady use
never expires under its callers' feet -- no send waits for a reload.  Each
entry's life is the TTL shortened by up to ``jitter`` at random: entries loaded
together (every conversation of a node warming up at once) do not all come due
in the same second.  Measured before both (1,000 users, 4,000 msg/s on
PostgreSQL): the send rules' reloads were 11% of the node's samples and came
in bursts every TTL.

Batched loads (``many``): given a loader of many keys, misses and refreshes
are queued and read in batches of up to ``batch_size`` keys, at most
``max_batches`` at a time: the keys that miss while those batches run form the
next ones (no timer, as in the write batcher).  A node restarted under load
(every device reconnecting and sending at once) missed a key per conversation
and per sender-peer pair: 1,000 users at 4,000 msg/s on PostgreSQL made the
first second's sends wait up to 1.3 s behind one read per key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from parley.clock import Clock

__all__ = ["TtlCache", "per_tenant"]

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """``loader(key)`` reads a key's value from the database (None: nothing to cache);
    or ``many(keys)`` reads several at once (a key it leaves out: None) and every
    load goes through it."""

    def __init__(
        self, clock: Clock, ttl_s: float, max_entries: int,
        loader: Callable[[K], Awaitable[V | None]] | None, *,
        refresh_fraction: float = 0.25, jitter: float = 0.1,
        many: Callable[[Sequence[K]], Awaitable[dict[K, V | None]]] | None = None,
        batch_size: int = 256, max_batches: int = 2,
    ) -> None:
        if not (0.0 <= refresh_fraction < 1.0 and 0.0 <= jitter < 1.0):
            raise ValueError("refresh_fraction and jitter must be in [0, 1)")
        if batch_size < 1 or max_batches < 1:
            raise ValueError("batch_size and max_batches must be positive")
        if (loader is None) == (many is None):
            raise ValueError("give either loader or many")
        self._clock, self._ttl, self._max = clock, ttl_s, max_entries
        self._loader = loader
        self._refresh, self._jitter = refresh_fraction, jitter
        # key -> (expires_at, refresh_at, value), monotonic seconds
        self._entries: OrderedDict[K, tuple[float, float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        self._refreshing: set[asyncio.Task[None]] = set()
        self._many = many
        self._batch_size, self._max_batches = batch_size, max_batches
        self._queued: list[tuple[K, asyncio.Future[V | None]]] = []
        self._batches = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value if present and not expired."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > self._clock.monotonic():
            return hit[2]
        return None

    def put(self, key: K, value: V) -> None:
        life = self._ttl * (1.0 - self._jitter * random.random())  # spread, not secret
        now = self._clock.monotonic()
        self._entries[key] = (now + life, now + life * (1.0 - self._refresh), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget ``key``; a reload already under way is not stored."""
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()

    def fresh(self, key: K) -> V | None:
        """The value if cached and not expired, without waiting (a reload is started
        in the background when it is due); None when only ``load`` can tell.
        The send path tries this first: no coroutine, no task, on a hit."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        now = self._clock.monotonic()
        if hit[0] <= now:
            return None
        if hit[1] <= now and key not in self._loading:
            self._refresh_later(key)
        return hit[2]

    async def load(self, key: K) -> V | None:
        """The cached value, else ``loader(key)``'s (cached unless None); concurrent
        callers for one key share one load and see its result or its exception."""
        hit = self.fresh(key)
        if hit is not None:
            return hit
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if self._loader is None:
            return await asyncio.shield(self._enqueue(key))
        fut = self._begin(key)
        try:
            value = await self._loader(key)
        except BaseException as exc:
            self._end(key, fut, exc=exc)
            raise
        self._end(key, fut, value=value)
        return value

    def _begin(self, key: K) -> asyncio.Future[V | None]:
        fut: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        return fut

    def _end(
        self, key: K, fut: asyncio.Future[V | None], *, value: V | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """Settle a load: wake its waiters, and store the value unless the key was
        dropped (``pop``/``clear``) while it loaded -- that value may predate the change."""
        current = self._loading.get(key) is fut
        if current:
            del self._loading[key]
        if exc is not None:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters (if any) re-raise it
            return
        fut.set_result(value)
        if current:
            if value is not None:
                self.put(key, value)
            else:
                self._entries.pop(key, None)

    def _retry_later(self, key: K) -> None:
        """After a failed refresh: the next one no sooner than a second from now."""
        hit = self._entries.get(key)
        if hit is not None:
            retry_at = min(hit[0], self._clock.monotonic() + 1.0)
            self._entries[key] = (hit[0], retry_at, hit[2])

    def _enqueue(self, key: K) -> asyncio.Future[V | None]:
        """Queue ``key`` for the next batch; its future settles with the batch."""
        fut = self._begin(key)
        self._queued.append((key, fut))
        if self._batches < self._max_batches:
            self._batches += 1
            task = asyncio.create_task(self._run_batches())
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)
        return fut

    async def _run_batches(self) -> None:
        """Load what is queued, a batch at a time, until nothing is (the first batch
        starts on the next loop turn: the misses of this one join it)."""
        assert self._many is not None
        try:
            while self._queued:
                batch = self._queued[:self._batch_size]
                del self._queued[:self._batch_size]
                try:
                    values = await self._many([key for key, _ in batch])
                except BaseException as exc:
                    # Waiters see the error; stale entries serve until they expire.
                    log.debug("loading %d cache entries failed: %r", len(batch), exc)
                    for key, fut in batch:
                        self._end(key, fut, exc=exc)
                        self._retry_later(key)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for key, fut in batch:
                    self._end(key, fut, value=values.get(key))
        finally:
            self._batches -= 1
            if not self._batches:  # cancelled (shutdown): nobody will load the rest
                stopped = RuntimeError("the cache stopped loading")
                while self._queued:
                    key, fut = self._queued.pop()
                    self._end(key, fut, exc=stopped)

    def _refresh_later(self, key: K) -> None:
        loader = self._loader
        if loader is None:
            self._enqueue(key)
            return
        fut = self._begin(key)

        async def refresh() -> None:
            try:
                value = await loader(key)
            except BaseException as exc:  # the old value serves until it expires
                # Settled even when cancelled (shutdown): a caller of load() whose
                # entry expired meanwhile waits on this future.
                log.debug("refreshing a cache entry failed: %r", exc)
                self._end(key, fut, exc=exc)
                self._retry_later(key)
                if not isinstance(exc, Exception):
                    raise
            else:
                self._end(key, fut, value=value)

        task = asyncio.create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)


async def per_tenant(
    keys: Sequence[tuple[Any, ...]], read: Callable[[int, list[Any]], Awaitable[Mapping[Any, V]]],
) -> dict[Any, V | None]:
    """A batch loader over keys of the form (tenant, ...): one ``read(tenant, rests)``
    per tenant, where a key's rest is its second item (or its other items, as a
    tuple); ``read`` answers by rest, and its values come back under their keys."""
    by_tenant: defaultdict[int, list[Any]] = defaultdict(list)
    for key in keys:
        by_tenant[key[0]].append(key[1] if len(key) == 2 else key[1:])
    out: dict[Any, V | None] = {}
    for tenant_id, rests in by_tenant.items():
        for rest, value in (await read(tenant_id, rests)).items():
            out[(tenant_id, *rest) if isinstance(rest, tuple) else (tenant_id, rest)] = value
    return out

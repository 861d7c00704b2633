"""TtlCache: single-flight loads, expiry, refresh ahead, invalidation during a load."""

from __future__ import annotations

import asyncio

import pytest

from parley.clock import ManualClock
from parley.messaging.ttlcache import TtlCache, per_tenant


class Loader:
    """Counts calls; each call waits on its own gate when ``gated``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls = 0
        self.value = "v0"
        self.fail: Exception | None = None
        self.gated = gated
        self.gates: list[asyncio.Event] = []

    async def __call__(self, key: object) -> str | None:
        self.calls += 1
        if self.gated:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.value


async def _settle() -> None:
    """Let background refreshes that are ready to run finish (no timing involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _gated_and_loaded(
    clock: ManualClock, refresh_fraction: float
) -> tuple[TtlCache[str, str], Loader]:
    """A cache over a gated loader, with "k" loaded once (its gate opened)."""
    load = Loader(gated=True)
    cache: TtlCache[str, str] = TtlCache(
        clock, 10.0, 100, load, refresh_fraction=refresh_fraction, jitter=0.0
    )
    first = asyncio.create_task(cache.load("k"))
    await _settle()
    load.gates[0].set()
    assert await first == "v0"
    return cache, load


async def test_hit_then_expiry_reloads() -> None:
    clock = ManualClock()
    load = Loader()
    cache: TtlCache[str, str] = TtlCache(
        clock, 10.0, 100, load, refresh_fraction=0.0, jitter=0.0
    )
    assert await cache.load("k") == "v0"
    load.value = "v1"
    clock.advance(9_999)
    assert await cache.load("k") == "v0"
    assert load.calls == 1
    clock.advance(1)
    assert cache.get("k") is None
    assert await cache.load("k") == "v1"
    assert load.calls == 2


async def test_concurrent_misses_share_one_load() -> None:
    load = Loader(gated=True)
    cache: TtlCache[str, str] = TtlCache(ManualClock(), 10.0, 100, load)
    waiters = [asyncio.create_task(cache.load("k")) for _ in range(50)]
    await _settle()
    assert load.calls == 1
    load.gates[0].set()
    assert await asyncio.gather(*waiters) == ["v0"] * 50


async def test_refresh_ahead_serves_the_old_value_and_reloads_once() -> None:
    clock = ManualClock()
    cache, load = await _gated_and_loaded(clock, 0.25)

    clock.advance(7_400)  # before the last quarter: a plain hit
    assert await cache.load("k") == "v0"
    assert load.calls == 1
    clock.advance(200)  # 7.6 s: in the last quarter
    load.value = "v1"
    results = [await cache.load("k") for _ in range(20)]
    assert results == ["v0"] * 20  # nobody waited
    await _settle()
    assert load.calls == 2  # one background reload, not one per call
    load.gates[1].set()
    await _settle()
    assert cache.get("k") == "v1"
    clock.advance(5_000)  # past the first entry's expiry: the refreshed one lives on
    assert await cache.load("k") == "v1"
    assert load.calls == 2


async def test_failed_refresh_keeps_the_value_and_retries_after_a_second() -> None:
    clock = ManualClock()
    load = Loader()
    cache: TtlCache[str, str] = TtlCache(
        clock, 10.0, 100, load, refresh_fraction=0.5, jitter=0.0
    )
    assert await cache.load("k") == "v0"
    clock.advance(6_000)
    load.fail = OSError("database down")
    assert await cache.load("k") == "v0"
    await _settle()
    assert load.calls == 2
    assert await cache.load("k") == "v0"  # within the second: no new attempt
    await _settle()
    assert load.calls == 2
    clock.advance(1_000)
    load.fail = None
    load.value = "v1"
    assert await cache.load("k") == "v0"
    await _settle()
    assert load.calls == 3
    assert cache.get("k") == "v1"


async def test_failed_load_reaches_every_waiter_and_caches_nothing() -> None:
    load = Loader(gated=True)
    cache: TtlCache[str, str] = TtlCache(ManualClock(), 10.0, 100, load)
    load.fail = OSError("database down")
    waiters = [asyncio.create_task(cache.load("k")) for _ in range(3)]
    await _settle()
    load.gates[0].set()
    for result in await asyncio.gather(*waiters, return_exceptions=True):
        assert isinstance(result, OSError)
    assert cache.get("k") is None
    load.gated, load.fail = False, None
    assert await cache.load("k") == "v0"


async def test_invalidation_during_a_load_is_not_undone_by_it() -> None:
    load = Loader(gated=True)
    cache: TtlCache[str, str] = TtlCache(ManualClock(), 10.0, 100, load)
    stale = asyncio.create_task(cache.load("k"))
    await _settle()
    cache.pop("k")  # the data changed while the old value was being read
    load.gates[0].set()
    assert await stale == "v0"  # its caller sees what it read...
    assert cache.get("k") is None  # ...but the cache does not keep it
    load.gated = False
    load.value = "v1"
    assert await cache.load("k") == "v1"


async def test_none_is_not_cached_and_size_is_bounded() -> None:
    async def nothing(key: int) -> str | None:
        return None

    cache: TtlCache[int, str] = TtlCache(ManualClock(), 10.0, 3, nothing)
    assert await cache.load(0) is None
    assert len(cache) == 0
    for i in range(5):
        cache.put(i, str(i))
    assert len(cache) == 3
    assert cache.get(0) is None and cache.get(4) == "4"


def test_jitter_shortens_life_within_bounds() -> None:
    clock = ManualClock()
    cache: TtlCache[int, str] = TtlCache(
        clock, 10.0, 10_000, Loader(), refresh_fraction=0.0, jitter=0.2
    )
    for i in range(1000):
        cache.put(i, str(i))
    clock.advance(7_999)
    assert all(cache.get(i) == str(i) for i in range(1000))
    clock.advance(1_000)  # 9 s: some entries (life 8-10 s) have expired, not all
    alive = sum(cache.get(i) is not None for i in range(1000))
    assert 0 < alive < 1000
    clock.advance(1_001)
    assert all(cache.get(i) is None for i in range(1000))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TtlCache(ManualClock(), 10.0, 10, Loader(), refresh_fraction=1.0)


async def test_fresh_never_waits_and_starts_the_due_reload() -> None:
    clock = ManualClock()
    load = Loader()
    cache: TtlCache[str, str] = TtlCache(
        clock, 10.0, 100, load, refresh_fraction=0.5, jitter=0.0
    )
    assert cache.fresh("k") is None and load.calls == 0  # a miss does not load
    assert await cache.load("k") == "v0"
    assert cache.fresh("k") == "v0" and load.calls == 1
    clock.advance(5_000)
    load.value = "v1"
    assert cache.fresh("k") == "v0"  # due: served, and reloaded behind
    await _settle()
    assert load.calls == 2 and cache.fresh("k") == "v1"
    clock.advance(10_000)
    assert cache.fresh("k") is None  # expired: only load() may wait for it


async def test_a_cancelled_refresh_does_not_strand_a_waiter() -> None:
    clock = ManualClock()
    cache, _ = await _gated_and_loaded(clock, 0.5)
    clock.advance(6_000)
    assert cache.fresh("k") == "v0"  # starts the background reload (gated)
    await _settle()
    clock.advance(5_000)  # expired while reloading: load() waits on the reload
    waiter = asyncio.create_task(cache.load("k"))
    await _settle()
    for task in list(cache._refreshing):
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)


class ManyLoader:
    """A loader of many keys: records each batch; each call waits on its own gate."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.fail: BaseException | None = None

    async def __call__(self, keys: object) -> dict[str, str | None]:
        batch = list(keys)  # type: ignore[call-overload]
        self.batches.append(batch)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: None if k.startswith("none") else k.upper() for k in batch}

    async def open_all(self) -> None:
        """Open every gate until no batch is waiting (each opened batch may start the next)."""
        await _settle()
        while not all(g.is_set() for g in self.gates):
            for g in self.gates:
                g.set()
            await _settle()


def _batched(many: ManyLoader, clock: ManualClock | None = None, **kw: float) -> TtlCache[str, str]:
    """A cache whose every load goes through ``many``."""
    return TtlCache(clock or ManualClock(), 10.0, 1000, None, many=many, **kw)  # type: ignore[arg-type]


async def test_misses_are_loaded_in_batches_and_the_queue_forms_the_next_batch() -> None:
    many = ManyLoader()
    cache = _batched(many, batch_size=3, max_batches=1)
    first = [asyncio.create_task(cache.load(k)) for k in ("a", "b", "a")]
    await _settle()
    assert many.batches == [["a", "b"]]  # one batch for the turn's misses; "a" once
    # Misses while that batch runs wait for it to finish, then go three at a time.
    later = [asyncio.create_task(cache.load(k)) for k in ("c", "d", "e", "none1", "b")]
    await _settle()
    assert len(many.batches) == 1
    await many.open_all()
    assert many.batches == [["a", "b"], ["c", "d", "e"], ["none1"]]
    assert await asyncio.gather(*first) == ["A", "B", "A"]
    assert await asyncio.gather(*later) == ["C", "D", "E", None, "B"]
    assert cache.get("c") == "C" and cache.get("none1") is None  # None is not cached
    assert await cache.load("d") == "D" and len(many.batches) == 3  # a hit: no batch


async def test_a_failed_batch_reaches_its_waiters_only() -> None:
    many = ManyLoader()
    cache = _batched(many, batch_size=2, max_batches=1)
    waiters = [asyncio.create_task(cache.load(k)) for k in ("a", "b", "c")]
    await _settle()
    many.fail = OSError("database down")
    many.gates[0].set()
    await _settle()
    many.fail = None
    await many.open_all()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results[:2]] == [OSError, OSError] and results[2] == "C"
    assert cache.get("a") is None and cache.get("c") == "C"


async def test_refreshes_go_through_the_batch_loader() -> None:
    clock = ManualClock()
    many = ManyLoader()
    cache = _batched(many, clock, refresh_fraction=0.5, jitter=0.0)
    task = asyncio.create_task(cache.load("a"))
    await many.open_all()
    assert await task == "A"
    clock.advance(6_000)  # past the refresh point
    assert cache.fresh("a") == "A" and cache.fresh("a") == "A"
    await _settle()
    assert many.batches == [["a"], ["a"]]
    await many.open_all()
    assert "a" not in cache._loading


async def test_cancelled_batch_loading_fails_what_is_queued() -> None:
    many = ManyLoader()
    cache = _batched(many, batch_size=1, max_batches=1)
    waiters = [asyncio.create_task(cache.load(k)) for k in ("a", "b")]
    await _settle()
    for task in list(cache._refreshing):
        task.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], RuntimeError)
    assert not cache._loading


def test_bad_batch_parameters_are_refused() -> None:
    many = ManyLoader()
    for kw in ({"batch_size": 0}, {"max_batches": 0}):
        with pytest.raises(ValueError, match="positive"):
            TtlCache(ManualClock(), 1.0, 10, None, many=many, **kw)
    with pytest.raises(ValueError, match="either"):
        TtlCache(ManualClock(), 1.0, 10, None)
    with pytest.raises(ValueError, match="either"):
        TtlCache(ManualClock(), 1.0, 10, Loader(), many=many)


async def test_per_tenant_reads_once_per_tenant_and_keys_the_answers_back() -> None:
    reads: list[tuple[int, list[object]]] = []

    async def read(tenant: int, rests: list[object]) -> dict[object, str]:
        reads.append((tenant, rests))
        return {r: f"{tenant}:{r}" for r in rests if r != 9}  # 9: unknown, left out

    got = await per_tenant([(1, 5), (2, 6), (1, 9), (1, 7)], read)
    assert reads == [(1, [5, 9, 7]), (2, [6])]
    assert got == {(1, 5): "1:5", (1, 7): "1:7", (2, 6): "2:6"}
    reads.clear()
    got = await per_tenant([(1, 5, 6), (1, 6, 5)], read)
    assert reads == [(1, [(5, 6), (6, 5)])]
    assert got == {(1, 5, 6): "1:(5, 6)", (1, 6, 5): "1:(6, 5)"}

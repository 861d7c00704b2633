"""The heap policy: slow full collections freeze their survivors; pauses are exported."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from parley.heap import HeapKeeper


@pytest.fixture
def keeper() -> Iterator[HeapKeeper]:
    k = HeapKeeper(freeze_after_s=0.0)
    yield k
    k.uninstall()
    gc.unfreeze()


class Node:
    """A long-lived object in a cycle, like a connection and its protocol."""

    def __init__(self) -> None:
        self.me = self


def _scrape(k: HeapKeeper) -> str:
    r = CollectorRegistry()
    r.register(k)
    return generate_latest(r).decode()


def test_full_collection_freezes_survivors_when_it_is_slow_enough(keeper: HeapKeeper) -> None:
    keeper.freeze_after_s = 1e-9  # every full collection counts as slow
    keep = [Node() for _ in range(10_000)]
    keeper.install()
    before = gc.get_freeze_count()
    gc.collect()
    assert keeper.freezes == 1
    assert gc.get_freeze_count() >= before + len(keep)
    text = _scrape(keeper)
    assert 'parley_gc_pause_seconds_count{generation="2"} 1.0' in text
    assert "parley_gc_freezes_total 1.0" in text


def test_fast_full_collections_and_young_ones_freeze_nothing(keeper: HeapKeeper) -> None:
    keeper.freeze_after_s = 3600.0
    keeper.install()
    before = gc.get_freeze_count()
    gc.collect(0)
    gc.collect(1)
    gc.collect()
    assert keeper.freezes == 0 and gc.get_freeze_count() == before
    text = _scrape(keeper)
    for generation in "012":
        assert f'parley_gc_pause_seconds_count{{generation="{generation}"}} 1.0' in text


def test_zero_turns_freezing_off_but_still_counts(keeper: HeapKeeper) -> None:
    keeper.install()  # freeze_after_s == 0
    gc.collect()
    assert keeper.freezes == 0
    assert 'parley_gc_pause_seconds_count{generation="2"} 1.0' in _scrape(keeper)


def test_frozen_objects_are_still_freed_by_reference_counting(keeper: HeapKeeper) -> None:
    keeper.freeze_after_s = 1e-9
    keeper.install()
    objs = [[i] for i in range(1000)]
    gc.collect()
    frozen = gc.get_freeze_count()
    del objs
    assert gc.get_freeze_count() <= frozen - 1000


def test_uninstall_stops_counting(keeper: HeapKeeper) -> None:
    keeper.install()
    keeper.install()  # idempotent: one callback
    assert gc.callbacks.count(keeper._on_gc) == 1
    keeper.uninstall()
    gc.collect()
    assert 'parley_gc_pause_seconds_count{generation="2"} 0.0' in _scrape(keeper)

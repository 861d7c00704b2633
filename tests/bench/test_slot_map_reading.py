"""How ``parley bench`` reads a ``/api/v1/route/map`` answer when it waits for a
complete map (``_assigned``): the same reading as its placement of users."""

from __future__ import annotations

from typing import Any

import pytest

from parley.bench.parley_target import _assigned
from parley.cluster.slots import SLOTS


def doc(*ranges: Any) -> dict[str, Any]:
    return {"epoch": 3, "nodes": [], "ranges": [list(r) for r in ranges]}


def test_counts_the_slots_the_runs_assign() -> None:
    assert _assigned(doc((0, SLOTS - 1, "node-1"))) == SLOTS
    assert _assigned(doc((0, 99, "node-1"), (200, 299, "node-2"))) == 200
    assert _assigned(doc()) == 0


def test_a_slot_in_two_runs_counts_once() -> None:
    """Summing run lengths would call this map complete; placement sees 100
    slots unassigned."""
    half = SLOTS // 2
    m = doc((0, half + 99, "node-1"), (half, SLOTS - 101, "node-2"))
    assert _assigned(m) == SLOTS - 100


@pytest.mark.parametrize("bad", [
    {}, {"ranges": None}, {"ranges": [[0, 10]]}, {"ranges": [["a", 3, "n"]]},
    {"ranges": [[5, 2, "n"]]}, {"ranges": [[0, SLOTS, "n"]]},
])
def test_a_malformed_map_assigns_nothing(bad: dict[str, Any]) -> None:
    assert _assigned(bad) == 0

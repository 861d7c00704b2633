"""Slots: the CRC16 vectors, and rebalance's balance, minimal movement and determinism."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from parley.cluster.slots import (
    SLOTS,
    UNASSIGNED,
    SlotMap,
    _balanced,
    _walk,
    crc16,
    rebalance,
    slot_of_user,
)


def _crc16_reference(data: bytes) -> int:
    """Bit-by-bit CRC16-XMODEM, as written in Redis Cluster's specification."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc16_check_vector() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@given(st.binary(max_size=64))
def test_crc16_matches_the_reference(data: bytes) -> None:
    assert crc16(data) == _crc16_reference(data)


def test_slot_of_user_hashes_the_decimal_id() -> None:
    # Redis: CLUSTER KEYSLOT 123456789 -> 12739 (0x31C3 & 16383)
    assert slot_of_user(123456789) == 0x31C3 & (SLOTS - 1) == 12739
    assert slot_of_user(0) == crc16(b"0") % SLOTS
    assert all(0 <= slot_of_user(u) < SLOTS for u in range(2000))


def test_users_spread_over_the_slots() -> None:
    counts = [0] * 16
    for user in range(1, 160_001):
        counts[slot_of_user(user) * 16 // SLOTS] += 1
    assert max(counts) < 1.1 * 10_000 and min(counts) > 0.9 * 10_000


def test_empty_map_and_lookups() -> None:
    empty = SlotMap.empty()
    assert empty.unassigned() == SLOTS and empty.counts() == {}
    assert empty.owner(0) is None and empty.owner_of_user(42) is None
    first = rebalance(empty, ["a"])
    assert first.epoch == 1 and first.counts() == {"a": SLOTS}
    assert first.owner_of_user(42) == "a" and first.slots_of("a") == list(range(SLOTS))
    assert first.slots_of("zz") == []


def test_invalid_maps_are_refused() -> None:
    with pytest.raises(ValueError):
        SlotMap(0, ("a",), b"\x00" * 10)
    with pytest.raises(ValueError):
        SlotMap(0, ("a",), b"\x01" * SLOTS)
    with pytest.raises(ValueError):
        SlotMap(0, ("a", "a"), b"\x00" * SLOTS)
    with pytest.raises(ValueError):
        rebalance(SlotMap.empty(), [])
    with pytest.raises(ValueError):
        rebalance(SlotMap.empty(), [f"n{i}" for i in range(256)])


def test_join_takes_evenly_and_leave_moves_only_its_slots() -> None:
    three = rebalance(SlotMap.empty(), ["a", "b", "c"])
    assert sorted(three.counts().values()) == [5461, 5461, 5462]
    four = rebalance(three, ["a", "b", "c", "d"])
    moved = three.moved(four)
    assert len(moved) == four.counts()["d"] == 4096
    assert all(four.owner(s) == "d" for s in moved)  # nothing moves between a, b and c
    given_away = {n: three.counts()[n] - four.counts()[n] for n in "abc"}
    assert max(given_away.values()) - min(given_away.values()) <= 1
    back = rebalance(four, ["a", "b", "c"])
    assert {four.owner(s) for s in four.moved(back)} == {"d"}
    assert len(four.moved(back)) == 4096
    assert rebalance(back, ["c", "b", "a"]) is back  # nothing to do: same map, same epoch


# -- properties ------------------------------------------------------------------

NODE_IDS = [f"n{i}" for i in range(12)]


@st.composite
def slot_maps(draw: st.DrawFn) -> SlotMap:
    """Arbitrary (also unbalanced, partly unassigned) maps built from runs."""
    owners = tuple(draw(st.lists(st.sampled_from(NODE_IDS), unique=True, max_size=8)))
    choices = [*range(len(owners)), UNASSIGNED]
    runs = draw(st.lists(st.tuples(st.integers(1, 4000), st.sampled_from(choices)), max_size=12))
    table = bytearray()
    for length, owner in runs:
        table += bytes([owner]) * length
    fill = draw(st.sampled_from(choices))
    table = (table + bytes([fill]) * SLOTS)[:SLOTS]
    return SlotMap(draw(st.integers(0, 1000)), owners, bytes(table))


active_sets = st.lists(st.sampled_from(NODE_IDS), unique=True, min_size=1, max_size=10)


def _minimum_moves(current: SlotMap, active: list[str]) -> int:
    """Fewest slots any balanced assignment over ``active`` must move (independent of
    rebalance's code: keep min(held, share) per node, with the larger shares given
    to the largest holders, which an exchange argument shows to be optimal)."""
    held = current.counts()
    loads = sorted((held.get(n, 0) for n in set(active)), reverse=True)
    base, extra = divmod(SLOTS, len(loads))
    kept = sum(min(load, base + (1 if i < extra else 0)) for i, load in enumerate(loads))
    return SLOTS - kept


@settings(max_examples=60, deadline=None)
@given(slot_maps(), active_sets)
def test_rebalance_is_balanced_minimal_and_deterministic(
    current: SlotMap, active: list[str]
) -> None:
    new = rebalance(current, active)
    counts = new.counts()
    assert new.unassigned() == 0
    assert set(counts) == set(active)
    assert max(counts.values()) - min(counts.values()) <= 1
    moved = current.moved(new)
    assert len(moved) == _minimum_moves(current, active)
    # a slot only moves if its owner left or held more than its share
    for slot in moved:
        old = current.owner(slot)
        assert old is None or old not in active or current.counts()[old] > counts[old]
    assert rebalance(current, list(reversed(active))) == new
    assert new.epoch == (current.epoch if not moved else current.epoch + 1)
    assert rebalance(new, active) is new  # stable once balanced


@settings(max_examples=60, deadline=None)
@given(slot_maps(), active_sets)
def test_the_balanced_shortcut_agrees_with_the_walk(current: SlotMap, active: list[str]) -> None:
    """``rebalance`` answers a balanced map without walking the table (the leader
    asks ten times a second); the shortcut never changes the answer."""
    ordered = sorted(active)
    walked = _walk(current, ordered)
    assert rebalance(current, active) == walked
    assert _balanced(current, ordered) == (walked is current)
    assert _balanced(walked, ordered) and rebalance(walked, active) is walked


@settings(max_examples=80, deadline=None)
@given(active_sets, st.lists(st.tuples(st.integers(0, 11), st.integers(0, 12)),
                             min_size=1, max_size=3))
@example(["n0", "n1", "n2"], [(0, 12)])  # the one larger share loses a slot to nobody
def test_the_shortcut_sees_a_nearly_balanced_map(
    active: list[str], changes: list[tuple[int, int]]
) -> None:
    """A balanced map with a few of its nodes' slots given to another owner (active
    or not) or to nobody: the shortcut answers only when the walk keeps the map."""
    ordered = sorted(active)
    balanced = _walk(SlotMap.empty(), ordered)
    owners = (*balanced.owners, *(n for n in NODE_IDS if n not in balanced.owners))[:12]
    table = bytearray(balanced.table)
    for i, (giver, owner) in enumerate(changes):
        slot = balanced.slots_of(ordered[giver % len(ordered)])[i]
        table[slot] = UNASSIGNED if owner == 12 else owner
    current = SlotMap(balanced.epoch, owners, bytes(table))
    walked = _walk(current, ordered)
    assert _balanced(current, ordered) == (walked is current)
    assert rebalance(current, active) == walked


def test_ranges_round_trip_and_bounds() -> None:
    """The runs ``/api/v1/route/map`` publishes rebuild the same map; a run
    outside 0..16383 is refused."""
    m = rebalance(rebalance(SlotMap.empty(), ["a", "b", "c"]), ["a", "c", "d"])
    runs = m.ranges()
    assert sum(last - first + 1 for first, last, _ in runs) == SLOTS
    assert all(runs[i][1] + 1 == runs[i + 1][0] for i in range(len(runs) - 1))
    back = SlotMap.from_ranges(m.epoch, runs)
    assert back.same_assignment(m) and back.epoch == m.epoch
    assert SlotMap.empty().ranges() == []
    half = SlotMap.from_ranges(1, [(0, 99, "a")])
    assert half.owner(99) == "a" and half.owner(100) is None and half.unassigned() == SLOTS - 100
    with pytest.raises(ValueError, match="out of bounds"):
        SlotMap.from_ranges(1, [(0, SLOTS, "a")])

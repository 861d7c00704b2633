"""In-flight tracker: push/ack/re-push/drop/overflow semantics."""

from __future__ import annotations

import pytest

from parley.protocol import Due, InflightTracker, Repush


def tracker(**kw: int) -> InflightTracker:
    return InflightTracker(**{"repush_timeout_ms": 100, "max_attempts": 2, "max_pending": 10, **kw})


def test_full_ack_clears() -> None:
    t = tracker()
    assert t.pushed(1, 5, now_ms=0)
    assert t.pushed(1, 6, now_ms=10)
    assert t.range_of(1) == (5, 6)
    assert t.pending == 2
    assert t.acked(1, 6)
    assert t.range_of(1) is None
    assert t.pending == 0
    assert len(t) == 0
    assert t.next_deadline() is None
    assert t.due(1_000) == Due([], [])


def test_ack_below_range_or_unknown_conv_is_noop() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    assert not t.acked(1, 4)
    assert not t.acked(2, 100)
    assert t.range_of(1) == (5, 5)


def test_ack_beyond_range_clears() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    assert t.acked(1, 50)
    assert t.pending == 0


def test_repush_after_timeout_then_drop() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    t.pushed(1, 7, now_ms=50)  # into the open range: deadline unchanged
    assert t.next_deadline() == 100
    assert t.due(99) == Due([], [])
    assert t.due(100) == Due([Repush(1, 5, 7, 1)], [])
    assert t.next_deadline() == 200
    assert t.due(150) == Due([], [])
    assert t.due(200) == Due([Repush(1, 5, 7, 2)], [])
    assert t.due(300) == Due([], [Repush(1, 5, 7, 2)])
    assert t.range_of(1) is None
    assert t.pending == 0


def test_partial_ack_restarts_timer_and_attempts() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    t.pushed(1, 9, now_ms=1)
    assert t.due(100).repush == [Repush(1, 5, 9, 1)]
    assert t.acked(1, 6, now_ms=150)
    assert t.range_of(1) == (7, 9)
    assert t.pending == 3
    assert t.next_deadline() == 250
    assert t.due(249) == Due([], [])
    assert t.due(250).repush == [Repush(1, 7, 9, 1)]


def test_partial_ack_without_now_uses_latest_clock() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    t.pushed(2, 1, now_ms=70)
    t.pushed(1, 6, now_ms=80)
    assert t.acked(1, 5)
    assert t.next_deadline() == 170  # conv 2 is first now
    assert t.due(170).repush == [Repush(2, 1, 1, 1)]
    assert t.due(180).repush == [Repush(1, 6, 6, 1)]


def test_deadline_order_across_conversations() -> None:
    t = tracker(max_attempts=1)
    t.pushed(1, 1, now_ms=0)
    t.pushed(2, 1, now_ms=10)
    t.pushed(3, 1, now_ms=20)
    assert [r.conv for r in t.due(110).repush] == [1, 2]
    assert t.next_deadline() == 120
    due = t.due(220)
    assert [r.conv for r in due.repush] == [3]
    assert [r.conv for r in due.dropped] == [1, 2]
    assert t.due(320) == Due([], [Repush(3, 1, 1, 1)])


def test_duplicate_and_old_pushes_change_nothing() -> None:
    t = tracker()
    t.pushed(1, 5, now_ms=0)
    t.pushed(1, 7, now_ms=0)
    t.acked(1, 5, now_ms=0)
    assert t.pushed(1, 4, now_ms=1)
    assert t.pushed(1, 7, now_ms=1)
    assert t.range_of(1) == (6, 7)
    assert t.pending == 2


def test_overflow() -> None:
    t = tracker(max_pending=3)
    assert t.pushed(1, 1, now_ms=0)
    assert t.pushed(1, 2, now_ms=0)
    assert t.pushed(2, 1, now_ms=0)
    assert not t.pushed(3, 1, now_ms=0)
    assert not t.pushed(1, 3, now_ms=0)
    assert t.pending == 3
    assert t.range_of(3) is None
    assert t.range_of(1) == (1, 2)
    t.acked(1, 1)
    assert t.pushed(1, 3, now_ms=0)
    assert not t.pushed(1, 100, now_ms=0)  # a gap counts every seq in it


def test_zero_attempts_drops_at_first_deadline() -> None:
    t = tracker(max_attempts=0)
    t.pushed(1, 1, now_ms=0)
    assert t.due(100) == Due([], [Repush(1, 1, 1, 0)])


def test_clock_going_backwards_loses_nothing() -> None:
    t = tracker(max_attempts=1)
    t.pushed(1, 1, now_ms=1000)
    t.pushed(2, 1, now_ms=0)  # deadline 100, queued behind 1100
    assert t.due(500) == Due([], [])
    assert [r.conv for r in t.due(1100).repush] == [1, 2]


def test_clear() -> None:
    t = tracker()
    t.pushed(1, 1, now_ms=0)
    t.clear()
    assert t.pending == 0
    assert len(t) == 0
    assert t.pushed(1, 1, now_ms=0)


def test_validation() -> None:
    for kw in ({"repush_timeout_ms": 0}, {"max_attempts": -1}, {"max_pending": 0}):
        with pytest.raises(ValueError):
            InflightTracker(**kw)

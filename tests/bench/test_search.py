"""``parley bench max``'s choice of rates (``parley.bench.search``): up while
steps hold the bound, down when the first one already misses it, never past a
broken step or ``max_steps``.  The end-to-end runs are in ``test_smoke.py``."""

from __future__ import annotations

import pytest

from parley.bench.search import BROKEN, HELD, MISSED, RateSearch, Verdict


def run(search: RateSearch, verdict_at: dict[float, Verdict]) -> list[float]:
    """Drive the search as ``bench max`` does; returns the rates tried."""
    while (rate := search.next_rate()) is not None:
        search.record(rate, verdict_at[rate])
    return [r for r, _ in search.tried]


def test_goes_up_until_a_step_misses() -> None:
    s = RateSearch(1000, 1.25, 20)
    rates = run(s, {1000: HELD, 1250: HELD, 1562.5: HELD, 1953.1: MISSED})
    assert rates == [1000, 1250, 1562.5, 1953.1]
    assert s.best == 1562.5 and s.failed_at == 1953.1
    assert s.stop_reason() == "step at 1953.1/s failed"


def test_rates_are_start_times_a_power_of_factor() -> None:
    """Not compounded from rounded rates: the same rates as before the search
    could go down (round(start * factor ** i, 1))."""
    s = RateSearch(1000, 1.25, 6)
    rates = run(s, dict.fromkeys([round(1000 * 1.25 ** i, 1) for i in range(6)], HELD))
    assert rates == [round(1000 * 1.25 ** i, 1) for i in range(6)]
    assert s.best == rates[-1] and s.stop_reason() == "max steps reached"
    assert s.failed_at is None


def test_goes_down_when_the_first_step_misses() -> None:
    s = RateSearch(1000, 2, 20)
    rates = run(s, {1000: MISSED, 500: MISSED, 250: HELD})
    assert rates == [1000, 500, 250]  # stops at the first that holds: 500 already failed
    assert s.best == 250 and s.failed_at == 500
    assert s.stop_reason() == "step at 500/s failed"


def test_going_down_stops_at_one_message_a_second() -> None:
    s = RateSearch(8, 2, 20)
    rates = run(s, dict.fromkeys([8, 4, 2, 1], MISSED))
    assert rates == [8, 4, 2, 1]
    assert s.best == 0 and s.failed_at == 1
    assert s.stop_reason() == "no step held the bound (lowest tried 1/s)"


def test_max_steps_bounds_both_directions() -> None:
    down = RateSearch(1000, 2, 3)
    assert run(down, dict.fromkeys([1000, 500, 250], MISSED)) == [1000, 500, 250]
    assert down.best == 0 and "lowest tried 250/s" in down.stop_reason()
    up = RateSearch(10, 2, 2)
    assert run(up, {10: HELD, 20: HELD}) == [10, 20]


@pytest.mark.parametrize("first", [HELD, MISSED])
def test_a_broken_step_ends_the_search(first: Verdict) -> None:
    s = RateSearch(100, 2, 20)
    second = 200 if first == HELD else 50
    assert run(s, {100: first, second: BROKEN}) == [100, second]
    assert s.stop_reason() == f"step at {second}/s failed (messages lost, duplicated or reordered)"
    assert s.best == (100 if first == HELD else 0) and s.failed_at == second


def test_refuses_a_search_that_cannot_move() -> None:
    for start, factor, steps in [(0.5, 2, 5), (10, 1, 5), (10, 2, 0)]:
        with pytest.raises(ValueError):
            RateSearch(start, factor, steps)

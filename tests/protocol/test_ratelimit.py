"""Token bucket."""

from __future__ import annotations

import pytest

from parley.protocol import TokenBucket


def test_burst_then_refill() -> None:
    b = TokenBucket(rate_per_s=2, burst=3)
    assert [b.allow(0) for _ in range(4)] == [True, True, True, False]
    assert not b.allow(499)
    assert b.allow(500)
    assert not b.allow(500)
    assert b.allow(10_000)
    assert b.tokens == pytest.approx(2)  # refilled to burst (3), took 1


def test_refill_caps_at_burst() -> None:
    b = TokenBucket(rate_per_s=1000, burst=5)
    assert b.allow(0, cost=5)
    assert sum(b.allow(1_000_000) for _ in range(10)) == 5


def test_cost() -> None:
    b = TokenBucket(rate_per_s=1, burst=10)
    assert b.allow(0, cost=7)
    assert not b.allow(0, cost=4)
    assert b.allow(0, cost=3)
    assert not b.allow(0, cost=11)
    assert b.retry_after_ms(0, cost=11) is None


def test_clock_going_backwards_grants_nothing() -> None:
    b = TokenBucket(rate_per_s=1, burst=1)
    assert b.allow(10_000)
    assert not b.allow(5_000)
    assert not b.allow(10_999)
    assert b.allow(11_000)


@pytest.mark.parametrize("rate", [0.5, 1, 3, 7, 10, 333.3, 1000])
def test_retry_after_is_exact(rate: float) -> None:
    b = TokenBucket(rate_per_s=rate, burst=2)
    assert b.retry_after_ms(0) == 0
    assert b.allow(0, cost=2)
    wait = b.retry_after_ms(0)
    assert wait is not None and wait > 0
    assert not b.allow(wait - 1)
    assert b.allow(wait)


def test_validation() -> None:
    for rate, burst in [(0, 1), (-1, 1), (1, 0.5)]:
        with pytest.raises(ValueError):
            TokenBucket(rate, burst)

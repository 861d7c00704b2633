"""A pure token bucket: the caller passes the clock."""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows bursts of ``burst`` and a sustained ``rate_per_s``.

    The bucket starts full.  ``now_ms`` should come from a monotonic clock; a
    clock that goes backwards refills nothing (it never grants extra tokens).
    A request costing more than ``burst`` is never allowed.
    """

    __slots__ = ("_burst", "_last_ms", "_per_ms", "_tokens")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not rate_per_s > 0 or not burst >= 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._per_ms = rate_per_s / 1000.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ms: int | None = None

    def _refill(self, now_ms: int) -> None:
        last = self._last_ms
        if last is None or now_ms > last:
            if last is not None:
                self._tokens = min(self._burst, self._tokens + (now_ms - last) * self._per_ms)
            self._last_ms = now_ms

    def allow(self, now_ms: int, cost: float = 1) -> bool:
        """Take ``cost`` tokens if available and return True; otherwise take none."""
        self._refill(now_ms)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after_ms(self, now_ms: int, cost: float = 1) -> int | None:
        """How long until ``allow(cost)`` would succeed (0: now); None if it never will."""
        if cost > self._burst:
            return None
        self._refill(now_ms)
        missing = cost - self._tokens
        if missing <= 0:
            return 0
        return math.ceil(missing / self._per_ms)

    @property
    def tokens(self) -> float:
        """Tokens left at the last call (for tests and metrics)."""
        return self._tokens

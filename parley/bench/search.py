"""How ``parley bench max`` chooses the rate of its next step.

The search starts at ``--start-rate`` and multiplies the rate by ``--factor``
after every step that holds the bound, until a step fails: the highest rate
that held is the answer.  When the very first step already fails, the search
goes the other way, dividing by ``factor`` until a step holds (that rate is
the answer: the one above it failed) or the rate would drop below one
message a second.  Before, a first step that failed ended the run with
"highest sustained rate: 0", which says only that the start was too high;
beside 100,000 held connections (docs/performance.md, run 25) that was the
whole result of a 40-minute run.

A step that loses, duplicates or reorders a message ends the search at
once, whichever way it was going: that is a defect to look at, not a
capacity.  ``max_steps`` bounds the number of steps in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BROKEN", "HELD", "MIN_RATE", "MISSED", "RateSearch", "Verdict"]

Verdict = Literal["held", "missed", "broken"]
HELD: Verdict = "held"
MISSED: Verdict = "missed"  # over the latency bound, or not every message answered in time
BROKEN: Verdict = "broken"  # lost, duplicated or reordered messages

MIN_RATE = 1.0
"""The lowest rate the search tries (messages a second), as ``--start-rate``'s minimum."""


@dataclass(slots=True)
class RateSearch:
    start: float
    factor: float
    max_steps: int
    tried: list[tuple[float, Verdict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.start < MIN_RATE or self.factor <= 1 or self.max_steps < 1:
            raise ValueError("start >= 1, factor > 1 and max_steps >= 1 are required")

    def _rate(self, k: int) -> float:
        return round(self.start * self.factor ** k, 1)

    def next_rate(self) -> float | None:
        """The next step's rate, or None when the search is over.

        The first step's verdict fixes the direction (up if it held, down if it
        missed); the search ends at the first step whose verdict differs."""
        if not self.tried:
            return self._rate(0)
        first, last = self.tried[0][1], self.tried[-1][1]
        if len(self.tried) >= self.max_steps or last == BROKEN or last != first:
            return None
        n = len(self.tried)
        rate = self._rate(n if first == HELD else -n)
        return rate if rate >= MIN_RATE else None

    def record(self, rate: float, verdict: Verdict) -> None:
        self.tried.append((rate, verdict))

    @property
    def best(self) -> float:
        """The highest rate that held the bound (0 when none did)."""
        return max((r for r, v in self.tried if v == HELD), default=0.0)

    @property
    def failed_at(self) -> float | None:
        """The rate of the failed step that ended the search: a broken step, the
        lowest miss above the best rate, or (none held) the lowest rate tried;
        None when no step failed."""
        if not self.tried:
            return None
        rate, verdict = self.tried[-1]
        if verdict == BROKEN:
            return rate
        best = self.best
        if not best:
            return min(r for r, _ in self.tried)
        return min((r for r, v in self.tried if v == MISSED and r > best), default=None)

    def stop_reason(self) -> str:
        failed = self.failed_at
        if not self.tried:
            return "no step ran"
        if self.tried[-1][1] == BROKEN:
            return f"step at {failed:g}/s failed (messages lost, duplicated or reordered)"
        if not self.best:
            return f"no step held the bound (lowest tried {failed:g}/s)"
        if failed is not None:
            return f"step at {failed:g}/s failed"
        return "max steps reached"

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
    _k: int = 0  # the last step's rate is start * factor ** _k

    def __post_init__(self) -> None:
        if self.start < MIN_RATE or self.factor <= 1 or self.max_steps < 1:
            raise ValueError("start >= 1, factor > 1 and max_steps >= 1 are required")

    def _rate(self, k: int) -> float:
        return round(self.start * self.factor ** k, 1)

    def next_rate(self) -> float | None:
        """The next step's rate, or None when the search is over."""
        if not self.tried:
            return self._rate(0)
        if len(self.tried) >= self.max_steps:
            return None
        verdict = self.tried[-1][1]
        seen = {v for _, v in self.tried}
        if verdict == BROKEN:
            return None
        if verdict == HELD:
            if MISSED in seen:  # came down to a rate that holds: the one above failed
                return None
            self._k += 1
            return self._rate(self._k)
        if HELD in seen:  # went up until this one failed
            return None
        lower = self._rate(self._k - 1)
        if lower < MIN_RATE:
            return None
        self._k -= 1
        return lower

    def record(self, rate: float, verdict: Verdict) -> None:
        self.tried.append((rate, verdict))

    @property
    def best(self) -> float:
        """The highest rate that held the bound (0 when none did)."""
        return max((r for r, v in self.tried if v == HELD), default=0.0)

    def stop_reason(self) -> str:
        if not self.tried:
            return "no step ran"
        rate, verdict = self.tried[-1]
        if verdict == BROKEN:
            return f"step at {rate:g}/s failed (messages lost, duplicated or reordered)"
        best = self.best
        if not best:
            lowest = min(r for r, _ in self.tried)
            return f"no step held the bound (lowest tried {lowest:g}/s)"
        above = [r for r, v in self.tried if v == MISSED and r > best]
        if above:
            return f"step at {min(above):g}/s failed"
        return "max steps reached"

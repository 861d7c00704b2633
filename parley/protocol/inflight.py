"""Per-device tracking of pushed-but-unacknowledged messages (the re-push timer).

One :class:`InflightTracker` per connected device.  The gateway calls
:meth:`~InflightTracker.pushed` for every ``msg`` it pushes, :meth:`~InflightTracker.acked`
for every ``ack`` frame, and :meth:`~InflightTracker.due` when the timer from
:meth:`~InflightTracker.next_deadline` fires.

Model.  Seqs are contiguous per conversation and a device acks cumulatively, so
per conversation the tracker keeps one *unacked range* ``first..last`` (lowest
unacked pushed seq .. highest pushed seq) and one deadline, attempt count for
the range's start.  Costs: O(1) per push and per ack, O(1) amortised per entry
in :meth:`~InflightTracker.due`, memory O(conversations with unacked pushes).

Timers follow TCP's retransmission rule: the deadline starts when a range opens
and restarts whenever an ack moves it forward (progress also resets the attempt
count); pushes into an open range do not move it.  After ``max_attempts``
re-pushes without progress the range is dropped and reported: the device is
unresponsive for that conversation, it will catch up by ``sync`` (the caller
may close it with 4008 to force that).

``now_ms`` must come from a monotonic clock.  If it goes backwards, due work is
reported late, never lost.  No I/O, no clock, not thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

__all__ = ["Due", "InflightTracker", "Repush"]


class Repush(NamedTuple):
    """An unacked range of one conversation: push ``first_seq..last_seq`` (inclusive) again.

    ``attempt`` is 1 for the first re-push; for a dropped range, the re-pushes made.
    """

    conv: int
    first_seq: int
    last_seq: int
    attempt: int


class Due(NamedTuple):
    """What :meth:`InflightTracker.due` found: ranges to re-push, ranges given up on."""

    repush: list[Repush]
    dropped: list[Repush]


class _Range:
    __slots__ = ("attempts", "deadline", "first", "last")

    def __init__(self, first: int, last: int, deadline: int) -> None:
        self.first = first
        self.last = last
        self.deadline = deadline
        self.attempts = 0


class InflightTracker:
    """Unacked pushes of one device; bounded to ``max_pending`` seqs in all ranges."""

    __slots__ = ("_clock", "_max_attempts", "_max_pending", "_pending", "_ranges", "_timeout")

    def __init__(
        self, *, repush_timeout_ms: int = 5_000, max_attempts: int = 3, max_pending: int = 4_096
    ) -> None:
        if repush_timeout_ms < 1 or max_attempts < 0 or max_pending < 1:
            raise ValueError("need repush_timeout_ms >= 1, max_attempts >= 0, max_pending >= 1")
        self._timeout = repush_timeout_ms
        self._max_attempts = max_attempts
        self._max_pending = max_pending
        # conv -> range, in deadline order (deadlines are always now + timeout).
        self._ranges: OrderedDict[int, _Range] = OrderedDict()
        self._pending = 0
        self._clock = 0

    def pushed(self, conv: int, seq: int, now_ms: int) -> bool:
        """Record that ``(conv, seq)`` was pushed to the device.

        Returns False, recording nothing, if this would exceed ``max_pending``:
        close the connection as a slow consumer (4008).  Pushing a seq at or
        below the range's end (a duplicate, or one already acked) changes nothing.
        """
        if now_ms > self._clock:
            self._clock = now_ms
        r = self._ranges.get(conv)
        if r is None:
            if self._pending >= self._max_pending:
                return False
            self._ranges[conv] = _Range(seq, seq, now_ms + self._timeout)
            self._pending += 1
        elif seq > r.last:
            grow = seq - r.last
            if self._pending + grow > self._max_pending:
                return False
            self._pending += grow
            r.last = seq
        return True

    def acked(self, conv: int, seq: int, now_ms: int | None = None) -> bool:
        """Apply a cumulative ack; True if it released at least one pending push.

        ``now_ms`` restarts the timer of what remains (default: the latest time
        seen by this tracker).  Whether the ack advances the device's stored
        cursor is the caller's business: persist ``max(cursor, seq)`` regardless.
        """
        r = self._ranges.get(conv)
        if r is None or seq < r.first:
            return False
        if seq >= r.last:
            del self._ranges[conv]
            self._pending -= r.last - r.first + 1
            return True
        if now_ms is not None and now_ms > self._clock:
            self._clock = now_ms
        self._pending -= seq + 1 - r.first
        r.first = seq + 1
        r.attempts = 0
        r.deadline = (self._clock if now_ms is None else now_ms) + self._timeout
        self._ranges.move_to_end(conv)
        return True

    def due(self, now_ms: int) -> Due:
        """Ranges whose deadline is ``<= now_ms``: re-push them (their timer restarts),
        or, after ``max_attempts``, they are dropped and listed in ``dropped``."""
        if now_ms > self._clock:
            self._clock = now_ms
        repush: list[Repush] = []
        dropped: list[Repush] = []
        ranges = self._ranges
        while ranges:
            conv = next(iter(ranges))
            r = ranges[conv]
            if r.deadline > now_ms:
                break
            if r.attempts >= self._max_attempts:
                del ranges[conv]
                self._pending -= r.last - r.first + 1
                dropped.append(Repush(conv, r.first, r.last, r.attempts))
            else:
                r.attempts += 1
                r.deadline = now_ms + self._timeout
                ranges.move_to_end(conv)
                repush.append(Repush(conv, r.first, r.last, r.attempts))
        return Due(repush, dropped)

    def next_deadline(self) -> int | None:
        """When :meth:`due` next has work (earliest deadline), or None if nothing is pending."""
        if not self._ranges:
            return None
        return self._ranges[next(iter(self._ranges))].deadline

    def range_of(self, conv: int) -> tuple[int, int] | None:
        """The unacked ``(first_seq, last_seq)`` of ``conv``, or None."""
        r = self._ranges.get(conv)
        return None if r is None else (r.first, r.last)

    @property
    def pending(self) -> int:
        """Seqs in all unacked ranges (what ``max_pending`` bounds)."""
        return self._pending

    def __len__(self) -> int:
        """Conversations with unacked pushes."""
        return len(self._ranges)

    def clear(self) -> None:
        """Forget everything (the connection closed)."""
        self._ranges.clear()
        self._pending = 0

"""The bench's correctness checker: lost, duplicated and reordered messages per stream.

A *stream* is what one sender sends, as seen by one receiver.  Each sender
numbers its messages 1, 2, 3, ... (one sequence per sender; a sender sends to
one conversation).  Two halves, both cheap enough for the hot path:

* :class:`SendLedger` (where the sender lives): sent count and the seqs never
  acknowledged (still in flight, refused, or cut by a closed connection).
* :class:`ReceiveChecker` (where the receiver lives): for each stream the
  highest seq seen, the seqs missing below it, and counts of duplicates (a seq
  seen twice) and reorders (a missing seq arriving late).  In-order delivery
  costs one dict lookup and one store.

:func:`verdict` joins both halves after the drain: **lost** = acknowledged but
never delivered to a receiver, **duplicated**, **reordered**, and
``delivered_unacked`` (delivered though never acknowledged; allowed, e.g. when
the ack was lost with the connection).  Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["ReceiveChecker", "SendLedger", "SenderSummary", "StreamSummary", "Verdict",
           "split_key", "stream_key", "verdict"]

_SHIFT = 24
_MASK = (1 << _SHIFT) - 1


def stream_key(sender: int, receiver: int) -> int:
    """One int per (sender, receiver): cheaper to hash than a tuple."""
    return (sender << _SHIFT) | receiver


@dataclass(frozen=True, slots=True)
class SenderSummary:
    sent: int
    unacked: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class StreamSummary:
    highest: int
    missing: frozenset[int] = frozenset()
    duplicated: int = 0
    reordered: int = 0


class SendLedger:
    """Per sender: how many were sent and which were not (yet) acknowledged."""

    __slots__ = ("_failed", "_sent", "inflight")

    def __init__(self) -> None:
        self._sent: dict[int, int] = {}
        self.inflight: dict[int, dict[int, int]] = {}
        """sender -> {seq: intended send time ns}; acks pop from it."""
        self._failed: dict[int, set[int]] = {}

    def open(self, sender: int) -> dict[int, int]:
        """The in-flight map of ``sender`` (a hot-path handle)."""
        self._sent.setdefault(sender, 0)
        return self.inflight.setdefault(sender, {})

    def sent(self, sender: int, seq: int, intended_ns: int) -> None:
        self._sent[sender] = seq
        self.inflight[sender][seq] = intended_ns

    def failed(self, sender: int, seq: int) -> None:
        self.inflight[sender].pop(seq, None)
        self._failed.setdefault(sender, set()).add(seq)

    def summary(self) -> dict[int, SenderSummary]:
        return {s: SenderSummary(n, frozenset(self.inflight.get(s, ())) |
                                 frozenset(self._failed.get(s, ())))
                for s, n in self._sent.items()}


class ReceiveChecker:
    """Per (sender, receiver) stream: highest seq, gaps, duplicates, reorders."""

    __slots__ = ("duplicated", "highest", "missing", "reordered")

    def __init__(self) -> None:
        self.highest: dict[int, int] = {}
        self.missing: dict[int, set[int]] = {}
        self.duplicated: dict[int, int] = {}
        self.reordered: dict[int, int] = {}

    def record(self, sender: int, receiver: int, seq: int) -> None:
        key = (sender << _SHIFT) | receiver
        top = self.highest.get(key, 0)
        if seq == top + 1:
            self.highest[key] = seq
            return
        self._slow(key, top, seq)

    def _slow(self, key: int, top: int, seq: int) -> None:
        if seq > top:
            self.missing.setdefault(key, set()).update(range(top + 1, seq))
            self.highest[key] = seq
            return
        gaps = self.missing.get(key)
        if gaps is not None and seq in gaps:
            gaps.discard(seq)
            self.reordered[key] = self.reordered.get(key, 0) + 1
        else:
            self.duplicated[key] = self.duplicated.get(key, 0) + 1

    @property
    def duplicates(self) -> int:
        """Duplicates seen so far (for the drain and live progress)."""
        return sum(self.duplicated.values())

    def summary(self) -> dict[int, StreamSummary]:
        return {k: StreamSummary(h, frozenset(self.missing.get(k, ())),
                                 self.duplicated.get(k, 0), self.reordered.get(k, 0))
                for k, h in self.highest.items()}


@dataclass(slots=True)
class Verdict:
    sent: int = 0
    acked: int = 0
    unacked: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    delivered_unacked: int = 0
    lost_streams: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.reordered == 0


def verdict(senders: Mapping[int, SenderSummary], streams: Mapping[int, StreamSummary],
            receivers: Mapping[int, Iterable[int]]) -> Verdict:
    """Join the halves.  ``receivers[s]``: who must get every message ``s`` sends."""
    v = Verdict()
    empty = StreamSummary(0)
    for s, sent in senders.items():
        v.sent += sent.sent
        v.unacked += len(sent.unacked)
        acked = sent.sent - len(sent.unacked)
        v.acked += acked
        for r in receivers.get(s, ()):
            v.expected += acked
            d = streams.get(stream_key(s, r), empty)
            top = min(d.highest, sent.sent)
            v.delivered += d.highest - len(d.missing)
            tail = (sent.sent - top) - sum(1 for q in sent.unacked if q > top)
            holes = sum(1 for q in d.missing if q <= top and q not in sent.unacked)
            lost = tail + holes
            if lost:
                v.lost += lost
                if len(v.lost_streams) < 20:
                    v.lost_streams.append((s, r))
            v.delivered_unacked += sum(1 for q in sent.unacked if q <= top
                                       and q not in d.missing) + max(0, d.highest - sent.sent)
            v.duplicated += d.duplicated
            v.reordered += d.reordered
    seen = {stream_key(s, r) for s in senders for r in receivers.get(s, ())}
    for k, d in streams.items():  # streams from senders nobody expected: all unexpected
        if k not in seen:
            v.delivered_unacked += d.highest - len(d.missing)
            v.duplicated += d.duplicated
            v.reordered += d.reordered
    return v


def split_key(key: int) -> tuple[int, int]:
    """(sender, receiver) of a :func:`stream_key`."""
    return key >> _SHIFT, key & _MASK

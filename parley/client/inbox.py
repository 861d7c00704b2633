"""Receive-side state of one client: cursors, dedup, ordering, the bounded queue, acks.

Pure state (no asyncio, no socket, no clock), driven by the client:

* :meth:`Inbox.push` for each ``msg`` the server pushes, :meth:`Inbox.synced`
  for each message of a ``sync_page``;
* :meth:`Inbox.pop` when the application reads;
* :meth:`Inbox.take_acks` when the client flushes its coalesced ``ack`` frames.

Guarantees:

* **In order, no duplicates.**  Per conversation, messages leave :meth:`pop` in
  strictly increasing ``seq``; a ``(conv, seq)`` at or below the conversation's
  cursor is dropped (and its cursor acked again, so the server stops re-pushing).
* **Pushes never skip.**  A pushed message is delivered only if it is the next
  seq (``cursor + 1``; or seq 1 for a conversation this inbox has not seen);
  otherwise it is *held* (bounded by ``max_held``) and :data:`HELD` tells the
  caller to sync.  Held messages are released as soon as the gap is filled.
* **Sync is authoritative.**  A synced message above the cursor is delivered
  even across a gap (the server has nothing in between, e.g. deleted history),
  and the first message of an unseen conversation sets its cursor.
* **Bounded.**  At most ``capacity`` messages wait for the application and at
  most ``max_held`` are held.  When the queue is full a message is dropped
  *without advancing the cursor or acking it* (:data:`FULL`) and the inbox is
  :attr:`backlogged`: the server re-pushes unacked messages and a later sync
  fetches the rest, so nothing is lost and memory stays bounded.
* **Cumulative acks.**  Every cursor move records ``acks[conv] = cursor``; one
  ack per conversation covers any number of messages (:meth:`take_acks`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Final

from parley.protocol import Msg

__all__ = ["DELIVERED", "DUPLICATE", "FULL", "HELD", "Inbox"]

DELIVERED: Final = 0
"""Accepted: queued for the application (or skipped as this device's echo); cursor moved."""
DUPLICATE: Final = 1
"""At or below the cursor: dropped."""
HELD: Final = 2
"""Out of order (a gap before it): kept aside, nothing delivered; sync to fill the gap."""
FULL: Final = 3
"""The queue is full: dropped unacked; the inbox is backlogged until the app reads."""


class Inbox:
    """Cursors and the bounded queue of one client (see the module docstring)."""

    __slots__ = (
        "_held", "_held_count", "_queue", "acks", "backlogged", "capacity", "cursors",
        "echo_prefix", "max_held",
    )

    def __init__(
        self, capacity: int, max_held: int = 1024, cursors: Mapping[int, int] | None = None
    ) -> None:
        if capacity < 1 or max_held < 0:
            raise ValueError("need capacity >= 1 and max_held >= 0")
        self.capacity = capacity
        self.max_held = max_held
        self.cursors: dict[int, int] = dict(cursors or {})
        """conv -> highest seq held contiguously (everything <= it was received)."""
        self.acks: dict[int, int] = {}
        """conv -> cursor not yet acknowledged to the server."""
        self.backlogged = False
        """True after a message was refused for lack of room; cleared by the caller."""
        self.echo_prefix: str | None = None
        """Mids starting with this (this device's own sends) advance the cursor but are
        not queued; None queues everything."""
        self._queue: deque[Msg] = deque()
        self._held: dict[int, dict[int, Msg]] = {}
        self._held_count = 0

    def __len__(self) -> int:
        """Messages waiting for the application."""
        return len(self._queue)

    @property
    def room(self) -> int:
        """How many more messages the queue accepts."""
        return self.capacity - len(self._queue)

    @property
    def held(self) -> int:
        """Out-of-order pushes kept aside."""
        return self._held_count

    def pop(self) -> Msg | None:
        """The next message for the application, or None if the queue is empty."""
        queue = self._queue
        return queue.popleft() if queue else None

    def take_acks(self) -> dict[int, int]:
        """The pending cumulative acks (conv -> seq), forgetting them."""
        acks, self.acks = self.acks, {}
        return acks

    def push(self, msg: Msg) -> int:
        """A message the server pushed: DELIVERED, DUPLICATE, HELD or FULL."""
        conv, seq = msg.conv, msg.seq
        cursor = self.cursors.get(conv)
        if cursor is not None and seq <= cursor:
            self.acks[conv] = cursor
            return DUPLICATE
        if seq == (1 if cursor is None else cursor + 1):
            verdict = self._deliver(msg)
            if verdict == DELIVERED and self._held_count:
                self._release(conv)
            return verdict
        self._hold(msg)
        return HELD

    def synced(self, msg: Msg) -> int:
        """A message of a ``sync_page``: DELIVERED, DUPLICATE or FULL."""
        conv = msg.conv
        cursor = self.cursors.get(conv)
        if cursor is not None and msg.seq <= cursor:
            self.acks[conv] = cursor
            return DUPLICATE
        verdict = self._deliver(msg)
        if verdict == DELIVERED and self._held_count:
            self._release(conv)
        return verdict

    # -- private -------------------------------------------------------------------
    def _deliver(self, msg: Msg) -> int:
        prefix = self.echo_prefix
        if prefix is None or not msg.mid.startswith(prefix):
            if len(self._queue) >= self.capacity:
                self.backlogged = True
                return FULL
            self._queue.append(msg)
        self.cursors[msg.conv] = msg.seq
        self.acks[msg.conv] = msg.seq
        return DELIVERED

    def _hold(self, msg: Msg) -> None:
        if self._held_count >= self.max_held:
            return  # dropped: the sync that HELD calls for fetches it again
        held = self._held.setdefault(msg.conv, {})
        if msg.seq not in held:
            held[msg.seq] = msg
            self._held_count += 1

    def _release(self, conv: int) -> None:
        """Deliver held messages of ``conv`` that became contiguous; forget stale ones."""
        held = self._held.get(conv)
        if not held:
            return
        cursor = self.cursors[conv]
        for seq in [s for s in held if s <= cursor]:
            del held[seq]
            self._held_count -= 1
        while (msg := held.get(cursor + 1)) is not None:
            if self._deliver(msg) != DELIVERED:
                break
            del held[cursor + 1]
            self._held_count -= 1
            cursor += 1
        if not held:
            del self._held[conv]

"""Hash slots: which node owns a user.

A user is placed by ``slot_of_user``: the CRC16 of the user id's decimal string
(ASCII, no sign for the non-negative ids Parley issues), modulo 16,384 -- the
hash and slot count of Redis Cluster (CRC16-XMODEM: polynomial 0x1021, initial
value 0, no reflection; ``crc16(b"123456789") == 0x31C3``).  All devices of a
user therefore sit on the node owning that slot.

A ``SlotMap`` assigns each of the 16,384 slots to one node id (or to nobody
before the first assignment): a tuple of owner ids plus one byte per slot
indexing into it, with the ``epoch`` bumped whenever an assignment changes.

``rebalance`` is the only way a map changes.  It is pure and deterministic
(the same map and node set give the same result on every machine) and moves
the fewest slots possible:

* slots of nodes no longer active (removed, draining, dead) and unassigned
  slots go, in slot order, to the least-loaded active node;
* a node with more than its share gives its excess (its highest slots), so a
  joining node takes evenly from the most-loaded;
* afterwards every active node holds ``16384 // n`` or ``16384 // n + 1``
  slots (the larger shares go to the nodes that already held the most).

No slot moves between two nodes that both stay within their share, so only
the sessions of moved slots have to reconnect.
"""

from __future__ import annotations

import binascii
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_OWNERS",
    "SLOTS",
    "UNASSIGNED",
    "SlotMap",
    "crc16",
    "rebalance",
    "slot_of_user",
]

SLOTS = 16384
UNASSIGNED = 0xFF
MAX_OWNERS = 255
"""Most nodes a map can name (one byte per slot, 0xFF meaning unassigned)."""


def crc16(data: bytes) -> int:
    """CRC16-XMODEM of ``data``, the hash Redis Cluster uses for its key slots."""
    return binascii.crc_hqx(data, 0)


def slot_of_user(user_id: int) -> int:
    """The slot of a user: CRC16 of the decimal user id, modulo 16,384."""
    return crc16(str(user_id).encode("ascii")) & (SLOTS - 1)


@dataclass(frozen=True, slots=True)
class SlotMap:
    """An immutable assignment of every slot to a node id (or to nobody).

    ``table[slot]`` is an index into ``owners`` or ``UNASSIGNED``.  Build new
    maps with ``rebalance``; compare them with ``moved``.
    """

    epoch: int
    owners: tuple[str, ...]
    table: bytes

    def __post_init__(self) -> None:
        if len(self.table) != SLOTS:
            raise ValueError(f"a slot table has {SLOTS} entries, not {len(self.table)}")
        if len(self.owners) > MAX_OWNERS:
            raise ValueError(f"a slot map names at most {MAX_OWNERS} nodes")
        if len(set(self.owners)) != len(self.owners):
            raise ValueError("slot map owners must be distinct")
        used = self.table.translate(None, bytes([UNASSIGNED]))
        if used and max(used) >= len(self.owners):
            raise ValueError("slot table refers to an owner that is not listed")

    @classmethod
    def empty(cls) -> SlotMap:
        """The map before the first assignment: every slot unassigned, epoch 0."""
        return cls(0, (), bytes([UNASSIGNED]) * SLOTS)

    def owner(self, slot: int) -> str | None:
        """The node owning ``slot``, or None while it is unassigned."""
        index = self.table[slot]
        return None if index == UNASSIGNED else self.owners[index]

    def owner_of_user(self, user_id: int) -> str | None:
        """The node owning ``user_id``'s slot, or None while it is unassigned."""
        return self.owner(slot_of_user(user_id))

    def counts(self) -> dict[str, int]:
        """Slots held by each owner (owners holding none are left out)."""
        return {
            node: n for i, node in enumerate(self.owners) if (n := self.table.count(i)) > 0
        }

    def unassigned(self) -> int:
        """How many slots nobody owns."""
        return self.table.count(UNASSIGNED)

    def slots_of(self, node_id: str) -> list[int]:
        """The slots ``node_id`` owns, ascending."""
        try:
            index = self.owners.index(node_id)
        except ValueError:
            return []
        return [slot for slot, owner in enumerate(self.table) if owner == index]

    def ranges(self) -> list[tuple[int, int, str]]:
        """The assigned slots as runs ``(first, last, owner)`` in slot order, inclusive
        (what ``GET /api/v1/route/map`` publishes; unassigned slots are left out)."""
        table, start, out = self.table, 0, []
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or table[slot] != table[start]:
                if table[start] != UNASSIGNED:
                    out.append((start, slot - 1, self.owners[table[start]]))
                start = slot
        return out

    @classmethod
    def from_ranges(cls, epoch: int, ranges: Iterable[tuple[int, int, str]]) -> SlotMap:
        """The map ``ranges`` describes (the inverse of ``ranges``); slots in no run
        are unassigned.  Raises ValueError for a run out of bounds or too many owners."""
        owners: dict[str, int] = {}
        table = bytearray([UNASSIGNED]) * SLOTS
        for first, last, node in ranges:
            if not 0 <= first <= last < SLOTS:
                raise ValueError(f"slot range {first}..{last} out of bounds")
            index = owners.setdefault(node, len(owners))
            if index >= MAX_OWNERS:
                raise ValueError(f"a slot map names at most {MAX_OWNERS} nodes")
            table[first:last + 1] = bytes([index]) * (last - first + 1)
        return cls(epoch, tuple(owners), bytes(table))

    def moved(self, other: SlotMap) -> list[int]:
        """Slots whose owner differs between this map and ``other``, ascending."""
        return [slot for slot in range(SLOTS) if self.owner(slot) != other.owner(slot)]

    def same_assignment(self, other: SlotMap) -> bool:
        """Whether both maps give every slot the same owner (epochs aside)."""
        if self.owners == other.owners:
            return self.table == other.table
        return not self.moved(other)


def _shares(active: list[str], holdings: dict[str, list[int]]) -> dict[str, int]:
    """Each active node's share: ``SLOTS // n``, one more for the ``SLOTS % n``
    nodes holding the most now (ties by id), which keeps the most slots in place."""
    base, extra = divmod(SLOTS, len(active))
    by_load = sorted(active, key=lambda node: (-len(holdings[node]), node))
    return {node: base + (1 if rank < extra else 0) for rank, node in enumerate(by_load)}


def rebalance(current: SlotMap, active_node_ids: Iterable[str]) -> SlotMap:
    """The map giving every slot to one of ``active_node_ids`` with the fewest moves.

    Returns ``current`` itself when nothing has to move, otherwise a new map with
    ``epoch + 1``.  Raises ValueError for an empty node set or more than
    ``MAX_OWNERS`` nodes.
    """
    active = sorted(set(active_node_ids))
    if not active:
        raise ValueError("rebalance needs at least one active node")
    if len(active) > MAX_OWNERS:
        raise ValueError(f"a slot map names at most {MAX_OWNERS} nodes")
    if _balanced(current, active):
        # The raft leader asks every controller tick (10 times a second).  Walking
        # the table took 1.85 ms of the leader node's GIL each time (0.02 of a
        # core); counting with bytes.count takes microseconds.
        return current
    return _walk(current, active)


def _balanced(current: SlotMap, active: list[str]) -> bool:
    """Whether ``current`` already gives every slot to ``active`` in shares of
    ``SLOTS // n`` or one more: exactly the maps ``_walk`` returns unchanged."""
    if current.unassigned():
        return False
    counts = current.counts()
    if counts.keys() != set(active):
        return False
    base = SLOTS // len(active)
    return min(counts.values()) >= base and max(counts.values()) <= base + 1


def _walk(current: SlotMap, active: list[str]) -> SlotMap:
    """``rebalance`` by walking the table (``active``: sorted, distinct, non-empty)."""
    holdings: dict[str, list[int]] = {node: [] for node in active}
    free: list[int] = []
    owners = current.owners
    for slot, index in enumerate(current.table):
        if index != UNASSIGNED:
            held = holdings.get(owners[index])
            if held is not None:
                held.append(slot)
                continue
        free.append(slot)

    shares = _shares(active, holdings)
    for node in active:
        excess = len(holdings[node]) - shares[node]
        if excess > 0:
            free.extend(holdings[node][-excess:])
            del holdings[node][-excess:]
    if not free:
        return current
    free.sort()

    # Least-loaded first; every node in the heap is below its share, and the
    # free slots are exactly the sum of the shortfalls.
    heap = [(len(holdings[node]), node) for node in active if len(holdings[node]) < shares[node]]
    heapq.heapify(heap)
    for slot in free:
        load, node = heapq.heappop(heap)
        holdings[node].append(slot)
        if load + 1 < shares[node]:
            heapq.heappush(heap, (load + 1, node))

    new_owners = tuple(node for node in active if holdings[node])
    table = bytearray([UNASSIGNED]) * SLOTS
    for index, node in enumerate(new_owners):
        for slot in holdings[node]:
            table[slot] = index
    candidate = SlotMap(current.epoch + 1, new_owners, bytes(table))
    if candidate.same_assignment(current):
        return current
    return candidate

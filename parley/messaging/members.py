"""A bounded cache of who is in each conversation, for the send and fan-out path.

Loading members from the database for every message would cost a query per
send; conversations change membership rarely.  Entries live ``ttl_s`` at most
(so a change made elsewhere is seen within that time) and the services that
change membership call ``invalidate``.  The store re-checks membership inside
the commit, so a stale entry can delay a push but never let an outsider write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parley.clock import Clock
from parley.messaging.ttlcache import TtlCache, per_tenant
from parley.store.conversations import ConversationStore

__all__ = ["ConvMembers", "MembershipCache"]


@dataclass(frozen=True, slots=True)
class ConvMembers:
    conv_id: int
    kind: str  # "direct" | "group"
    member_ids: tuple[int, ...]
    member_set: frozenset[int]

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.member_set


class MembershipCache:
    def __init__(
        self, conversations: ConversationStore, clock: Clock, *,
        max_entries: int = 100_000, ttl_s: float = 60.0,
    ) -> None:
        self._store = conversations
        self._entries: TtlCache[tuple[int, int], ConvMembers] = TtlCache(
            clock, ttl_s, max_entries, None, many=self._load_many,
        )
        self.listener: Callable[[int, int], None] | None = None
        """Told of every ``invalidate`` (the cluster tells the other nodes)."""

    async def get(self, tenant_id: int, conv_id: int) -> ConvMembers | None:
        """The conversation's members, or None if it does not exist in this tenant."""
        return await self._entries.load((tenant_id, conv_id))

    def fresh(self, tenant_id: int, conv_id: int) -> ConvMembers | None:
        """The cached members if fresh, without waiting (see ``TtlCache.fresh``)."""
        return self._entries.fresh((tenant_id, conv_id))

    def peek(self, tenant_id: int, conv_id: int) -> ConvMembers | None:
        """The cached entry if present and fresh; never loads."""
        return self._entries.get((tenant_id, conv_id))

    async def _load_many(
        self, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], ConvMembers | None]:
        """Several conversations in one read per tenant (a cold node's first sends)."""
        return await per_tenant(keys, self._read)

    async def _read(self, tenant_id: int, conv_ids: list[int]) -> dict[int, ConvMembers]:
        found = await self._store.kinds_and_members(tenant_id, conv_ids)
        return {conv_id: ConvMembers(conv_id, kind, tuple(ids), frozenset(ids))
                for conv_id, (kind, ids) in found.items()}

    def invalidate(self, tenant_id: int, conv_id: int) -> None:
        """The members changed: forget them here and tell the listener."""
        self._entries.pop((tenant_id, conv_id))
        if self.listener is not None:
            self.listener(tenant_id, conv_id)

    def drop(self, tenant_id: int, conv_id: int) -> None:
        """Forget one entry here only (another node changed the members)."""
        self._entries.pop((tenant_id, conv_id))

    def clear(self) -> None:
        self._entries.clear()

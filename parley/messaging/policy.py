"""Who may send where, beyond membership: blocks, the stranger policy, group mutes.

``SendPolicy.check`` runs on every send (WebSocket and HTTP) after the
membership check.  Its answers are cached per (tenant, sender, peer) for direct
conversations and per (tenant, conversation) for groups for ``ttl_s`` at most
(reloaded in the background before they expire, see ``TtlCache``); the HTTP
routes that change blocks, contacts or group rules call the ``invalidate_*``
methods, so a change on this node applies at once, and in a cluster the
listener tells the other nodes, which drop theirs at once too.  ``ttl_s`` only
bounds how long a change that reached no node's ``invalidate_*`` (a node cut
off when it was made) can go unseen, as for memberships.

The stranger policy is per tenant: the tenant's own setting when it has one
(cached per tenant the same way; ``invalidate_tenant`` after a change), else the
node's ``stranger_messages``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from parley.clock import Clock
from parley.errors import Forbidden
from parley.messaging.ttlcache import TtlCache, per_tenant
from parley.store.accounts import Tenant
from parley.store.social import DirectRule, GroupRules, SocialStore

__all__ = ["SendPolicy", "TenantSource"]

class TenantSource(Protocol):
    async def tenant(self, tenant_id: int) -> Tenant | None:
        """The tenant (with its policies), or None when there is no such tenant."""
        ...


class SendPolicy:
    def __init__(
        self, social: SocialStore, clock: Clock, *, stranger_messages: bool = True,
        tenants: TenantSource | None = None, ttl_s: float = 60.0, max_entries: int = 100_000,
    ) -> None:
        self.social = social
        self.stranger_messages = stranger_messages
        """The node's setting: applies to tenants that have none of their own."""
        self._tenants = tenants
        self.listener: Callable[[str, tuple[int, ...]], None] | None = None
        self._clock = clock
        self._strangers: TtlCache[int, bool] = TtlCache(
            clock, ttl_s, max_entries, self._load_strangers
        )
        self._direct: TtlCache[tuple[int, int, int], DirectRule] = TtlCache(
            clock, ttl_s, max_entries, None, many=self._load_direct_many,
        )
        self._groups: TtlCache[tuple[int, int], GroupRules] = TtlCache(
            clock, ttl_s, max_entries, None, many=self._load_groups_many,
        )

    async def direct_rule(self, tenant_id: int, sender: int, peer: int) -> DirectRule:
        rule = await self._direct.load((tenant_id, sender, peer))
        assert rule is not None
        return rule

    async def _load_direct_many(
        self, keys: Sequence[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int], DirectRule | None]:
        """Several (tenant, sender, peer) rules, one connection per tenant."""
        return await per_tenant(keys, self.social.direct_rules)

    async def _load_groups_many(
        self, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], GroupRules | None]:
        """Several groups' rules, one connection per tenant."""
        return await per_tenant(keys, self.social.group_rules)

    async def _load_strangers(self, tenant_id: int) -> bool:
        assert self._tenants is not None
        tenant = await self._tenants.tenant(tenant_id)
        own = tenant.stranger_messages if tenant is not None else None
        return self.stranger_messages if own is None else own

    async def strangers_allowed(self, tenant_id: int) -> bool:
        """The effective stranger policy of a tenant: its own setting, else the node's."""
        if self._tenants is None:
            return self.stranger_messages
        allowed = await self._strangers.load(tenant_id)
        assert allowed is not None
        return allowed

    def direct_allowed_now(self, tenant_id: int, sender: int, peer: int) -> bool:
        """True when the cached rules allow the message (no waiting); False when
        ``check_direct`` must decide -- a rule not cached, or a refusal to raise."""
        rule = self._direct.fresh((tenant_id, sender, peer))
        if rule is None or rule.blocked_by_peer:
            return False
        if rule.contacts:
            return True
        if self._tenants is None:
            return self.stranger_messages
        return self._strangers.fresh(tenant_id) is True

    async def check_direct(self, tenant_id: int, sender: int, peer: int) -> None:
        """Raise Forbidden when ``sender`` may not message ``peer`` directly."""
        rule = await self.direct_rule(tenant_id, sender, peer)
        if rule.blocked_by_peer:
            raise Forbidden("this user does not accept your messages")
        if not rule.contacts and not await self.strangers_allowed(tenant_id):
            raise Forbidden("only contacts may message each other in this tenant")

    def group_allowed_now(self, tenant_id: int, conv: int, sender: int) -> bool:
        """True when the cached group rules let ``sender`` post (no waiting); False
        when ``check_group`` must decide."""
        rules = self._groups.fresh((tenant_id, conv))
        if rules is None or (rules.all_muted and sender not in rules.privileged):
            return False
        return rules.muted_until.get(sender, 0) <= self._clock.now_ms()

    async def check_group(self, tenant_id: int, conv: int, sender: int) -> None:
        """Raise Forbidden when ``sender`` is muted in the group (or the whole group is)."""
        rules = await self._groups.load((tenant_id, conv))
        assert rules is not None
        if rules.all_muted and sender not in rules.privileged:
            raise Forbidden("the group is muted: only its owner and admins may send")
        until = rules.muted_until.get(sender, 0)
        if until > self._clock.now_ms():
            raise Forbidden(f"you are muted in this group until {until}")

    # Invalidation: ``invalidate_*`` forget here and tell the listener (the cluster
    # tells the other nodes, which call ``drop``); ``clear`` forgets everything.
    def invalidate_pair(self, tenant_id: int, a: int, b: int) -> None:
        self.drop("pair", (tenant_id, a, b))
        self._notify("pair", (tenant_id, a, b))

    def invalidate_group(self, tenant_id: int, conv: int) -> None:
        self.drop("group", (tenant_id, conv))
        self._notify("group", (tenant_id, conv))

    def invalidate_tenant(self, tenant_id: int) -> None:
        self.drop("tenant", (tenant_id,))
        self._notify("tenant", (tenant_id,))

    def drop(self, kind: str, key: tuple[int, ...]) -> None:
        if kind == "pair" and len(key) == 3:
            t, a, b = key
            self._direct.pop((t, a, b))
            self._direct.pop((t, b, a))
        elif kind == "group" and len(key) == 2:
            self._groups.pop((key[0], key[1]))
        elif kind == "tenant" and len(key) == 1:
            self._strangers.pop(key[0])

    def clear(self) -> None:
        self._direct.clear()
        self._groups.clear()
        self._strangers.clear()

    def _notify(self, kind: str, key: tuple[int, ...]) -> None:
        if self.listener is not None:
            self.listener(kind, key)

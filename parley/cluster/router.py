"""The Router seam across nodes: local devices through the ``LocalHub``, the rest
through the inter-node links, one record per node and call.

Which node serves a user comes from ``owner`` (the node's last copy of the slot
map), so delivery keeps working while raft has no leader.  Contract, on top of
the Router's (``parley.hub.router``):

* A message for users served elsewhere is forwarded once per node, holding only
  that node's users (group fan-out is grouped per node).  A forward that cannot
  be queued (link down, queue full) is dropped: the message is in the database,
  so the device gets it from its session's re-push or from sync.
* A node receiving a forward delivers to the local devices of the named users.
  A user with no device here whom this node's map places on a third node (the
  sender's map was older) is forwarded once more, never back to the sender.
* ``close_sessions`` reaches the node serving the user; cache invalidations are
  broadcast to every node (``Invalidate`` records applied by named handlers).
* When a link reports a gap or a restarted peer, ``on_resync`` runs: drop what
  this node keeps on other nodes' word (membership and policy caches, the
  revocation list is reloaded from the database).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from parley.cluster.forward import (
    CloseSessions,
    DeliverEvent,
    DeliverMessage,
    Forward,
    Invalidate,
    deliver_locally,
)
from parley.cluster.links import Links
from parley.hub.hub import LocalHub
from parley.hub.router import DeviceSink

__all__ = ["ClusterRouter"]

_log = logging.getLogger("parley.cluster.router")

CacheHandler = Callable[[tuple[int | str, ...]], None]


class ClusterRouter:
    """Implements ``Router`` and ``SocketCloser`` over the cluster; is the links' handler."""

    def __init__(self, hub: LocalHub, node_id: str, owner: Callable[[int], str | None]) -> None:
        self.hub = hub
        self.node_id = node_id
        self.owner = owner
        """The node id serving a user, or None when the map does not know (deliver here)."""
        self.links: Links | None = None
        self.caches: dict[str, CacheHandler] = {}
        self.on_resync: Callable[[str], None] | None = None
        self.on_up: Callable[[str], None] | None = None
        self.forwarded = 0
        self.dropped = 0
        self.reforwarded = 0

    # -- Router ------------------------------------------------------------------------
    def _split(self, user_ids: Iterable[int]) -> tuple[list[int], dict[str, list[int]]]:
        local: list[int] = []
        remote: dict[str, list[int]] = {}
        me, owner = self.node_id, self.owner
        for uid in user_ids:
            node = owner(uid)
            if node is None or node == me:
                local.append(uid)
            else:
                remote.setdefault(node, []).append(uid)
        return local, remote

    def _send(self, node: str, fwd: Forward) -> None:
        links = self.links
        if links is not None and links.send(node, fwd):
            self.forwarded += 1
        else:
            self.dropped += 1

    def deliver_message(
        self, tenant_id: int, user_ids: Iterable[int], conv: int, seq: int, frame: bytes
    ) -> int:
        local, remote = self._split(user_ids)
        n = self.hub.deliver_message(tenant_id, local, conv, seq, frame) if local else 0
        for node, uids in remote.items():
            self._send(node, DeliverMessage(tenant_id, tuple(uids), conv, seq, frame))
        return n

    def deliver_event(
        self, tenant_id: int, user_ids: Iterable[int], frame: bytes,
        skip: DeviceSink | None = None,
    ) -> int:
        local, remote = self._split(user_ids)
        n = self.hub.deliver_event(tenant_id, local, frame, skip) if local else 0
        if remote:
            skipped = None if skip is None else (skip.user_id, skip.device_id)
            for node, uids in remote.items():
                self._send(node, DeliverEvent(tenant_id, tuple(uids), frame, skipped))
        return n

    # -- SocketCloser ------------------------------------------------------------------
    def close_sessions(
        self, tenant_id: int, user_id: int, code: int, reason: str,
        session_id: str | None = None, device_id: str | None = None,
    ) -> int:
        n = self.hub.close_sessions(tenant_id, user_id, code, reason, session_id, device_id)
        node = self.owner(user_id)
        if node is not None and node != self.node_id:
            self._send(node, CloseSessions(tenant_id, user_id, code, reason, session_id,
                                           device_id))
        return n

    # -- caches ------------------------------------------------------------------------
    def invalidate(self, cache: str, *key: int | str) -> None:
        """Tell every other node to drop ``key`` from its cache named ``cache``."""
        links = self.links
        if links is not None:
            links.broadcast(Invalidate(cache, (key,)))

    # -- LinkHandler -------------------------------------------------------------------
    def on_forwards(self, peer: str, forwards: list[Forward]) -> None:
        hub = self.hub
        for fwd in forwards:
            kind = type(fwd)
            if kind is DeliverMessage or kind is DeliverEvent:
                assert isinstance(fwd, DeliverMessage | DeliverEvent)
                self._deliver_forwarded(peer, fwd)
            elif kind is Invalidate:
                assert isinstance(fwd, Invalidate)
                handler = self.caches.get(fwd.cache)
                if handler is None:
                    _log.warning("invalidation for unknown cache %r from %s", fwd.cache, peer)
                    continue
                for key in fwd.keys:
                    handler(key)
            else:
                deliver_locally(hub, fwd)

    def _deliver_forwarded(self, peer: str, fwd: DeliverMessage | DeliverEvent) -> None:
        """Deliver here; users this node does not serve and holds no device of go on to
        the node this node's map names (once: never back to ``peer``)."""
        hub, me, owner = self.hub, self.node_id, self.owner
        here: list[int] = []
        onward: dict[str, list[int]] = {}
        for uid in fwd.user_ids:
            node = owner(uid)
            if node is None or node in (me, peer) or hub.is_online(fwd.tenant_id, uid):
                here.append(uid)
            else:
                onward.setdefault(node, []).append(uid)
        if len(here) == len(fwd.user_ids):
            deliver_locally(hub, fwd)
            return
        if here:
            deliver_locally(hub, _with_users(fwd, tuple(here)))
        for node, uids in onward.items():
            self.reforwarded += 1
            self._send(node, _with_users(fwd, tuple(uids)))

    def on_gap(self, peer: str, restarted: bool) -> None:
        _log.info("link from %s %s: resyncing caches", peer,
                  "restarted" if restarted else "lost records")
        if self.on_resync is not None:
            self.on_resync(peer)

    def on_peer_up(self, peer: str, instance: str, restarted: bool) -> None:
        _log.info("link to %s up%s", peer, " (peer restarted)" if restarted else "")
        if self.on_up is not None:
            self.on_up(peer)

    def on_peer_down(self, peer: str) -> None:
        _log.info("link to %s down", peer)


def _with_users(fwd: DeliverMessage | DeliverEvent, users: tuple[int, ...]
                ) -> DeliverMessage | DeliverEvent:
    if isinstance(fwd, DeliverMessage):
        return DeliverMessage(fwd.tenant_id, users, fwd.conv, fwd.seq, fwd.frame)
    return DeliverEvent(fwd.tenant_id, users, fwd.frame, fwd.skip)

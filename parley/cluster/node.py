"""A node's cluster side, wired by the composition root (``parley.server``).

Owns the three cluster parts of one node and connects them to the rest:

* ``ClusterMembership`` (raft): the node list and the slot map;
* ``Links``: authenticated connections to every other node;
* ``ClusterRouter``: the Router seam over both (the messaging service and the
  session service push and close through it).

On every new view it points the links at the current nodes and, when the slot
map changed, sends the sessions of users this node no longer serves to their
new node (``WebSocketFront.evict_moved``).  Cache invalidations and revocations
made here are broadcast; a link gap or a restarted peer drops the caches and
reloads the revocation list from the database.

Graceful stop drains the node first (its slots move to the others, its clients
are redirected there), so a rolling restart moves users instead of cutting
them off; a restarted node asks for slots again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from parley.auth.sessions import RevocationList, SessionService
from parley.cluster.links import Links
from parley.cluster.membership import ClusterConfig, ClusterMembership, ClusterView
from parley.cluster.router import ClusterRouter
from parley.cluster.slots import SLOTS, slot_of_user
from parley.config import Settings, split_addr
from parley.errors import ConfigError, ParleyError
from parley.hub.hub import LocalHub
from parley.messaging.service import MessagingService
from parley.messaging.wsfront import WebSocketFront

__all__ = ["ClusterNode"]

_log = logging.getLogger("parley.cluster")

_SERVING = frozenset({"active", "draining", "joining"})


class ClusterNode:
    def __init__(self, settings: Settings, hub: LocalHub,
                 registry: CollectorRegistry | None = None) -> None:
        if settings.cluster_secret is None:
            raise ConfigError(
                "cluster_secret is required with cluster_peers: every node of a cluster needs "
                "the same secret (at least 16 characters) to authenticate raft and links"
            )
        self.settings = settings
        self.node_id = settings.effective_node_id
        self.secret = settings.cluster_secret.get_secret_value()
        self.router = ClusterRouter(hub, self.node_id, self._owner)
        self.router.on_up = self.on_peer_up
        self.hub = hub
        self.membership: ClusterMembership | None = None
        self.links: Links | None = None
        self.front: WebSocketFront | None = None
        self.revocation_source: SessionService | None = None
        self._view: ClusterView | None = None
        self._epoch = -1
        self._unsubscribe: Any = None
        self._fenced_out = False
        self._draining = False
        self._reactivating = False
        self._escape_url: str | None = None
        self._quorum_timer: asyncio.TimerHandle | None = None
        self.db_ping: Callable[[], Awaitable[None]] | None = None
        if registry is not None:
            registry.register(ClusterCollector(self))

    # -- placement (hot path: no locks, no awaits) ---------------------------------------
    def _owner(self, user_id: int) -> str | None:
        view = self._view
        if view is None:
            return None
        return view.replica.slots.owner(slot_of_user(user_id))

    def placement(self, user_id: int) -> str | None:
        """The URL of the node serving ``user_id``, or None to serve here.

        Here: this node owns the user's slot, or the map does not know, or the
        owner is dead or unreachable from here (until the leader moves its slots,
        the devices are better served here than refused; they are sent on when
        the owner's link comes back or the map changes).  A node that has lost
        its quorum for longer than ``cluster_dead_after_s`` keeps nobody: the
        majority has taken its slots over, so it sends every user to a node of
        the majority."""
        view = self._view
        if view is None:
            return None
        if self._fenced_out:
            return self._escape_url
        owner = view.replica.slots.owner(slot_of_user(user_id))
        if owner is None or owner == self.node_id:
            return None
        info = view.nodes.get(owner)
        if info is None or info.state not in _SERVING:
            return None
        links = self.links
        if links is not None and not links.is_up(owner):
            return None
        return info.ws_url

    def route(self, user_id: int) -> dict[str, str]:
        """Where ``user_id`` is served, for ``GET /api/v1/route``."""
        view = self._view
        owner = self._owner(user_id) or self.node_id
        info = None if view is None else view.nodes.get(owner)
        if info is None or info.state not in _SERVING:
            info = None if view is None else view.nodes.get(self.node_id)
        if info is None:
            return {"node": self.node_id, "ws_url": "", "http_url": ""}
        return {"node": info.id, "ws_url": info.ws_url, "http_url": info.http_url}

    def slot_map(self) -> dict[str, Any]:
        """The slot map as this node sees it, for ``GET /api/v1/route/map``: the
        epoch, every node (id, state, public URLs) and the assigned slots as runs
        ``(first, last, node_id)`` in slot order (unassigned slots are left out)."""
        view = self._view
        if view is None:
            return {"epoch": 0, "nodes": [], "ranges": []}
        ranges = view.replica.slots.ranges()
        nodes = [{"id": n.id, "state": n.state, "ws_url": n.ws_url, "http_url": n.http_url}
                 for n in view.nodes.values()]
        return {"epoch": view.epoch, "nodes": nodes, "ranges": ranges}

    # -- wiring --------------------------------------------------------------------------
    def attach(self, service: MessagingService, sessions: SessionService,
               revocations: RevocationList, front: WebSocketFront) -> None:
        """Connect the node's caches and front to the cluster (before ``start``)."""
        router = self.router
        self.front = front
        self.revocation_source = sessions
        front.placement = self.placement

        service.members.listener = lambda t, c: router.invalidate("members", t, c)
        router.caches["members"] = lambda key: service.members.drop(int(key[0]), int(key[1]))
        policy = service.policy
        if policy is not None:
            policy.listener = lambda kind, key: router.invalidate("policy", kind, *key)
            router.caches["policy"] = lambda key: policy.drop(
                str(key[0]), tuple(int(k) for k in key[1:])
            )
        sessions.on_revoked = lambda sid, at: router.invalidate("revoked", sid, at)
        router.caches["revoked"] = lambda key: revocations.add(str(key[0]), int(key[1]))

        def resync(peer: str) -> None:
            service.members.clear()
            if policy is not None:
                policy.clear()
            task = asyncio.get_running_loop().create_task(sessions.load_revocations())
            task.add_done_callback(_log_failure)

        router.on_resync = resync

    async def start(self, http_port: int, ws_port: int) -> None:
        s = self.settings
        config = ClusterConfig(
            node_id=self.node_id, raft_addr=s.effective_raft_addr,
            voters=tuple(s.cluster_peers), secret=self.secret,
            http_url=s.public_http(http_port), ws_url=s.public_ws(ws_port),
            link_addr=s.effective_link_addr, data_dir=s.data_dir,
            dead_after_s=s.cluster_dead_after_s,
        )
        try:
            link_host, link_port = split_addr(s.effective_link_addr)
        except ValueError as exc:
            raise ConfigError(f"link_addr: {exc}") from None
        self.links = Links(self.node_id, self.secret.encode(), (link_host, link_port),
                           self.router)
        await self.links.start()
        self.router.links = self.links
        self.membership = ClusterMembership(config)
        await asyncio.to_thread(self.membership.start)
        self._unsubscribe = self.membership.on_change(self._on_view)
        self._on_view(self.membership.snapshot())

    def _evict(self, why: str) -> None:
        if self.front is not None:
            moved = self.front.evict_moved()
            if moved:
                _log.info("%s: %d sessions sent to other nodes", why, moved)

    def _watch_quorum(self, view: ClusterView) -> None:
        """Start (or cancel) the clock after which a node without quorum steps aside."""
        if view.has_quorum or len(view.nodes) < 2:
            if self._quorum_timer is not None:
                self._quorum_timer.cancel()
                self._quorum_timer = None
            if self._fenced_out:
                self._fenced_out = False
                _log.info("quorum regained: serving users again")
            return
        if self._quorum_timer is None and not self._fenced_out:
            self._quorum_timer = asyncio.get_running_loop().call_later(
                self.settings.cluster_dead_after_s, self._step_aside
            )

    def _step_aside(self) -> None:
        self._quorum_timer = None
        task = asyncio.get_running_loop().create_task(self._maybe_step_aside())
        task.add_done_callback(_log_failure)

    async def _maybe_step_aside(self) -> None:
        """No quorum for ``cluster_dead_after_s``.  If the database answers, keep
        serving: messages need the database, not raft, and the other nodes may be
        dead rather than cut off.  If it does not either, this node is the cut-off
        side: the majority has taken its users over, so send them there."""
        view = self._view
        if view is None or view.has_quorum or self.db_ping is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await self.db_ping()
        except Exception:  # noqa: BLE001 - any failure means "unreachable"
            reachable = False
        else:
            reachable = True
        view = self._view
        if view is None or view.has_quorum:
            return
        if reachable:  # look again later
            self._watch_quorum(view)
            return
        others = [n for n in view.nodes.values()
                  if n.id != self.node_id and n.state in _SERVING and n.ws_url]
        if not others:
            return
        self._fenced_out = True
        self._escape_url = others[0].ws_url
        _log.warning("no quorum and no database for %.0f s: sending every user to the "
                     "other nodes", self.settings.cluster_dead_after_s)
        self._evict("cut off")

    def on_peer_up(self, peer: str) -> None:
        """A node is reachable again: its users served here meanwhile go back to it."""
        self._evict(f"{peer} reachable again")

    def _on_view(self, view: ClusterView) -> None:
        self._view = view
        self._watch_quorum(view)
        me = view.nodes.get(self.node_id)
        if (me is not None and me.state == "draining" and not self._draining
                and not self._reactivating and self.membership is not None):
            # Drained before a restart (a graceful stop): take slots again.
            self._reactivating = True
            task = asyncio.get_running_loop().create_task(self._reactivate())
            task.add_done_callback(_log_failure)
        links = self.links
        if links is not None:
            peers = {}
            for node_id, info in view.nodes.items():
                if node_id == self.node_id or info.state == "dead" or not info.link_addr:
                    continue
                with contextlib.suppress(ValueError):
                    peers[node_id] = split_addr(info.link_addr)
            links.set_peers(peers)
        if view.epoch != self._epoch:
            self._epoch = view.epoch
            self._evict(f"slot map epoch {view.epoch}")

    async def _reactivate(self) -> None:
        try:
            membership = self.membership
            if membership is not None and not self._draining:
                await membership.set_active(self.node_id)
                _log.info("drained before the restart: active again")
        except ParleyError as exc:  # no quorum now: the next view retries
            # Right after a restart the raft has not heard from the leader yet
            # (every graceful restart, a fraction of a second): not worth a warning.
            _log.log(logging.INFO if "missing_leader" in exc.message else logging.WARNING,
                     "cannot become active again yet: %s", exc.message)
        finally:
            self._reactivating = False

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Move this node's users to the other nodes (before a graceful stop).
        True when the map no longer gives this node any slot."""
        self._draining = True
        membership = self.membership
        if membership is None or len(membership.snapshot().nodes) < 2:
            return False
        try:
            await membership.drain(self.node_id)
        except ParleyError as exc:
            _log.warning("cannot drain before stopping: %s", exc.message)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            view = membership.snapshot()
            if not view.replica.slots.slots_of(self.node_id):
                self._on_view(view)
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        if self._quorum_timer is not None:
            self._quorum_timer.cancel()
            self._quorum_timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.membership is not None:
            await asyncio.to_thread(self.membership.stop)
            self.membership = None
        if self.links is not None:
            await self.links.stop()
            self.links = None
        self.router.links = None

    def readiness(self) -> str:
        """``"ok"`` once this node knows a slot map that places every user, else why not.

        Until then the node serves whoever connects and sends them on when the map
        arrives: a load balancer or a load client that waits for this check places
        clients once instead of twice.  A known map stays known (a partition or a
        lost leader does not make the node unready)."""
        view = self._view
        if view is None:
            return "no slot map yet"
        unassigned = view.replica.slots.unassigned()
        if unassigned:
            return f"slot map incomplete ({unassigned} of {SLOTS} slots unassigned)"
        return "ok"

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            self.membership.status() if self.membership is not None else {"self": self.node_id}
        )
        out["sessions"] = self.hub.session_count
        out["router"] = {"forwarded": self.router.forwarded, "dropped": self.router.dropped,
                         "reforwarded": self.router.reforwarded}
        if self.links is not None:
            st = self.links.stats()
            out["links"] = {
                p.node_id: {"state": p.state, "sent": p.sent, "received": p.received,
                            "dropped": p.dropped_down + p.dropped_full + p.dropped_too_big}
                for p in st.peers.values()
            }
        return out


class ClusterCollector(Collector):
    """``parley_cluster_*``: the cluster as this node sees it, read at scrape time."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        return []  # values come and go with the cluster's members

    def collect(self) -> Iterator[Metric]:
        node = self.node
        membership = node.membership
        if membership is None:
            return
        view = membership.snapshot()
        counts = view.slots_per_node()
        yield GaugeMetricFamily("parley_cluster_is_leader",
                                "1 if this node leads the cluster (fenced).",
                                value=1 if view.is_leader else 0)
        yield GaugeMetricFamily("parley_cluster_has_quorum",
                                "1 if this node's raft side has a quorum.",
                                value=1 if view.has_quorum else 0)
        yield GaugeMetricFamily("parley_cluster_raft_term", "Current raft term.",
                                value=view.raft_term)
        yield GaugeMetricFamily("parley_cluster_epoch", "Slot map epoch.", value=view.epoch)
        yield GaugeMetricFamily("parley_cluster_fencing_token", "Fencing token of the leader.",
                                value=view.fencing_token)
        states = GaugeMetricFamily("parley_cluster_nodes", "Cluster members by state.",
                                   labels=["state"])
        by_state: dict[str, int] = {}
        for info in view.nodes.values():
            by_state[info.state] = by_state.get(info.state, 0) + 1
        for state in ("joining", "active", "draining", "leaving", "dead"):
            states.add_metric([state], by_state.get(state, 0))
        yield states
        slots = GaugeMetricFamily("parley_cluster_slots", "Hash slots owned, per node.",
                                  labels=["node"])
        for node_id in view.nodes:
            slots.add_metric([node_id], counts.get(node_id, 0))
        yield slots
        yield GaugeMetricFamily("parley_cluster_sessions", "WebSocket sessions on this node.",
                                value=node.hub.session_count)
        routed = CounterMetricFamily("parley_cluster_forwards",
                                     "Records this node's router forwarded to other nodes, "
                                     "by outcome.", labels=["outcome"])
        routed.add_metric(["queued"], node.router.forwarded)
        routed.add_metric(["dropped"], node.router.dropped)
        routed.add_metric(["reforwarded"], node.router.reforwarded)
        yield routed
        links = node.links
        if links is not None:
            stats = links.stats()
            up = GaugeMetricFamily("parley_cluster_link_up", "1 while the link to a peer is up.",
                                   labels=["peer"])
            sent = CounterMetricFamily("parley_cluster_link_records",
                                       "Records over inter-node links.",
                                       labels=["peer", "direction"])
            dropped = CounterMetricFamily("parley_cluster_link_dropped",
                                          "Records dropped by a link, by reason.",
                                          labels=["peer", "reason"])
            for p in stats.peers.values():
                up.add_metric([p.node_id], 1 if p.state == "up" else 0)
                sent.add_metric([p.node_id, "out"], p.sent)
                sent.add_metric([p.node_id, "in"], p.received)
                dropped.add_metric([p.node_id, "down"], p.dropped_down)
                dropped.add_metric([p.node_id, "full"], p.dropped_full)
                dropped.add_metric([p.node_id, "too_big"], p.dropped_too_big)
                dropped.add_metric([p.node_id, "discarded"], p.discarded)
            yield up
            yield sent
            yield dropped


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("cluster resync failed: %r", task.exception())

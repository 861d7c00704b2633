"""Scenario shapes: which users exist, who sends where, who must receive what.

* ``connect``: ``connections`` users, nobody sends.
* ``chat``: ``users`` (even) in 1:1 pairs (2k, 2k+1); both send into their
  direct conversation; each message has one receiver (the peer).
* ``group``: ``groups`` disjoint groups of ``members``; the first ``senders``
  members of each group send; each message has ``members - 1`` receivers.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.bench.targets import Provisioned, Topology
from parley.bench.worker import UserSpec

__all__ = ["Shape", "chat_shape", "connect_shape", "group_shape", "user_specs"]


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str
    topology: Topology
    sends: dict[int, tuple[str, int]]
    """sender -> (("direct" | "group"), slot index); resolved after provisioning."""
    receivers: dict[int, tuple[int, ...]]
    """sender -> the users that must receive each of its messages."""

    @property
    def senders(self) -> int:
        return len(self.sends)


def connect_shape(run_id: str, connections: int) -> Shape:
    return Shape("connect", Topology(run_id, connections), {}, {})


def chat_shape(run_id: str, users: int) -> Shape:
    pairs = tuple((2 * k, 2 * k + 1) for k in range(users // 2))
    sends = {u: ("direct", k) for k, pair in enumerate(pairs) for u in pair}
    receivers: dict[int, tuple[int, ...]] = {a: (b,) for a, b in pairs}
    receivers.update({b: (a,) for a, b in pairs})
    return Shape("chat", Topology(run_id, users, directs=pairs), sends, receivers)


def group_shape(run_id: str, groups: int, members: int, senders: int) -> Shape:
    gs = tuple(tuple(range(g * members, (g + 1) * members)) for g in range(groups))
    sends: dict[int, tuple[str, int]] = {}
    receivers: dict[int, tuple[int, ...]] = {}
    for g, ms in enumerate(gs):
        for s in ms[:senders]:
            sends[s] = ("group", g)
            receivers[s] = tuple(m for m in ms if m != s)
    return Shape("group", Topology(run_id, groups * members, groups=gs), sends, receivers)


def user_specs(shape: Shape, prov: Provisioned) -> list[UserSpec]:
    """One spec per user, in user order; user ``i`` connects to ``user_urls[i]`` when
    the target placed its users, else to ``urls[i % len(urls)]``."""
    out = []
    placed = prov.user_urls
    for i in range(shape.topology.users):
        conv = None
        fanout = 0
        if i in shape.sends:
            kind, slot = shape.sends[i]
            conv = prov.directs[slot] if kind == "direct" else prov.groups[slot]
            fanout = len(shape.receivers[i])
        url = placed[i] if placed else prov.urls[i % len(prov.urls)]
        out.append(UserSpec(i, prov.credentials[i], url, conv, fanout))
    return out

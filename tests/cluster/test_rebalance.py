"""Issue #6's rebalancing, end to end: a node joins, then drains, under a checked load.

"When a node joins, drains, leaves or dies, the map changes minimally; only the
moved slots' sessions reconnect, and their devices resume by sync with nothing
lost."  Three nodes on PostgreSQL (a fresh schema, reached through the harness's
proxy) carry the checker's pairs; a fourth node (planned by the harness as a
spare, so a non-voter) joins, then stops gracefully (SIGTERM: it drains first).
After each change:

* the slot counts (``/cluster/status``): the joiner takes 16384/4 slots, every
  old node ends with its new share (so each gave ~1/3 of the joiner's share);
  after the drain the three hold 16384/3 (±1) again and the fourth none;
* the map per user: ``/api/v1/route`` with each user's token gives the owner of
  ``slot_of_user(user_id)`` in the node's map.  On the join, the only users whose
  owner changed are now on the joiner (nothing moved between old nodes); on the
  drain, the users whose owner changed are exactly the joiner's;
* the sessions: the clients that reconnected (SDK ``stats.reconnects``) are
  exactly the moved users', once each, after a ``moved`` redirect (close 4010:
  the drain sent them on, the node's shutdown did not cut them off), and every
  client ends connected to its owner (its ``_life._url``);
* the checker: nothing lost, duplicated, reordered or unexpected, no message id
  with two seqs, no false ack, every send acknowledged.

The load periods are the scenario's durations; every other wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley.client import ParleyClient
from parley.cluster.chaos import Cluster, Counts, NodeSet, http_get
from parley.cluster.slots import SLOTS, slot_of_user
from parley.protocol import CloseCode
from tests.cluster.test_faults import assert_safe
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema
from tests.waiting import until

pytestmark = pytest.mark.pg

JOINER = 3  # the spare node's index: node-4


@dataclass(frozen=True, slots=True)
class Placed:
    """One checker client at one moment."""

    user: int
    owner: str  # the map's node for slot_of_user(user), as /api/v1/route answers it
    on: str  # the node its connection is to
    reconnects: int
    last_close: int  # close code of its last connection that ended (0: none yet)


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    schema = await new_pg_schema("rebal_")
    try:
        async with Cluster(PG_DSN, tmp_path / "cluster", schema=schema, rate=400.0, pairs=40,
                           spare=1) as c:
            yield c
    finally:
        await drop_pg_schema(schema)


def clients(c: Cluster) -> list[ParleyClient]:
    assert c.checker is not None
    return c.checker.senders + c.checker.receivers


def tokens(c: Cluster) -> list[str]:
    assert c.checker is not None
    n = c.checker.pairs
    creds = c.checker.credentials  # sender 2p, receiver 2p+1, in clients() order
    return [creds[2 * p] for p in range(n)] + [creds[2 * p + 1] for p in range(n)]


def node_of(nodes: NodeSet, client: ParleyClient) -> str:
    url = client._life._url.split("?")[0]
    return next((n.node_id for n in nodes.nodes if n.ws_url == url), url)


async def slot_counts(nodes: NodeSet) -> dict[str, int]:
    st = await nodes.status(0)
    assert st is not None and st["slots_unassigned"] == 0, st
    return {n["id"]: n["slots"] for n in st["nodes"]}


async def owners(nodes: NodeSet, creds: list[str]) -> list[str]:
    """Each user's node in node-1's map (the map has converged: every node agrees)."""
    out = []
    for token in creds:
        code, body = await http_get(nodes.nodes[0].http_url + "/api/v1/route",
                                    {"Authorization": f"Bearer {token}"})
        assert code == 200, body
        out.append(str(json.loads(body)["node"]))
    return out


async def placed(c: Cluster) -> list[Placed]:
    """Every client connected to its user's node (polled), then where each one is."""
    assert c.nodes is not None
    nodes, cs = c.nodes, clients(c)
    want = await owners(nodes, tokens(c))
    pairs = list(zip(cs, want, strict=True))
    await until(lambda: all(x.connected and node_of(nodes, x) == w for x, w in pairs),
                15, "every client connected to its user's node")
    return [Placed(x.user_id, w, node_of(nodes, x), x.stats.reconnects,
                   x.last_close[0] if x.last_close is not None else 0)
            for x, w in pairs]


def moved(before: list[Placed], after: list[Placed]) -> set[int]:
    """The clients whose user's node changed in the map."""
    return {i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b.owner != a.owner}


def reconnected(before: list[Placed], after: list[Placed]) -> dict[int, int]:
    """The clients that reconnected in between: how many times."""
    return {i: a.reconnects - b.reconnects
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            if a.reconnects != b.reconnects}


def assert_per_slot(snapshot: list[Placed]) -> None:
    """Users placed by slot: two users of one slot (CRC16 of the id) have one owner."""
    by_slot: dict[int, set[str]] = {}
    for p in snapshot:
        by_slot.setdefault(slot_of_user(p.user), set()).add(p.owner)
    assert all(len(o) == 1 for o in by_slot.values()), by_slot


def assert_all_acked_and_safe(counts: Counts) -> None:
    assert_safe(counts)
    assert counts.acked == counts.sent, counts


@pytest.mark.timeout(150)
async def test_a_node_joins_then_drains_under_load(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        assert c.nodes is not None and c.checker is not None
        nodes = c.nodes
        joiner = nodes.nodes[JOINER].node_id
        old = [n.node_id for n in nodes.nodes[:JOINER]]
        slots0 = await slot_counts(nodes)
        at0 = await placed(c)

        c.checker.start_load()
        await asyncio.sleep(2.0)  # load before the join (part of the scenario)
        await nodes.start(JOINER)
        await nodes.wait_converged(deadline_s=30)
        slots1 = await slot_counts(nodes)
        await asyncio.sleep(2.0)  # load on four nodes (part of the scenario)
        at1 = await placed(c)

        code = await nodes.stop(JOINER)  # SIGTERM: drains, then stops
        await nodes.wait_converged(range(JOINER), 30, gone=JOINER)
        slots2 = await slot_counts(nodes)
        await asyncio.sleep(2.0)  # load after the drain (part of the scenario)
        at2 = await placed(c)
        counts = await c.finish()
        print(f"\nrebalance: {counts.as_dict()} slots {slots0} -> {slots1} -> {slots2}")

    # The join: the joiner's share, taken from each old node down to its new share.
    share3, share4 = SLOTS // 3, SLOTS // 4
    assert set(slots0) == set(old) and all(share3 <= slots0[n] <= share3 + 1 for n in old)
    assert slots1 == dict.fromkeys([*old, joiner], share4), slots1
    # The map per user: only users now on the joiner moved; nothing between old nodes.
    moved1 = moved(at0, at1)
    assert moved1, "no user moved to the joiner (80 users: improbable)"
    assert all(at1[i].owner == joiner for i in moved1), [(at0[i], at1[i]) for i in moved1]
    assert all(p.owner in old for p in at0)
    assert_per_slot(at0)
    assert_per_slot(at1)
    # The sessions: exactly the moved users' clients reconnected, once each.
    rc1 = reconnected(at0, at1)
    assert set(rc1) == moved1, {"reconnected": rc1, "moved": sorted(moved1)}
    assert set(rc1.values()) == {1}, rc1
    assert all(at1[i].last_close == CloseCode.MOVED for i in moved1), at1  # redirected

    # The drain: the joiner's users go back to the old nodes, nobody else moves.
    assert code == 0
    assert slots2[joiner] == 0, slots2
    assert all(share3 <= slots2[n] <= share3 + 1 for n in old), slots2
    assert sum(slots2.values()) == SLOTS
    moved2 = moved(at1, at2)
    assert moved2 == {i for i, p in enumerate(at1) if p.owner == joiner}
    assert all(at2[i].owner in old for i in moved2)
    assert_per_slot(at2)
    rc2 = reconnected(at1, at2)
    assert set(rc2) == moved2, {"reconnected": rc2, "moved": sorted(moved2)}
    assert set(rc2.values()) == {1}, rc2
    assert all(at2[i].last_close == CloseCode.MOVED for i in moved2), at2  # drained, not cut

    assert_all_acked_and_safe(counts)

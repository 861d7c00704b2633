"""A cluster node is ready only once it knows where every user is served.

``/readyz`` in a cluster adds the ``cluster`` check: a node whose slot map is
missing or incomplete serves whoever connects and sends them on when the map
arrives, so a load balancer (or ``parley bench``) that sent clients to it would
have them placed twice.  One voter of three alone can never form a map (no
quorum): it must answer 503 with that check failing, for as long as it is alone;
once the other two voters start, all three answer 200 and the map is complete.
``parley bench``, started beside a forming cluster, waits for that complete map
before it places users (instead of spreading them and having them redirected).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest

from parley.bench.parley_target import fetch_slot_map, place_users
from parley.cluster.chaos import NodeSet, http_get
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema

pytestmark = pytest.mark.pg


async def _ready(nodes: NodeSet, i: int) -> tuple[int, dict[str, str]]:
    status, body = await http_get(nodes.nodes[i].http_url + "/readyz", timeout=2.0)
    doc = json.loads(body)
    checks = doc.get("checks") or {d["check"]: d["status"] for d in doc.get("details", [])}
    return status, checks


async def test_a_node_without_a_complete_slot_map_is_not_ready(tmp_path: Path) -> None:
    schema = await new_pg_schema("ready_")
    nodes = NodeSet(3, PG_DSN, tmp_path / "cluster", schema=schema)
    try:
        await nodes.start(0, wait=False)
        deadline = time.monotonic() + 60
        while True:  # polled: nothing announces that the node has migrated and answers
            assert time.monotonic() < deadline, "node-1 did not answer /readyz with its schema"
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, checks = await _ready(nodes, 0)
                if checks.get("schema") == "ok":
                    break
            await asyncio.sleep(0.1)
        assert status == 503 and checks["database"] == "ok", checks
        alone = ("no slot map yet", "slot map incomplete (16384 of 16384 slots unassigned)")
        assert checks["cluster"] in alone, checks

        # The bench, asked for the map now, gets the incomplete one after its wait...
        ws = [n.ws_url for n in nodes.nodes]
        early = await asyncio.to_thread(fetch_slot_map, ws[:1], wait_s=0.5, poll_s=0.1)
        assert early is not None and early["ranges"] == [], early
        # ...and, given the time, the complete one the cluster forms meanwhile.
        waiting = asyncio.ensure_future(asyncio.to_thread(fetch_slot_map, ws, wait_s=60))
        await nodes.start(1, wait=False)
        await nodes.start(2, wait=False)
        placed = await waiting
        assert placed is not None
        by_node = place_users(ws, list(range(1, 301)), placed)
        assert by_node[1] == 300, "every user placed by the map"
        for i in range(3):
            await nodes.wait_ready(i)
            status, checks = await _ready(nodes, i)
            assert status == 200 and checks["cluster"] == "ok", checks
        _, body = await http_get(nodes.nodes[0].http_url + "/api/v1/route/map", timeout=2.0)
        ranges = json.loads(body)["ranges"]
        assert sum(last - first + 1 for first, last, _ in ranges) == 16384
    finally:
        await nodes.close()
        await drop_pg_schema(schema)

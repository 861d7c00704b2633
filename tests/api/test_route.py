"""/route and /route/map on a single node: the node serves everyone."""

from __future__ import annotations

import httpx

from parley.cluster.slots import SLOTS
from tests.api.conftest import bearer
from tests.e2e.conftest import World


async def test_slot_map_of_a_single_node_is_public_and_whole(
    world: World, http: httpx.AsyncClient
) -> None:
    r = await http.get("/api/v1/route/map")  # no token: the map is public
    assert r.status_code == 200, r.text
    body = r.json()
    node = world.node.settings.effective_node_id
    assert body == {
        "epoch": 0,
        "nodes": [{"id": node, "state": "active", "ws_url": world.ws_url,
                   "http_url": world.http_url}],
        "ranges": [[0, SLOTS - 1, node]],
    }
    # The same node /route gives a user.
    alice = await world.user("alice")
    route = (await http.get("/api/v1/route", headers=bearer(world.token(alice)))).json()
    assert (route["node"], route["ws_url"]) == (node, world.ws_url)


async def test_slot_map_refuses_unknown_query_parameters(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/v1/route/map", params={"epoch": "1"})
    assert r.status_code == 422, r.text

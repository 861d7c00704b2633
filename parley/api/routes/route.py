"""HTTP route: which node serves a WebSocket (``/route``, ``/route/map``).

In a cluster every user is served by one node (its slot's owner); a client may
ask here before connecting instead of being redirected by the first node it
reaches.  ``/route`` answers for the caller; ``/route/map`` gives the whole
slot map (public, as Redis Cluster's ``CLUSTER SLOTS``: the map and the nodes'
public URLs are no secret) so a load client or a proxy can place many users at
once.  On a single node the answer is that node.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from parley.api.deps import CurrentCaller, Services
from parley.api.routes._common import ERRORS, STRICT_QUERY

__all__ = ["router"]

router = APIRouter(prefix="/route", tags=["cluster"], responses=ERRORS, dependencies=STRICT_QUERY)


class Route(BaseModel):
    node: str = Field(description="Id of the node serving the caller.")
    ws_url: str = Field(description="WebSocket URL to connect to (add ?device=...).")
    http_url: str = Field(description="HTTP base URL of that node.")


class MapNode(BaseModel):
    id: str = Field(description="Node id.", examples=["node-1"])
    state: str = Field(description="joining, active, draining, leaving or dead.",
                       examples=["active"])
    ws_url: str = Field(description="The node's public WebSocket URL.",
                        examples=["ws://127.0.0.1:8701/v1/ws"])
    http_url: str = Field(description="The node's public HTTP base URL.",
                          examples=["http://127.0.0.1:8700"])


class SlotMap(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "epoch": 3, "nodes": [
            {"id": "node-1", "state": "active", "ws_url": "ws://127.0.0.1:8701/v1/ws",
             "http_url": "http://127.0.0.1:8700"},
            {"id": "node-2", "state": "active", "ws_url": "ws://127.0.0.1:8711/v1/ws",
             "http_url": "http://127.0.0.1:8710"}],
        "ranges": [[0, 8191, "node-1"], [8192, 16383, "node-2"]]}]})

    epoch: int = Field(description="Slot map epoch (bumped on every change of the map).")
    nodes: list[MapNode] = Field(description="Every member of the cluster.")
    ranges: list[tuple[int, int, str]] = Field(
        description="[first, last, node id]: runs of slots in slot order, inclusive. A user's "
        "slot is CRC16-XMODEM(str(user id)) % 16384; a slot in no run has no owner yet "
        "(connect anywhere and follow the redirect).")


@router.get("", summary="The node (and its WebSocket URL) that serves the caller.")
async def get_route(caller: CurrentCaller, services: Services) -> Route:
    return Route(**services.route(caller.user_id))


@router.get("/map", summary="The slot map: which node serves each hash slot (public).")
async def get_slot_map(services: Services) -> SlotMap:
    return SlotMap.model_validate(services.slot_map())

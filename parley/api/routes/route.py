"""HTTP route: which node serves the caller's WebSocket (``/route``).

In a cluster every user is served by one node (its slot's owner); a client may
ask here before connecting instead of being redirected by the first node it
reaches.  On a single node the answer is that node.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from parley.api.deps import CurrentCaller, Services
from parley.api.routes._common import ERRORS, STRICT_QUERY

__all__ = ["router"]

router = APIRouter(prefix="/route", tags=["cluster"], responses=ERRORS, dependencies=STRICT_QUERY)


class Route(BaseModel):
    node: str = Field(description="Id of the node serving the caller.")
    ws_url: str = Field(description="WebSocket URL to connect to (add ?device=...).")
    http_url: str = Field(description="HTTP base URL of that node.")


@router.get("", summary="The node (and its WebSocket URL) that serves the caller.")
async def get_route(caller: CurrentCaller, services: Services) -> Route:
    return Route(**services.route(caller.user_id))

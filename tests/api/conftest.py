"""A running node and an HTTP client pointed at it (real sockets, both backends)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from parley.server import Node
from tests.e2e.conftest import World, node, world  # noqa: F401 - fixtures re-exported


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    async with httpx.AsyncClient(base_url=world.http_url, timeout=30) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


__all__ = ["Node", "bearer"]

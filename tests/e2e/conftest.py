"""A real node in the test's event loop, on a real database of each backend.

``node`` starts ``parley.server.Node`` on 127.0.0.1 with free ports; ``world``
adds helpers to create users and conversations and to mint tokens, so tests
speak to the node only through real sockets.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.clock import Clock, SystemClock
from parley.config import load_settings
from parley.server import Node
from parley.store.conversations import Conversation
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema

FAST_ARGON = {"argon2_memory_kib": 19456, "argon2_time_cost": 2, "argon2_parallelism": 1}


class OffsetClock(SystemClock):
    """The real clock, moved forward on demand (to pass a recall window)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


async def start_node(
    backend: str, tmp_path: Path, *, clock: Clock | None = None, **overrides: Any
) -> tuple[Node, str | None]:
    """Start a node; returns it and the PostgreSQL schema to drop afterwards (or None)."""
    schema = None
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data", "host": "127.0.0.1", "port": 0, "ws_port": 0,
        "admin_password": "admin-password", **FAST_ARGON, **overrides,
    }
    if backend == "pg":
        schema = await new_pg_schema("e_")
        settings["database_url"] = PG_DSN
        settings["database_schema"] = schema
    node = Node(load_settings(None, settings), clock=clock, out=io.StringIO())
    await node.start()
    return node, schema


async def stop_node(node: Node, schema: str | None) -> None:
    await node.stop()
    await drop_pg_schema(schema)


@dataclass
class World:
    """Handles to a running node for arranging a test."""

    node: Node

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.node.ws_port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    @property
    def tenant_id(self) -> int:
        assert self.node.tenant is not None
        return self.node.tenant.id

    async def user(self, name: str) -> int:
        assert self.node.accounts is not None
        u = await self.node.accounts.create_user(self.tenant_id, name, self.node.clock.now_ms())
        return u.id

    def token(self, user_id: int, ttl_s: int | None = None) -> str:
        assert self.node.tokens is not None
        return self.node.tokens.issue(self.tenant_id, user_id, ttl_s=ttl_s)

    async def direct(self, a: int, b: int) -> Conversation:
        assert self.node.conversations is not None
        return await self.node.conversations.create_direct(
            self.tenant_id, a, b, self.node.clock.now_ms()
        )

    async def group(self, owner: int, members: list[int], name: str = "g") -> Conversation:
        assert self.node.conversations is not None
        return await self.node.conversations.create_group(
            self.tenant_id, owner, name, members, self.node.clock.now_ms()
        )

    async def rows(self, conv: int) -> list[tuple[int, str]]:
        """(seq, msg_id) of every stored message of ``conv``, by seq, straight from the table."""
        from sqlalchemy import select

        from parley.store.tables import messages

        assert self.node.db is not None
        async with self.node.db.reader.connect() as conn:
            result = await conn.execute(
                select(messages.c.seq, messages.c.msg_id)
                .where(messages.c.conversation_id == conv)
                .order_by(messages.c.seq)
            )
            return [(int(r[0]), str(r[1])) for r in result]

    async def set_role(self, conv: int, user: int, role: str) -> None:
        assert self.node.conversations is not None and self.node.service is not None
        await self.node.conversations.set_role(self.tenant_id, conv, user, role)
        self.node.service.members.invalidate(self.tenant_id, conv)


@pytest.fixture
async def node(backend: str, tmp_path: Path) -> AsyncIterator[Node]:
    n, schema = await start_node(backend, tmp_path)
    try:
        yield n
    finally:
        await stop_node(n, schema)


@pytest.fixture
async def world(node: Node) -> World:
    return World(node)

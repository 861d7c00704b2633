"""Cluster redirects through real sockets: a node that does not serve a user sends
a ``reconnect`` frame (reason ``moved``) and closes with 4010; the client follows
at once, and a redirect to a node that cannot be reached sends it back to the
address it started from.

One real node plays every part: its ``placement`` answers "elsewhere" with a URL
that reaches the same node through a different path (a query parameter), or a
closed port, so each hop is observable without a cluster.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from parley.client import ConnectionFailed, ParleyClient, decode_body
from parley.protocol import CloseCode
from tests.client.test_node import FAST, T, client, pair, texts
from tests.e2e.conftest import World
from tests.waiting import until


class Placement:
    """Answers "moved to ``url``" for the next ``times`` calls (about ``user`` only,
    if given), then "here"."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.user: int | None = None
        self.times = 0
        self.calls = 0

    def redirect(self, url: str, times: int = 1, user: int | None = None) -> None:
        self.url, self.times, self.user = url, times, user

    def __call__(self, user_id: int) -> str | None:
        self.calls += 1
        if self.times > 0 and self.user in (None, user_id):
            self.times -= 1
            return self.url
        return None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_follows_a_redirect(world: World) -> None:
    front = world.node.front
    assert front is not None
    placement = Placement()
    front.placement = placement
    a, _, _ = await pair(world)
    placement.redirect(world.ws_url + "?hop=1")
    async with asyncio.timeout(T), client(world, a, "a1") as c:
        assert c.connected and c.user_id == a
        assert placement.calls == 2  # refused once, accepted on the new address
        assert world.node.metrics.ws_closes.labels(str(CloseCode.MOVED))._value.get() == 1


async def test_moved_sessions_reconnect_and_sync_without_loss(world: World) -> None:
    front = world.node.front
    assert front is not None
    placement = Placement()
    front.placement = placement
    a, b, conv = await pair(world)
    async with asyncio.timeout(T), client(world, a, "a1") as alice, \
            client(world, b, "b1") as bob:
        await alice.send(conv, "text", {"text": "before"})
        assert await texts(bob, 1) == [(1, "before")]
        reconnects = bob.stats.reconnects
        placement.redirect(world.ws_url + "?hop=1", times=1, user=b)
        assert front.evict_moved() == 1
        # Sent while Bob is between nodes: he gets it by push or by sync, once.
        await alice.send(conv, "text", {"text": "during"})
        assert await texts(bob, 1) == [(2, "during")]
        await until(lambda: bob.stats.reconnects > reconnects, what="bob reconnected")
        await bob.wait_connected()
        await alice.send(conv, "text", {"text": "after"})
        m = await anext(bob.messages())
        assert (m.seq, decode_body(m)["text"]) == (3, "after")
        assert bob.stats.duplicates == 0


async def test_unreachable_redirect_falls_back_to_the_start_address(world: World) -> None:
    front = world.node.front
    assert front is not None
    placement = Placement()
    front.placement = placement
    a, _, _ = await pair(world)
    placement.redirect(f"ws://127.0.0.1:{closed_port()}/v1/ws", times=1)
    async with asyncio.timeout(T), client(world, a, "a1") as c:
        # seed -> moved to a dead port -> connection refused -> seed again -> served
        assert c.connected
        assert placement.calls == 2


async def test_several_start_addresses_are_tried_in_turn(world: World) -> None:
    a, _, _ = await pair(world)
    dead = f"ws://127.0.0.1:{closed_port()}/v1/ws"
    c = ParleyClient([dead, world.ws_url], world.token(a), "a2", backoff=FAST)
    async with asyncio.timeout(T), c:
        assert c.connected and c.user_id == a
    only_dead = ParleyClient([dead], world.token(a), "a3", backoff=FAST)
    async with asyncio.timeout(T):
        with pytest.raises(ConnectionFailed):
            await only_dead.connect()

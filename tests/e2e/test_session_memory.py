"""A connected device holds only what it has used: an idle one no tracker, bucket or order."""

from __future__ import annotations

import asyncio

from parley.client import ParleyClient
from parley.messaging.wsfront import DeviceSession
from parley.server import Node
from tests.e2e.conftest import World


def _session(node: Node, user_id: int) -> DeviceSession:
    assert node.front is not None
    (session,) = [s for s in node.front.sessions.values() if s.user_id == user_id]
    return session


async def test_idle_devices_hold_no_per_use_state(node: Node) -> None:
    w = World(node)
    a, b = await w.user("alice"), await w.user("bob")
    conv = (await w.direct(a, b)).id
    async with ParleyClient(w.ws_url, w.token(a), "a1") as alice, \
            ParleyClient(w.ws_url, w.token(b), "b1") as bob:
        for uid in (a, b):
            s = _session(node, uid)
            assert (s.inflight, s.send_bucket, s.send_order, s.typing_at) == (None,) * 4
        sent = await alice.send(conv, "text", {"text": "hi"})
        async with asyncio.timeout(10):
            async for ev in bob.events():
                if getattr(ev, "seq", None) == sent.seq:
                    break
        sender, receiver = _session(node, a), _session(node, b)
        assert sender.send_bucket is not None and sender.send_order is not None
        assert sender.typing_at is None
        assert receiver.inflight is not None  # built by the push
        assert receiver.send_bucket is None and receiver.send_order is None

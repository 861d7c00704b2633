"""A connected device holds only what it has used: an idle one no tracker, bucket or order."""

from __future__ import annotations

import asyncio
import gc

from parley.client import ParleyClient
from parley.gateway.connection import WsConnection
from parley.gateway.server import _GatewayProtocol
from parley.messaging.wsfront import DeviceSession
from parley.protocol.inflight import InflightTracker
from parley.server import Node
from tests.e2e.conftest import World
from tests.waiting import until


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


def _alive(types: tuple[type, ...], old: set[int] | None = None) -> int:
    """How many objects of ``types`` exist, leaving out those whose id is in ``old``."""
    return sum(isinstance(o, types) and (old is None or id(o) not in old)
               for o in gc.get_objects())


def _holders(types: tuple[type, ...], old: set[int]) -> str:
    """What refers to each object of ``types`` still alive (not in ``old``)."""
    alive = [o for o in gc.get_objects() if isinstance(o, types) and id(o) not in old]
    out = []
    for o in alive:
        refs = []
        for r in gc.get_referrers(o):
            if r is alive:
                continue
            name = getattr(r, "__qualname__", None) or getattr(
                getattr(r, "f_code", None), "co_qualname", None)
            refs.append(type(r).__name__ + (f" {name}" if name else ""))
        out.append(f"{type(o).__name__} <- {', '.join(refs)}")
    return "; ".join(out)


async def test_a_closed_device_is_freed_without_the_cycle_collector(node: Node) -> None:
    """The node freezes its long-lived heap (parley.heap): a frozen object in a
    garbage cycle would never be reclaimed.  A device that connected, sent,
    received, typed and closed must be freed by reference counting alone."""
    server_side = (DeviceSession, WsConnection, _GatewayProtocol, InflightTracker)
    w = World(node)
    a, b = await w.user("carol"), await w.user("dave")
    conv = (await w.direct(a, b)).id
    gc.collect()
    # Objects of earlier tests may still be alive and go away meanwhile: count only
    # this test's (the old ones are held here, so their ids cannot be reused).
    held = [o for o in gc.get_objects() if isinstance(o, server_side)]
    old = {id(o) for o in held}
    gc.disable()
    try:
        async with ParleyClient(w.ws_url, w.token(a), "c1") as carol, \
                ParleyClient(w.ws_url, w.token(b), "d1") as dave:
            assert _alive(server_side, old) > 0
            await carol.typing(conv)
            sent = await carol.send(conv, "text", {"text": "hi"})
            async with asyncio.timeout(10):
                async for ev in dave.events():
                    if getattr(ev, "seq", None) == sent.seq:
                        break
            await dave.send(conv, "text", {"text": "back"})
        try:
            await until(lambda: _alive(server_side, old) == 0, interval=0.05,
                        what="the closed devices' server-side objects freed")
        except TimeoutError as exc:  # say what still holds them (seen once in CI)
            raise AssertionError(f"{exc}: {_holders(server_side, old)}") from None
    finally:
        gc.enable()
    assert len(held) == len(old)

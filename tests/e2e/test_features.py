"""Receipts, unread counts, typing, presence, limits and shutdown on a live node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from parley.client import ParleyClient
from parley.protocol import (
    Delivered,
    ErrorFrame,
    Pong,
    PresenceEvent,
    ReadEvent,
    Reconnect,
    Sent,
    TypingEvent,
)
from parley.server import Node, open_database
from parley.store.tables import messages
from tests.e2e.conftest import World, start_node, stop_node
from tests.e2e.raw import RawClient
from tests.gateway.support import RawWs

E = TypeVar("E")


async def _event(c: ParleyClient, kind: type[E], **match: Any) -> E:
    async with asyncio.timeout(10):
        async for ev in c.events():
            if isinstance(ev, kind) and all(getattr(ev, k) == v for k, v in match.items()):
                return ev
    raise AssertionError("event stream ended")


async def test_read_receipts_unread_counts_and_delivery_receipts(node: Node) -> None:
    w = World(node)
    a, b = await w.user("alice"), await w.user("bob")
    conv = (await w.direct(a, b)).id
    async with ParleyClient(w.ws_url, w.token(a), "a1") as alice, \
            ParleyClient(w.ws_url, w.token(b), "phone") as phone, \
            ParleyClient(w.ws_url, w.token(b), "laptop") as laptop:
        sent = [await alice.send(conv, "text", {"text": str(i)}) for i in range(3)]
        # Bob's devices acknowledge receipt: Alice gets a delivery receipt.
        await _event(alice, Delivered, conv=conv, uid=b, seq=sent[-1].seq)
        page = await phone.conversations()
        assert [(c.conv, c.unread) for c in page.convs] == [(conv, 3)]
        assert await phone.read(conv, sent[1].seq) == sent[1].seq
        # Alice and Bob's other device hear of the read; the reader's device does not.
        await _event(alice, ReadEvent, conv=conv, uid=b, seq=sent[1].seq)
        await _event(laptop, ReadEvent, conv=conv, uid=b, seq=sent[1].seq)
        assert [(c.conv, c.unread) for c in (await laptop.conversations()).convs] == [(conv, 1)]
        # The read cursor never moves back.
        assert await laptop.read(conv, 1) == sent[1].seq
        # The sender's own messages do not count as unread for her.
        assert [(c.conv, c.unread) for c in (await alice.conversations()).convs] == [(conv, 0)]


async def test_typing_is_relayed_rate_limited_and_never_stored(node: Node) -> None:
    w = World(node)
    a, b = await w.user("alice"), await w.user("bob")
    conv = (await w.direct(a, b)).id
    raw = await RawClient.connect(w.ws_url, w.token(b), "b1")
    async with ParleyClient(w.ws_url, w.token(a), "a1") as alice:
        for _ in range(5):  # a burst: only the first passes the 1-per-second limit
            await alice.typing(conv)
        await alice.ping()  # all five typing frames were handled before this answer
        first = await raw.expect(TypingEvent)
        assert (first.conv, first.uid) == (conv, a) and first.expires_ms > 0
        raw.send({"t": "ping", "rid": 5})
        seen = []
        async with asyncio.timeout(10):
            while not isinstance(f := await raw.frames.get(), Pong):
                seen.append(f)
        assert not [f for f in seen if isinstance(f, TypingEvent)]
    assert await w.rows(conv) == []
    await raw.close()


async def test_presence_aggregates_devices_and_hides_invisible(node: Node) -> None:
    w = World(node)
    a, b = await w.user("alice"), await w.user("bob")
    await w.direct(a, b)
    async with ParleyClient(w.ws_url, w.token(b), "b1") as bob:
        phone = ParleyClient(w.ws_url, w.token(a), "phone")
        await phone.connect()
        await _event(bob, PresenceEvent, uid=a, status="online")
        async with ParleyClient(w.ws_url, w.token(a), "laptop") as laptop:
            await laptop.presence("dnd", "focus")
            await _event(bob, PresenceEvent, uid=a, status="dnd", text="focus")
            await phone.presence("away")  # dnd on another device still wins
            await laptop.presence("invisible")
            await _event(bob, PresenceEvent, uid=a, status="away")
        await phone.presence("invisible")
        await _event(bob, PresenceEvent, uid=a, status="offline")
        await phone.close()


@pytest.fixture
async def strict_node(backend: str, tmp_path: Path) -> AsyncIterator[Node]:
    n, schema = await start_node(
        backend, tmp_path, send_rate_per_s=5.0, max_devices_per_user=2,
        allowed_origins=["https://chat.example.com"],
    )
    try:
        yield n
    finally:
        await stop_node(n, schema)


async def test_limits_rate_devices_and_origin(strict_node: Node) -> None:
    w = World(strict_node)
    a, b = await w.user("alice"), await w.user("bob")
    conv = (await w.direct(a, b)).id
    token = w.token(a)
    raw = await RawClient.connect(w.ws_url, token, "a1")
    now = strict_node.clock.now_ms()
    for i in range(30):  # burst 10 (2 x 5/s), then refused
        raw.send({"t": "send", "rid": i, "conv": conv, "mid": f"1.{a}.a1.{now}.ratelim{i:05d}",
                  "kind": "text", "body": {"text": "x"}})
    answers: list[Sent | ErrorFrame] = []
    async with asyncio.timeout(10):
        while len(answers) < 30:
            f = await raw.next_frame()
            if isinstance(f, Sent | ErrorFrame):
                answers.append(f)
    refused = [f for f in answers if isinstance(f, ErrorFrame)]
    assert refused and all(f.code == "rate_limited" and f.retryable for f in refused)
    assert len(await w.rows(conv)) == 30 - len(refused)
    # A third device of the same user is refused with 4009.
    second = await RawClient.connect(w.ws_url, token, "a2")
    third = await RawClient.connect(w.ws_url, token, "a3")
    code, _ = await asyncio.wait_for(asyncio.shield(third.closed), 10)
    assert code == 4009
    for c in (raw, second):
        await c.close()
    # Origin: browsers only from the allow-list; clients without Origin are fine.
    status, _, bad = await RawWs.connect(
        strict_node.ws_port, "/v1/ws?device=web",
        headers=[("Authorization", f"Bearer {token}"), ("Origin", "https://evil.example")])
    await bad.close()
    assert status == 403
    ok = await RawWs.open(
        strict_node.ws_port, "/v1/ws?device=web",
        headers=[("Authorization", f"Bearer {token}"), ("Origin", "https://chat.example.com")])
    await ok.close()
    status, _, anon = await RawWs.connect(strict_node.ws_port, "/v1/ws?device=web")
    await anon.close()
    assert status == 401
    upgrades = strict_node.metrics.ws_connects
    assert upgrades.labels("refused")._value.get() == 2  # the evil origin, the anonymous
    assert upgrades.labels("accepted")._value.get() >= 4


async def test_slow_consumer_is_closed_and_recovers_by_sync(
    backend: str, tmp_path: Path
) -> None:
    node, schema = await start_node(
        backend, tmp_path, max_outbound_bytes=65_536, send_rate_per_s=1e6,
        user_send_rate_per_s=1e6,
    )
    try:
        w = World(node)
        a, b = await w.user("alice"), await w.user("bob")
        conv = (await w.direct(a, b)).id
        # Bob's socket never reads: its receive buffer is tiny, the server's queue fills.
        _, _, stalled = await RawWs.connect(
            node.ws_port, "/v1/ws?device=b1",
            headers=[("Authorization", f"Bearer {w.token(b)}")], rcvbuf=4096)
        async with ParleyClient(w.ws_url, w.token(a), "a1") as alice:
            big = "x" * 7000
            for _ in range(10):
                await asyncio.gather(*[
                    alice.send(conv, "text", {"text": big}) for _j in range(20)
                ])
        assert node.metrics.ws_closes.labels("4008")._value.get() >= 1
        await stalled.close()
        async with ParleyClient(w.ws_url, w.token(b), "b1") as bob:
            got = []
            async with asyncio.timeout(30):
                async for m in bob.messages():
                    got.append(m.seq)
                    if len(got) == 200:
                        break
            assert got == list(range(1, 201))
    finally:
        await stop_node(node, schema)


async def test_graceful_shutdown_acks_pending_sends_and_says_reconnect(
    backend: str, tmp_path: Path
) -> None:
    node, schema = await start_node(backend, tmp_path, send_rate_per_s=1e6,
                                    user_send_rate_per_s=1e6)
    try:
        w = World(node)
        a, b = await w.user("alice"), await w.user("bob")
        conv = (await w.direct(a, b)).id
        raw = await RawClient.connect(w.ws_url, w.token(a), "a1")
        now = node.clock.now_ms()
        for i in range(300):
            raw.send({"t": "send", "rid": i, "conv": conv,
                      "mid": f"1.{a}.a1.{now}.shutdown{i:04d}", "kind": "text",
                      "body": {"text": "x"}})
        await raw.expect(Sent)  # the node is busy with them: stop now
        await node.stop()
        frames = []
        while (f := await raw.next_frame()) is not None:
            frames.append(f)
        assert any(isinstance(f, Reconnect) for f in frames)
        assert raw.closed.result()[0] == 1001
        acked = {f.mid for f in frames if isinstance(f, Sent)}
        refused = [f for f in frames if isinstance(f, ErrorFrame)]
        assert all(f.retryable for f in refused)  # e.g. "unavailable": retry elsewhere
        db = open_database(node.settings)
        try:
            async with db.reader.connect() as conn:
                stored = {r[0] for r in await conn.execute(
                    select(messages.c.msg_id).where(messages.c.conversation_id == conv))}
        finally:
            await db.close()
        assert acked <= stored  # nothing acknowledged was lost
    finally:
        await stop_node(node, schema)

"""The client against a real node (SQLite and PostgreSQL), through real sockets.

Faults are real too: ``drop_connection()`` aborts the client's TCP socket, and
:class:`FrameProxy` drops, duplicates or holds frames on the wire.  Every wait
is on an iterator, a future or an event, bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from parley.client import (
    Backoff,
    ClientClosed,
    HandshakeRejected,
    ParleyClient,
    ParleyClientError,
    SessionEnded,
    decode_body,
)
from parley.protocol import Delivered, Msg, PresenceEvent, TypingEvent
from tests.client.proxy import FrameProxy
from tests.e2e.conftest import World

T = 10.0
FAST = Backoff(initial=0.02, maximum=0.2)


@pytest.fixture
async def proxy(world: World) -> AsyncIterator[FrameProxy]:
    p = FrameProxy(world.node.ws_port)
    await p.start()
    yield p
    await p.close()


async def pair(world: World) -> tuple[int, int, int]:
    a, b = await world.user("alice"), await world.user("bob")
    conv = await world.direct(a, b)
    return a, b, conv.id


def client(
    world: World, uid: int, device: str, url: str | None = None, **kw: object
) -> ParleyClient:
    token = world.token(uid)
    return ParleyClient(url or world.ws_url, token, device, backoff=FAST, **kw)  # type: ignore[arg-type]


async def texts(c: ParleyClient, n: int) -> list[tuple[int, str]]:
    it = c.messages()
    out = []
    for _ in range(n):
        m = await anext(it)
        out.append((m.seq, decode_body(m)["text"]))
    return out


async def test_connect_receives_welcome(world: World) -> None:
    uid = await world.user("alice")
    async with asyncio.timeout(T), client(world, uid, "a1") as c:
        assert c.connected and c.user_id == uid and c.device_id == "a1"
        assert c.limits is not None and c.limits.max_frame_bytes >= 1024
        await c.wait_synced()
        assert await c.ping() >= 0


async def test_send_is_acked_after_commit_and_echoed(world: World) -> None:
    a, _, conv = await pair(world)
    async with asyncio.timeout(T), client(world, a, "a1") as c:
        mid = c.new_message_id()
        sent = await c.send(conv, "text", {"text": "hello"}, mid=mid)
        assert (sent.conv, sent.seq, sent.mid, sent.dup) == (conv, 1, mid, False)
        echo = await anext(c.messages())  # the sending device gets its own message too
        assert (echo.seq, echo.mid, echo.sender) == (1, mid, a)
        page = await c.history(conv)
        assert [m.mid for m in page.msgs] == [mid] and not page.more


async def test_two_users_exchange_messages_both_ways(world: World) -> None:
    a, b, conv = await pair(world)
    async with (asyncio.timeout(T), client(world, a, "a1", echo=False) as ca,
                client(world, b, "b1", echo=False) as cb):
        for i in range(5):
            await ca.send(conv, "text", {"text": f"a{i}"})
        assert await texts(cb, 5) == [(i + 1, f"a{i}") for i in range(5)]
        for i in range(5):
            await cb.send(conv, "text", {"text": f"b{i}"})
        assert await texts(ca, 5) == [(i + 6, f"b{i}") for i in range(5)]
        # b's acks come back to a as delivery receipts; wait for the last one
        events = ca.events()
        while True:
            ev = await anext(events)
            if isinstance(ev, Delivered) and ev.uid == b and ev.seq >= 5:  # acks coalesce
                break
        assert ca.cursors == {conv: 10} and cb.cursors == {conv: 10}


async def test_a_duplicated_push_is_dropped(world: World, proxy: FrameProxy) -> None:
    a, b, conv = await pair(world)
    proxy.duplicate = lambda payload: payload.startswith(b'{"t":"msg"')
    async with (asyncio.timeout(T), client(world, a, "a1") as ca,
                client(world, b, "b1", url=proxy.ws_url) as cb):
        for i in range(3):
            await ca.send(conv, "text", {"text": f"m{i}"})
        assert await texts(cb, 3) == [(1, "m0"), (2, "m1"), (3, "m2")]
        await ca.send(conv, "text", {"text": "last"})
        assert await texts(cb, 1) == [(4, "last")]  # nothing queued in between
        assert len(proxy.duplicated) == 4 and cb.stats.duplicates == 4


async def test_lost_ack_is_resent_with_the_same_mid_after_reconnect(
    world: World, proxy: FrameProxy
) -> None:
    a, b, conv = await pair(world)
    proxy.drop = lambda payload: payload.startswith(b'{"t":"sent"')
    async with (asyncio.timeout(T), client(world, a, "a1", url=proxy.ws_url) as ca,
                client(world, b, "b1") as cb):
        mid = ca.new_message_id()
        sending = asyncio.create_task(ca.send(conv, "text", {"text": "once"}, mid=mid))
        got = await anext(cb.messages())  # committed and pushed; a's ack is lost
        assert got.mid == mid
        assert not sending.done()
        proxy.drop = None
        ca.drop_connection()
        sent = await sending
        assert (sent.mid, sent.seq, sent.dup) == (mid, got.seq, True)
        assert ca.stats.reconnects == 1 and ca.stats.resent == 1
        assert ca.last_close is not None and ca.last_close[0] == 1006
        page = await cb.history(conv)
        assert [m.mid for m in page.msgs] == [mid]  # stored once


async def test_messages_missed_while_offline_arrive_by_sync(
    world: World, proxy: FrameProxy
) -> None:
    a, b, conv = await pair(world)
    async with (asyncio.timeout(T), client(world, a, "a1", url=proxy.ws_url, echo=False) as ca,
                client(world, b, "b1") as cb):
        await cb.send(conv, "text", {"text": "before"})
        assert await texts(ca, 1) == [(1, "before")]
        proxy.gate.clear()  # a's next connection waits in the proxy until set
        ca.drop_connection()
        for i in range(5):
            await cb.send(conv, "text", {"text": f"missed{i}"})
        sending = asyncio.create_task(ca.send(conv, "text", {"text": "queued while offline"}))
        proxy.gate.set()
        assert await texts(ca, 5) == [(i + 2, f"missed{i}") for i in range(5)]
        assert ca.stats.synced == 5 and ca.stats.reconnects == 1
        assert (await sending).seq == 7  # sent after the sync
        assert await texts(cb, 1) == [(1, "before")]  # b's own echo
        it = cb.messages()
        seqs = [(await anext(it)).seq for _ in range(6)]
        assert seqs == [2, 3, 4, 5, 6, 7]


async def test_a_lost_push_is_recovered_by_sync_in_order(world: World, proxy: FrameProxy) -> None:
    a, b, conv = await pair(world)
    proxy.drop = lambda payload: b'"seq":2,' in payload and payload.startswith(b'{"t":"msg"')
    async with (asyncio.timeout(T), client(world, a, "a1") as ca,
                client(world, b, "b1", url=proxy.ws_url) as cb):
        for i in range(3):
            await ca.send(conv, "text", {"text": f"m{i}"})
        assert await texts(cb, 3) == [(1, "m0"), (2, "m1"), (3, "m2")]
        assert len(proxy.dropped) == 1 and cb.stats.held >= 1 and cb.stats.synced >= 1


async def test_close_is_clean(world: World) -> None:
    uid = await world.user("alice")
    c = client(world, uid, "a1")
    async with asyncio.timeout(T):
        await c.connect()
        waiting = asyncio.create_task(anext(c.messages()))
        await c.close()
        assert c.last_close is not None and c.last_close[0] == 1000
        assert c.closed and c.error is None and not c.connected
        with pytest.raises(StopAsyncIteration):
            await waiting
        with pytest.raises(ClientClosed):
            await c.ping()
        await c.close()  # idempotent


async def test_close_while_reconnecting_returns_promptly(world: World, proxy: FrameProxy) -> None:
    uid = await world.user("alice")
    c = client(world, uid, "a1", url=proxy.ws_url)
    async with asyncio.timeout(T):
        await c.connect()
        await c.wait_synced()
        proxy.gate.clear()  # the reconnection hangs in the proxy, mid-handshake
        accepted = proxy.accepted
        c.drop_connection()
        while proxy.accepted == accepted:  # wait for the reconnect attempt to arrive
            await proxy.arrived.wait()
            proxy.arrived.clear()
    async with asyncio.timeout(2.0):  # far below connect_timeout (10 s)
        await c.close()
    assert c.closed and c.error is None


async def test_bad_token_is_refused_clearly(world: World) -> None:
    c = ParleyClient(world.ws_url, "not-a-token", "a1")
    async with asyncio.timeout(T):
        with pytest.raises(HandshakeRejected) as info:
            await c.connect()
    assert info.value.status == 401 and info.value.code == "unauthenticated"
    assert not c.connected


async def test_a_newer_connection_of_the_same_device_ends_the_older(world: World) -> None:
    uid = await world.user("alice")
    async with asyncio.timeout(T):
        old = client(world, uid, "a1")
        await old.connect()
        async with client(world, uid, "a1") as new:
            with pytest.raises(SessionEnded) as info:
                await anext(old.messages())
            assert info.value.code == "too_many_connections" and info.value.close_code == 4009
            assert new.connected
        await old.close()


async def test_requests(world: World) -> None:
    a, b, conv = await pair(world)
    async with (asyncio.timeout(T), client(world, a, "a1", echo=False) as ca,
                client(world, b, "b1") as cb):
        sent = await ca.send(conv, "text", {"text": "oops"})
        assert (await anext(cb.messages())).seq == sent.seq
        assert await cb.read(conv, sent.seq) == sent.seq
        recall_seq = await ca.recall(conv, sent.mid)
        recall: Msg = await anext(cb.messages())
        assert (recall.seq, recall.kind) == (recall_seq, "recall")
        assert decode_body(recall) == {"mid": sent.mid}
        page = await cb.history(conv, after=0, limit=10)
        assert [(m.seq, m.recalled) for m in page.msgs] == [(1, True), (2, False)]
        assert msgspec.json.decode(page.msgs[0].body) == {}
        await ca.typing(conv)
        ev = await anext(cb.events())
        while not isinstance(ev, TypingEvent):
            ev = await anext(cb.events())
        assert (ev.conv, ev.uid) == (conv, a)
        convs = await cb.conversations()
        assert [(c.conv, c.last_seq, c.read_seq) for c in convs.convs] == [(conv, 2, 1)]
        await ca.presence("away", "lunch")
        ev = await anext(cb.events())
        while not (isinstance(ev, PresenceEvent) and ev.status == "away"):
            ev = await anext(cb.events())
        assert (ev.uid, ev.text) == (a, "lunch")
        with pytest.raises(ParleyClientError) as info:
            await ca.send(conv + 1000, "text", {"text": "nowhere"})
        assert info.value.code == "not_member"
        with pytest.raises(ParleyClientError) as info:
            await ca.send(conv, "text", {"txt": "bad"})
        assert info.value.code == "invalid_body"


async def test_a_backlog_larger_than_the_server_buffer_still_syncs(world: World) -> None:
    """A first sync page of ~1.5 MB exceeds the node's 1 MiB outbound bound (4008
    today): the client retries with smaller pages and gets everything, in order."""
    a, b, conv = await pair(world)
    async with asyncio.timeout(30):
        async with client(world, a, "a1") as ca:
            text = "x" * 8000
            await asyncio.gather(*(ca.send(conv, "text", {"text": text}) for _ in range(190)))
        async with client(world, b, "b1") as cb:
            it = cb.messages()
            assert [(await anext(it)).seq for _ in range(190)] == list(range(1, 191))
            assert cb.stats.synced == 190 and cb.stats.duplicates == 0

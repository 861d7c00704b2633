"""The client against a scripted server: what a real node does only under faults.

Every wait is on a frame, a future or an iterator, bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from parley.client import (
    Backoff,
    ConnectionLost,
    HandshakeRejected,
    ParleyClient,
    ParleyClientError,
    SessionEnded,
)
from parley.protocol import (
    ErrorFrame,
    Msg,
    Ok,
    Ping,
    Pong,
    Recall,
    Reconnect,
    Send,
    Sent,
    Sync,
    SyncPage,
    TypingEvent,
    Welcome,
)
from tests.client.fakeserver import LIMITS, FakeConn, FakeServer

FAST = Backoff(initial=0.01, maximum=0.05)
T = 5.0


def welcome() -> Welcome:
    return Welcome(uid=7, device="d1", server_time=0, limits=LIMITS.welcome())


def msg(conv: int, seq: int) -> Msg:
    return Msg(conv=conv, seq=seq, mid=f"1.9.x.1.c{conv}s{seq}aaaaaa", sender=9, kind="text",
               body=msgspec.Raw(b'{"text":"hi"}'), ts=1)


_clients: list[ParleyClient] = []


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    s = FakeServer()
    await s.start()
    yield s
    while _clients:
        await _clients.pop().close()
    await s.close()


async def connect(server: FakeServer, **kw: object) -> tuple[ParleyClient, FakeConn]:
    """A client whose first connection is welcomed and synced (empty page)."""
    client = ParleyClient(server.url, "tok", "d1", backoff=FAST, **kw)  # type: ignore[arg-type]
    _clients.append(client)
    task = asyncio.create_task(client.connect())
    conn = await server.accept()
    await conn.start_session()
    await task
    await client.wait_synced()
    return client, conn


async def take(client: ParleyClient, n: int) -> list[tuple[int, int]]:
    it = client.messages()
    return [(m.conv, m.seq) for m in [await anext(it) for _ in range(n)]]


async def test_handshake_carries_bearer_token_and_device(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        assert conn.request.headers["Authorization"] == "Bearer tok"
        assert conn.request.path == b"/v1/ws?device=d1"
        assert client.user_id == 7 and client.connected
        await client.close()
        assert await conn.closed == 1000


async def test_http_401_raises_a_clear_error(server: FakeServer) -> None:
    server.reject = (401, b'{"code":"unauthenticated","message":"token expired"}')
    client = ParleyClient(server.url, "bad", "d1")
    async with asyncio.timeout(T):
        with pytest.raises(HandshakeRejected) as info:
            await client.connect()
    assert info.value.status == 401 and info.value.code == "unauthenticated"
    assert "token expired" in str(info.value)
    assert not client.connected


async def test_sync_pages_until_done_with_updated_cursors(server: FakeServer) -> None:
    client = ParleyClient(server.url, "tok", "d1", cursors={3: 5})
    async with asyncio.timeout(T):
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        conn.send(welcome())
        first = await conn.recv()
        assert isinstance(first, Sync) and [(c.conv, c.seq) for c in first.cursors] == [(3, 5)]
        conn.send(SyncPage(rid=first.rid, msgs=[msg(3, 6), msg(3, 7)], more=True))
        second = await conn.recv()
        assert isinstance(second, Sync) and [(c.conv, c.seq) for c in second.cursors] == [(3, 7)]
        conn.send(SyncPage(rid=second.rid, msgs=[msg(3, 7), msg(4, 1)], more=False))
        await task
        await client.wait_synced()
        assert await take(client, 3) == [(3, 6), (3, 7), (4, 1)]
        while not (conn.acks and {a.conv: a.seq for a in conn.acks} == {3: 7, 4: 1}):
            await conn.recv(skip_acks=False)
        assert client.stats.synced == 3 and client.stats.duplicates == 0
        await client.close()


async def test_a_gap_in_pushes_is_filled_by_sync_and_order_kept(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        conn.send(msg(1, 1))
        conn.send(msg(1, 3))  # 2 went missing
        sync = await conn.recv_type(Sync)
        assert isinstance(sync, Sync) and [(c.conv, c.seq) for c in sync.cursors] == [(1, 1)]
        conn.send(SyncPage(rid=sync.rid, msgs=[msg(1, 2), msg(1, 3)], more=False))
        conn.send(msg(1, 3))  # a late re-push: dropped
        conn.send(msg(1, 4))
        assert await take(client, 4) == [(1, 1), (1, 2), (1, 3), (1, 4)]
        assert client.stats.held == 1
        await client.close()


async def test_a_burst_is_acked_with_few_frames(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        for seq in range(1, 2001):
            conn.send(msg(1, seq))
        assert len(await take(client, 2000)) == 2000
        while not conn.acks or conn.acks[-1].seq != 2000:
            await conn.recv(skip_acks=False)
        assert len(conn.acks) <= 20, len(conn.acks)
        assert client.stats.acks_sent == len(conn.acks)
        await client.close()


async def test_retryable_errors_are_retried_with_the_same_frame(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        sending = asyncio.create_task(client.send(5, "text", {"text": "x"}))
        first = await conn.recv()
        assert isinstance(first, Send)
        conn.send(ErrorFrame(rid=first.rid, code="rate_limited", message="slow", retryable=True))
        again = await conn.recv()
        assert again == first
        conn.send(Sent(rid=first.rid, conv=5, mid=first.mid, seq=1, ts=2))
        sent = await sending
        assert sent.mid == first.mid and sent.seq == 1 and client.stats.retries == 1
        await client.close()


async def test_non_retryable_error_raises(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        sending = asyncio.create_task(client.send(5, "text", {"text": "x"}))
        first = await conn.recv()
        assert isinstance(first, Send)
        conn.send(ErrorFrame(rid=first.rid, code="not_member", message="no", retryable=False))
        with pytest.raises(ParleyClientError) as info:
            await sending
        assert info.value.code == "not_member"
        await client.close()


async def test_revoked_session_stops_everything(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        sending = asyncio.create_task(client.send(5, "text", {"text": "x"}))
        await conn.recv_type(Send)
        conn.close(4001, "revoked")
        with pytest.raises(SessionEnded) as info:
            await sending
        assert info.value.code == "session_revoked" and info.value.close_code == 4001
        with pytest.raises(SessionEnded):
            await anext(client.messages())
        assert client.closed and client.error is info.value
        assert server.conns.empty()
        await client.close()  # still fine


async def test_slow_consumer_close_reconnects_syncs_then_resends(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        conn.send(msg(1, 1))
        assert await take(client, 1) == [(1, 1)]
        sending = asyncio.create_task(client.send(5, "text", {"text": "x"}))
        first = await conn.recv_type(Send)
        conn.close(4008, "slow consumer")
        conn2 = await server.accept()
        conn2.send(welcome())
        sync = await conn2.recv()
        assert isinstance(sync, Sync) and [(c.conv, c.seq) for c in sync.cursors] == [(1, 1)]
        conn2.send(SyncPage(rid=sync.rid, msgs=[msg(1, 2)], more=False))
        resent = await conn2.recv()
        assert resent == first  # same rid, same mid, only after the sync
        assert isinstance(resent, Send)
        conn2.send(Sent(rid=resent.rid, conv=5, mid=resent.mid, seq=9, ts=1, dup=True))
        assert (await sending).dup
        assert await take(client, 1) == [(1, 2)]
        assert client.stats.reconnects == 1 and client.last_close == (4008, "slow consumer")
        await client.close()


async def test_reconnect_frame_moves_the_client(server: FakeServer) -> None:
    other = FakeServer()
    await other.start()
    try:
        async with asyncio.timeout(T):
            client, conn = await connect(server)
            conn.send(Reconnect(reason="moved", after_ms=0, url=other.url))
            conn.close(1001, "going away")
            conn2 = await other.accept()
            assert conn2.request.path == b"/v1/ws?device=d1"
            await conn2.start_session()
            await client.wait_synced()
            assert client.connected
            await client.close()
    finally:
        await other.close()


async def test_recall_in_flight_is_not_repeated_after_a_drop(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        recalling = asyncio.create_task(client.recall(5, "1.7.d1.1.abcdefgh"))
        await conn.recv_type(Recall)
        assert conn.transport is not None
        conn.transport.disconnect(graceful=False)
        with pytest.raises(ConnectionLost):
            await recalling
        conn2 = await server.accept()
        await conn2.start_session()
        await client.wait_synced()
        # a later recall goes through on the new connection
        again = asyncio.create_task(client.recall(5, "1.7.d1.1.abcdefgh"))
        r = await conn2.recv_type(Recall)
        assert isinstance(r, Recall)
        conn2.send(Ok(rid=r.rid, seq=3))
        assert await again == 3
        await client.close()


async def test_a_full_queue_stops_acking_and_resumes_by_sync(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server, max_queue=4)
        for seq in range(1, 7):
            conn.send(msg(1, seq))
        while not conn.acks or conn.acks[-1].seq != 4:
            await conn.recv(skip_acks=False)
        it = client.messages()
        assert [(await anext(it)).seq for _ in range(2)] == [1, 2]  # half free: sync
        sync = await conn.recv_type(Sync)
        assert isinstance(sync, Sync) and [(c.conv, c.seq) for c in sync.cursors] == [(1, 4)]
        assert sync.limit == 2  # never more than the free room
        conn.send(SyncPage(rid=sync.rid, msgs=[msg(1, 5), msg(1, 6)], more=False))
        assert [(await anext(it)).seq for _ in range(4)] == [3, 4, 5, 6]
        # 5 was refused (queue full), 6 held behind it, then released by the sync
        assert client.stats.overflowed == 1 and client.stats.held == 1
        await client.close()


async def test_events_are_bounded_oldest_dropped(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server, max_events=2)
        for uid in (1, 2, 3):
            conn.send(TypingEvent(conv=1, uid=uid, expires_ms=6000))
        pinging = asyncio.create_task(client.ping())
        ping = await conn.recv()
        assert isinstance(ping, Ping)
        conn.send(Pong(rid=ping.rid))
        await pinging  # every earlier frame has been processed
        events = client.events()
        got = [await anext(events), await anext(events)]
        assert [e.uid for e in got] == [2, 3]  # type: ignore[union-attr]
        assert client.stats.events_dropped == 1
        await client.close()


async def test_closed_client_ends_streams_and_refuses_calls(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        conn.send(msg(1, 1))
        it = client.messages()
        assert (await anext(it)).seq == 1
        waiting = asyncio.create_task(anext(it))
        await client.close()
        with pytest.raises(StopAsyncIteration):
            await waiting
        with pytest.raises(ParleyClientError) as info:
            await client.send(1, "text", {"text": "late"})
        assert info.value.code == "client_closed"
        assert client.last_close is not None and client.last_close[0] == 1000


async def test_token_function_is_called_for_every_connection(server: FakeServer) -> None:
    tokens = iter(["t1", "t2"])

    async def token() -> str:
        return next(tokens)

    client = ParleyClient(server.url, token, "d1", backoff=FAST)
    _clients.append(client)
    async with asyncio.timeout(T):
        connecting = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.start_session()
        await connecting
        conn.close(1011, "oops")
        conn2 = await server.accept()
        assert conn.request.headers["Authorization"] == "Bearer t1"
        assert conn2.request.headers["Authorization"] == "Bearer t2"
        await conn2.start_session()
        await client.wait_synced()
        await client.close()


async def test_frames_over_the_servers_limit_are_refused_locally(server: FakeServer) -> None:
    async with asyncio.timeout(T):
        client, conn = await connect(server)
        with pytest.raises(ParleyClientError) as info:
            await client.send(1, "text", {"text": "x" * (LIMITS.max_frame_bytes + 1)})
        assert info.value.code == "frame_too_large"
        assert conn.frames.empty()
        await client.close()

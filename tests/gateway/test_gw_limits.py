"""Bounds: slow consumers (4008), oversize messages (1009), ping timeouts, app close codes."""

from __future__ import annotations

import asyncio

import pytest
from picows import WSMsgType

from parley.gateway import closecodes
from parley.gateway import server as gateway_server

from .support import (
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWs,
    Recorder,
    picows_close,
    picows_connect,
    running,
    wait,
)


async def test_slow_consumer_is_closed_with_4008_and_memory_stays_bounded() -> None:
    bound = 256 * 1024
    rec = Recorder()
    async with running(rec, max_outbound_bytes=bound, close_timeout_s=0.5) as server:
        client = await RawWs.open(server.port, rcvbuf=4096)  # never reads
        conn = await rec.next_open()
        chunk = b"x" * 8192
        peak = 0
        for _ in range(100_000):  # ~800 MB if the bound were ignored
            if not conn.send(chunk):
                break
            peak = max(peak, conn.buffered_bytes)
            await asyncio.sleep(0)  # let the Outbox flush into the transport
        else:
            pytest.fail("the connection was never closed as a slow consumer")
        assert peak <= bound
        assert conn.closed
        assert not conn.send(b"more")
        assert await rec.next_close() == (conn, closecodes.SLOW_CONSUMER)
        assert rec.close_calls[conn.id] == 1
        assert server.connection_count == 0
        await client.close()


async def test_send_many_stops_at_the_bound() -> None:
    rec = Recorder()
    async with running(rec, max_frame_bytes=1000, max_outbound_bytes=1000) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        assert not conn.send_many([b"a" * 400, b"b" * 400, b"c" * 400])
        assert await rec.next_close() == (conn, closecodes.SLOW_CONSUMER)
        close = await client.recv_close()  # the queue was dropped: only the close frame
        assert close.close_code == closecodes.SLOW_CONSUMER
        assert close.payload[2:] == b"slow consumer"
        await client.close()


async def test_oversize_frame_is_closed_with_1009() -> None:
    rec = Recorder(echo=True)
    async with running(rec, max_frame_bytes=1024) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        transport.send(WSMsgType.TEXT, b"a" * 1024)  # exactly the limit is fine
        assert await wait(client.texts.get()) == b"a" * 1024
        transport.send(WSMsgType.TEXT, b"a" * 1025)
        assert await wait(client.close_code) == closecodes.MESSAGE_TOO_BIG
        assert await rec.next_close() == (conn, closecodes.MESSAGE_TOO_BIG)
        await wait(transport.wait_disconnected())


async def test_oversize_fragmented_message_is_closed_with_1009() -> None:
    rec = Recorder()
    async with running(rec, max_frame_bytes=1024) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        client.send(TEXT, b"a" * 1000, fin=False)
        client.send(CONT, b"a" * 24, fin=False)  # 1024 so far: fine
        client.send(CONT, b"a", fin=True)
        assert (await client.recv_close()).close_code == closecodes.MESSAGE_TOO_BIG
        await client.expect_eof()
        assert await rec.next_close() == (conn, closecodes.MESSAGE_TOO_BIG)
        assert rec.texts.empty()
        await client.close()


async def test_client_that_stops_answering_pings_is_closed() -> None:
    rec = Recorder()
    async with running(rec, ping_interval_s=0.2, ping_timeout_s=0.1) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        frame = await client.recv()
        assert frame.opcode == PING  # sent after 0.2 s of silence; never answered
        close = await client.recv()
        assert (close.opcode, close.close_code) == (CLOSE, closecodes.GOING_AWAY)
        await client.expect_eof()
        assert await rec.next_close() == (conn, closecodes.GOING_AWAY)
        await client.close()


async def test_a_sweep_in_slices_still_visits_every_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One connection per slice: the sweep yields between slices and still pings
    (and times out) every connection, including one closed mid-sweep."""
    monkeypatch.setattr(gateway_server, "SWEEP_CHUNK", 1)
    rec = Recorder()
    async with running(rec, ping_interval_s=0.2, ping_timeout_s=0.1) as server:
        clients = [await RawWs.open(server.port) for _ in range(4)]
        conns = [await rec.next_open() for _ in clients]
        conns[0].close(closecodes.NORMAL, "bye")
        assert (await clients[0].recv_close()).close_code == closecodes.NORMAL
        for client in clients[1:]:
            frame = await client.recv()
            assert frame.opcode == PING  # never answered
            close = await client.recv()
            assert (close.opcode, close.close_code) == (CLOSE, closecodes.GOING_AWAY)
        closed = {await rec.next_close() for _ in clients}
        assert closed == {(conns[0], closecodes.NORMAL)} | {
            (c, closecodes.GOING_AWAY) for c in conns[1:]}
        for client in clients:
            await client.close()


async def test_a_ticks_slices_are_spread_over_the_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """One connection per slice, four connections, ticks 0.25 s apart: the slices
    start SWEEP_SPREAD * 0.25 / 4 = 50 ms apart, so the four pings of the tick
    arrive over >= 150 ms (back to back, as before, they came within a few ms)."""
    monkeypatch.setattr(gateway_server, "SWEEP_CHUNK", 1)
    rec = Recorder(echo=True)
    async with running(rec, ping_interval_s=1.0, ping_timeout_s=1.0) as server:
        clients = [await RawWs.open(server.port) for _ in range(4)]
        for _ in clients:
            await rec.next_open()
        loop = asyncio.get_running_loop()

        async def first_ping(client: RawWs) -> float:
            frame = await client.recv()
            assert frame.opcode == PING
            return loop.time()

        # Waiting on all four at once: each time is taken when its ping arrives.
        times = sorted(await asyncio.wait_for(asyncio.gather(*map(first_ping, clients)), 10))
        assert times[-1] - times[0] >= 0.1, times
        for client in clients:
            await client.close()


async def test_client_that_answers_pings_stays_open() -> None:
    rec = Recorder(echo=True)
    async with running(rec, ping_interval_s=0.25, ping_timeout_s=0.25) as server:
        client = await RawWs.open(server.port)
        await rec.next_open()
        for _ in range(3):
            ping = await client.recv()
            assert ping.opcode == PING
            client.send(PONG, ping.payload)
        client.send(TEXT, b"still here")
        assert (await client.recv()).payload == b"still here"
        assert rec.closed.empty()
        await client.close()


@pytest.mark.parametrize(
    "code",
    [
        closecodes.REVOKED,
        closecodes.TOO_MANY_CONNECTIONS,
        closecodes.RATE_LIMITED,
        closecodes.NORMAL,
    ],
)
async def test_upper_layer_close_codes_reach_the_client(code: int) -> None:
    rec = Recorder()
    async with running(rec) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        conn.send(b"last words")
        conn.close(code, "bye")
        assert conn.closed and not conn.send(b"too late")
        conn.close(closecodes.PROTOCOL_ERROR)  # idempotent: the first code stands
        assert await wait(client.texts.get()) == b"last words"
        assert await wait(client.close_code) == code
        assert client.close_reason == "bye"
        assert await rec.next_close() == (conn, code)
        await wait(transport.wait_disconnected())


async def test_close_rejects_codes_not_allowed_on_the_wire() -> None:
    rec = Recorder()
    async with running(rec) as server:
        transport, _ = await picows_connect(server.port)
        conn = await rec.next_open()
        for bad in (1005, 1006, 1015, 999, 5000):
            with pytest.raises(ValueError, match="may not be sent"):
                conn.close(bad)
        await picows_close(transport)


async def test_close_started_by_picows_is_bounded_for_a_peer_that_stopped_reading() -> None:
    # picows closes gracefully after its own errors (here 1002, an unmasked frame),
    # which waits for its write buffer to drain; the server's sweep aborts it.
    rec = Recorder()
    async with running(rec, close_timeout_s=0.2) as server:
        client = await RawWs.open(server.port, rcvbuf=4096)  # never reads
        conn = await rec.next_open()
        for _ in range(10_000):
            if not conn.send(b"x" * 8192) or conn.buffered_bytes >= 64 * 1024:
                break
            await asyncio.sleep(0)  # one loop iteration: the Outbox flushes
        client.send(TEXT, b"unmasked", masked=False)
        assert await rec.next_close() == (conn, closecodes.PROTOCOL_ERROR)
        await client.close()

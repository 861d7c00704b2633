"""Start, stop, and the connection life cycle around the handler."""

from __future__ import annotations

import asyncio
import time

import pytest
from picows import WSMsgType

from parley.gateway import Connection, GatewayConfig, GatewayServer, closecodes

from .support import (
    CLOSE,
    TEXT,
    RawWs,
    Recorder,
    TokenAuth,
    picows_connect,
    running,
    wait,
)


async def test_graceful_stop_sends_1001_and_calls_on_close_for_each() -> None:
    rec = Recorder()
    server = GatewayServer(GatewayConfig(port=0), TokenAuth(), rec)
    await server.start()
    port = server.port
    clients = [await picows_connect(port) for _ in range(5)]
    conns = [await rec.next_open() for _ in clients]
    assert server.connection_count == 5

    await wait(server.stop(drain_timeout=3.0))

    for transport, client in clients:
        assert await wait(client.close_code) == closecodes.GOING_AWAY
        assert client.close_reason == "server shutting down"
        await wait(transport.wait_disconnected())
    closes = [await rec.next_close() for _ in conns]
    assert sorted(c.id for c, _ in closes) == sorted(c.id for c in conns)
    assert {code for _, code in closes} == {closecodes.GOING_AWAY}
    assert all(n == 1 for n in rec.close_calls.values())
    assert server.connection_count == 0
    with pytest.raises(OSError):
        await RawWs.connect(port)  # no longer listening
    await server.stop()  # idempotent


async def test_stop_is_bounded_when_clients_ignore_the_close() -> None:
    rec = Recorder()
    server = GatewayServer(GatewayConfig(port=0, close_timeout_s=30), TokenAuth(), rec)
    await server.start()
    silent = await RawWs.open(server.port, rcvbuf=4096)  # never answers, never reads
    conn = await rec.next_open()
    for _ in range(10_000):  # fill the pipe so that even the close frame is stuck
        if not conn.send(b"x" * 8192) or conn.buffered_bytes >= 64 * 1024:
            break
        await asyncio.sleep(0)  # one loop iteration: the Outbox flushes
    started = time.monotonic()
    await wait(server.stop(drain_timeout=0.3))
    assert time.monotonic() - started < 2.5
    assert await rec.next_close() == (conn, closecodes.GOING_AWAY)
    assert server.connection_count == 0
    await silent.close()


async def test_upgrades_during_shutdown_are_refused_with_503() -> None:
    # A socket accepted just before stop() closed the listener may still send its
    # upgrade while connections drain: it gets 503, not a WebSocket.
    rec = Recorder()
    async with running(rec) as server:
        server._stopping = True  # the state stop() is in while connections drain
        try:
            status, raw, refused = await RawWs.connect(server.port)
        finally:
            server._stopping = False
        assert status == 503 and b"shutting down" in raw
        await refused.close()
        assert rec.opened.empty()


async def test_port_in_use_raises_oserror_cleanly() -> None:
    async with running() as first:
        second = GatewayServer(GatewayConfig(port=first.port), TokenAuth(), Recorder())
        with pytest.raises(OSError):
            await second.start()
        with pytest.raises(RuntimeError):
            _ = second.port
        await second.stop()  # nothing to stop


async def test_start_twice_is_an_error() -> None:
    async with running() as server:
        with pytest.raises(RuntimeError):
            await server.start()


async def test_close_without_answer_is_aborted_after_close_timeout() -> None:
    rec = Recorder()
    async with running(rec, close_timeout_s=0.2) as server:
        client = await RawWs.open(server.port)  # reads, but never answers the close
        conn = await rec.next_open()
        conn.close(closecodes.REVOKED, "token revoked")
        frame = await client.recv()
        assert (frame.opcode, frame.close_code) == (CLOSE, closecodes.REVOKED)
        assert frame.payload[2:] == b"token revoked"
        await client.expect_eof()
        assert await rec.next_close() == (conn, closecodes.REVOKED)
        await client.close()


class Exploding(Recorder):
    def __init__(self, where: str) -> None:
        super().__init__(echo=True)
        self.where = where

    def on_open(self, conn: Connection) -> None:
        super().on_open(conn)
        if self.where == "open":
            raise RuntimeError("bug in on_open")

    def on_text(self, conn: Connection, data: bytes) -> None:
        if self.where == "text" and data == b"boom":
            raise RuntimeError("bug in on_text")
        super().on_text(conn, data)

    def on_close(self, conn: Connection, code: int) -> None:
        super().on_close(conn, code)
        if self.where == "close":
            raise RuntimeError("bug in on_close")


@pytest.mark.parametrize("where", ["open", "text"])
async def test_handler_exceptions_close_with_1011(where: str) -> None:
    rec = Exploding(where)
    async with running(rec) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        transport.send(WSMsgType.TEXT, b"boom")
        assert await wait(client.close_code) == closecodes.INTERNAL_ERROR
        assert await rec.next_close() == (conn, closecodes.INTERNAL_ERROR)
        await wait(transport.wait_disconnected())
        assert rec.close_calls[conn.id] == 1
        # the server is fine
        client2 = await RawWs.open(server.port)
        if where == "text":
            client2.send(TEXT, b"fine")
            assert (await client2.recv()).payload == b"fine"
        await client2.close()


async def test_on_close_exception_is_contained() -> None:
    rec = Exploding("close")
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        await client.close()
        assert await rec.next_close() == (conn, closecodes.ABNORMAL)
        assert server.connection_count == 0

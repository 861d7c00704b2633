"""Frames in both directions: echo, ordering, fragmentation, coalesced writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from picows import WSMsgType

from parley.gateway.connection import WsConnection, frame_header

from .support import (
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


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_header(size: int, expected: bytes) -> None:
    assert frame_header(size) == expected


def payloads(n: int) -> list[bytes]:
    """Varied sizes around the 7-bit / 16-bit / 64-bit length boundaries, some non-ASCII."""
    sizes = [0, 1, 125, 126, 127, 1000, 4096]
    out = []
    for i in range(n):
        body = f'{{"n":{i},"t":"héllo ✓"}}'.encode()
        pad = 65536 if i % 97 == 0 else sizes[i % len(sizes)]
        out.append(body + b" " * max(0, pad - len(body)))
    return out


async def test_echo_many_frames_in_order() -> None:
    rec = Recorder(echo=True)
    async with running(rec, max_frame_bytes=70000, max_outbound_bytes=8 << 20) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        frames = payloads(2000)
        for data in frames:  # all sent before any is read back
            transport.send(WSMsgType.TEXT, data)
        for i, data in enumerate(frames):
            got_conn, got = await wait(rec.texts.get())
            assert got_conn is conn and got == data, i
            assert await wait(client.texts.get()) == data, i
        await picows_close(transport)
        assert await rec.next_close() == (conn, 1000)


async def test_server_push_in_order_with_send_and_send_many() -> None:
    rec = Recorder()
    async with running(rec, max_frame_bytes=70000, max_outbound_bytes=8 << 20) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        frames = payloads(600)
        for data in frames[:100]:
            assert conn.send(data)
        assert conn.send_many(frames[100:400])
        await asyncio.sleep(0)  # the next loop iteration: the Outbox flushes
        assert conn.send_many(iter(frames[400:]))
        for i, data in enumerate(frames):
            assert await wait(client.texts.get()) == data, i
        await picows_close(transport)


async def test_many_clients_echo_concurrently() -> None:
    rec = Recorder(echo=True)
    async with running(rec) as server:
        clients = [await picows_connect(server.port) for _ in range(20)]
        for n, (transport, _) in enumerate(clients):
            for i in range(50):
                transport.send(WSMsgType.TEXT, f"{n}:{i}".encode())
        for n, (_, client) in enumerate(clients):
            for i in range(50):
                assert await wait(client.texts.get()) == f"{n}:{i}".encode()
        for transport, _ in clients:
            await picows_close(transport)
        assert server.connection_count == 0


class _CountingTransport:
    """Wraps the asyncio transport under picows to count write calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writelines_calls = 0

    def writelines(self, parts: list[bytes]) -> None:
        self.writelines_calls += 1
        self.inner.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_frames_sent_in_one_iteration_are_one_write() -> None:
    rec = Recorder()
    async with running(rec) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        assert isinstance(conn, WsConnection)
        spy = _CountingTransport(conn._raw)
        conn._raw = spy
        for i in range(50):
            conn.send(b"%d" % i)
        assert spy.writelines_calls == 0  # queued, not written yet
        conn.flush()
        assert spy.writelines_calls == 1
        for i in range(50):
            assert await wait(client.texts.get()) == b"%d" % i
        conn._raw = spy.inner
        await picows_close(transport)


async def test_fragmented_message_is_reassembled_with_control_frames_between() -> None:
    rec = Recorder()
    async with running(rec) as server:
        client = await RawWs.open(server.port)
        await rec.next_open()
        text = "fragmented ✓ message".encode()
        client.send(TEXT, text[:3], fin=False)
        client.send(CONT, text[3:9], fin=False)
        client.send(PING, b"hi")
        client.send(CONT, text[9:], fin=True)
        client.send(TEXT, b"next")
        pong = await client.recv()
        assert (pong.opcode, pong.payload) == (PONG, b"hi")
        assert (await wait(rec.texts.get()))[1] == text
        assert (await wait(rec.texts.get()))[1] == b"next"
        await client.close()


async def test_single_large_frames_and_bytes_like_payloads() -> None:
    rec = Recorder()
    async with running(rec) as server:
        transport, client = await picows_connect(server.port)
        conn = await rec.next_open()
        big = "✓".encode() * 3000  # > 1000 bytes: written with writelines, not copied
        assert conn.send(big)
        assert await wait(client.texts.get()) == big
        assert conn.send(bytearray(b"from a bytearray"))  # type: ignore[arg-type]
        assert await wait(client.texts.get()) == b"from a bytearray"
        await picows_close(transport)

"""The bench's client sockets: bound to the worker's source address, port chosen at connect."""

from __future__ import annotations

import asyncio
import socket

import pytest
from picows.url import parse_url

from parley.bench.targets import connected_socket


async def _listener() -> tuple[asyncio.Server, int, asyncio.Queue[tuple[str, int]]]:
    peers: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], peers


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_connects_from_the_given_source_address(host: str) -> None:
    server, port, peers = await _listener()
    async with server:
        sock = await connected_socket("127.0.0.3", parse_url(f"ws://{host}:{port}/v1/ws"))
        try:
            local = sock.getsockname()
            assert local[0] == "127.0.0.3" and local[1] > 0
            async with asyncio.timeout(5):
                assert await peers.get() == local
        finally:
            sock.close()


async def test_a_refused_connect_raises() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        await connected_socket("127.0.0.2", parse_url(f"ws://127.0.0.1:{port}/v1/ws"))

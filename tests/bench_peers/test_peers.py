"""The peers' client adapters (bench/peers) against the seam, without the peers' venv.

The picows relay needs only picows and uvloop, both Parley dependencies, so it
runs here for real; the Socket.IO client is checked packet by packet and the
HTTP/1.1 client against a tiny local server.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers import targets
from bench.peers.http11 import Http, HttpError
from parley.bench.targets import TargetOptions, Topology

ROOT = Path(__file__).resolve().parents[2]


class Events:
    def __init__(self) -> None:
        self.acks: list[int] = []
        self.fails: list[tuple[int, str]] = []
        self.got: list[bytes] = []
        self.closes: list[int] = []

    def acked(self, token: int) -> None:
        self.acks.append(token)

    def failed(self, token: int, code: str) -> None:
        self.fails.append((token, code))

    def delivered(self, payload: bytes) -> None:
        self.got.append(payload)

    def closed(self, code: int, reason: str) -> None:
        self.closes.append(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - polling a plain condition
            await asyncio.sleep(0.01)


async def test_picows_relay_acks_and_forwards_in_order() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "peers" / "relay_picows.py"), "--port", str(port))
    target = targets.picows(TargetOptions(urls=(f"ws://127.0.0.1:{port}/",)))
    try:
        await target.start()
        prov = await target.provision(Topology(run_id="t1", users=2, directs=((0, 1),)))
        conv = prov.directs[0]
        ev = [Events(), Events()]
        conns = [await target.connector().connect(i, prov.credentials[i], prov.urls[0],
                                                  "127.0.0.1", ev[i], None) for i in (0, 1)]
        for k in range(100):
            conns[0].send(conv, b"%d.5" % k, k)
        conns[1].send(conv, b"7.7", 1)
        await _until(lambda: len(ev[1].got) == 100 and len(ev[0].got) == 1
                     and len(ev[0].acks) == 100)
        assert ev[0].acks == list(range(100))
        assert ev[1].got == [b"%d.5" % k for k in range(100)]
        assert ev[0].got == [b"7.7"] and ev[1].acks == [1]
        for c in conns:
            c.close()
        await _until(lambda: ev[0].closes and ev[1].closes)
        assert ev[0].closes == [1000]
    finally:
        await target.close()
        proc.terminate()
        await proc.wait()


class FakeWs:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, kind: Any, data: bytes) -> None:
        self.sent.append(data)


async def test_socketio_client_speaks_engineio_v4() -> None:
    ev = Events()
    conn = targets.SocketioConnection(ev, "ab")
    ws = FakeWs()
    conn.ws = ws  # type: ignore[assignment]
    conn.on_text(b'0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000}')
    assert ws.sent == [b"40"] and not conn.ready.done()
    conn.on_text(b'40{"sid":"y"}')
    assert conn.ready.done()
    conn.send("ab cd", b"1.25", 7)
    assert ws.sent[-1] == b'427["send",{"to":"cd","id":"' + conn.prefix + b'.7","body":"1.25"}]'
    conn.on_text(b'437[{"id":"ab.7"}]')
    conn.on_text(b'42["msg",{"from":"cd","id":"cd.3","body":"9.5"}]')
    conn.on_text(b"2")
    assert ev.acks == [7] and ev.got == [b"9.5"] and ws.sent[-1] == b"3"


_HANDLERS_DONE: list[asyncio.Event] = []


async def _serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    done = asyncio.Event()
    _HANDLERS_DONE.append(done)
    try:
        await _answer(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()
        done.set()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), b"0"))
        body = await reader.readexactly(length)
        path = head.split(b" ")[1]
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
        elif path == b"/missing":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


async def test_http11_keepalive_chunked_and_errors() -> None:
    server = await asyncio.start_server(_serve_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = Http("127.0.0.1", port)
    try:
        assert await http.request("PUT", "/echo", {"x": [1, 2]}, "tok") == {"x": [1, 2]}
        assert await http.request("GET", "/chunked") == {"a": 1}
        with pytest.raises(HttpError) as info:
            await http.request("GET", "/missing")
        assert info.value.status == 404
    finally:
        http.close()
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(10):  # the handler sees the client close and ends
            for done in _HANDLERS_DONE:
                await done.wait()

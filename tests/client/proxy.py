"""A TCP proxy between a client and a node that can alter server -> client frames.

Real sockets end to end: the client connects to the proxy, the proxy to the
node.  Client -> server bytes pass through untouched.  Server -> client bytes
pass through after the HTTP upgrade answer, parsed into WebSocket frames, so a
test can drop or duplicate chosen text frames (a lost ``sent`` ack, a repeated
``msg`` push) or hold new connections until released.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Predicate = Callable[[bytes], bool]


class FrameProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop: Predicate | None = None
        """Server text frames for which this returns True are not forwarded."""
        self.duplicate: Predicate | None = None
        """Server text frames for which this returns True are forwarded twice."""
        self.gate = asyncio.Event()
        """Cleared: new connections wait (unconnected upstream) until it is set."""
        self.gate.set()
        self.accepted = 0
        self.arrived = asyncio.Event()
        """Set on every accepted connection (clear it to wait for the next)."""
        self.dropped: list[bytes] = []
        self.duplicated: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.gate.set()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.arrived.set()
        self._writers.add(cwriter)
        await self.gate.wait()
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cwriter.transport.abort()
            return
        self._writers.add(swriter)
        self._spawn(self._pipe(creader, swriter))
        self._spawn(self._frames(sreader, cwriter))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()  # mirror a reset as a reset
        else:
            writer.close()  # and a clean end as a clean end

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            while True:
                hdr = await reader.readexactly(2)
                size = hdr[1] & 0x7F
                ext = b""
                if size == 126:
                    ext = await reader.readexactly(2)
                    size = int.from_bytes(ext, "big")
                elif size == 127:
                    ext = await reader.readexactly(8)
                    size = int.from_bytes(ext, "big")
                assert not hdr[1] & 0x80, "server frames are never masked"
                payload = await reader.readexactly(size)
                raw = hdr + ext + payload
                if hdr[0] & 0x0F == 0x1:  # text
                    if self.drop is not None and self.drop(payload):
                        self.dropped.append(payload)
                        continue
                    if self.duplicate is not None and self.duplicate(payload):
                        self.duplicated.append(payload)
                        writer.write(raw)
                writer.write(raw)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

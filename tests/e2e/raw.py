"""A frame-level WebSocket client for tests that must control every frame
(lose an ack, send garbage).  Real sockets, the SDK's picows transport."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec

from parley.client.transport import Transport, open_websocket
from parley.protocol import ServerFrame, decode_server_frame

F = TypeVar("F")


class RawClient:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[ServerFrame] = asyncio.Queue()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.transport: Transport | None = None

    # FrameSink
    def on_open(self, transport: Transport) -> None:
        self.transport = transport

    def on_text(self, data: bytes) -> None:
        self.frames.put_nowait(decode_server_frame(data))

    def on_closed(self, code: int, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason))

    @classmethod
    async def connect(cls, url: str, token: str, device: str) -> RawClient:
        c = cls()
        t = await open_websocket(
            f"{url}?device={device}", {"Authorization": f"Bearer {token}"}, c,
            connect_timeout=5, max_message=1 << 20, ping_interval=None,
        )
        c.transport = t
        return c

    def send_bytes(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(data)

    def send(self, frame: dict[str, Any]) -> None:
        self.send_bytes(msgspec.json.encode(frame))

    async def expect(self, kind: type[F], timeout: float = 10) -> F:
        """The next frame of type ``kind`` (other frames are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                f = await self.frames.get()
                if isinstance(f, kind):
                    return f

    async def next_frame(self) -> ServerFrame | None:
        """The next frame, or None once the connection is closed and nothing is queued."""
        if not self.frames.empty():
            return self.frames.get_nowait()
        getter: asyncio.Future[Any] = asyncio.ensure_future(self.frames.get())
        closed: asyncio.Future[Any] = self.closed
        done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            frame: ServerFrame = getter.result()
            return frame
        getter.cancel()
        return None

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.abort()

    async def close(self) -> None:
        if self.transport is not None and not self.transport.closed:
            self.transport.close()
        async with asyncio.timeout(10):
            await asyncio.shield(self.closed)

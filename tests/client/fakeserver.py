"""A scripted WebSocket server for client tests of what a real node will not do on
demand (close codes, ``reconnect`` frames, retryable errors, huge bursts).

Real picows sockets; each accepted connection is a :class:`FakeConn` that the
test drives: ``await conn.recv()`` the client's next frame (decoded by the real
codec), ``conn.send(frame)`` a server frame, ``conn.close(code)``.
"""

from __future__ import annotations

import asyncio

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from parley.protocol import (
    Ack,
    ClientFrame,
    Limits,
    ServerFrame,
    Sync,
    SyncPage,
    Welcome,
    decode_client_frame,
    encode,
)

LIMITS = Limits()


class FakeConn(WSListener):
    def __init__(self, request: WSUpgradeRequest) -> None:
        self.request = request
        self.frames: asyncio.Queue[ClientFrame] = asyncio.Queue()
        self.acks: list[Ack] = []
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            f = decode_client_frame(frame.get_payload_as_bytes(), LIMITS)
            if isinstance(f, Ack):
                self.acks.append(f)
            self.frames.put_nowait(f)
        elif frame.msg_type is WSMsgType.CLOSE:
            if not self.closed.done():
                self.closed.set_result(frame.get_close_code().value)
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(1006)

    def send(self, frame: ServerFrame) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, encode(frame))

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)

    def close(self, code: int, reason: str = "") -> None:
        assert self.transport is not None
        self.transport.send_close(WSCloseCode(code), reason.encode())

    async def recv(self, *, skip_acks: bool = True) -> ClientFrame:
        while True:
            f = await self.frames.get()
            if not (skip_acks and isinstance(f, Ack)):
                return f

    async def recv_type(self, tp: type) -> ClientFrame:
        while True:
            f = await self.recv()
            if isinstance(f, tp):
                return f

    async def start_session(self, uid: int = 7, device: str = "d1") -> Sync:
        """Send the welcome, answer the first sync with an empty page; return that sync."""
        self.send(Welcome(uid=uid, device=device, server_time=0, limits=LIMITS.welcome()))
        sync = await self.recv()
        assert isinstance(sync, Sync), sync
        self.send(SyncPage(rid=sync.rid, msgs=[], more=False))
        return sync


class FakeServer:
    def __init__(self) -> None:
        self.conns: asyncio.Queue[FakeConn] = asyncio.Queue()
        self.reject: tuple[int, bytes] | None = None
        self.all: list[FakeConn] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await ws_create_server(self._factory, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/ws"

    async def accept(self) -> FakeConn:
        return await self.conns.get()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for c in self.all:
            if c.transport is not None:
                c.transport.disconnect(graceful=False)
        await asyncio.gather(*(c.closed for c in self.all if c.transport is not None))
        await self._server.wait_closed()

    def _factory(self, request: WSUpgradeRequest) -> FakeConn | WSUpgradeResponseWithListener:
        if self.reject is not None:
            status, body = self.reject
            response = WSUpgradeResponse.create_error_response(
                status, body, {"Content-Type": "application/json"}
            )
            return WSUpgradeResponseWithListener(response, None)
        conn = FakeConn(request)
        self.all.append(conn)
        self.conns.put_nowait(conn)
        return conn

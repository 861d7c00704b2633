"""Test doubles and clients for the gateway tests: no sleeps, every wait has a timeout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import picows
from picows import WSMsgType

from parley.errors import Forbidden, Unauthenticated
from parley.gateway import (
    Connection,
    GatewayConfig,
    GatewayServer,
    Principal,
    UpgradeRequest,
)

TIMEOUT = 5.0
GOOD_PATH = "/v1/ws?device=dev-1&token=good-7"

# Opcodes (RFC 6455 section 5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


async def wait(aw: Any, within: float = TIMEOUT) -> Any:
    """Await ``aw`` for at most ``within`` seconds (every wait in these tests is bounded)."""
    return await asyncio.wait_for(aw, within)


class TokenAuth:
    """Accepts ``token=good-<user>`` (query) or ``Authorization: Bearer good-<user>``."""

    def __init__(self) -> None:
        self.requests: list[UpgradeRequest] = []

    def authenticate(self, req: UpgradeRequest) -> Principal:
        self.requests.append(req)
        token = req.query.get("token")
        auth = req.headers.get("authorization", "")
        if token is None and auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
        if token == "forbidden":
            raise Forbidden("this account may not connect")
        if token is None or not token.startswith("good-"):
            raise Unauthenticated()
        return Principal(1, int(token.removeprefix("good-")), req.device_id, f"s-{req.remote}")


class Recorder:
    """A SessionHandler that records everything; optionally echoes text back."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.opened: asyncio.Queue[Connection] = asyncio.Queue()
        self.texts: asyncio.Queue[tuple[Connection, bytes]] = asyncio.Queue()
        self.closed: asyncio.Queue[tuple[Connection, int]] = asyncio.Queue()
        self.close_calls: Counter[int] = Counter()
        self.open_ids: set[int] = set()

    def on_open(self, conn: Connection) -> None:
        self.open_ids.add(conn.id)
        self.opened.put_nowait(conn)

    def on_text(self, conn: Connection, data: bytes) -> None:
        if self.echo:
            conn.send(data)
        self.texts.put_nowait((conn, data))

    def on_close(self, conn: Connection, code: int) -> None:
        assert conn.id in self.open_ids, "on_close without on_open"
        self.close_calls[conn.id] += 1
        self.closed.put_nowait((conn, code))

    async def next_open(self) -> Connection:
        conn: Connection = await wait(self.opened.get())
        return conn

    async def next_close(self) -> tuple[Connection, int]:
        item: tuple[Connection, int] = await wait(self.closed.get())
        return item


@contextlib.asynccontextmanager
async def running(
    handler: Any = None, auth: Any = None, on_upgrade: Any = None, **settings: Any
) -> AsyncIterator[GatewayServer]:
    settings.setdefault("port", 0)
    settings.setdefault("close_timeout_s", 2.0)
    server = GatewayServer(
        GatewayConfig(**settings), auth or TokenAuth(), handler or Recorder(echo=True),
        on_upgrade=on_upgrade,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(2.0)


# ----------------------------------------------------------------------------- raw client


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """Build one client frame by hand, so that tests can break any rule they like."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + body


class RawWs:
    """A hand-written WebSocket client over a plain TCP stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    def request_bytes(target: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {target} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @classmethod
    async def connect(
        cls,
        port: int,
        target: str = GOOD_PATH,
        headers: Iterable[tuple[str, str]] = (),
        *,
        rcvbuf: int | None = None,
    ) -> tuple[int, bytes, RawWs]:
        """Send the upgrade; return (status, raw response head + body, client)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await wait(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        client = cls(reader, writer)
        writer.write(cls.request_bytes(target, headers))
        head = await wait(reader.readuntil(b"\r\n\r\n"))
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            head += await wait(reader.read())  # the error body, then EOF
        return status, head, client

    @staticmethod
    async def plain_get(port: int, target: str) -> bytes:
        """A GET without WebSocket headers; return everything the server sent before EOF."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data: bytes = await wait(reader.read())
        writer.close()
        with contextlib.suppress(OSError):
            await wait(writer.wait_closed())
        return data

    @classmethod
    async def open(cls, port: int, target: str = GOOD_PATH, **kw: Any) -> RawWs:
        status, head, client = await cls.connect(port, target, **kw)
        assert status == 101, head
        return client

    def send(self, opcode: int, payload: bytes = b"", **kw: Any) -> None:
        self.writer.write(encode_frame(opcode, payload, **kw))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, within: float = TIMEOUT) -> Frame:
        async def read() -> Frame:
            b1, b2 = await self.reader.readexactly(2)
            n = b2 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not b2 & 0x80, "server frames must not be masked"
            return Frame(bool(b1 & 0x80), b1 & 0x0F, await self.reader.readexactly(n))

        frame: Frame = await wait(read(), within)
        return frame

    async def recv_close(self) -> Frame:
        """Skip data/ping frames until the close frame; return it."""
        while True:
            frame = await self.recv()
            if frame.opcode == CLOSE:
                return frame

    async def expect_eof(self) -> None:
        data = await wait(self.reader.read(65536))
        while data:
            data = await wait(self.reader.read(65536))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await wait(self.writer.wait_closed())


# ----------------------------------------------------------------------------- picows client


class PicowsClient(picows.WSListener):
    """A well-behaved client: queues text frames, answers the server's close."""

    def __init__(self) -> None:
        self.texts: asyncio.Queue[bytes] = asyncio.Queue()
        self.close_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_reason = ""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.texts.put_nowait(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_reason = frame.get_close_reason() or ""
            if not self.close_code.done():
                self.close_code.set_result(code.value)
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if not self.close_code.done():
            self.close_code.set_result(1006)


async def picows_connect(
    port: int, target: str = GOOD_PATH, **kw: Any
) -> tuple[picows.WSTransport, PicowsClient]:
    transport, listener = await picows.ws_connect(
        PicowsClient, f"ws://127.0.0.1:{port}{target}", **kw
    )
    assert isinstance(listener, PicowsClient)
    return transport, listener


async def picows_close(transport: picows.WSTransport) -> None:
    """Close handshake from the client side: the server answers and drops TCP."""
    transport.send_close(picows.WSCloseCode.OK)
    await wait(transport.wait_disconnected())

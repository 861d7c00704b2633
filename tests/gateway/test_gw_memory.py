"""What an open connection keeps: not the upgrade's headers or query string, no task
of its own; and the one heartbeat that pings them all."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import Counter
from dataclasses import dataclass

import pytest
from picows import WSMsgType

from parley.gateway import Principal, closecodes
from parley.gateway.connection import GatewayContext, Outbox, WsConnection
from tests.waiting import until

from .support import TEXT, RawWs, Recorder, TokenAuth, running


async def test_open_connection_drops_the_upgrade_headers_and_query() -> None:
    rec, auth = Recorder(echo=True), TokenAuth()
    async with running(rec, auth) as server:
        _, _, client = await RawWs.connect(
            server.port, "/v1/ws?device=dev-1", [("Authorization", "Bearer good-7")]
        )
        conn = await rec.next_open()
        assert auth.requests[0].headers["authorization"] == "Bearer good-7"  # seen, then dropped
        assert isinstance(conn, WsConnection)
        transport = conn._transport
        assert transport is not None
        assert transport.request.path == b"/v1/ws"
        assert len(transport.request.headers) == 0
        assert len(transport.response.headers) == 0
        client.send(TEXT, b"still works")
        assert (await client.recv()).payload == b"still works"
        await client.close()


async def test_connections_have_no_task_of_their_own() -> None:
    """One heartbeat task pings for every connection (picows' auto-ping was one per socket)."""
    rec = Recorder(echo=True)
    async with running(rec) as server:
        before = len(asyncio.all_tasks())
        clients = [(await RawWs.connect(server.port))[2] for _ in range(5)]
        for _ in clients:
            await rec.next_open()
        assert len(asyncio.all_tasks()) == before
        for client in clients:
            await client.close()


# ----------------------------------------------------------------------------- heartbeat


class _Upgrade:
    def __init__(self) -> None:
        self.path = b"/v1/ws?device=d"
        self.headers: dict[str, str] = {}


class _FakeTransport:
    def __init__(self) -> None:
        self.underlying_transport = self
        self.request = self.response = _Upgrade()
        self.is_close_frame_sent = False
        self.pings = 0
        self.closes: list[int] = []

    def send_ping(self) -> None:
        self.pings += 1

    def send_close(self, code: int, reason: bytes) -> None:
        self.is_close_frame_sent = True
        self.closes.append(int(code))

    def disconnect(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class _Frame:
    msg_type: WSMsgType
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False
    fin: bool = True

    def get_payload_as_bytes(self) -> bytes:
        return b"x"


def _open_conn() -> tuple[GatewayContext, WsConnection, _FakeTransport]:
    loop = asyncio.get_running_loop()
    ctx = GatewayContext(
        loop=loop, handler=Recorder(), outbox=Outbox(loop), max_message=1000,
        close_timeout=1.0, on_opened=lambda c: None, on_closed=lambda c: None,
    )
    conn = WsConnection(ctx, 1, Principal(1, 2, "d", "s"), "peer", 10_000)
    transport = _FakeTransport()
    conn.on_ws_connected(transport)  # type: ignore[arg-type]
    return ctx, conn, transport


def _beat(ctx: GatewayContext, conn: WsConnection, idle: int = 8, reply: int = 4) -> None:
    ctx.tick += 1
    conn.heartbeat(ctx.tick, idle, reply)


async def test_heartbeat_pings_when_idle_and_a_pong_keeps_the_connection() -> None:
    ctx, conn, transport = _open_conn()
    for _ in range(8):
        _beat(ctx, conn)
    assert transport.pings == 0  # 8 ticks may be less than 8 ticks of silence
    _beat(ctx, conn)
    assert transport.pings == 1
    conn.on_ws_frame(transport, _Frame(WSMsgType.PONG))  # type: ignore[arg-type]
    for _ in range(8):
        _beat(ctx, conn)
    assert (transport.pings, transport.closes, conn.closed) == (1, [], False)
    _beat(ctx, conn)
    assert transport.pings == 2


async def test_heartbeat_frames_put_off_the_ping() -> None:
    ctx, conn, transport = _open_conn()
    for _ in range(20):
        _beat(ctx, conn)
        conn.on_ws_frame(transport, _Frame(WSMsgType.TEXT))  # type: ignore[arg-type]
    assert transport.pings == 0


async def test_heartbeat_closes_1001_without_a_pong_even_if_other_frames_come() -> None:
    ctx, conn, transport = _open_conn()
    for _ in range(9):
        _beat(ctx, conn)
    assert transport.pings == 1
    for _ in range(3):
        conn.on_ws_frame(transport, _Frame(WSMsgType.TEXT))  # type: ignore[arg-type]
        _beat(ctx, conn)
    assert transport.closes == []
    _beat(ctx, conn)
    assert transport.closes == [closecodes.GOING_AWAY]
    assert conn.closed


async def test_no_gateway_task_keeps_the_last_closed_connection_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep and the heartbeat visit every connection.  Once the node's last one
    has closed, neither may keep it referenced: seen in CI, the sweep's loop
    variable held the last connection it visited (and its whole graph) until
    another connection came."""
    visits: Counter[str] = Counter()
    reap, beat = WsConnection.reap_if_closed_by_picows, WsConnection.heartbeat

    def counted_reap(self: WsConnection) -> None:
        visits["sweep"] += 1
        reap(self)

    def counted_beat(self: WsConnection, tick: int, idle_ticks: int, reply_ticks: int) -> None:
        visits["heartbeat"] += 1
        beat(self, tick, idle_ticks, reply_ticks)

    monkeypatch.setattr(WsConnection, "reap_if_closed_by_picows", counted_reap)
    monkeypatch.setattr(WsConnection, "heartbeat", counted_beat)
    rec = Recorder()
    async with running(rec, close_timeout_s=0.02, ping_interval_s=5, ping_timeout_s=0.08) as server:
        client = await RawWs.open(server.port)
        conn = await rec.next_open()
        assert isinstance(conn, WsConnection)
        await until(lambda: visits["sweep"] >= 1 and visits["heartbeat"] >= 1,
                    what="a sweep and a heartbeat over the open connection")
        ref = weakref.ref(conn)
        conn.close(closecodes.NORMAL, "bye")
        assert (await client.recv_close()).close_code == closecodes.NORMAL
        await client.close()
        closed, _ = await rec.next_close()
        assert closed is conn and server.connection_count == 0
        del conn, closed
        gc.disable()  # freed by reference counting, as a frozen heap requires (parley.heap)
        try:
            await until(lambda: ref() is None, what="the closed connection freed")
        finally:
            gc.enable()

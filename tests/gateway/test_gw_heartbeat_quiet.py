"""The server's heartbeat keeps a client with the SDK's ping interval quiet.

The SDK pings only after ``PING_INTERVAL_S`` (45 s) without a frame from the
server, longer than the server takes to ping a silent connection (30 s, plus at
most half its 10 s pong timeout).  So while the server is alive the client never
pings: the heartbeat is the server's alone, sent in sweeps rather than one wake-up
per client ping.  Scaled down here by the same ratios (server: ping after 1 s of
silence, checked every 0.1 s; client: ping after 1.5 s without a frame), with a
real gateway and a picows client configured as the SDK configures it.  The
control case (a client pinging sooner than the server) shows the count can move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import picows
from picows import WSMsgType

from parley.client import PING_INTERVAL_S
from parley.gateway.config import GatewayConfig

from .support import GOOD_PATH, PicowsClient, running

SERVER = GatewayConfig()
SCALE = 1.0 / SERVER.ping_interval_s  # server interval 30 s -> 1 s


class Counting(PicowsClient):
    """Answers the server's pings itself (auto-pong off) to count them; counts its
    own auto-pings."""

    def __init__(self) -> None:
        super().__init__()
        self.server_pings = 0
        self.own_pings = 0
        self.changed = asyncio.Event()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == WSMsgType.PING:
            self.server_pings += 1
            transport.send_pong(frame.get_payload_as_bytes())
            self.changed.set()
        else:
            super().on_ws_frame(transport, frame)

    def send_user_specific_ping(self, transport: picows.WSTransport) -> None:
        self.own_pings += 1
        self.changed.set()
        transport.send_ping()


async def _connect(port: int, idle_s: float) -> tuple[picows.WSTransport, Counting]:
    transport, listener = await picows.ws_connect(
        Counting, f"ws://127.0.0.1:{port}{GOOD_PATH}", enable_auto_pong=False,
        enable_auto_ping=True, auto_ping_idle_timeout=idle_s,
        auto_ping_reply_timeout=min(idle_s, 10.0 * SCALE),
    )
    assert isinstance(listener, Counting)
    return transport, listener


async def _until(listener: Counting, done: Callable[[], bool], within: float = 15.0) -> None:
    """Wait on the listener's counts (no polling) until ``done``, for ``within`` s in all."""
    async with asyncio.timeout(within):
        while not done():
            listener.changed.clear()
            await listener.changed.wait()


async def test_a_client_with_the_sdk_interval_never_pings_a_live_server() -> None:
    assert SERVER.ping_interval_s + SERVER.ping_timeout_s / 2 < PING_INTERVAL_S
    async with running(ping_interval_s=SERVER.ping_interval_s * SCALE,
                       ping_timeout_s=SERVER.ping_timeout_s * SCALE) as server:
        transport, listener = await _connect(server.port, PING_INTERVAL_S * SCALE)
        await _until(listener, lambda: listener.server_pings >= 3)
        assert listener.own_pings == 0
        assert not listener.close_code.done()  # answered: still open
        transport.disconnect()


async def test_a_client_pinging_sooner_than_the_server_does_all_the_pinging() -> None:
    async with running(ping_interval_s=SERVER.ping_interval_s * SCALE,
                       ping_timeout_s=SERVER.ping_timeout_s * SCALE) as server:
        transport, listener = await _connect(server.port, 0.5 * SERVER.ping_interval_s * SCALE)
        await _until(listener, lambda: listener.own_pings >= 3)
        assert listener.server_pings == 0
        transport.disconnect()

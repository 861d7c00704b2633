"""``GatewayServer``: the listening socket, the upgrade, the set of open connections.

Built on picows (the fastest Python WebSocket library measured here, see
docs REFERENCE §1).  picows' public ``ws_create_server`` gives the listener
factory only the parsed request, not the peer address the authenticator is
promised, so this module builds picows' ``WSProtocol`` itself (exactly as
``ws_create_server`` does) from a subclass that records the peer on
``connection_made``.  That constructor is picows-internal: pin picows' minor
version; the gateway tests exercise it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from parley.errors import ParleyError, Unavailable

from . import closecodes
from .config import GatewayConfig
from .connection import GatewayContext, Outbox, WsConnection
from .handshake import Rejection, UpgradeScreen
from .seam import Authenticator, SessionHandler

__all__ = ["GatewayServer"]

_log = logging.getLogger("parley.gateway")

SWEEP_CHUNK = 1000
"""Connections the heartbeat visits before letting the loop run other callbacks:
one pass over 16,000 idle connections held the loop 3.5-5.3 ms at once (measured
with `parley bench connect --connections 16000`); a slice of 1,000, ~0.3 ms."""

SWEEP_SPREAD = 0.8
"""Share of a heartbeat tick over which its slices are spread (see ``_heartbeat``)."""


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to picows, one level quieter for what peers cause.

    picows logs every connect and disconnect at INFO and every client protocol
    violation at ERROR (a client could flood the log); here those become DEBUG
    and INFO.  Errors with a traceback (bugs) stay ERROR.  Being an adapter
    also stops picows from creating a child ``Logger`` per connection.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.INFO:
            level = logging.DEBUG
        elif level == logging.ERROR and not kwargs.get("exc_info"):
            level = logging.INFO
        super().log(level, msg, *args, **kwargs)


class _Acceptor:
    """picows' listener factory for one accepted socket (lives until the upgrade)."""

    __slots__ = ("remote", "server")

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.remote = "?"

    def __call__(self, request: WSUpgradeRequest) -> WsConnection | WSUpgradeResponseWithListener:
        return self.server._upgrade(request, self.remote)


class _GatewayProtocol(WSProtocol):  # type: ignore[misc]
    """picows' protocol, plus handing the peer address to this socket's acceptor
    and counting upgrades that never came (``handshake_timeout_s``)."""

    __slots__ = ("_acceptor", "_server")
    _acceptor: _Acceptor | None
    _server: GatewayServer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        acceptor = self._acceptor
        assert acceptor is not None
        self._acceptor = None
        acceptor.remote = _format_peer(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def _handshake_timeout_callback(self) -> None:  # picows' timer, overridden to count
        self._server._outcome("handshake_timeout")
        super()._handshake_timeout_callback()


class GatewayServer:
    """Accepts WebSockets on ``config.host:config.port`` and hands them to ``handler``.

    Life cycle: ``await start()`` once, then ``await stop()`` once.  Upgrades are
    screened by :class:`UpgradeScreen` (404 / 503 / 400 / 403, then the
    authenticator); accepted sockets become :class:`WsConnection` objects passed
    to ``handler.on_open``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        authenticator: Authenticator,
        handler: SessionHandler,
        *,
        use_aiofastnet: bool = False,
        on_upgrade: Callable[[str], None] | None = None,
    ) -> None:
        """``use_aiofastnet`` selects picows' optional aiofastnet transport instead of the
        loop's own.  Off by default: under uvloop it costs the same CPU but 5.3 KiB more
        per idle connection (measured with tests/gateway/bench_fanout.py), and its
        accept loop mishandles EMFILE (it calls ``remove_reader`` on a socket).

        ``on_upgrade`` is told how each accepted socket's upgrade ended: "accepted",
        "refused" (an HTTP error answered) or "handshake_timeout" (no complete
        upgrade request within ``handshake_timeout_s``: dropped unanswered)."""
        self._on_upgrade = on_upgrade
        self._config = config
        self._handler = handler
        self._screen = UpgradeScreen(config.allowed_origins, authenticator)
        self._use_aiofastnet = use_aiofastnet
        self._ids = itertools.count(1)
        self._conns: set[WsConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._ctx: GatewayContext | None = None
        self._stopping = False
        self._drained: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._picows_log = _PicowsLog(logging.getLogger("parley.gateway.picows"), {})

    @property
    def connection_count(self) -> int:
        """Open WebSockets (upgraded and not yet closed)."""
        return len(self._conns)

    @property
    def port(self) -> int:
        """The bound port (useful with ``config.port == 0``).  Only after ``start``."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        sockets = self._server.sockets  # type: ignore[attr-defined]
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting.  Raises ``OSError`` (e.g. address in use) and
        leaves nothing open behind if binding fails."""
        if self._server is not None or self._stopping:
            raise RuntimeError("GatewayServer.start() may be called only once")
        loop = asyncio.get_running_loop()
        self._ctx = GatewayContext(
            loop=loop,
            handler=self._handler,
            outbox=Outbox(loop),
            max_message=self._config.max_frame_bytes,
            close_timeout=self._config.close_timeout_s,
            on_opened=self._conns.add,
            on_closed=self._on_closed,
        )
        self._drained = asyncio.Event()
        cfg = self._config
        if self._use_aiofastnet:
            import aiofastnet

            self._server = await aiofastnet.create_server(
                loop,
                self._new_protocol,
                cfg.host,
                cfg.port,
                backlog=cfg.backlog,
                reuse_address=True,
            )
        else:
            self._server = await loop.create_server(
                self._new_protocol, cfg.host, cfg.port, backlog=cfg.backlog, reuse_address=True
            )
        self._sweeper = loop.create_task(self._sweep(), name="gateway-sweep")
        self._heart = loop.create_task(self._heartbeat(), name="gateway-heartbeat")
        _log.debug("gateway listening on %s:%d", cfg.host, self.port)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, close every connection with 1001, wait for them (bounded).

        Connections still open after ``drain_timeout`` seconds are aborted;
        ``on_close`` has been called for every connection when this returns.
        """
        server = self._server
        if server is None or self._stopping:
            return
        self._stopping = True
        server.close()
        for task in (self._sweeper, self._heart):
            if task is not None:
                task.cancel()
        for conn in list(self._conns):
            conn.close(closecodes.GOING_AWAY, "server shutting down")
        assert self._drained is not None
        if self._conns:
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                if self._conns:
                    _log.warning(
                        "%d connections did not close in %.1fs; aborting them",
                        len(self._conns),
                        drain_timeout,
                    )
                    for conn in list(self._conns):
                        conn.abort()
                    try:
                        await asyncio.wait_for(self._drained.wait(), 1.0)
                    except TimeoutError:
                        _log.error("%d connections still open after abort", len(self._conns))
        _log.debug("gateway stopped")

    # -- internals ------------------------------------------------------------------

    def _new_protocol(self) -> _GatewayProtocol:
        cfg = self._config
        acceptor = _Acceptor(self)
        protocol = _GatewayProtocol(
            None,  # host:port (client side only)
            None,  # path (client side only)
            False,  # is_client_side
            acceptor,
            self._picows_log,
            True,  # disconnect_on_exception
            cfg.handshake_timeout_s,
            False,  # enable_auto_ping: the heartbeat task pings (see _heartbeat)
            cfg.ping_interval_s,
            cfg.ping_timeout_s,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: WsConnection answers pings after checking them
            cfg.max_frame_bytes,
            None,  # extra_headers (client side only)
            cfg.read_buffer_bytes,
        )
        protocol._acceptor = acceptor
        protocol._server = self
        return protocol

    async def _sweep(self) -> None:
        """Every ``close_timeout_s``, bound the closes picows began by itself.

        O(connections) attribute checks: ~1 ms per 10,000 connections.  The pass is a
        method of its own so that no local of this long-lived coroutine keeps the
        last connection it visited (and so that connection's whole graph) alive:
        with no connection left, a loop variable would hold it until the next one.
        """
        while True:
            await asyncio.sleep(self._config.close_timeout_s)
            self._reap()

    def _reap(self) -> None:
        for conn in list(self._conns):
            conn.reap_if_closed_by_picows()

    async def _heartbeat(self) -> None:
        """Every quarter of ``ping_timeout_s``, advance the tick and let each connection
        ping or time out (``WsConnection.heartbeat``).

        Ticks are that far apart (later when the loop lags), so a ping goes out
        after ``ping_interval_s`` to ``ping_interval_s + 0.7 * ping_timeout_s`` of
        silence, and an unanswered one closes the connection (1001) four ticks,
        ``ping_timeout_s``, later (but see below).  O(connections) per tick: 2-3 ms per
        10,000 connections (every 2.5 s with the default 10 s timeout), in
        ``SWEEP_CHUNK`` slices so no other callback waits for the whole pass.

        The slices are spread evenly over the first ``SWEEP_SPREAD`` of the tick,
        not run back to back, so the pings of a tick, with the pongs they bring
        back, come a slice at a time.  Back to back, a node holding 16,700 idle
        connections sent ~1,400 pings within a few ms every 2.5 s and then read
        ~1,400 pongs; beside 100,000 held connections, chat at 1,000 msg/s had
        send->deliver p99 40-83 ms with those bursts, 19-32 ms with no heartbeat
        at all and 16-21 ms with the slices spread (docs/performance.md, runs
        25-28).
        A connection's point in the pass moves when others open or close (the
        pass follows the set's order), so its timeout can come up to
        ``SWEEP_SPREAD`` of a tick early or late; a ping still never goes out
        before ``ping_interval_s`` of silence.
        """
        cfg = self._config
        ctx = self._ctx
        assert ctx is not None
        loop = asyncio.get_running_loop()
        reply_ticks = 4
        period = cfg.ping_timeout_s / reply_ticks
        # (the epsilon keeps e.g. 0.2 / 0.025 = 8.000000000000002 at 8 ticks)
        idle_ticks = math.ceil(cfg.ping_interval_s / period - 1e-9)
        due = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            start = loop.time()
            ctx.tick = tick = ctx.tick + 1
            # Emptied as it goes (see _sweep: no local may keep a connection alive);
            # a connection closed between slices returns at once from heartbeat.
            pending = list(self._conns)
            gap = period * SWEEP_SPREAD * SWEEP_CHUNK / max(len(pending), 1)
            n = 0
            while pending:
                self._beat(pending, tick, idle_ticks, reply_ticks)
                n += 1
                if pending:
                    await asyncio.sleep(max(0.0, start + n * gap - loop.time()))
            due = max(start + period, loop.time())

    @staticmethod
    def _beat(pending: list[WsConnection], tick: int, idle_ticks: int, reply_ticks: int) -> None:
        """Heartbeat the first ``SWEEP_CHUNK`` of ``pending`` and remove them from it."""
        for conn in pending[:SWEEP_CHUNK]:
            conn.heartbeat(tick, idle_ticks, reply_ticks)
        del pending[:SWEEP_CHUNK]

    def _upgrade(
        self, request: WSUpgradeRequest, remote: str
    ) -> WsConnection | WSUpgradeResponseWithListener:
        refusal: ParleyError | None = None
        if self._stopping:
            refusal = Unavailable("the server is shutting down")
        elif len(self._conns) >= self._config.max_connections:
            refusal = Unavailable("too many connections on this server")
        result = self._screen.check(request.path, request.headers.items(), remote, refusal)
        if isinstance(result, Rejection):
            self._outcome("refused")
            headers = {"Content-Type": "application/json"}
            if result.status == 503:
                headers["Retry-After"] = "5"
            response = WSUpgradeResponse.create_error_response(
                result.status, result.body(), headers
            )
            return WSUpgradeResponseWithListener(response, None)
        assert self._ctx is not None
        self._outcome("accepted")
        return WsConnection(
            self._ctx, next(self._ids), result, remote, self._config.max_outbound_bytes
        )

    def _outcome(self, outcome: str) -> None:
        if self._on_upgrade is not None:
            self._on_upgrade(outcome)

    def _on_closed(self, conn: WsConnection) -> None:
        self._conns.discard(conn)
        if self._stopping and not self._conns and self._drained is not None:
            self._drained.set()

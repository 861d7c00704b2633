"""One WebSocket connection: the picows listener that is also the upper layer's ``Connection``.

Inbound, per frame (picows has already unmasked it and checked opcode, masking,
control-frame length and fragmentation, and the per-frame size): this module
adds the checks picows leaves to its user — reserved bits (1002), binary frames
(1003), continuation frames out of place (1002), message size after reassembly
(1009), UTF-8 of text (1007) and the close code's validity (1002).  Pings are
answered here, not by picows, so that they pass the same checks.

UTF-8 check cost (152-byte frame, CPython 3.11): ``bytes.isascii()`` 24 ns, and
only non-ASCII payloads are decoded (``bytes.decode()`` 166 ns for 152 bytes of
"é").  The whole gateway path costs 0-3% of echo throughput against a bare
picows echo listener (tests/gateway/bench_echo.py, 50 connections, one frame in
flight each; medians on a quiet machine 127k vs 131k echoes per server
CPU-second, on a loaded one 98k vs 96k; run-to-run noise ±8%).

Outbound: ``send`` queues a reference to the payload (no copy) and, on the
connection's first frame of the iteration, appends it to the server's
:class:`Outbox`; one ``loop.call_soon`` callback per event-loop iteration then
writes each marked connection once — a single frame through picows'
``WSTransport.send`` (header + memcpy + ``send(2)`` in C), several frames as
one ``writelines`` of header/payload pairs (one ``writev(2)``, no payload copy).

Measured with tests/gateway/bench_fanout.py (uvloop, server and client pinned to
one core each, 5,000 connections, 152-byte frame, medians of 20-40 rounds per
run; server CPU for the send loop + flush, per delivery; the machine was shared,
so absolute figures drift ±15% between runs, paired figures ±5%)::

    frames per connection per iteration    1           2           10
    naive (WSTransport.send per frame)     6.5-9.6     6.0-6.7     7.3-7.6 us
    Connection.send + Outbox               6.3-9.5     4.8-5.1     1.5-1.6 us
    deliveries/s at k=10: 119-128k naive vs 541-621k coalesced

One frame to each of 5,000 connections costs the same as naive sends (gateway /
naive CPU ratio over 6 paired runs of the final code: median 1.00, range
0.94-1.07), and bursts to one connection are up to 4.8x cheaper.  Writing a
pre-framed ``bytes`` with the uvloop transport's ``write`` instead of
``WSTransport.send`` was 0-10% slower, so small frames keep picows' C path.
RSS per idle connection (bench_fanout, gateway alone): 10.6 KiB with uvloop's
own transport and a 2 KiB read buffer, of which ~2.0 KiB was picows' auto-ping
task (replaced by the server's one heartbeat, see ``WsConnection.heartbeat``);
24.6 KiB with picows' default 16 KiB read buffer, 15.9 KiB with picows'
aiofastnet transport (which embeds a 256-entry iovec array).  What picows keeps
of the upgrade is dropped once the connection is open (``_release_upgrade``).
Measured on the whole node (``parley bench connect``, 5,000 connections on
PostgreSQL): 12.9 KiB per connection before these two changes, 7.7 after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeResponse

from . import closecodes
from .handshake import WS_PATH
from .seam import Principal, SessionHandler

__all__ = ["GatewayContext", "Outbox", "WsConnection", "frame_header"]

_log = logging.getLogger("parley.gateway")

_TEXT: Final = WSMsgType.TEXT
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE
_BINARY: Final = WSMsgType.BINARY
_PING: Final = WSMsgType.PING

_OPEN: Final = 0
_CLOSING: Final = 1
_CLOSED: Final = 2

_MAX_REASON_BYTES: Final = 123
# picows' WSTransport.send copies frames of up to 8 KiB into a per-connection write
# buffer that starts at 1 KiB and never shrinks; larger single frames go through
# writelines instead, so that one 8 KiB frame does not cost 8 KiB for good.
_PICOWS_COPY_MAX: Final = 1000
_SMALL_HEADERS: Final = tuple(bytes((0x81, n)) for n in range(126))
_WS_PATH: Final = WS_PATH.encode()
# An empty header map of picows' own type (multidict's CIMultiDict), never mutated.
_NO_HEADERS: Final = WSUpgradeResponse.create_error_response(400).headers


def frame_header(size: int) -> bytes:
    """The header of an unmasked, final text frame (server to client) of ``size`` bytes."""
    if size < 126:
        return _SMALL_HEADERS[size]
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def _release_upgrade(transport: WSTransport) -> None:
    """Drop what picows keeps of the upgrade once the connection is open.

    picows holds the upgrade request and its 101 response (``transport.request``
    and ``.response``) for the connection's whole life, though nothing reads
    them after the handshake: their headers and the query string were ~3 KiB
    of every idle connection's ~13 KiB (measured with ``parley bench connect``),
    and kept each client's access token in memory.  Both get one shared, empty
    header map, and the path loses its query string (the gateway serves one path).
    """
    request = transport.request
    request.headers = _NO_HEADERS
    request.path = _WS_PATH
    transport.response.headers = _NO_HEADERS


def _reason_bytes(reason: str) -> bytes:
    raw = reason.encode()
    if len(raw) > _MAX_REASON_BYTES:
        raw = raw[:_MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
    return raw


class Outbox:
    """Coalesces writes: connections given frames in one loop iteration are flushed together.

    One ``call_soon`` per iteration for the whole server, not per connection.
    ``WsConnection.send`` appends itself to ``dirty`` on its first frame of the
    iteration and calls ``schedule`` if it made the list non-empty.
    """

    __slots__ = ("_call_soon", "dirty")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        self.dirty: list[WsConnection] = []

    def schedule(self) -> None:
        self._call_soon(self.flush)

    def flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            try:
                pending = conn._pending
                if isinstance(pending, bytes) and len(pending) <= _PICOWS_COPY_MAX:
                    # the fan-out case, inlined: one small frame
                    conn._pending = None
                    conn._queued = 0
                    conn._transport.send(_TEXT, pending)  # type: ignore[union-attr]
                else:
                    conn.flush()
            except Exception:  # noqa: BLE001 - one broken socket must not stall the others
                _log.exception("flushing connection %d failed; aborting it", conn.id)
                conn.abort()


class GatewayContext:
    """What every connection of one server shares (one reference per connection)."""

    __slots__ = (
        "close_timeout",
        "handler",
        "loop",
        "max_message",
        "on_closed",
        "on_opened",
        "outbox",
        "tick",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        handler: SessionHandler,
        outbox: Outbox,
        max_message: int,
        close_timeout: float,
        on_opened: Callable[[WsConnection], None],
        on_closed: Callable[[WsConnection], None],
    ) -> None:
        self.loop = loop
        self.handler = handler
        self.outbox = outbox
        self.max_message = max_message
        self.close_timeout = close_timeout
        self.on_opened = on_opened
        self.on_closed = on_closed
        self.tick = 0
        """The heartbeat's count (``GatewayServer`` advances it): connections note it
        on every frame instead of reading a clock."""


class WsConnection(WSListener):
    """The picows listener for one socket, and the ``Connection`` the upper layer holds."""

    __slots__ = (
        "_close_code",
        "_close_timer",
        "_ctx",
        "_fragments",
        "_heard",
        "_limit",
        "_pending",
        "_pinged",
        "_queued",
        "_raw",
        "_state",
        "_transport",
        "id",
        "principal",
        "remote",
    )

    def __init__(
        self, ctx: GatewayContext, conn_id: int, principal: Principal, remote: str, limit: int
    ) -> None:
        self._ctx = ctx
        self.id = conn_id
        self.principal = principal
        self.remote = remote
        self._limit = limit
        self._state = _CLOSING  # until on_ws_connected
        self._transport: WSTransport | None = None
        self._raw: Any = None  # the asyncio transport under picows
        self._pending: bytes | list[bytes] | None = None
        self._queued = 0
        self._fragments: bytearray | None = None
        self._close_code: int | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._heard = ctx.tick  # the heartbeat tick of the last frame received
        self._pinged: int | None = None  # the tick our unanswered ping went out

    def __repr__(self) -> str:
        return f"<WsConnection {self.id} {self.remote} state={self._state}>"

    # -- Connection ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    @property
    def buffered_bytes(self) -> int:
        raw = self._raw
        backlog = 0 if raw is None or self._state == _CLOSED else raw.get_write_buffer_size()
        return self._queued + int(backlog)

    def send(self, data: bytes) -> bool:
        if self._state:
            return False
        queued = self._queued + len(data)
        if queued + self._raw.get_write_buffer_size() > self._limit:
            self._slow_consumer()
            return False
        self._queued = queued
        pending = self._pending
        if pending is None:
            self._pending = data
            dirty = self._ctx.outbox.dirty
            if not dirty:
                self._ctx.outbox.schedule()
            dirty.append(self)
        elif isinstance(pending, list):
            pending.append(data)
        else:
            self._pending = [pending, data]
        return True

    def send_many(self, frames: Iterable[bytes]) -> bool:
        return all(map(self.send, frames))

    def close(self, code: int = closecodes.NORMAL, reason: str = "") -> None:
        if not closecodes.is_valid_on_wire(code):
            raise ValueError(f"close code {code} may not be sent on the wire")
        self._begin_close(code, code, reason, flush=True)

    # -- output -------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything queued to the transport now (the Outbox calls this)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._queued = 0
        transport = self._transport
        assert transport is not None
        if not isinstance(pending, list):  # one frame (bytes, or a bytes-like by mistake)
            if len(pending) <= _PICOWS_COPY_MAX:
                transport.send(_TEXT, pending)
                return
            pending = [pending]
        if transport.is_close_frame_sent:  # picows closed on its own (protocol error, ping)
            return
        parts: list[bytes] = []
        append = parts.append
        for data in pending:
            append(frame_header(len(data)))
            append(data)
        self._raw.writelines(parts)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._raw is not None and self._state != _CLOSED:
            self._raw.abort()

    def reap_if_closed_by_picows(self) -> None:
        """Bound a close that picows started on its own (parser error, 1009).

        picows then sends its close frame and closes TCP gracefully, which waits
        for its write buffer to drain: forever, if the peer stopped reading.
        The server's sweep calls this; it arms the same abort timer ``close`` does.
        """
        transport = self._transport
        if self._state == _OPEN and transport is not None and transport.is_close_frame_sent:
            self._state = _CLOSING
            self._pending = None
            self._queued = 0
            self._fragments = None
            self._close_timer = self._ctx.loop.call_later(self._ctx.close_timeout, self.abort)

    def heartbeat(self, tick: int, idle_ticks: int, reply_ticks: int) -> None:
        """Ping after ``idle_ticks`` heartbeat ticks without a frame from the peer; close
        with 1001 when that ping has no pong ``reply_ticks`` ticks later.

        The server calls this on every tick (see ``GatewayServer._heartbeat``):
        one task for all connections, where picows' own auto-ping keeps a task,
        its coroutine and a timer per connection (~2 KiB of every idle one).
        """
        if self._state:
            return
        transport = self._transport
        assert transport is not None
        if transport.is_close_frame_sent:  # picows is closing it (the sweep reaps it)
            return
        pinged = self._pinged
        if pinged is not None:
            if tick - pinged >= reply_ticks:
                self._fail(closecodes.GOING_AWAY, "no pong in time")
        elif tick - self._heard > idle_ticks:
            self._pinged = tick
            transport.send_ping()

    def _slow_consumer(self) -> None:
        _log.debug("connection %d (%s) is a slow consumer; closing with 4008", self.id, self.remote)
        self._begin_close(
            closecodes.SLOW_CONSUMER,
            closecodes.SLOW_CONSUMER,
            "slow consumer",
            flush=False,
            disconnect=True,
        )

    def _begin_close(
        self, code: int, wire_code: int, reason: str, *, flush: bool, disconnect: bool = False
    ) -> None:
        """Send a close frame (once); ``code`` is what ``on_close`` will report.

        ``disconnect`` closes TCP as soon as the transport's buffer drains (used
        when failing the connection or answering the peer's close); otherwise we
        wait for the peer's close frame.  Either way the connection is aborted
        after ``close_timeout``.
        """
        if self._state != _OPEN:
            return
        transport = self._transport
        assert transport is not None
        self._state = _CLOSING
        self._close_code = code
        self._fragments = None
        if flush:
            self.flush()
        else:
            self._pending = None
            self._queued = 0
        transport.send_close(WSCloseCode(wire_code), _reason_bytes(reason))
        if disconnect:
            transport.disconnect()
        self._close_timer = self._ctx.loop.call_later(self._ctx.close_timeout, self.abort)

    def _fail(self, code: int, reason: str) -> None:
        _log.debug("failing connection %d (%s) with %d: %s", self.id, self.remote, code, reason)
        self._begin_close(code, code, reason, flush=True, disconnect=True)

    # -- picows callbacks -----------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._raw = transport.underlying_transport
        self._state = _OPEN
        self._heard = self._ctx.tick
        _release_upgrade(transport)
        self._ctx.on_opened(self)
        try:
            self._ctx.handler.on_open(self)
        except Exception:  # noqa: BLE001 - the handler's bug closes only this connection
            _log.exception("on_open failed for connection %d; closing with 1011", self.id)
            self._begin_close(
                closecodes.INTERNAL_ERROR,
                closecodes.INTERNAL_ERROR,
                "internal error",
                flush=False,
                disconnect=True,
            )

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        self._heard = self._ctx.tick
        if self._state:  # closing: only the peer's close frame still matters
            if msg_type is _CLOSE:
                self._on_close_frame(frame)
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(closecodes.PROTOCOL_ERROR, "reserved bits set")
            return
        if msg_type is _TEXT:
            if self._fragments is not None:
                self._fail(closecodes.PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if not frame.fin:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                return
            data = frame.get_payload_as_bytes()
        elif msg_type is _CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                self._fail(closecodes.PROTOCOL_ERROR, "continuation frame outside a message")
                return
            if len(fragments) + frame.payload_size > self._ctx.max_message:
                self._fail(closecodes.MESSAGE_TOO_BIG, "message too big")
                return
            fragments += frame.get_payload_as_memoryview()
            if not frame.fin:
                return
            self._fragments = None
            data = bytes(fragments)
        elif msg_type is _CLOSE:
            self._on_close_frame(frame)
            return
        elif msg_type is _PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        elif msg_type is _BINARY:
            self._fail(closecodes.UNSUPPORTED_DATA, "binary frames are not supported")
            return
        else:  # a PONG: answers the heartbeat's ping (its payload is not checked)
            self._pinged = None
            return
        if not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError:
                self._fail(closecodes.INVALID_TEXT, "invalid UTF-8 in a text frame")
                return
        try:
            self._ctx.handler.on_text(self, data)
        except Exception:  # noqa: BLE001 - the handler's bug closes only this connection
            _log.exception("on_text failed for connection %d; closing with 1011", self.id)
            self._fail(closecodes.INTERNAL_ERROR, "internal error")

    def _on_close_frame(self, frame: WSFrame) -> None:
        if self._state == _CLOSING:  # the peer answered our close frame
            assert self._transport is not None
            self._transport.disconnect()
            return
        # picows has already refused codes < 3000 that RFC 6455 does not define and
        # a close reason that is not UTF-8; it still lets 1006 and >= 5000 through.
        code = frame.get_close_code().value
        if code == 0:
            self._begin_close(
                closecodes.NO_STATUS, closecodes.NORMAL, "", flush=True, disconnect=True
            )
        elif closecodes.is_valid_on_wire(code):
            self._begin_close(code, code, "", flush=True, disconnect=True)
        else:
            self._fail(closecodes.PROTOCOL_ERROR, f"invalid close code {code}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        timer = self._close_timer
        if timer is not None:
            timer.cancel()
            self._close_timer = None
        code = self._close_code
        if code is None:
            handshake = transport.close_handshake
            sent = None if handshake is None else handshake.sent
            code = closecodes.ABNORMAL if sent is None else sent.code.value
            self._close_code = code
        self._state = _CLOSED
        self._pending = None
        self._queued = 0
        self._fragments = None
        self._ctx.on_closed(self)
        try:
            self._ctx.handler.on_close(self, code)
        except Exception:  # noqa: BLE001 - logged; the connection is gone anyway
            _log.exception("on_close failed for connection %d", self.id)
        self._raw = None

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark; ``send`` accounts for it."""

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""

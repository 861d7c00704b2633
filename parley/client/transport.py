"""The WebSocket under the client: a two-method seam, implemented with picows.

The client never touches picows directly: it calls :func:`open_websocket` and
talks to the returned :class:`Transport`; frames come back through a
:class:`FrameSink`.  Swapping the library means rewriting this module only.

Guarantees of :class:`PicowsTransport`:

* ``on_open`` comes first (possibly before :func:`open_websocket` returns);
  ``on_text`` is called once per complete text message, in arrival order
  (fragments are reassembled); binary frames are ignored; pings are answered.
* ``on_closed`` is called exactly once, after the last ``on_text``, with the
  close code the server sent (1005 if its close frame had none) or 1006 when
  the TCP connection ended without a close frame (including :meth:`abort`).
* ``send`` never raises and never blocks: after closing began it drops data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Final, Protocol

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from .errors import ConnectionFailed, HandshakeRejected

__all__ = ["ABNORMAL", "NO_STATUS", "FrameSink", "PicowsTransport", "Transport", "open_websocket"]

NO_STATUS: Final = 1005
ABNORMAL: Final = 1006

_TEXT: Final = WSMsgType.TEXT
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE


class FrameSink(Protocol):
    """Receives what the transport reads.  Called on the event loop; must not block."""

    def on_open(self, transport: Transport) -> None:
        """The upgrade succeeded; ``transport`` may send.  Called before any ``on_text``."""
        ...

    def on_text(self, data: bytes) -> None:
        """One complete text message."""
        ...

    def on_closed(self, code: int, reason: str) -> None:
        """The connection is gone (see the module docstring for ``code``)."""
        ...


class Transport(Protocol):
    """An open WebSocket as the client holds it."""

    @property
    def closed(self) -> bool:
        """True once closing began (either side) or the socket dropped."""
        ...

    def send(self, data: bytes) -> None:
        """Queue one text frame (UTF-8 JSON bytes); dropped if ``closed``."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake; ``on_closed`` follows when the server answers."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        ...


class PicowsTransport(WSListener):
    """picows listener and :class:`Transport` for one client connection."""

    def __init__(self, sink: FrameSink, max_message: int) -> None:
        self._sink = sink
        self._max = max_message
        self._ws: WSTransport | None = None
        self._fragments: bytearray | None = None
        self._code: int | None = None
        self._reason = ""
        self._closing = False
        self._done = False

    # -- Transport ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closing or self._done or self._ws is None

    def send(self, data: bytes) -> None:
        if not (self._closing or self._done) and self._ws is not None:
            self._ws.send(_TEXT, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closing or self._done or self._ws is None:
            return
        self._closing = True
        self._ws.send_close(WSCloseCode(code), reason.encode()[:123])

    def abort(self) -> None:
        if self._ws is not None and not self._done:
            self._closing = True
            self._ws.disconnect(graceful=False)

    # -- picows callbacks ----------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._ws = transport
        self._sink.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT:
            if frame.fin and self._fragments is None:
                self._sink.on_text(frame.get_payload_as_bytes())
                return
            self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif kind is _CONTINUATION and self._fragments is not None:
            if len(self._fragments) + frame.payload_size > self._max:
                self._fragments = None
                self.close(1009, "message too big")
                return
            self._fragments += frame.get_payload_as_memoryview()
        elif kind is _CLOSE:
            self._on_close_frame(transport, frame)
            return
        else:  # binary, ping (auto-answered), pong
            return
        if frame.fin and self._fragments is not None:
            data, self._fragments = bytes(self._fragments), None
            self._sink.on_text(data)

    def _on_close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._code is None:
            code = frame.get_close_code()
            self._code = int(code.value) or NO_STATUS
            self._reason = frame.get_close_reason() or ""
            if not transport.is_close_frame_sent:
                transport.send_close(code)
        self._closing = True
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._done:
            return
        self._done = True
        self._fragments = None
        self._sink.on_closed(self._code if self._code is not None else ABNORMAL, self._reason)


async def open_websocket(
    url: str,
    headers: Mapping[str, str],
    sink: FrameSink,
    *,
    connect_timeout: float,
    max_message: int,
    ping_interval: float | None,
) -> Transport:
    """Connect and upgrade; return the open transport.

    Raises :class:`HandshakeRejected` when the server answers the upgrade with
    an HTTP error (its JSON ``code``/``message`` are kept), and
    :class:`ConnectionFailed` for any other failure (refused, unreachable,
    timeout, malformed answer).
    """
    ping: dict[str, Any] = {}
    if ping_interval is not None:
        ping = {"enable_auto_ping": True, "auto_ping_idle_timeout": ping_interval,
                "auto_ping_reply_timeout": min(ping_interval, 10.0)}
    try:
        async with asyncio.timeout(connect_timeout + 1.0):
            _, listener = await ws_connect(
                lambda: PicowsTransport(sink, max_message), url,
                extra_headers=dict(headers), max_frame_size=max_message,
                websocket_handshake_timeout=connect_timeout, max_redirects=0,
                logger_name="parley.client.picows", read_buffer_init_size=16 * 1024, **ping,
            )
    except WSHandshakeError as exc:
        response = exc.response
        status = int(response.status) if response is not None else 0
        if status >= 300:
            raise _rejection(status, exc.raw_body) from None
        raise ConnectionFailed(f"WebSocket handshake failed: {exc}") from exc
    except (OSError, TimeoutError, WSError) as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
    assert isinstance(listener, PicowsTransport)
    return listener


def _rejection(status: int, body: bytes | None) -> HandshakeRejected:
    code, message = _DEFAULT_CODES.get(status, "http_error"), f"HTTP {status}"
    try:
        obj = json.loads(body or b"")
        if isinstance(obj, dict):
            code = str(obj.get("code") or code)[:64]
            message = str(obj.get("message") or message)[:512]
    except ValueError:
        pass
    return HandshakeRejected(status, code, f"upgrade refused with HTTP {status}: {message}")


_DEFAULT_CODES: Final = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    429: "rate_limited", 503: "unavailable",
}

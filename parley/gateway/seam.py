"""The seam between the WebSocket gateway and the layer above it.

The gateway knows no conversations and no frame types.  It accepts sockets,
authenticates the HTTP upgrade through an :class:`Authenticator`, hands each
complete text message (as ``bytes``) to a :class:`SessionHandler`, and sends
``bytes`` down through a :class:`Connection` with bounded, coalesced buffering.

Threading: everything here runs on the gateway's event loop thread; no method
may be called from another thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Authenticator",
    "Connection",
    "Principal",
    "SessionHandler",
    "UpgradeRequest",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a connection, as the authenticator established it.

    Fixed for the life of the connection.  ``session_id`` is chosen by the
    authenticator (for instance the token's id) and identifies this login on
    this device; ``device_id`` is normally the upgrade's validated ``device``
    query parameter.
    """

    tenant_id: int
    user_id: int
    device_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """The HTTP upgrade request, as the authenticator sees it.

    By the time the authenticator is called the gateway has already checked the
    path (``/v1/ws``), the capacity, the ``device`` parameter
    (``[A-Za-z0-9_-]{1,64}``, also given as ``device_id``) and the ``Origin``
    header.  The WebSocket headers themselves (``Upgrade``, ``Sec-WebSocket-Key``)
    are checked after a successful authentication.
    """

    path: str
    """The request path without the query string, e.g. ``/v1/ws``."""
    query: Mapping[str, str]
    """Query parameters, percent-decoded; when a name repeats, the first value is kept."""
    headers: Mapping[str, str]
    """Header names lower-cased; a repeated header's values are joined with ``", "``."""
    remote: str
    """The TCP peer as ``host:port`` (``[v6addr]:port`` for IPv6).  Not proxy-aware."""
    device_id: str
    """The validated ``device`` query parameter."""


class Authenticator(Protocol):
    """Decides who may open a WebSocket.  Implemented by ``parley.auth``."""

    def authenticate(self, req: UpgradeRequest) -> Principal:
        """Return the principal for this upgrade or raise.

        Synchronous and CPU-only (the gateway calls it inside the event loop,
        from picows' listener factory, which cannot await): check a token, do
        not touch the database.  Raise ``parley.errors.Unauthenticated``
        (answered with HTTP 401) or ``parley.errors.Forbidden`` (403); any other
        ``ParleyError`` is answered with its ``http_status``, and any other
        exception with 500 (and logged).  A refused upgrade never becomes a
        WebSocket.
        """
        ...


class Connection(Protocol):
    """One open WebSocket, as the upper layer holds it.

    Outbound guarantees:

    * Frames are delivered to the socket in the order ``send`` / ``send_many``
      accepted them (returned ``True``), until the connection closes.
    * At most once: a frame that was accepted may still be lost if the
      connection closes before it is written; the upper layer recovers by sync.
    * ``send`` never blocks and never raises for a closed connection.  Frames
      accepted within one event-loop iteration reach the kernel in one write.
    * The outbound buffer (frames queued plus the transport's unsent bytes) is
      bounded by ``GatewayConfig.max_outbound_bytes``; a send that would exceed
      it is refused and the connection is closed with 4008 (slow consumer).
    """

    @property
    def id(self) -> int:
        """Unique among this server's connections for the life of the process."""
        ...

    @property
    def principal(self) -> Principal:
        """Who authenticated this connection; never changes."""
        ...

    @property
    def remote(self) -> str:
        """The TCP peer as ``host:port``."""
        ...

    @property
    def closed(self) -> bool:
        """True once closing has begun (by either side); ``send`` then returns False."""
        ...

    @property
    def buffered_bytes(self) -> int:
        """Bytes accepted but not yet handed to the kernel (queued + transport buffer)."""
        ...

    def send(self, data: bytes) -> bool:
        """Queue ``data`` (UTF-8 JSON, not validated here) as one text frame.

        Returns True if queued.  Returns False if the connection is closing or
        closed (the frame is dropped), or if queueing it would exceed the
        outbound bound, in which case the connection is also closed with 4008.
        ``data`` is kept by reference until written: do not mutate it.  Sending
        the same ``bytes`` object to many connections costs no copy.
        """
        ...

    def send_many(self, frames: Iterable[bytes]) -> bool:
        """``send`` each frame in order; stop and return False at the first refusal."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake with ``code`` and a short ``reason`` (<= 123 bytes).

        Frames already queued are written first (except for 4008, whose queue
        is dropped).  Idempotent; ``on_close`` follows once the peer answers or
        ``GatewayConfig.close_timeout_s`` passes.  ``code`` must be valid on the
        wire (see ``closecodes.is_valid_on_wire``).
        """
        ...


class SessionHandler(Protocol):
    """Implemented by the upper layer (the protocol session / hub).

    Ordering guarantees, per connection: ``on_open`` first, then ``on_text`` for
    each complete text message in arrival order, then ``on_close`` exactly once.
    ``on_close`` is called for every connection that was passed to ``on_open``
    (even if ``on_open`` raised).  None of these may block or await: spawn a
    task for slow work.  An exception from ``on_open`` or ``on_text`` is logged
    and closes the connection with 1011.
    """

    def on_open(self, conn: Connection) -> None:
        """A connection was authenticated and upgraded; it is ready to ``send``."""
        ...

    def on_text(self, conn: Connection, data: bytes) -> None:
        """A complete text message arrived (valid UTF-8, at most ``max_frame_bytes``).

        Fragmented messages are reassembled before this call.  ``data`` is a
        new ``bytes`` object the handler may keep.
        """
        ...

    def on_close(self, conn: Connection, code: int) -> None:
        """The connection is gone; ``code`` says why.

        The code the gateway sent when it closed first (e.g. 4008, 1009, 1002,
        1001 on shutdown or ping timeout), else the code the peer sent (1005 if
        its close frame had none), else 1006 when the TCP connection dropped
        without a close frame.
        """
        ...

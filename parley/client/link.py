"""One connection attempt (:class:`Link`), what its close code means, and the counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from parley.protocol import Welcome

from .errors import ConnectionFailed, SessionEnded
from .transport import Transport

if TYPE_CHECKING:
    from .session import Session

__all__ = ["ClientStats", "Link", "close_outcome"]

_FATAL_CLOSES: Final = {
    4001: "session_revoked", 4009: "too_many_connections", 1002: "protocol_error",
    1003: "protocol_error", 1007: "protocol_error", 1009: "protocol_error",
}


def close_outcome(code: int, reason: str) -> SessionEnded | None:
    """The error that ends the client for close ``code``, or None: reconnect and sync."""
    name = _FATAL_CLOSES.get(code)
    if name is None:
        return None
    return SessionEnded(name, f"the server closed the connection with {code} {reason!r}", code)


@dataclass(slots=True)
class ClientStats:
    """Counters since the client was created (cheap plain ints)."""

    pushed: int = 0
    """``msg`` frames pushed by the server."""
    synced: int = 0
    """Messages accepted from ``sync_page`` frames."""
    duplicates: int = 0
    """Pushed messages dropped as duplicates."""
    held: int = 0
    """Pushed messages that arrived after a gap (each triggers a sync)."""
    overflowed: int = 0
    """Pushed messages dropped unacked because the queue was full."""
    acks_sent: int = 0
    syncs: int = 0
    """``sync`` requests sent (pages)."""
    reconnects: int = 0
    resent: int = 0
    """Calls requeued because their connection dropped."""
    retries: int = 0
    """Calls retried after a retryable ``error``."""
    events_dropped: int = 0
    unknown_frames: int = 0


class Link:
    """One connection attempt: the transport's sink, with its ``welcome`` and ``closed``."""

    __slots__ = ("abandoned", "closed", "session", "transport", "welcome")

    def __init__(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        self.session = session
        self.abandoned = False
        """Set when the attempt was given up: a handshake completing later is aborted."""
        self.transport: Transport | None = None
        self.welcome: asyncio.Future[Welcome] = loop.create_future()
        self.closed: asyncio.Future[tuple[int, str]] = loop.create_future()

    def on_open(self, transport: Transport) -> None:
        self.transport = transport
        if self.abandoned:
            transport.abort()
        elif self.session.link is self:
            self.session.transport = transport

    def on_text(self, data: bytes) -> None:
        if self.session.link is self:
            self.session.on_text(data)

    def on_closed(self, code: int, reason: str) -> None:
        if self.session.link is self:
            self.session.detach(code, reason)
        if not self.welcome.done():
            self.welcome.set_exception(close_outcome(code, reason) or ConnectionFailed(
                f"the server closed the connection ({code} {reason!r}) before its welcome"
            ))
        if not self.closed.done():
            self.closed.set_result((code, reason))

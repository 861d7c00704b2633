"""The client SDK's exceptions: one subtree of :class:`parley.errors.ParleyError`.

::

    ParleyError
    └── ParleyClientError        code from the server's ``error`` frame, or one below
        ├── HandshakeRejected    the HTTP upgrade was refused (``status`` 400/401/403/404/503)
        │                        code from the JSON body, e.g. ``unauthenticated``
        ├── ConnectionFailed     connection_failed: TCP/TLS/handshake did not complete (retryable)
        ├── ConnectionLost       connection_lost: the socket dropped and the client does not
        │                        reconnect (``reconnect=False``), or a non-idempotent request
        │                        (``recall``) was in flight: its outcome is unknown (retryable)
        ├── SessionEnded         the server ended the session for good: session_revoked (4001),
        │                        too_many_connections (4009), protocol_error (1002/1003/1007/1009)
        └── ClientClosed         client_closed: ``close()`` was called before the answer came

Every exception carries ``code`` (stable string), ``message`` and ``retryable``.
``TimeoutError`` (builtin) is raised when a call's own timeout expires.
"""

from __future__ import annotations

from parley.errors import ParleyError

__all__ = [
    "ClientClosed",
    "ConnectionFailed",
    "ConnectionLost",
    "HandshakeRejected",
    "ParleyClientError",
    "SessionEnded",
]


class ParleyClientError(ParleyError):
    """A request failed: ``code`` is the server's stable error code (see ``parley.errors``)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class HandshakeRejected(ParleyClientError):
    """The server refused the WebSocket upgrade with HTTP ``status``.

    401 (``unauthenticated``): the token is missing, expired or invalid — get a
    new one.  403 (``forbidden``): the token may not connect (or Origin refused).
    503 (``unavailable``): the server is full or shutting down — retry later.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message, retryable=status in (429, 502, 503, 504))
        self.status = status


class ConnectionFailed(ParleyClientError):
    """The connection could not be opened (refused, unreachable, timed out)."""

    def __init__(self, message: str) -> None:
        super().__init__("connection_failed", message, retryable=True)


class ConnectionLost(ParleyClientError):
    """The connection dropped while the call was in flight and will not be retried."""

    def __init__(self, message: str = "the connection was lost") -> None:
        super().__init__("connection_lost", message, retryable=True)


class SessionEnded(ParleyClientError):
    """The server closed the session for good (``close_code`` says why); do not reconnect."""

    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(code, message)
        self.close_code = close_code


class ClientClosed(ParleyClientError):
    """The client was closed by its owner."""

    def __init__(self, message: str = "the client is closed") -> None:
        super().__init__("client_closed", message)

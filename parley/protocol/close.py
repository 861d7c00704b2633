"""WebSocket close codes used by Parley, and which error closes the socket."""

from __future__ import annotations

from enum import IntEnum

from parley.errors import FrameTooLarge, ParleyError
from parley.protocol.codec import InvalidUtf8

__all__ = ["CloseCode", "close_code_for"]


class CloseCode(IntEnum):
    """Close codes; the comment says what a client should do next."""

    NORMAL = 1000  # done; reconnect only when the user wants to
    GOING_AWAY = 1001  # server shutting down / restarting: reconnect with backoff, then sync
    PROTOCOL_ERROR = 1002  # client bug: fix it; reconnecting with the same bug will fail again
    UNSUPPORTED_DATA = 1003  # a binary frame: Parley speaks text frames only
    NO_STATUS = 1005  # reported when a close frame carried no code; never sent
    ABNORMAL = 1006  # reported when TCP ended without a close frame; never sent
    INVALID_DATA = 1007  # a text frame was not valid UTF-8
    MESSAGE_TOO_BIG = 1009  # a frame exceeded welcome.limits.max_frame_bytes
    INTERNAL_ERROR = 1011  # unexpected server error: reconnect with backoff, then sync
    SESSION_REVOKED = 4001  # token or device revoked: do not reconnect; sign in again
    SLOW_CONSUMER = 4008  # client fell too far behind: reconnect, then sync
    TOO_MANY_CONNECTIONS = 4009  # too many sockets for this user/device: close others first
    MOVED = 4010  # the user lives on another node: reconnect at once to the reconnect frame's url
    RATE_LIMITED = 4029  # sustained flooding: reconnect after a longer backoff


def close_code_for(exc: ParleyError) -> CloseCode | None:
    """The close code a decode error calls for, or None: answer with an ``error`` frame
    and keep the connection open."""
    if isinstance(exc, FrameTooLarge):
        return CloseCode.MESSAGE_TOO_BIG
    if isinstance(exc, InvalidUtf8):
        return CloseCode.INVALID_DATA
    return None

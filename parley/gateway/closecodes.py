"""WebSocket close codes Parley sends and understands.

1000-1011 are RFC 6455 section 7.4.1; 4000-4999 are private to Parley and stable:
never renumber one.  A client that receives 4008 (slow consumer) or 1001 (going
away) reconnects and resumes by sync; one that receives 4001 (revoked) must log in
again; 4009 and 4029 mean back off before reconnecting.
"""

from __future__ import annotations

from typing import Final

from parley.protocol.close import CloseCode

__all__ = [
    "ABNORMAL",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_TEXT",
    "MESSAGE_TOO_BIG",
    "NORMAL",
    "NO_STATUS",
    "PROTOCOL_ERROR",
    "RATE_LIMITED",
    "REVOKED",
    "SLOW_CONSUMER",
    "TOO_MANY_CONNECTIONS",
    "UNSUPPORTED_DATA",
    "is_valid_on_wire",
]

# The numbers live in one place, the protocol's CloseCode; these are the
# gateway's names for them.
NORMAL: Final = int(CloseCode.NORMAL)
GOING_AWAY: Final = int(CloseCode.GOING_AWAY)
PROTOCOL_ERROR: Final = int(CloseCode.PROTOCOL_ERROR)
UNSUPPORTED_DATA: Final = int(CloseCode.UNSUPPORTED_DATA)
NO_STATUS: Final = int(CloseCode.NO_STATUS)
ABNORMAL: Final = int(CloseCode.ABNORMAL)
INVALID_TEXT: Final = int(CloseCode.INVALID_DATA)
MESSAGE_TOO_BIG: Final = int(CloseCode.MESSAGE_TOO_BIG)
INTERNAL_ERROR: Final = int(CloseCode.INTERNAL_ERROR)
REVOKED: Final = int(CloseCode.SESSION_REVOKED)
SLOW_CONSUMER: Final = int(CloseCode.SLOW_CONSUMER)
TOO_MANY_CONNECTIONS: Final = int(CloseCode.TOO_MANY_CONNECTIONS)
RATE_LIMITED: Final = int(CloseCode.RATE_LIMITED)


def is_valid_on_wire(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 section 7.4).

    1000-1003 and 1007-1014 are defined; 1004-1006 and 1015 are reserved and
    must never be sent; 3000-4999 are for libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999

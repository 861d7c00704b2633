"""The WebSocket gateway: accept, authenticate the upgrade, pump text frames, bounded sends.

The gateway knows no conversations and no frame types.  The layer above it
implements :class:`SessionHandler` and holds :class:`Connection` objects; the
composition root builds a :class:`GatewayServer` from a :class:`GatewayConfig`,
an :class:`Authenticator` and that handler.
"""

from __future__ import annotations

from . import closecodes
from .config import GatewayConfig
from .handshake import WS_PATH
from .seam import Authenticator, Connection, Principal, SessionHandler, UpgradeRequest
from .server import GatewayServer

__all__ = [
    "WS_PATH",
    "Authenticator",
    "Connection",
    "GatewayConfig",
    "GatewayServer",
    "Principal",
    "SessionHandler",
    "UpgradeRequest",
    "closecodes",
]

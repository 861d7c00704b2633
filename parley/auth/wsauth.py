"""Authenticates WebSocket upgrades with access tokens (the gateway's Authenticator).

The token comes in the ``Authorization: Bearer`` header, or — for browsers,
whose WebSocket API cannot set headers — in the ``access_token`` query
parameter (RFC 6750 §2.3).  Parley never logs query strings.

Synchronous and without I/O: a token of a revoked session is refused through
the ``TokenService``'s in-memory revocation list.  A token bound to a device
(``did``: the login named one) opens sockets only as that device.  A scoped
(OAuth) token opens one only if it has both ``messages:read`` and
``messages:write`` (403 otherwise; see ``parley.auth.scopes``).
"""

from __future__ import annotations

from parley.auth.scopes import WEBSOCKET_SCOPES
from parley.auth.tokens import TokenService
from parley.errors import Forbidden, Unauthenticated
from parley.gateway.seam import Principal, UpgradeRequest

__all__ = ["TokenAuthenticator"]


class TokenAuthenticator:
    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    def authenticate(self, req: UpgradeRequest) -> Principal:
        auth = req.headers.get("authorization", "")
        token = ""
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        if not token:
            token = req.query.get("access_token", "")
        if not token:
            raise Unauthenticated("missing bearer token")
        claims = self._tokens.verify(token)
        if claims.device_id is not None and claims.device_id != req.device_id:
            raise Forbidden("this token belongs to another device")
        if claims.scope is not None and not claims.scope >= WEBSOCKET_SCOPES:
            raise Forbidden("insufficient_scope: a socket needs messages:read and messages:write")
        return Principal(
            tenant_id=claims.tenant_id, user_id=claims.user_id, device_id=req.device_id,
            session_id=claims.session_id,
        )

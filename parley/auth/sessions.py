"""Login sessions: token pairs, rotation with reuse detection, revocation.

``SessionService.login`` opens a session and returns an access token (a JWT
carrying the session id as ``sid``) and a refresh token (256 random bits, kept
only as a SHA-256 digest).  ``refresh`` redeems a refresh token once for a new
pair; presenting a redeemed token again revokes the whole session (RFC 9700
§4.14.2) and closes its sockets.

Revocation reaches three places at once: the database (its refresh tokens stop
working), the in-memory ``RevocationList`` (its access tokens are refused by
``TokenService.verify`` over HTTP and at the WebSocket handshake, without a
database round trip), and the hub (its open sockets are closed with 4001).

The revocation list is per process: it is loaded at start from the sessions
revoked within one access-token lifetime and updated on every revocation made
here.  With several nodes a revocation must also be broadcast to the others;
that propagation comes with the cluster.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from parley.auth.tokens import TokenService
from parley.clock import Clock
from parley.errors import Unauthenticated
from parley.protocol.close import CloseCode
from parley.store.sessions import AuthSession, RotationOutcome, SessionStore

__all__ = ["RevocationList", "SessionService", "SocketCloser", "TokenPair"]

_REVOKED = int(CloseCode.SESSION_REVOKED)
_LEEWAY_MS = 60_000  # the iat leeway TokenService tolerates


class SocketCloser(Protocol):
    """Closes open sockets (``LocalHub`` implements it; the cluster, across nodes)."""

    def close_sessions(
        self, tenant_id: int, user_id: int, code: int, reason: str,
        session_id: str | None = None, device_id: str | None = None,
    ) -> int: ...


class RevocationList:
    """Ids of revoked sessions whose access tokens may not have expired yet.

    An entry is kept until no access token of its session can still be valid
    (revocation time + access-token lifetime + clock leeway), then forgotten,
    so the set stays as small as the revocations of the last token lifetime.
    """

    def __init__(self, clock: Clock, access_ttl_s: int) -> None:
        self._clock = clock
        self._keep_ms = access_ttl_s * 1000 + _LEEWAY_MS
        self._until: dict[str, int] = {}
        self._next_prune = 0

    @property
    def horizon_ms(self) -> int:
        """How far back revocations still matter (for loading them at start)."""
        return self._keep_ms

    def add(self, session_id: str, revoked_at: int) -> None:
        self._until[session_id] = max(self._until.get(session_id, 0), revoked_at + self._keep_ms)

    def is_revoked(self, session_id: str) -> bool:
        now = self._clock.now_ms()
        if now >= self._next_prune:
            self._prune(now)
        until = self._until.get(session_id)
        return until is not None and until > now

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: int) -> None:
        self._next_prune = now + 60_000
        for sid in [s for s, until in self._until.items() if until <= now]:
            del self._until[sid]


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session: AuthSession


def _digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class SessionService:
    def __init__(
        self, store: SessionStore, tokens: TokenService, revocations: RevocationList,
        sockets: SocketCloser, clock: Clock, *, refresh_ttl_s: int,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.revocations = revocations
        self.sockets = sockets
        self.clock = clock
        self.refresh_ttl_ms = refresh_ttl_s * 1000
        self.on_revoked: Callable[[str, int], None] | None = None
        """Told of every session this node revokes (the cluster tells the other nodes)."""

    async def load_revocations(self) -> int:
        """Fill the revocation list from the database (at start); returns how many."""
        now = self.clock.now_ms()
        rows = await self.store.revoked_since(now - self.revocations.horizon_ms)
        for sid, at in rows:
            self.revocations.add(sid, at)
        return len(rows)

    async def login(self, tenant_id: int, user_id: int, device_id: str = "") -> TokenPair:
        """Open a session for an authenticated user."""
        now = self.clock.now_ms()
        refresh = secrets.token_urlsafe(32)
        session = await self.store.create(
            secrets.token_hex(16), tenant_id, user_id, device_id, _digest(refresh), now,
            now + self.refresh_ttl_ms,
        )
        return self._pair(session, refresh)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """A new pair for a fresh refresh token; Unauthenticated otherwise.  A reused
        token revokes its session (and closes its sockets) before refusing."""
        now = self.clock.now_ms()
        new = secrets.token_urlsafe(32)
        rotation = await self.store.rotate(
            _digest(refresh_token), _digest(new), now, now + self.refresh_ttl_ms
        )
        session = rotation.session
        if rotation.outcome is RotationOutcome.REUSED and session is not None:
            self._revoked(session.tenant_id, session.user_id, [session.id], now)
        if rotation.outcome is not RotationOutcome.ROTATED or session is None:
            raise Unauthenticated("invalid refresh token")
        return self._pair(session, new)

    async def revoke(
        self, tenant_id: int, user_id: int, *, session_id: str | None = None,
        device_id: str | None = None, keep: str | None = None,
    ) -> list[str]:
        """Revoke sessions (one, one device's, or all but ``keep``) and close their
        sockets.  A ``session_id`` that is not stored (a token minted without a
        session) is still put on the revocation list."""
        now = self.clock.now_ms()
        ids = await self.store.revoke(
            tenant_id, user_id, now, session_id=session_id, device_id=device_id, keep=keep
        )
        if session_id is not None and session_id not in ids:
            ids.append(session_id)
        self._revoked(tenant_id, user_id, ids, now)
        if device_id is not None:
            self.sockets.close_sessions(
                tenant_id, user_id, _REVOKED, "device revoked", device_id=device_id
            )
        return ids

    async def active(self, tenant_id: int, user_id: int) -> list[AuthSession]:
        return await self.store.active(tenant_id, user_id, self.clock.now_ms())

    def _revoked(self, tenant_id: int, user_id: int, ids: list[str], now: int) -> None:
        for sid in ids:
            self.revocations.add(sid, now)
            if self.on_revoked is not None:
                self.on_revoked(sid, now)
            self.sockets.close_sessions(
                tenant_id, user_id, _REVOKED, "session revoked", session_id=sid
            )

    def _pair(self, session: AuthSession, refresh: str) -> TokenPair:
        access = self.tokens.issue(
            session.tenant_id, session.user_id, session.id, device_id=session.device_id or None
        )
        return TokenPair(access, refresh, self.tokens.access_ttl_s, session)

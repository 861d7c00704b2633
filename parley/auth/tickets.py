"""One-time tickets for light apps and mini-programs.

A logged-in client asks for a ticket for one app (``audience``) and hands it
to that app; the app's server redeems it with ``verify`` and learns who the
user is.  A ticket is a JWT signed like access tokens (fixed HS256, ``kid``,
``iss``) but with its own audience, ``parley-ticket:<app id>``, and
``typ: ticket``, so it is never accepted as an access token nor by another
app.  It lives at most a minute and is redeemed at most once: its ``jti`` is
recorded in ``used_tickets`` until it expires, so a replay is refused on any
node sharing the database.  No server-side session is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.auth.tokens import TokenService
from parley.clock import Clock
from parley.errors import Unauthenticated
from parley.store.sessions import SessionStore

__all__ = ["TicketClaims", "TicketService", "ticket_audience"]

_TYP = "ticket"
_PURGE_EVERY_MS = 60_000


def ticket_audience(app_id: str) -> str:
    return f"parley-ticket:{app_id}"


@dataclass(frozen=True, slots=True)
class TicketClaims:
    tenant_id: int
    user_id: int
    audience: str


class TicketService:
    def __init__(
        self, tokens: TokenService, store: SessionStore, clock: Clock, *, ttl_s: int
    ) -> None:
        self._tokens = tokens
        self._store = store
        self._clock = clock
        self.ttl_s = ttl_s
        self._next_purge = 0

    def issue(self, tenant_id: int, user_id: int, audience: str) -> str:
        claims = {"sub": str(user_id), "tid": tenant_id, "typ": _TYP}
        return self._tokens.sign(claims, ticket_audience(audience), self.ttl_s)

    async def redeem(self, ticket: str, audience: str) -> TicketClaims:
        """The ticket's user, once; Unauthenticated for a replay, another audience,
        an expired or forged ticket."""
        data = self._tokens.decode(ticket, ticket_audience(audience))
        try:
            if data.get("typ") != _TYP:
                raise Unauthenticated("invalid ticket")
            jti, exp = str(data["jti"]), int(data["exp"]) * 1000
            claims = TicketClaims(int(data["tid"]), int(data["sub"]), audience)
        except (KeyError, ValueError, TypeError):
            raise Unauthenticated("invalid ticket") from None
        now = self._clock.now_ms()
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_EVERY_MS
            await self._store.purge_tickets(now)
        # Kept a minute past expiry: a ticket still valid under the verifier's
        # clock leeway stays recorded.
        if not await self._store.redeem_ticket(jti, exp + 60_000):
            raise Unauthenticated("invalid ticket")
        return claims

"""What route handlers depend on: the node's services and the authenticated caller.

``ApiServices`` is built once by the composition root and kept on
``app.state.services``; handlers get it (and the caller) through FastAPI
dependencies, never through globals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from parley.auth.local import LocalPasswordProvider
from parley.auth.passwords import PasswordHasher
from parley.auth.providers import PasswordLogin
from parley.auth.scopes import SCOPES
from parley.auth.sessions import SessionService
from parley.auth.throttle import LoginThrottle
from parley.auth.tickets import TicketService
from parley.auth.tokens import AccessClaims, TokenService
from parley.clock import Clock
from parley.config import Settings
from parley.errors import Forbidden, Unauthenticated
from parley.hub.hub import LocalHub
from parley.messaging.service import MessagingService
from parley.store.accounts import AccountStore
from parley.store.conversations import ConversationStore
from parley.store.database import Database

__all__ = [
    "ApiServices", "Caller", "CurrentCaller", "Services", "client_address", "get_services",
    "require_login_token", "require_scope",
]


@dataclass(frozen=True, slots=True)
class ApiServices:
    settings: Settings
    clock: Clock
    db: Database
    accounts: AccountStore
    conversations: ConversationStore
    messaging: MessagingService
    tokens: TokenService
    hasher: PasswordHasher
    hub: LocalHub
    # -- authentication (sessions, the password-provider chain, throttling, tickets)
    sessions: SessionService
    login: PasswordLogin
    """Append providers (LDAP, ...) to ``login.providers``; local accounts come first."""
    local_passwords: LocalPasswordProvider
    throttle: LoginThrottle
    tickets: TicketService
    route: Callable[[int], dict[str, str]]
    """Where a user's WebSocket is served: ``{node, ws_url, http_url}``."""
    slot_map: Callable[[], dict[str, Any]]
    """The slot map: ``{epoch, nodes, ranges}`` (``GET /api/v1/route/map``)."""


def get_services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


Services = Annotated[ApiServices, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An access token from /api/v1/auth/login.")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of a request."""

    tenant_id: int
    user_id: int
    session_id: str
    claims: AccessClaims


async def current_caller(
    services: Services,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller, from ``Authorization: Bearer``; 401 ``unauthenticated`` otherwise
    (also for a token of a revoked session: ``TokenService`` checks the revocation list)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("missing bearer token")
    claims = services.tokens.verify(credentials.credentials)
    return Caller(claims.tenant_id, claims.user_id, claims.session_id, claims)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def require_scope(name: str) -> Callable[[Caller], Awaitable[None]]:
    """A dependency refusing (403 ``forbidden``, "insufficient_scope: ...") a token
    whose scope set lacks ``name`` (``parley.auth.scopes``); a first-party login
    token (no scope claim) passes.  Use as ``dependencies=[Depends(require_scope(X))]``
    on a router or an operation."""
    if name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}")

    async def check(caller: CurrentCaller) -> None:
        if not caller.claims.allows(name):
            raise Forbidden(f"insufficient_scope: this needs the {name!r} scope")

    return check


async def require_login_token(caller: CurrentCaller) -> None:
    """A dependency refusing every scoped (OAuth) token: for what no client may be
    granted (authorizing clients, administering them)."""
    if caller.claims.scope is not None:
        raise Forbidden("insufficient_scope: this needs a first-party login token")


def client_address(request: Request) -> str:
    """The TCP peer's address (not proxy-aware), for per-address throttling."""
    return request.client.host if request.client else "unknown"

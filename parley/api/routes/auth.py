"""HTTP routes: authentication (``/auth``) — login, refresh, logout, registration,
password change, sessions and devices, one-time tickets.

Every refusal of credentials is the same ``401 unauthenticated`` body ("invalid
username or password"), whatever failed; failed logins are throttled per
account and per client address (``429 rate_limited`` with ``Retry-After``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from parley.api.deps import Caller, CurrentCaller, Services, client_address, require_scope
from parley.api.errors import ERROR_RESPONSES, ErrorBody
from parley.auth.local import MAX_PASSWORD_LENGTH, check_password_policy
from parley.auth.scopes import ACCOUNT
from parley.auth.sessions import TokenPair
from parley.auth.throttle import LoginThrottle, Throttled
from parley.errors import Forbidden, NotFound, Unauthenticated
from parley.store.accounts import User

__all__ = ["router"]

_E = {"model": ErrorBody}
router = APIRouter(prefix="/auth", tags=["auth"], responses=ERROR_RESPONSES)
# The account-management operations: a scoped (OAuth) token needs the account scope.
_ACCOUNT = [Depends(require_scope(ACCOUNT))]

_DEVICE = r"^[A-Za-z0-9_-]{1,64}$"
_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
_USERNAME = r"^[A-Za-z0-9_.@-]{1,64}$"
_APP = r"^[A-Za-z0-9_.:-]{1,128}$"
_TOKEN = 4096  # longest token accepted in a body

Password = Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
DeviceId = Annotated[str, Path(pattern=_DEVICE, description="A device id.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Body):
    tenant: str | None = Field(
        None, pattern=_SLUG, description="Tenant slug; default: the node's default tenant."
    )
    # No control characters: they are never part of a name, and NUL cannot be stored.
    username: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    password: Password
    device_id: str | None = Field(
        None, pattern=_DEVICE,
        description="The device this login is for; its tokens then open sockets only as "
        "this device, and DELETE /auth/devices/{device_id} ends it.",
    )
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"username": "alice", "password": "correct horse battery", "device_id": "phone"}
    ]})


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str = Field(description="Redeem once with POST /auth/refresh.")
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    user_id: int
    session_id: str
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "access_token": "eyJhbGciOiJIUzI1NiIsImtpZCI6Ii4uLiJ9...",
        "refresh_token": "pQ1V0...", "token_type": "Bearer", "expires_in": 3600,
        "user_id": 42, "session_id": "9f2c4e1a0b7d4c3e8f6a5b4c3d2e1f00",
    }]})


class RefreshRequest(_Body):
    refresh_token: str = Field(min_length=1, max_length=_TOKEN)
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "pQ1V0..."}]})


class RegisterRequest(_Body):
    tenant: str | None = Field(None, pattern=_SLUG, description="Default: the default tenant.")
    username: str = Field(pattern=_USERNAME)
    password: Password = Field(description="At least 8 characters, not the username.")
    display_name: str | None = Field(None, min_length=1, max_length=200)
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "username": "alice", "password": "correct horse battery", "display_name": "Alice",
    }]})


class RegisteredUser(BaseModel):
    user_id: int
    tenant_id: int
    username: str
    display_name: str


class PasswordChange(_Body):
    current_password: Password
    new_password: Password = Field(description="At least 8 characters, not the username.")
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "current_password": "correct horse battery", "new_password": "battery staple horse",
    }]})


class SessionPublic(BaseModel):
    session_id: str
    device_id: str | None
    created_at: int = Field(description="Milliseconds since the Unix epoch.")
    last_used_at: int
    expires_at: int = Field(description="When the refresh token lapses unless used.")
    current: bool = Field(description="Whether this is the session of the calling token.")


class DevicePublic(BaseModel):
    device_id: str
    platform: str
    last_seen_at: int | None = Field(description="Last WebSocket connection (ms), if any.")
    sessions: int = Field(description="Active login sessions bound to this device.")
    online: bool


class TicketRequest(_Body):
    audience: str = Field(pattern=_APP, description="The light app's id.")
    model_config = ConfigDict(json_schema_extra={"examples": [{"audience": "app.calendar"}]})


class TicketResponse(BaseModel):
    ticket: str
    expires_in: int
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ticket": "eyJhbGciOiJIUzI1NiIsImtpZCI6Ii4uLiJ9...", "expires_in": 30}
    ]})


class TicketVerify(_Body):
    ticket: str = Field(min_length=1, max_length=_TOKEN)
    audience: str = Field(pattern=_APP)
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ticket": "eyJhbGciOiJIUzI1NiIsImtpZCI6Ii4uLiJ9...", "audience": "app.calendar"}
    ]})


class TicketIdentity(BaseModel):
    user_id: int
    tenant_id: int


def _tokens(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token,
        expires_in=pair.expires_in, user_id=pair.session.user_id, session_id=pair.session.id,
    )


def _throttled(exc: Throttled) -> HTTPException:
    return HTTPException(429, exc.message, headers={"Retry-After": str(exc.retry_after_s)})


@router.post(
    "/login", summary="Log in with a username and password.",
    responses={429: {**_E, "description": "Too many failed attempts"}},
)
async def login(body: LoginRequest, request: Request, services: Services) -> TokenResponse:
    slug = body.tenant or services.settings.tenant
    account = LoginThrottle.account_key(slug, body.username)
    address = client_address(request)
    try:
        services.throttle.check(account, address)
    except Throttled as exc:
        raise _throttled(exc) from None
    tenant = await services.accounts.tenant_by_slug(slug)
    try:
        user = await services.login.authenticate(
            tenant.id if tenant else None, body.username, body.password
        )
    except Unauthenticated:
        services.throttle.failed(account, address)
        raise
    return _tokens(await services.sessions.login(user.tenant_id, user.id, body.device_id or ""))


@router.post("/refresh", summary="Trade a refresh token (once) for a new token pair.")
async def refresh(body: RefreshRequest, services: Services) -> TokenResponse:
    """A refresh token works once.  Presenting a used one again revokes its whole
    session (every token of that login) and closes its sockets."""
    return _tokens(await services.sessions.refresh(body.refresh_token))


@router.post("/logout", status_code=204, summary="End the current session.")
async def logout(caller: CurrentCaller, services: Services) -> Response:
    """Its refresh tokens stop working, its access tokens are refused from now on, and
    its open WebSockets are closed with 4001."""
    await services.sessions.revoke(caller.tenant_id, caller.user_id, session_id=caller.session_id)
    return Response(status_code=204)


@router.post(
    "/register", status_code=201, summary="Create an account (when registration is open).",
    responses={400: {**_E, "description": "Password policy"},
               403: {**_E, "description": "Registration is closed"},
               404: {**_E, "description": "No such tenant"},
               409: {**_E, "description": "Username taken"}},
)
async def register(body: RegisterRequest, services: Services) -> RegisteredUser:
    """Open when the tenant allows it (its own setting, else the node's
    ``allow_registration``).  While the node's setting is off, an unknown tenant
    answers 403 as a closed one does, so tenants cannot be probed."""
    node_open = services.settings.allow_registration
    tenant = await services.accounts.tenant_by_slug(body.tenant or services.settings.tenant)
    if tenant is None:
        if not node_open:
            raise Forbidden("registration is closed")
        raise NotFound("no such tenant")
    own = tenant.allow_registration
    if not (node_open if own is None else own):
        raise Forbidden("registration is closed")
    check_password_policy(body.username, body.password)
    digest = await services.hasher.ahash(body.password)
    user = await services.accounts.create_user(
        tenant.id, body.username, services.clock.now_ms(), display_name=body.display_name,
        password_hash=digest,
    )
    return RegisteredUser(user_id=user.id, tenant_id=user.tenant_id, username=user.username,
                          display_name=user.display_name)


async def _me(services: Services, caller: Caller) -> User:
    user = await services.accounts.user(caller.tenant_id, caller.user_id)
    if user is None or user.status != "active":
        raise Unauthenticated("invalid token")
    return user


@router.post(
    "/password", status_code=204, summary="Change the password; ends the other sessions.",
    dependencies=_ACCOUNT,
    responses={400: {**_E, "description": "Password policy"},
               403: {**_E, "description": "Current password wrong or not local"},
               429: {**_E, "description": "Too many failed attempts"}},
)
async def change_password(
    body: PasswordChange, caller: CurrentCaller, services: Services, request: Request
) -> Response:
    user = await _me(services, caller)
    tenant = await services.accounts.tenant(caller.tenant_id)
    account = LoginThrottle.account_key(tenant.slug if tenant else "", user.username)
    address = client_address(request)
    try:
        services.throttle.check(account, address)
    except Throttled as exc:
        raise _throttled(exc) from None
    if not await services.local_passwords.check(user, body.current_password):
        services.throttle.failed(account, address)
        raise Forbidden("the current password is wrong")
    check_password_policy(user.username, body.new_password)
    await services.local_passwords.set_password(user, body.new_password)
    await services.sessions.revoke(caller.tenant_id, caller.user_id, keep=caller.session_id)
    return Response(status_code=204)


@router.get("/sessions", summary="The caller's active login sessions.", dependencies=_ACCOUNT)
async def list_sessions(caller: CurrentCaller, services: Services) -> list[SessionPublic]:
    return [
        SessionPublic(
            session_id=s.id, device_id=s.device_id or None, created_at=s.created_at,
            last_used_at=s.last_used_at, expires_at=s.expires_at,
            current=s.id == caller.session_id,
        )
        for s in await services.sessions.active(caller.tenant_id, caller.user_id)
    ]


@router.delete(
    "/sessions/{session_id}", status_code=204, summary="End one of the caller's sessions.",
    dependencies=_ACCOUNT,
    responses={404: {**_E, "description": "No such active session"}},
)
async def revoke_session(
    session_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")],
    caller: CurrentCaller, services: Services,
) -> Response:
    active = await services.sessions.active(caller.tenant_id, caller.user_id)
    if all(s.id != session_id for s in active):
        raise NotFound("no such session")
    await services.sessions.revoke(caller.tenant_id, caller.user_id, session_id=session_id)
    return Response(status_code=204)


@router.get("/devices", summary="The caller's devices: known, logged in or online.",
            dependencies=_ACCOUNT)
async def list_devices(caller: CurrentCaller, services: Services) -> list[DevicePublic]:
    known = {d.device_id: d for d in
             await services.accounts.list_devices(caller.tenant_id, caller.user_id)}
    counts: dict[str, int] = {}
    for s in await services.sessions.active(caller.tenant_id, caller.user_id):
        if s.device_id:
            counts[s.device_id] = counts.get(s.device_id, 0) + 1
    online = {d.device_id for d in services.hub.devices(caller.tenant_id, caller.user_id)}
    out = []
    for device_id in sorted(set(known) | set(counts) | online):
        d = known.get(device_id)
        out.append(DevicePublic(
            device_id=device_id, platform=d.platform if d else "",
            last_seen_at=d.last_seen_at if d else None, sessions=counts.get(device_id, 0),
            online=device_id in online,
        ))
    return out


@router.delete(
    "/devices/{device_id}", status_code=204, dependencies=_ACCOUNT,
    summary="Sign a device out: end its sessions and close its sockets (4001).",
)
async def revoke_device(device_id: DeviceId, caller: CurrentCaller, services: Services) -> Response:
    await services.sessions.revoke(caller.tenant_id, caller.user_id, device_id=device_id)
    return Response(status_code=204)


@router.post("/tickets", summary="A one-time ticket proving the caller to a light app.",
             dependencies=_ACCOUNT)
async def create_ticket(
    body: TicketRequest, caller: CurrentCaller, services: Services
) -> TicketResponse:
    ticket = services.tickets.issue(caller.tenant_id, caller.user_id, body.audience)
    return TicketResponse(ticket=ticket, expires_in=services.tickets.ttl_s)


@router.post("/tickets/verify", summary="Redeem a ticket (once) for the user it names.")
async def verify_ticket(body: TicketVerify, services: Services) -> TicketIdentity:
    """For the light app's server.  A replayed, expired or forged ticket, or one made
    for another app, is refused with 401."""
    claims = await services.tickets.redeem(body.ticket, body.audience)
    return TicketIdentity(user_id=claims.user_id, tenant_id=claims.tenant_id)

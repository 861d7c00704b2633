"""OAuth 2.0 provider endpoints: authorize, token, and client registration.

``/oauth/authorize`` and ``/oauth/token`` answer in RFC 6749's own format
(``{"error", "error_description"}``, redirects carrying ``error``/``state``),
which OAuth client libraries expect; the client-registration endpoints use
Parley's error body like the rest of the API.  See ``parley.auth.oauth`` for
the grants and their rules.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from parley.api.deps import ApiServices, Caller, CurrentCaller, Services, require_login_token
from parley.api.errors import ErrorBody
from parley.auth.oauth import ClientSpec, OAuthResponse, OAuthService
from parley.errors import Forbidden, Unauthenticated
from parley.store.identities import OAuthClient, OAuthStore

__all__ = ["router"]

router = APIRouter(prefix="/oauth", tags=["oauth"])

_E = {"model": ErrorBody}
_MAX_FORM_BYTES = 16 * 1024
_ADMIN_ROLES = ("tenant_admin", "system_admin")


class OAuthError(BaseModel):
    """RFC 6749 section 5.2 error."""

    error: str
    error_description: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = Field(examples=["Bearer"])
    expires_in: int
    scope: str = Field(examples=["messages:read messages:write"])


GrantType = Literal["authorization_code", "client_credentials", "password"]


class ClientCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Helpdesk bot"])
    redirect_uris: list[str] = Field(
        default_factory=list, max_length=20, examples=[["https://app.example.org/callback"]]
    )
    grant_types: list[GrantType] = Field(
        default_factory=lambda: list[GrantType](["authorization_code"]),
        min_length=1, max_length=3,
    )
    scopes: list[Annotated[str, Field(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]{1,64}$")]] = Field(
        default_factory=list, max_length=50
    )
    confidential: bool = Field(True, description="Has a secret (false: a public app, PKCE only).")
    first_party: bool = Field(False, description="Made by the operator (may use the password "
                              "grant when oauth_password_grant is on).")


class ClientPublic(BaseModel):
    client_id: str
    name: str
    redirect_uris: list[str]
    grant_types: list[str]
    scopes: list[str]
    confidential: bool
    first_party: bool
    created_at: int


class ClientCreated(ClientPublic):
    client_secret: str | None = Field(
        None, description="Shown once; only its hash is kept. None for public clients."
    )


def _public(c: OAuthClient) -> ClientPublic:
    return ClientPublic(
        client_id=c.client_id, name=c.name, redirect_uris=list(c.redirect_uris),
        grant_types=list(c.grant_types), scopes=list(c.scopes), confidential=not c.public,
        first_party=c.first_party, created_at=c.created_at,
    )


def get_oauth(request: Request, services: Services) -> OAuthService:
    """The node's OAuth service (``app.state.oauth`` if the composition root set
    one, else built once from the services and kept there)."""
    existing: OAuthService | None = getattr(request.app.state, "oauth", None)
    if existing is None:
        existing = build_oauth(services)
        request.app.state.oauth = existing
    return existing


def build_oauth(services: ApiServices) -> OAuthService:
    """The provider for these services; the password grant (when enabled) checks
    credentials through the login chain (local accounts, then LDAP, ...)."""
    s = services.settings
    return OAuthService(
        OAuthStore(services.db), services.accounts, services.tokens, services.clock,
        code_ttl_s=s.oauth_code_ttl_s, password_grant=s.oauth_password_grant,
        password_check=services.login.authenticate if s.oauth_password_grant else None,
    )


OAuth = Annotated[OAuthService, Depends(get_oauth)]


def _respond(r: OAuthResponse) -> Response:
    headers = {k: v for k, v in r.headers.items() if k.lower() != "content-type"}
    if r.status == 302 and "Location" in r.headers:
        return RedirectResponse(r.headers["Location"], status_code=302)
    return JSONResponse(r.body or {}, status_code=r.status, headers=headers)


async def _admin(services: ApiServices, caller: Caller) -> None:
    user = await services.accounts.user(caller.tenant_id, caller.user_id)
    if user is None or user.role not in _ADMIN_ROLES:
        raise Forbidden("only tenant administrators manage OAuth clients")


@router.get(
    "/authorize",
    summary="Authorization code request (PKCE S256 required), approved for the caller.",
    description="Called by a signed-in Parley client with the user's bearer token; there "
    "is no consent page (the tenant administrator's registration of the client is the "
    "consent).  Answers 302 to the redirect URI with `code` and `state`, or with `error` "
    "once the client and redirect URI are known; 400 otherwise.",
    status_code=302,
    responses={302: {"description": "Redirect to the client"},
               400: {"model": OAuthError, "description": "Unknown client or redirect URI"},
               401: {**_E, "description": "Missing or invalid access token"},
               403: {**_E, "description": "A scoped (OAuth) token: insufficient_scope"}},
    dependencies=[Depends(require_login_token)],
)
async def authorize(
    request: Request, services: Services, caller: CurrentCaller, oauth: OAuth,
    response_type: Annotated[str, Query(examples=["code"])],
    client_id: Annotated[str, Query(max_length=64)],
    code_challenge: Annotated[str | None, Query(max_length=128)] = None,
    code_challenge_method: Annotated[str | None, Query(examples=["S256"])] = None,
    redirect_uri: Annotated[str | None, Query(max_length=2000)] = None,
    scope: Annotated[str | None, Query(max_length=2000)] = None,
    state: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    user = await services.accounts.user(caller.tenant_id, caller.user_id)
    if user is None or user.status != "active":
        raise Unauthenticated("invalid token")
    params = dict(request.query_params)
    return _respond(await oauth.authorize(params, user))


@router.post(
    "/token",
    summary="Token endpoint (authorization_code, client_credentials, password).",
    description="Form-encoded (`application/x-www-form-urlencoded`) as RFC 6749 requires. "
    "Client authentication: HTTP Basic or `client_id`/`client_secret` in the form; public "
    "clients send `client_id` only.  The password grant is refused unless "
    "`oauth_password_grant` is on and the client is first-party (deprecated by OAuth 2.1).",
    response_model=TokenResponse,
    responses={400: {"model": OAuthError, "description": "invalid_grant, invalid_request, "
                     "unsupported_grant_type, ..."},
               401: {"model": OAuthError, "description": "invalid_client"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["grant_type"],
            "properties": {k: {"type": "string"} for k in (
                "grant_type", "code", "redirect_uri", "code_verifier", "client_id",
                "client_secret", "scope", "username", "password")},
        }, "examples": {
            "authorization_code": {"summary": "Redeem a code (PKCE)", "value": {
                "grant_type": "authorization_code", "code": "CODE_FROM_REDIRECT",
                "redirect_uri": "https://app.example.com/callback",
                "code_verifier": "THE_PKCE_VERIFIER", "client_id": "my-app"}},
            "client_credentials": {"summary": "A service's own token", "value": {
                "grant_type": "client_credentials", "client_id": "reporting-bot",
                "client_secret": "THE_CLIENT_SECRET", "scope": "messages:read"}},
        }}}}},
)
async def token(request: Request, oauth: OAuth) -> Response:
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return JSONResponse({"error": "invalid_request",
                             "error_description": "request too large"}, status_code=400)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=False, strict_parsing=False)
    except UnicodeDecodeError:
        pairs = []
    form = dict(pairs)
    if len(form) != len(pairs):
        return JSONResponse({"error": "invalid_request",
                             "error_description": "repeated parameter"}, status_code=400)
    headers = {"Authorization": request.headers.get("authorization", "")}
    return _respond(await oauth.token(form, headers))


@router.post(
    "/clients", status_code=201, summary="Register an OAuth client (tenant administrators).",
    responses={400: _E, 401: _E, 403: _E, 422: _E}, dependencies=[Depends(require_login_token)],
)
async def create_client(
    body: ClientCreate, services: Services, caller: CurrentCaller, oauth: OAuth
) -> ClientCreated:
    await _admin(services, caller)
    new = await oauth.register_client(caller.tenant_id, ClientSpec(
        name=body.name, redirect_uris=tuple(body.redirect_uris),
        grant_types=tuple(body.grant_types), scopes=tuple(body.scopes),
        confidential=body.confidential, first_party=body.first_party,
    ))
    return ClientCreated(**_public(new.client).model_dump(), client_secret=new.secret)


@router.get(
    "/clients", summary="The tenant's OAuth clients (tenant administrators).",
    responses={401: _E, 403: _E}, dependencies=[Depends(require_login_token)],
)
async def list_clients(
    services: Services, caller: CurrentCaller, oauth: OAuth
) -> list[ClientPublic]:
    await _admin(services, caller)
    return [_public(c) for c in await oauth.clients(caller.tenant_id)]

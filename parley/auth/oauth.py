"""The OAuth 2.0 provider (Authlib's RFC 6749 / RFC 7636 grants, Parley storage).

Grants:

* ``authorization_code`` with PKCE **required**, S256 only (``plain`` and a
  missing challenge are refused at the authorization endpoint; a missing or
  wrong verifier at the token endpoint).  Codes are single use: redeeming one
  deletes it first, so a replay (or a second try after a wrong verifier) fails.
* ``client_credentials`` for confidential clients only.  The token stands for
  the client, not for a person: each such client has a *service principal*, a
  Parley user ``oauth.<client_id>`` created when the client is registered, and
  the access token's ``sub`` is that user.  The rest of the API therefore
  treats it as an ordinary, unprivileged user (role ``user``) that is a member
  of nothing until someone adds it; it can never act as another user.
* ``password`` (resource owner password credentials) only for first-party
  clients and only when ``oauth_password_grant`` is on (off by default).  It is
  deprecated by OAuth 2.1 (draft) and RFC 9700; prefer the code flow.
* No implicit grant, no refresh tokens through OAuth (clients run the code flow
  again), no consent page: ``GET /oauth/authorize`` is called by a signed-in
  Parley client with the user's bearer token and approves at once.  The consent
  is the tenant administrator's registration of the client.

Scopes: a client is registered with scopes from ``parley.auth.scopes.SCOPES``
(an unknown name is refused at registration); a request may ask for a subset
of them (anything else: ``invalid_scope``), and asking for none grants all the
client's scopes.  Access tokens are ordinary Parley access tokens
(``TokenService.issue``) carrying the granted set in their ``scope`` claim, so
every endpoint outside that set refuses them (403 ``insufficient_scope``).

Authlib is synchronous: ``OAuthService`` runs it in a worker thread and each
storage call it makes is sent back to the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    AuthorizationServer,
    ClientMixin,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge

from parley.auth.scopes import SCOPES, unknown_scopes
from parley.auth.tokens import TokenService
from parley.clock import Clock
from parley.errors import BadRequest, Unauthenticated
from parley.store.accounts import AccountStore, User
from parley.store.identities import AuthCode, OAuthClient, OAuthStore, sha256_hex

__all__ = [
    "GRANT_TYPES", "ClientSpec", "NewClient", "OAuthResponse", "OAuthService", "PasswordCheck",
]

GRANT_TYPES = ("authorization_code", "client_credentials", "password")
T = TypeVar("T")
PasswordCheck = Callable[[int, str, str], Coroutine[Any, Any, User | None]]
# The secure-transport check of Authlib is about the public URL; TLS ends at the
# reverse proxy in front of Parley, so requests are handed over under this base.
_BASE = "https://parley.invalid"
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class OAuthResponse:
    """What an endpoint answers: status, JSON body (or None) and headers."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ("authorization_code",)
    scopes: tuple[str, ...] = ()
    confidential: bool = True
    first_party: bool = False


@dataclass(frozen=True, slots=True)
class NewClient:
    client: OAuthClient
    secret: str | None  # shown once


# -- Authlib models -----------------------------------------------------------------
class _Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, c: OAuthClient, password_grant: bool) -> None:
        self.c = c
        self._password_grant = password_grant

    def get_client_id(self) -> str:
        return self.c.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.c.redirect_uris[0] if len(self.c.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return " ".join(self.c.scopes)
        asked = scope.split()
        if any(s not in self.c.scopes for s in asked):
            raise InvalidScopeError()
        return " ".join(dict.fromkeys(asked))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.c.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.c.secret_hash is None:
            return False
        return hmac.compare_digest(sha256_hex(client_secret), self.c.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        if self.c.public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.c.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type not in self.c.grant_types:
            return False
        if grant_type == "client_credentials":
            return not self.c.public and self.c.service_user_id is not None
        if grant_type == "password":
            return self._password_grant and self.c.first_party
        return True


class _Code(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, code: AuthCode) -> None:
        self.code = code
        self.code_challenge = code.code_challenge
        self.code_challenge_method = code.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.code.redirect_uri or None

    def get_scope(self) -> str:
        return self.code.scope


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, path: str, data: dict[str, str],
                 headers: dict[str, str]) -> None:
        super().__init__(method, _BASE + path, headers=headers)
        self._data = data
        self.payload = BasicOAuth2Payload(data)

    @property
    def args(self) -> dict[str, str]:
        return self._data if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        return self._data if self.method == "POST" else {}


# -- grants ---------------------------------------------------------------------------
class _S256Required(CodeChallenge):  # type: ignore[misc]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: _Server

    def save_authorization_code(self, code: str, request: Any) -> None:
        s, user, client = self.server, request.user, request.client
        data = request.payload.data
        s.run(s.store.save_code(code, AuthCode(
            tenant_id=client.c.tenant_id, client_id=client.c.client_id, user_id=user.id,
            redirect_uri=data.get("redirect_uri") or "", scope=request.scope or "",
            code_challenge=data["code_challenge"], code_challenge_method="S256",
            expires_at=s.clock.now_ms() + s.code_ttl_s * 1000,
        )))

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        s = self.server
        found = s.run(s.store.take_code(code, client.c.client_id, s.clock.now_ms()))
        return _Code(found) if found else None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        pass  # already deleted when it was taken

    def authenticate_user(self, authorization_code: _Code) -> User | None:
        c = authorization_code.code
        user = self.server.run(self.server.accounts.user(c.tenant_id, c.user_id))
        return user if user is not None and user.status == "active" else None


class _ClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _PasswordGrant(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: _Server

    def authenticate_token_endpoint_client(self) -> _Client:
        client: _Client = super().authenticate_token_endpoint_client()
        self._authenticated = client
        return client

    def authenticate_user(self, username: str, password: str) -> User | None:
        s = self.server
        if s.password_check is None:
            return None
        try:
            return s.run(s.password_check(self._authenticated.c.tenant_id, username, password))
        except Unauthenticated:
            return None


# -- the server -----------------------------------------------------------------------
class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self, store: OAuthStore, accounts: AccountStore, tokens: TokenService, clock: Clock,
        code_ttl_s: int, password_grant: bool, password_check: PasswordCheck | None,
    ) -> None:
        super().__init__()
        self.store, self.accounts, self.tokens, self.clock = store, accounts, tokens, clock
        self.code_ttl_s = code_ttl_s
        self.password_grant = password_grant
        self.password_check = password_check
        self.loop: asyncio.AbstractEventLoop | None = None
        self.register_grant(_CodeGrant, [_S256Required(required=True)])
        self.register_grant(_ClientCredentialsGrant)
        if password_grant:
            self.register_grant(_PasswordGrant)
        self.register_token_generator("default", self._token)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the node's event loop from Authlib's worker thread."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def query_client(self, client_id: str) -> _Client | None:
        ok = isinstance(client_id, str) and _CLIENT_ID.fullmatch(client_id) is not None
        c = self.run(self.store.client(client_id)) if ok else None
        return _Client(c, self.password_grant) if c else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        pass  # access tokens are self-contained JWTs

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> OAuthResponse:
        return OAuthResponse(status, body if isinstance(body, dict) else None, dict(headers))

    def _token(
        self, grant_type: str, client: _Client, user: User | None = None,
        scope: str | None = None, expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        scope = client.get_allowed_scope(scope)
        uid = user.id if user is not None else client.c.service_user_id
        assert uid is not None
        return {
            "access_token": self.tokens.issue(client.c.tenant_id, uid, scope=scope),
            "token_type": "Bearer", "expires_in": self.tokens.access_ttl_s, "scope": scope,
        }


class OAuthService:
    """The async face of the provider: authorize, token, register clients."""

    def __init__(
        self, store: OAuthStore, accounts: AccountStore, tokens: TokenService, clock: Clock,
        *, code_ttl_s: int = 60, password_grant: bool = False,
        password_check: PasswordCheck | None = None,
    ) -> None:
        self._server = _Server(store, accounts, tokens, clock, code_ttl_s, password_grant,
                               password_check)
        self._store = store
        self._accounts = accounts
        self._clock = clock

    async def authorize(self, params: dict[str, str], user: User) -> OAuthResponse:
        """Approve an authorization request for ``user`` (a redirect with a code), or
        the error: a redirect when the client and redirect URI are known, else 400."""
        self._server.loop = asyncio.get_running_loop()
        return await asyncio.to_thread(self._authorize, params, user)

    def _authorize(self, params: dict[str, str], user: User) -> OAuthResponse:
        s = self._server
        req = _Request("GET", "/oauth/authorize", params, {})
        try:
            grant = s.get_consent_grant(req, end_user=user)
        except OAuth2Error as error:
            return s.handle_error_response(req, error)  # type: ignore[no-any-return]
        if grant.client.c.tenant_id != user.tenant_id:
            return OAuthResponse(400, {"error": "invalid_client",
                                       "error_description": "unknown client"}, {})
        return s.create_authorization_response(req, grant_user=user, grant=grant)  # type: ignore[no-any-return]

    async def token(self, form: dict[str, str], headers: dict[str, str]) -> OAuthResponse:
        self._server.loop = asyncio.get_running_loop()
        req = _Request("POST", "/oauth/token", form, headers)
        return await asyncio.to_thread(self._server.create_token_response, req)

    async def register_client(self, tenant_id: int, spec: ClientSpec) -> NewClient:
        """Register a client; BadRequest for an impossible combination.  The secret
        of a confidential client is returned here once and stored only hashed."""
        grants = tuple(dict.fromkeys(spec.grant_types))
        if not grants or any(g not in GRANT_TYPES for g in grants):
            raise BadRequest(f"grant_types: choose from {', '.join(GRANT_TYPES)}")
        if "authorization_code" in grants and not spec.redirect_uris:
            raise BadRequest("redirect_uris: the authorization code grant needs one")
        if "client_credentials" in grants and not spec.confidential:
            raise BadRequest("client_credentials needs a confidential client")
        if "password" in grants and not spec.first_party:
            raise BadRequest("the password grant is for first-party clients only")
        unknown = unknown_scopes(spec.scopes)
        if unknown:
            raise BadRequest(f"scopes: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(SCOPES)}")
        for uri in spec.redirect_uris:
            if "#" in uri or ":" not in uri or any(ch.isspace() for ch in uri):
                raise BadRequest(f"redirect_uris: {uri!r} is not an absolute URI")
        now = self._clock.now_ms()
        client_id = "pc_" + secrets.token_urlsafe(16)
        secret = secrets.token_urlsafe(32) if spec.confidential else None
        service_user = None
        if "client_credentials" in grants:
            service_user = (await self._accounts.create_user(
                tenant_id, f"oauth.{client_id}", now, display_name=spec.name
            )).id
        client = await self._store.create_client(OAuthClient(
            client_id=client_id, tenant_id=tenant_id, name=spec.name,
            secret_hash=sha256_hex(secret) if secret else None,
            redirect_uris=tuple(spec.redirect_uris), grant_types=grants,
            scopes=tuple(dict.fromkeys(spec.scopes)), first_party=spec.first_party,
            service_user_id=service_user, created_at=now,
        ))
        return NewClient(client, secret)

    async def clients(self, tenant_id: int) -> list[OAuthClient]:
        return await self._store.list_clients(tenant_id)


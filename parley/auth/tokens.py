"""Access tokens: short-lived JWTs (RFC 8725 practice).

* One algorithm, fixed (HS256): the header's ``alg`` is never trusted, so
  ``alg: none`` and algorithm confusion are refused.
* ``iss``, ``aud``, ``exp``, ``iat`` and ``sub`` are required and checked.
* ``kid`` names the signing key; every active key verifies, the newest signs,
  so a key can be rotated without logging anyone out.

Claims: ``sub`` user id, ``tid`` tenant id, ``sid`` session id, ``jti``, and
``did`` (the device the session was made for) when the login named one, and
``scope`` (space-separated, ``parley.auth.scopes``) on tokens issued to OAuth
clients: ``AccessClaims.scope`` is then that set, and None for a first-party
login token (no ``scope`` claim: full access).

Revocation: ``verify`` also refuses a token whose session is in the
``RevocationList`` it was given (logout, refresh reuse, password change, device
revocation).  The list lives in this process's memory, so checking it costs no
database round trip (the WebSocket handshake cannot await one).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from parley.auth.scopes import parse_scope
from parley.clock import Clock
from parley.errors import Unauthenticated
from parley.store.keys import SigningKey

__all__ = ["AccessClaims", "RevocationCheck", "TokenService"]

ALGORITHM = "HS256"
ISSUER = "parley"
AUDIENCE = "parley-api"
_IAT_LEEWAY_S = 60  # tolerated clock difference between nodes


@dataclass(frozen=True, slots=True)
class AccessClaims:
    tenant_id: int
    user_id: int
    session_id: str
    issued_at: int
    expires_at: int
    jti: str
    device_id: str | None = None
    scope: frozenset[str] | None = None
    """The granted scopes; None: a first-party login token (full access)."""

    def allows(self, name: str) -> bool:
        """True if this token may use scope ``name``."""
        return self.scope is None or name in self.scope


class RevocationCheck(Protocol):
    def is_revoked(self, session_id: str) -> bool:
        """True if access tokens of this session must be refused (no I/O)."""
        ...


class TokenService:
    """Issues and verifies access tokens with the keys it was given."""

    def __init__(
        self, keys: Sequence[SigningKey], clock: Clock, *, access_ttl_s: int = 3600,
        issuer: str = ISSUER, audience: str = AUDIENCE,
        revocations: RevocationCheck | None = None,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {k.kid: k for k in keys}
        self._signer = keys[0]
        self._clock = clock
        self.access_ttl_s = access_ttl_s
        self._issuer = issuer
        self._audience = audience
        self.revocations = revocations

    def replace_keys(self, keys: Sequence[SigningKey]) -> None:
        """Adopt a new key set (after a rotation); newest first."""
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {k.kid: k for k in keys}
        self._signer = keys[0]

    def issue(
        self, tenant_id: int, user_id: int, session_id: str | None = None,
        ttl_s: int | None = None, device_id: str | None = None, scope: str | None = None,
    ) -> str:
        """An access token; ``scope`` (space-separated names, possibly empty) limits
        it to those scopes, None leaves it unlimited (a first-party login)."""
        claims: dict[str, Any] = {
            "sub": str(user_id), "tid": tenant_id, "sid": session_id or secrets.token_hex(8),
        }
        if device_id:
            claims["did"] = device_id
        if scope is not None:
            claims["scope"] = " ".join(sorted(parse_scope(scope)))
        return self.sign(claims, self._audience, ttl_s or self.access_ttl_s)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or Unauthenticated (never says which check failed)."""
        data = self.decode(token, self._audience)
        raw_scope = data.get("scope")
        if raw_scope is not None and not isinstance(raw_scope, str):
            raise Unauthenticated("invalid token")
        try:
            claims = AccessClaims(
                tenant_id=int(data["tid"]), user_id=int(data["sub"]), session_id=str(data["sid"]),
                issued_at=int(data["iat"]), expires_at=int(data["exp"]), jti=str(data["jti"]),
                device_id=str(data["did"]) if "did" in data else None,
                scope=parse_scope(raw_scope) if raw_scope is not None else None,
            )
        except (KeyError, ValueError, TypeError):
            raise Unauthenticated("invalid token") from None
        if self.revocations is not None and self.revocations.is_revoked(claims.session_id):
            raise Unauthenticated("invalid token")
        return claims

    # -- any JWT of this issuer (access tokens, one-time tickets) ------------------
    def sign(self, claims: Mapping[str, Any], audience: str, ttl_s: int) -> str:
        """A JWT with ``claims`` plus ``iss``, ``aud``, ``iat``, ``exp`` and a fresh
        ``jti``, signed by the newest key (its id in ``kid``)."""
        now = self._clock.now_ms() // 1000
        body = {**claims, "iss": self._issuer, "aud": audience, "iat": now,
                "exp": now + ttl_s, "jti": secrets.token_hex(12)}
        return jwt.encode(
            body, self._signer.secret, algorithm=ALGORITHM, headers={"kid": self._signer.kid}
        )

    def decode(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a JWT for ``audience`` with a known ``kid``, the fixed
        algorithm, this issuer, and ``exp``/``iat`` valid by the node's clock;
        Unauthenticated otherwise (never says which check failed)."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid", "")))
            if key is None or header.get("alg") != ALGORITHM:
                raise Unauthenticated("invalid token")
            data: dict[str, Any] = jwt.decode(
                token, key.secret, algorithms=[ALGORITHM], audience=audience,
                issuer=self._issuer,
                # Times are checked below against the node's clock, not the host's.
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"],
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
            now = self._clock.now_ms() // 1000
            if int(data["exp"]) <= now or int(data["iat"]) > now + _IAT_LEEWAY_S:
                raise Unauthenticated("invalid token")
            if "nbf" in data and int(data["nbf"]) > now + _IAT_LEEWAY_S:
                raise Unauthenticated("invalid token")
            return data
        except Unauthenticated:
            raise
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            raise Unauthenticated("invalid token") from None

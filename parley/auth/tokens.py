"""Access tokens: short-lived JWTs (RFC 8725 practice).

* One algorithm, fixed (HS256): the header's ``alg`` is never trusted, so
  ``alg: none`` and algorithm confusion are refused.
* ``iss``, ``aud``, ``exp``, ``iat`` and ``sub`` are required and checked.
* ``kid`` names the signing key; every active key verifies, the newest signs,
  so a key can be rotated without logging anyone out.

Claims: ``sub`` user id, ``tid`` tenant id, ``sid`` session id, ``jti``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import jwt

from parley.clock import Clock
from parley.errors import Unauthenticated
from parley.store.keys import SigningKey

__all__ = ["AccessClaims", "TokenService"]

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


class TokenService:
    """Issues and verifies access tokens with the keys it was given."""

    def __init__(
        self, keys: Sequence[SigningKey], clock: Clock, *, access_ttl_s: int = 3600,
        issuer: str = ISSUER, audience: str = AUDIENCE,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {k.kid: k for k in keys}
        self._signer = keys[0]
        self._clock = clock
        self.access_ttl_s = access_ttl_s
        self._issuer = issuer
        self._audience = audience

    def replace_keys(self, keys: Sequence[SigningKey]) -> None:
        """Adopt a new key set (after a rotation); newest first."""
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {k.kid: k for k in keys}
        self._signer = keys[0]

    def issue(
        self, tenant_id: int, user_id: int, session_id: str | None = None,
        ttl_s: int | None = None,
    ) -> str:
        now = self._clock.now_ms() // 1000
        claims = {
            "iss": self._issuer, "aud": self._audience, "sub": str(user_id),
            "tid": tenant_id, "sid": session_id or secrets.token_hex(8),
            "iat": now, "exp": now + (ttl_s or self.access_ttl_s),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(
            claims, self._signer.secret, algorithm=ALGORITHM, headers={"kid": self._signer.kid}
        )

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or Unauthenticated (never says which check failed)."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid", "")))
            if key is None or header.get("alg") != ALGORITHM:
                raise Unauthenticated("invalid token")
            data = jwt.decode(
                token, key.secret, algorithms=[ALGORITHM], audience=self._audience,
                issuer=self._issuer,
                # Times are checked below against the node's clock, not the host's.
                options={"require": ["exp", "iat", "sub", "iss", "aud"],
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
            now = self._clock.now_ms() // 1000
            if int(data["exp"]) <= now or int(data["iat"]) > now + _IAT_LEEWAY_S:
                raise Unauthenticated("invalid token")
            return AccessClaims(
                tenant_id=int(data["tid"]), user_id=int(data["sub"]), session_id=str(data["sid"]),
                issued_at=int(data["iat"]), expires_at=int(data["exp"]), jti=str(data["jti"]),
            )
        except Unauthenticated:
            raise
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            raise Unauthenticated("invalid token") from None

"""External identities (LDAP, later OIDC) and OAuth 2.0 clients and codes.

Every query takes ``tenant_id`` (or a client id that belongs to one tenant).
Secrets are never stored: client secrets and authorization codes are kept as
SHA-256 digests of long random values (a digest, not argon2, is enough for
256-bit random strings and keeps the token endpoint fast).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import RowMapping, delete, select, update
from sqlalchemy.exc import IntegrityError

from parley.errors import Conflict
from parley.store.database import Database
from parley.store.tables import external_identities, oauth_clients, oauth_codes

__all__ = ["AuthCode", "IdentityStore", "OAuthClient", "OAuthStore", "sha256_hex"]


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class IdentityStore:
    """Links (tenant, provider, subject) to a Parley user."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def user_id_for(self, tenant_id: int, provider: str, subject: str) -> int | None:
        async with self._db.reader.connect() as conn:
            uid = await conn.scalar(
                select(external_identities.c.user_id).where(
                    external_identities.c.tenant_id == tenant_id,
                    external_identities.c.provider == provider,
                    external_identities.c.subject == subject,
                )
            )
        return int(uid) if uid is not None else None

    async def link(
        self, tenant_id: int, user_id: int, provider: str, subject: str,
        email: str | None, now_ms: int,
    ) -> None:
        """Record that ``subject`` at ``provider`` is ``user_id``; Conflict if it is linked."""
        try:
            async with self._db.writer.begin() as conn:
                await conn.execute(
                    external_identities.insert().values(
                        tenant_id=tenant_id, user_id=user_id, provider=provider,
                        subject=subject, email=email, created_at=now_ms, last_login_at=now_ms,
                    )
                )
        except IntegrityError:
            raise Conflict("identity already linked") from None

    async def touch(
        self, tenant_id: int, provider: str, subject: str, email: str | None, now_ms: int
    ) -> None:
        async with self._db.writer.begin() as conn:
            await conn.execute(
                update(external_identities)
                .where(
                    external_identities.c.tenant_id == tenant_id,
                    external_identities.c.provider == provider,
                    external_identities.c.subject == subject,
                )
                .values(email=email, last_login_at=now_ms)
            )


@dataclass(frozen=True, slots=True)
class OAuthClient:
    client_id: str
    tenant_id: int
    name: str
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    first_party: bool
    service_user_id: int | None
    created_at: int

    @property
    def public(self) -> bool:
        return self.secret_hash is None


@dataclass(frozen=True, slots=True)
class AuthCode:
    tenant_id: int
    client_id: str
    user_id: int
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    expires_at: int


def _client(row: RowMapping) -> OAuthClient:
    return OAuthClient(
        client_id=row["client_id"], tenant_id=row["tenant_id"], name=row["name"],
        secret_hash=row["secret_hash"], redirect_uris=tuple(row["redirect_uris"].split()),
        grant_types=tuple(row["grant_types"].split()), scopes=tuple(row["scopes"].split()),
        first_party=bool(row["first_party"]), service_user_id=row["service_user_id"],
        created_at=row["created_at"],
    )


class OAuthStore:
    """Registered clients and single-use authorization codes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_client(self, client: OAuthClient) -> OAuthClient:
        try:
            async with self._db.writer.begin() as conn:
                await conn.execute(
                    oauth_clients.insert().values(
                        client_id=client.client_id, tenant_id=client.tenant_id,
                        name=client.name, secret_hash=client.secret_hash,
                        redirect_uris=" ".join(client.redirect_uris),
                        grant_types=" ".join(client.grant_types),
                        scopes=" ".join(client.scopes), first_party=client.first_party,
                        service_user_id=client.service_user_id, created_at=client.created_at,
                    )
                )
        except IntegrityError:
            raise Conflict("client id already exists") from None
        return client

    async def client(self, client_id: str) -> OAuthClient | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(oauth_clients).where(oauth_clients.c.client_id == client_id)
                )
            ).mappings().first()
        return _client(row) if row else None

    async def list_clients(self, tenant_id: int) -> list[OAuthClient]:
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(oauth_clients)
                    .where(oauth_clients.c.tenant_id == tenant_id)
                    .order_by(oauth_clients.c.created_at, oauth_clients.c.client_id)
                )
            ).mappings().all()
        return [_client(r) for r in rows]

    async def save_code(self, code: str, data: AuthCode) -> None:
        async with self._db.writer.begin() as conn:
            await conn.execute(
                oauth_codes.insert().values(
                    code_hash=sha256_hex(code), tenant_id=data.tenant_id,
                    client_id=data.client_id, user_id=data.user_id,
                    redirect_uri=data.redirect_uri, scope=data.scope,
                    code_challenge=data.code_challenge,
                    code_challenge_method=data.code_challenge_method,
                    expires_at=data.expires_at,
                )
            )

    async def take_code(self, code: str, client_id: str, now_ms: int) -> AuthCode | None:
        """Consume a code: the first caller gets it (if unexpired and issued to
        ``client_id``), every later one gets None, whatever happens next."""
        async with self._db.writer.begin() as conn:
            row = (
                await conn.execute(
                    delete(oauth_codes)
                    .where(oauth_codes.c.code_hash == sha256_hex(code))
                    .returning(*oauth_codes.c)
                )
            ).mappings().first()
            # Expired codes of anyone are swept on the way.
            await conn.execute(delete(oauth_codes).where(oauth_codes.c.expires_at <= now_ms))
        if row is None or row["client_id"] != client_id or row["expires_at"] <= now_ms:
            return None
        return AuthCode(
            tenant_id=row["tenant_id"], client_id=row["client_id"], user_id=row["user_id"],
            redirect_uri=row["redirect_uri"], scope=row["scope"],
            code_challenge=row["code_challenge"],
            code_challenge_method=row["code_challenge_method"], expires_at=row["expires_at"],
        )

"""Token signing keys, kept in the database so every node verifies every token."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from parley.store.database import Database
from parley.store.tables import signing_keys

__all__ = ["KeyStore", "SigningKey"]


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes
    created_at: int
    retired_at: int | None


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def active(self) -> list[SigningKey]:
        """Unretired keys, newest first (the first one signs)."""
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(signing_keys)
                    .where(signing_keys.c.retired_at.is_(None))
                    .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
                )
            ).mappings().all()
        return [SigningKey(r["kid"], bytes(r["secret"]), r["created_at"], r["retired_at"])
                for r in rows]

    async def create(self, now_ms: int) -> SigningKey:
        key = SigningKey(secrets.token_hex(8), secrets.token_bytes(32), now_ms, None)
        async with self._db.writer.begin() as conn:
            await conn.execute(
                signing_keys.insert().values(
                    kid=key.kid, secret=key.secret, created_at=now_ms, retired_at=None
                )
            )
        return key

    async def ensure(self, now_ms: int) -> list[SigningKey]:
        """The active keys, creating the first one if there is none."""
        keys = await self.active()
        if not keys:
            await self.create(now_ms)
            keys = await self.active()
        return keys

    async def retire(self, kid: str, now_ms: int) -> None:
        async with self._db.writer.begin() as conn:
            await conn.execute(
                update(signing_keys).where(signing_keys.c.kid == kid).values(retired_at=now_ms)
            )

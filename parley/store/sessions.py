"""Login sessions, their refresh tokens, and redeemed one-time tickets.

A session is one login (one ``sid`` in every access token it issues).  Refresh
tokens are stored only as SHA-256 digests; each may be redeemed once.  A
refresh token redeemed a second time means it leaked (or a client raced
itself): :meth:`SessionStore.rotate` then revokes the whole session, in the same
transaction, and reports it so the caller can close the session's sockets.

Every query that reads a user's sessions filters on ``tenant_id``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import RowMapping, delete, select, update
from sqlalchemy.exc import IntegrityError

from parley.store.database import Database
from parley.store.tables import auth_sessions, refresh_tokens, used_tickets

__all__ = ["AuthSession", "Rotation", "RotationOutcome", "SessionStore"]


@dataclass(frozen=True, slots=True)
class AuthSession:
    id: str
    tenant_id: int
    user_id: int
    device_id: str
    created_at: int
    last_used_at: int
    expires_at: int
    revoked_at: int | None


class RotationOutcome(enum.Enum):
    ROTATED = "rotated"
    """The token was fresh: it is now used and the new one is stored."""
    REUSED = "reused"
    """The token had been used before: the session is now revoked."""
    INVALID = "invalid"
    """Unknown token, or its session is revoked or expired: nothing changed."""


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: RotationOutcome
    session: AuthSession | None


def _session(row: RowMapping) -> AuthSession:
    return AuthSession(
        id=row["id"], tenant_id=row["tenant_id"], user_id=row["user_id"],
        device_id=row["device_id"], created_at=row["created_at"],
        last_used_at=row["last_used_at"], expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- sessions ----------------------------------------------------------------
    async def create(
        self, session_id: str, tenant_id: int, user_id: int, device_id: str,
        refresh_hash: str, now_ms: int, expires_at: int,
    ) -> AuthSession:
        """Store a new session and its first refresh token (one transaction)."""
        async with self._db.writer.begin() as conn:
            await conn.execute(auth_sessions.insert().values(
                id=session_id, tenant_id=tenant_id, user_id=user_id, device_id=device_id,
                created_at=now_ms, last_used_at=now_ms, expires_at=expires_at,
                revoked_at=None,
            ))
            await conn.execute(refresh_tokens.insert().values(
                token_hash=refresh_hash, session_id=session_id, created_at=now_ms,
                used_at=None,
            ))
        return AuthSession(session_id, tenant_id, user_id, device_id, now_ms, now_ms,
                           expires_at, None)

    async def rotate(
        self, old_hash: str, new_hash: str, now_ms: int, expires_at: int
    ) -> Rotation:
        """Redeem the refresh token ``old_hash`` for ``new_hash``.

        ROTATED: ``old_hash`` is marked used, ``new_hash`` stored, the session's
        expiry moved to ``expires_at``.  REUSED: ``old_hash`` was used already; the
        session is revoked now.  INVALID: unknown token, revoked or expired session.
        Two concurrent redemptions of one token: one rotates, the other is REUSED.
        """
        async with self._db.writer.begin() as conn:
            row = (await conn.execute(
                select(refresh_tokens.c.used_at, auth_sessions)
                .join(auth_sessions, auth_sessions.c.id == refresh_tokens.c.session_id)
                .where(refresh_tokens.c.token_hash == old_hash)
            )).mappings().first()
            if row is None:
                return Rotation(RotationOutcome.INVALID, None)
            session = _session(row)
            if session.revoked_at is not None or session.expires_at <= now_ms:
                return Rotation(RotationOutcome.INVALID, session)
            claimed = (await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.token_hash == old_hash, refresh_tokens.c.used_at.is_(None))
                .values(used_at=now_ms)
            )).rowcount
            if row["used_at"] is not None or claimed != 1:
                await conn.execute(
                    update(auth_sessions).where(auth_sessions.c.id == session.id)
                    .values(revoked_at=now_ms)
                )
                return Rotation(RotationOutcome.REUSED, session)
            await conn.execute(refresh_tokens.insert().values(
                token_hash=new_hash, session_id=session.id, created_at=now_ms, used_at=None,
            ))
            await conn.execute(
                update(auth_sessions).where(auth_sessions.c.id == session.id)
                .values(last_used_at=now_ms, expires_at=expires_at)
            )
        return Rotation(RotationOutcome.ROTATED, session)

    async def get(self, tenant_id: int, session_id: str) -> AuthSession | None:
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(
                select(auth_sessions).where(
                    auth_sessions.c.tenant_id == tenant_id, auth_sessions.c.id == session_id
                )
            )).mappings().first()
        return _session(row) if row else None

    async def active(self, tenant_id: int, user_id: int, now_ms: int) -> list[AuthSession]:
        """The user's unrevoked, unexpired sessions, oldest first."""
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(
                select(auth_sessions).where(
                    auth_sessions.c.tenant_id == tenant_id,
                    auth_sessions.c.user_id == user_id,
                    auth_sessions.c.revoked_at.is_(None),
                    auth_sessions.c.expires_at > now_ms,
                ).order_by(auth_sessions.c.created_at, auth_sessions.c.id)
            )).mappings().all()
        return [_session(r) for r in rows]

    async def revoke(
        self, tenant_id: int, user_id: int, now_ms: int, *, session_id: str | None = None,
        device_id: str | None = None, keep: str | None = None,
    ) -> list[str]:
        """Revoke the user's unrevoked sessions (all, one, those of one device, or all
        but ``keep``); returns the ids revoked now."""
        cond = [
            auth_sessions.c.tenant_id == tenant_id, auth_sessions.c.user_id == user_id,
            auth_sessions.c.revoked_at.is_(None),
        ]
        if session_id is not None:
            cond.append(auth_sessions.c.id == session_id)
        if device_id is not None:
            cond.append(auth_sessions.c.device_id == device_id)
        if keep is not None:
            cond.append(auth_sessions.c.id != keep)
        async with self._db.writer.begin() as conn:
            ids = [str(r[0]) for r in await conn.execute(select(auth_sessions.c.id).where(*cond))]
            if ids:
                await conn.execute(
                    update(auth_sessions)
                    .where(auth_sessions.c.id.in_(ids), auth_sessions.c.revoked_at.is_(None))
                    .values(revoked_at=now_ms)
                )
        return ids

    async def revoked_since(self, since_ms: int) -> list[tuple[str, int]]:
        """(session id, revoked_at) of every session revoked at or after ``since_ms``."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(auth_sessions.c.id, auth_sessions.c.revoked_at)
                .where(auth_sessions.c.revoked_at >= since_ms)
            )
            return [(str(r[0]), int(r[1])) for r in rows]

    # -- one-time tickets -----------------------------------------------------------
    async def redeem_ticket(self, jti: str, expires_at: int) -> bool:
        """Record ticket ``jti`` as used; False if it was used before."""
        try:
            async with self._db.writer.begin() as conn:
                await conn.execute(used_tickets.insert().values(jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def purge_tickets(self, now_ms: int) -> int:
        """Forget redeemed tickets that have expired (they are refused by time anyway)."""
        async with self._db.writer.begin() as conn:
            result = await conn.execute(
                delete(used_tickets).where(used_tickets.c.expires_at <= now_ms)
            )
        return int(result.rowcount or 0)

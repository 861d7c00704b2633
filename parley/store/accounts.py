"""Tenants, users, credentials and devices.

Every method that reads or writes tenant-owned rows takes ``tenant_id`` and
filters on it; a row of another tenant is indistinguishable from a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import RowMapping, func, select, update
from sqlalchemy.exc import IntegrityError

from parley.errors import Conflict, NotFound
from parley.store.database import Database
from parley.store.sql import insert_for
from parley.store.tables import credentials, devices, tenants, users

__all__ = ["UNSET", "AccountStore", "Device", "Tenant", "User", "UserRole"]

UserRole = str  # "user" | "tenant_admin" | "system_admin"
ROLES = ("user", "tenant_admin", "system_admin")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    slug: str
    name: str
    created_at: int
    allow_registration: bool | None = None
    """Whether anyone may register in this tenant; None: the node's setting."""
    stranger_messages: bool | None = None
    """Whether non-contacts may message each other directly; None: the node's setting."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    tenant_id: int
    username: str
    display_name: str
    role: UserRole
    status: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Device:
    user_id: int
    device_id: str
    platform: str
    created_at: int
    last_seen_at: int


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"], tenant_id=row["tenant_id"], username=row["username"],
        display_name=row["display_name"], role=row["role"], status=row["status"],
        created_at=row["created_at"],
    )


def _tenant(row: RowMapping) -> Tenant:
    return Tenant(
        id=row["id"], slug=row["slug"], name=row["name"], created_at=row["created_at"],
        allow_registration=_opt_bool(row["allow_registration"]),
        stranger_messages=_opt_bool(row["stranger_messages"]),
    )


def _opt_bool(value: object) -> bool | None:
    return None if value is None else bool(value)


class _Unset:
    """The type of ``UNSET``: "leave this field as it is"."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


class AccountStore:
    """Repository for accounts; stateless apart from the database it was given."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    # -- tenants ---------------------------------------------------------------
    async def create_tenant(self, slug: str, name: str, now_ms: int) -> Tenant:
        try:
            async with self._db.writer.begin() as conn:
                row = (
                    await conn.execute(
                        tenants.insert()
                        .values(slug=slug, name=name, created_at=now_ms)
                        .returning(*tenants.c)
                    )
                ).mappings().one()
        except IntegrityError:
            raise Conflict(f"tenant {slug!r} already exists") from None
        return _tenant(row)

    async def tenant_by_slug(self, slug: str) -> Tenant | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(select(tenants).where(tenants.c.slug == slug))
            ).mappings().first()
        return _tenant(row) if row else None

    async def tenant(self, tenant_id: int) -> Tenant | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(select(tenants).where(tenants.c.id == tenant_id))
            ).mappings().first()
        return _tenant(row) if row else None

    async def set_tenant_policy(
        self,
        tenant_id: int,
        *,
        allow_registration: bool | _Unset | None = UNSET,
        stranger_messages: bool | _Unset | None = UNSET,
    ) -> Tenant:
        """Change a tenant's policies; only the fields given change (None: back to the
        node's setting).  Returns the tenant as stored; raises NotFound for an unknown one."""
        values: dict[str, bool | None] = {}
        if not isinstance(allow_registration, _Unset):
            values["allow_registration"] = allow_registration
        if not isinstance(stranger_messages, _Unset):
            values["stranger_messages"] = stranger_messages
        async with self._db.writer.begin() as conn:
            if values:
                await conn.execute(
                    update(tenants).where(tenants.c.id == tenant_id).values(**values)
                )
            row = (
                await conn.execute(select(tenants).where(tenants.c.id == tenant_id))
            ).mappings().first()
        if row is None:
            raise NotFound("no such tenant")
        return _tenant(row)

    # -- users -----------------------------------------------------------------
    async def create_user(
        self,
        tenant_id: int,
        username: str,
        now_ms: int,
        *,
        display_name: str | None = None,
        role: UserRole = "user",
        password_hash: str | None = None,
    ) -> User:
        """Create a user (and its password credential, in the same transaction).

        Raises Conflict when the username is taken in this tenant.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        try:
            async with self._db.writer.begin() as conn:
                row = (
                    await conn.execute(
                        users.insert()
                        .values(
                            tenant_id=tenant_id, username=username,
                            display_name=display_name or username, role=role,
                            status="active", created_at=now_ms,
                        )
                        .returning(*users.c)
                    )
                ).mappings().one()
                if password_hash is not None:
                    await conn.execute(
                        credentials.insert().values(
                            tenant_id=tenant_id, user_id=row["id"], kind="password",
                            secret=password_hash, updated_at=now_ms,
                        )
                    )
        except IntegrityError:
            raise Conflict(f"user {username!r} already exists") from None
        return _user(row)

    async def user(self, tenant_id: int, user_id: int) -> User | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id)
                )
            ).mappings().first()
        return _user(row) if row else None

    async def user_by_name(self, tenant_id: int, username: str) -> User | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(users).where(
                        users.c.tenant_id == tenant_id, users.c.username == username
                    )
                )
            ).mappings().first()
        return _user(row) if row else None

    async def list_users(
        self, tenant_id: int, *, after_id: int = 0, limit: int = 100
    ) -> list[User]:
        """Users of a tenant in id order, ``limit`` at most, after ``after_id`` (a cursor)."""
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(users)
                    .where(users.c.tenant_id == tenant_id, users.c.id > after_id)
                    .order_by(users.c.id)
                    .limit(limit)
                )
            ).mappings().all()
        return [_user(r) for r in rows]

    async def count_users(self, tenant_id: int) -> int:
        async with self._db.reader.connect() as conn:
            n = await conn.scalar(
                select(func.count()).select_from(users).where(users.c.tenant_id == tenant_id)
            )
        return int(n or 0)

    # -- credentials -----------------------------------------------------------
    async def password_hash(self, tenant_id: int, user_id: int) -> str | None:
        async with self._db.reader.connect() as conn:
            secret = await conn.scalar(
                select(credentials.c.secret).where(
                    credentials.c.tenant_id == tenant_id,
                    credentials.c.user_id == user_id,
                    credentials.c.kind == "password",
                )
            )
        return str(secret) if secret is not None else None

    async def set_password_hash(
        self, tenant_id: int, user_id: int, password_hash: str, now_ms: int
    ) -> None:
        """Set (or replace) a user's password hash.  Raises NotFound for an unknown user."""
        async with self._db.writer.begin() as conn:
            exists = await conn.scalar(
                select(users.c.id).where(users.c.tenant_id == tenant_id, users.c.id == user_id)
            )
            if exists is None:
                raise NotFound("no such user")
            stmt = insert_for(self._db, credentials).values(
                tenant_id=tenant_id, user_id=user_id, kind="password",
                secret=password_hash, updated_at=now_ms,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[credentials.c.user_id, credentials.c.kind],
                    set_={"secret": password_hash, "updated_at": now_ms},
                )
            )

    async def set_status(self, tenant_id: int, user_id: int, status: str) -> None:
        async with self._db.writer.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.tenant_id == tenant_id, users.c.id == user_id)
                .values(status=status)
            )
            if result.rowcount == 0:
                raise NotFound("no such user")

    # -- devices ---------------------------------------------------------------
    async def touch_device(
        self, tenant_id: int, user_id: int, device_id: str, now_ms: int, platform: str = ""
    ) -> None:
        """Record that a device connected now (creating it on first sight)."""
        async with self._db.writer.begin() as conn:
            stmt = insert_for(self._db, devices).values(
                tenant_id=tenant_id, user_id=user_id, device_id=device_id,
                platform=platform, created_at=now_ms, last_seen_at=now_ms,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[devices.c.user_id, devices.c.device_id],
                    set_={"last_seen_at": now_ms},
                )
            )

    async def list_devices(self, tenant_id: int, user_id: int) -> list[Device]:
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(devices)
                    .where(devices.c.tenant_id == tenant_id, devices.c.user_id == user_id)
                    .order_by(devices.c.device_id)
                )
            ).mappings().all()
        return [
            Device(
                user_id=r["user_id"], device_id=r["device_id"], platform=r["platform"],
                created_at=r["created_at"], last_seen_at=r["last_seen_at"],
            )
            for r in rows
        ]

"""Local accounts: passwords hashed with argon2id in the ``credentials`` table.

``LocalPasswordProvider`` is the first link of the ``PasswordLogin`` chain.  A
username it does not know is still checked against a dummy hash made with the
same parameters, so "no such user" takes as long as "wrong password".
"""

from __future__ import annotations

import secrets

from parley.auth.passwords import PasswordHasher
from parley.clock import Clock
from parley.errors import BadRequest, Unauthenticated
from parley.store.accounts import AccountStore, User

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "LocalPasswordProvider",
    "check_password_policy",
]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing cost is bounded by the input length too


def check_password_policy(username: str, password: str) -> None:
    """BadRequest if ``password`` is too short, too long or the username itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password must have at most {MAX_PASSWORD_LENGTH} characters")
    if password.casefold() == username.casefold():
        raise BadRequest("password must not be the username")


class LocalPasswordProvider:
    """Users whose password hash Parley keeps."""

    name = "local"

    def __init__(
        self, accounts: AccountStore, hasher: PasswordHasher, clock: Clock, dummy_hash: str
    ) -> None:
        self._accounts = accounts
        self._hasher = hasher
        self._clock = clock
        self._dummy = dummy_hash

    @classmethod
    async def create(
        cls, accounts: AccountStore, hasher: PasswordHasher, clock: Clock
    ) -> LocalPasswordProvider:
        """Build one, hashing the dummy password once (off the event loop)."""
        return cls(accounts, hasher, clock, await hasher.ahash(secrets.token_urlsafe(16)))

    async def authenticate(self, tenant_id: int, username: str, password: str) -> User | None:
        """The user, None if unknown here (or without a local password), Unauthenticated
        if the password is wrong or the account disabled."""
        user = await self._accounts.user_by_name(tenant_id, username)
        stored = await self._accounts.password_hash(tenant_id, user.id) if user else None
        if user is None or stored is None:
            await self._hasher.averify(self._dummy, password)
            return None
        if not await self._hasher.averify(stored, password) or user.status != "active":
            raise Unauthenticated("invalid username or password")
        if self._hasher.needs_rehash(stored):
            await self.set_password(user, password)
        return user

    async def waste(self, password: str) -> None:
        """Spend the time of one password check (for a login that fails anyway)."""
        await self._hasher.averify(self._dummy, password)

    async def check(self, user: User, password: str) -> bool:
        """Whether ``password`` is the user's local password (False if it has none)."""
        stored = await self._accounts.password_hash(user.tenant_id, user.id)
        if stored is None:
            await self._hasher.averify(self._dummy, password)
            return False
        return await self._hasher.averify(stored, password)

    async def set_password(self, user: User, password: str) -> None:
        digest = await self._hasher.ahash(password)
        await self._accounts.set_password_hash(
            user.tenant_id, user.id, digest, self._clock.now_ms()
        )

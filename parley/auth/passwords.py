"""Password hashing with argon2id (argon2-cffi).

Parameters default above OWASP's minimum (m=19 MiB, t=2, p=1) and are settings.
Hashing takes tens of milliseconds on purpose: async callers use the ``a*``
methods, which run it off the event loop.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["PasswordHasher"]


class PasswordHasher:
    def __init__(
        self, *, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4
    ) -> None:
        self._ph = _Argon2(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """True if ``password`` matches; False for a mismatch or a malformed hash."""
        try:
            return self._ph.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._ph.check_needs_rehash(password_hash)

    async def ahash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash, password)

    async def averify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self.verify, password_hash, password)

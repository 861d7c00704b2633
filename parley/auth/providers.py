"""The identity-provider seam: who may log in with a username and a password.

``PasswordLogin`` tries each configured provider in order (local accounts,
then LDAP, ...).  A provider answers with the Parley user it vouches for
(creating or updating it just in time when the directory is the source of
truth), ``None`` when it does not know the username, or raises
``Unauthenticated`` when it knows the user but the password is wrong.
OIDC single sign-on fits beside these as a provider of a different shape
(redirect-based), not through this password seam.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from parley.errors import Unauthenticated
from parley.store.accounts import User

__all__ = ["INVALID_CREDENTIALS", "PasswordLogin", "PasswordProvider"]

INVALID_CREDENTIALS = "invalid username or password"


class PasswordProvider(Protocol):
    name: str

    async def authenticate(self, tenant_id: int, username: str, password: str) -> User | None:
        """The user for these credentials, None if unknown here; Unauthenticated if
        the password is wrong.  Must take about the same time whether or not the
        user exists (no enumeration by timing)."""
        ...


class PasswordLogin:
    """The chain of password providers, tried in order until one knows the user.

    ``providers`` is a plain list: the composition root appends providers
    (LDAP, ...) after the local one.  Every refusal is the same
    ``Unauthenticated("invalid username or password")`` whatever the reason
    (unknown tenant or user, wrong password, disabled account), so the answer
    never tells which usernames exist.
    """

    def __init__(
        self, providers: list[PasswordProvider], *,
        waste: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.providers = providers
        self._waste = waste

    async def authenticate(self, tenant_id: int | None, username: str, password: str) -> User:
        """The user these credentials belong to; Unauthenticated otherwise.
        ``tenant_id`` None (an unknown tenant) costs a dummy hash check, then fails."""
        if tenant_id is None:
            if self._waste is not None:
                await self._waste(password)
            raise Unauthenticated(INVALID_CREDENTIALS)
        for provider in self.providers:
            try:
                user = await provider.authenticate(tenant_id, username, password)
            except Unauthenticated:
                raise Unauthenticated(INVALID_CREDENTIALS) from None
            if user is not None:
                if user.status != "active" or user.tenant_id != tenant_id:
                    raise Unauthenticated(INVALID_CREDENTIALS)
                return user
        raise Unauthenticated(INVALID_CREDENTIALS)

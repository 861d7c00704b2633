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

from typing import Protocol

from parley.store.accounts import User

__all__ = ["PasswordProvider"]


class PasswordProvider(Protocol):
    name: str

    async def authenticate(self, tenant_id: int, username: str, password: str) -> User | None:
        """The user for these credentials, None if unknown here; Unauthenticated if
        the password is wrong.  Must take about the same time whether or not the
        user exists (no enumeration by timing)."""
        ...

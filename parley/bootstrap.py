"""First start: the default tenant and the first administrator.

Runs on every start and does nothing once the tenant exists, so a second start
reuses the data.  The administrator's password comes from the settings
(``PARLEY_ADMIN_PASSWORD``) or is generated and shown once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from parley.auth.passwords import PasswordHasher
from parley.clock import Clock
from parley.config import Settings
from parley.store.accounts import AccountStore, Tenant

__all__ = ["BootstrapResult", "ensure_default_tenant"]


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    tenant: Tenant
    created: bool
    admin_username: str = ""
    generated_password: str | None = None


async def ensure_default_tenant(
    settings: Settings, accounts: AccountStore, hasher: PasswordHasher, clock: Clock
) -> BootstrapResult:
    existing = await accounts.tenant_by_slug(settings.tenant)
    if existing is not None:
        return BootstrapResult(tenant=existing, created=False)
    now = clock.now_ms()
    tenant = await accounts.create_tenant(settings.tenant, settings.tenant.capitalize(), now)
    given = settings.admin_password.get_secret_value() if settings.admin_password else ""
    password = given or secrets.token_urlsafe(12)
    await accounts.create_user(
        tenant.id, settings.admin_username, now, display_name="Administrator",
        role="system_admin", password_hash=await hasher.ahash(password),
    )
    return BootstrapResult(
        tenant=tenant, created=True, admin_username=settings.admin_username,
        generated_password=None if given else password,
    )

"""HTTP routes: the caller's tenant and its policies (``/tenant``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from parley.api.deps import (
    ApiServices,
    Caller,
    CurrentCaller,
    Services,
    require_login_token,
    require_scope,
)
from parley.api.routes._common import ERRORS, STRICT_QUERY
from parley.api.schemas import TenantPolicies, TenantPublic, TenantUpdate
from parley.auth.scopes import PROFILE
from parley.errors import Forbidden, NotFound, Unauthenticated
from parley.store.accounts import UNSET, Tenant

__all__ = ["router"]

router = APIRouter(prefix="/tenant", tags=["tenant"], responses=ERRORS, dependencies=STRICT_QUERY)

_ADMIN_ROLES = ("tenant_admin", "system_admin")


def _public(services: ApiServices, t: Tenant) -> TenantPublic:
    node = services.settings
    return TenantPublic(
        slug=t.slug,
        name=t.name,
        allow_registration=(
            node.allow_registration if t.allow_registration is None else t.allow_registration
        ),
        stranger_messages=(
            node.stranger_messages if t.stranger_messages is None else t.stranger_messages
        ),
        own=TenantPolicies(
            allow_registration=t.allow_registration, stranger_messages=t.stranger_messages
        ),
    )


async def _tenant(services: ApiServices, caller: Caller) -> Tenant:
    tenant = await services.accounts.tenant(caller.tenant_id)
    if tenant is None:
        raise NotFound("no such tenant")
    return tenant


@router.get(
    "", summary="The caller's tenant and the policies in effect for it.",
    dependencies=[Depends(require_scope(PROFILE))],
)
async def get_tenant(caller: CurrentCaller, services: Services) -> TenantPublic:
    return _public(services, await _tenant(services, caller))


@router.patch(
    "",
    dependencies=[Depends(require_login_token)],
    summary="Change the tenant's registration and stranger-message policies (admins only).",
    description="For `tenant_admin` and `system_admin` users; 403 for anyone else.  Absent "
    "fields stay as they are; `null` makes a field follow the node's setting again.",
)
async def update_tenant(
    body: TenantUpdate, caller: CurrentCaller, services: Services
) -> TenantPublic:
    user = await services.accounts.user(caller.tenant_id, caller.user_id)
    if user is None or user.status != "active":
        raise Unauthenticated("invalid token")
    if user.role not in _ADMIN_ROLES:
        raise Forbidden("only tenant administrators may change the tenant's policies")
    given = body.model_fields_set
    tenant = await services.accounts.set_tenant_policy(
        caller.tenant_id,
        allow_registration=(
            body.allow_registration if "allow_registration" in given else UNSET
        ),
        stranger_messages=body.stranger_messages if "stranger_messages" in given else UNSET,
    )
    if services.messaging.policy is not None:
        services.messaging.policy.invalidate_tenant(caller.tenant_id)
    return _public(services, tenant)

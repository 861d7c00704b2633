"""HTTP routes: users and profiles (``/users``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from parley.api.deps import CurrentCaller, require_scope
from parley.api.routes._common import ERRORS, STRICT_QUERY, Social, user_public, visible_profile
from parley.api.schemas import IdPath, Limit, OptionalCursor, Page, UserPublic, UserUpdate
from parley.auth.scopes import PROFILE

__all__ = ["router"]

router = APIRouter(
    prefix="/users",
    tags=["users"],
    responses=ERRORS,
    dependencies=[*STRICT_QUERY, Depends(require_scope(PROFILE))],
)


@router.get("/me", summary="The caller's own profile.")
async def me(caller: CurrentCaller, social: Social) -> UserPublic:
    return user_public(await visible_profile(social, caller, caller.user_id))


@router.patch("/me", summary="Change the caller's display name or status text.")
async def update_me(body: UserUpdate, caller: CurrentCaller, social: Social) -> UserPublic:
    p = await social.update_profile(
        caller.tenant_id,
        caller.user_id,
        display_name=body.display_name,
        status_text=body.status_text,
    )
    return user_public(p)


@router.get(
    "",
    summary="Search the users the caller may see.",
    description="Users of the caller's tenant whose username or display name contains `q` "
    "(case-insensitive; empty: everyone), by id; users who blocked the caller are left out.",
)
async def search(
    caller: CurrentCaller,
    social: Social,
    q: Annotated[str, Query(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$", examples=["ali"])] = "",
    after: OptionalCursor = None,
    limit: Limit = 20,
) -> Page[UserPublic]:
    rows = await social.search_users(
        caller.tenant_id, caller.user_id, q, after=after or 0, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=[user_public(p) for p in rows], next=rows[-1].id if more else None)


@router.get("/{user_id}", summary="One user's profile, if visible to the caller.")
async def get_user(user_id: IdPath, caller: CurrentCaller, social: Social) -> UserPublic:
    return user_public(await visible_profile(social, caller, user_id))

"""HTTP routes: contacts (friend requests) and blocks (``/contacts``, ``/blocks``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from parley.api.deps import CurrentCaller, Services, require_scope
from parley.api.routes._common import ERRORS, STRICT_QUERY, Social, invalidate_pair, visible_profile
from parley.api.schemas import (
    BlockPublic,
    ContactPublic,
    ContactRequestCreate,
    IdPath,
    Limit,
    OptionalCursor,
    Page,
)
from parley.auth.scopes import CONTACTS
from parley.errors import Conflict, NotFound

__all__ = ["router"]

router = APIRouter(
    tags=["contacts"],
    responses=ERRORS,
    dependencies=[*STRICT_QUERY, Depends(require_scope(CONTACTS))],
)


def _not_self(caller_id: int, user_id: int) -> None:
    if caller_id == user_id:
        raise Conflict("that is yourself")


@router.get("/contacts", summary="The caller's contacts, or pending requests.")
async def list_contacts(
    caller: CurrentCaller,
    social: Social,
    state: Annotated[
        Literal["accepted", "incoming", "requested"],
        Query(description="accepted: contacts; incoming/requested: pending requests."),
    ] = "accepted",
    after: OptionalCursor = None,
    limit: Limit = 50,
) -> Page[ContactPublic]:
    rows = await social.list_contacts(
        caller.tenant_id, caller.user_id, (state,), after=after or 0, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[ContactPublic(user_id=c.peer_id, state=c.state, since=c.updated_at) for c in rows],
        next=rows[-1].peer_id if more else None,
    )


@router.post(
    "/contacts/requests",
    summary="Ask a user to become a contact.",
    description="Answers the resulting state: `requested`, or `accepted` when that user had "
    "asked the caller already.",
)
async def request_contact(
    body: ContactRequestCreate, caller: CurrentCaller, services: Services, social: Social
) -> ContactPublic:
    _not_self(caller.user_id, body.user_id)
    await visible_profile(social, caller, body.user_id)
    now = services.clock.now_ms()
    state = await social.request_contact(caller.tenant_id, caller.user_id, body.user_id, now)
    invalidate_pair(services, caller.tenant_id, caller.user_id, body.user_id)
    return ContactPublic(user_id=body.user_id, state=state, since=now)


@router.post("/contacts/requests/{user_id}/accept", summary="Accept a contact request.")
async def accept_contact(
    user_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> ContactPublic:
    now = services.clock.now_ms()
    await social.accept_contact(caller.tenant_id, caller.user_id, user_id, now)
    invalidate_pair(services, caller.tenant_id, caller.user_id, user_id)
    return ContactPublic(user_id=user_id, state="accepted", since=now)


@router.post(
    "/contacts/requests/{user_id}/decline",
    status_code=204,
    response_class=Response,
    summary="Decline a contact request (or withdraw your own).",
)
async def decline_contact(user_id: IdPath, caller: CurrentCaller, social: Social) -> None:
    await social.decline_contact(caller.tenant_id, caller.user_id, user_id)


@router.delete(
    "/contacts/{user_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a contact.",
)
async def remove_contact(
    user_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> None:
    await social.remove_contact(caller.tenant_id, caller.user_id, user_id)
    invalidate_pair(services, caller.tenant_id, caller.user_id, user_id)


@router.get("/blocks", tags=["blocks"], summary="The users the caller blocked.")
async def list_blocks(
    caller: CurrentCaller,
    social: Social,
    after: OptionalCursor = None,
    limit: Limit = 50,
) -> Page[BlockPublic]:
    rows = await social.list_blocked(
        caller.tenant_id, caller.user_id, after=after or 0, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[BlockPublic(user_id=u, since=t) for u, t in rows],
        next=rows[-1][0] if more else None,
    )


@router.put(
    "/blocks/{user_id}",
    tags=["blocks"],
    status_code=204,
    response_class=Response,
    summary="Block a user: they can no longer message you nor see your presence.",
    description="Idempotent.  Also ends any contact relationship with that user.",
)
async def block(user_id: IdPath, caller: CurrentCaller, services: Services, social: Social) -> None:
    _not_self(caller.user_id, user_id)
    if await social.profile(caller.tenant_id, user_id) is None:
        raise NotFound("no such user")
    await social.block(caller.tenant_id, caller.user_id, user_id, services.clock.now_ms())
    invalidate_pair(services, caller.tenant_id, caller.user_id, user_id)


@router.delete(
    "/blocks/{user_id}",
    tags=["blocks"],
    status_code=204,
    response_class=Response,
    summary="Unblock a user.",
)
async def unblock(
    user_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> None:
    if not await social.unblock(caller.tenant_id, caller.user_id, user_id):
        raise NotFound("this user is not blocked")
    invalidate_pair(services, caller.tenant_id, caller.user_id, user_id)

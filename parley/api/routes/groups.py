"""HTTP routes: groups, their members and roles (``/groups``).

Roles: the ``owner`` (one per group) may do everything; ``admin``s may add
and remove plain members, mute them, and change the group's name, announcement
and all-muted switch; ``member``s may read, send (unless muted) and leave.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from parley.api.deps import Caller, CurrentCaller, Services, require_scope
from parley.api.routes._common import ERRORS, STRICT_QUERY, Social
from parley.api.schemas import (
    GroupCreate,
    GroupPublic,
    GroupUpdate,
    IdPath,
    Limit,
    MemberPublic,
    MembersAdd,
    MuteCreate,
    OptionalCursor,
    Page,
    RoleUpdate,
    TransferCreate,
)
from parley.auth.scopes import GROUPS
from parley.errors import Conflict, Forbidden, NotFound
from parley.store.conversations import Conversation
from parley.store.social import SocialStore

__all__ = ["router"]

router = APIRouter(
    prefix="/groups",
    tags=["groups"],
    responses=ERRORS,
    dependencies=[*STRICT_QUERY, Depends(require_scope(GROUPS))],
)

_MANAGERS = ("owner", "admin")


async def _group(services: Services, caller: Caller, gid: int) -> tuple[Conversation, str]:
    """The group and the caller's role; NotFound unless the caller is a member."""
    conv = await services.conversations.get(caller.tenant_id, gid)
    role = await services.conversations.member_role(caller.tenant_id, gid, caller.user_id)
    if conv is None or conv.kind != "group" or role is None:
        raise NotFound("no such group")
    return conv, role


async def _public(services: Services, social: SocialStore, caller: Caller, gid: int) -> GroupPublic:
    conv, role = await _group(services, caller, gid)
    state = await social.group_state(caller.tenant_id, gid)
    assert state is not None
    return GroupPublic(
        id=conv.id,
        name=conv.name,
        announcement=state.announcement,
        all_muted=state.all_muted,
        member_count=await social.count_members(caller.tenant_id, gid),
        your_role=role,
        created_at=conv.created_at,
    )


async def _target_role(services: Services, caller: Caller, gid: int, user_id: int) -> str:
    role = await services.conversations.member_role(caller.tenant_id, gid, user_id)
    if role is None:
        raise NotFound("not a member of this group")
    return role


def _may_manage(actor_role: str, target_role: str) -> None:
    """Owners manage everyone else; admins manage plain members only."""
    if actor_role == "owner" and target_role != "owner":
        return
    if actor_role == "admin" and target_role == "member":
        return
    raise Forbidden("your role does not allow this")


@router.post("", status_code=201, summary="Create a group; the caller becomes its owner.")
async def create_group(
    body: GroupCreate, caller: CurrentCaller, services: Services, social: Social
) -> GroupPublic:
    ids = sorted(set(body.member_ids) - {caller.user_id})
    limit = services.settings.group_member_limit
    if len(ids) + 1 > limit:
        raise Conflict(f"a group may have at most {limit} members")
    conv = await services.conversations.create_group(
        caller.tenant_id, caller.user_id, body.name, ids, services.clock.now_ms()
    )
    return await _public(services, social, caller, conv.id)


@router.get("/{group_id}", summary="A group the caller is a member of.")
async def get_group(
    group_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> GroupPublic:
    return await _public(services, social, caller, group_id)


@router.patch(
    "/{group_id}",
    summary="Change name, announcement or the all-muted switch (owner/admins).",
)
async def update_group(
    group_id: IdPath,
    body: GroupUpdate,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> GroupPublic:
    _, role = await _group(services, caller, group_id)
    if role not in _MANAGERS:
        raise Forbidden("only the owner and admins may change the group")
    await social.update_group(
        caller.tenant_id,
        group_id,
        name=body.name,
        announcement=body.announcement,
        all_muted=body.all_muted,
    )
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await _public(services, social, caller, group_id)


@router.delete(
    "/{group_id}",
    status_code=204,
    response_class=Response,
    summary="Dissolve the group (owner): every member is removed; nobody can send any more.",
)
async def dissolve(
    group_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> None:
    _, role = await _group(services, caller, group_id)
    if role != "owner":
        raise Forbidden("only the owner may dissolve the group")
    await social.dissolve(caller.tenant_id, group_id, services.clock.now_ms())
    services.messaging.members_changed(caller.tenant_id, group_id)


@router.get("/{group_id}/members", summary="The group's members, by user id.")
async def list_members(
    group_id: IdPath,
    caller: CurrentCaller,
    services: Services,
    social: Social,
    after: OptionalCursor = None,
    limit: Limit = 100,
) -> Page[MemberPublic]:
    await _group(services, caller, group_id)
    rows = await social.list_members(caller.tenant_id, group_id, after=after or 0, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[
            MemberPublic(
                user_id=m.user_id,
                role=m.role,
                joined_at=m.joined_at,
                muted_until=m.send_muted_until,
            )
            for m in rows
        ],
        next=rows[-1].user_id if more else None,
    )


@router.post(
    "/{group_id}/members",
    summary="Add (invite) users to the group (owner/admins).",
    description="Idempotent: users who are members already are left as they are.  Answers "
    "the group's first page of members.",
)
async def add_members(
    group_id: IdPath,
    body: MembersAdd,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> Page[MemberPublic]:
    _, role = await _group(services, caller, group_id)
    if role not in _MANAGERS:
        raise Forbidden("only the owner and admins may add members")
    limit = services.settings.group_member_limit
    count = await social.count_members(caller.tenant_id, group_id)
    if count + len(set(body.user_ids)) > limit:
        current = set(await services.conversations.member_ids(caller.tenant_id, group_id))
        if len(current | set(body.user_ids)) > limit:
            raise Conflict(f"a group may have at most {limit} members")
    await services.conversations.add_members(
        caller.tenant_id, group_id, sorted(set(body.user_ids)), services.clock.now_ms()
    )
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await list_members(group_id, caller, services, social, None, 100)


@router.delete(
    "/{group_id}/members/{user_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a member (owner: anyone else; admins: plain members).",
)
async def remove_member(
    group_id: IdPath, user_id: IdPath, caller: CurrentCaller, services: Services
) -> None:
    _, role = await _group(services, caller, group_id)
    if user_id == caller.user_id:
        raise Conflict("use POST /groups/{id}/leave to leave a group")
    _may_manage(role, await _target_role(services, caller, group_id, user_id))
    await services.conversations.remove_member(caller.tenant_id, group_id, user_id)
    services.messaging.members_changed(caller.tenant_id, group_id)


@router.post(
    "/{group_id}/leave",
    status_code=204,
    response_class=Response,
    summary="Leave the group (the owner must transfer ownership first).",
)
async def leave(group_id: IdPath, caller: CurrentCaller, services: Services) -> None:
    _, role = await _group(services, caller, group_id)
    if role == "owner":
        raise Conflict("the owner must transfer ownership (or dissolve the group) first")
    await services.conversations.remove_member(caller.tenant_id, group_id, caller.user_id)
    services.messaging.members_changed(caller.tenant_id, group_id)


@router.put(
    "/{group_id}/members/{user_id}/role",
    summary="Make a member admin or plain member (owner).",
)
async def set_role(
    group_id: IdPath,
    user_id: IdPath,
    body: RoleUpdate,
    caller: CurrentCaller,
    services: Services,
) -> MemberPublic:
    _, role = await _group(services, caller, group_id)
    if role != "owner":
        raise Forbidden("only the owner may change roles")
    target = await _target_role(services, caller, group_id, user_id)
    if target == "owner":
        raise Conflict("use POST /groups/{id}/transfer to change the owner")
    await services.conversations.set_role(caller.tenant_id, group_id, user_id, body.role)
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await _member(services, caller, group_id, user_id)


async def _member(services: Services, caller: Caller, gid: int, user_id: int) -> MemberPublic:
    assert services.messaging.policy is not None
    rows = await services.messaging.policy.social.list_members(
        caller.tenant_id, gid, after=user_id - 1, limit=1
    )
    if not rows or rows[0].user_id != user_id:
        raise NotFound("not a member of this group")
    m = rows[0]
    return MemberPublic(
        user_id=m.user_id, role=m.role, joined_at=m.joined_at, muted_until=m.send_muted_until
    )


@router.put(
    "/{group_id}/members/{user_id}/mute",
    summary="Mute a member: they may not send for `duration_s` (owner; admins: plain members).",
)
async def mute_member(
    group_id: IdPath,
    user_id: IdPath,
    body: MuteCreate,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> MemberPublic:
    _, role = await _group(services, caller, group_id)
    _may_manage(role, await _target_role(services, caller, group_id, user_id))
    until = services.clock.now_ms() + body.duration_s * 1000
    await social.set_send_muted(caller.tenant_id, group_id, user_id, until)
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await _member(services, caller, group_id, user_id)


@router.delete(
    "/{group_id}/members/{user_id}/mute",
    summary="Unmute a member.",
)
async def unmute_member(
    group_id: IdPath,
    user_id: IdPath,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> MemberPublic:
    _, role = await _group(services, caller, group_id)
    _may_manage(role, await _target_role(services, caller, group_id, user_id))
    await social.set_send_muted(caller.tenant_id, group_id, user_id, 0)
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await _member(services, caller, group_id, user_id)


@router.post(
    "/{group_id}/transfer",
    summary="Transfer ownership to another member (owner).",
    description="The new owner gets role `owner`; the previous owner becomes an `admin`.",
)
async def transfer(
    group_id: IdPath,
    body: TransferCreate,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> GroupPublic:
    _, role = await _group(services, caller, group_id)
    if role != "owner":
        raise Forbidden("only the owner may transfer ownership")
    if body.user_id == caller.user_id:
        raise Conflict("you own this group already")
    await _target_role(services, caller, group_id, body.user_id)
    await services.conversations.set_role(caller.tenant_id, group_id, body.user_id, "owner")
    await services.conversations.set_role(caller.tenant_id, group_id, caller.user_id, "admin")
    services.messaging.members_changed(caller.tenant_id, group_id)
    return await _public(services, social, caller, group_id)

"""What the resource routers share: documented error responses, the social
store dependency, visibility and page helpers."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import Depends, Request
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError

from parley.api.deps import ApiServices, Caller, Services
from parley.api.errors import ERROR_RESPONSES
from parley.api.schemas import MessagePublic, UserPublic
from parley.errors import NotFound
from parley.store.messages import StoredMessage
from parley.store.social import Profile, SocialStore

__all__ = [
    "ERRORS",
    "STRICT_QUERY",
    "Social",
    "message_public",
    "user_public",
    "visible_profile",
]

ERRORS = ERROR_RESPONSES


def reject_unknown_query(request: Request) -> None:
    """422 for query parameters the operation does not declare (a typo such as
    ``?limt=`` would otherwise be silently ignored)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {p.alias for p in _query_params(dependant)}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", unknown[0]),
                    "msg": "unknown query parameter",
                    "type": "extra",
                }
            ]
        )


def _query_params(dependant: Dependant) -> list[ModelField]:
    out = list(dependant.query_params)
    for sub in dependant.dependencies:
        out.extend(_query_params(sub))
    return out


STRICT_QUERY = [Depends(reject_unknown_query)]


def get_social(services: Services) -> SocialStore:
    policy = services.messaging.policy
    return policy.social if policy is not None else SocialStore(services.db)


Social = Annotated[SocialStore, Depends(get_social)]


def user_public(p: Profile) -> UserPublic:
    return UserPublic(
        id=p.id,
        username=p.username,
        display_name=p.display_name,
        status_text=p.status_text,
        created_at=p.created_at,
    )


async def visible_profile(social: SocialStore, caller: Caller, user_id: int) -> Profile:
    """The user's profile if the caller may see it (same tenant, not blocked by
    them); NotFound otherwise, the same answer as for a missing user."""
    profile = await social.profile(caller.tenant_id, user_id)
    if profile is None or (
        user_id != caller.user_id
        and await social.is_blocked(caller.tenant_id, user_id, caller.user_id)
    ):
        raise NotFound("no such user")
    return profile


def message_public(m: StoredMessage) -> MessagePublic:
    body: dict[str, Any] = {}
    if m.body and not m.recalled:
        decoded = msgspec.json.decode(m.body)
        if isinstance(decoded, dict):
            body = decoded
    return MessagePublic(
        conv=m.conversation_id,
        seq=m.seq,
        mid=m.msg_id,
        sender=m.sender_id,
        kind=m.kind,
        body=body,
        ts=m.created_at,
        recalled=m.recalled,
    )


def invalidate_pair(services: ApiServices, tenant_id: int, a: int, b: int) -> None:
    if services.messaging.policy is not None:
        services.messaging.policy.invalidate_pair(tenant_id, a, b)

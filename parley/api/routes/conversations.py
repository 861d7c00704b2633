"""HTTP routes: conversations and their messages (``/conversations``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, Path

from parley.api.deps import Caller, CurrentCaller, Services, require_scope
from parley.api.routes._common import ERRORS, STRICT_QUERY, Social, message_public, visible_profile
from parley.api.schemas import (
    ConversationPublic,
    ConversationUpdate,
    DirectCreate,
    IdPath,
    Limit,
    MessagePublic,
    MessageSend,
    OptionalCursor,
    Page,
    RecallPublic,
    SentPublic,
)
from parley.auth.scopes import MESSAGES_READ, MESSAGES_WRITE
from parley.errors import Conflict, NotFound
from parley.messaging.service import SERVER_DEVICE, Actor
from parley.store.conversations import Conversation, ConversationSummary
from parley.store.social import SocialStore

__all__ = ["router"]

router = APIRouter(
    prefix="/conversations", tags=["conversations"], responses=ERRORS, dependencies=STRICT_QUERY
)

MsgId = Annotated[str, Path(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9._-]+$")]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:/+=-]+$",
        description="Caller-chosen key: a retry with the same key returns the original result.",
        examples=["build-812-passed"],
    ),
]


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; the body decoders want 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _actor(caller: Caller) -> Actor:
    return Actor(caller.tenant_id, caller.user_id, SERVER_DEVICE)


def _peer(conv: Conversation, me: int) -> int | None:
    if conv.kind != "direct" or not conv.direct_key:
        return None
    low, high = (int(x) for x in conv.direct_key.split(":"))
    return high if low == me else low


async def _publics(
    social: SocialStore, caller: Caller, rows: list[ConversationSummary]
) -> list[ConversationPublic]:
    ids = [r.conversation.id for r in rows]
    settings = await social.member_settings(caller.tenant_id, caller.user_id, ids)
    last = await social.last_messages(
        caller.tenant_id, [(r.conversation.id, r.last_seq) for r in rows]
    )
    out = []
    for r in rows:
        c = r.conversation
        s = settings.get(c.id)
        m = last.get(c.id)
        out.append(
            ConversationPublic(
                id=c.id,
                kind=c.kind,
                name=c.name,
                role=r.role,
                peer_id=_peer(c, caller.user_id),
                last_seq=r.last_seq,
                read_seq=r.read_seq,
                unread=r.unread,
                pinned=bool(s and s.pinned),
                muted=bool(s and s.muted),
                last_message=message_public(m) if m else None,
            )
        )
    return out


async def _one(
    services: Services, social: SocialStore, caller: Caller, conv_id: int
) -> ConversationPublic:
    conv = await services.conversations.get(caller.tenant_id, conv_id)
    role = await services.conversations.member_role(caller.tenant_id, conv_id, caller.user_id)
    if conv is None or role is None:
        raise NotFound("no such conversation")
    read = min(
        await services.messaging.cursors.read_cursor(caller.tenant_id, caller.user_id, conv_id),
        conv.last_seq,
    )
    summary = ConversationSummary(conv, role, conv.last_seq, read, conv.last_seq - read)
    return (await _publics(social, caller, [summary]))[0]


@router.get(
    "",
    summary="The caller's conversations with last message and unread count.",
    dependencies=[Depends(require_scope(MESSAGES_READ))],
)
async def list_conversations(
    caller: CurrentCaller,
    services: Services,
    social: Social,
    after: OptionalCursor = None,
    limit: Limit = 50,
) -> Page[ConversationPublic]:
    rows, more = await services.messaging.conversations_page(_actor(caller), after, limit)
    return Page(
        items=await _publics(social, caller, rows),
        next=rows[-1].conversation.id if more and rows else None,
    )


@router.post(
    "/direct",
    dependencies=[Depends(require_scope(MESSAGES_WRITE))],
    summary="Open (or find) the direct conversation with a user.",
    description="Idempotent: the pair has one direct conversation.  Refused when that user "
    "blocked the caller (404, as for a missing user) or, when the tenant allows no stranger "
    "messages, when the two are not contacts (403).",
)
async def open_direct(
    body: DirectCreate, caller: CurrentCaller, services: Services, social: Social
) -> ConversationPublic:
    if body.user_id == caller.user_id:
        raise Conflict("a direct conversation needs another user")
    await visible_profile(social, caller, body.user_id)
    policy = services.messaging.policy
    if policy is not None:
        await policy.check_direct(caller.tenant_id, caller.user_id, body.user_id)
    conv = await services.conversations.create_direct(
        caller.tenant_id, caller.user_id, body.user_id, services.clock.now_ms()
    )
    services.messaging.members_changed(caller.tenant_id, conv.id)
    return await _one(services, social, caller, conv.id)


@router.get(
    "/{conv_id}",
    summary="One of the caller's conversations.",
    dependencies=[Depends(require_scope(MESSAGES_READ))],
)
async def get_conversation(
    conv_id: IdPath, caller: CurrentCaller, services: Services, social: Social
) -> ConversationPublic:
    return await _one(services, social, caller, conv_id)


@router.patch(
    "/{conv_id}",
    summary="Pin or mute a conversation (for the caller only).",
    dependencies=[Depends(require_scope(MESSAGES_WRITE))],
)
async def update_conversation(
    conv_id: IdPath,
    body: ConversationUpdate,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> ConversationPublic:
    await _one(services, social, caller, conv_id)
    await social.set_member_settings(
        caller.tenant_id, conv_id, caller.user_id, pinned=body.pinned, muted=body.muted
    )
    return await _one(services, social, caller, conv_id)


@router.get(
    "/{conv_id}/messages",
    dependencies=[Depends(require_scope(MESSAGES_READ))],
    tags=["messages"],
    summary="A page of a conversation's history.",
    description="Ascending by seq.  Without cursors: the newest page; `before`: the page just "
    "before that seq (then `next` is the `before` of the older page); `after`: the page after "
    "that seq (then `next` is the `after` of the newer page); both: the messages between them, "
    "paged forward.",
)
async def history(
    conv_id: IdPath,
    caller: CurrentCaller,
    services: Services,
    before: OptionalCursor = None,
    after: OptionalCursor = None,
    limit: Limit = 50,
) -> Page[MessagePublic]:
    msgs, more = await services.messaging.history(_actor(caller), conv_id, before, after, limit)
    nxt = None
    if more and msgs:
        nxt = msgs[-1].seq if after is not None else msgs[0].seq
    return Page(items=[message_public(m) for m in msgs], next=nxt)


@router.post(
    "/{conv_id}/messages",
    dependencies=[Depends(require_scope(MESSAGES_WRITE))],
    tags=["messages"],
    summary="Send a message from the server on the caller's behalf (bots, systems).",
    description="The server generates the message id.  Retrying with the same "
    "`Idempotency-Key` returns the original result (`duplicate: true`); the same key with "
    "another payload is refused (409).  Online devices receive the message at once.",
)
async def send_message(
    conv_id: IdPath,
    body: MessageSend,
    key: IdempotencyKey,
    caller: CurrentCaller,
    services: Services,
    social: Social,
) -> SentPublic:
    svc = services.messaging
    mid = await social.claim_key(
        caller.tenant_id,
        caller.user_id,
        key,
        svc.server_message_id(caller.user_id),
        services.clock.now_ms(),
    )
    r = await svc.send_as_server(
        caller.tenant_id,
        caller.user_id,
        conv_id,
        mid,
        body.kind,
        msgspec.json.encode(_integral(body.body)),
    )
    return SentPublic(conv=r.conv, mid=r.mid, seq=r.seq, ts=r.ts, duplicate=r.dup)


@router.post(
    "/{conv_id}/messages/{mid}/recall",
    dependencies=[Depends(require_scope(MESSAGES_WRITE))],
    tags=["messages"],
    summary="Recall a message.",
    description="The sender within the recall window; group owners and admins at any time.",
)
async def recall(
    conv_id: IdPath, mid: MsgId, caller: CurrentCaller, services: Services
) -> RecallPublic:
    seq = await services.messaging.recall(_actor(caller), conv_id, mid)
    return RecallPublic(seq=seq)

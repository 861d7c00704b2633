"""Messaging use cases, shared by the WebSocket and HTTP front doors.

The life of a message (docs/architecture.md):

1. ``send`` checks the message id against the session, validates the body,
   checks membership (cached), and hands the message to the write batcher.
2. The batcher commits it with its batch (seq assigned in the transaction).
3. Only then ``send`` returns the ack data, and the message frame, encoded
   once, goes through the Router to every online device of every member.

Nothing here knows about sockets or HTTP; callers pass an ``Actor``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from parley.clock import Clock
from parley.errors import (
    BadRequest,
    Forbidden,
    IdempotencyConflict,
    NotFound,
    NotMember,
    ParleyError,
    RecallWindowPassed,
)
from parley.hub.router import DeviceSink, Router
from parley.messaging.members import ConvMembers, MembershipCache
from parley.messaging.policy import SendPolicy
from parley.metrics import Metrics
from parley.protocol import (
    EMPTY_BODY,
    Delivered,
    Limits,
    Msg,
    ReadEvent,
    TypingEvent,
    check_message_id,
    encode,
    new_message_id,
    random_suffix,
    validate_body,
)
from parley.store.batcher import CursorWriter, WriteBatcher
from parley.store.conversations import ConversationStore, ConversationSummary
from parley.store.cursors import CursorStore, DeliveryCursor
from parley.store.messages import AppendResult, MessageStore, NewMessage, StoredMessage

__all__ = [
    "Actor", "MessagingConfig", "MessagingService", "QueuedSend", "SendOrder", "SendResult",
    "SendTurn", "msg_frame",
]

SERVER_DEVICE = "server"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: a user on a device (``device_id`` "server" for server-side sends)."""

    tenant_id: int
    user_id: int
    device_id: str


@dataclass(frozen=True, slots=True)
class MessagingConfig:
    recall_window_ms: int = 120_000
    typing_expires_ms: int = 6_000
    delivery_receipts: bool = True


@dataclass(frozen=True, slots=True)
class SendResult:
    conv: int
    mid: str
    seq: int
    ts: int
    dup: bool


class QueuedSend(NamedTuple):
    """A send queued by ``MessagingService.send_now``: what ``committed`` needs."""

    result: asyncio.Future[AppendResult]
    members: ConvMembers
    canonical: bytes


def digest_of(conv: int, kind: str, body: bytes) -> str:
    """What makes a resend "the same message": conversation, kind and canonical body."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"%d:%s:" % (conv, kind.encode()))
    h.update(body)
    return h.hexdigest()


def msg_frame(m: StoredMessage) -> Msg:
    """The wire form of a stored message (tombstones carry an empty body)."""
    return Msg(
        conv=m.conversation_id, seq=m.seq, mid=m.msg_id, sender=m.sender_id, kind=m.kind,
        body=msgspec.Raw(EMPTY_BODY if m.recalled or not m.body else m.body),
        ts=m.created_at, recalled=m.recalled,
    )


_STATUS_ERRORS: dict[str, type[ParleyError]] = {
    NotFound.code: NotFound, NotMember.code: NotMember,
    IdempotencyConflict.code: IdempotencyConflict,
}


def _raise_for(result: AppendResult) -> None:
    exc = _STATUS_ERRORS.get(result.code or "", BadRequest)
    raise exc(result.message or "message refused")


class SendTurn:
    """One send's place in its device's order (from ``SendOrder.turn``)."""

    __slots__ = ("_mine", "previous")

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self.previous = previous
        self._mine = mine

    def done(self) -> None:
        """Queued or refused: the next send of the device may go."""
        if not self._mine.done():
            self._mine.set_result(None)


class SendOrder:
    """Keeps one device's sends in arrival order up to the write queue."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail: asyncio.Future[None] | None = None

    def turn(self, loop: asyncio.AbstractEventLoop | None = None) -> SendTurn:
        """The next send's turn (``loop``: the running loop, when the caller has it)."""
        tail = self._tail
        mine: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        self._tail = mine
        return SendTurn(None if tail is None or tail.done() else tail, mine)

    def idle(self) -> bool:
        """No send of this device is waiting for its turn or a check."""
        tail = self._tail
        return tail is None or tail.done()


class MessagingService:
    def __init__(
        self, *, messages: MessageStore, conversations: ConversationStore,
        cursors: CursorStore, batcher: WriteBatcher, cursor_writer: CursorWriter,
        members: MembershipCache, router: Router, limits: Limits, clock: Clock,
        metrics: Metrics, config: MessagingConfig | None = None,
        policy: SendPolicy | None = None,
    ) -> None:
        self.messages = messages
        self.conversations = conversations
        self.cursors = cursors
        self.batcher = batcher
        self.cursor_writer = cursor_writer
        self.members = members
        self.router = router
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.config = config or MessagingConfig()
        self.policy = policy

    # -- send --------------------------------------------------------------------
    async def _membership(self, actor: Actor, conv: int) -> ConvMembers:
        members = await self.members.get(actor.tenant_id, conv)
        if members is None or actor.user_id not in members:
            # Same answer for "no such conversation" and "not yours": ids leak nothing.
            raise NotMember("not a member of this conversation")
        return members

    async def send(
        self, actor: Actor, conv: int, mid: str, kind: str, body: bytes | msgspec.Raw,
        *, server_side: bool = False, turn: SendTurn | None = None,
    ) -> SendResult:
        """Store a message and push it; returns once it is durably committed.

        A resend of the same ``mid`` returns the original seq (``dup``); the same
        ``mid`` with another payload raises IdempotencyConflict.  With a ``turn``
        (see ``SendOrder``) the message is queued for storage only after the
        previous send of the same device was queued or refused, so a device's
        messages are stored in the order it sent them even when a check before
        storage has to wait for the database.
        """
        try:
            now, canonical = self._checked(actor, mid, kind, body, server_side)
            # Cached answers first: on a hit nothing here waits (no coroutine).
            members = self.members.fresh(actor.tenant_id, conv)
            if members is None or actor.user_id not in members:
                members = await self._membership(actor, conv)
            if not self._allowed_now(actor, members):
                await self._check_policy(actor, members)
            if turn is not None and turn.previous is not None:
                await turn.previous
            committed = self._enqueue(actor, conv, mid, kind, canonical, now)
        finally:
            if turn is not None:
                turn.done()
        return self.committed(actor, conv, mid, kind, canonical, members, await committed)

    def send_now(
        self, actor: Actor, conv: int, mid: str, kind: str, body: bytes | msgspec.Raw,
    ) -> QueuedSend | None:
        """``send`` up to the write queue without waiting, when every check is answered
        from the caches; None when one is not (nothing was queued: call ``send``).

        Raises as ``send`` for a message it refuses.  The caller finishes with
        ``committed`` once the future resolves.  It must not use this while an
        earlier send of the same device is still waiting in ``send``
        (``SendOrder.idle``), or that one would be stored after this one.
        """
        now, canonical = self._checked(actor, mid, kind, body, False)
        members = self.members.fresh(actor.tenant_id, conv)
        if members is None or actor.user_id not in members or not self._allowed_now(
            actor, members
        ):
            return None
        return QueuedSend(
            self._enqueue(actor, conv, mid, kind, canonical, now), members, canonical
        )

    def _checked(
        self, actor: Actor, mid: str, kind: str, body: bytes | msgspec.Raw, server_side: bool
    ) -> tuple[int, bytes]:
        """The send's time and canonical body, once its id and body are valid."""
        now = self.clock.now_ms()
        if not server_side:
            check_message_id(
                mid, actor.user_id, actor.device_id, now,
                self.limits.mid_max_past_ms, self.limits.mid_max_future_ms,
            )
        _, canonical = validate_body(kind, body, self.limits)
        return now, canonical

    def _enqueue(
        self, actor: Actor, conv: int, mid: str, kind: str, canonical: bytes, now: int
    ) -> asyncio.Future[AppendResult]:
        return self.batcher.enqueue(NewMessage(
            tenant_id=actor.tenant_id, conversation_id=conv, msg_id=mid,
            sender_id=actor.user_id, sender_device=actor.device_id, kind=kind,
            body=canonical, digest=digest_of(conv, kind, canonical), created_at=now,
        ))

    def committed(
        self, actor: Actor, conv: int, mid: str, kind: str, canonical: bytes,
        members: ConvMembers, result: AppendResult,
    ) -> SendResult:
        """After the commit: raise for a refusal, else push a new message to every
        member's online devices and return the ack data."""
        if not result.ok:
            _raise_for(result)
        assert result.seq is not None and result.created_at is not None
        dup = result.status == "duplicate"
        if dup:
            self.metrics.messages_duplicate.inc()
        else:
            self.metrics.child(self.metrics.messages_sent, kind).inc()
            frame = encode(Msg(
                conv=conv, seq=result.seq, mid=mid, sender=actor.user_id, kind=kind,
                body=msgspec.Raw(canonical), ts=result.created_at,
            ))
            self.metrics.deliveries.inc(
                self.router.deliver_message(
                    actor.tenant_id, members.member_ids, conv, result.seq, frame
                )
            )
        return SendResult(conv, mid, result.seq, result.created_at, dup)

    def _allowed_now(self, actor: Actor, members: ConvMembers) -> bool:
        """True when the cached send rules allow this message; False when
        ``_check_policy`` must decide (rules not cached, or a refusal to raise)."""
        policy = self.policy
        if policy is None:
            return True
        if members.kind != "direct":
            return policy.group_allowed_now(actor.tenant_id, members.conv_id, actor.user_id)
        for peer in members.member_ids:
            if peer != actor.user_id and not policy.direct_allowed_now(
                actor.tenant_id, actor.user_id, peer
            ):
                return False
        return True

    async def _check_policy(self, actor: Actor, members: ConvMembers) -> None:
        """Blocks and the stranger policy (direct), mutes (groups); Forbidden if refused."""
        if self.policy is None:
            return
        if members.kind == "direct":
            for peer in members.member_ids:
                if peer != actor.user_id:
                    await self.policy.check_direct(actor.tenant_id, actor.user_id, peer)
        else:
            await self.policy.check_group(actor.tenant_id, members.conv_id, actor.user_id)

    async def send_as_server(
        self, tenant_id: int, user_id: int, conv: int, mid: str, kind: str, body: bytes
    ) -> SendResult:
        """The server-side send API: ``user_id`` sends through the server (device
        "server") with a server-generated ``mid`` (``server_message_id``); same
        checks, batcher and fan-out as a WebSocket send, so online devices get it."""
        return await self.send(
            Actor(tenant_id, user_id, SERVER_DEVICE), conv, mid, kind, body, server_side=True
        )

    def members_changed(self, tenant_id: int, conv: int) -> None:
        """Call after changing a conversation's members, roles or mutes."""
        self.members.invalidate(tenant_id, conv)
        if self.policy is not None:
            self.policy.invalidate_group(tenant_id, conv)

    def server_message_id(self, user_id: int) -> str:
        """A message id of the usual shape for a message the server sends itself."""
        return new_message_id(
            user_id, SERVER_DEVICE, self.clock.now_ms(), random_suffix(secrets.choice)
        )

    # -- recall ------------------------------------------------------------------
    async def recall(self, actor: Actor, conv: int, mid: str) -> int:
        """Recall a message: the sender within the window, group owners/admins any time.

        The body is removed in the same transaction that stores a ``recall``
        message (its own seq) which every device receives.  Returns that seq.
        Recalling an already recalled message (or a recall) is refused with
        ``bad_request``, so a message is tombstoned by exactly one recall.
        """
        members = await self._membership(actor, conv)
        target = await self.messages.by_msg_id(actor.tenant_id, mid)
        if target is None or target.conversation_id != conv:
            raise NotFound("no such message in this conversation")
        if target.kind == "recall":
            raise BadRequest("a recall cannot be recalled")
        if target.recalled:
            raise BadRequest("message already recalled")
        now = self.clock.now_ms()
        if target.sender_id != actor.user_id or now - target.created_at > \
                self.config.recall_window_ms:
            role = None
            if members.kind == "group":
                role = await self.conversations.member_role(actor.tenant_id, conv, actor.user_id)
            if role not in ("owner", "admin"):
                if target.sender_id != actor.user_id:
                    raise Forbidden("only the sender or a group owner/admin may recall")
                raise RecallWindowPassed(
                    f"messages can be recalled within {self.config.recall_window_ms // 1000} s"
                )
        body = msgspec.json.encode({"mid": mid})
        rid = self.server_message_id(actor.user_id)
        result = await self.batcher.submit(NewMessage(
            tenant_id=actor.tenant_id, conversation_id=conv, msg_id=rid,
            sender_id=actor.user_id, sender_device=actor.device_id, kind="recall", body=body,
            digest=digest_of(conv, "recall", body), created_at=now, recall_target=mid,
        ))
        if not result.ok:
            _raise_for(result)
        assert result.seq is not None and result.created_at is not None
        frame = encode(Msg(
            conv=conv, seq=result.seq, mid=rid, sender=actor.user_id, kind="recall",
            body=msgspec.Raw(body), ts=result.created_at,
        ))
        self.router.deliver_message(actor.tenant_id, members.member_ids, conv, result.seq, frame)
        return result.seq

    # -- receipts ----------------------------------------------------------------
    async def mark_read(
        self, actor: Actor, conv: int, seq: int, skip: DeviceSink | None = None
    ) -> int:
        """Move the user's read cursor forward; tell the other members and the
        user's other devices.  Returns the effective read cursor."""
        members = await self._membership(actor, conv)
        before = await self.cursors.read_cursor(actor.tenant_id, actor.user_id, conv)
        effective = await self.cursors.advance_read(
            actor.tenant_id, actor.user_id, conv, seq, self.clock.now_ms()
        )
        if effective > before:
            frame = encode(ReadEvent(conv=conv, uid=actor.user_id, seq=effective))
            self.router.deliver_event(actor.tenant_id, members.member_ids, frame, skip=skip)
        return effective

    def delivered(self, actor: Actor, conv: int, seq: int, members: ConvMembers | None) -> None:
        """A device acknowledged receiving ``conv`` up to ``seq``: persist its cursor
        (coalesced) and, in direct conversations, send the peer a delivery receipt."""
        self.cursor_writer.advance(DeliveryCursor(
            tenant_id=actor.tenant_id, user_id=actor.user_id, device_id=actor.device_id,
            conversation_id=conv, acked_seq=seq, updated_at=self.clock.now_ms(),
        ))
        if self.config.delivery_receipts and members is not None and members.kind == "direct":
            peers = [u for u in members.member_ids if u != actor.user_id]
            if peers:
                frame = encode(Delivered(conv=conv, uid=actor.user_id, seq=seq))
                self.router.deliver_event(actor.tenant_id, peers, frame)

    # -- typing ------------------------------------------------------------------
    async def typing(self, actor: Actor, conv: int) -> None:
        members = await self._membership(actor, conv)
        frame = encode(TypingEvent(
            conv=conv, uid=actor.user_id, expires_ms=self.config.typing_expires_ms
        ))
        others = [u for u in members.member_ids if u != actor.user_id]
        self.router.deliver_event(actor.tenant_id, others, frame)

    # -- reading -----------------------------------------------------------------
    async def sync(
        self, actor: Actor, cursors: Mapping[int, int], limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """Messages after ``cursors``; conversations not given start from the
        device's stored delivery cursor."""
        stored = await self.cursors.delivery_cursors(
            actor.tenant_id, actor.user_id, actor.device_id
        )
        merged = {**stored, **cursors}
        page = await self.messages.sync_page(actor.tenant_id, actor.user_id, merged, limit)
        return page.messages, page.more

    async def history(
        self, actor: Actor, conv: int, before: int | None, after: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """A page of one conversation, ascending.  ``after`` pages forward from a
        seq (stopping below ``before`` when both are given: a window); otherwise
        pages backward from ``before`` (default: the newest)."""
        await self._membership(actor, conv)
        if after is not None:
            msgs = await self.messages.after(actor.tenant_id, conv, after, limit + 1)
            if before is not None:
                msgs = [m for m in msgs if m.seq < before]
            return msgs[:limit], len(msgs) > limit
        upper = before if before is not None else 2**53
        msgs = await self.messages.before(actor.tenant_id, conv, upper, limit + 1)
        return msgs[-limit:], len(msgs) > limit

    async def conversations_page(
        self, actor: Actor, after: int | None, limit: int
    ) -> tuple[list[ConversationSummary], bool]:
        rows = await self.conversations.list_for_user(
            actor.tenant_id, actor.user_id, after=after, limit=limit + 1
        )
        return rows[:limit], len(rows) > limit

"""Conversations and their members.

A conversation is ``direct`` (exactly one per pair of users, found again by its
``direct_key`` "<low uid>:<high uid>") or a ``group`` with roles.  Every method
takes ``tenant_id`` and filters on it: a conversation or user of another tenant
is indistinguishable from a missing one (``NotFound``), so a user can never be
added to another tenant's conversation, nor another tenant's user to this one's.

Membership and roles are data here; who may change them is decided by the
messaging service before it calls this store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import RowMapping, Select, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.errors import BadRequest, NotFound
from parley.store.database import Database
from parley.store.sql import insert_for
from parley.store.tables import conversations, members, read_cursors, users

__all__ = ["MEMBER_ROLES", "Conversation", "ConversationStore", "ConversationSummary"]

MEMBER_ROLES = ("owner", "admin", "member")


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    tenant_id: int
    kind: str  # "direct" | "group"
    name: str
    direct_key: str | None
    last_seq: int
    created_by: int | None
    created_at: int


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One line of a user's conversation list.

    ``unread`` is ``last_seq - read_seq``: every message after the user's read
    cursor, recall events included.  The user's own messages do not count in
    practice because ``MessageStore.append`` moves the sender's read cursor to
    each message it stores (sending implies having read what came before).
    """

    conversation: Conversation
    role: str
    last_seq: int
    read_seq: int
    unread: int


def _conversation(row: RowMapping) -> Conversation:
    return Conversation(
        id=row["id"], tenant_id=row["tenant_id"], kind=row["kind"], name=row["name"],
        direct_key=row["direct_key"], last_seq=row["last_seq"],
        created_by=row["created_by"], created_at=row["created_at"],
    )


def _check_role(role: str) -> None:
    if role not in MEMBER_ROLES:
        raise ValueError(f"unknown member role {role!r}")



def _direct_peers() -> Select[int]:
    # Built once: building the aliases per call cost more CPU than the query
    # (profile of 1,000 devices connecting: 18% of the node in Column._make_proxy).
    mine = members.alias("mine")
    theirs = members.alias("theirs")
    return (
        select(theirs.c.user_id)
        .select_from(
            mine.join(theirs, theirs.c.conversation_id == mine.c.conversation_id).join(
                conversations, conversations.c.id == mine.c.conversation_id
            )
        )
        .where(
            mine.c.tenant_id == bindparam("tenant_id"),
            mine.c.user_id == bindparam("user_id"),
            theirs.c.user_id != bindparam("user_id"),
            conversations.c.kind == "direct",
        )
        .distinct()
    )


_DIRECT_PEERS = _direct_peers()


def _direct_peers_many() -> Select[int, int]:
    mine = members.alias("mine")
    theirs = members.alias("theirs")
    return (
        select(mine.c.user_id, theirs.c.user_id)
        .select_from(
            mine.join(theirs, theirs.c.conversation_id == mine.c.conversation_id).join(
                conversations, conversations.c.id == mine.c.conversation_id
            )
        )
        .where(
            mine.c.tenant_id == bindparam("tenant_id"),
            mine.c.user_id.in_(bindparam("user_ids", expanding=True)),
            theirs.c.user_id != mine.c.user_id,
            conversations.c.kind == "direct",
        )
        .distinct()
    )


_DIRECT_PEERS_MANY = _direct_peers_many()

_KINDS_AND_MEMBERS = (
    select(conversations.c.id, conversations.c.kind, members.c.user_id)
    .select_from(conversations.outerjoin(members, members.c.conversation_id == conversations.c.id))
    .where(conversations.c.tenant_id == bindparam("tenant_id"),
           conversations.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(conversations.c.id, members.c.user_id)
)

class ConversationStore:
    """Repository for conversations and members; stateless apart from its database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    async def _require_users(conn: AsyncConnection, tenant_id: int, ids: Iterable[int]) -> None:
        """Raise NotFound unless every id is a user of this tenant."""
        wanted = set(ids)
        if not wanted:
            return
        found = set(
            (
                await conn.execute(
                    select(users.c.id).where(users.c.tenant_id == tenant_id, users.c.id.in_(wanted))
                )
            ).scalars()
        )
        if missing := wanted - found:
            raise NotFound(f"no such user: {min(missing)}")

    @staticmethod
    async def _require_conversation(
        conn: AsyncConnection, tenant_id: int, conv_id: int
    ) -> RowMapping:
        row = (
            await conn.execute(
                select(conversations).where(
                    conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id
                )
            )
        ).mappings().first()
        if row is None:
            raise NotFound("no such conversation")
        return row

    async def _insert_members(
        self,
        conn: AsyncConnection,
        tenant_id: int,
        conv_id: int,
        roles: dict[int, str],
        now_ms: int,
    ) -> list[int]:
        """Insert members that are not members yet; return the ids actually added."""
        if not roles:
            return []
        stmt = (
            insert_for(self._db, members)
            .values([
                {"tenant_id": tenant_id, "conversation_id": conv_id, "user_id": uid,
                 "role": role, "joined_at": now_ms}
                for uid, role in sorted(roles.items())
            ])
            .on_conflict_do_nothing(index_elements=[members.c.conversation_id, members.c.user_id])
            .returning(members.c.user_id)
        )
        return sorted(int(uid) for uid in (await conn.execute(stmt)).scalars())

    # -- creation --------------------------------------------------------------
    async def create_direct(self, tenant_id: int, a: int, b: int, now_ms: int) -> Conversation:
        """The direct conversation of users ``a`` and ``b``, created on first call.

        Idempotent: every call for the pair (in either order, even concurrent
        ones on several nodes) returns the same conversation, and both users are
        members with role "member".  Raises BadRequest when ``a == b`` and
        NotFound when either user is not in this tenant.
        """
        if a == b:
            raise BadRequest("a direct conversation needs two different users")
        low, high = sorted((a, b))
        key = f"{low}:{high}"
        async with self._db.writer.begin() as conn:
            await self._require_users(conn, tenant_id, (low, high))
            stmt = (
                insert_for(self._db, conversations)
                .values(
                    tenant_id=tenant_id, kind="direct", name="", direct_key=key,
                    last_seq=0, created_by=a, created_at=now_ms,
                )
                .on_conflict_do_nothing(
                    index_elements=[conversations.c.tenant_id, conversations.c.direct_key]
                )
                .returning(*conversations.c)
            )
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:  # it existed already (or another node just created it)
                row = (
                    await conn.execute(
                        select(conversations).where(
                            conversations.c.tenant_id == tenant_id,
                            conversations.c.direct_key == key,
                        )
                    )
                ).mappings().one()
            await self._insert_members(
                conn, tenant_id, row["id"], {low: "member", high: "member"}, now_ms
            )
        return _conversation(row)

    async def create_group(
        self,
        tenant_id: int,
        creator_id: int,
        name: str,
        member_ids: Sequence[int],
        now_ms: int,
    ) -> Conversation:
        """Create a group: the creator is its "owner", every other id a "member".

        Raises NotFound when any user is not in this tenant (nothing is created).
        """
        roles = {uid: "member" for uid in member_ids}
        roles[creator_id] = "owner"
        async with self._db.writer.begin() as conn:
            await self._require_users(conn, tenant_id, roles)
            row = (
                await conn.execute(
                    conversations.insert()
                    .values(
                        tenant_id=tenant_id, kind="group", name=name, direct_key=None,
                        last_seq=0, created_by=creator_id, created_at=now_ms,
                    )
                    .returning(*conversations.c)
                )
            ).mappings().one()
            await self._insert_members(conn, tenant_id, row["id"], roles, now_ms)
        return _conversation(row)

    # -- membership ------------------------------------------------------------
    async def add_members(
        self,
        tenant_id: int,
        conv_id: int,
        user_ids: Sequence[int],
        now_ms: int,
        role: str = "member",
    ) -> list[int]:
        """Add users with ``role``; existing members keep their role.  Idempotent.

        Returns the ids that were not members before (ascending), so the caller
        can announce exactly those.  Raises NotFound for an unknown conversation
        or a user not in this tenant (then nobody is added).
        """
        _check_role(role)
        async with self._db.writer.begin() as conn:
            await self._require_conversation(conn, tenant_id, conv_id)
            await self._require_users(conn, tenant_id, user_ids)
            return await self._insert_members(
                conn, tenant_id, conv_id, dict.fromkeys(user_ids, role), now_ms
            )

    async def remove_member(self, tenant_id: int, conv_id: int, user_id: int) -> bool:
        """Remove a member; returns False when the user was not a member."""
        async with self._db.writer.begin() as conn:
            result = await conn.execute(
                delete(members).where(
                    members.c.tenant_id == tenant_id,
                    members.c.conversation_id == conv_id,
                    members.c.user_id == user_id,
                )
            )
        return bool(result.rowcount)

    async def set_role(self, tenant_id: int, conv_id: int, user_id: int, role: str) -> None:
        """Change a member's role.  Raises NotFound when the user is not a member."""
        _check_role(role)
        async with self._db.writer.begin() as conn:
            result = await conn.execute(
                update(members)
                .where(
                    members.c.tenant_id == tenant_id,
                    members.c.conversation_id == conv_id,
                    members.c.user_id == user_id,
                )
                .values(role=role)
            )
            if result.rowcount == 0:
                raise NotFound("not a member of this conversation")

    async def member_role(self, tenant_id: int, conv_id: int, user_id: int) -> str | None:
        """The user's role in the conversation, or None when not a member."""
        async with self._db.reader.connect() as conn:
            role = await conn.scalar(
                select(members.c.role).where(
                    members.c.tenant_id == tenant_id,
                    members.c.conversation_id == conv_id,
                    members.c.user_id == user_id,
                )
            )
        return str(role) if role is not None else None

    async def member_ids(self, tenant_id: int, conv_id: int) -> list[int]:
        """Member user ids, ascending (empty for an unknown conversation)."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(members.c.user_id)
                .where(members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id)
                .order_by(members.c.user_id)
            )
            return [int(uid) for uid in rows.scalars()]

    async def kinds_and_members(
        self, tenant_id: int, conv_ids: Iterable[int]
    ) -> dict[int, tuple[str, list[int]]]:
        """Kind and member ids (ascending) of each conversation of this tenant among
        ``conv_ids``, in one read; unknown ids are left out (a cold cache's batch)."""
        ids = sorted(set(conv_ids))
        if not ids:
            return {}
        out: dict[int, tuple[str, list[int]]] = {}
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(_KINDS_AND_MEMBERS, {"tenant_id": tenant_id, "ids": ids})
            for conv_id, kind, user_id in rows:
                entry = out.get(conv_id)
                if entry is None:
                    entry = out[conv_id] = (str(kind), [])
                if user_id is not None:
                    entry[1].append(int(user_id))
        return out

    async def get(self, tenant_id: int, conv_id: int) -> Conversation | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(conversations).where(
                        conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id
                    )
                )
            ).mappings().first()
        return _conversation(row) if row else None

    async def list_for_user(
        self, tenant_id: int, user_id: int, *, after: int | None = None, limit: int = 100
    ) -> list[ConversationSummary]:
        """The user's conversations in id order, ``limit`` at most, after id ``after``.

        Page on by passing the last summary's ``conversation.id`` as ``after``.
        One query whatever the page size (members -> conversations, left join
        read cursors).
        """
        read_seq = func.coalesce(read_cursors.c.read_seq, 0)
        stmt = (
            select(conversations, members.c.role, read_seq.label("read_seq"))
            .select_from(
                members.join(conversations, conversations.c.id == members.c.conversation_id)
                .outerjoin(
                    read_cursors,
                    (read_cursors.c.conversation_id == members.c.conversation_id)
                    & (read_cursors.c.user_id == members.c.user_id),
                )
            )
            .where(
                members.c.tenant_id == tenant_id,
                members.c.user_id == user_id,
                conversations.c.tenant_id == tenant_id,
            )
            .order_by(members.c.conversation_id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(members.c.conversation_id > after)
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        out = []
        for r in rows:
            conv = _conversation(r)
            read = min(int(r["read_seq"]), conv.last_seq)
            out.append(
                ConversationSummary(
                    conversation=conv, role=r["role"], last_seq=conv.last_seq,
                    read_seq=read, unread=conv.last_seq - read,
                )
            )
        return out

    async def direct_peers_many(
        self, tenant_id: int, user_ids: Iterable[int]
    ) -> dict[int, list[int]]:
        """``direct_peers`` of several users in one query (presence fan-out batches)."""
        ids = sorted(set(user_ids))
        out: dict[int, list[int]] = {u: [] for u in ids}
        if not ids:
            return out
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                _DIRECT_PEERS_MANY, {"tenant_id": tenant_id, "user_ids": ids}
            )
            for who, peer in rows:
                out[int(who)].append(int(peer))
        return out

    async def direct_peers(self, tenant_id: int, user_id: int) -> list[int]:
        """The users who share a direct conversation with ``user_id`` (their
        presence audience until contacts exist)."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(_DIRECT_PEERS, {"tenant_id": tenant_id, "user_id": user_id})
            return [int(r[0]) for r in rows]

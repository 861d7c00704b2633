"""Profiles, contacts, blocks, per-member settings, group settings and idempotency keys.

Every method takes ``tenant_id`` and filters on it: rows of another tenant are
indistinguishable from missing ones.  Who may do what (roles, visibility) is
decided by the callers (the HTTP routes and the messaging policy); this store
keeps the data consistent:

* A contact relationship is two rows, one per direction, written in one
  transaction: a request from A to B is (A, B, "requested") + (B, A,
  "incoming"); accepting makes both "accepted"; declining or removing deletes
  both.  A request while the other side's request is pending accepts it.
* Blocking removes any contact relationship between the two users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, delete, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.errors import Conflict, NotFound
from parley.store.database import Database
from parley.store.messages import StoredMessage
from parley.store.sql import insert_for
from parley.store.tables import (
    blocks,
    contacts,
    conversations,
    idempotency_keys,
    members,
    messages,
    users,
)

__all__ = [
    "Contact",
    "DirectRule",
    "GroupRules",
    "GroupState",
    "MemberInfo",
    "MemberSettings",
    "Profile",
    "SocialStore",
]

# What the send path asks for a direct message (cached by ``SendPolicy``): did
# the peer block the sender, and the sender's contact state.  One statement,
# built once: two queries built per call cost ~1 ms of the node's CPU per load.
@dataclass(frozen=True, slots=True)
class Profile:
    id: int
    username: str
    display_name: str
    status_text: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Contact:
    """``peer_id`` as seen from the user: "accepted", "requested" (by the user) or "incoming"."""

    peer_id: int
    state: str
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class DirectRule:
    """What decides whether ``sender`` may message ``peer`` directly."""

    blocked_by_peer: bool
    contacts: bool


@dataclass(frozen=True, slots=True)
class GroupState:
    announcement: str
    all_muted: bool
    dissolved_at: int | None


@dataclass(frozen=True, slots=True)
class GroupRules:
    """Who may send in a group right now: everyone unless ``all_muted`` (then only
    ``privileged``), and nobody while their own ``muted_until`` lies ahead."""

    all_muted: bool
    privileged: frozenset[int]
    muted_until: dict[int, int]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    user_id: int
    role: str
    joined_at: int
    send_muted_until: int


@dataclass(frozen=True, slots=True)
class MemberSettings:
    pinned: bool
    muted: bool


def _profile(r: RowMapping) -> Profile:
    return Profile(
        id=r["id"], username=r["username"], display_name=r["display_name"],
        status_text=r["status_text"], created_at=r["created_at"],
    )


def _escape_like(q: str) -> str:
    return q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SocialStore:
    """Repository for the social graph and settings; stateless apart from its database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- profiles ------------------------------------------------------------------
    async def profile(self, tenant_id: int, user_id: int) -> Profile | None:
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(
                select(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id)
            )).mappings().first()
        return _profile(row) if row else None

    async def update_profile(
        self, tenant_id: int, user_id: int, *, display_name: str | None = None,
        status_text: str | None = None,
    ) -> Profile:
        values: dict[str, Any] = {}
        if display_name is not None:
            values["display_name"] = display_name
        if status_text is not None:
            values["status_text"] = status_text
        if values:
            async with self._db.writer.begin() as conn:
                await conn.execute(
                    update(users)
                    .where(users.c.tenant_id == tenant_id, users.c.id == user_id)
                    .values(**values)
                )
        found = await self.profile(tenant_id, user_id)
        if found is None:
            raise NotFound("no such user")
        return found

    async def search_users(
        self, tenant_id: int, viewer_id: int, q: str, *, after: int = 0, limit: int = 50
    ) -> list[Profile]:
        """Users of the tenant whose username or display name contains ``q``
        (case-insensitive), id order, excluding users who blocked ``viewer_id``."""
        blockers = select(blocks.c.user_id).where(
            blocks.c.tenant_id == tenant_id, blocks.c.blocked_id == viewer_id
        )
        stmt = (
            select(users)
            .where(
                users.c.tenant_id == tenant_id, users.c.id > after,
                users.c.status == "active", users.c.id.not_in(blockers),
            )
            .order_by(users.c.id)
            .limit(limit)
        )
        if q:
            pattern = f"%{_escape_like(q.lower())}%"
            stmt = stmt.where(or_(
                func.lower(users.c.username).like(pattern, escape="\\"),
                func.lower(users.c.display_name).like(pattern, escape="\\"),
            ))
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_profile(r) for r in rows]

    # -- blocks --------------------------------------------------------------------
    async def is_blocked(self, tenant_id: int, blocker_id: int, blocked_id: int) -> bool:
        async with self._db.reader.connect() as conn:
            found = await conn.scalar(select(blocks.c.user_id).where(
                blocks.c.tenant_id == tenant_id, blocks.c.user_id == blocker_id,
                blocks.c.blocked_id == blocked_id,
            ))
        return found is not None

    async def blocked_ids_many(
        self, tenant_id: int, user_ids: Iterable[int]
    ) -> dict[int, set[int]]:
        """``blocked_ids`` of several users in one query."""
        ids = sorted(set(user_ids))
        out: dict[int, set[int]] = {u: set() for u in ids}
        if not ids:
            return out
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(select(blocks.c.user_id, blocks.c.blocked_id).where(
                blocks.c.tenant_id == tenant_id, blocks.c.user_id.in_(ids)
            ))
            for who, blocked in rows:
                out[int(who)].add(int(blocked))
        return out

    async def blocked_ids(self, tenant_id: int, user_id: int) -> set[int]:
        """Everyone ``user_id`` blocked."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(select(blocks.c.blocked_id).where(
                blocks.c.tenant_id == tenant_id, blocks.c.user_id == user_id
            ))
            return {int(r[0]) for r in rows}

    async def list_blocked(
        self, tenant_id: int, user_id: int, *, after: int = 0, limit: int = 50
    ) -> list[tuple[int, int]]:
        """(blocked user id, blocked at) in id order after ``after``."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(blocks.c.blocked_id, blocks.c.created_at)
                .where(blocks.c.tenant_id == tenant_id, blocks.c.user_id == user_id,
                       blocks.c.blocked_id > after)
                .order_by(blocks.c.blocked_id)
                .limit(limit)
            )
            return [(int(a), int(b)) for a, b in rows]

    async def block(self, tenant_id: int, user_id: int, blocked_id: int, now_ms: int) -> None:
        """Block (idempotent); drops any contact relationship of the pair."""
        async with self._db.writer.begin() as conn:
            await conn.execute(
                insert_for(self._db, blocks)
                .values(tenant_id=tenant_id, user_id=user_id, blocked_id=blocked_id,
                        created_at=now_ms)
                .on_conflict_do_nothing(index_elements=[blocks.c.user_id, blocks.c.blocked_id])
            )
            await self._drop_pair(conn, tenant_id, user_id, blocked_id)

    async def unblock(self, tenant_id: int, user_id: int, blocked_id: int) -> bool:
        async with self._db.writer.begin() as conn:
            result = await conn.execute(delete(blocks).where(
                blocks.c.tenant_id == tenant_id, blocks.c.user_id == user_id,
                blocks.c.blocked_id == blocked_id,
            ))
        return bool(result.rowcount)

    async def direct_rules(
        self, tenant_id: int, pairs: Iterable[tuple[int, int]]
    ) -> dict[tuple[int, int], DirectRule]:
        """What decides whether each ``sender`` may message each ``peer`` directly,
        for several (sender, peer) pairs: one connection, two reads."""
        wanted = sorted(set(pairs))
        if not wanted:
            return {}
        async with self._db.reader.connect() as conn:
            blocked = {(int(sender), int(peer)) for peer, sender in await conn.execute(
                select(blocks.c.user_id, blocks.c.blocked_id).where(
                    blocks.c.tenant_id == tenant_id,
                    tuple_(blocks.c.user_id, blocks.c.blocked_id).in_(
                        [(peer, sender) for sender, peer in wanted]),
                ))}
            accepted = {(int(sender), int(peer)) for sender, peer in await conn.execute(
                select(contacts.c.user_id, contacts.c.peer_id).where(
                    contacts.c.tenant_id == tenant_id, contacts.c.state == "accepted",
                    tuple_(contacts.c.user_id, contacts.c.peer_id).in_(wanted),
                ))}
        return {pair: DirectRule(blocked_by_peer=pair in blocked, contacts=pair in accepted)
                for pair in wanted}

    # -- contacts ------------------------------------------------------------------
    @staticmethod
    async def _drop_pair(conn: AsyncConnection, tenant_id: int, a: int, b: int) -> int:
        result = await conn.execute(delete(contacts).where(
            contacts.c.tenant_id == tenant_id,
            tuple_(contacts.c.user_id, contacts.c.peer_id).in_([(a, b), (b, a)]),
        ))
        return int(result.rowcount or 0)

    async def _state(self, conn: AsyncConnection, tenant_id: int, a: int, b: int) -> str | None:
        state = await conn.scalar(select(contacts.c.state).where(
            contacts.c.tenant_id == tenant_id, contacts.c.user_id == a, contacts.c.peer_id == b
        ))
        return str(state) if state is not None else None

    async def _put(
        self, conn: AsyncConnection, tenant_id: int, a: int, b: int, state: str, now_ms: int
    ) -> None:
        stmt = insert_for(self._db, contacts).values(
            tenant_id=tenant_id, user_id=a, peer_id=b, state=state,
            created_at=now_ms, updated_at=now_ms,
        )
        await conn.execute(stmt.on_conflict_do_update(
            index_elements=[contacts.c.user_id, contacts.c.peer_id],
            set_={"state": state, "updated_at": now_ms},
            where=contacts.c.tenant_id == tenant_id,
        ))

    async def request_contact(self, tenant_id: int, user_id: int, peer_id: int, now_ms: int
                              ) -> str:
        """Ask ``peer_id`` to become a contact; returns the resulting state from the
        user's side: "requested", or "accepted" when the peer had asked already
        (or the two are contacts already)."""
        async with self._db.writer.begin() as conn:
            mine = await self._state(conn, tenant_id, user_id, peer_id)
            if mine in ("accepted", "requested"):
                return mine
            if mine == "incoming":
                await self._put(conn, tenant_id, user_id, peer_id, "accepted", now_ms)
                await self._put(conn, tenant_id, peer_id, user_id, "accepted", now_ms)
                return "accepted"
            await self._put(conn, tenant_id, user_id, peer_id, "requested", now_ms)
            await self._put(conn, tenant_id, peer_id, user_id, "incoming", now_ms)
            return "requested"

    async def accept_contact(self, tenant_id: int, user_id: int, peer_id: int, now_ms: int
                             ) -> None:
        """Accept ``peer_id``'s pending request; NotFound when there is none."""
        async with self._db.writer.begin() as conn:
            mine = await self._state(conn, tenant_id, user_id, peer_id)
            if mine == "accepted":
                return
            if mine != "incoming":
                raise NotFound("no pending contact request from this user")
            await self._put(conn, tenant_id, user_id, peer_id, "accepted", now_ms)
            await self._put(conn, tenant_id, peer_id, user_id, "accepted", now_ms)

    async def decline_contact(self, tenant_id: int, user_id: int, peer_id: int) -> None:
        """Decline ``peer_id``'s pending request (or withdraw one's own)."""
        async with self._db.writer.begin() as conn:
            mine = await self._state(conn, tenant_id, user_id, peer_id)
            if mine not in ("incoming", "requested"):
                raise NotFound("no pending contact request with this user")
            await self._drop_pair(conn, tenant_id, user_id, peer_id)

    async def remove_contact(self, tenant_id: int, user_id: int, peer_id: int) -> None:
        async with self._db.writer.begin() as conn:
            if await self._state(conn, tenant_id, user_id, peer_id) != "accepted":
                raise NotFound("not a contact")
            await self._drop_pair(conn, tenant_id, user_id, peer_id)

    async def list_contacts(
        self, tenant_id: int, user_id: int, states: Sequence[str], *, after: int = 0,
        limit: int = 50,
    ) -> list[Contact]:
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(
                select(contacts)
                .where(contacts.c.tenant_id == tenant_id, contacts.c.user_id == user_id,
                       contacts.c.state.in_(list(states)), contacts.c.peer_id > after)
                .order_by(contacts.c.peer_id)
                .limit(limit)
            )).mappings().all()
        return [Contact(r["peer_id"], r["state"], r["created_at"], r["updated_at"]) for r in rows]

    # -- member settings -----------------------------------------------------------
    async def set_member_settings(
        self, tenant_id: int, conv_id: int, user_id: int, *, pinned: bool | None = None,
        muted: bool | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        if pinned is not None:
            values["pinned"] = pinned
        if muted is not None:
            values["muted"] = muted
        if not values:
            return
        async with self._db.writer.begin() as conn:
            await conn.execute(update(members).where(
                members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id,
                members.c.user_id == user_id,
            ).values(**values))

    async def member_settings(
        self, tenant_id: int, user_id: int, conv_ids: Sequence[int]
    ) -> dict[int, MemberSettings]:
        if not conv_ids:
            return {}
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(members.c.conversation_id, members.c.pinned, members.c.muted).where(
                    members.c.tenant_id == tenant_id, members.c.user_id == user_id,
                    members.c.conversation_id.in_(list(conv_ids)),
                )
            )
            return {int(c): MemberSettings(bool(p), bool(m)) for c, p, m in rows}

    async def last_messages(
        self, tenant_id: int, keys: Sequence[tuple[int, int]]
    ) -> dict[int, StoredMessage]:
        """The messages at (conversation id, seq) ``keys`` (each conversation's last)
        that are ``tenant_id``'s.  Selected by key alone, the tenant checked on the
        rows: a tenant_id predicate can plan the read on every message of the
        tenant (see ``parley.store.messages._Statements``)."""
        keys = [k for k in keys if k[1] > 0]
        if not keys:
            return {}
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(
                select(messages).where(
                    tuple_(messages.c.conversation_id, messages.c.seq).in_(keys),
                )
            )).mappings().all()
        return {
            int(r["conversation_id"]): StoredMessage(
                conversation_id=r["conversation_id"], seq=r["seq"], msg_id=r["msg_id"],
                sender_id=r["sender_id"], sender_device=r["sender_device"], kind=r["kind"],
                body=bytes(r["body"]), created_at=r["created_at"], recalled=bool(r["recalled"]),
            )
            for r in rows if r["tenant_id"] == tenant_id
        }

    # -- groups --------------------------------------------------------------------
    async def group_state(self, tenant_id: int, conv_id: int) -> GroupState | None:
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(
                select(conversations.c.announcement, conversations.c.all_muted,
                       conversations.c.dissolved_at)
                .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id,
                       conversations.c.kind == "group")
            )).first()
        if row is None:
            return None
        return GroupState(str(row[0]), bool(row[1]), row[2])

    async def update_group(
        self, tenant_id: int, conv_id: int, *, name: str | None = None,
        announcement: str | None = None, all_muted: bool | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        for key, value in (("name", name), ("announcement", announcement),
                           ("all_muted", all_muted)):
            if value is not None:
                values[key] = value
        if not values:
            return
        async with self._db.writer.begin() as conn:
            await conn.execute(update(conversations).where(
                conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id,
                conversations.c.kind == "group",
            ).values(**values))

    async def group_rules(
        self, tenant_id: int, conv_ids: Iterable[int]
    ) -> dict[int, GroupRules]:
        """Who may post in each of these groups of the tenant (an unknown id: nobody
        muted; the membership check refuses its sends): one connection, two reads."""
        ids = sorted(set(conv_ids))
        if not ids:
            return {}
        async with self._db.reader.connect() as conn:
            all_muted = {int(cid): bool(flag) for cid, flag in await conn.execute(
                select(conversations.c.id, conversations.c.all_muted).where(
                    conversations.c.tenant_id == tenant_id, conversations.c.id.in_(ids))
            )}
            rows = await conn.execute(
                select(members.c.conversation_id, members.c.user_id, members.c.role,
                       members.c.send_muted_until).where(
                    members.c.tenant_id == tenant_id, members.c.conversation_id.in_(ids),
                    or_(members.c.role.in_(("owner", "admin")), members.c.send_muted_until > 0),
                )
            )
            privileged: dict[int, set[int]] = {cid: set() for cid in ids}
            muted: dict[int, dict[int, int]] = {cid: {} for cid in ids}
            for cid, uid, role, until in rows:
                if role in ("owner", "admin"):
                    privileged[int(cid)].add(int(uid))
                if until:
                    muted[int(cid)][int(uid)] = int(until)
        return {cid: GroupRules(all_muted.get(cid, False), frozenset(privileged[cid]), muted[cid])
                for cid in ids}

    async def set_send_muted(self, tenant_id: int, conv_id: int, user_id: int, until_ms: int
                             ) -> None:
        async with self._db.writer.begin() as conn:
            result = await conn.execute(update(members).where(
                members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id,
                members.c.user_id == user_id,
            ).values(send_muted_until=until_ms))
            if not result.rowcount:
                raise NotFound("not a member of this group")

    async def list_members(
        self, tenant_id: int, conv_id: int, *, after: int = 0, limit: int = 100
    ) -> list[MemberInfo]:
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(members.c.user_id, members.c.role, members.c.joined_at,
                       members.c.send_muted_until)
                .where(members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id,
                       members.c.user_id > after)
                .order_by(members.c.user_id)
                .limit(limit)
            )
            return [MemberInfo(int(u), str(r), int(j), int(m)) for u, r, j, m in rows]

    async def count_members(self, tenant_id: int, conv_id: int) -> int:
        async with self._db.reader.connect() as conn:
            n = await conn.scalar(select(func.count()).select_from(members).where(
                members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id
            ))
        return int(n or 0)

    async def dissolve(self, tenant_id: int, conv_id: int, now_ms: int) -> list[int]:
        """Mark the group dissolved and remove every member; returns who they were.
        The messages stay (for compliance export); nobody can read or send any more."""
        async with self._db.writer.begin() as conn:
            result = await conn.execute(update(conversations).where(
                conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id,
                conversations.c.kind == "group", conversations.c.dissolved_at.is_(None),
            ).values(dissolved_at=now_ms))
            if not result.rowcount:
                raise Conflict("the group is already dissolved")
            ids = [int(u) for u in (await conn.execute(select(members.c.user_id).where(
                members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id
            ))).scalars()]
            await conn.execute(delete(members).where(
                members.c.tenant_id == tenant_id, members.c.conversation_id == conv_id
            ))
        return ids

    # -- idempotency keys ------------------------------------------------------------
    async def claim_key(
        self, tenant_id: int, user_id: int, key: str, msg_id: str, now_ms: int
    ) -> str:
        """Bind ``key`` to ``msg_id`` unless it is bound already; returns the bound id."""
        async with self._db.writer.begin() as conn:
            await conn.execute(
                insert_for(self._db, idempotency_keys)
                .values(tenant_id=tenant_id, user_id=user_id, key=key, msg_id=msg_id,
                        created_at=now_ms)
                .on_conflict_do_nothing(
                    index_elements=[idempotency_keys.c.user_id, idempotency_keys.c.key]
                )
            )
            bound = await conn.scalar(select(idempotency_keys.c.msg_id).where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.user_id == user_id, idempotency_keys.c.key == key,
            ))
        if bound is None:
            raise NotFound("idempotency key belongs to another tenant")
        return str(bound)

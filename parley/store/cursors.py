"""Delivery and read cursors: how far each device has received, each user has read.

Both only move forward: an advance to a lower seq than the stored one changes
nothing, so acknowledgements may arrive late, twice or out of order.

* Delivery cursors are per (user, device, conversation): the highest seq the
  device acknowledged receiving (cumulatively).  They are written often, so
  ``advance_delivery`` takes many at once (``CursorWriter`` in
  ``parley.store.batcher`` coalesces them); ``delivery_cursors`` is what a
  reconnecting device's sync starts from.
* Read cursors are per (user, conversation), shared by the user's devices.
  ``MessageStore.append`` also moves a sender's read cursor to their message.

The caller (the messaging service) checks membership; these methods only keep
rows scoped by tenant: an upsert never touches another tenant's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, select

from parley.errors import NotFound
from parley.store.database import Database
from parley.store.messages import BulkRows
from parley.store.sql import insert_for
from parley.store.tables import conversations, delivery_cursors, read_cursors

__all__ = ["CursorStore", "DeliveryCursor"]


@dataclass(frozen=True, slots=True)
class DeliveryCursor:
    """Device ``device_id`` of ``user_id`` has received everything up to ``acked_seq``."""

    tenant_id: int
    user_id: int
    device_id: str
    conversation_id: int
    acked_seq: int
    updated_at: int


def _coalesce(items: Sequence[DeliveryCursor]) -> list[DeliveryCursor]:
    """One item per key (the highest seq), in key order (a stable lock order)."""
    best: dict[tuple[int, str, int], DeliveryCursor] = {}
    for item in items:
        key = (item.user_id, item.device_id, item.conversation_id)
        prev = best.get(key)
        if prev is None or item.acked_seq > prev.acked_seq:
            best[key] = item
    return [best[k] for k in sorted(best)]


class CursorStore:
    """Repository for delivery and read cursors; stateless apart from its database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        t = delivery_cursors
        self._delivery_rows = BulkRows(
            db, **{n: t.c[n].type for n in (
                "tenant_id", "user_id", "device_id", "conversation_id", "acked_seq", "updated_at"
            )}
        )
        # Only conversations of the row's own tenant, and never past their
        # last seq: a bogus ack can neither cross tenants nor skip future messages.
        r, c = self._delivery_rows.c, conversations.c
        source = select(
            r["tenant_id"], r["user_id"], r["device_id"], c.id,
            case((r["acked_seq"] < c.last_seq, r["acked_seq"]), else_=c.last_seq),
            r["updated_at"],
        ).where(c.id == r["conversation_id"], c.tenant_id == r["tenant_id"])
        stmt = insert_for(db, t).from_select(list(self._delivery_rows.c), source)
        # A WHERE rather than CASE: a cursor that would not move is not rewritten.
        self._delivery_upsert = stmt.on_conflict_do_update(
            index_elements=[t.c.user_id, t.c.device_id, t.c.conversation_id],
            set_={"acked_seq": stmt.excluded.acked_seq, "updated_at": stmt.excluded.updated_at},
            where=(stmt.excluded.acked_seq > t.c.acked_seq)
            & (t.c.tenant_id == stmt.excluded.tenant_id),
        )

    # -- delivery ----------------------------------------------------------------
    async def advance_delivery(self, items: Sequence[DeliveryCursor]) -> None:
        """Raise each cursor to its ``acked_seq`` (keeping the stored one if higher).

        One statement in one transaction for all items; several items for the
        same key keep the highest.  ``acked_seq`` is capped at the conversation's
        last seq; items naming a conversation outside their tenant are ignored.
        Rows are written in key order, so concurrent calls cannot deadlock.
        """
        rows = _coalesce(items)
        if not rows:
            return
        # One statement: on PostgreSQL it commits by itself (one round trip).
        async with self._db.oneshot.begin() as conn:
            await conn.execute(
                self._delivery_upsert,
                self._delivery_rows.params(
                    [(r.tenant_id, r.user_id, r.device_id, r.conversation_id, r.acked_seq,
                      r.updated_at) for r in rows]
                ),
            )

    async def delivery_cursors(
        self, tenant_id: int, user_id: int, device_id: str
    ) -> dict[int, int]:
        """{conversation id: acked seq} of one device (conversations never acked are absent)."""
        t = delivery_cursors
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(t.c.conversation_id, t.c.acked_seq).where(
                    t.c.tenant_id == tenant_id, t.c.user_id == user_id, t.c.device_id == device_id
                )
            )
            return {int(cid): int(seq) for cid, seq in rows}

    async def delivery_cursor(
        self, tenant_id: int, user_id: int, device_id: str, conv_id: int
    ) -> int:
        """The acked seq of one device in one conversation (0: never acked)."""
        t = delivery_cursors
        async with self._db.reader.connect() as conn:
            seq = await conn.scalar(
                select(t.c.acked_seq).where(
                    t.c.tenant_id == tenant_id, t.c.user_id == user_id,
                    t.c.device_id == device_id, t.c.conversation_id == conv_id,
                )
            )
        return int(seq or 0)

    # -- read --------------------------------------------------------------------
    async def advance_read(
        self, tenant_id: int, user_id: int, conv_id: int, seq: int, now_ms: int
    ) -> int:
        """Mark the conversation read up to ``seq``; returns the effective read seq.

        ``seq`` is capped at the conversation's last seq (a client cannot read
        the future) and never lowers the stored cursor.  Raises NotFound for a
        conversation not in this tenant.
        """
        t = read_cursors
        async with self._db.writer.begin() as conn:
            last = await conn.scalar(
                select(conversations.c.last_seq).where(
                    conversations.c.tenant_id == tenant_id, conversations.c.id == conv_id
                )
            )
            if last is None:
                raise NotFound("no such conversation")
            want = max(0, min(seq, int(last)))
            stmt = insert_for(self._db, t).values(
                tenant_id=tenant_id, user_id=user_id, conversation_id=conv_id,
                read_seq=want, updated_at=now_ms,
            )
            newer = stmt.excluded.read_seq > t.c.read_seq
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.user_id, t.c.conversation_id],
                set_={
                    "read_seq": case((newer, stmt.excluded.read_seq), else_=t.c.read_seq),
                    "updated_at": case((newer, stmt.excluded.updated_at), else_=t.c.updated_at),
                },
                where=t.c.tenant_id == stmt.excluded.tenant_id,
            )
            effective = await conn.scalar(stmt.returning(t.c.read_seq))
        # None only if the row belongs to another tenant (the WHERE refused the update).
        if effective is None:
            raise NotFound("no such conversation")
        return int(effective)

    async def read_cursors(self, tenant_id: int, user_id: int) -> dict[int, int]:
        """{conversation id: read seq} of a user (conversations never read are absent)."""
        t = read_cursors
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(t.c.conversation_id, t.c.read_seq).where(
                    t.c.tenant_id == tenant_id, t.c.user_id == user_id
                )
            )
            return {int(cid): int(seq) for cid, seq in rows}

    async def read_cursor(self, tenant_id: int, user_id: int, conv_id: int) -> int:
        """The user's read seq in one conversation (0 when never read)."""
        t = read_cursors
        async with self._db.reader.connect() as conn:
            seq = await conn.scalar(
                select(t.c.read_seq).where(
                    t.c.tenant_id == tenant_id, t.c.user_id == user_id,
                    t.c.conversation_id == conv_id,
                )
            )
        return int(seq or 0)

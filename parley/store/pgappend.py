"""The PostgreSQL statements of ``MessageStore.append``, run through asyncpg directly.

Why not SQLAlchemy Core here (the rest of the store uses it): the append is
the one hot transaction of the node, and through Core it took ~9 round trips
per batch (BEGIN, SET LOCAL, lock, known ids, membership, bump, insert,
read cursors, COMMIT; plus a 3-round-trip pre-ping) and each statement cost
~100-200 us of the node's CPU in Core and the asyncpg adapter.  Profiled at
1,000 msg/s (100 users, batches of a few messages): 38% of the node's CPU
was the append, at ~540 us of server CPU per message.  Under load the round
trips are what hurts most: every reply waits for a turn of a busy event loop,
so a batch of 9 round trips took 1-3 s at 4,000 msg/s, batches hit
``max_batch`` and the queue overflowed.

Here a batch is four round trips whatever its size: BEGIN, one read (the
conversation rows locked in id order, the ids already stored, the senders'
memberships: one statement with a ``UNION ALL``), one write (bump last_seq,
insert the messages, move the senders' read cursors: one statement of
data-modifying CTEs on three different tables), COMMIT; a batch holding
recalls adds one tombstone update.  Every array goes in as one parameter per
column (``unnest``), so one statement plan serves any batch size.

The SQLite path and the guarantees (order, idempotency, per-item refusal)
stay in ``parley.store.messages``; this module only moves the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["READ_SQL", "TOMBSTONE_SQL", "WRITE_SQL", "PgBatch"]

# Kinds of rows READ_SQL returns, in its first column.
LOCKED, KNOWN, MEMBER = 0, 1, 2

# The conversation rows are locked in ascending id order (LockRows above the
# Sort), so concurrent batches never deadlock.  NO KEY UPDATE: serialises writers
# of last_seq, yet lets other transactions insert rows referencing the
# conversation (their foreign-key checks take KEY SHARE).  Under READ COMMITTED a
# batch that waited for the lock reads the row's newest last_seq; the id lookup
# may miss an id committed while it waited, in which case the INSERT's unique
# index refuses it and the caller retries the batch once (it then sees a duplicate).
READ_SQL = """
WITH locked AS MATERIALIZED (
    SELECT id, tenant_id, last_seq FROM conversations
    WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
)
SELECT 0 AS k, id AS a, tenant_id AS b, last_seq AS c,
       NULL::text AS msg_id, NULL::text AS digest, NULL::bigint AS created_at, NULL::text AS kind
FROM locked
UNION ALL
SELECT 1, m.conversation_id, m.tenant_id, m.seq, m.msg_id, m.digest, m.created_at, m.kind
FROM messages m JOIN unnest($2::bigint[], $3::text[]) AS k(t, id)
    ON m.tenant_id = k.t AND m.msg_id = k.id
UNION ALL
SELECT 2, mb.conversation_id, mb.user_id, NULL, NULL, NULL, NULL, NULL
FROM members mb JOIN unnest($4::bigint[], $5::bigint[]) AS p(c, u)
    ON mb.conversation_id = p.c AND mb.user_id = p.u
"""

# Three tables, one statement: the CTEs see the same snapshot and touch
# different tables, so none depends on another's effect.  Messages go in in the
# order given (sorted by tenant and msg_id by the caller: two transactions
# inserting the same ids wait on each other's unique-index entries in one order).
WRITE_SQL = """
WITH bump AS (
    UPDATE conversations c SET last_seq = b.seq
    FROM unnest($1::bigint[], $2::bigint[]) AS b(id, seq) WHERE c.id = b.id
), ins AS (
    INSERT INTO messages (tenant_id, conversation_id, seq, msg_id, sender_id, sender_device,
                          kind, body, digest, created_at, recalled)
    SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[],
                         $8::text[], $9::text[], $10::bytea[], $11::text[], $12::bigint[],
                         $13::boolean[])
), rd AS (
    INSERT INTO read_cursors AS r (tenant_id, user_id, conversation_id, read_seq, updated_at)
    SELECT * FROM unnest($14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[],
                         $18::bigint[])
    ON CONFLICT (user_id, conversation_id) DO UPDATE
        SET read_seq = excluded.read_seq, updated_at = excluded.updated_at
        WHERE r.read_seq < excluded.read_seq AND r.tenant_id = excluded.tenant_id
)
SELECT 1
"""

TOMBSTONE_SQL = """
UPDATE messages m SET body = '\\x'::bytea, recalled = true
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS t(tenant_id, conversation_id, seq)
WHERE m.tenant_id = t.tenant_id AND m.conversation_id = t.conversation_id AND m.seq = t.seq
"""


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (empty lists for no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


class PgBatch:
    """The parameters of one batch's statements, built from plain tuples."""

    @staticmethod
    def read_args(
        conv_ids: Iterable[int], keys: Iterable[tuple[int, str]],
        pairs: Iterable[tuple[int, int]],
    ) -> list[Any]:
        k = list(keys)
        p = list(pairs)
        return [
            sorted(set(conv_ids)),
            [t for t, _ in k], [i for _, i in k],
            [c for c, _ in p], [u for _, u in p],
        ]

    @staticmethod
    def write_args(
        bumped: Sequence[tuple[int, int]], rows: Sequence[Sequence[Any]],
        reads: Sequence[Sequence[Any]],
    ) -> list[Any]:
        return [*_columns(bumped, 2), *_columns(rows, 11), *_columns(reads, 5)]

    @staticmethod
    def tombstone_args(tombstones: Sequence[tuple[int, int, int]]) -> list[Any]:
        return _columns(tombstones, 3)

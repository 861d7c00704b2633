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

Most batches are ONE round trip (``ONE_SQL``): a single statement, run in
autocommit, that locks the conversation rows, looks up the ids, checks the
senders' memberships, numbers the new messages per conversation and writes
them (bump, insert, read cursors) -- PostgreSQL commits it before answering,
so its result is the ack.  Profiled at 1,000 msg/s (mostly one-message
batches), the four round trips below were 39% of the node's samples and a
commit took 3.7 ms on average in the node against 1.6 ms for the same
statements alone: every round trip waits for a turn of the node's loop.
That statement handles batches without recalls whose ids are distinct; any
other batch takes the general path.  A batch of one message (most batches at
light load) takes ``SINGLE_SQL``, the same statement with scalar parameters.

The general path is four round trips whatever the batch's size: BEGIN, one read (the
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

__all__ = ["ONE_SQL", "READ_SQL", "SINGLE_SQL", "TOMBSTONE_SQL", "WRITE_SQL", "PgBatch"]

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

# Statuses ONE_SQL returns per item, in the batch's order.
CREATED, DUPLICATE, CONFLICT, NO_CONVERSATION, NOT_MEMBER = range(5)

# The single-statement append.  Same guarantees as READ_SQL + WRITE_SQL, and
# the same decisions in the same order as ``messages._plan``: a known id is a
# duplicate (same digest) or a conflict, then the conversation must exist in
# the sender's tenant, then the sender must be a member; the others get
# last_seq + 1, 2, ... in batch order per conversation.
#
# Concurrency under READ COMMITTED: the statement's snapshot is taken before
# it waits for a conversation's row lock; the lock returns the row's newest
# version (so last_seq is current), and the UPDATE re-reads that version too.
# An id committed by another node while this statement waited is not in the
# snapshot: the INSERT's unique index refuses it, nothing is stored, and the
# caller retries the batch once (then it is a duplicate), as on the general path.
ONE_SQL = """
WITH i AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                         $6::text[], $7::bytea[], $8::text[], $9::bigint[])
        WITH ORDINALITY AS i(tenant_id, conversation_id, msg_id, sender_id, sender_device,
                             kind, body, digest, created_at, ord)
), locked AS MATERIALIZED (
    SELECT id, tenant_id, last_seq FROM conversations
    WHERE id = ANY($10::bigint[]) ORDER BY id FOR NO KEY UPDATE
), d AS MATERIALIZED (
    SELECT i.*, k.seq AS known_seq, k.created_at AS known_at, l.last_seq,
        CASE WHEN k.msg_id IS NOT NULL THEN CASE WHEN k.digest = i.digest THEN 1 ELSE 2 END
             WHEN l.id IS NULL OR l.tenant_id <> i.tenant_id THEN 3
             WHEN mb.user_id IS NULL THEN 4
             ELSE 0 END AS status
    FROM i
    LEFT JOIN messages k ON k.tenant_id = i.tenant_id AND k.msg_id = i.msg_id
    LEFT JOIN locked l ON l.id = i.conversation_id
    LEFT JOIN members mb ON mb.conversation_id = i.conversation_id AND mb.user_id = i.sender_id
), n AS MATERIALIZED (
    SELECT ord, tenant_id, conversation_id, msg_id, sender_id, sender_device, kind, body,
           digest, created_at,
           last_seq + row_number() OVER (PARTITION BY conversation_id ORDER BY ord) AS seq
    FROM d WHERE status = 0
), bump AS (
    UPDATE conversations c SET last_seq = b.seq
    FROM (SELECT conversation_id, max(seq) AS seq FROM n GROUP BY conversation_id) AS b
    WHERE c.id = b.conversation_id
), ins AS (
    INSERT INTO messages (tenant_id, conversation_id, seq, msg_id, sender_id, sender_device,
                          kind, body, digest, created_at, recalled)
    SELECT tenant_id, conversation_id, seq, msg_id, sender_id, sender_device, kind, body,
           digest, created_at, false
    FROM n ORDER BY tenant_id, msg_id
), rd AS (
    INSERT INTO read_cursors AS r (tenant_id, user_id, conversation_id, read_seq, updated_at)
    SELECT DISTINCT ON (sender_id, conversation_id)
           tenant_id, sender_id, conversation_id, seq, created_at
    FROM n ORDER BY sender_id, conversation_id, seq DESC
    ON CONFLICT (user_id, conversation_id) DO UPDATE
        SET read_seq = excluded.read_seq, updated_at = excluded.updated_at
        WHERE r.read_seq < excluded.read_seq AND r.tenant_id = excluded.tenant_id
)
SELECT d.status, coalesce(n.seq, d.known_seq) AS seq, coalesce(n.created_at, d.known_at) AS at
FROM d LEFT JOIN n ON n.ord = d.ord
ORDER BY d.ord
"""

# ONE_SQL for a batch of one message, the usual batch at light load: scalar
# parameters instead of arrays, no window function, no sorts, and the seq taken
# by the UPDATE itself (``last_seq + 1 ... RETURNING``: the row lock and the
# newest version in one step) instead of a locking read and then an update.
# Same decisions in the same order, same result row.  Measured alone (one
# connection, 2,000 appends in a row): 0.45 ms with custom plans and 0.31-0.37 ms
# generic, against ONE_SQL's 0.68 and 0.51; a one-row INSERT is 0.25-0.29 ms.
# Parameters: tenant, conversation, msg_id, sender, device, kind, body, digest,
# created_at.
SINGLE_SQL = """
WITH k AS MATERIALIZED (
    SELECT seq, digest, created_at FROM messages WHERE tenant_id = $1::bigint AND msg_id = $3::text
), d AS MATERIALIZED (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM k) THEN
            CASE WHEN (SELECT digest FROM k) = $8::text THEN 1 ELSE 2 END
        WHEN (SELECT tenant_id FROM conversations WHERE id = $2::bigint)
             IS DISTINCT FROM $1::bigint THEN 3
        WHEN NOT EXISTS (SELECT 1 FROM members
                         WHERE conversation_id = $2::bigint AND user_id = $4::bigint) THEN 4
        ELSE 0 END AS status
), bump AS (
    UPDATE conversations SET last_seq = last_seq + 1
    WHERE id = $2::bigint AND (SELECT status FROM d) = 0
    RETURNING last_seq AS seq
), ins AS (
    INSERT INTO messages (tenant_id, conversation_id, seq, msg_id, sender_id, sender_device,
                          kind, body, digest, created_at, recalled)
    SELECT $1::bigint, $2::bigint, seq, $3::text, $4::bigint, $5::text, $6::text, $7::bytea,
           $8::text, $9::bigint, false
    FROM bump
), rd AS (
    INSERT INTO read_cursors AS r (tenant_id, user_id, conversation_id, read_seq, updated_at)
    SELECT $1::bigint, $4::bigint, $2::bigint, seq, $9::bigint FROM bump
    ON CONFLICT (user_id, conversation_id) DO UPDATE
        SET read_seq = excluded.read_seq, updated_at = excluded.updated_at
        WHERE r.read_seq < excluded.read_seq AND r.tenant_id = excluded.tenant_id
)
SELECT d.status,
       CASE WHEN d.status = 0 THEN (SELECT seq FROM bump) ELSE (SELECT seq FROM k) END AS seq,
       CASE WHEN d.status = 0 THEN $9::bigint ELSE (SELECT created_at FROM k) END AS at
FROM d
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
    def one_args(rows: Sequence[Sequence[Any]]) -> list[Any]:
        """ONE_SQL's parameters from rows (tenant, conversation, msg_id, sender,
        device, kind, body, digest, created_at), in the batch's order."""
        cols = _columns(rows, 9)
        return [*cols, sorted(set(cols[1]))]

    @staticmethod
    def write_args(
        bumped: Sequence[tuple[int, int]], rows: Sequence[Sequence[Any]],
        reads: Sequence[Sequence[Any]],
    ) -> list[Any]:
        return [*_columns(bumped, 2), *_columns(rows, 11), *_columns(reads, 5)]

    @staticmethod
    def tombstone_args(tombstones: Sequence[tuple[int, int, int]]) -> list[Any]:
        return _columns(tombstones, 3)

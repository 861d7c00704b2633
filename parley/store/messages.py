"""Messages: the append path (seq assignment, idempotency, recall) and the read paths.

Guarantees of ``MessageStore.append`` (the only writer of messages):

* **One transaction per batch.**  Either every stored item of the batch is
  committed or none is; results are returned only after the commit.
* **Order.**  Each conversation's ``last_seq`` is incremented in the same
  transaction that inserts its messages, so seqs are gapless and monotonic per
  conversation, in the batch's order.  On PostgreSQL the conversation rows are
  locked (``SELECT ... FOR NO KEY UPDATE``) in ascending id order first, so concurrent
  batches on several nodes serialise per conversation and never deadlock; on
  SQLite the writer's ``BEGIN IMMEDIATE`` serialises whole transactions.
* **Idempotency.**  ``(tenant_id, msg_id)`` is unique.  Sending a stored id
  again (or twice in one batch) yields "duplicate" with the original seq and
  created_at when the digest matches, "conflict" when it does not; neither
  consumes a seq.  The digest survives a recall, so a resend of a recalled
  message is still recognised.  If two nodes race on the same id, the unique
  constraint fires and the batch is retried once (it then sees the duplicate).
* **Per-item refusal.**  An item is "rejected" (and the rest of the batch still
  commits) when its conversation does not exist in its tenant ("not_found"),
  its sender is not a member of it ("not_member"), or a recall's target is not
  a non-recall message of the same conversation and tenant ("not_found").
* **Recall.**  A "recall" item tombstones its target (body emptied,
  ``recalled`` true) in the same transaction that stores the recall event; the
  target may be an earlier item of the same batch.  Permission and time-window
  checks belong to the messaging service (``by_msg_id`` gives it what it needs).
* **Sending implies reading.**  Each stored message moves its sender's read
  cursor up to its seq (never backwards), so a user's own messages are not
  counted as unread.

Cost: a fixed number of statements per batch whatever its size -- lock the
conversations, look up the ids, check membership, bump the seqs, insert, move
the senders' read cursors, and one tombstone update when the batch holds
recalls.  On PostgreSQL a batch without recalls or repeated ids is ONE
statement run in autocommit (one round trip, committed before it answers);
the others go as two statements (one read, one write of data-modifying CTEs)
in four round trips with BEGIN and COMMIT -- both through asyncpg directly
(``parley.store.pgappend`` says why).  Each takes all rows at
once through ``unnest()`` of array parameters.  Until ``messages`` is big, the
writer's connections plan every statement for its actual parameters
(``force_custom_plan``, see ``parley.store.database``): a generic plan of the
id lookup, chosen while the table was small, scans a tenant's rows comparing
each with every id of the batch; past ``GENERIC_PLANS_AFTER_BYTES`` the append
switches to generic plans (``MessageStore`` says why).  On SQLite the
transaction runs with the sqlite3 module on a connection of its own, its
statements on the event loop's thread and its COMMIT on a worker thread
(``MessageStore._append_sqlite`` says why).

Measured on the 2-core development VM (PostgreSQL 15 on the same cores, other
test suites running alongside, so figures vary about 2x between runs), ``append``
of 500-message batches, one tenant:

    backend      500 conversations/batch    5 conversations/batch
    SQLite       10,000-23,000 msg/s        14,000-35,000 msg/s   (WAL, synchronous=FULL)
    PostgreSQL    4,600-13,200 msg/s         7,000-16,000 msg/s

Through ``WriteBatcher`` (1,000 concurrent submitters, 500 conversations):
SQLite 10,000-13,800 msg/s; PostgreSQL 6,000-8,100 (1 partition), 9,000-10,800
(4 partitions).  On PostgreSQL the client spends ~37 us of CPU per message
(mostly asyncpg encoding the arrays); the server's INSERT spends about half its
time in the three foreign-key checks per row (dropped since, migration 0008).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    Select,
    and_,
    bindparam,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import TypeEngine

from parley.errors import IdempotencyConflict, NotFound, NotMember
from parley.store import pgappend
from parley.store.database import Backend, Database
from parley.store.pgappend import (
    ONE_SQL,
    READ_SQL,
    SINGLE_SQL,
    TOMBSTONE_SQL,
    WRITE_SQL,
    PgBatch,
)
from parley.store.tables import conversations, members, messages

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "RECALL_KIND",
    "AppendResult",
    "AppendStatus",
    "BulkRows",
    "MessageStore",
    "NewMessage",
    "StoredMessage",
    "SyncPage",
]

AppendStatus = Literal["created", "duplicate", "conflict", "rejected"]
RECALL_KIND = "recall"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store, as validated by the messaging service.

    ``body`` is canonical JSON; ``digest`` is computed by the caller over
    (conversation, kind, body) and decides duplicate vs conflict on resend.
    For kind "recall", ``recall_target`` is the msg_id to tombstone.
    """

    tenant_id: int
    conversation_id: int
    msg_id: str
    sender_id: int
    sender_device: str
    kind: str
    body: bytes
    digest: str
    created_at: int
    recall_target: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    conversation_id: int
    seq: int
    msg_id: str
    sender_id: int
    sender_device: str
    kind: str
    body: bytes  # b"" once recalled
    created_at: int
    recalled: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of one item of a batch.

    "created" and "duplicate" carry the stored row's ``seq`` and ``created_at``
    (for a duplicate: the original's); acknowledge both to the sender.
    "conflict" and "rejected" carry an error ``code`` (from ``parley.errors``)
    and a ``message``, and stored nothing.
    """

    status: AppendStatus
    seq: int | None = None
    created_at: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """True when the message is stored (now or before)."""
        return self.status in ("created", "duplicate")


@dataclass(frozen=True, slots=True)
class SyncPage:
    """Messages after the caller's cursors, ordered by (conversation_id, seq).

    ``more`` is true when further messages remain: advance the cursors to the
    last seq of each conversation in ``messages`` and ask again.
    """

    messages: list[StoredMessage]
    more: bool


_INSERT_COLUMNS = (
    "tenant_id", "conversation_id", "seq", "msg_id", "sender_id", "sender_device", "kind",
    "body", "digest", "created_at", "recalled",
)
_MESSAGE_COLUMNS = (
    messages.c.conversation_id, messages.c.seq, messages.c.msg_id, messages.c.sender_id,
    messages.c.sender_device, messages.c.kind, messages.c.body, messages.c.created_at,
    messages.c.recalled,
)


_GONE = 1 << 62  # a conversation whose messages retention deleted: nothing to sync


def _page_keys(
    last_seqs: Sequence[tuple[int, int]], cursors: Mapping[int, int], floors: Mapping[int, int],
    limit: int,
) -> tuple[list[tuple[int, int]], bool]:
    """The (conversation, seq) keys of one sync page, and whether more follow."""
    keys: list[tuple[int, int]] = []
    more = False
    for cid, last in last_seqs:
        start = max(cursors.get(cid, 0), floors.get(cid, 0))
        if last <= start:
            continue
        room = limit - len(keys)
        if room == 0:
            more = True
            break
        stop = min(last, start + room)
        keys.extend((cid, seq) for seq in range(start + 1, stop + 1))
        more = stop < last
    return keys, more


def _of_tenant(rows: Sequence[RowMapping], tenant_id: int) -> list[StoredMessage]:
    """The rows (selected with their ``tenant_id``) that are ``tenant_id``'s, as
    messages: the tenant check of a read that selects by conversation only (see
    ``_Statements``)."""
    return [_stored(r) for r in rows if r["tenant_id"] == tenant_id]


def _stored(row: RowMapping) -> StoredMessage:
    return StoredMessage(
        conversation_id=row["conversation_id"], seq=row["seq"], msg_id=row["msg_id"],
        sender_id=row["sender_id"], sender_device=row["sender_device"], kind=row["kind"],
        body=bytes(row["body"]), created_at=row["created_at"], recalled=bool(row["recalled"]),
    )


def _refused(status: AppendStatus, code: str, message: str) -> AppendResult:
    return AppendResult(status=status, code=code, message=message)


_NO_CONVERSATION = _refused("rejected", NotFound.code, "no such conversation")
_NOT_MEMBER = _refused("rejected", NotMember.code, "the sender is not a member")
_NO_TARGET = _refused("rejected", NotFound.code, "no such message to recall in this conversation")
_CONFLICT = _refused(
    "conflict", IdempotencyConflict.code, "message id already used with a different payload"
)


# -- bulk statements ---------------------------------------------------------------


class BulkRows:
    """Many rows bound to one statement, the fastest way on each backend.

    SQLite: ``executemany`` of one prepared statement (a C loop in sqlite3).
    PostgreSQL: one statement over ``unnest()`` of one array parameter per
    column -- one execution and one plan whatever the row count, where
    asyncpg's ``executemany`` executes the statement once per row.
    Build the statement with ``c[name]``; bind rows with ``params(rows)``.
    """

    def __init__(self, db: Database, **types: TypeEngine[Any]) -> None:
        pg = self._pg = db.backend == "postgresql"
        self._names = tuple(f"r_{n}" for n in types)
        self.c: dict[str, ColumnElement[Any]]
        if pg:
            src = func.unnest(
                *[bindparam(f"r_{n}", type_=ARRAY(t)) for n, t in types.items()]
            ).table_valued(*types).render_derived()
            self.c = {n: src.c[n] for n in types}
        else:
            self.c = {n: bindparam(f"r_{n}", type_=t) for n, t in types.items()}

    def params(self, rows: Sequence[Sequence[Any]]) -> dict[str, Any] | list[dict[str, Any]]:
        """Bind the rows (at least one), each a sequence in the constructor's column order."""
        if self._pg:
            columns = zip(*rows, strict=True)
            return {n: list(col) for n, col in zip(self._names, columns, strict=True)}
        return [dict(zip(self._names, row, strict=True)) for row in rows]


class _Keys:
    """Rows of a table matching any of many key tuples, in one statement.

    PostgreSQL: a join with ``unnest()`` of one array per key column (one
    statement text whatever the count); SQLite: ``(a, b) IN (VALUES ...)``.
    """

    def __init__(self, db: Database, *cols: Column[Any]) -> None:
        pg = self._pg = db.backend == "postgresql"
        self._n = len(cols)
        self._table = cols[0].table
        if pg:
            names = [f"k{i}" for i in range(self._n)]
            src = func.unnest(
                *[bindparam(n, type_=ARRAY(col.type)) for n, col in zip(names, cols, strict=True)]
            ).table_valued(*names).render_derived()
            self._src = src
            self._on = and_(*(col == src.c[n] for n, col in zip(names, cols, strict=True)))
        else:
            self._on = tuple_(*cols).in_(bindparam("keys", expanding=True))

    def select(self, *what: ColumnElement[Any]) -> Select[Any]:
        if self._pg:
            return select(*what).join_from(self._table, self._src, self._on)
        return select(*what).where(self._on)

    def params(self, keys: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
        """Bind the keys (at least one)."""
        keys = list(keys)
        if self._pg:
            return {f"k{i}": [k[i] for k in keys] for i in range(self._n)}
        return {"keys": keys}


class _Statements:
    """The statements built once per store (so compiled once, prepared once)."""

    # The reads of a conversation's messages select by conversation id alone and
    # check the tenant on the rows they return (``_of_tenant``; conversation ids
    # are unique across tenants, so a conversation's rows are all of one tenant).
    # With a tenant_id predicate PostgreSQL may plan the read on the (tenant_id,
    # msg_id) index when its statistics have not seen the tenant (a new tenant:
    # estimated at one row) and read every message of the tenant: 23-77 ms per
    # read against 0.1 ms, measured on a tenant of 70,000 messages in a table of
    # 10 million.  A node restarted under load spent its pool on such syncs for
    # 15 s while its users' sends waited for a connection.

    def __init__(self, db: Database) -> None:
        m = messages.c
        # sync_page: the messages with these (conversation, seq) keys, in order.
        self.page_keys = _Keys(db, m.conversation_id, m.seq)
        self.page = self.page_keys.select(*_MESSAGE_COLUMNS, m.tenant_id).order_by(
            m.conversation_id, m.seq
        )
        # history: a conversation's page after, or before, a seq.
        self.after = (
            select(*_MESSAGE_COLUMNS, m.tenant_id)
            .where(m.conversation_id == bindparam("conv"), m.seq > bindparam("seq"))
            .order_by(m.seq)
            .limit(bindparam("limit"))
        )
        self.before = (
            select(*_MESSAGE_COLUMNS, m.tenant_id)
            .where(m.conversation_id == bindparam("conv"), m.seq < bindparam("seq"))
            .order_by(m.seq.desc())
            .limit(bindparam("limit"))
        )
        # sync_page after retention: the first kept seq of these conversations.
        self.first_kept = (
            select(m.conversation_id, func.min(m.seq))
            .where(m.conversation_id.in_(bindparam("convs", expanding=True)))
            .group_by(m.conversation_id)
        )


@dataclass(slots=True)
class _Known:
    """A message already stored, or created earlier in the batch being appended."""

    conversation_id: int
    seq: int
    digest: str
    created_at: int
    kind: str
    row: list[Any] | None = None  # its pending INSERT row when created in this batch


_BODY, _RECALLED = _INSERT_COLUMNS.index("body"), _INSERT_COLUMNS.index("recalled")


def _lookup_keys(batch: Sequence[NewMessage]) -> set[tuple[int, str]]:
    """(tenant, msg_id) of every item and of every recall's target."""
    keys = {(m.tenant_id, m.msg_id) for m in batch}
    keys.update((m.tenant_id, m.recall_target) for m in batch if m.recall_target is not None)
    return keys


def _one_statement(batch: Sequence[NewMessage]) -> bool:
    """Whether ``pgappend.ONE_SQL`` can store ``batch``: no recalls (their
    targets are tombstoned) and no id twice (the second is a duplicate of the
    first, which that statement's lookup cannot see)."""
    if any(m.recall_target is not None or m.kind == RECALL_KIND for m in batch):
        return False
    return len({(m.tenant_id, m.msg_id) for m in batch}) == len(batch)


_ONE_REFUSED = {
    pgappend.CONFLICT: _CONFLICT, pgappend.NO_CONVERSATION: _NO_CONVERSATION,
    pgappend.NOT_MEMBER: _NOT_MEMBER,
}


def _one_result(row: Sequence[Any]) -> AppendResult:
    status, seq, created_at = row
    if status == pgappend.CREATED:
        return AppendResult(status="created", seq=seq, created_at=created_at)
    if status == pgappend.DUPLICATE:
        return AppendResult(status="duplicate", seq=seq, created_at=created_at)
    return _ONE_REFUSED[status]


@dataclass(slots=True)
class _Plan:
    """What a batch writes, decided from what its reads found (both backends)."""

    results: list[AppendResult]
    rows: list[list[Any]]  # messages to insert, in (tenant, msg_id) order
    bumped: list[tuple[int, int]]  # (conversation, new last_seq), by conversation
    reads: list[tuple[int, int, int, int, int]]  # read cursors: tenant, user, conv, seq, at
    tombstones: list[tuple[int, int, int]]  # (tenant, conversation, seq) to empty


def _plan(
    batch: Sequence[NewMessage], tenant_of: Mapping[int, int], last_seq: dict[int, int],
    known: dict[tuple[int, str], _Known], membership: set[tuple[int, int]],
) -> _Plan:
    """Decide each item: duplicate, conflict, refused, or created with the next seq.

    ``tenant_of``/``last_seq`` come from the locked conversation rows, ``known``
    from the id lookup (both are updated with the batch's own items), and
    ``membership`` holds the (conversation, sender) pairs that are members.
    """
    results: list[AppendResult] = []
    rows: list[list[Any]] = []
    tombstones: list[tuple[int, int, int]] = []
    bumped: dict[int, int] = {}
    reads: dict[tuple[int, int, int], tuple[int, int]] = {}
    for m in batch:
        key = (m.tenant_id, m.msg_id)
        prior = known.get(key)
        if prior is not None:
            if prior.digest == m.digest:
                results.append(
                    AppendResult(status="duplicate", seq=prior.seq, created_at=prior.created_at)
                )
            else:
                results.append(_CONFLICT)
            continue
        if tenant_of.get(m.conversation_id) != m.tenant_id:
            results.append(_NO_CONVERSATION)
            continue
        if (m.conversation_id, m.sender_id) not in membership:
            results.append(_NOT_MEMBER)
            continue
        target: _Known | None = None
        if m.kind == RECALL_KIND:
            target = known.get((m.tenant_id, m.recall_target or ""))
            if (
                target is None
                or target.conversation_id != m.conversation_id
                or target.kind == RECALL_KIND
            ):
                results.append(_NO_TARGET)
                continue
        seq = last_seq[m.conversation_id] + 1
        last_seq[m.conversation_id] = bumped[m.conversation_id] = seq
        row = [
            m.tenant_id, m.conversation_id, seq, m.msg_id, m.sender_id, m.sender_device,
            m.kind, m.body, m.digest, m.created_at, False,
        ]
        rows.append(row)
        known[key] = _Known(m.conversation_id, seq, m.digest, m.created_at, m.kind, row)
        reads[(m.tenant_id, m.sender_id, m.conversation_id)] = (seq, m.created_at)
        if target is not None:
            if target.row is not None:  # created earlier in this batch
                target.row[_BODY], target.row[_RECALLED] = b"", True
            else:
                tombstones.append((m.tenant_id, target.conversation_id, target.seq))
        results.append(AppendResult(status="created", seq=seq, created_at=m.created_at))
    # In (tenant, msg_id) order: two transactions inserting the same ids
    # wait on each other's unique-index entries in one order, never in a cycle.
    rows.sort(key=lambda row: (row[0], row[3]))
    return _Plan(
        results, rows, sorted(bumped.items()),
        [(*k, *v) for k, v in sorted(reads.items())], tombstones,
    )


# (Statements below are built from column names and "?" placeholders only.)
_SQLITE_INSERT = (
    f"INSERT INTO messages ({', '.join(_INSERT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"
)
_SQLITE_READ = (
    "INSERT INTO read_cursors (tenant_id, user_id, conversation_id, read_seq, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, conversation_id) DO UPDATE "
    "SET read_seq = excluded.read_seq, updated_at = excluded.updated_at "
    "WHERE read_cursors.read_seq < excluded.read_seq "
    "AND read_cursors.tenant_id = excluded.tenant_id"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _sqlite_commit(c: sqlite3.Connection) -> None:
    """COMMIT the append's transaction (on a worker thread); ROLLBACK if it fails."""
    try:
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise


def _locked(c: sqlite3.Connection, exc: sqlite3.OperationalError) -> bool:
    """BEGIN IMMEDIATE found another connection's write lock (nothing was done)."""
    return not c.in_transaction and "locked" in str(exc)


async def _sqlite_write_when_free(
    c: sqlite3.Connection, batch: Sequence[NewMessage], *, wait_s: float = 30.0,
) -> list[AppendResult]:
    """``_sqlite_write`` once no other connection holds the write lock -- another
    process on the same file (``parley user create`` while a node runs) -- retried
    with a short backoff instead of SQLite's busy wait, which would block the
    loop; gives up after ``wait_s`` as ``busy_timeout`` did."""
    deadline = time.monotonic() + wait_s
    delay = 0.001
    while True:
        try:
            return _sqlite_write(c, batch)
        except sqlite3.OperationalError as exc:
            if not _locked(c, exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _sqlite_write(c: sqlite3.Connection, batch: Sequence[NewMessage]) -> list[AppendResult]:
    """``MessageStore.append``'s statements on SQLite, up to (not including)
    COMMIT: BEGIN IMMEDIATE (the write lock first: no upgrade deadlock), the same
    reads and decisions (``_plan``) as on PostgreSQL, then the writes.  Rolls
    back and raises on any error."""
    c.execute("BEGIN IMMEDIATE")
    try:
        conv_ids = sorted({m.conversation_id for m in batch})
        tenant_of: dict[int, int] = {}
        last_seq: dict[int, int] = {}
        for cid, tid, seq in c.execute(
            "SELECT id, tenant_id, last_seq FROM conversations "  # noqa: S608
            f"WHERE id IN ({_marks(len(conv_ids))})", conv_ids,
        ):
            tenant_of[cid], last_seq[cid] = tid, seq
        by_tenant: dict[int, list[str]] = {}
        for tid, mid in _lookup_keys(batch):
            by_tenant.setdefault(tid, []).append(mid)
        known: dict[tuple[int, str], _Known] = {}
        for tid, mids in by_tenant.items():
            for mid, cid, seq, digest, at, kind in c.execute(
                "SELECT msg_id, conversation_id, seq, digest, created_at, kind "  # noqa: S608
                f"FROM messages WHERE tenant_id = ? AND msg_id IN ({_marks(len(mids))})",
                [tid, *mids],
            ):
                known[(tid, mid)] = _Known(cid, seq, digest, at, kind)
        pairs = {
            (m.conversation_id, m.sender_id)
            for m in batch
            if tenant_of.get(m.conversation_id) == m.tenant_id
        }
        membership: set[tuple[int, int]] = set()
        if pairs:
            # CROSS JOIN keeps the batch's pairs outside: one index probe per pair
            # ("conversation_id IN (...) AND user_id IN (...)" probed every
            # combination: 18 of a 400-message batch's 30 ms).
            for cid, uid in c.execute(
                "SELECT m.conversation_id, m.user_id "  # noqa: S608
                f"FROM (VALUES {', '.join(['(?, ?)'] * len(pairs))}) AS p "
                "CROSS JOIN members m ON m.conversation_id = p.column1 AND m.user_id = p.column2",
                [x for pair in pairs for x in pair],
            ):
                membership.add((cid, uid))
        plan = _plan(batch, tenant_of, last_seq, known, membership)
        if plan.rows:
            c.executemany(
                "UPDATE conversations SET last_seq = ? WHERE id = ?",
                [(seq, cid) for cid, seq in plan.bumped],
            )
            c.executemany(_SQLITE_INSERT, plan.rows)
            c.executemany(_SQLITE_READ, plan.reads)
        if plan.tombstones:
            c.executemany(
                "UPDATE messages SET body = ?, recalled = 1 "
                "WHERE tenant_id = ? AND conversation_id = ? AND seq = ?",
                [(b"", t, cid, seq) for t, cid, seq in plan.tombstones],
            )
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return plan.results


# When the PostgreSQL append may use generic plans (see ``MessageStore``): once
# the messages table holds this many bytes (about 50,000 messages).
GENERIC_PLANS_AFTER_BYTES = 10 * 1024 * 1024
_SIZE_CHECK_EVERY_S = 30.0


class MessageStore:
    """Repository for messages; stateless apart from its database.

    Plans on PostgreSQL: the writer's connections start by planning every
    statement for its parameters (``force_custom_plan``, see
    ``parley.store.database``) because a generic plan made while ``messages``
    is small -- a fresh deployment -- hash-joins a sequential scan of it and
    keeps doing so as it grows.  Planning the one-statement append costs
    0.4-0.7 ms of PostgreSQL's CPU per batch, more than executing a small one
    (measured: 1-message batch 0.44 ms generic vs 0.68 ms custom, commit
    excluded; at 4,000 msg/s send->deliver p50 11-14 ms vs 20 ms).  So once
    ``messages`` is big enough that every plan probes its indexes
    (``generic_plans_after_bytes``, checked every 30 s until then), each
    writer connection the append uses switches to generic plans, once.

    Until then one-message batches (``SINGLE_SQL``, the usual batch at light
    load) still plan generically: every lookup of that statement is an equality
    on a unique index, so its generic plan probes the indexes at any size
    (checked on an empty schema), and it saves 0.12-0.25 ms of a 0.48-0.6 ms
    append.  A writer connection is switched to the mode its next batch needs
    (one ``SET``), and the append prefers a kept connection already in that
    mode, so at a steady load connections rarely switch.
    """

    def __init__(
        self, db: Database, *, generic_plans_after_bytes: int = GENERIC_PLANS_AFTER_BYTES,
    ) -> None:
        self._db = db
        self._pg = db.backend == "postgresql"
        self._sql = _Statements(db)
        self._generic_after = generic_plans_after_bytes
        self._generic = False
        self._next_size_check = 0.0
        self._generic_conns: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

    @property
    def plans(self) -> Literal["custom", "generic"]:
        """How the append's statements are planned now (always "custom" on SQLite)."""
        return "generic" if self._generic else "custom"

    def _in_mode(self, single: bool) -> Callable[[asyncpg.Connection], bool] | None:
        """Which kept connection suits a batch (see above); None: any."""
        if self._generic:
            return None
        generic = self._generic_conns
        return (lambda raw: raw in generic) if single else (lambda raw: raw not in generic)

    async def _plan_mode(self, raw: asyncpg.Connection, single: bool) -> None:
        """Plan generically on ``raw`` once the table is big enough, or for a
        one-message batch; else custom (see above)."""
        if not self._generic:
            now = time.monotonic()
            if now >= self._next_size_check:
                self._next_size_check = now + _SIZE_CHECK_EVERY_S
                size = await raw.fetchval("SELECT pg_relation_size(to_regclass('messages'))")
                self._generic = size is not None and size >= self._generic_after
        await self._set_plans(raw, self._generic or single)

    async def _set_plans(self, raw: asyncpg.Connection, generic: bool) -> None:
        """Put ``raw`` in generic or per-call plan mode (one ``SET`` if it changes)."""
        if generic != (raw in self._generic_conns):
            mode = "force_generic_plan" if generic else "force_custom_plan"
            await raw.execute(f"SET plan_cache_mode = {mode}")
            if generic:
                self._generic_conns.add(raw)
            else:
                self._generic_conns.discard(raw)

    @property
    def backend(self) -> Backend:
        return self._db.backend

    # -- append ------------------------------------------------------------------
    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        """Store a batch in one transaction; one result per item, in order.

        Raises (SQLAlchemy's errors) when the transaction fails: then nothing
        of the batch is stored and no item may be acknowledged.
        """
        if not batch:
            return []
        try:
            return await self._append_once(batch)
        except IntegrityError:
            # Another node stored one of these msg_ids between our lookup and
            # our insert; the retry's lookup sees it as a duplicate.
            return await self._append_once(batch)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The pooled connection was dead (the server restarted or dropped it
            # while idle: the pools have no pre-ping).  Retrying on a new one is
            # safe whatever the first attempt reached, COMMIT included: ids stored
            # by it come back as duplicates with their seqs.
            return await self._append_once(batch)

    async def _append_once(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        if self._pg:
            return await self._append_pg(batch)
        return await self._append_sqlite(batch)

    async def _append_sqlite(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        """The SQLite append: the statements on the event loop's thread with the
        sqlite3 module, the COMMIT (its fsync, and a WAL checkpoint when due) on
        a worker thread.

        Why: through SQLAlchemy Core and aiosqlite the append was 9 hops to the
        driver's thread (BEGIN, 7 statements, COMMIT); run there in one hop it
        still took 40-120 us per message, 3-5x its time alone, because every
        sqlite3 step hands the GIL to that thread and back while the loop's
        thread is busy.  Measured at 5,000 msg/s (1,000 users): commits of 512
        messages took 110-145 ms and the rate was not sustained; here a batch
        costs ~40 us per message of the loop's time and commits of ~30 messages
        take ~2 ms.  The fsync stays off the loop (a slow disk must not stall
        every socket).

        The connection is the database's ``sqlite_appender``; the pooled writer
        (other writes: cursors, the API) is a second connection.  BEGIN
        IMMEDIATE does not wait (busy_timeout 0): when the pooled writer holds
        the lock, the append waits for that pool's connection instead -- while
        it holds it, no other writer of this node can -- and begins again.
        """
        appender = self._db.sqlite_appender()
        c = appender.conn
        try:
            async with appender.lock:
                await appender.settle()
                try:
                    results = _sqlite_write(c, batch)
                except sqlite3.OperationalError as exc:
                    if not _locked(c, exc):
                        raise
                    async with self._db.writer.connect():
                        results = await _sqlite_write_when_free(c, batch)
                commit = asyncio.get_running_loop().run_in_executor(None, _sqlite_commit, c)
                appender.committing = commit
                await asyncio.shield(commit)
                appender.committing = None
                return results
        except sqlite3.IntegrityError as exc:
            raise IntegrityError("append", None, exc) from exc
        except sqlite3.Error as exc:
            raise DBAPIError("append", None, exc) from exc

    async def _append_pg(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        """The PostgreSQL append through asyncpg (``pgappend``): one statement in
        autocommit for most batches, four round trips for the others."""
        single = len(batch) == 1 and _one_statement(batch)
        conn, raw = await self._db.lease_writer(self._in_mode(single))
        lease: tuple[AsyncConnection, asyncpg.Connection] | None = (conn, raw)
        try:
            await self._plan_mode(raw, single)
            return await self._append_statements(raw, batch, single)
        except BaseException as exc:
            # (imported here: a node on SQLite never loads the driver, ~2.6 MB of RSS)
            import asyncpg
            from asyncpg.exceptions import OperatorInterventionError

            broken = not isinstance(exc, asyncpg.PostgresError) or isinstance(
                exc, (asyncpg.PostgresConnectionError, OperatorInterventionError)
            ) or raw.is_closed()
            if broken:
                # Never reuse a broken (or mid-statement cancelled) connection.
                lease = None
                try:
                    await conn.invalidate()
                finally:
                    await conn.close()
            if isinstance(exc, asyncpg.UniqueViolationError):
                raise IntegrityError("append", None, exc) from exc
            if isinstance(exc, Exception):  # a dead socket may surface as any client error
                raise DBAPIError(
                    "append", None, exc, connection_invalidated=broken
                ) from exc
            raise
        finally:
            if lease is not None:
                await self._give_back(conn, raw)

    async def _give_back(self, conn: AsyncConnection, raw: asyncpg.Connection) -> None:
        """Return a usable writer connection.  One that goes back to the pool (the
        append keeps enough) is put back in per-call plan mode first while the
        table is small: the cursor writer and the API expect it (see above)."""
        if not self._generic and not self._db.keeps_another_writer():
            try:
                await self._set_plans(raw, False)
            except BaseException:
                try:
                    await conn.invalidate()
                finally:
                    await conn.close()
                raise
        await self._db.release_writer((conn, raw))

    async def _append_statements(
        self, raw: asyncpg.Connection, batch: Sequence[NewMessage], single: bool
    ) -> list[AppendResult]:
        """The batch's statements on ``raw``: ``SINGLE_SQL``, ``ONE_SQL`` or the
        general path's transaction."""
        if single:
            m = batch[0]
            row = await raw.fetchrow(
                SINGLE_SQL, m.tenant_id, m.conversation_id, m.msg_id, m.sender_id,
                m.sender_device, m.kind, m.body, m.digest, m.created_at,
            )
            assert row is not None  # one row, always
            return [_one_result(row)]
        if _one_statement(batch):
            return [_one_result(r) for r in await raw.fetch(
                ONE_SQL, *PgBatch.one_args([
                    (m.tenant_id, m.conversation_id, m.msg_id, m.sender_id,
                     m.sender_device, m.kind, m.body, m.digest, m.created_at)
                    for m in batch
                ])
            )]
        async with raw.transaction():
            return await self._append_raw(raw, batch)

    async def _append_raw(
        self, raw: asyncpg.Connection, batch: Sequence[NewMessage]
    ) -> list[AppendResult]:
        tenant_of: dict[int, int] = {}
        last_seq: dict[int, int] = {}
        known: dict[tuple[int, str], _Known] = {}
        membership: set[tuple[int, int]] = set()
        args = PgBatch.read_args(
            (m.conversation_id for m in batch), _lookup_keys(batch),
            {(m.conversation_id, m.sender_id) for m in batch},
        )
        for r in await raw.fetch(READ_SQL, *args):
            kind = r[0]
            if kind == pgappend.LOCKED:
                tenant_of[r[1]], last_seq[r[1]] = r[2], r[3]
            elif kind == pgappend.KNOWN:
                known[(r[2], r[4])] = _Known(r[1], r[3], r[5], r[6], r[7])
            else:
                membership.add((r[1], r[2]))
        plan = _plan(batch, tenant_of, last_seq, known, membership)
        if plan.rows:
            await raw.execute(WRITE_SQL, *PgBatch.write_args(plan.bumped, plan.rows, plan.reads))
        if plan.tombstones:
            await raw.execute(TOMBSTONE_SQL, *PgBatch.tombstone_args(plan.tombstones))
        return plan.results

    # -- reads -------------------------------------------------------------------
    async def by_msg_id(self, tenant_id: int, msg_id: str) -> StoredMessage | None:
        """The stored message with this id in this tenant (tombstones included).

        This is what a recall is checked against: sender, conversation,
        created_at (for the recall window), kind and the ``recalled`` flag.
        """
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(*_MESSAGE_COLUMNS).where(
                        messages.c.tenant_id == tenant_id, messages.c.msg_id == msg_id
                    )
                )
            ).mappings().first()
        return _stored(row) if row else None

    async def after(
        self, tenant_id: int, conv_id: int, after_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages with seq > ``after_seq``, ascending."""
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    self._sql.after, {"conv": conv_id, "seq": after_seq, "limit": limit}
                )
            ).mappings().all()
        return _of_tenant(rows, tenant_id)

    async def before(
        self, tenant_id: int, conv_id: int, before_seq: int, limit: int
    ) -> list[StoredMessage]:
        """The ``limit`` messages just below ``before_seq``, returned ascending.

        Page backwards through history by passing the first seq of a page as
        the next ``before_seq``.
        """
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(
                    self._sql.before, {"conv": conv_id, "seq": before_seq, "limit": limit}
                )
            ).mappings().all()
        return _of_tenant(rows[::-1], tenant_id)

    async def sync_page(
        self, tenant_id: int, user_id: int, cursors: Mapping[int, int], limit: int
    ) -> SyncPage:
        """Messages after ``cursors`` in the user's conversations, ``limit`` at most.

        ``cursors`` maps conversation id -> last seq the device has; conversations
        missing from it start at 0 (merge the stored delivery cursors in first).
        Cursors of conversations the user is not a member of are ignored.
        Tombstones (empty body, ``recalled`` true) and recall events are included.

        Cost: one query for the user's conversations (ids and last_seq only),
        then one query for exactly the messages of this page (seqs are gapless,
        so their keys are known): a user offline for weeks costs one page at a
        time, whatever the backlog.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        async with self._db.reader.connect() as conn:
            convs = await conn.execute(
                select(conversations.c.id, conversations.c.last_seq)
                .select_from(
                    members.join(conversations, conversations.c.id == members.c.conversation_id)
                )
                .where(
                    members.c.tenant_id == tenant_id,
                    members.c.user_id == user_id,
                    conversations.c.tenant_id == tenant_id,
                    conversations.c.last_seq > 0,
                )
                .order_by(conversations.c.id)
            )
            last_seqs = list(convs)
            # Seqs are gapless, so the page's messages are known exactly:
            # (conversation, seq) keys, fetched by primary-key-like lookups.  The one
            # exception is retention, which deletes the oldest messages of a
            # conversation: a device behind the first kept seq starts from there.
            floors: dict[int, int] = {}
            for attempt in range(2):
                keys, more = _page_keys(last_seqs, cursors, floors, limit)
                if not keys:
                    return SyncPage(messages=[], more=False)
                rows = (
                    await conn.execute(self._sql.page, self._sql.page_keys.params(keys))
                ).mappings().all()
                if len(rows) == len(keys) or attempt:
                    break
                got = {(r["conversation_id"], r["seq"]) for r in rows}
                short = sorted({cid for cid, seq in keys if (cid, seq) not in got})
                first = await conn.execute(self._sql.first_kept, {"convs": short})
                floors = {int(cid): int(seq) - 1 for cid, seq in first}
                floors.update({cid: _GONE for cid in short if cid not in floors})
        return SyncPage(messages=_of_tenant(rows, tenant_id), more=more)

"""WriteBatcher and CursorWriter against both backends.

Faults are real database failures: a trigger that makes every INSERT into a
table fail, installed and removed while the batcher runs; a transaction held
open to make commits wait.  No mocks, no timing sleeps: tests wait on state
(``pending``, ``queued``) by yielding to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import select, text

from parley.errors import RateLimited, Unavailable
from parley.metrics import Metrics
from parley.store import AccountStore, Database
from parley.store.batcher import CursorWriter, WriteBatcher
from parley.store.conversations import ConversationStore
from parley.store.cursors import CursorStore, DeliveryCursor
from parley.store.messages import MessageStore, NewMessage
from parley.store.tables import conversations, messages

NOW = 1_800_000_000_000
_n = itertools.count(1)


def msg(tenant: int, conv: int, sender: int, mid: str | None = None) -> NewMessage:
    n = next(_n)
    body = b'{"text":"n%d"}' % n
    return NewMessage(
        tenant_id=tenant, conversation_id=conv, msg_id=mid or f"b-{n}", sender_id=sender,
        sender_device="d", kind="text", body=body, digest=hashlib.sha256(body).hexdigest(),
        created_at=NOW + n,
    )


async def _world(db: Database, users: int = 5, groups: int = 5) -> tuple[int, list[int], list[int]]:
    acc = AccountStore(db)
    tid = (await acc.create_tenant("acme", "Acme", NOW)).id
    uids = [(await acc.create_user(tid, f"u{i}", NOW)).id for i in range(users)]
    convs = ConversationStore(db)
    gids = [(await convs.create_group(tid, uids[0], f"g{i}", uids[1:], NOW)).id
            for i in range(groups)]
    return tid, uids, gids


async def _until(cond: Callable[[], bool]) -> None:
    """Yield to the event loop until ``cond()`` holds (bounded; no timing involved)."""
    for _ in range(1_000_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@contextlib.asynccontextmanager
async def hold_writes(db: Database, conv: int) -> AsyncIterator[None]:
    """Make commits touching ``conv`` wait until the block exits.

    SQLite: hold the one writer connection (and its write lock).
    PostgreSQL: hold the conversation's row lock.
    """
    async with db.writer.connect() as conn:
        await conn.begin()
        if db.backend == "postgresql":
            await conn.execute(
                select(conversations.c.id).where(conversations.c.id == conv).with_for_update()
            )
        try:
            yield
        finally:
            await conn.rollback()


async def _set_failing(db: Database, table: str, on: bool) -> None:
    """Install (or remove) a trigger that makes every INSERT into ``table`` fail."""
    async with db.writer.begin() as conn:
        if db.backend == "sqlite":
            if on:
                await conn.execute(text(
                    f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                ))
            else:
                await conn.execute(text(f"DROP TRIGGER fail_{table}"))
        elif on:
            await conn.execute(text(
                "CREATE OR REPLACE FUNCTION injected_failure() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            ))
            await conn.execute(text(
                f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION injected_failure()"
            ))
        else:
            await conn.execute(text(f"DROP TRIGGER fail_{table} ON {table}"))


async def _seqs(db: Database, conv: int) -> list[int]:
    async with db.reader.connect() as conn:
        rows = await conn.execute(
            select(messages.c.seq)
            .where(messages.c.conversation_id == conv)
            .order_by(messages.c.seq)
        )
        return [int(s) for s in rows.scalars()]


def _sample(metric: object, suffix: str) -> float:
    for family in metric.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name.endswith(suffix):
                return float(s.value)
    raise AssertionError(f"no sample {suffix}")


# -- WriteBatcher --------------------------------------------------------------------


async def test_concurrent_submitters_get_gapless_ordered_seqs(db: Database) -> None:
    tid, uids, gids = await _world(db)
    metrics = Metrics()
    partitions = 1 if db.backend == "sqlite" else 3
    batcher = WriteBatcher(MessageStore(db), partitions=partitions, metrics=metrics)
    await batcher.start()

    async def sender(k: int) -> list[tuple[int, int]]:
        conv, uid = gids[k % 5], uids[k % 5]
        out = []
        for _ in range(40):
            result = await batcher.submit(msg(tid, conv, uid))
            assert result.status == "created"
            assert result.seq is not None
            out.append((conv, result.seq))
        return out

    per_task = await asyncio.gather(*(sender(k) for k in range(50)))
    await batcher.stop()
    assert batcher.pending == 0
    by_conv: dict[int, list[int]] = {g: [] for g in gids}
    for acks in per_task:
        seqs = [s for _, s in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == 40  # each sender's order is kept
        for conv, seq in acks:
            by_conv[conv].append(seq)
    for g in gids:
        assert sorted(by_conv[g]) == list(range(1, 401))  # every ack distinct, no gaps
        assert await _seqs(db, g) == list(range(1, 401))  # and exactly that is stored
    # Group commit happened: far fewer commits than messages.
    commits = _sample(metrics.db_batch_size, "_count")
    assert _sample(metrics.db_batch_size, "_sum") == 2000
    assert commits < 2000


async def test_two_nodes_writing_the_same_conversations(db: Database) -> None:
    """Two batchers (as on two nodes) commit batches spanning the same conversations
    in opposite orders: seqs stay gapless and no transaction deadlocks."""
    tid, uids, gids = await _world(db)
    nodes = [WriteBatcher(MessageStore(db)), WriteBatcher(MessageStore(db))]
    for node in nodes:
        await node.start()

    async def sender(k: int) -> None:
        node = nodes[k % 2]
        order = gids if k % 2 else gids[::-1]
        for i in range(20):
            conv = order[(k + i) % 5]
            result = await node.submit(msg(tid, conv, uids[(k + i) % 5]))
            assert result.status == "created"

    await asyncio.gather(*(sender(k) for k in range(40)))
    for node in nodes:
        await node.stop()
    for g in gids:
        assert await _seqs(db, g) == list(range(1, 161))


async def test_submit_needs_a_running_batcher(db: Database) -> None:
    tid, uids, gids = await _world(db, users=2, groups=1)
    batcher = WriteBatcher(MessageStore(db))
    with pytest.raises(Unavailable):
        await batcher.submit(msg(tid, gids[0], uids[0]))
    await batcher.start()
    first = await batcher.submit(msg(tid, gids[0], uids[0]))  # idle: committed at once
    assert (first.status, first.seq) == ("created", 1)
    await batcher.stop()
    with pytest.raises(Unavailable):
        await batcher.submit(msg(tid, gids[0], uids[0]))
    if db.backend == "sqlite":
        with pytest.raises(ValueError):
            WriteBatcher(MessageStore(db), partitions=2)


async def test_stop_commits_everything_pending(db: Database) -> None:
    tid, uids, gids = await _world(db, users=2, groups=2)
    batcher = WriteBatcher(MessageStore(db), max_batch=8)
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit(msg(tid, gids[i % 2], uids[0]))) for i in range(60)]
    await _until(lambda: batcher.pending == 60)
    await batcher.stop()
    assert all(t.done() for t in tasks)
    assert sorted(t.result().seq or 0 for t in tasks) == sorted(list(range(1, 31)) * 2)
    assert await _seqs(db, gids[0]) == list(range(1, 31))


async def test_overload_is_refused_at_once(db: Database) -> None:
    tid, uids, gids = await _world(db, users=2, groups=1)
    batcher = WriteBatcher(MessageStore(db), max_pending=5)
    await batcher.start()
    async with hold_writes(db, gids[0]):
        tasks = [asyncio.create_task(batcher.submit(msg(tid, gids[0], uids[0])))
                 for _ in range(5)]
        await _until(lambda: batcher.pending == 5)
        with pytest.raises(RateLimited):
            await batcher.submit(msg(tid, gids[0], uids[0]))
    results = await asyncio.gather(*tasks)
    assert sorted(r.seq or 0 for r in results) == [1, 2, 3, 4, 5]
    await batcher.stop()


async def test_failed_commit_fails_its_batch_and_writes_nothing(db: Database) -> None:
    tid, uids, gids = await _world(db, users=2, groups=2)
    metrics = Metrics()
    batcher = WriteBatcher(MessageStore(db), metrics=metrics)
    await batcher.start()
    ok = await batcher.submit(msg(tid, gids[0], uids[0]))
    assert ok.seq == 1

    await _set_failing(db, "messages", True)  # the database now refuses every insert
    doomed = [msg(tid, gids[i % 2], uids[i % 2]) for i in range(20)]
    outcomes = await asyncio.gather(*(batcher.submit(m) for m in doomed), return_exceptions=True)
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert _sample(metrics.db_commit_errors, "_total") >= 1
    # Nothing half-written: no rows, and no seq was consumed.
    assert await _seqs(db, gids[0]) == [1] and await _seqs(db, gids[1]) == []
    conv = await ConversationStore(db).get(tid, gids[0])
    assert conv is not None and conv.last_seq == 1

    await _set_failing(db, "messages", False)
    # The loop kept running; the clients' retries (same ids) now commit.
    retried = await asyncio.gather(*(batcher.submit(m) for m in doomed))
    assert all(r.status == "created" for r in retried)
    assert await _seqs(db, gids[0]) == list(range(1, 12))
    assert await _seqs(db, gids[1]) == list(range(1, 11))
    await batcher.stop()


async def test_cancelled_waiters_do_not_break_the_batch(db: Database) -> None:
    tid, uids, gids = await _world(db, users=2, groups=1)
    store = MessageStore(db)
    batcher = WriteBatcher(store)
    await batcher.start()
    in_flight, queued, kept = (msg(tid, gids[0], uids[0]) for _ in range(3))
    async with hold_writes(db, gids[0]):
        t_in_flight = asyncio.create_task(batcher.submit(in_flight))
        await _until(lambda: batcher.pending == 1 and batcher.queued == 0)  # taken, waiting
        t_queued = asyncio.create_task(batcher.submit(queued))
        t_kept = asyncio.create_task(batcher.submit(kept))
        await _until(lambda: batcher.queued == 2)
        t_in_flight.cancel()
        t_queued.cancel()
        for t in (t_in_flight, t_queued):
            with pytest.raises(asyncio.CancelledError):
                await t
    result = await t_kept
    assert (result.status, result.seq) == ("created", 2)
    # Taken into a batch before the cancel: committed anyway.  Still queued: dropped.
    stored = await store.by_msg_id(tid, in_flight.msg_id)
    assert stored is not None and stored.seq == 1
    assert await store.by_msg_id(tid, queued.msg_id) is None
    await batcher.stop()
    assert batcher.pending == 0


# -- CursorWriter ---------------------------------------------------------------------


def _dc(tid: int, uid: int, conv: int, seq: int, device: str = "phone") -> DeliveryCursor:
    return DeliveryCursor(tid, uid, device, conv, seq, NOW + seq)


async def _cursor_world(db: Database, users: int, groups: int) -> tuple[int, list[int], list[int]]:
    """Like ``_world``, with 10 messages in each conversation (cursors cap at last_seq)."""
    tid, uids, gids = await _world(db, users=users, groups=groups)
    await MessageStore(db).append([msg(tid, g, uids[0]) for g in gids for _ in range(10)])
    return tid, uids, gids


async def test_cursor_writer_coalesces_to_the_highest_seq(db: Database) -> None:
    tid, uids, gids = await _cursor_world(db, users=2, groups=2)
    store = CursorStore(db)
    writer = CursorWriter(store)  # not started: explicit flushes only
    for seq in (3, 7, 5):
        writer.advance(_dc(tid, uids[0], gids[0], seq))
    writer.advance(_dc(tid, uids[0], gids[1], 2))
    writer.advance(_dc(tid, uids[0], gids[0], 4, device="laptop"))
    assert writer.pending == 3
    await writer.flush()
    assert writer.pending == 0
    assert await store.delivery_cursors(tid, uids[0], "phone") == {gids[0]: 7, gids[1]: 2}
    writer.advance(_dc(tid, uids[0], gids[0], 6))  # lower than stored: no effect
    await writer.flush()
    assert await store.delivery_cursors(tid, uids[0], "phone") == {gids[0]: 7, gids[1]: 2}
    assert await store.delivery_cursors(tid, uids[0], "laptop") == {gids[0]: 4}


async def test_cursor_writer_flushes_in_the_background(db: Database) -> None:
    tid, uids, gids = await _cursor_world(db, users=2, groups=1)
    store = CursorStore(db)
    writer = CursorWriter(store)
    await writer.start()
    writer.advance(_dc(tid, uids[0], gids[0], 4))
    await _until(lambda: writer.pending == 0)  # the background task took it
    await writer.flush()  # waits for that write to finish
    assert await store.delivery_cursors(tid, uids[0], "phone") == {gids[0]: 4}
    writer.advance(_dc(tid, uids[1], gids[0], 9))
    await writer.stop()  # flushes what is left
    assert await store.delivery_cursors(tid, uids[1], "phone") == {gids[0]: 9}


async def test_cursor_writer_is_bounded(db: Database) -> None:
    tid, uids, gids = await _cursor_world(db, users=3, groups=1)
    store = CursorStore(db)
    writer = CursorWriter(store, max_keys=2)
    for uid in uids:
        writer.advance(_dc(tid, uid, gids[0], 1))
    writer.advance(_dc(tid, uids[0], gids[0], 3))  # a known key still advances
    assert (writer.pending, writer.dropped) == (2, 1)
    await writer.flush()
    assert await store.delivery_cursors(tid, uids[0], "phone") == {gids[0]: 3}
    assert await store.delivery_cursors(tid, uids[2], "phone") == {}


async def test_cursor_writer_keeps_cursors_when_a_write_fails(db: Database) -> None:
    tid, uids, gids = await _cursor_world(db, users=2, groups=1)
    store = CursorStore(db)
    writer = CursorWriter(store)
    writer.advance(_dc(tid, uids[0], gids[0], 5))
    writer.advance(_dc(tid, uids[1], gids[0], 2))
    await _set_failing(db, "delivery_cursors", True)
    with pytest.raises(Unavailable):
        await writer.flush()
    assert (writer.pending, writer.failures) == (2, 1)
    writer.advance(_dc(tid, uids[0], gids[0], 3))  # older than the kept 5
    writer.advance(_dc(tid, uids[1], gids[0], 4))  # newer than the kept 2
    await _set_failing(db, "delivery_cursors", False)
    await writer.flush()
    assert await store.delivery_cursors(tid, uids[0], "phone") == {gids[0]: 5}
    assert await store.delivery_cursors(tid, uids[1], "phone") == {gids[0]: 4}


async def test_cursor_writer_stop_never_hangs_on_a_failing_database(db: Database) -> None:
    tid, uids, gids = await _cursor_world(db, users=2, groups=1)
    store = CursorStore(db)
    writer = CursorWriter(store, retry_interval=3600)
    await writer.start()
    await _set_failing(db, "delivery_cursors", True)
    writer.advance(_dc(tid, uids[0], gids[0], 5))
    await _until(lambda: writer.failures == 1)  # the background write failed; retry in 1 h
    await writer.stop()  # interrupts the retry pause; the last flush fails: logged, not raised
    assert writer.pending == 0 and writer.failures == 2
    await _set_failing(db, "delivery_cursors", False)
    assert await store.delivery_cursors(tid, uids[0], "phone") == {}

"""MessageStore against both backends: seq order, idempotency, refusals, recall, reads, sync."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sqlite3

import pytest
from sqlalchemy import Select, select, text

from parley.store import AccountStore, Database, pgappend
from parley.store.conversations import ConversationStore
from parley.store.cursors import CursorStore
from parley.store.messages import MessageStore, NewMessage, StoredMessage
from parley.store.tables import conversations, messages

NOW = 1_800_000_000_000
_n = itertools.count(1)


def msg(
    tenant: int, conv: int, sender: int, *, mid: str | None = None, text: str = "hi",
    kind: str = "text", target: str | None = None, at: int | None = None,
) -> NewMessage:
    body = b'{"text":"%s"}' % text.encode()
    n = next(_n)
    return NewMessage(
        tenant_id=tenant, conversation_id=conv, msg_id=mid or f"mid-{n}", sender_id=sender,
        sender_device="phone", kind=kind, body=body,
        digest=hashlib.sha256(b"%d|%s|%s" % (conv, kind.encode(), body)).hexdigest(),
        created_at=at if at is not None else NOW + n, recall_target=target,
    )


class World:
    def __init__(self, db: Database, *, generic_plans: bool = False) -> None:
        self.db = db
        # generic: the plans a big deployment's append uses (see MessageStore)
        self.store = MessageStore(db, generic_plans_after_bytes=0 if generic_plans else 1 << 62)
        self.convs = ConversationStore(db)

    async def setup(self) -> World:
        acc = AccountStore(self.db)
        self.tid = (await acc.create_tenant("acme", "Acme", NOW)).id
        self.oid = (await acc.create_tenant("other", "Other", NOW)).id
        self.a, self.b, self.c = [
            (await acc.create_user(self.tid, name, NOW)).id for name in ("a", "b", "c")
        ]
        self.x = (await acc.create_user(self.oid, "x", NOW)).id
        self.ab = (await self.convs.create_direct(self.tid, self.a, self.b, NOW)).id
        self.g = (await self.convs.create_group(self.tid, self.a, "G", [self.b, self.c], NOW)).id
        self.ox = (await self.convs.create_group(self.oid, self.x, "O", [], NOW)).id
        return self

    async def last_seq(self, conv: int) -> int:
        async with self.db.reader.connect() as conn:
            seq = await conn.scalar(
                select(conversations.c.last_seq).where(conversations.c.id == conv)
            )
        return int(seq or 0)

    async def count(self) -> int:
        async with self.db.reader.connect() as conn:
            return len((await conn.execute(select(messages.c.id))).all())


@pytest.fixture(params=["custom-plans", "generic-plans"])
async def w(db: Database, request: pytest.FixtureRequest) -> World:
    generic = request.param == "generic-plans"
    if generic and db.backend != "postgresql":
        pytest.skip("plan modes are PostgreSQL's")
    world = await World(db, generic_plans=generic).setup()
    assert world.store.plans == "custom"  # decided at the first append
    return world


async def test_seqs_are_gapless_per_conversation_in_batch_order(w: World) -> None:
    batch = [msg(w.tid, w.ab if i % 3 else w.g, w.a) for i in range(10)]
    results = await w.store.append(batch)
    assert all(r.status == "created" and r.ok for r in results)
    by_conv: dict[int, list[int]] = {}
    for m, r in zip(batch, results, strict=True):
        assert r.created_at == m.created_at
        by_conv.setdefault(m.conversation_id, []).append(r.seq or 0)
    assert by_conv[w.ab] == list(range(1, 7)) and by_conv[w.g] == list(range(1, 5))
    more = await w.store.append([msg(w.tid, w.g, w.b)])
    assert more[0].seq == 5
    assert (await w.last_seq(w.ab), await w.last_seq(w.g)) == (6, 5)
    stored = await w.store.after(w.tid, w.ab, 0, 100)
    assert [s.seq for s in stored] == list(range(1, 7))
    first = batch[1]
    assert stored[0] == StoredMessage(
        conversation_id=w.ab, seq=1, msg_id=first.msg_id, sender_id=w.a, sender_device="phone",
        kind="text", body=first.body, created_at=first.created_at, recalled=False,
    )


async def test_resend_is_duplicate_and_other_payload_conflicts(w: World) -> None:
    original = msg(w.tid, w.ab, w.a, mid="same")
    [r1] = await w.store.append([original])
    resend = msg(w.tid, w.ab, w.a, mid="same", at=NOW + 999_999)  # later clock, same payload
    other = msg(w.tid, w.ab, w.a, mid="same", text="changed")
    results = await w.store.append([resend, other, msg(w.tid, w.ab, w.a)])
    assert [r.status for r in results] == ["duplicate", "conflict", "created"]
    assert (results[0].seq, results[0].created_at) == (r1.seq, r1.created_at)
    assert (r1.seq, r1.created_at) == (1, original.created_at)
    assert results[1].code == "idempotency_conflict" and results[1].seq is None
    assert results[2].seq == 2  # duplicates and conflicts consume no seq
    assert await w.last_seq(w.ab) == 2


async def test_duplicates_within_one_batch(w: World) -> None:
    first = msg(w.tid, w.g, w.a, mid="twice")
    results = await w.store.append(
        [first, msg(w.tid, w.g, w.b), msg(w.tid, w.g, w.a, mid="twice"),
         msg(w.tid, w.g, w.a, mid="twice", text="other")]
    )
    assert [(r.status, r.seq) for r in results] == [
        ("created", 1), ("created", 2), ("duplicate", 1), ("conflict", None)
    ]
    assert results[2].created_at == first.created_at
    assert await w.last_seq(w.g) == 2 and await w.count() == 2


async def test_refused_items_do_not_poison_the_batch(w: World) -> None:
    results = await w.store.append([
        msg(w.tid, w.ab, w.a),
        msg(w.tid, 999_999, w.a),  # no such conversation
        msg(w.tid, w.ox, w.a),  # another tenant's conversation
        msg(w.oid, w.ab, w.x),  # this tenant's conversation, sent as the other tenant
        msg(w.tid, w.ab, w.c),  # not a member of ab
        msg(w.tid, w.ab, w.a, kind="recall", target="nope"),  # nothing to recall
        msg(w.tid, w.ab, w.b),
    ])
    assert [(r.status, r.code, r.seq) for r in results] == [
        ("created", None, 1),
        ("rejected", "not_found", None),
        ("rejected", "not_found", None),
        ("rejected", "not_found", None),
        ("rejected", "not_member", None),
        ("rejected", "not_found", None),
        ("created", None, 2),
    ]
    assert not any(r.ok for r in results[1:6])
    assert await w.last_seq(w.ab) == 2 and await w.last_seq(w.ox) == 0
    assert await w.count() == 2


async def test_recall_tombstones_in_the_same_transaction(w: World) -> None:
    m1, m2 = msg(w.tid, w.g, w.b), msg(w.tid, w.g, w.c)
    await w.store.append([m1, m2])
    rec = msg(w.tid, w.g, w.b, kind="recall", target=m1.msg_id)
    [r] = await w.store.append([rec])
    assert (r.status, r.seq) == ("created", 3)
    gone = await w.store.by_msg_id(w.tid, m1.msg_id)
    assert gone is not None and gone.recalled and gone.body == b"" and gone.seq == 1
    assert gone.sender_id == w.b and gone.created_at == m1.created_at
    kept = await w.store.by_msg_id(w.tid, m2.msg_id)
    assert kept is not None and not kept.recalled and kept.body == m2.body
    event_ = await w.store.by_msg_id(w.tid, rec.msg_id)
    assert event_ is not None and event_.kind == "recall" and event_.body == rec.body
    # A resend of the recalled message is still recognised by its digest.
    [again] = await w.store.append([msg(w.tid, w.g, w.b, mid=m1.msg_id)])
    assert (again.status, again.seq) == ("duplicate", 1)


async def test_recall_targets_are_checked(w: World) -> None:
    in_ab = msg(w.tid, w.ab, w.a)
    await w.store.append([in_ab])
    target_later = msg(w.tid, w.g, w.a, mid="later")
    same_batch = msg(w.tid, w.g, w.a)
    results = await w.store.append([
        msg(w.tid, w.g, w.a, kind="recall", target=in_ab.msg_id),  # other conversation
        msg(w.tid, w.g, w.a, kind="recall", target="later"),  # not stored yet
        target_later,
        same_batch,
        msg(w.tid, w.g, w.a, kind="recall", target=same_batch.msg_id, mid="rec-1"),
        msg(w.tid, w.g, w.a, kind="recall", target="rec-1"),  # a recall of a recall
    ])
    assert [r.status for r in results] == [
        "rejected", "rejected", "created", "created", "created", "rejected"
    ]
    tomb = await w.store.by_msg_id(w.tid, same_batch.msg_id)
    assert tomb is not None and tomb.recalled and tomb.body == b""
    live = await w.store.by_msg_id(w.tid, in_ab.msg_id)
    assert live is not None and not live.recalled
    # The other tenant cannot recall (or even see) this tenant's messages.
    [r] = await w.store.append([msg(w.oid, w.ox, w.x, kind="recall", target=in_ab.msg_id)])
    assert r.status == "rejected"
    assert await w.store.by_msg_id(w.oid, in_ab.msg_id) is None


async def test_after_and_before_page_through_history(w: World) -> None:
    await w.store.append([msg(w.tid, w.g, w.a, text=f"t{i}") for i in range(25)])
    assert [m.seq for m in await w.store.after(w.tid, w.g, 0, 10)] == list(range(1, 11))
    assert [m.seq for m in await w.store.after(w.tid, w.g, 20, 10)] == list(range(21, 26))
    assert await w.store.after(w.tid, w.g, 25, 10) == []
    newest = await w.store.before(w.tid, w.g, 2**53, 10)
    assert [m.seq for m in newest] == list(range(16, 26))
    older = await w.store.before(w.tid, w.g, newest[0].seq, 10)
    assert [m.seq for m in older] == list(range(6, 16))
    oldest = await w.store.before(w.tid, w.g, older[0].seq, 10)
    assert [m.seq for m in oldest] == list(range(1, 6))
    assert await w.store.before(w.tid, w.g, 1, 10) == []
    # Scoped by tenant.
    assert await w.store.after(w.oid, w.g, 0, 10) == []
    assert await w.store.before(w.oid, w.g, 2**53, 10) == []


async def test_same_msg_id_in_two_tenants_is_two_messages(w: World) -> None:
    [r1] = await w.store.append([msg(w.tid, w.ab, w.a, mid="shared")])
    [r2] = await w.store.append([msg(w.oid, w.ox, w.x, mid="shared")])
    assert (r1.status, r2.status) == ("created", "created")
    one = await w.store.by_msg_id(w.tid, "shared")
    two = await w.store.by_msg_id(w.oid, "shared")
    assert one is not None and two is not None and one.conversation_id != two.conversation_id


async def test_a_dropped_pooled_connection_costs_no_batch(w: World, backend: str) -> None:
    """The pools have no pre-ping: a writer connection the server dropped while it
    sat idle fails the batch's first statement, and the batch is retried on a new one."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL connections only")
    [first] = await w.store.append([msg(w.tid, w.ab, w.a)])
    lease = await w.db.lease_writer()  # the idle connection the next batch gets
    pid = await lease[1].fetchval("SELECT pg_backend_pid()")
    await w.db.release_writer(lease)
    async with w.db.reader.connect() as conn:
        assert await conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    [second] = await w.store.append([msg(w.tid, w.ab, w.a)])
    assert (first.status, first.seq, second.status, second.seq) == ("created", 1, "created", 2)
    lease = await w.db.lease_writer()  # the dead one was dropped, not kept
    assert await lease[1].fetchval("SELECT pg_backend_pid()") != pid
    await w.db.release_writer(lease)


async def test_racing_the_same_msg_id_stores_it_once(w: World, backend: str) -> None:
    """Two writers store one msg_id: one is created, the other sees it.

    On PostgreSQL the race is forced: another transaction holds an uncommitted
    row with that id, so our lookup misses it, our INSERT hits the unique
    constraint once it commits, and the retried batch sees the duplicate.
    SQLite has one writer, so the two batches are serialised and cannot race.
    """
    mine = msg(w.tid, w.g, w.a, mid="raced")
    if backend == "sqlite":
        results = await asyncio.gather(w.store.append([mine]), w.store.append([mine]))
        assert sorted(r[0].status for r in results) == ["created", "duplicate"]
        return
    theirs = msg(w.tid, w.ab, w.a, mid="raced", text="from the other node")
    async with w.db.writer.connect() as other:
        tx = await other.begin()
        other_pid = await other.scalar(text("SELECT pg_backend_pid()"))
        await other.execute(messages.insert().values(
            tenant_id=w.tid, conversation_id=w.ab, seq=1, msg_id="raced", sender_id=w.a,
            sender_device="phone", kind="text", body=theirs.body, digest=theirs.digest,
            created_at=theirs.created_at, recalled=False,
        ))
        task = asyncio.create_task(w.store.append([mine]))
        # Our INSERT waits on the other transaction's uncommitted unique-index entry.
        async with w.db.reader.connect() as watch:
            for _ in range(1000):
                if await watch.scalar(
                    text("SELECT count(*) FROM pg_stat_activity"
                         " WHERE :pid = ANY(pg_blocking_pids(pid))"), {"pid": other_pid},
                ):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the append never waited for the other insert")
        await tx.commit()
        [result] = await task
    assert result.status == "conflict"  # same id, another conversation's payload
    assert await w.last_seq(w.g) == 0  # the failed attempt consumed no seq


async def test_concurrent_batches_on_one_conversation_get_gapless_seqs(w: World) -> None:
    """Batches committed at the same time by several writer connections (the
    write path of several nodes, or of partitioned commit loops) into the same
    conversations: each waits for the others' row lock and numbers from the
    newest last_seq, so the seqs are 1..N exactly once and each batch's own
    messages keep their order.  A lost update or a stale last_seq would show
    as a unique violation, a gap or a seq given twice."""
    batches = [
        [msg(w.tid, w.g if i % 2 else w.ab, w.a if i % 3 else w.b) for i in range(k, k + 5)]
        for k in range(0, 100, 5)
    ]
    results = await asyncio.gather(*(w.store.append(b) for b in batches))
    seqs: dict[int, list[int]] = {w.ab: [], w.g: []}
    for batch, res in zip(batches, results, strict=True):
        assert [r.status for r in res] == ["created"] * 5
        mine: dict[int, list[int]] = {}
        for m, r in zip(batch, res, strict=True):
            mine.setdefault(m.conversation_id, []).append(r.seq or 0)
            seqs[m.conversation_id].append(r.seq or 0)
        assert all(s == sorted(s) for s in mine.values())
    assert sorted(seqs[w.ab]) == list(range(1, 51)) and sorted(seqs[w.g]) == list(range(1, 51))
    assert (await w.last_seq(w.ab), await w.last_seq(w.g)) == (50, 50)
    stored = await w.store.after(w.tid, w.g, 0, 100)
    assert [s.seq for s in stored] == list(range(1, 51))


async def _drain(store: MessageStore, tid: int, uid: int, cursors: dict[int, int], limit: int
                 ) -> tuple[list[tuple[int, int]], int]:
    """Sync like a device: pages until ``more`` is false; returns (conv, seq) seen and pages."""
    seen: list[tuple[int, int]] = []
    pages = 0
    while True:
        page = await store.sync_page(tid, uid, cursors, limit)
        pages += 1
        assert len(page.messages) <= limit
        for m in page.messages:
            seen.append((m.conversation_id, m.seq))
            cursors[m.conversation_id] = m.seq
        if not page.more:
            return seen, pages
        assert page.messages, "more=True with an empty page would loop forever"


async def test_sync_pages_over_many_conversations(w: World) -> None:
    groups = [
        (await w.convs.create_group(w.tid, w.b, f"g{i}", [w.a], NOW)).id for i in range(30)
    ]
    not_mine = (await w.convs.create_group(w.tid, w.b, "not a's", [w.c], NOW)).id
    batch = [
        msg(w.tid, conv, w.b)
        for i, conv in enumerate(groups)
        for _ in range(i % 7)  # 0..6 messages each; some conversations stay empty
    ]
    batch += [msg(w.tid, not_mine, w.b) for _ in range(5)]
    await w.store.append(batch)
    expected_all = sorted((g, s) for i, g in enumerate(groups) for s in range(1, i % 7 + 1))

    seen, pages = await _drain(w.store, w.tid, w.a, {}, limit=7)
    assert seen == expected_all  # everything exactly once, in (conversation, seq) order
    assert pages == -(-len(expected_all) // 7)  # ``more`` is exact: no trailing empty page

    # Starting from cursors: only what follows them.
    cursors = {groups[6]: 3, groups[13]: 6, not_mine: 0, 424242: 5}
    seen, _ = await _drain(w.store, w.tid, w.a, dict(cursors), limit=4)
    assert seen == [
        (g, s) for g, s in expected_all
        if s > cursors.get(g, 0)
    ]
    # Up to date: an empty page, nothing more.
    final = {g: i % 7 for i, g in enumerate(groups)}
    page = await w.store.sync_page(w.tid, w.a, final, 50)
    assert page.messages == [] and page.more is False


async def test_sync_bounds_a_long_gap_and_includes_tombstones(w: World) -> None:
    batch = [msg(w.tid, w.g, w.b) for _ in range(120)]
    await w.store.append(batch)
    await w.store.append([msg(w.tid, w.g, w.b, kind="recall", target=batch[1].msg_id)])
    page = await w.store.sync_page(w.tid, w.a, {}, 10)
    assert [m.seq for m in page.messages] == list(range(1, 11)) and page.more
    assert page.messages[1].recalled and page.messages[1].body == b""
    page = await w.store.sync_page(w.tid, w.a, {w.g: 115}, 10)
    assert [m.seq for m in page.messages] == list(range(116, 122)) and not page.more
    assert page.messages[-1].kind == "recall"
    # Tenant scoping: the other tenant sees nothing of it.
    page = await w.store.sync_page(w.oid, w.a, {}, 10)
    assert page.messages == [] and not page.more
    with pytest.raises(ValueError):
        await w.store.sync_page(w.tid, w.a, {}, 0)


async def _indexes_planned(db: Database, stmt: Select[tuple[object, ...]],
                           params: dict[str, object]) -> set[str]:
    """The indexes PostgreSQL's plan of ``stmt`` reads, planned as the store's own
    execution is: a prepared statement given these parameter values."""
    async with db.reader.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect)
        args = [params[name] for name in compiled.positiontup or []]
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        plan = await raw.fetchval("EXPLAIN (FORMAT JSON) " + str(compiled), *args)
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    found: set[str] = set()

    def walk(node: dict[str, object]) -> None:
        if "Index Name" in node:
            found.add(str(node["Index Name"]))
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def test_reads_of_a_new_tenants_messages_plan_on_the_conversation(db: Database) -> None:
    """A tenant the table's statistics have not seen (estimated at one row) must not
    get its reads planned on the (tenant_id, msg_id) index, which reads every
    message of the tenant: a restarted node's syncs took 23-77 ms each that way."""
    if db.backend != "postgresql":
        pytest.skip("plan choice is PostgreSQL's")
    w = await World(db).setup()
    for _ in range(4):  # the other tenant's messages are what the statistics see
        assert all(r.ok for r in await w.store.append(
            [msg(w.oid, w.ox, w.x) for _ in range(500)]))
    async with db.reader.connect() as conn:
        await conn.execute(text("ANALYZE messages"))
    for _ in range(4):
        assert all(r.ok for r in await w.store.append(
            [msg(w.tid, w.ab, w.a if i % 2 else w.b) for i in range(500)]))
    sql = w.store._sql  # the statements the store executes
    keys = [(w.ab, seq) for seq in range(100, 120)]
    reads = {
        "sync page": (sql.page, sql.page_keys.params(keys)),
        "after": (sql.after, {"conv": w.ab, "seq": 100, "limit": 50}),
        "before": (sql.before, {"conv": w.ab, "seq": 1_900, "limit": 50}),
    }
    for name, (stmt, params) in reads.items():
        assert "uq_messages_tenant_id_msg_id" not in await _indexes_planned(db, stmt, params), name
    # ... and they read the right rows
    page = await w.store.sync_page(w.tid, w.a, {w.ab: 99}, 20)
    assert [m.seq for m in page.messages] == list(range(100, 120)) and page.more
    assert [m.seq for m in await w.store.after(w.tid, w.ab, 100, 3)] == [101, 102, 103]
    assert [m.seq for m in await w.store.before(w.tid, w.ab, 1_900, 2)] == [1_898, 1_899]


async def test_sending_moves_the_senders_read_cursor(w: World) -> None:
    cursors = CursorStore(w.db)
    await w.store.append([msg(w.tid, w.g, w.b), msg(w.tid, w.g, w.a), msg(w.tid, w.g, w.b)])
    assert await cursors.read_cursor(w.tid, w.a, w.g) == 2
    assert await cursors.read_cursor(w.tid, w.b, w.g) == 3
    assert await cursors.advance_read(w.tid, w.a, w.g, 3, NOW) == 3
    await w.store.append([msg(w.tid, w.g, w.c)])  # never lowers anyone's cursor
    assert await cursors.read_cursors(w.tid, w.a) == {w.g: 3}


@pytest.mark.parametrize("threshold", [0, 1 << 62])
async def test_append_switches_to_generic_plans_once_messages_is_big(
    db: Database, threshold: int
) -> None:
    if db.backend != "postgresql":
        pytest.skip("plan modes are PostgreSQL's")
    world = await World(db).setup()
    store = MessageStore(db, generic_plans_after_bytes=threshold)
    assert store.plans == "custom"
    for _ in range(3):  # more batches than connections it may meet on the way
        batch = [msg(world.tid, world.ab, world.a), msg(world.tid, world.ab, world.b)]
        assert all(r.ok for r in await store.append(batch))
    expected = "generic" if threshold == 0 else "custom"
    assert store.plans == expected
    # the writer connection the append keeps now plans that way
    lease = await db.lease_writer()
    mode = await lease[1].fetchval("SHOW plan_cache_mode")
    await db.release_writer(lease)
    assert mode == f"force_{expected}_plan"


async def test_one_message_batches_plan_generically_on_a_small_table(db: Database) -> None:
    """Below the size threshold a one-message batch runs on a connection in
    generic mode and a larger batch on one in custom mode; the append prefers a
    kept connection already in the mode it needs."""
    if db.backend != "postgresql":
        pytest.skip("plan modes are PostgreSQL's")
    world = await World(db).setup()
    store = MessageStore(db, generic_plans_after_bytes=1 << 62)

    async def modes() -> list[str]:
        leases = list(db._held)
        return [await raw.fetchval("SHOW plan_cache_mode") for _, raw in leases]

    assert (await store.append([msg(world.tid, world.ab, world.a)]))[0].ok
    assert await modes() == ["force_generic_plan"]
    # Two batches at once: the second needs a second connection.
    single, pair = await asyncio.gather(
        store.append([msg(world.tid, world.ab, world.a)]),
        store.append([msg(world.tid, world.g, world.a), msg(world.tid, world.g, world.b)]),
    )
    assert single[0].ok and all(r.ok for r in pair)
    assert sorted(await modes()) == ["force_custom_plan", "force_generic_plan"]
    kept = {raw: mode for (_, raw), mode in zip(db._held, await modes(), strict=True)}
    # Each kind of batch takes the kept connection already in its mode: no switch.
    for batch in ([msg(world.tid, world.ab, world.b)],
                  [msg(world.tid, world.g, world.a), msg(world.tid, world.g, world.c)]):
        results = await store.append(batch)
        assert [r.status for r in results][:1] == ["created"]
        assert {raw: mode for (_, raw), mode in zip(db._held, await modes(), strict=True)} \
            == kept
    assert store.plans == "custom"


async def test_sqlite_append_waits_for_another_process_write_lock(db: Database) -> None:
    """Another connection (another process on the same file) holds the write
    lock: the append neither fails nor blocks the loop; it commits once freed."""
    if db.backend != "sqlite":
        pytest.skip("SQLite's write lock")
    world = await World(db).setup()
    path = db.url.database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        append = asyncio.create_task(world.store.append([msg(world.tid, world.ab, world.a)]))
        for _ in range(20):  # the loop keeps running while the append waits
            await asyncio.sleep(0)
        assert not append.done()
        other.execute("COMMIT")
        results = await asyncio.wait_for(append, 10)
    finally:
        other.close()
    assert results[0].status == "created" and results[0].seq == 1


async def test_a_batch_of_one_decides_as_a_larger_batch(w: World) -> None:
    """Batches of one message take their own statement on PostgreSQL: every
    decision must be the one a larger batch makes for the same item."""
    [first] = await w.store.append([msg(w.tid, w.ab, w.a, mid="solo")])
    alone = [(await w.store.append([m]))[0] for m in (
        msg(w.tid, w.ab, w.a, mid="solo", at=NOW + 5),  # resend: duplicate
        msg(w.tid, w.ab, w.a, mid="solo", text="changed"),  # conflict
        msg(w.tid, 999_999, w.a),  # no such conversation
        msg(w.tid, w.ox, w.a),  # another tenant's conversation
        msg(w.oid, w.ab, w.x),  # this tenant's conversation, sent as the other tenant
        msg(w.tid, w.ab, w.c),  # not a member
        msg(w.tid, w.ab, w.b),  # created
    )]
    assert (first.status, first.seq) == ("created", 1)
    assert [(r.status, r.code, r.seq) for r in alone] == [
        ("duplicate", None, 1), ("conflict", "idempotency_conflict", None),
        ("rejected", "not_found", None), ("rejected", "not_found", None),
        ("rejected", "not_found", None), ("rejected", "not_member", None),
        ("created", None, 2),
    ]
    assert alone[0].created_at == first.created_at
    assert await w.last_seq(w.ab) == 2 and await w.last_seq(w.ox) == 0
    assert await w.count() == 2
    # The sender's read cursor moves with its own message, as in a batch.
    assert await CursorStore(w.db).read_cursor(w.tid, w.b, w.ab) == 2


async def test_append_connections_are_kept_up_to_half_the_pool(db: Database, backend: str) -> None:
    """The PostgreSQL append keeps its connections out of the pool between batches,
    at most half the pool's size, and the database's close gives them back."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL connections only")
    pool = db.writer.pool
    keep = pool.size() // 2  # type: ignore[attr-defined]
    leases = [await db.lease_writer() for _ in range(keep + 1)]
    assert len({id(raw) for _, raw in leases}) == keep + 1
    assert pool.checkedout() == keep + 1  # type: ignore[attr-defined]
    for lease in leases:
        await db.release_writer(lease)
    assert pool.checkedout() == keep  # type: ignore[attr-defined]  # one went back
    again = await db.lease_writer()  # the last kept one, reused
    assert again is leases[keep - 1]
    await db.release_writer(again)
    await db.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_pool_of_one_keeps_no_append_connection(db: Database, backend: str) -> None:
    """With one writer connection in all, the append must give it back after each
    batch: the cursor writer and the API write through it too."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL connections only")
    small = Database(db.url.render_as_string(hide_password=False), pool_size=1)
    try:
        await small.release_writer(await small.lease_writer())
        assert small.writer.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await small.close()


async def test_a_connection_given_back_to_the_pool_plans_per_call_again(db: Database) -> None:
    """Past the connections the append keeps, one goes back to the pool, where the
    cursor writer and the API expect per-call plans on a small table."""
    if db.backend != "postgresql":
        pytest.skip("plan modes are PostgreSQL's")
    world = await World(db).setup()
    store = MessageStore(db, generic_plans_after_bytes=1 << 62)
    keep = db.writer.pool.size() // 2  # type: ignore[attr-defined]
    results = await asyncio.gather(*(  # one connection each
        store.append([msg(world.tid, world.ab, world.a)]) for _ in range(keep + 1)
    ))
    assert all(r[0].ok for r in results)
    assert len(db._held) == keep
    for _, kept in db._held:
        assert await kept.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    # Every connection the pool holds now, the one given back among them:
    conns = [await db.writer.connect() for _ in range(keep)]
    try:
        for conn in conns:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            assert await raw.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        for conn in conns:
            await conn.close()


async def test_the_one_message_statement_probes_unique_indexes_in_its_generic_plan(
    db: Database,
) -> None:
    """Its generic plan is made while the tables may be empty and kept as they
    grow: every lookup must be an equality on the unique index made for it."""
    if db.backend != "postgresql":
        pytest.skip("plan modes are PostgreSQL's")
    conn, raw = await db.lease_writer()
    try:
        await raw.execute("SET plan_cache_mode = force_generic_plan")
        stmt = await raw.prepare(pgappend.SINGLE_SQL)
        await raw.execute(
            f"PREPARE one_plan({', '.join(t.name for t in stmt.get_parameters())}) AS "
            + pgappend.SINGLE_SQL
        )
        plan = "\n".join(r[0] for r in await raw.fetch(
            "EXPLAIN EXECUTE one_plan(1, 1, 'x', 1, 'd', 'text', '\\x00', 'g', 0)"
        ))
        await raw.execute("DEALLOCATE one_plan")
    finally:
        await raw.execute("SET plan_cache_mode = force_custom_plan")
        await db.release_writer((conn, raw))
    assert "Seq Scan" not in plan, plan
    probes = {line.split(" using ")[1].split(" on ")[0]
              for line in plan.splitlines() if " using " in line}
    assert probes == {"uq_messages_tenant_id_msg_id", "pk_conversations", "pk_members"}, plan

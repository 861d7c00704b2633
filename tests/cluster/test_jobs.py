"""JobScheduler on both backends: once per tick across nodes, fencing, leadership,
failures, the loop, and the maintenance jobs doing what they say.

Time is a ManualClock; the loop's sleep is replaced by one that moves that clock,
so nothing here waits on wall time (except the one timeout test, 10 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from parley.clock import ManualClock
from parley.cluster.jobs import (
    Job,
    JobMetrics,
    JobScheduler,
    maintenance_jobs,
    message_retention_job,
)
from parley.store import Database
from parley.store.jobs import JobStore, MaintenanceStore
from parley.store.sessions import SessionStore
from parley.store.tables import auth_sessions, used_tickets
from tests.store.test_jobs_store import Chat

MINUTE = 60_000
DAY = 86_400_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE  # a tick boundary


class Counter:
    """A job body that counts its calls (and the ``now`` each got)."""

    def __init__(self, items: int = 1) -> None:
        self.calls: list[int] = []
        self.items = items

    async def __call__(self, now_ms: int) -> int:
        self.calls.append(now_ms)
        return self.items


class Leader:
    """What membership would expose: leadership and a fencing token."""

    def __init__(self, leading: bool = True, token: int = 1) -> None:
        self.leading = leading
        self.token = token

    def is_leader(self) -> bool:
        return self.leading

    def fencing_token(self) -> int:
        return self.token


def scheduler(
    db: Database, clock: ManualClock, node: str, leader: Leader, jobs: list[Job],
    **kw: Any,
) -> JobScheduler:
    return JobScheduler(
        JobStore(db), clock, node, leader.is_leader, leader.fencing_token, jobs, **kw
    )


async def test_two_schedulers_sharing_a_database_run_each_tick_once(db: Database) -> None:
    clock = ManualClock(T0)
    body = Counter()
    job = Job("count", 60, body)
    a = scheduler(db, clock, "a", Leader(), [job])
    b = scheduler(db, clock, "b", Leader(), [job])  # both believe they lead
    for _ in range(3):
        reports = await asyncio.gather(a.run_due(), b.run_due())
        assert sum(len(r) for r in reports) == 1
        await a.run_due()
        await b.run_due()  # a second pass in the same tick does nothing
        clock.advance(MINUTE)
    assert len(body.calls) == 3
    runs = await JobStore(db).runs("count")
    assert [r.tick for r in runs] == [job.tick(T0) + i for i in (2, 1, 0)]
    assert all(r.outcome == "ok" and r.items == 1 for r in runs)


async def test_a_deposed_leader_with_an_older_token_is_fenced(db: Database) -> None:
    clock = ManualClock(T0)
    old_body, new_body = Counter(), Counter()
    old = scheduler(db, clock, "old", Leader(token=1), [Job("j", 60, old_body)])
    new = scheduler(db, clock, "new", Leader(token=2), [Job("j", 60, new_body)])
    assert len(await old.run_due()) == 1  # term 1: the old leader runs
    clock.advance(MINUTE)
    assert len(await new.run_due()) == 1  # term 2 began: the new leader runs
    clock.advance(MINUTE)
    # The old leader has not heard of term 2 and still believes it leads: it goes
    # first this tick, and is refused by the database.
    assert await old.run_due() == []
    assert len(await new.run_due()) == 1
    assert (len(old_body.calls), len(new_body.calls)) == (1, 2)
    runs = await JobStore(db).runs("j")
    assert [(r.node_id, r.fencing_token) for r in runs] == [("new", 2), ("new", 2), ("old", 1)]


async def test_a_non_leader_does_nothing_until_it_leads(db: Database) -> None:
    clock = ManualClock(T0 + 10_000)
    body = Counter()
    leader = Leader(leading=False)
    s = scheduler(db, clock, "n", leader, [Job("j", 60, body)])
    assert await s.run_due() == []
    assert body.calls == [] and await JobStore(db).runs() == []
    # Elected mid-tick: the current tick is run (nobody ran it).
    leader.leading = True
    clock.advance(5_000)
    assert [r.tick for r in await s.run_due()] == [(T0 + 15_000) // MINUTE]
    assert body.calls == [T0 + 15_000]


async def test_a_failing_job_is_recorded_and_the_scheduler_carries_on(db: Database) -> None:
    clock = ManualClock(T0)
    metrics = JobMetrics(CollectorRegistry())

    async def broken(now_ms: int) -> int:
        raise RuntimeError("disk on fire " + "!" * 3000)

    healthy = Counter(items=4)
    s = scheduler(
        db, clock, "n", Leader(), [Job("broken", 60, broken), Job("healthy", 60, healthy)],
        metrics=metrics,
    )
    reports = await s.run_due()
    assert [(r.job, r.outcome) for r in reports] == [("broken", "error"), ("healthy", "ok")]
    clock.advance(MINUTE)
    assert [(r.job, r.outcome) for r in await s.run_due()] == [
        ("broken", "error"), ("healthy", "ok"),
    ]
    store = JobStore(db)
    failed = await store.runs("broken")
    assert len(failed) == 2 and all(r.outcome == "error" for r in failed)
    assert failed[0].error is not None
    assert failed[0].error.startswith("RuntimeError: disk on fire")
    assert len(failed[0].error) <= 1000 and failed[0].finished_at == T0 + MINUTE
    assert len(healthy.calls) == 2
    assert metrics.runs.labels("broken", "error")._value.get() == 2
    assert metrics.runs.labels("healthy", "ok")._value.get() == 2
    assert metrics.items.labels("healthy")._value.get() == 8
    assert metrics.last_success.labels("healthy")._value.get() == (T0 + MINUTE) / 1000


async def test_a_job_past_its_timeout_is_an_error(db: Database) -> None:
    clock = ManualClock(T0)
    never = asyncio.Event()

    async def stuck(now_ms: int) -> int:
        await never.wait()
        return 0

    s = scheduler(db, clock, "n", Leader(), [Job("stuck", 60, stuck, timeout_s=0.01)])
    [report] = await s.run_due()
    assert (report.outcome, report.error) == ("error", "timed out after 0.01 s")
    [run] = await JobStore(db).runs("stuck")
    assert run.outcome == "error" and run.error == "timed out after 0.01 s"


async def test_missed_ticks_are_not_replayed(db: Database) -> None:
    clock = ManualClock(T0)
    body = Counter()
    s = scheduler(db, clock, "n", Leader(), [Job("j", 60, body)])
    await s.run_due()
    clock.advance(10 * MINUTE + 1)  # the node was busy, or nobody led
    reports = await s.run_due()
    assert [r.tick for r in reports] == [T0 // MINUTE + 10]
    assert await s.run_due() == []
    assert len(body.calls) == 2


class SteppingSleep:
    """The loop's sleep: moves the manual clock by the requested time at once."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(max(1, round(seconds * 1000)))
        await asyncio.sleep(0)  # let the test's task run


async def _run_loop_until(
    s: JobScheduler, done: asyncio.Event, check: Callable[[], Awaitable[None]] | None = None,
) -> None:
    s.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        await s.stop()
    if check:
        await check()


async def test_the_loop_runs_each_tick_and_stops_cleanly(db: Database) -> None:
    clock = ManualClock(T0 + 30_000)
    done = asyncio.Event()
    ticks: list[int] = []

    async def body(now_ms: int) -> int:
        ticks.append(now_ms // MINUTE)
        if len(ticks) == 3:
            done.set()
        return 0

    sleep = SteppingSleep(clock)
    s = scheduler(db, clock, "n", Leader(), [Job("j", 60, body)], poll_s=3600, sleep=sleep)
    await _run_loop_until(s, done)
    first = (T0 + 30_000) // MINUTE
    assert ticks == [first, first + 1, first + 2]
    # It waits for the next boundary rather than polling (poll_s is an hour here).
    assert sleep.waits[:2] == [30.0, 60.0]
    await s.stop()  # stopping twice is harmless


async def test_the_loop_polls_so_a_new_leader_starts_soon(db: Database) -> None:
    clock = ManualClock(T0)
    leader = Leader(leading=False)
    done = asyncio.Event()

    async def body(now_ms: int) -> int:
        done.set()
        return 0

    class ElectAfterTwoPolls(SteppingSleep):
        async def __call__(self, seconds: float) -> None:
            if len(self.waits) == 2:
                leader.leading = True
            await super().__call__(seconds)

    sleep = ElectAfterTwoPolls(clock)
    s = scheduler(db, clock, "n", leader, [Job("j", 3600, body)], poll_s=1, sleep=sleep)
    await _run_loop_until(s, done)
    assert sleep.waits[:2] == [1, 1]
    [run] = await JobStore(db).runs("j")
    assert run.started_at == T0 + 3000  # the third pass, not the next hour


async def test_stop_during_a_run_records_it_as_cancelled(db: Database) -> None:
    clock = ManualClock(T0)
    started = asyncio.Event()

    async def long(now_ms: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    s = scheduler(db, clock, "n", Leader(), [Job("long", 60, long)], sleep=SteppingSleep(clock))
    s.start()
    await asyncio.wait_for(started.wait(), timeout=10)
    await s.stop()
    [run] = await JobStore(db).runs("long")
    assert (run.outcome, run.error) == ("error", "cancelled: the node is stopping")


async def test_a_failing_pass_does_not_end_the_loop(db: Database) -> None:
    clock = ManualClock(T0)
    done = asyncio.Event()
    calls = {"n": 0}

    def flaky_leader() -> bool:  # e.g. membership raising while it reconnects
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("raft unavailable")
        return True

    async def body(now_ms: int) -> int:
        done.set()
        return 0

    s = JobScheduler(
        JobStore(db), clock, "n", flaky_leader, lambda: 1, [Job("j", 60, body)],
        sleep=SteppingSleep(clock),
    )
    await _run_loop_until(s, done)


async def test_jobs_are_validated(db: Database) -> None:
    with pytest.raises(ValueError, match="name"):
        Job("", 60, Counter())
    with pytest.raises(ValueError, match="period"):
        Job("j", 0, Counter())
    with pytest.raises(ValueError, match="unique"):
        JobScheduler(
            JobStore(db), ManualClock(), "n", lambda: True,
            lambda: 0, [Job("j", 60, Counter()), Job("j", 30, Counter())],
        )


# -- the maintenance jobs, through the scheduler ----------------------------------------------
async def test_maintenance_jobs_expire_what_they_say(db: Database) -> None:
    chat = await Chat(db).setup()
    sessions = SessionStore(db)
    now = T0
    keep = 3_600_000
    await sessions.redeem_ticket("old", now - 1)
    await sessions.redeem_ticket("new", now + 30_000)
    await sessions.create("gone", chat.tid, chat.a, "", "h1", now - DAY, now - 2 * keep)
    await sessions.create("kept", chat.tid, chat.a, "", "h2", now - DAY, now + DAY)
    await chat.send(chat.c1, now - 40 * DAY)
    await chat.send(chat.c1, now - 20 * DAY)
    clock = ManualClock(now)
    jobs = maintenance_jobs(
        sessions=sessions, maintenance=MaintenanceStore(db), session_keep_ms=keep,
        retention_days=30,
    )
    assert [j.name for j in jobs] == [
        "expire-tickets", "expire-sessions", "expire-oauth-codes", "message-retention",
    ]
    reports = await scheduler(db, clock, "n", Leader(), jobs).run_due()
    assert {r.job: (r.outcome, r.items) for r in reports} == {
        "expire-tickets": ("ok", 1), "expire-sessions": ("ok", 1),
        "expire-oauth-codes": ("ok", 0), "message-retention": ("ok", 1),
    }
    async with db.reader.connect() as conn:
        assert list((await conn.execute(select(used_tickets.c.jti))).scalars()) == ["new"]
        assert list((await conn.execute(select(auth_sessions.c.id))).scalars()) == ["kept"]
    assert await chat.left() == [(chat.c1, 2)]
    no_retention = maintenance_jobs(
        sessions=sessions, maintenance=MaintenanceStore(db), session_keep_ms=keep,
        retention_days=None,
    )
    assert "message-retention" not in [j.name for j in no_retention]


async def test_retention_drains_a_backlog_in_bounded_runs(db: Database) -> None:
    chat = await Chat(db).setup()
    for i in range(5):
        await chat.send(chat.c2, T0 - 10 * DAY + i)
    await chat.send(chat.c2, T0 - DAY)
    clock = ManualClock(T0)
    job = message_retention_job(
        MaintenanceStore(db), retention_days=7, every_s=60, batch=2, max_batches=2
    )
    s = scheduler(db, clock, "n", Leader(), [job])
    assert [r.items for r in await s.run_due()] == [4]  # two batches of two, then wait
    clock.advance(MINUTE)
    assert [r.items for r in await s.run_due()] == [1]
    clock.advance(MINUTE)
    assert [r.items for r in await s.run_due()] == [0]
    assert await chat.left() == [(chat.c2, 6)]  # the newer message untouched
    with pytest.raises(ValueError):
        message_retention_job(MaintenanceStore(db), retention_days=0)

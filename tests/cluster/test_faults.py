"""Issue #6's faults, each under a checked load (``parley.cluster.chaos``).

A 3-node cluster on PostgreSQL (a fresh schema per test, reached through the
harness's TCP proxy); pairs of SDK clients send on an open-loop schedule and
the checker counts lost, duplicated, reordered and unexpected messages, acks
with two seqs for one message id, and false acks (acked, not in the database).
The durations (30 s down, 60 s partitioned, 15 s stopped, 20 s without
database) are the issue's acceptance numbers; every other wait polls with a
deadline.  The partition test needs root (network namespaces).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from parley.cluster.chaos import Cluster, Counts, FaultResult, Faults
from parley.cluster.netns import unavailable_reason
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema

pytestmark = pytest.mark.pg


@asynccontextmanager
async def cluster(tmp_path: Path, **kw: Any) -> AsyncIterator[Cluster]:
    schema = await new_pg_schema("chaos_")
    try:
        async with Cluster(PG_DSN, tmp_path / "cluster", schema=schema, **kw) as c:
            yield c
    finally:
        await drop_pg_schema(schema)


def report(name: str, c: Cluster, counts: Counts, **measures: object) -> None:
    print(f"\n{name}: {counts.as_dict()} {measures}")


def assert_safe(counts: Counts) -> None:
    assert counts.lost == 0, counts
    assert counts.duplicated == 0, counts
    assert counts.reordered == 0, counts
    assert counts.unexpected == 0, counts
    assert counts.acked_different_seqs == 0, counts
    assert counts.false_acks == 0, counts


async def loaded(c: Cluster, fault: Callable[[Faults], Awaitable[FaultResult]],
                 before_s: float = 2.0, after_s: float = 3.0) -> tuple[Counts, FaultResult]:
    """Load, ``before_s`` of calm, the fault, ``after_s`` of calm, then drain and count."""
    assert c.checker is not None
    c.checker.start_load()
    await asyncio.sleep(before_s)  # load before the fault (part of the scenario)
    result = await fault(Faults(c, print))
    await asyncio.sleep(after_s)  # load after the fault (part of the scenario)
    return await c.finish(), result


@pytest.mark.timeout(180)
async def test_kill9_one_node_and_restart_after_30s(tmp_path: Path) -> None:
    async with cluster(tmp_path, rate=2000.0, pairs=50) as c:
        counts, fault = await loaded(c, lambda f: f.kill_restart(1, 30.0))
        assert c.checker is not None
        outage = c.checker.max_outage_s()
        report("kill -9", c, counts, **fault.measures, max_outage_s=outage)
    assert_safe(counts)
    assert counts.acked == counts.sent, counts
    assert fault.measures["slots_moved_s"] < 10
    assert fault.measures["rejoined_s"] < 5
    # Its clients: connected again (to another node) within 5 s of the kill.
    assert fault.measures["clients_on_victim"] > 0
    assert fault.measures["served_again_s"] <= 5, fault.measures
    # max_outage_s (reported) includes the open-loop backlog queued while the node was
    # dead, so it is no measure of "served again"; served_again_s is.


@pytest.mark.timeout(180)
async def test_kill_the_leader_again_and_again(tmp_path: Path) -> None:
    async with cluster(tmp_path, rate=500.0, pairs=20) as c:
        counts, fault = await loaded(c, lambda f: f.kill_leader(3, gap_s=1.0))
        report("leader", c, counts, **fault.measures)
    assert_safe(counts)
    assert counts.acked == counts.sent, counts
    assert fault.measures["election_max_s"] < 5


@pytest.mark.timeout(240)
async def test_partition_one_node_for_60s(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    async with cluster(tmp_path, rate=500.0, pairs=20, use_netns=True) as c:
        counts, fault = await loaded(c, lambda f: f.partition(2, 60.0))
        assert c.nodes is not None
        maps = await c.nodes.map_signatures(range(3))
        report("partition", c, counts, **fault.measures)
    assert_safe(counts)  # false_acks == 0: the minority acked nothing it could not commit
    assert len(maps) == 3 and len(set(maps.values())) == 1, maps
    # The criteria end here.  Every send is acked, or (in some runs, open
    # question in docs/cluster.md) got no answer within the checker's 120 s: such a
    # send is indeterminate -- never acked, so never a promise broken -- not failed.
    assert counts.failed == 0, counts
    assert counts.acked + counts.indeterminate == counts.sent, counts


@pytest.mark.timeout(180)
async def test_sigstop_a_node_for_15s(tmp_path: Path) -> None:
    async with cluster(tmp_path, rate=500.0, pairs=20) as c:
        counts, fault = await loaded(c, lambda f: f.pause(0, 15.0))
        report("SIGSTOP", c, counts, **fault.measures)
    assert_safe(counts)  # acked_different_seqs == 0: no message acked twice with two seqs
    assert counts.acked == counts.sent, counts
    assert fault.measures["rejoined_s"] < 10


@pytest.mark.timeout(180)
async def test_database_unreachable_for_20s(tmp_path: Path) -> None:
    async with cluster(tmp_path, rate=500.0, pairs=20) as c:
        counts, _ = await loaded(c, lambda f: f.db_outage(20.0))
        report("database", c, counts)
    assert_safe(counts)  # retries committed once: no duplicate, no second seq
    assert counts.failed == 0, counts  # never a non-retryable error
    assert counts.retried_ok > 0, "the outage should have made sends retry"
    assert counts.acked == counts.sent, counts


@pytest.mark.timeout(180)
async def test_rolling_restart_under_load(tmp_path: Path) -> None:
    async with cluster(tmp_path, rate=500.0, pairs=20) as c:
        counts, fault = await loaded(c, lambda f: f.rolling_restart())
        report("rolling restart", c, counts, duration_s=fault.duration_s)
    assert_safe(counts)
    assert counts.first_try_or_retry_ratio >= 0.999, counts

"""Scheduled jobs, run once per tick across the cluster by the raft leader.

A ``Job`` has a period; its *tick* is ``floor(now / period)``.  Every node runs a
``JobScheduler``; on each pass it looks at the current tick of every job and,
only while ``is_leader()`` says so, claims that tick in the database with the
node's fencing token (``JobStore.claim``), runs the job, and records the outcome.

Guarantees:

* **At most once per tick, cluster-wide.**  The claim is a unique (job, tick) row
  written together with a fenced lease update; whoever loses simply skips.  A
  deposed leader carrying an older token is refused once the new leader has
  claimed, even if it still believes it leads.  A run whose node dies midway is
  not retried for that tick (its row keeps a NULL outcome); the next tick runs.
* **Only the current tick.**  Ticks missed while no node led (or the node was
  busy or down) are not replayed; the next pass runs the current one, once.
  A node that becomes leader mid-tick runs that tick if nobody has.
* **Failures are recorded and contained.**  A job that raises or exceeds its
  timeout is recorded as ``error`` with its message; the scheduler carries on.
* **Jobs run one after another**, never two at once on a node, so maintenance
  never competes with itself for the (SQLite) writer.

A single node (no raft) passes ``is_leader=lambda: True`` and
``fencing_token=lambda: 0``; several such nodes sharing one database still run
each tick once.

``maintenance_jobs`` builds the standard jobs (expired tickets, sessions and
authorization codes; message retention).  There is no "retry stuck deliveries"
job: nothing about a pending delivery is durable server-side.  Each device's
session re-pushes what it has not acknowledged (``messaging/wsfront.py``) and a
device that reconnects catches up by sync from its delivery cursor, so there is
no stored queue a job could retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from parley.clock import Clock
from parley.store.jobs import Claim, JobStore, MaintenanceStore, Outcome
from parley.store.sessions import SessionStore

__all__ = [
    "Job",
    "JobMetrics",
    "JobScheduler",
    "RunReport",
    "maintenance_jobs",
    "message_retention_job",
    "oauth_code_expiry_job",
    "session_expiry_job",
    "ticket_expiry_job",
]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_DURATIONS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job.  ``run(now_ms)`` does the work and returns how many items
    it affected; it must be idempotent (a run may be cut short and the next tick
    must finish the work)."""

    name: str
    every_s: float
    run: Callable[[int], Awaitable[int]]
    timeout_s: float | None = None
    """Longest a run may take (default: ``every_s``); past it the run is an error."""

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= 64:
            raise ValueError("a job name is 1 to 64 characters")
        if self.every_s < 0.001:
            raise ValueError("a job's period is at least 1 ms")

    @property
    def period_ms(self) -> int:
        return int(self.every_s * 1000)

    def tick(self, now_ms: int) -> int:
        """The tick ``now_ms`` falls in."""
        return now_ms // self.period_ms


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one pass did with one job (returned for tests and logs)."""

    job: str
    tick: int
    outcome: Outcome
    items: int
    error: str | None = None


class JobMetrics:
    """The scheduler's metrics, registered on the node's registry.

    Kept here rather than in ``parley.metrics`` so the jobs module owns its
    numbers; the names follow the same conventions (``parley_`` prefix, units).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "parley_job_runs_total", "Scheduled job runs on this node, by job and outcome.",
            ["job", "outcome"], registry=registry,
        )
        self.items = Counter(
            "parley_job_items_total", "Items affected by successful job runs, by job.",
            ["job"], registry=registry,
        )
        self.last_success = Gauge(
            "parley_job_last_success_timestamp_seconds",
            "When a run of the job last succeeded on this node (Unix time).",
            ["job"], registry=registry,
        )
        self.duration = Histogram(
            "parley_job_duration_seconds", "Time of one job run, by job.", ["job"],
            buckets=_DURATIONS, registry=registry,
        )
        self.claims_refused = Counter(
            "parley_job_claims_refused_total",
            "Ticks this node tried to claim but another node ran, or a newer leader fenced.",
            ["job"], registry=registry,
        )


@dataclass(slots=True)
class _State:
    attempted: tuple[int, int] | None = None  # (tick, token) last tried


class JobScheduler:
    """Runs ``jobs`` on this node while it leads; built and stopped by the node.

    ``run_due()`` is one pass (what the loop calls; tests call it directly with a
    manual clock).  ``start()`` begins the loop, ``stop()`` cancels it: a run in
    progress is cancelled and recorded as an error.
    """

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        node_id: str,
        is_leader: Callable[[], bool],
        fencing_token: Callable[[], int],
        jobs: Sequence[Job],
        *,
        metrics: JobMetrics | None = None,
        poll_s: float = 1.0,
        keep_runs_s: float = 7 * 86_400,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        self.store = store
        self.clock = clock
        self.node_id = node_id
        self.is_leader = is_leader
        self.fencing_token = fencing_token
        self.jobs = list(jobs)
        self.metrics = metrics
        self.poll_s = poll_s
        self.keep_runs_ms = int(keep_runs_s * 1000)
        self._sleep = sleep
        self._state = {j.name: _State() for j in self.jobs}
        self._task: asyncio.Task[None] | None = None

    # -- the loop ------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="job-scheduler")

    async def stop(self) -> None:
        """Cancel the loop and wait for it; a run in progress is recorded as an error."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception:
                log.exception("job scheduler pass failed")
            await self._sleep(self._wait_s())

    def _wait_s(self) -> float:
        """Until the next tick boundary of any job, but at most ``poll_s`` (so a
        node that becomes leader picks up the current tick soon)."""
        now = self.clock.now_ms()
        nearest = min(
            ((j.tick(now) + 1) * j.period_ms - now for j in self.jobs), default=None
        )
        if nearest is None:
            return self.poll_s
        return max(0.001, min(self.poll_s, nearest / 1000))

    # -- one pass ------------------------------------------------------------------
    async def run_due(self) -> list[RunReport]:
        """Run every job whose current tick this node has not tried yet, if it
        leads.  Returns what ran (claims lost to another node are not listed)."""
        reports: list[RunReport] = []
        for job in self.jobs:
            if not self.is_leader():
                break
            report = await self._maybe_run(job)
            if report is not None:
                reports.append(report)
        return reports

    async def _maybe_run(self, job: Job) -> RunReport | None:
        state = self._state[job.name]
        now = self.clock.now_ms()
        tick = job.tick(now)
        token = self.fencing_token()
        if state.attempted == (tick, token):
            return None
        claim = await self.store.claim(job.name, tick, self.node_id, token, now_ms=now)
        state.attempted = (tick, token)
        if claim is None:
            if self.metrics:
                self.metrics.claims_refused.labels(job.name).inc()
            log.debug("job %s tick %d: claimed elsewhere or fenced", job.name, tick)
            return None
        return await self._execute(job, claim)

    async def _execute(self, job: Job, claim: Claim) -> RunReport:
        started = self.clock.monotonic()
        outcome: Outcome = "ok"
        items = 0
        error: str | None = None
        limit = job.timeout_s or job.every_s
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                items = await job.run(claim.started_at)
        except asyncio.CancelledError:
            await self._record_cancelled(job, claim)
            raise
        except TimeoutError as exc:
            outcome, error = "error", (
                f"timed out after {limit:g} s" if deadline.expired() else f"TimeoutError: {exc}"
            )
            log.error("job %s tick %d failed: %s", job.name, claim.tick, error)
        except Exception as exc:
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("job %s tick %d failed", job.name, claim.tick)
        await self._record(job, claim, outcome, items, error)
        if self.metrics:
            self.metrics.duration.labels(job.name).observe(self.clock.monotonic() - started)
        return RunReport(job.name, claim.tick, outcome, items, error)

    async def _record_cancelled(self, job: Job, claim: Claim) -> None:
        """Best effort, bounded: the node is stopping and must not hang on it."""
        try:
            async with asyncio.timeout(5):
                await self._record(job, claim, "error", 0, "cancelled: the node is stopping")
        except Exception:  # noqa: BLE001 - the run stays unfinished in the record
            log.warning("job %s tick %d: could not record the cancellation", job.name, claim.tick)

    async def _record(
        self, job: Job, claim: Claim, outcome: Outcome, items: int, error: str | None
    ) -> None:
        now = self.clock.now_ms()
        await self.store.finish(
            claim, now_ms=now, outcome=outcome, items=items, error=error,
            prune_before_tick=job.tick(now - self.keep_runs_ms),
        )
        if self.metrics:
            self.metrics.runs.labels(job.name, outcome).inc()
            if outcome == "ok":
                self.metrics.items.labels(job.name).inc(items)
                self.metrics.last_success.labels(job.name).set(now / 1000)


# -- the maintenance jobs ----------------------------------------------------------------
def ticket_expiry_job(sessions: SessionStore, *, every_s: float = 300) -> Job:
    """Forget redeemed one-time tickets past their expiry (refused by time anyway)."""
    return Job("expire-tickets", every_s, sessions.purge_tickets)


def _batched(
    step: Callable[[], Awaitable[int]], batch: int, max_batches: int
) -> Callable[[], Awaitable[int]]:
    """Call ``step`` (which deletes up to ``batch`` rows) until it returns fewer,
    ``max_batches`` times at most; the rest waits for the next tick."""

    async def run() -> int:
        total = 0
        for _ in range(max_batches):
            n = await step()
            total += n
            if n < batch:
                break
        return total

    return run


def session_expiry_job(
    store: MaintenanceStore, *, keep_ms: int, every_s: float = 600, batch: int = 500,
    max_batches: int = 100,
) -> Job:
    """Delete login sessions (and their refresh tokens) that expired or were
    revoked more than ``keep_ms`` ago (pass the revocation list's horizon)."""

    async def run(now_ms: int) -> int:
        return await _batched(
            lambda: store.expire_sessions(now_ms, keep_ms, batch), batch, max_batches
        )()

    return Job("expire-sessions", every_s, run)


def oauth_code_expiry_job(
    store: MaintenanceStore, *, every_s: float = 600, batch: int = 500, max_batches: int = 100,
) -> Job:
    """Delete expired OAuth authorization codes nobody redeemed."""

    async def run(now_ms: int) -> int:
        return await _batched(
            lambda: store.expire_oauth_codes(now_ms, batch), batch, max_batches
        )()

    return Job("expire-oauth-codes", every_s, run)


def message_retention_job(
    store: MaintenanceStore, *, retention_days: float, every_s: float = 3600,
    batch: int = 1000, max_batches: int = 100,
) -> Job:
    """Delete messages older than ``retention_days``, ``batch`` per transaction and
    ``batch * max_batches`` per run at most (a backlog drains over several ticks)."""
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    keep_ms = int(retention_days * _DAY_MS)

    async def run(now_ms: int) -> int:
        return await _batched(
            lambda: store.delete_messages_before(now_ms - keep_ms, batch), batch, max_batches
        )()

    return Job("message-retention", every_s, run)


def maintenance_jobs(
    *, sessions: SessionStore, maintenance: MaintenanceStore, session_keep_ms: int,
    retention_days: float | None,
) -> list[Job]:
    """The standard jobs of a node; message retention only with ``retention_days``
    (None keeps messages forever)."""
    jobs = [
        ticket_expiry_job(sessions),
        session_expiry_job(maintenance, keep_ms=session_keep_ms),
        oauth_code_expiry_job(maintenance),
    ]
    if retention_days is not None:
        jobs.append(message_retention_job(maintenance, retention_days=retention_days))
    return jobs

"""Scheduled jobs in the database: fenced claims, run records, and the queries the
maintenance jobs need that no other store offers.

``JobStore.claim`` is the cluster-wide "run once per tick" gate.  It is one
transaction on the writer (``BEGIN IMMEDIATE`` on SQLite, so claims queue behind
message commits instead of failing):

1. an upsert of the job's lease row that only takes effect when the caller's
   fencing token is newer than the stored one, or the same token moving to a
   later tick;
2. an insert of the ``(job, tick)`` run row, which the unique constraint allows
   once.

Both must succeed or nothing is written.  So a tick runs at most once however
many nodes try, and a deposed leader (older token) is refused as soon as the new
leader has claimed anything, even if it still believes it leads.  On PostgreSQL
a concurrent claim of the same lease waits for the row lock and re-checks the
condition against the committed row (``ON CONFLICT DO UPDATE ... WHERE``).

``MaintenanceStore`` holds the node-wide clean-up queries.  They cross tenants on
purpose (they are the operator's, not a user's) and each deletes a bounded
number of rows per transaction, so the single SQLite writer is never held long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import RowMapping, and_, delete, or_, select, update

from parley.store.database import Database
from parley.store.sql import insert_for
from parley.store.tables import (
    auth_sessions,
    job_leases,
    job_runs,
    messages,
    oauth_codes,
    refresh_tokens,
)

__all__ = [
    "ERROR_TEXT_MAX",
    "Claim",
    "JobLease",
    "JobRun",
    "JobStore",
    "MaintenanceStore",
    "Outcome",
]

Outcome = Literal["ok", "error"]
ERROR_TEXT_MAX = 1000
"""Longest error text stored with a failed run (longer ones are cut)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A won claim: run the job for ``tick``, then ``JobStore.finish(run_id, ...)``."""

    run_id: int
    job: str
    tick: int
    node_id: str
    fencing_token: int
    started_at: int


@dataclass(frozen=True, slots=True)
class JobLease:
    job: str
    last_tick: int
    fencing_token: int
    holder: str
    updated_at: int


@dataclass(frozen=True, slots=True)
class JobRun:
    id: int
    job: str
    tick: int
    node_id: str
    fencing_token: int
    started_at: int
    finished_at: int | None
    outcome: Outcome | None
    """None while running, or forever if the node died during the run."""
    items: int | None
    error: str | None


class _Lost(Exception):
    """The (job, tick) run exists already: roll the lease update back."""


def _run(row: RowMapping) -> JobRun:
    return JobRun(
        id=row["id"], job=row["job"], tick=row["tick"], node_id=row["node_id"],
        fencing_token=row["fencing_token"], started_at=row["started_at"],
        finished_at=row["finished_at"], outcome=row["outcome"], items=row["items"],
        error=row["error"],
    )


class JobStore:
    """Leases and run records of the scheduled jobs."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(
        self, job: str, tick: int, node_id: str, token: int, *, now_ms: int
    ) -> Claim | None:
        """Claim ``tick`` of ``job`` for ``node_id`` holding fencing ``token``.

        Returns the claim, or None when the tick has a run already (on any node)
        or ``token`` is older than the lease's (fenced out), or is the lease's
        token with a tick not after the lease's last one.  Atomic: a refused
        claim writes nothing.
        """
        lease = insert_for(self._db, job_leases).values(
            job=job, last_tick=tick, fencing_token=token, holder=node_id, updated_at=now_ms,
        )
        new = lease.excluded
        take_lease = lease.on_conflict_do_update(
            index_elements=[job_leases.c.job],
            set_={
                "last_tick": new.last_tick, "fencing_token": new.fencing_token,
                "holder": new.holder, "updated_at": new.updated_at,
            },
            where=or_(
                job_leases.c.fencing_token < new.fencing_token,
                and_(
                    job_leases.c.fencing_token == new.fencing_token,
                    job_leases.c.last_tick < new.last_tick,
                ),
            ),
        ).returning(job_leases.c.job)
        record = (
            insert_for(self._db, job_runs)
            .values(
                job=job, tick=tick, node_id=node_id, fencing_token=token, started_at=now_ms,
            )
            .on_conflict_do_nothing(index_elements=[job_runs.c.job, job_runs.c.tick])
            .returning(job_runs.c.id)
        )
        try:
            async with self._db.writer.begin() as conn:
                if (await conn.execute(take_lease)).first() is None:
                    return None
                run_id = (await conn.execute(record)).scalar()
                if run_id is None:
                    raise _Lost
        except _Lost:
            return None
        return Claim(int(run_id), job, tick, node_id, token, now_ms)

    async def finish(
        self, claim: Claim, *, now_ms: int, outcome: Outcome, items: int = 0,
        error: str | None = None, prune_before_tick: int | None = None,
    ) -> None:
        """Record how a claimed run ended (``error`` is cut to ERROR_TEXT_MAX).

        With ``prune_before_tick``, the job's runs of earlier ticks are deleted in
        the same transaction (the run table keeps a bounded history).
        """
        if error is not None and len(error) > ERROR_TEXT_MAX:
            error = error[: ERROR_TEXT_MAX - 3] + "..."
        async with self._db.writer.begin() as conn:
            await conn.execute(
                update(job_runs).where(job_runs.c.id == claim.run_id).values(
                    finished_at=now_ms, outcome=outcome, items=items, error=error,
                )
            )
            if prune_before_tick is not None:
                await conn.execute(
                    delete(job_runs).where(
                        job_runs.c.job == claim.job, job_runs.c.tick < prune_before_tick
                    )
                )

    async def lease(self, job: str) -> JobLease | None:
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(select(job_leases).where(job_leases.c.job == job))
            ).mappings().first()
        if row is None:
            return None
        return JobLease(
            job=row["job"], last_tick=row["last_tick"], fencing_token=row["fencing_token"],
            holder=row["holder"], updated_at=row["updated_at"],
        )

    async def runs(self, job: str | None = None, *, limit: int = 100) -> list[JobRun]:
        """Recorded runs, newest tick first (of one job, or of all)."""
        query = select(job_runs).order_by(job_runs.c.tick.desc(), job_runs.c.id.desc())
        if job is not None:
            query = query.where(job_runs.c.job == job)
        async with self._db.reader.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [_run(r) for r in rows]


class MaintenanceStore:
    """Node-wide clean-up queries, each bounded to ``batch`` rows per transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def expire_sessions(self, now_ms: int, keep_ms: int, batch: int) -> int:
        """Delete up to ``batch`` login sessions (with their refresh tokens) that
        ended more than ``keep_ms`` ago; returns how many sessions.

        A session has ended when its refresh expiry passed or it was revoked.
        ``keep_ms`` should be at least the access-token lifetime plus leeway (the
        revocation list's horizon): until then a revoked session must stay, so a
        starting node loads it into its revocation list.
        """
        before = now_ms - keep_ms
        s = auth_sessions.c
        async with self._db.writer.begin() as conn:
            ids = list(
                (
                    await conn.execute(
                        select(s.id)
                        .where(or_(s.expires_at <= before, s.revoked_at <= before))
                        .limit(batch)
                    )
                ).scalars()
            )
            if not ids:
                return 0
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.session_id.in_(ids)))
            await conn.execute(delete(auth_sessions).where(s.id.in_(ids)))
        return len(ids)

    async def expire_oauth_codes(self, now_ms: int, batch: int) -> int:
        """Delete up to ``batch`` expired authorization codes; returns how many."""
        async with self._db.writer.begin() as conn:
            codes = list(
                (
                    await conn.execute(
                        select(oauth_codes.c.code_hash)
                        .where(oauth_codes.c.expires_at <= now_ms)
                        .limit(batch)
                    )
                ).scalars()
            )
            if codes:
                await conn.execute(delete(oauth_codes).where(oauth_codes.c.code_hash.in_(codes)))
        return len(codes)

    async def delete_messages_before(self, cutoff_ms: int, batch: int) -> int:
        """Delete the oldest messages created before ``cutoff_ms``, ``batch`` at most.

        Walks messages in id order from the lowest and stops at the first one
        that is not older than the cutoff.  Within a conversation ids grow with
        seq (a conversation's inserts are serialised), so what goes is always a
        prefix of each conversation's stream: history loses its beginning, never
        a message in the middle.  A message stamped ahead of its neighbours
        (clock skew between nodes) holds back the deletion of later ids until it
        is old enough itself.  Returns how many were deleted; fewer than
        ``batch`` means nothing older remains.
        """
        async with self._db.writer.begin() as conn:
            rows = (
                await conn.execute(
                    select(messages.c.id, messages.c.created_at)
                    .order_by(messages.c.id)
                    .limit(batch)
                )
            ).all()
            last: int | None = None
            for mid, created_at in rows:
                if created_at >= cutoff_ms:
                    break
                last = mid
            if last is None:
                return 0
            result = await conn.execute(
                delete(messages).where(messages.c.id <= last, messages.c.created_at < cutoff_ms)
            )
        return int(result.rowcount or 0)

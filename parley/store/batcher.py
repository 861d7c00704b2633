"""Group commit: many senders' messages in one transaction, acknowledged after it.

``WriteBatcher.submit`` queues a message and returns its ``AppendResult`` once
the transaction that stored it has COMMITTED -- never before, so an ack sent on
that result survives a crash.  There is no timer: an idle loop commits the
first message at once (latency at light load = one commit); while a commit is
in flight, new messages queue up and form the next batch (up to
``max_batch``), so throughput rises with load instead of latency.

``partitions`` > 1 runs that many commit loops, each owning the conversations
``conversation_id % partitions``: a conversation's messages keep their order
and different loops never touch the same conversation row.  That suits
PostgreSQL; SQLite has one writer, so it must use 1.

``CursorWriter`` coalesces delivery-cursor advances (the highest seq per user,
device and conversation) and writes them in batches behind the hot path.

Failure and overload, as the caller sees them:

* the database refuses the batch's transaction -> every message of that batch
  gets ``Unavailable`` (nothing of it is stored: one transaction); the loop
  goes on, and a resend with the same msg_id is safe (idempotent);
* ``max_pending`` messages are waiting -> ``submit`` raises ``RateLimited`` at
  once (nothing queued);
* not started, or stopping -> ``Unavailable``;
* a submitter cancelled before its message is taken into a batch -> the
  message is dropped (it was never acknowledged); cancelled after -> the batch
  still commits it, the result is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from parley.errors import RateLimited, Unavailable
from parley.faults import failpoint
from parley.metrics import Metrics
from parley.store.cursors import CursorStore, DeliveryCursor
from parley.store.messages import AppendResult, MessageStore, NewMessage

__all__ = ["CursorWriter", "WriteBatcher"]

log = logging.getLogger(__name__)


def _log_failure(exc: BaseException, what: str, *args: object) -> None:
    """Log a failed write without SQLAlchemy's echo of the statement's parameters.

    Those parameters are message bodies, which logs must never hold; the
    driver's own error (``exc.orig``) says what went wrong.
    """
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc.__cause__
        log.error(what + ": %s: %s", *args, type(exc).__name__, repr(cause))
    else:
        log.error(what, *args, exc_info=exc)


@dataclass(slots=True)
class _Partition:
    queue: deque[tuple[NewMessage, asyncio.Future[AppendResult]]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WriteBatcher:
    """The group-commit front of ``MessageStore.append``; one per node."""

    def __init__(
        self,
        store: MessageStore,
        *,
        max_batch: int = 512,
        max_pending: int = 20_000,
        partitions: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or partitions < 1:
            raise ValueError("max_batch, max_pending and partitions must be positive")
        if partitions > 1 and store.backend == "sqlite":
            raise ValueError("SQLite has a single writer: use partitions=1")
        self._store = store
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._metrics = metrics
        self._parts = [_Partition() for _ in range(partitions)]
        self._pending = 0  # submitted and not yet resolved (queued or in a batch)
        self._evloop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._running = False

    @property
    def pending(self) -> int:
        """Messages submitted and not yet answered (queued or being committed)."""
        return self._pending

    @property
    def queued(self) -> int:
        """Messages waiting for a batch (not yet being committed)."""
        return sum(len(p.queue) for p in self._parts)

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        # Kept for enqueue's futures: on Python 3.11 asyncio.get_running_loop()
        # is a getpid() system call (3.4% of the node's samples at 4,000 msg/s).
        loop = self._evloop = asyncio.get_running_loop()
        for i, part in enumerate(self._parts):
            part.task = loop.create_task(self._run(part), name=f"parley-commit-{i}")

    async def stop(self) -> None:
        """Refuse new messages, commit every queued one, then return."""
        self._running = False
        tasks = [p.task for p in self._parts if p.task is not None]
        for part in self._parts:
            part.wake.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for part in self._parts:
            part.task = None

    async def submit(self, msg: NewMessage) -> AppendResult:
        """Store ``msg`` with the next batch; return its result once committed.

        Raises RateLimited when too many messages are waiting and Unavailable
        when the batch's transaction failed or the batcher is not running --
        in both cases the message is not stored, and resending it is safe.
        """
        return await self.enqueue(msg)

    def enqueue(self, msg: NewMessage) -> asyncio.Future[AppendResult]:
        """Queue ``msg`` now (messages of one conversation are stored in queueing
        order); the future resolves once committed.  Raises as ``submit``."""
        if not self._running:
            raise Unavailable("the message store is not accepting messages")
        if self._pending >= self._max_pending:
            raise RateLimited("too many messages waiting to be stored; retry shortly")
        part = self._parts[msg.conversation_id % len(self._parts)]
        if part.task is None or part.task.done():
            raise Unavailable("the message store is not accepting messages")
        assert self._evloop is not None  # running
        fut: asyncio.Future[AppendResult] = self._evloop.create_future()
        part.queue.append((msg, fut))
        self._pending += 1
        part.wake.set()
        return fut

    async def _run(self, part: _Partition) -> None:
        try:
            await self._loop(part)
        finally:
            # Normally empty by now; not when this task was cancelled: fail, never hang.
            while part.queue:
                _, fut = part.queue.popleft()
                self._pending -= 1
                if not fut.done():
                    fut.set_exception(Unavailable("the message store stopped"))

    async def _loop(self, part: _Partition) -> None:
        queue = part.queue
        while True:
            if not queue:
                if not self._running:
                    return
                part.wake.clear()
                await part.wake.wait()
                continue
            batch: list[tuple[NewMessage, asyncio.Future[AppendResult]]] = []
            while queue and len(batch) < self._max_batch:
                item = queue.popleft()
                if item[1].done():  # its submitter was cancelled: never acknowledged, drop
                    self._pending -= 1
                else:
                    batch.append(item)
            if batch:
                await self._commit(batch)

    async def _commit(
        self, batch: Sequence[tuple[NewMessage, asyncio.Future[AppendResult]]]
    ) -> None:
        started = time.perf_counter()
        ok = False
        try:
            results = await self._store.append([msg for msg, _ in batch])
            failpoint("after-commit")
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            ok = True
        except Exception as exc:  # noqa: BLE001 - any failure of the transaction fails the batch
            _log_failure(exc, "committing a batch of %d messages failed", len(batch))
        finally:
            # Also reached when this loop is cancelled mid-commit: no waiter hangs.
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(Unavailable("the message could not be stored; retry"))
            self._pending -= len(batch)
            self._observe(len(batch), time.perf_counter() - started, ok)

    def _observe(self, size: int, seconds: float, ok: bool) -> None:
        m = self._metrics
        if m is None:
            return
        if ok:
            m.db_batch_size.observe(size)
            m.db_commit_duration.observe(seconds)
        else:
            m.db_commit_errors.inc()


_CursorKey = tuple[int, int, str, int]  # tenant, user, device, conversation


class CursorWriter:
    """Coalesces delivery-cursor advances and writes them in the background.

    ``advance`` never blocks: it keeps the highest seq per (tenant, user,
    device, conversation) and wakes the writer.  The writer flushes whenever
    there is something to write -- at once when ``flush_interval`` is 0 (each
    flush starts when the previous one finished, so writes batch themselves
    under load), or after up to ``flush_interval`` seconds to coalesce more.

    Memory is bounded by ``max_keys`` distinct keys: reaching it forces a flush,
    and advances for new keys beyond it are dropped and counted in
    ``dropped``.  A lost advance only means the device may be sent those
    messages again on its next sync (delivery is at-least-once; devices
    dedup by msg_id).  A failed write keeps its cursors for the next flush.
    """

    def __init__(
        self,
        store: CursorStore,
        *,
        max_keys: int = 100_000,
        flush_interval: float = 0.0,
        retry_interval: float = 1.0,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self._store = store
        self._max_keys = max_keys
        self._interval = flush_interval
        self._retry = retry_interval
        self._pending: dict[_CursorKey, DeliveryCursor] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # advances refused because max_keys cursors were waiting
        self.failures = 0  # writes that failed

    @property
    def pending(self) -> int:
        """Distinct cursors waiting to be written."""
        return len(self._pending)

    def advance(self, cursor: DeliveryCursor) -> None:
        """Record that a device acknowledged ``cursor.acked_seq``; written soon."""
        key = (cursor.tenant_id, cursor.user_id, cursor.device_id, cursor.conversation_id)
        prev = self._pending.get(key)
        if prev is None:
            if len(self._pending) >= self._max_keys:
                self.dropped += 1
                self._full.set()
                return
            self._pending[key] = cursor
            if len(self._pending) >= self._max_keys:
                self._full.set()
        elif cursor.acked_seq > prev.acked_seq:
            self._pending[key] = cursor
        self._wake.set()

    async def flush(self) -> None:
        """Write every cursor advanced before this call.

        Raises Unavailable when the write fails; the cursors are kept (merged
        with newer advances) for the next flush.
        """
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            self._full.clear()
            try:
                await self._store.advance_delivery(list(batch.values()))
            except BaseException as exc:  # cancelled too: keep the cursors (rewriting is harmless)
                self._restore(batch)
                if not isinstance(exc, Exception):
                    raise
                self.failures += 1
                raise Unavailable("delivery cursors could not be written") from exc

    def _restore(self, batch: dict[_CursorKey, DeliveryCursor]) -> None:
        for key, old in batch.items():
            new = self._pending.get(key)
            if new is None:
                if len(self._pending) < self._max_keys:
                    self._pending[key] = old
                else:
                    self.dropped += 1
            elif old.acked_seq > new.acked_seq:
                self._pending[key] = old

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="parley-cursor-writer")

    async def stop(self) -> None:
        """Stop the background writer, then flush what is left.

        Never raises: if the last write fails its cursors are lost and logged
        (those devices are sent the messages again on their next sync).
        """
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except Unavailable as exc:
            _log_failure(exc.__cause__ or exc, "%d delivery cursors lost", len(self._pending))
            self._pending.clear()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            if self._stopping.is_set():
                return
            if self._interval > 0 and not self._full.is_set():
                await self._pause(self._full, self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Unavailable as exc:
                _log_failure(exc.__cause__ or exc, "writing delivery cursors failed; will retry")
                self._wake.set()
                await self._pause(self._stopping, self._retry)

    @staticmethod
    async def _pause(event: asyncio.Event, seconds: float) -> None:
        """Wait up to ``seconds``, less if ``event`` is set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

"""One load worker process: its share of connections and of the open-loop schedule.

Spawned by the coordinator with a :class:`WorkerSpec`; runs uvloop; talks to
the coordinator over a ``multiprocessing`` pipe:

* worker -> coordinator: ``("report", Report)`` every ``interval`` seconds
  (cumulative counters, histogram deltas), ``("ready", Report)`` once every
  connection attempt finished, ``("summary", (senders, streams))`` on
  ``check``, ``("bye", Report)`` before exiting.
* coordinator -> worker: ``("run", t0_ns, duration_s, rate, warmup_s)``,
  ``("interval", seconds)``, ``("check",)``, ``("finish",)``.

**Open loop**: send number ``i`` is due at ``t0 + i / rate`` whatever
happened to earlier sends; latencies are measured from that intended time, so
a stall (server or client) shows up in the percentiles instead of silently
slowing the schedule.  The worker sleeps until the next send is due on a
``timerfd`` up to ``_PRECISE_UP_TO`` sends a second (Linux,
:mod:`parley.bench.clock`: tens of microseconds late), else on loop timers
(libuv counts whole milliseconds: up to 1-2 ms late), and sends everything due
by then, each timed from its own intended time; ``lag`` records how late the
worker itself was.  Each payload also carries how late its own send was, so a
delivery is timed twice: from the intended time (``deliver``, what a user
waiting on the schedule sees) and from the moment the frame was written
(``sent_deliver``: the server and the network, without the worker's
lateness).  The schedule stays open either way:
a server stall never delays a send, so it shows up in both.

**Warm-up**: a run with ``warmup_s`` sends on the same schedule for that long
before its measured ``duration_s``.  A message whose intended time falls in the
warm-up is counted and checked like any other (sent, acked, delivered, the
checker's streams) but its latencies go to the ``warm_*`` histograms, never to
``ack``/``deliver``/``lag``; the ``warm_*`` counters say how many there were.

The garbage collector is frozen and disabled once the connections are open
(a collection pauses the client for 20-200 ms and would fake latency); the
hot path creates no reference cycles.  The worker exits on its own at its
hard deadline.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram

from parley.bench.checker import ReceiveChecker, SendLedger
from parley.bench.clock import precise_timer
from parley.bench.targets import ConnectFailed, Connector, TargetConnection
from parley.client import Backoff

__all__ = ["Report", "UserSpec", "WorkerSpec", "new_histogram", "worker_main"]

HIST_MAX_US = 60_000_000
_TICK_S = 0.001
"""The schedule's shortest sleep on loop timers.  libuv timers count whole
milliseconds and uvloop runs a delay under 0.5 ms on the next loop iteration:
sleeping less than this kept the worker spinning (a core's worth of CPU at 2,000
sends/s)."""
_PRECISE_TICK_NS = 200_000
"""The schedule's shortest sleep on a :class:`~parley.bench.clock.PreciseTimer`."""
_PRECISE_UP_TO = 2_000.0
"""Sends per second of one worker up to which it sleeps on a timerfd; above, on
loop timers.  At light load a send 0.6-0.8 ms late (loop timers) is as long as
the server's whole send->deliver time; at high rates the clumps of 1 ms are
what the node is measured with, and smaller ones cost the machine more than the
lateness is worth.  Measured at 11,000 msg/s (one worker) on this 2-core
machine, loop timers against a timerfd with ticks 0.2 ms apart: load client 14.5
against 18 µs of CPU per message, node 68-69 against 75-83 µs (fewer frames per
wake-up), ack p99 94-108 ms against 0.67-4.2 s; with ticks 1 ms apart the
timerfd fell behind at 1,000 sends/s (a tick as long as the step drifts late)."""
_RESUME_BACKOFF = Backoff(initial=0.1, maximum=2.0)
_RESUME_GIVE_UP_S = 60.0
"""A user whose connection the server closed is reconnected after 50-100 ms, then
with doubling pauses up to 2 s, for at most a minute (then counted in errors):
first where the server sent it (``reconnect`` ``moved``), else to its own node,
and after a failed attempt to the next node of the run (a node down: any other
redirects it to where its user now lives)."""


def new_histogram() -> HdrHistogram:
    """Latency in microseconds, 1 µs .. 60 s, 3 significant digits."""
    return HdrHistogram(1, HIST_MAX_US, 3)


@dataclass(frozen=True, slots=True)
class UserSpec:
    index: int
    credential: str
    url: str
    conv: str | None
    """Where this user sends (None: it only receives)."""
    fanout: int
    """How many receivers each of its messages has."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    connector: Connector
    users: tuple[UserSpec, ...]
    local_host: str
    keepalive_s: float | None
    connect_concurrency: int
    deadline_s: float
    interval_s: float = 1.0
    connect_rate: float = 0.0
    """This worker's connections per second (0: as fast as ``connect_concurrency`` allows)."""


@dataclass(slots=True)
class Report:
    worker: int
    t_ns: int
    conns_open: int = 0
    conns_failed: int = 0
    connect_attempts: int = 0
    sent: int = 0
    acked: int = 0
    failed: int = 0
    delivered: int = 0
    expected: int = 0
    duplicates: int = 0
    cpu_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    closes: dict[int, int] = field(default_factory=dict)
    ack_hist: bytes = b""
    deliver_hist: bytes = b""
    connect_hist: bytes = b""
    lag_hist: bytes = b""
    sent_deliver_hist: bytes = b""
    """Send->deliver from the moment the frame was written (the worker's own
    lateness, ``lag``, left out); ``deliver_hist`` counts from the intended time."""
    redirects: int = 0
    """Redirects followed before connections were accepted (``conn.redirects``)."""
    reconnects: int = 0
    """Connections the server closed that the worker brought back (see ``_Worker.resume``)."""
    gap_syncs: int = 0
    """Syncs sent because a conversation's gap stayed open a second (the connector's)."""
    warm_sent: int = 0
    warm_acked: int = 0
    warm_delivered: int = 0
    warm_ack_hist: bytes = b""
    warm_deliver_hist: bytes = b""


class _User:
    """One bench user in a worker: its connection's :class:`Events`, and its sends."""

    __slots__ = ("conn", "conv", "fanout", "index", "inflight", "late", "next_seq", "resuming",
                 "spec", "w")

    def __init__(self, w: _Worker, spec: UserSpec) -> None:
        self.w = w
        self.spec = spec
        self.index = spec.index
        self.conv = spec.conv
        self.fanout = spec.fanout
        self.conn: TargetConnection | None = None
        self.next_seq = 1
        self.inflight = w.ledger.open(spec.index) if spec.conv is not None else {}
        self.late: dict[int, int] = {}
        """seq -> the send's lateness (µs) written into its payload, until acked: a
        message resent on a new connection must be the same bytes."""
        self.resuming = False

    def send(self, intended_ns: int) -> None:
        seq = self.next_seq
        self.next_seq = seq + 1
        w = self.w
        w.ledger.sent(self.index, seq, intended_ns)
        w.sent += 1
        if intended_ns < w.measure_from:
            w.warm_sent += 1
        if self.conv is not None:
            self.late[seq] = (time.monotonic_ns() - intended_ns) // 1000
            if self.conn is not None:
                self.conn.send(self.conv, self._payload(seq, intended_ns), seq)

    def _payload(self, seq: int, intended_ns: int) -> bytes:
        """``sender.seq.intended_ns.late_us``: what the receiver checks and times."""
        return b"%d.%d.%d.%d" % (self.index, seq, intended_ns, self.late[seq])

    def resend(self) -> None:
        """Send again, in order, every message not acknowledged (same id, same bytes:
        the server stores each once and acks a repeat with the first one's seq)."""
        conn, conv = self.conn, self.conv
        if conn is None or conv is None:
            return
        for seq, intended_ns in sorted(self.inflight.items()):
            conn.send(conv, self._payload(seq, intended_ns), seq)

    # -- Events ------------------------------------------------------------------
    def acked(self, token: int) -> None:
        t0 = self.inflight.pop(token, None)
        w = self.w
        if t0 is None:
            w.errors["unexpected_ack"] += 1
            return
        del self.late[token]
        w.acked += 1
        w.expected += self.fanout
        us = min((time.monotonic_ns() - t0) // 1000 or 1, HIST_MAX_US)
        if w.warm_from <= t0 < w.measure_from:
            w.warm_acked += 1
            w.warm_ack_hist.record_value(us)
        else:
            w.ack_hist.record_value(us)

    def failed(self, token: int, code: str) -> None:
        w = self.w
        if token == 0:  # not a send: the connection's sync (rid 0)
            w.errors[f"sync_{code}"] += 1
            return
        w.ledger.failed(self.index, token)
        self.late.pop(token, None)
        w.failed += 1
        w.errors[code] += 1

    def delivered(self, payload: bytes) -> None:
        w = self.w
        s, q, t, late = payload.split(b".")
        intended = int(t)
        w.delivered += 1
        us = (time.monotonic_ns() - intended) // 1000
        if w.warm_from <= intended < w.measure_from:
            w.warm_delivered += 1
            w.warm_deliver_hist.record_value(min(us or 1, HIST_MAX_US))
        else:
            w.deliver_hist.record_value(min(us or 1, HIST_MAX_US))
            w.sent_deliver_hist.record_value(min(max(us - int(late), 1), HIST_MAX_US))
        w.checker.record(int(s), self.index, int(q))

    def closed(self, code: int, reason: str) -> None:
        w = self.w
        old = self.conn
        if old is not None:
            w.conns_open -= 1
            self.conn = None
        w.closes[code] += 1
        if old is not None and code != 1000:
            w.resume(self, old)


class _Worker:
    def __init__(self, spec: WorkerSpec, pipe: Connection) -> None:
        self.spec = spec
        self.pipe = pipe
        self.ledger = SendLedger()
        self.checker = ReceiveChecker()
        self.users = [_User(self, u) for u in spec.users]
        self.senders = [u for u in self.users if u.conv is not None]
        self.sent = self.acked = self.failed = self.delivered = self.expected = 0
        self.conns_open = self.conns_failed = self.connect_attempts = self.redirects = 0
        self.reconnects = 0
        self.live = False
        """Between connecting and closing: a connection the server closes is resumed."""
        self._resumes: set[asyncio.Task[None]] = set()
        self._urls = sorted({u.url for u in spec.users})
        """The run's nodes (this worker's users'): where a resume tries next."""
        self.warm_sent = self.warm_acked = self.warm_delivered = 0
        self.warm_from = self.measure_from = 0
        """Intended send times in ``[warm_from, measure_from)`` belong to a warm-up."""
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.ack_hist = new_histogram()
        self.deliver_hist = new_histogram()
        self.connect_hist = new_histogram()
        self.lag_hist = new_histogram()
        self.sent_deliver_hist = new_histogram()
        self.warm_ack_hist = new_histogram()
        self.warm_deliver_hist = new_histogram()
        self.interval_s = spec.interval_s
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    # -- reporting ------------------------------------------------------------------
    def report(self) -> Report:
        """Counters so far and each histogram's delta since the last report.

        The hot path reads the histograms through ``self`` on every record: they
        are swapped for fresh ones here."""
        ack, self.ack_hist = _take(self.ack_hist)
        deliver, self.deliver_hist = _take(self.deliver_hist)
        connect, self.connect_hist = _take(self.connect_hist)
        lag, self.lag_hist = _take(self.lag_hist)
        sent_deliver, self.sent_deliver_hist = _take(self.sent_deliver_hist)
        warm_ack, self.warm_ack_hist = _take(self.warm_ack_hist)
        warm_deliver, self.warm_deliver_hist = _take(self.warm_deliver_hist)
        return Report(
            worker=self.spec.index, t_ns=time.monotonic_ns(), conns_open=self.conns_open,
            conns_failed=self.conns_failed, connect_attempts=self.connect_attempts,
            sent=self.sent, acked=self.acked, failed=self.failed, delivered=self.delivered,
            expected=self.expected, duplicates=self.checker.duplicates, cpu_s=time.process_time(),
            errors=dict(self.errors), closes=dict(self.closes),
            ack_hist=ack, deliver_hist=deliver, connect_hist=connect, lag_hist=lag,
            sent_deliver_hist=sent_deliver, redirects=self.redirects, reconnects=self.reconnects,
            gap_syncs=getattr(getattr(self.spec.connector, "acks", None), "gap_syncs", 0),
            warm_sent=self.warm_sent, warm_acked=self.warm_acked,
            warm_delivered=self.warm_delivered, warm_ack_hist=warm_ack,
            warm_deliver_hist=warm_deliver,
        )

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.pipe.send(("report", self.report()))

    def read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: the pipe stays blocking (an event loop reader would make it
        non-blocking, and a large summary would then fail with EAGAIN)."""
        while True:
            try:
                cmd = self.pipe.recv()
            except (EOFError, OSError):
                cmd = ("finish",)
            loop.call_soon_threadsafe(self.commands.put_nowait, cmd)
            if cmd[0] == "finish":
                return

    # -- phases ---------------------------------------------------------------------
    async def connect_all(self) -> None:
        sem = asyncio.Semaphore(self.spec.connect_concurrency)
        connector = self.spec.connector
        local = self.spec.local_host
        keepalive = self.spec.keepalive_s

        rate = self.spec.connect_rate
        start = time.monotonic()

        async def one(i: int, u: _User, spec: UserSpec) -> None:
            if rate > 0:  # paced: the i-th connection starts no earlier than i / rate
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            async with sem:
                self.connect_attempts += 1
                t0 = time.monotonic_ns()
                try:
                    conn = await connector.connect(u.index, spec.credential, spec.url, local, u,
                                                   keepalive)
                except ConnectFailed as exc:
                    self.conns_failed += 1
                    self.errors[f"connect_{exc.code}"] += 1
                    return
                self.connect_hist.record_value(
                    min((time.monotonic_ns() - t0) // 1000 or 1, HIST_MAX_US))
                u.conn = conn
                self.conns_open += 1
                self.redirects += getattr(conn, "redirects", 0)

        await asyncio.gather(*(one(i, u, s) for i, (u, s) in enumerate(
            zip(self.users, self.spec.users, strict=True))))
        self.live = True

    def resume(self, u: _User, old: TargetConnection) -> None:
        """Bring ``u`` back after the server closed its connection (a node restarting
        or draining, a slow consumer cut off), as an app would: reconnect with
        backoff, sync what came in between, resend what was not acknowledged.
        Only with a connector that can (``reconnect``); gives up after 60 s."""
        reconnect = getattr(self.spec.connector, "reconnect", None)
        if not self.live or u.resuming or reconnect is None:
            return
        u.resuming = True
        task = asyncio.get_running_loop().create_task(self._resume(u, old, reconnect))
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    async def _resume(self, u: _User, old: TargetConnection, reconnect: Any) -> None:
        spec, attempt = u.spec, 0
        moved = getattr(old, "moved_to", None)
        url = moved.split("?")[0] if moved else spec.url
        give_up = time.monotonic() + _RESUME_GIVE_UP_S
        try:
            while self.live:
                await asyncio.sleep(_RESUME_BACKOFF.delay(attempt, random.random()))
                attempt += 1
                self.connect_attempts += 1
                try:
                    conn = await reconnect(old, u.index, spec.credential, url,
                                           self.spec.local_host, u, self.spec.keepalive_s)
                except Exception as exc:  # noqa: BLE001 - any failed attempt is retried
                    if time.monotonic() > give_up:
                        code = exc.code if isinstance(exc, ConnectFailed) else type(exc).__name__
                        self.errors[f"reconnect_{code}"] += 1
                        return
                    url = self._next_url(url)
                    continue
                if not self.live:
                    conn.close()
                    return
                if getattr(conn, "closed_code", None) is not None:
                    # Closed again before it got here (a slot moving on while the
                    # cluster rebalances: 4010): its close found no connection to
                    # resume, so this loop goes on.
                    old = conn
                    moved = getattr(conn, "moved_to", None)
                    url = moved.split("?")[0] if moved else url
                    continue
                u.conn = conn
                self.conns_open += 1
                self.reconnects += 1
                u.resend()
                return
        finally:
            u.resuming = False

    def _next_url(self, url: str) -> str:
        """The node after ``url`` among the run's (sorted), for the next attempt."""
        urls = self._urls
        return urls[(urls.index(url) + 1) % len(urls)] if url in urls else url

    async def run(self, t0_ns: int, duration_s: float, rate: float,
                  warmup_s: float = 0.0) -> None:
        """Send at ``rate`` from ``t0_ns`` for ``warmup_s`` then ``duration_s``.

        A run without warm-up keeps the last warm-up's window, so a warm-up
        message acknowledged late is still told apart."""
        measured = t0_ns + int(warmup_s * 1e9)
        if warmup_s > 0:
            self.warm_from, self.measure_from = t0_ns, measured
        end = measured + int(duration_s * 1e9)
        if rate <= 0 or not self.senders:
            await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
            return
        schedule = _Schedule(self, asyncio.get_running_loop(), t0_ns, measured, end, rate)
        schedule.tick()
        try:
            await schedule.done
        finally:
            schedule.stop()

    def close_all(self) -> None:
        self.live = False
        for task in self._resumes:
            task.cancel()
        for u in self.users:
            if u.conn is not None:
                u.conn.close()


class _Schedule:
    """One run's sends: a tick sends every send due by now, then sleeps until the
    next one is due, on a :class:`~parley.bench.clock.PreciseTimer` where there is
    one and the rate is at most ``_PRECISE_UP_TO`` (at least ``_PRECISE_TICK_NS``
    apart), else on loop timers (at least ``_TICK_S``).  No task, no future per
    tick; ``done`` resolves after the last send (or fails with what a send
    raised)."""

    __slots__ = ("done", "end", "handle", "i", "loop", "measured", "senders", "step", "t0",
                 "timer", "w")

    def __init__(self, w: _Worker, loop: asyncio.AbstractEventLoop, t0_ns: int, measured: int,
                 end: int, rate: float) -> None:
        self.w = w
        self.loop = loop
        self.senders = w.senders
        self.t0, self.measured, self.end = t0_ns, measured, end
        self.step = 1e9 / rate
        self.i = 0
        self.handle: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.timer = precise_timer(loop, self.tick) if rate <= _PRECISE_UP_TO else None

    def tick(self) -> None:
        self.handle = None
        try:
            due = self._send_due()
        except Exception as exc:  # noqa: BLE001 - raised again by run()
            if not self.done.done():
                self.done.set_exception(exc)
            return
        if due >= self.end:
            if not self.done.done():
                self.done.set_result(None)
            return
        now = time.monotonic_ns()
        if self.timer is not None:
            self.timer.at(max(due, now + _PRECISE_TICK_NS))
            return
        delay = (due - now) / 1e9
        self.handle = self.loop.call_later(delay if delay > _TICK_S else _TICK_S, self.tick)

    def _send_due(self) -> int:
        """Send what is due; the intended time of the next send."""
        t0, step, end, i = self.t0, self.step, self.end, self.i
        due = t0 + int(i * step)
        t = time.monotonic_ns()
        if due <= t and due < end:
            if due >= self.measured:
                self.w.lag_hist.record_value(min((t - due) // 1000 or 1, HIST_MAX_US))
            senders = self.senders
            n = len(senders)
            while due <= t and due < end:
                senders[i % n].send(due)
                i += 1
                due = t0 + int(i * step)
            self.i = i
        return due

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.timer is not None:
            self.timer.close()
            self.timer = None


def _take(h: HdrHistogram) -> tuple[bytes, HdrHistogram]:
    """An interval's delta, encoded, and the histogram to record the next one into
    (a fresh one: ``reset`` zeroes ~17,000 counters one by one in Python)."""
    if h.get_total_count() == 0:
        return b"", h
    data: bytes = h.encode()
    return data, new_histogram()


async def _main(spec: WorkerSpec, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(spec.deadline_s, os._exit, 3)
    w = _Worker(spec, pipe)
    threading.Thread(target=w.read_commands, args=(loop,), daemon=True).start()
    await w.connect_all()
    gc.collect()
    gc.freeze()
    gc.disable()
    pipe.send(("ready", w.report()))
    reporter = asyncio.create_task(w.reporter())
    try:
        while True:
            cmd = await w.commands.get()
            if cmd[0] == "run":
                await w.run(*cmd[1:])
                pipe.send(("ran", w.report()))
            elif cmd[0] == "interval":
                w.interval_s = float(cmd[1])
            elif cmd[0] == "check":
                pipe.send(("report", w.report()))
                pipe.send(("summary", (w.ledger.summary(), w.checker.summary())))
            elif cmd[0] == "finish":
                break
    finally:
        reporter.cancel()
        w.close_all()
        await asyncio.sleep(0.2)
        gc.enable()
        pipe.send(("bye", w.report()))


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    """Entry point of a spawned worker process."""
    import uvloop

    try:
        uvloop.run(_main(spec, pipe))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        pipe.close()

"""The coordinator: provisions, spawns workers, drives phases, merges reports.

One run: ``target.start()`` -> ``provision`` -> spawn workers (each connects
its users and says ``ready``) -> phases (``run`` at a rate, for an optional
warm-up then the measured duration, then a bounded drain until every
acknowledged message reached every receiver, then ``check``: the checker's
verdict) -> ``finish`` -> ``target.close()``.  Everything is under one hard
deadline.  Per-second points (rates, latency percentiles, connections, server
RSS/CPU, client CPU, and with a ``DiskProbe`` the disk's longest flush) form the
time series; a point whose second lies mostly in
a warm-up is labelled ``warmup``, and every point shows the latencies of all the
messages acknowledged or delivered in its second, warm-up or not.

A warm-up's messages count everywhere correctness is judged (the phase's
verdict); their latencies are kept apart (``warm_ack``/``warm_deliver``), out of
the phase's histograms, and throughput divides the measured messages by the
measured duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram

from parley.bench.checker import SenderSummary, StreamSummary, Verdict, verdict
from parley.bench.diskprobe import DiskProbe
from parley.bench.scenarios import Shape, user_specs
from parley.bench.stats import (
    CpuTimes,
    LoopLag,
    ServerSample,
    ServerStats,
    loop_lag_summary,
    machine_busy,
    machine_cpu,
)
from parley.bench.targets import Provisioned, Target
from parley.bench.worker import Report, WorkerSpec, new_histogram, worker_main
from parley.client.client import PING_INTERVAL_S

__all__ = ["Coordinator", "Phase", "PhaseResult", "RunConfig", "Warmup", "percentiles"]


@dataclass(frozen=True, slots=True)
class Phase:
    rate: float
    duration_s: float
    warmup_s: float = 0.0
    """Seconds sent at ``rate`` before ``duration_s``: checked, latencies not recorded."""


@dataclass(slots=True)
class RunConfig:
    shape: Shape
    workers: int = 0
    """0: as few as keep every worker under ``max_sockets`` sockets."""
    max_sockets: int = 15_000
    keepalive_s: float | None = PING_INTERVAL_S
    connect_concurrency: int = 200
    connect_rate: float = 0.0
    """Connections opened per second, all workers together (0: no pacing)."""
    drain_s: float = 10.0
    deadline_s: float = 600.0
    source_hosts: int = 0
    """Source addresses 127.0.0.2 .. 127.0.0.(1+n) (0: one per worker)."""


def percentiles(h: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p999/max in milliseconds (0 when empty)."""
    if h.get_total_count() == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "count": 0}
    ms = 1000.0
    return {"p50": h.get_value_at_percentile(50) / ms, "p90": h.get_value_at_percentile(90) / ms,
            "p99": h.get_value_at_percentile(99) / ms,
            "p999": h.get_value_at_percentile(99.9) / ms, "max": h.get_max_value() / ms,
            "count": h.get_total_count()}


@dataclass(slots=True)
class PhaseResult:
    rate: float
    duration_s: float
    verdict: Verdict
    ack: HdrHistogram
    deliver: HdrHistogram
    lag: HdrHistogram
    sent_deliver: HdrHistogram
    client_cpu_s: float
    server_cpu_s: float
    errors: dict[str, int]
    drained: bool
    warmup: Warmup = field(default_factory=lambda: Warmup(0.0))
    loop_lag: tuple[LoopLag | None, LoopLag | None] = (None, None)
    """The nodes' loop-lag histograms once the warm-up was over and after the drain."""
    machine: tuple[CpuTimes | None, CpuTimes | None] = (None, None)
    """The machine's CPU times at the phase's start and after its drain."""

    def as_dict(self) -> dict[str, Any]:
        v, w = self.verdict, self.warmup
        d = self.duration_s or 1.0
        out = {
            "rate": self.rate, "duration_s": self.duration_s, "warmup_s": w.duration_s,
            "sent": v.sent, "acked": v.acked,
            "unacked": v.unacked, "expected": v.expected, "delivered": v.delivered,
            "lost": v.lost, "duplicated": v.duplicated, "reordered": v.reordered,
            "delivered_unacked": v.delivered_unacked, "drained": self.drained,
            "throughput_per_s": max(0, v.acked - w.acked) / d,
            "deliveries_per_s": max(0, v.delivered - w.delivered) / d,
            "ack_ms": percentiles(self.ack), "deliver_ms": percentiles(self.deliver),
            "deliver_from_send_ms": percentiles(self.sent_deliver),
            "client_lag_ms": percentiles(self.lag), "client_cpu_s": self.client_cpu_s,
            "client_cpu_us_per_msg": _per(self.client_cpu_s, v.sent + v.delivered),
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_msg": _per(self.server_cpu_s, v.sent),
            "server_loop_lag": loop_lag_summary(*self.loop_lag),
            "machine_busy": machine_busy(*self.machine),
            "errors": self.errors,
        }
        if w.duration_s:
            out["warmup"] = w.as_dict()
        return out


@dataclass(slots=True)
class Warmup:
    """A phase's warm-up: its messages (counted in the phase's verdict too) and
    their latencies (in no other histogram)."""

    duration_s: float
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    ack: HdrHistogram = field(default_factory=new_histogram)
    deliver: HdrHistogram = field(default_factory=new_histogram)

    def add(self, other: Warmup) -> None:
        self.duration_s += other.duration_s
        self.sent += other.sent
        self.acked += other.acked
        self.delivered += other.delivered
        self.ack.add(other.ack)
        self.deliver.add(other.deliver)

    def as_dict(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "sent": self.sent, "acked": self.acked,
                "delivered": self.delivered, "ack_ms": percentiles(self.ack),
                "deliver_ms": percentiles(self.deliver)}


def _minus(v: Verdict, p: Verdict) -> Verdict:
    """What happened in one phase, from cumulative verdicts."""
    names = ("sent", "acked", "unacked", "expected", "delivered", "lost", "duplicated",
             "reordered", "delivered_unacked")
    out = Verdict(**{n: getattr(v, n) - getattr(p, n) for n in names})
    out.lost_streams = v.lost_streams
    return out


def _both(a: HdrHistogram, b: HdrHistogram) -> HdrHistogram:
    """``a`` and ``b`` together (a series point shows every latency of its second)."""
    if b.get_total_count() == 0:
        return a
    out = new_histogram()
    out.add(a)
    out.add(b)
    return out


def _per(cpu_s: float, n: int) -> float:
    return cpu_s * 1e6 / n if n else 0.0


@dataclass(slots=True)
class _WorkerHandle:
    spec: WorkerSpec
    proc: Any
    pipe: Connection
    last: Report | None = None
    ready: bool = False
    ran: bool = False
    bye: bool = False
    summary: tuple[dict[int, SenderSummary], dict[int, StreamSummary]] | None = None


@dataclass(slots=True)
class _Totals:
    ack: HdrHistogram = field(default_factory=new_histogram)
    deliver: HdrHistogram = field(default_factory=new_histogram)
    lag: HdrHistogram = field(default_factory=new_histogram)
    sent_deliver: HdrHistogram = field(default_factory=new_histogram)
    connect: HdrHistogram = field(default_factory=new_histogram)
    warm_ack: HdrHistogram = field(default_factory=new_histogram)
    warm_deliver: HdrHistogram = field(default_factory=new_histogram)

    def add(self, r: Report) -> None:
        for name in ("ack", "deliver", "lag", "sent_deliver", "connect", "warm_ack",
                     "warm_deliver"):
            data = getattr(r, f"{name}_hist")
            if data:
                getattr(self, name).add(HdrHistogram.decode(data))


class Coordinator:
    """Runs one scenario against a started, provisioned target."""

    def __init__(self, target: Target, cfg: RunConfig, progress: Any = None,
                 probe: DiskProbe | None = None) -> None:
        self.target = target
        self.cfg = cfg
        self.progress = progress
        self.probe = probe
        """Its longest flush of each second goes into the series (``disk_flush_max_ms``)."""
        self.workers: list[_WorkerHandle] = []
        self.all = _Totals()
        self.phase = _Totals()
        self.tick = _Totals()
        self.series: list[dict[str, Any]] = []
        self.t_start = time.monotonic()
        self.stats = ServerStats(target.server_pids(), target.metrics_urls())
        self.server: ServerSample | None = None
        self.server_before: ServerSample | None = None
        self.connected_at: float | None = None
        self.opened = 0
        """Connections open once every worker was ready."""
        self.label = "starting"
        self._warm_ns = (0, 0)
        """[start, end) of the latest warm-up, ``time.monotonic_ns()``."""
        self.last_point: dict[str, Any] = {}
        self._verdict = Verdict()
        self._event = asyncio.Event()

    # -- totals over workers ---------------------------------------------------------
    def total(self, name: str) -> int:
        return sum(int(getattr(w.last, name)) for w in self.workers if w.last is not None)

    def errors(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for w in self.workers:
            if w.last is not None:
                c.update(w.last.errors)
                c.update({f"close_{k}": v for k, v in w.last.closes.items()
                          if k not in (1000, 1001)})
        return dict(c)

    def client_cpu(self) -> float:
        return sum(w.last.cpu_s for w in self.workers if w.last is not None)

    # -- workers ---------------------------------------------------------------------
    def _spawn(self, prov: Provisioned) -> None:
        cfg = self.cfg
        specs = user_specs(cfg.shape, prov)
        n = cfg.workers or max(1, math.ceil(len(specs) / cfg.max_sockets))
        per = math.ceil(len(specs) / n)
        if per % 2:
            per += 1  # keep chat pairs in one worker
        ctx = mp.get_context("spawn")
        hosts = cfg.source_hosts or n
        for k in range(n):
            chunk = tuple(specs[k * per:(k + 1) * per])
            if not chunk and k:
                break
            spec = WorkerSpec(
                index=k, connector=self.target.connector(), users=chunk,
                local_host=f"127.0.0.{2 + k % min(hosts, 250)}", keepalive_s=cfg.keepalive_s,
                connect_concurrency=cfg.connect_concurrency, deadline_s=cfg.deadline_s + 30,
                connect_rate=cfg.connect_rate / n,
            )
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, child), daemon=True,
                               name=f"parley-bench-{k}")
            proc.start()
            child.close()
            h = _WorkerHandle(spec, proc, parent)
            self.workers.append(h)
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._read_pipe, args=(h, loop), daemon=True).start()

    def _read_pipe(self, h: _WorkerHandle, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread (the pipe stays blocking); hands each message to the loop."""
        while True:
            try:
                msg = h.pipe.recv()
            except (EOFError, OSError):
                msg = ("eof", None)
            loop.call_soon_threadsafe(self._on_message, h, msg)
            if msg[0] in ("eof", "bye"):
                return

    def _on_message(self, h: _WorkerHandle, msg: tuple[str, Any]) -> None:
        kind, payload = msg
        if kind in ("report", "ready", "ran", "bye"):
            h.last = payload
            for t in (self.all, self.phase, self.tick):
                t.add(payload)
            h.ready |= kind == "ready"
            h.ran |= kind == "ran"
            h.bye |= kind == "bye"
        elif kind == "summary":
            h.summary = payload
        elif kind == "eof":
            h.bye = True
        self._event.set()

    async def _until(self, cond: Any, within_s: float) -> bool:
        end = time.monotonic() + within_s
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(left, 0.5))
            if any(not w.proc.is_alive() and not w.bye for w in self.workers):
                raise RuntimeError("a worker process died; see its output above")
        return True

    def _send(self, *cmd: Any) -> None:
        for w in self.workers:
            if not w.bye:
                w.pipe.send(cmd)

    # -- the run ---------------------------------------------------------------------
    async def connect(self, prov: Provisioned) -> None:
        self.server_before = self.stats.sample()
        self.label = "connecting"
        self._spawn(prov)
        ok = await self._until(lambda: all(w.ready for w in self.workers),
                               max(60.0, self.cfg.shape.topology.users / 200))
        if not ok:
            raise TimeoutError("workers did not finish connecting in time")
        self.connected_at = time.monotonic() - self.t_start
        self.opened = self.total("conns_open")
        await asyncio.sleep(0.5)  # let the server settle before measuring its memory
        self.server = self.stats.sample()

    async def run_phase(self, phase: Phase) -> PhaseResult:
        senders = max(1, self.cfg.shape.senders)
        self.phase = _Totals()
        cpu0, srv0, machine0 = self.client_cpu(), self.stats.sample(), machine_cpu()
        before = self.errors()
        warm0 = {k: self.total(k) for k in ("warm_sent", "warm_acked", "warm_delivered")}
        t0 = time.monotonic_ns() + 100_000_000
        self._warm_ns = (t0, t0 + int(phase.warmup_s * 1e9))
        self.label = f"run {phase.rate:g}/s"
        # Read once the warm-up is over (if the phase fails first, asyncio.run cancels it).
        lag0 = asyncio.ensure_future(self._loop_lag_at(self._warm_ns[1]))
        for w in self.workers:
            share = sum(1 for u in w.spec.users if u.conv is not None) / senders
            w.ran = False
            w.pipe.send(("run", t0, phase.duration_s, phase.rate * share, phase.warmup_s))
        await self._until(lambda: all(w.ran for w in self.workers),
                          phase.warmup_s + phase.duration_s + 30)
        self.label = "draining"
        self._send("interval", 0.1)
        drained = await self._until(self._drained, self.cfg.drain_s)
        self._send("interval", 1.0)
        for w in self.workers:
            w.summary = None
        self._send("check")
        await self._until(lambda: all(w.summary is not None for w in self.workers), 30)
        senders_sum: dict[int, SenderSummary] = {}
        streams: dict[int, StreamSummary] = {}
        for w in self.workers:
            assert w.summary is not None
            senders_sum.update(w.summary[0])
            streams.update(w.summary[1])
        total = verdict(senders_sum, streams, self.cfg.shape.receivers)
        v = _minus(total, self._verdict)
        self._verdict = total
        srv1, machine1 = self.stats.sample(), machine_cpu()
        lag1 = await asyncio.to_thread(self.stats.loop_lag)  # the drain included: it is short
        after = self.errors()
        errors = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
        warm = Warmup(phase.warmup_s, self.total("warm_sent") - warm0["warm_sent"],
                      self.total("warm_acked") - warm0["warm_acked"],
                      self.total("warm_delivered") - warm0["warm_delivered"],
                      self.phase.warm_ack, self.phase.warm_deliver)
        return PhaseResult(
            phase.rate, phase.duration_s, v, self.phase.ack, self.phase.deliver, self.phase.lag,
            self.phase.sent_deliver, self.client_cpu() - cpu0,
            (srv1.cpu_s - srv0.cpu_s) if srv0 and srv1 else 0.0, errors, drained, warm,
            (await lag0, lag1), (machine0, machine1),
        )

    async def _loop_lag_at(self, when_ns: int) -> LoopLag | None:
        """The nodes' loop-lag histograms once the warm-up is over (``time.monotonic_ns``)."""
        await asyncio.sleep(max(0.0, (when_ns - time.monotonic_ns()) / 1e9))
        return await asyncio.to_thread(self.stats.loop_lag)

    def _drained(self) -> bool:
        done = self.total("acked") + self.total("failed") >= self.total("sent")
        return done and self.total("delivered") - self.total("duplicates") >= \
            self.total("expected")

    async def finish(self) -> None:
        self.label = "closing"
        self._send("finish")
        await self._until(lambda: all(w.bye for w in self.workers), 15)
        for w in self.workers:
            await asyncio.to_thread(w.proc.join, 5)
            if w.proc.is_alive():
                w.proc.terminate()
            w.pipe.close()

    # -- time series -------------------------------------------------------------------
    async def ticker(self) -> None:
        prev: dict[str, float] = {}
        while True:
            await asyncio.sleep(1.0)
            self.sample_tick(prev)
            if self.progress is not None:
                self.progress(self)

    def sample_tick(self, prev: dict[str, float]) -> None:
        now = time.monotonic() - self.t_start
        srv = self.stats.sample()
        cur = {"sent": self.total("sent"), "acked": self.total("acked"),
               "delivered": self.total("delivered"), "t": now, "client_cpu": self.client_cpu(),
               "server_cpu": srv.cpu_s if srv else 0.0}
        dt = now - prev.get("t", 0.0) or 1.0
        mid_ns = int((self.t_start + (prev.get("t", now) + now) / 2) * 1e9)
        label = "warmup" if self._warm_ns[0] <= mid_ns < self._warm_ns[1] else self.label
        point: dict[str, Any] = {
            "t": round(now, 3), "phase": label, "connections": self.total("conns_open"),
            "connect_failed": self.total("conns_failed"),
            "sent_per_s": (cur["sent"] - prev.get("sent", 0)) / dt,
            "acked_per_s": (cur["acked"] - prev.get("acked", 0)) / dt,
            "delivered_per_s": (cur["delivered"] - prev.get("delivered", 0)) / dt,
            "ack_ms": percentiles(_both(self.tick.ack, self.tick.warm_ack)),
            "deliver_ms": percentiles(_both(self.tick.deliver, self.tick.warm_deliver)),
            "client_cpu_pct": 100 * (cur["client_cpu"] - prev.get("client_cpu", 0)) / dt,
            "server_cpu_pct": 100 * (cur["server_cpu"] - prev.get("server_cpu", 0)) / dt
            if srv else None,
            "server_rss_bytes": srv.rss_bytes if srv else None,
        }
        if self.probe is not None:
            point["disk_flush_max_ms"] = self.probe.take_max_ms()
        if prev:
            self.series.append(point)
        prev.update(cur)
        self.tick = _Totals()
        self.last_point = point

"""``parley bench connect|chat|group|max``: the load client's commands.

Every target is a loopback address (anything else exits with code 2 and one
line); every run has a hard deadline; sizes are flags with bounds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import click

from parley.bench.search import BROKEN, HELD, MISSED, RateSearch, Verdict

KEEPALIVE_S = 45.0
"""``--keepalive``'s default: the SDK's ``parley.client.PING_INTERVAL_S`` (not imported
here, the SDK is one of the heavy modules; ``tests/bench/test_smoke.py`` holds the two
equal)."""

if TYPE_CHECKING:  # the heavy modules load only when a bench runs
    from parley.bench.coordinator import Coordinator, PhaseResult
    from parley.bench.diskprobe import DiskProbe
    from parley.bench.scenarios import Shape

__all__ = ["bench"]

EXIT_USAGE = 2


@dataclass
class Common:
    urls: tuple[str, ...]
    start: bool
    backend: str
    config_file: str | None
    data_dir: str | None
    database_url: str | None
    server_pids: tuple[int, ...]
    metrics_urls: tuple[str, ...]
    target: str
    target_opts: dict[str, str]
    workers: int
    json_path: Path | None
    plot_dir: Path | None
    run_id: str
    quiet: bool
    drain_s: float
    keepalive_s: float
    deadline_s: float | None
    connect_rate: float
    disk_probe: Path | None


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"parley bench: error: {message}", err=True)
    sys.exit(code)


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--url", "urls", multiple=True, metavar="WS_URL",
                     help="Gateway URL of a running node (repeat for several nodes/ports)."),
        click.option("--start", is_flag=True, help="Start a node for this run, stop it after."),
        click.option("--backend", type=click.Choice(["sqlite", "postgres"]), default="sqlite",
                     show_default=True, help="With --start: the node's database "
                     "(postgres: PARLEY_DATABASE_URL, in a fresh schema)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="With --url: the node's settings file (to provision users)."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="With --url: the node's data directory (SQLite)."),
        click.option("--database-url", help="With --url: the node's database URL."),
        click.option("--server-pid", "server_pids", type=int, multiple=True,
                     help="Pid of a node process (RSS/CPU from /proc; repeatable); "
                     "without it, /metrics is read."),
        click.option("--metrics-url", "metrics_urls", multiple=True, metavar="URL",
                     help="A node's /metrics (repeatable) [default: gateway port - 1]."),
        click.option("--target", default="parley", show_default=True,
                     help="'parley' or module:factory of another Target."),
        click.option("--target-opt", "target_opts", multiple=True, metavar="KEY=VALUE",
                     help="Option passed to the target factory (repeatable)."),
        click.option("--workers", type=click.IntRange(0, 64), default=0,
                     help="Worker processes [default: one per 15,000 connections]."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the results as JSON."),
        click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Write PNG plots into this directory."),
        click.option("--run-id", default=None, help="Names the bench tenant [default: random]; "
                     "the same id reuses its users."),
        click.option("--quiet", is_flag=True, help="No live progress."),
        click.option("--drain", "drain_s", type=click.FloatRange(0.1, 600), default=10.0,
                     show_default=True, help="Longest wait for in-flight messages after sending."),
        click.option("--keepalive", "keepalive_s", type=click.FloatRange(1, 3600),
                     default=KEEPALIVE_S, show_default=True,
                     help="Ping after this many seconds without a frame from the server "
                     "(the SDK's default: a live Parley pings first, so clients stay quiet)."),
        click.option("--connect-rate", type=click.FloatRange(0, 1_000_000), default=0.0,
                     help="Open at most this many connections per second, all workers "
                     "together [default: 0, as fast as the server answers]."),
        click.option("--deadline", "deadline_s", type=click.FloatRange(5, 86400),
                     help="Hard limit for the whole run [default: computed from the sizes]."),
        click.option("--disk-probe", type=click.Path(file_okay=False, exists=True,
                                                     path_type=Path),
                     help="Write and flush 8 KiB in this directory every 10 ms during the "
                     "run and report the flush times: on the database's disk, it tells "
                     "the disk's stalls from the server's."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _make_common(kw: dict[str, Any]) -> Common:
    urls = tuple(kw.pop("urls"))
    if kw["start"] and urls:
        raise click.UsageError("give either --url or --start, not both")
    if not kw["start"] and not urls:
        raise click.UsageError("give --url WS_URL (a running node) or --start")
    for u in urls:
        if not u.startswith(("ws://", "wss://")):
            raise click.UsageError(f"--url must be a ws:// URL, got {u!r}")
        if not _loopback(u):
            _fail(f"refusing {u}: the bench only sends to loopback addresses", EXIT_USAGE)
    opts: dict[str, str] = {}
    for item in kw.pop("target_opts"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--target-opt must be KEY=VALUE, got {item!r}")
        opts[key] = value
    run_id = kw.pop("run_id") or secrets.token_hex(4)
    if re.fullmatch(r"[a-z0-9]{1,16}", run_id) is None:
        raise click.UsageError("--run-id: 1-16 characters of [a-z0-9]")
    for u in kw["metrics_urls"]:
        if not _loopback(u):
            _fail(f"refusing {u}: the bench only reads loopback addresses", EXIT_USAGE)
    return Common(urls=urls, target_opts=opts, run_id=run_id, server_pids=tuple(
        kw.pop("server_pids")), **kw)


class Phase(NamedTuple):
    rate: float
    duration_s: float
    warmup_s: float = 0.0


class Bound(NamedTuple):
    """What ``max`` holds each step to, and the search that picks the steps' rates."""

    metric: str  # "ack" or "deliver"
    p99_ms: float
    step_s: float
    warmup_s: float  # before the first step only
    search: RateSearch


def _warmup_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--warmup", "warmup_s", type=click.FloatRange(0, 600), default=0.0, show_default=True,
        help="Seconds to send at the rate before measuring: those messages are checked "
        "(lost/duplicated/reordered) but their latencies are not recorded.")(f)


@click.group()
def bench() -> None:
    """Load scenarios against Parley on loopback (see docs/performance.md)."""


@bench.command()
@_common
@click.option("--connections", type=click.IntRange(1, 1_000_000), required=True)
@click.option("--hold", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds to hold the connections open.")
def connect(connections: int, hold: float, **kw: Any) -> None:
    """Open N authenticated connections and hold them: connect rate, failures, memory."""
    c = _make_common(kw)
    from parley.bench.scenarios import connect_shape

    shape = connect_shape(c.run_id, connections)
    _execute(c, "connect", {"connections": connections, "hold_s": hold}, shape,
             [Phase(0.0, hold)], None)


@bench.command()
@_common
@click.option("--users", type=click.IntRange(2, 1_000_000), default=100, show_default=True)
@click.option("--rate", type=click.FloatRange(0.1, 1_000_000), required=True,
              help="Messages per second, all users together (open loop).")
@click.option("--duration", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@_warmup_option
def chat(users: int, rate: float, duration: float, warmup_s: float, **kw: Any) -> None:
    """Users in 1:1 pairs at an aggregate rate: ack and delivery latency, correctness."""
    if users % 2:
        raise click.BadParameter("must be even (users talk in pairs)", param_hint="--users")
    c = _make_common(kw)
    from parley.bench.scenarios import chat_shape

    _execute(c, "chat", {"users": users, "rate": rate, "duration_s": duration,
                         "warmup_s": warmup_s},
             chat_shape(c.run_id, users), [Phase(rate, duration, warmup_s)], None)


@bench.command()
@_common
@click.option("--groups", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--members", type=click.IntRange(2, 100_000), default=100, show_default=True)
@click.option("--senders", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="Members of each group that send.")
@click.option("--rate", type=click.FloatRange(0.1, 1_000_000), required=True,
              help="Messages per second into all groups together.")
@click.option("--duration", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@_warmup_option
def group(groups: int, members: int, senders: int, rate: float, duration: float,
          warmup_s: float, **kw: Any) -> None:
    """Groups with every member online: deliveries per second and delivery latency."""
    c = _make_common(kw)
    from parley.bench.scenarios import group_shape

    params = {"groups": groups, "members": members, "senders": min(senders, members),
              "rate": rate, "duration_s": duration, "warmup_s": warmup_s}
    _execute(c, "group", params, group_shape(c.run_id, groups, members, min(senders, members)),
             [Phase(rate, duration, warmup_s)], None)


@bench.command("max")
@_common
@click.option("--scenario", type=click.Choice(["chat", "group"]), default="chat",
              show_default=True)
@click.option("--p99-ms", type=click.FloatRange(0.1, 60_000), default=50.0, show_default=True,
              help="Stop once p99 passes this.")
@click.option("--metric", type=click.Choice(["ack", "deliver"]), default=None,
              help="Which latency the bound applies to [chat: ack, group: deliver].")
@click.option("--start-rate", type=click.FloatRange(1, 1_000_000), default=500.0,
              show_default=True)
@click.option("--factor", type=click.FloatRange(1.01, 10), default=1.25, show_default=True,
              help="Rate multiplier per step.")
@click.option("--step", "step_s", type=click.FloatRange(0.5, 600), default=5.0,
              show_default=True, help="Seconds per step.")
@click.option("--max-steps", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--users", type=click.IntRange(2, 1_000_000), default=100, show_default=True)
@click.option("--groups", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--members", type=click.IntRange(2, 100_000), default=100, show_default=True)
@click.option("--senders", type=click.IntRange(1, 100_000), default=10, show_default=True)
@_warmup_option
def max_rate(scenario: str, p99_ms: float, metric: str | None, start_rate: float,
             factor: float, step_s: float, max_steps: int, users: int, groups: int,
             members: int, senders: int, warmup_s: float, **kw: Any) -> None:
    """Raise the rate step by step until p99 passes --p99-ms or a message is lost.

    If the first step already fails, lower the rate step by step (divided by
    --factor) until one holds.  --warmup runs once, at the first step's rate,
    before the first step."""
    if scenario == "chat" and users % 2:
        raise click.BadParameter("must be even (users talk in pairs)", param_hint="--users")
    c = _make_common(kw)
    from parley.bench.scenarios import chat_shape, group_shape

    metric = metric or ("ack" if scenario == "chat" else "deliver")
    shape = chat_shape(c.run_id, users) if scenario == "chat" else \
        group_shape(c.run_id, groups, members, min(senders, members))
    params = {"scenario": scenario, "p99_ms": p99_ms, "metric": metric,
              "start_rate": start_rate, "factor": factor, "step_s": step_s,
              "max_steps": max_steps, "users": users, "groups": groups, "members": members,
              "senders": senders, "warmup_s": warmup_s}
    search = RateSearch(start_rate, factor, max_steps)
    # Rates come from the search as it goes; these phases only size the deadline.
    _execute(c, "max", params, shape,
             [Phase(start_rate, step_s, warmup_s if i == 0 else 0.0) for i in range(max_steps)],
             Bound(metric, p99_ms, step_s, warmup_s, search))


# --------------------------------------------------------------------------- running


def _execute(c: Common, scenario: str, params: dict[str, Any], shape: Shape,
             phases: list[Phase], bound: Bound | None) -> None:
    import uvloop

    ramp = shape.topology.users / c.connect_rate if c.connect_rate else 0.0
    deadline = c.deadline_s or (120 + shape.topology.users / 100 + ramp
                                + sum(p.warmup_s + p.duration_s + c.drain_s + 5
                                      for p in phases))
    params = {**params, "backend": c.backend if c.start else None, "urls": list(c.urls),
              "run_id": c.run_id, "workers": c.workers or None, "drain_s": c.drain_s,
              "connect_rate": c.connect_rate or None}
    try:
        result = uvloop.run(_go(c, scenario, params, shape, phases, bound, deadline))
    except TimeoutError:
        _fail(f"the run passed its deadline of {deadline:.0f} s")
        return
    except Exception as exc:  # noqa: BLE001 - one line for the operator, no traceback
        from parley.errors import ParleyError

        msg = exc.message if isinstance(exc, ParleyError) else f"{type(exc).__name__}: {exc}"
        _fail(msg)
        return
    from parley.bench.report import summary_lines, write_json, write_plots

    if c.json_path:
        write_json(result, c.json_path)
    if c.plot_dir:
        write_plots(result, c.plot_dir)
    for line in summary_lines(result):
        click.echo(line)


async def _go(c: Common, scenario: str, params: dict[str, Any], shape: Shape,
              phases: list[Phase], bound: Bound | None,
              deadline: float) -> dict[str, Any]:
    from parley.bench.coordinator import Coordinator, RunConfig
    from parley.bench.diskprobe import DiskProbe
    from parley.bench.targets import TargetOptions, load_target

    options = TargetOptions(
        urls=c.urls, start=c.start, backend=c.backend, database_url=c.database_url,
        data_dir=c.data_dir, config_file=c.config_file, server_pids=c.server_pids,
        metrics_urls=tuple(c.metrics_urls),
        max_connections=max(20_000, shape.topology.users + 100), extra=c.target_opts,
    )
    target = load_target(c.target, options)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    ticker: asyncio.Task[None] | None = None
    live = None
    probe: DiskProbe | None = None
    try:
        async with asyncio.timeout(deadline):
            await target.start()
            prov = await target.provision(shape.topology)
            progress = None
            if not c.quiet and sys.stderr.isatty():
                from parley.bench.progress import LiveProgress

                live = LiveProgress(scenario)
                progress = live.update
            cfg = RunConfig(shape=shape, workers=c.workers, keepalive_s=c.keepalive_s,
                            drain_s=c.drain_s, deadline_s=deadline, connect_rate=c.connect_rate)
            coord = Coordinator(target, cfg, progress)
            if c.disk_probe is not None:
                probe = coord.probe = DiskProbe(c.disk_probe, t0=coord.t_start)
                probe.start()
            ticker = asyncio.create_task(coord.ticker())
            try:
                await coord.connect(prov)
                placement = "slot map" if prov.user_urls else "spread"
                results = await _phases(coord, phases, bound)
                coord.sample_tick({})
            finally:
                await coord.finish()
    finally:
        if ticker is not None:
            ticker.cancel()
        if live is not None:
            live.stop()
        if probe is not None:
            probe.stop()
        await target.close()
    return _result(scenario, params, started_at, time.monotonic() - t0, coord, results, bound,
                   c.target, shape, placement)


async def _phases(coord: Coordinator, phases: list[Phase],
                  bound: Bound | None) -> list[PhaseResult]:
    from parley.bench.coordinator import Phase as RunPhase

    if bound is None:
        return [await coord.run_phase(RunPhase(p.rate, p.duration_s, p.warmup_s))
                for p in phases]
    out: list[PhaseResult] = []
    search = bound.search
    while (rate := search.next_rate()) is not None:
        r = await coord.run_phase(RunPhase(rate, bound.step_s, 0.0 if out else bound.warmup_s))
        out.append(r)
        search.record(rate, _verdict(r, bound))
    return out


def _verdict(r: PhaseResult, bound: Bound) -> Verdict:
    if not r.verdict.ok:
        return BROKEN
    hist = r.ack if bound.metric == "ack" else r.deliver
    if (hist.get_value_at_percentile(99) / 1000.0 > bound.p99_ms or not r.drained
            or r.verdict.unacked):
        return MISSED
    return HELD


def _result(scenario: str, params: dict[str, Any], started_at: str, elapsed: float,
            coord: Coordinator, results: list[PhaseResult], bound: Bound | None,
            target: str, shape: Shape, placement: str) -> dict[str, Any]:
    from parley.bench.coordinator import Warmup, percentiles
    from parley.bench.report import cdf
    from parley.bench.stats import loop_lag_summary, machine, machine_busy, versions
    from parley.bench.worker import new_histogram

    ack, deliver, lag, sent_deliver = (new_histogram() for _ in range(4))
    warm = Warmup(0.0)
    for r in results:
        ack.add(r.ack)
        deliver.add(r.deliver)
        lag.add(r.lag)
        sent_deliver.add(r.sent_deliver)
        warm.add(r.warmup)
    steps = [r.as_dict() for r in results]
    total = {k: sum(s[k] for s in steps) for k in
             ("sent", "acked", "unacked", "delivered", "lost", "duplicated", "reordered",
              "delivered_unacked", "expected")}
    run_s = sum(r.duration_s for r in results) or 1.0
    client_cpu = sum(r.client_cpu_s for r in results)
    srv, before = coord.server, coord.server_before
    open_at_full = max((p["connections"] for p in coord.series), default=0)
    open_at_full = max(open_at_full, coord.opened)
    rss_per = None
    if srv and before and open_at_full:
        rss_per = (srv.rss_bytes - before.rss_bytes) / open_at_full
    result: dict[str, Any] = {
        "scenario": scenario, "target": target, "params": params, "started_at": started_at,
        "duration_s": round(elapsed, 3), "run_s": run_s, **total,
        "throughput_per_s": max(0, total["acked"] - warm.acked) / run_s,
        "deliveries_per_s": max(0, total["delivered"] - warm.delivered) / run_s,
        "warmup": warm.as_dict(),
        "ack_ms": percentiles(ack), "deliver_ms": percentiles(deliver),
        "deliver_from_send_ms": percentiles(sent_deliver),
        "cdf": {"ack": cdf(ack), "deliver": cdf(deliver)},
        "connections": {
            "requested": shape.topology.users, "open": open_at_full,
            "failed": coord.total("conns_failed"), "connect_s": coord.connected_at,
            "rate_per_s": open_at_full / coord.connected_at if coord.connected_at else 0.0,
            "connect_ms": percentiles(coord.all.connect),
            "placement": placement, "redirected": coord.total("redirects"),
            "reconnected": coord.total("reconnects"), "gap_syncs": coord.total("gap_syncs"),
        },
        "server": {
            "rss_bytes": srv.rss_bytes if srv else None,
            "rss_before_bytes": before.rss_bytes if before else None,
            "rss_per_connection_bytes": rss_per,
            "cpu_s": sum(r.server_cpu_s for r in results),
            "cpu_us_per_msg": (sum(r.server_cpu_s for r in results) * 1e6 / total["sent"]
                               if total["sent"] else None),
            "processes": srv.processes if srv else 0, "source": srv.source if srv else None,
            "loop_lag": loop_lag_summary(results[0].loop_lag[0], results[-1].loop_lag[1])
            if results else None,
        },
        "client": {
            "workers": len(coord.workers), "cpu_s": client_cpu,
            "cpu_us_per_msg": client_cpu * 1e6 / (total["sent"] + total["delivered"])
            if total["sent"] + total["delivered"] else None,
            "lag_ms": percentiles(lag), "gc": "frozen and disabled in workers while timed",
        },
        "errors": coord.errors(), "versions": versions(), "machine": {
            **machine(),
            "busy": machine_busy(results[0].machine[0], results[-1].machine[1])
            if results else None,
        },
        "series": coord.series,
    }
    if coord.probe is not None:
        result["disk_probe"] = coord.probe.summary()
    if bound is not None:
        for step, (_, verdict) in zip(steps, bound.search.tried, strict=True):
            step["verdict"] = verdict
        result["max_rate_per_s"] = bound.search.best
        result["failed_rate_per_s"] = bound.search.failed_at
        result["steps"] = steps
        result["stop_reason"] = bound.search.stop_reason()
    return result

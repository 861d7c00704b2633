"""Seconds-long smoke runs of every scenario, on each backend.

``connect`` runs with ``--start`` (the bench starts and stops its own node);
the other scenarios share one node per backend and module and reach it with
``--url`` (provisioning through its database settings, server figures from
its /metrics).  Correctness only (0 lost, 0 duplicated, 0 reordered, the JSON
shape, PNG plots); never a timing.  PostgreSQL runs need PARLEY_TEST_PG_DSN
(the node's PARLEY_DATABASE_URL; each node gets a fresh schema).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.bench.parley_target import NodeProcess
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema

PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = ("scenario", "params", "started_at", "duration_s", "sent", "acked", "delivered",
          "lost", "duplicated", "reordered", "throughput_per_s", "ack_ms", "deliver_ms",
          "server", "errors", "versions", "machine")


def bench(*args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", "bench", *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]


def _skip_without_pg(backend: str) -> None:
    if backend == "postgres":
        asyncio.run(drop_pg_schema(asyncio.run(new_pg_schema("bench_"))))  # skips without PG


@pytest.fixture(scope="module", params=BACKENDS)
def node(request: pytest.FixtureRequest) -> Iterator[tuple[list[str], dict[str, str]]]:
    """A node shared by the module's runs: (bench arguments, environment)."""
    backend = str(request.param)
    _skip_without_pg(backend)
    saved = os.environ.get("PARLEY_DATABASE_URL")
    if backend == "postgres":
        os.environ["PARLEY_DATABASE_URL"] = PG_DSN
    n = NodeProcess(backend, 2000)
    try:
        asyncio.run(n.start())
        overrides = n.database_overrides()
        env = {"PARLEY_DATABASE_URL": str(overrides["database_url"])}
        if n.schema:
            env["PARLEY_DATABASE_SCHEMA"] = n.schema
        yield ["--url", n.ws_url, "--metrics-url", f"{n.http_url}/metrics"], env
    finally:
        asyncio.run(n.stop())
        if saved is None:
            os.environ.pop("PARLEY_DATABASE_URL", None)
        else:
            os.environ["PARLEY_DATABASE_URL"] = saved


def _check(tmp_path: Path, proc: subprocess.CompletedProcess[str], scenario: str,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    for f in FIELDS:
        assert f in r, f
    assert r["scenario"] == scenario
    assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), r
    for key in ("ack_ms", "deliver_ms"):
        assert set(r[key]) >= {"p50", "p90", "p99", "p999", "max"}
    assert {"rss_bytes", "cpu_s", "processes"} <= set(r["server"])
    assert r["server"]["processes"] == 1
    assert {"cores", "memory_bytes"} <= set(r["machine"])
    out: dict[str, Any] = r
    return out


def _plots(d: Path) -> None:
    names = sorted(p.name for p in d.iterdir())
    assert names == ["connections.png", "latency_cdf.png", "latency_over_time.png",
                     "throughput.png"]
    for p in d.iterdir():
        assert p.read_bytes()[:8] == PNG


def _out(tmp_path: Path) -> list[str]:
    return ["--quiet", "--json", str(tmp_path / "r.json"), "--drain", "20"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_connect_with_start(backend: str, tmp_path: Path) -> None:
    _skip_without_pg(backend)
    env = {"PARLEY_DATABASE_URL": PG_DSN} if backend == "postgres" else {}
    proc = bench("connect", "--start", "--backend", backend, *_out(tmp_path), "--connections",
                 "50", "--hold", "1", "--plot", str(tmp_path / "plots"), env=env)
    r = _check(tmp_path, proc, "connect")
    assert r["connections"]["open"] == 50 and r["connections"]["failed"] == 0
    assert r["server"]["rss_bytes"] > 0 and r["server"]["source"] == "proc"
    _plots(tmp_path / "plots")


def test_connect_rate_paces_the_ramp(node: tuple[list[str], dict[str, str]],
                                     tmp_path: Path) -> None:
    """--connect-rate 20 over 2 workers (10/s each, 15 connections each): a
    worker's 15th connection cannot start before 1.4 s, so the ramp's rate is at
    most 30 / 1.4 per second (a lower bound on time, which load only makes
    slower); unpaced, 30 local connections open in a fraction of a second."""
    proc = bench("connect", *node[0], *_out(tmp_path), "--connections", "30", "--hold", "0.5",
                 "--workers", "2", "--connect-rate", "20", env=node[1])
    r = _check(tmp_path, proc, "connect", node[1])
    assert r["params"]["connect_rate"] == 20
    assert r["connections"]["open"] == 30 and r["connections"]["failed"] == 0
    assert 0 < r["connections"]["rate_per_s"] <= 30 / 1.4


def test_chat(node: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    probed = tmp_path / "disk"
    probed.mkdir()
    proc = bench("chat", *node[0], *_out(tmp_path), "--users", "20", "--rate", "200",
                 "--duration", "1.5", "--workers", "2", "--plot", str(tmp_path / "plots"),
                 "--disk-probe", str(probed), env=node[1])
    r = _check(tmp_path, proc, "chat", node[1])
    assert r["sent"] == 300 and r["acked"] == 300 and r["delivered"] == 300
    assert r["ack_ms"]["count"] == 300 and r["deliver_ms"]["count"] == 300
    assert r["client"]["workers"] == 2
    assert r["server"]["source"] == "metrics"
    lag = r["server"]["loop_lag"]  # the node probes its loop every 0.1 s: 1.5 s holds some
    assert lag["probes"] > 0 and lag["p99_ms_at_most"] is not None, lag
    assert "server event loop lag: p99 <=" in proc.stdout
    busy = r["machine"]["busy"]  # the node and the two workers ran: the machine was busy
    assert 0 < busy["busy_cores"] <= r["machine"]["cores"], busy
    assert "machine (every process):" in proc.stdout
    _plots(tmp_path / "plots")
    dp = r["disk_probe"]
    assert dp["dir"] == str(probed) and dp["count"] > 0 and "error" not in dp
    assert any(p.get("disk_flush_max_ms") for p in r["series"])
    assert "disk flush (" in proc.stdout
    assert list(probed.iterdir()) == []  # the probe's file is gone


def test_chat_with_warmup(node: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """Warm-up messages are checked (counted in sent/acked/delivered, lost 0) but
    their latencies are not in ack_ms/deliver_ms; throughput is the measured part's."""
    proc = bench("chat", *node[0], *_out(tmp_path), "--users", "20", "--rate", "100",
                 "--warmup", "2", "--duration", "1", "--workers", "2", env=node[1])
    r = _check(tmp_path, proc, "chat", node[1])
    assert r["params"]["warmup_s"] == 2
    assert r["sent"] == r["acked"] == r["delivered"] == 300
    assert r["ack_ms"]["count"] == r["deliver_ms"]["count"] == 100
    w = r["warmup"]
    assert (w["sent"], w["acked"], w["delivered"]) == (200, 200, 200)
    assert w["ack_ms"]["count"] == w["deliver_ms"]["count"] == 200
    assert r["run_s"] == 1 and r["throughput_per_s"] == 100
    assert "warmup" in {p["phase"] for p in r["series"]}
    assert "warm-up 2 s" in proc.stdout


def test_group(node: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    proc = bench("group", *node[0], *_out(tmp_path), "--groups", "2", "--members", "10",
                 "--senders", "3", "--rate", "40", "--duration", "1", env=node[1])
    r = _check(tmp_path, proc, "group", node[1])
    assert r["sent"] == 40 and r["acked"] == 40
    assert r["delivered"] == r["expected"] == 40 * 9


def test_max(node: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    proc = bench("max", *node[0], *_out(tmp_path), "--scenario", "chat", "--users", "10",
                 "--start-rate", "50", "--factor", "2", "--step", "1", "--max-steps", "2",
                 "--p99-ms", "60000", "--warmup", "1", env=node[1])
    r = _check(tmp_path, proc, "max", node[1])
    assert [s["rate"] for s in r["steps"]] == [50, 100]
    assert r["max_rate_per_s"] == 100 and r["failed_rate_per_s"] is None
    assert all(s["lost"] == 0 and s["duplicated"] == 0 for s in r["steps"])
    # One warm-up, at the first step's rate, before the first step only.
    assert [s["warmup_s"] for s in r["steps"]] == [1, 0]
    assert [s["sent"] for s in r["steps"]] == [100, 100]
    assert [s["ack_ms"]["count"] for s in r["steps"]] == [50, 100]
    assert r["warmup"]["sent"] == r["warmup"]["ack_ms"]["count"] == 50
    assert [s["verdict"] for s in r["steps"]] == ["held", "held"]


def test_max_goes_down_when_the_first_step_misses(
    node: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    """No commit answers in 0.1 ms at p99, so every step misses the bound: the
    search divides the rate by --factor each time instead of stopping at once."""
    proc = bench("max", *node[0], *_out(tmp_path), "--scenario", "chat", "--users", "10",
                 "--start-rate", "40", "--factor", "2", "--step", "1", "--max-steps", "3",
                 "--p99-ms", "0.1", env=node[1])
    r = _check(tmp_path, proc, "max", node[1])
    assert [s["rate"] for s in r["steps"]] == [40, 20, 10]
    assert [s["verdict"] for s in r["steps"]] == ["missed"] * 3
    assert all(s["lost"] == 0 and s["duplicated"] == 0 and s["reordered"] == 0
               for s in r["steps"])
    assert r["max_rate_per_s"] == 0 and r["failed_rate_per_s"] == 10
    assert r["stop_reason"] == "no step held the bound (lowest tried 10/s)"
    assert "highest sustained rate: 0 msg/s (no step held the bound" in proc.stdout


def test_refuses_non_loopback_targets() -> None:
    proc = bench("chat", "--url", "ws://192.0.2.1:8701/v1/ws", "--rate", "10", timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "loopback" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_flags_are_click_errors() -> None:
    proc = bench("chat", "--start", "--users", "3", "--rate", "10", timeout=30)
    assert proc.returncode == 2 and "even" in proc.stderr
    proc = bench("chat", "--rate", "10", timeout=30)
    assert proc.returncode == 2 and "--url" in proc.stderr
    proc = bench("connect", "--start", "--connections", "0", timeout=30)
    assert proc.returncode == 2 and "--connections" in proc.stderr


def test_the_bench_keeps_connections_alive_as_the_sdk_does() -> None:
    """``--keepalive``'s default is the SDK's ping interval (kept apart so the bench's
    command line loads without the SDK)."""
    from parley.bench.cli import KEEPALIVE_S
    from parley.client import PING_INTERVAL_S

    assert KEEPALIVE_S == PING_INTERVAL_S

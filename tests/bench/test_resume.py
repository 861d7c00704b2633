"""The load client through a node restart: users whose connection the server
closed come back, sync what they missed and resend what was not acknowledged,
so the checker still counts 0 lost, 0 duplicated, 0 reordered, every message
acknowledged, and not one stored twice.

Real processes: a node on SQLite, ``parley bench chat`` against it, and the
node stopped (SIGTERM: it drains and closes every connection with 1001) and
started again on the same ports and database while the bench is sending.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parley.bench.parley_target import NODE_ENV

USERS, RATE, DURATION = 20, 200, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _until(cond: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _stored(http: str) -> float:
    for line in _get(f"{http}/metrics").splitlines():
        if line.startswith("parley_send_duration_seconds_count"):
            return float(line.split()[1])
    return 0.0


class _Node:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port, self.ws_port = _free_port(), _free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, **NODE_ENV, "PARLEY_WS_PORT": str(self.ws_port)}
        self.env.pop("PARLEY_DATABASE_URL", None)
        self.env.pop("PARLEY_DATABASE_SCHEMA", None)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve", "--data-dir", str(self.data),
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _until(lambda: '"ready"' in _get(f"{self.http}/readyz"), 60, "the node ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    n = _Node(tmp_path / "data")
    n.start()
    try:
        yield n
    finally:
        n.stop()


def test_chat_survives_a_node_restart(node: _Node, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    db = node.data.resolve() / "parley.db"
    bench = subprocess.Popen(
        [sys.executable, "-m", "parley", "bench", "chat",
         "--url", f"ws://127.0.0.1:{node.ws_port}/v1/ws", "--metrics-url", f"{node.http}/metrics",
         "--users", str(USERS), "--rate", str(RATE), "--duration", str(DURATION),
         "--workers", "1", "--drain", "30", "--quiet", "--json", str(out)],
        env={**os.environ, "PARLEY_DATABASE_URL": f"sqlite:///{db}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # Restart once a fifth of the run is stored: the rest is sent around it.
        _until(lambda: _stored(node.http) >= RATE * DURATION / 5, 60, "messages stored")
        node.stop()
        node.start()
        stdout, _ = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 0, stdout
    r = json.loads(out.read_text())
    total = RATE * DURATION
    counts = {k: r[k] for k in ("sent", "acked", "unacked", "delivered", "lost", "duplicated",
                                "reordered", "errors")}  # (the whole report is cut short)
    assert (r["sent"], r["acked"], r["delivered"]) == (total, total, total), counts
    assert (r["lost"], r["duplicated"], r["reordered"], r["unacked"]) == (0, 0, 0, 0), counts
    assert r["connections"]["reconnected"] == USERS, r["connections"]
    assert "reconnected" in stdout
    with sqlite3.connect(db) as conn:  # every resent message was stored once
        (stored,) = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert stored == total

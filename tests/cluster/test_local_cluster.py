"""A local cluster as an operator starts it (``parley serve --nodes 3``, PostgreSQL),
used through real sockets: clients connecting to any node end up on their user's
node, messages and events cross nodes, ``/api/v1/route``, ``/api/v1/route/map``
and ``parley cluster status`` agree with where the clients are, ``parley bench``
connects each user straight to its node, and Ctrl-C stops every node; so do a
hangup and the supervisor's death (each node runs in a session of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from parley.auth.tokens import TokenService
from parley.client import ParleyClient, decode_body
from parley.clock import SystemClock
from parley.cluster.slots import SLOTS, slot_of_user
from parley.protocol import TypingEvent
from parley.store import AccountStore, Database
from parley.store.conversations import ConversationStore
from parley.store.keys import KeyStore
from tests.conftest import PG_DSN, drop_pg_schema, new_pg_schema
from tests.node.helpers import run_cli
from tests.waiting import until

pytestmark = pytest.mark.pg

NODES = 3
FAST = {"PARLEY_ARGON2_MEMORY_KIB": "19456", "PARLEY_ARGON2_TIME_COST": "2",
        "PARLEY_ARGON2_PARALLELISM": "1", "PARLEY_ADMIN_PASSWORD": "admin-password"}
T = 20.0


def free_base(nodes: int) -> int:
    """A base port whose 10 * nodes successors are all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000, 10)
        socks = []
        try:
            for port in range(base, base + 10 * nodes):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port block")


@dataclass
class LocalCluster:
    proc: subprocess.Popen[str]
    base: int
    schema: str
    secret: str
    env: dict[str, str]

    def http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base + 10 * i}"

    def ws(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.base + 10 * i + 1}/v1/ws"

    def status(self, i: int) -> dict[str, Any]:
        r = httpx.get(f"{self.http(i)}/cluster/status",
                      headers={"Authorization": f"Bearer {self.secret}"}, timeout=2)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


def _formed(cluster: LocalCluster) -> bool:
    try:
        views = [cluster.status(i) for i in range(NODES)]
    except (httpx.HTTPError, OSError):
        return False
    return all(
        v.get("leader") and v.get("slots_unassigned") == 0 and len(v.get("nodes", [])) == NODES
        and all(n["state"] == "active" for n in v["nodes"]) for v in views
    ) and len({v["epoch"] for v in views}) == 1


def _spawn(base: int, data: Path, env: dict[str, str], log: IO[str]) -> subprocess.Popen[str]:
    """``parley serve --nodes 3`` (Popen returns at once; readiness is polled)."""
    return subprocess.Popen(
        [sys.executable, "-m", "parley", "serve", "--nodes", str(NODES), "--port", str(base),
         "--data-dir", str(data), "--database-url", PG_DSN],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    schema = await new_pg_schema("c_")
    base = free_base(NODES)
    env = {**os.environ, **FAST, "PARLEY_DATABASE_SCHEMA": schema, "PARLEY_LOG_LEVEL": "warning"}
    log = (tmp_path / "cluster.log").open("w")
    proc = _spawn(base, tmp_path / "d", env, log)
    try:
        secret_file = tmp_path / "d" / "cluster-secret"
        await until(secret_file.exists, 30, "the cluster secret was written")
        c = LocalCluster(proc, base, schema, secret_file.read_text().strip(), env)
        await until(lambda: proc.poll() is not None or _formed(c), 90, "the cluster formed")
        assert proc.poll() is None, (tmp_path / "cluster.log").read_text()
        yield c
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        await drop_pg_schema(schema)
        text = (tmp_path / "cluster.log").read_text()
        assert "Traceback" not in text, text


@dataclass
class People:
    ids: list[int]
    tokens: list[str]
    stars: list[int]  # conv of user 0 with user i (index i; 0 unused)
    group: int


async def people(cluster: LocalCluster, n: int) -> People:
    db = Database(PG_DSN, pg_schema=cluster.schema, pool_size=2)
    try:
        accounts, convs, clock = AccountStore(db), ConversationStore(db), SystemClock()
        tenant = await accounts.tenant_by_slug("default")
        assert tenant is not None
        now = clock.now_ms()
        ids = [(await accounts.create_user(tenant.id, f"p{i}", now)).id for i in range(n)]
        stars = [0] + [(await convs.create_direct(tenant.id, ids[0], u, now)).id
                       for u in ids[1:]]
        group = (await convs.create_group(tenant.id, ids[0], "all", ids[1:], now)).id
        tokens = TokenService(await KeyStore(db).active(), clock)
        return People(ids, [tokens.issue(tenant.id, u) for u in ids], stars, group)
    finally:
        await db.close()


def port_of(c: ParleyClient) -> int:
    url: str = c._life._url
    return int(url.split(":")[2].split("/")[0])


async def test_clients_land_on_their_node_and_talk_across_nodes(cluster: LocalCluster) -> None:
    p = await people(cluster, 9)
    clients = [ParleyClient(cluster.ws(0), tok, "d1", echo=False) for tok in p.tokens]
    async with asyncio.timeout(60):
        for c in clients:
            await c.connect()
        ports = [port_of(c) for c in clients]
        nodes_used = {(port - cluster.base) // 10 for port in ports}
        assert len(nodes_used) >= 2, ports  # the seed node does not keep everyone

        # Where the SDK ended up is what /api/v1/route says.
        routes = []
        for c, tok, port in zip(clients, p.tokens, ports, strict=True):
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{cluster.http(1)}/api/v1/route",
                                   headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200, r.text
            assert r.json()["ws_url"].startswith(f"ws://127.0.0.1:{port}/"), (r.json(), port)
            assert c.connected
            routes.append(r.json())

        # The public slot map covers every slot once and agrees with /api/v1/route.
        async with httpx.AsyncClient() as http:
            smap = (await http.get(f"{cluster.http(2)}/api/v1/route/map")).json()
        assert [s for a, b, _ in smap["ranges"] for s in range(a, b + 1)] == list(range(SLOTS))
        ws = {n["id"]: n["ws_url"] for n in smap["nodes"]}
        assert sorted(ws.values()) == sorted(cluster.ws(i) for i in range(NODES))
        for uid, route in zip(p.ids, routes, strict=True):
            owner = next(n for a, b, n in smap["ranges"] if a <= slot_of_user(uid) <= b)
            assert (owner, ws[owner]) == (route["node"], route["ws_url"])

        # Everyone writes to user 0, in order; user 0 sees each conversation in order, once.
        hub, others = clients[0], clients[1:]
        for k in range(10):
            for i, c in enumerate(others, start=1):
                await c.send(p.stars[i], "text", {"text": f"{i}:{k}"})
        seen: dict[int, list[int]] = {}
        it = hub.messages()
        for _ in range(10 * len(others)):
            m = await anext(it)
            i, k = map(int, decode_body(m)["text"].split(":"))
            seen.setdefault(i, []).append(k)
        assert seen == {i: list(range(10)) for i in range(1, len(clients))}

        # A group message fans out to every node; typing crosses nodes too.
        await hub.send(p.group, "text", {"text": "all"})
        for c in others:
            got = [decode_body(m)["text"] async for m in _take(c, 1)]
            assert got == ["all"]
        events = clients[1].events()
        await hub.typing(p.stars[1])
        ev = await anext(events)
        while not isinstance(ev, TypingEvent):
            ev = await anext(events)
        assert ev.uid == p.ids[0]
        for c in clients:
            assert c.stats.duplicates == 0

        # Status from the CLI: three active voters, every slot assigned, every client counted.
        out = run_cli("cluster", "status", "--url", cluster.http(2), "--json",
                      env={"PARLEY_CLUSTER_SECRET": cluster.secret})
        assert out.returncode == 0, out.stderr
        view = json.loads(out.stdout)
        assert sorted(n["state"] for n in view["nodes"]) == ["active"] * NODES
        assert sum(n["slots"] for n in view["nodes"]) == 16384
        assert view["leader"] in {n["id"] for n in view["nodes"]}
        assert sum(n["sessions"] for n in view["nodes"]) == len(clients)
        for c in clients:
            await c.close()


async def _take(c: ParleyClient, n: int) -> AsyncIterator[Any]:
    it = c.messages()
    for _ in range(n):
        yield await anext(it)


def _bench_connect(cluster: LocalCluster, tmp: Path, *urls: str) -> dict[str, Any]:
    out = tmp / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "parley", "bench", "connect", "--connections", "30", "--hold",
         "0", "--quiet", "--run-id", "placed", "--json", str(out),
         *(a for u in urls for a in ("--url", u))],
        env={**cluster.env, "PARLEY_DATABASE_URL": PG_DSN}, capture_output=True, text=True,
        timeout=90)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    conns: dict[str, Any] = json.loads(out.read_text())["connections"]
    assert (conns["open"], conns["failed"]) == (30, 0), conns
    return conns


async def test_bench_connects_each_user_to_its_node(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    # Given every node, the bench places users by the slot map: nobody is redirected.
    urls = [cluster.ws(i) for i in range(NODES)]
    conns = await asyncio.to_thread(_bench_connect, cluster, tmp_path, *urls)
    assert (conns["placement"], conns["redirected"]) == ("slot map", 0), conns
    # Given one node, the same users are sent on to their nodes (and counted).
    conns = await asyncio.to_thread(_bench_connect, cluster, tmp_path, urls[0])
    assert conns["placement"] == "spread" and conns["redirected"] > 0, conns


async def test_status_needs_the_secret_and_metrics_agree(cluster: LocalCluster,
                                                          tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{cluster.http(0)}/cluster/status")
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        r = await http.get(f"{cluster.http(0)}/cluster/status",
                           headers={"Authorization": "Bearer x"})
        assert r.status_code == 401
    out = run_cli("cluster", "status", "--url", cluster.http(0),
                  env={"PARLEY_CLUSTER_SECRET": cluster.secret})
    assert out.returncode == 0 and "node-1" in out.stdout, out.stderr
    # A local cluster's operator needs no secret of their own: the generated one
    # in the data directory is used; without either, a clear error.
    out = run_cli("cluster", "status", "--url", cluster.http(0), "--data-dir",
                  str(tmp_path / "d"))
    assert out.returncode == 0 and "node-1" in out.stdout, out.stderr
    out = run_cli("cluster", "status", "--url", cluster.http(0), "--data-dir",
                  str(tmp_path / "empty"))
    assert out.returncode != 0 and "cluster_secret is not set" in out.stderr
    assert "Traceback" not in out.stderr

    # The same numbers in every node's /metrics.
    leaders = 0
    async with httpx.AsyncClient() as http:
        for i in range(NODES):
            text = (await http.get(f"{cluster.http(i)}/metrics")).text
            samples = dict(
                line.rsplit(" ", 1) for line in text.splitlines()
                if line.startswith("parley_cluster_")
            )
            slots = [float(v) for k, v in samples.items() if k.startswith("parley_cluster_slots{")]
            assert sum(slots) == 16384 and len(slots) == NODES
            assert float(samples['parley_cluster_nodes{state="active"}']) == NODES
            assert float(samples["parley_cluster_has_quorum"]) == 1
            leaders += int(float(samples["parley_cluster_is_leader"]))
            ups = [k for k, v in samples.items()
                   if k.startswith("parley_cluster_link_up{") and float(v) == 1]
            assert len(ups) == NODES - 1, ups
    assert leaders == 1


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the supervisor's nodes)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


async def test_a_hangup_stops_every_node_and_each_node_has_its_own_session(
        cluster: LocalCluster) -> None:
    nodes = _children(cluster.proc.pid)
    assert len(nodes) == NODES, nodes
    # A session (and so a CPU share under autogroup scheduling) of each node's own.
    sessions = {os.getsid(pid) for pid in nodes}
    assert len(sessions) == NODES and os.getsid(cluster.proc.pid) not in sessions
    cluster.proc.send_signal(signal.SIGHUP)
    code = await asyncio.to_thread(cluster.proc.wait, 60)
    assert code == 0
    assert all(_gone(pid) for pid in nodes)


async def test_nodes_stop_when_their_supervisor_is_killed(cluster: LocalCluster) -> None:
    nodes = _children(cluster.proc.pid)
    assert len(nodes) == NODES, nodes
    cluster.proc.kill()
    await asyncio.to_thread(cluster.proc.wait, 10)
    try:
        await until(lambda: all(_gone(pid) for pid in nodes), 30,
                    "every node stopped after its supervisor died")
    finally:
        for pid in nodes:  # (orphans of a failed run would outlive the test)
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)

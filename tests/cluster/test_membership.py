"""Membership and the slot map over raft: real PySyncObj nodes in real processes.

Each member runs ``tests/cluster/raftnode.py`` on loopback ports and is driven
over its stdin/stdout.  Waiting is done by polling with deadlines, never by
sleeping a fixed time.  Raft timings are shortened (elections in 0.3-0.6 s,
dead after 2 s) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.cluster.membership import (
    ClusterConfig,
    ClusterMembership,
    ClusterView,
    NodeInfo,
    RaftTimings,
    Replica,
    plan,
)
from parley.cluster.slots import SLOTS, SlotMap, rebalance
from parley.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "parley-test-secret-0123456789"
TIMINGS = {
    "append_entries_s": 0.05, "election_min_s": 0.3, "election_max_s": 0.6,
    "connection_timeout_s": 2.0, "leader_fallback_s": 1.0, "reconnect_s": 0.3,
}
DEAD_AFTER_S = 2.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    """One raftnode process."""

    _ids = itertools.count(1)

    def __init__(self, node_id: str, raft_addr: str, voters: list[str], data_dir: Path) -> None:
        self.node_id, self.raft_addr, self.voters, self.data_dir = (
            node_id, raft_addr, voters, data_dir,
        )
        self.proc: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def spawn(self) -> None:
        config = {
            "node_id": self.node_id, "raft_addr": self.raft_addr, "voters": self.voters,
            "secret": SECRET, "http_url": f"http://{self.node_id}", "ws_url": f"ws://{self.node_id}",
            "link_addr": f"{self.node_id}:1", "data_dir": str(self.data_dir),
            "dead_after_s": DEAD_AFTER_S, "heartbeat_s": 0.3, "tick_s": 0.05, "timings": TIMINGS,
        }
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.raftnode", json.dumps(config)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.lines.put(json.loads(line))

    def wait_started(self, timeout: float = 10.0) -> None:
        msg = self.lines.get(timeout=timeout)
        assert msg.get("event") == "started", msg

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def request(self, op: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        rid = next(self._ids)
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if reply.get("id") == rid:
                return reply

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def table(self) -> SlotMap:
        t = self.request("table")
        return SlotMap(t["epoch"], tuple(t["owners"]), bytes.fromhex(t["table"]))

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """kill -9, then release the pipes."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdin is not None and self.reader is not None
        self.proc.stdin.close()
        self.reader.join(5)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (queue.Empty, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def states(status: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {n["id"]: (n["state"], n["slots"]) for n in status["nodes"]}


def converged(members: list[Member], expect: Callable[[dict[str, Any]], bool]) -> Any:
    """All members report the same revision, map and leader, and ``expect`` holds."""
    statuses = [m.status() for m in members]
    keys = {(s["revision"], s["map"], s["leader"]) for s in statuses}
    if len(keys) == 1 and statuses[0]["leader"] and all(expect(s) for s in statuses):
        return statuses
    return None


def balanced(n: int) -> Callable[[dict[str, Any]], bool]:
    def check(s: dict[str, Any]) -> bool:
        got = states(s)
        active = [slots for state, slots in got.values() if state == "active"]
        return len(active) == n and max(active) - min(active) <= 1 and sum(active) == SLOTS
    return check


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., list[Member]]]:
    made: list[Member] = []

    def make(voters: int, extra: int = 0) -> list[Member]:
        ports = _free_ports(voters + extra)
        addrs = [f"127.0.0.1:{p}" for p in ports]
        members = [
            Member(f"n{i + 1}", addrs[i], addrs[:voters], tmp_path / f"n{i + 1}")
            for i in range(voters + extra)
        ]
        made.extend(members)
        for m in members[:voters]:
            m.spawn()
        for m in members[:voters]:
            m.wait_started()
        return members

    yield make
    for m in made:
        if m.proc is not None and m.proc.poll() is None:
            m.signal(signal.SIGCONT)
        m.kill()


def _leader(members: list[Member]) -> Member:
    statuses = {m.node_id: m.status() for m in members}
    leaders = {s["leader"] for s in statuses.values()}
    assert len(leaders) == 1 and None not in leaders, leaders
    (leader_id,) = leaders
    return next(m for m in members if m.node_id == leader_id)


# -- through real processes --------------------------------------------------------------


def test_voters_form_a_cluster_a_non_voter_joins_drains_and_leaves(cluster) -> None:
    n1, n2, n3, n4 = cluster(3, extra=1)
    voters = [n1, n2, n3]
    statuses = wait_until(lambda: converged(voters, balanced(3)), 15, "three voters to agree")
    assert sorted(statuses[0]["voters"]) == ["n1", "n2", "n3"]
    assert [s["fencing"][0] for s in statuses].count(True) == 1  # one fenced leader
    assert all(s["fencing"][1] >= 1 and s["changes"] >= 1 for s in statuses)
    before = n1.table()

    n4.spawn()  # not in the voter list: joins as a non-voting member
    n4.wait_started()
    everyone = [n1, n2, n3, n4]
    statuses = wait_until(lambda: converged(everyone, balanced(4)), 10, "n4 to get slots")
    assert {n["id"]: n["voter"] for n in statuses[3]["nodes"]} == {
        "n1": True, "n2": True, "n3": True, "n4": False,
    }
    after = n1.table()
    moved = before.moved(after)
    assert len(moved) == 4096 and moved == after.slots_of("n4")  # only slots n4 took
    assert after.epoch == before.epoch + 1

    assert n2.request("drain", node="n4")["result"] is True
    wait_until(
        lambda: converged(everyone, lambda s: states(s)["n4"] == ("draining", 0)), 10,
        "n4 to drain",
    )
    drained = n1.table()
    assert after.moved(drained) == after.slots_of("n4")
    assert max(drained.counts().values()) - min(drained.counts().values()) <= 1

    assert n4.request("set_active", node="n4")["result"] is True
    wait_until(lambda: converged(everyone, balanced(4)), 10, "n4 to come back")
    back = n1.table()
    assert drained.moved(back) == back.slots_of("n4")

    assert n3.request("leave", node="n4")["result"] is True
    wait_until(
        lambda: converged(everyone, lambda s: "n4" not in states(s) and balanced(3)(s)), 10,
        "n4 to leave",
    )
    gone = n1.table()
    assert back.moved(gone) == back.slots_of("n4")
    assert n4.request("drain", node="n4")["result"] is False  # no longer a member


def test_leader_crash_fails_over_moves_only_its_slots_and_it_rejoins(cluster) -> None:
    members = cluster(3)
    wait_until(lambda: converged(members, balanced(3)), 15, "three voters to agree")
    old = _leader(members)
    survivors = [m for m in members if m is not old]
    start_map = old.table()
    start_digest = old.status()["map"]
    fence = old.status()["fencing"][1]

    old.kill()  # kill -9
    killed = time.monotonic()

    def new_leader() -> Any:
        for s in (m.status() for m in survivors):
            if s["fencing"][0] and s["leader"] == s["self"]:
                return s
        return None

    s = wait_until(new_leader, 10, "a new leader")
    failover_s = time.monotonic() - killed
    assert s["fencing"][1] > fence  # a new term claimed a new fencing token
    assert all(m.status()["map"] == start_digest for m in survivors)  # map unchanged so far

    wait_until(
        lambda: converged(
            survivors, lambda s: states(s)[old.node_id] == ("dead", 0) and balanced(2)(s)
        ),
        10, "the dead node's slots to move",
    )
    dead_s = time.monotonic() - killed
    after = survivors[0].table()
    assert start_map.moved(after) == start_map.slots_of(old.node_id)
    assert DEAD_AFTER_S <= dead_s < DEAD_AFTER_S + 5 and failover_s < 4
    print(f"\nfailover: new leader after {failover_s:.2f} s, slots moved after {dead_s:.2f} s")

    old.spawn()  # same data dir: its raft journal survives kill -9
    old.wait_started()
    restarted = time.monotonic()
    wait_until(lambda: converged(members, balanced(3)), 10, "the restarted node to rejoin")
    print(f"rejoined with slots after {time.monotonic() - restarted:.2f} s")
    final = old.table()
    assert after.moved(final) == final.slots_of(old.node_id)


def test_a_minority_cannot_change_the_map_and_heals_to_the_same_map(cluster) -> None:
    members = cluster(3)
    wait_until(lambda: converged(members, balanced(3)), 15, "three voters to agree")
    leader = _leader(members)
    lone = next(m for m in members if m is not leader)
    stopped = [m for m in members if m is not lone]
    before = lone.status()

    for m in stopped:
        m.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: lone.status()["leader"] is None, 5, "the lone node to lose its leader")
        reply = lone.request("drain", node=lone.node_id)
        assert "error" in reply, reply
        now = lone.status()
        assert (now["map"], now["epoch"], states(now)) == (
            before["map"], before["epoch"], states(before),
        )
        assert not now["fencing"][0]  # no fenced leader here
    finally:
        for m in stopped:
            m.signal(signal.SIGCONT)

    statuses = wait_until(lambda: converged(members, balanced(3)), 15, "the cluster to heal")
    assert {(s["map"], s["epoch"]) for s in statuses} == {(before["map"], before["epoch"])}


def test_whole_cluster_restart_keeps_the_map_from_the_raft_journals(cluster) -> None:
    members = cluster(3)
    statuses = wait_until(lambda: converged(members, balanced(3)), 15, "three voters to agree")
    for m in members:
        m.kill()
    for m in members:
        m.spawn()
    for m in members:
        m.wait_started()
    fence = statuses[0]["fencing"][1]
    healed = wait_until(
        lambda: converged(members, lambda s: balanced(3)(s) and s["fencing"][1] > fence), 15,
        "the cluster to restart under a new fencing token",
    )
    assert {(s["map"], s["epoch"]) for s in healed} == {(statuses[0]["map"], statuses[0]["epoch"])}


def _closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


class _Marker:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_fault7_raft_port_refuses_pickles_bombs_and_floods(cluster, tmp_path: Path) -> None:
    members = cluster(3)
    wait_until(lambda: converged(members, balanced(3)), 15, "three voters to agree")
    target = members[0]
    host, port = target.raft_addr.rsplit(":", 1)
    rss_before = target.rss_kib()
    marker = tmp_path / "pwned"

    def attack(payload: bytes) -> bool:
        with socket.create_connection((host, int(port))) as s:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                s.sendall(payload)
            return _closed_by_peer(s)

    evil = pickle.dumps(_Marker(str(marker)), protocol=2)
    for body in (evil, zlib.compress(evil)):  # raw, and in PySyncObj's own framing
        assert attack(struct.pack("i", len(body)) + body)
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB inflated
    assert attack(struct.pack("i", len(bomb)) + bomb)
    small_bomb = zlib.compress(b"\0" * (4 << 20), 9)[:4000]  # fits the pre-auth limit
    assert attack(struct.pack("i", len(small_bomb)) + small_bomb)

    # A frame announcing 2 GiB, then a stream: refused at the header, not buffered.
    with socket.create_connection((host, int(port))) as s:
        s.sendall(struct.pack("i", 0x7FFFFFFF))
        sent = 0
        chunk = b"\xAA" * 65536
        try:
            while sent < (64 << 20):
                s.sendall(chunk)
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert sent < (8 << 20), sent

    # Idle connections that never authenticate are closed after the handshake timeout.
    idle = [socket.create_connection((host, int(port))) for _ in range(40)]
    try:
        assert all(_closed_by_peer(s, 6.0) for s in idle)
    finally:
        for s in idle:
            s.close()

    assert not marker.exists()
    assert target.proc is not None and target.proc.poll() is None
    growth_kib = target.rss_kib() - rss_before
    assert growth_kib < 20 * 1024, growth_kib
    # ... and the cluster still works: a change committed through the attacked node.
    assert target.request("drain", node="n3")["result"] is True
    wait_until(
        lambda: converged(members, lambda s: states(s)["n3"] == ("draining", 0)), 10,
        "the drain to commit",
    )


# -- in process ------------------------------------------------------------------------------


def _config(**changes: Any) -> ClusterConfig:
    port = _free_ports(1)[0]
    base: dict[str, Any] = {
        "node_id": "solo", "raft_addr": f"127.0.0.1:{port}", "voters": (f"127.0.0.1:{port}",),
        "secret": SECRET, "dead_after_s": DEAD_AFTER_S, "heartbeat_s": 0.3, "tick_s": 0.05,
        "timings": RaftTimings(**TIMINGS),
    }
    base.update(changes)
    return ClusterConfig(**base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secret": ""}, "a cluster secret is required"),
        ({"secret": "short"}, "too short"),
        ({"raft_addr": "0.0.0.0:7000", "voters": ("0.0.0.0:7000",)}, "binds every interface"),
        ({"voters": ("127.0.0.1:7001", "127.0.0.1:7002")}, "1, 3, 5 or 7"),
        ({"node_id": "bad id"}, "node id"),
        ({"heartbeat_s": 5.0}, "heartbeat"),
    ],
)
def test_refuses_to_start_without_a_proper_secret_or_address(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterMembership(_config(**changes))


async def test_single_voter_assigns_every_slot_and_reports_changes_on_the_loop() -> None:
    membership = ClusterMembership(_config())
    views: list[ClusterView] = []
    assigned = asyncio.Event()
    loop = asyncio.get_running_loop()

    def changed(view: ClusterView) -> None:
        assert asyncio.get_running_loop() is loop  # delivered on the subscriber's loop
        views.append(view)
        if view.slot_map.counts() == {"solo": SLOTS}:
            assigned.set()

    membership.on_change(changed)
    await loop.run_in_executor(None, membership.start)
    try:
        async with asyncio.timeout(10):
            await assigned.wait()
        view = membership.snapshot()
        assert view.is_leader and membership.is_leader() and membership.fencing_token() == 1
        assert view.leader_id == "solo" and view.voters == ("solo",) and view.epoch == 1
        info = membership.node_for_user(12345)
        assert info is not None and info.id == "solo" and info.state == "active"
        status = membership.status()
        assert status["nodes"][0]["slots"] == SLOTS and status["slots_unassigned"] == 0
        assert await membership.drain("solo") is True
        assert await membership.drain("nobody") is False
    finally:
        await loop.run_in_executor(None, membership.stop)


async def test_a_drained_node_set_active_again_is_not_marked_dead() -> None:
    """``set_active`` counts as seeing the node, as a join does.  A node that led the
    cluster sent no heartbeats while it led; drained and restarted, it asked for
    slots again (joining, which gets no grace) and the next leader, going by the
    heartbeat it last saw, marked it dead at once: its users stalled while it
    flapped dead -> joining -> active."""
    membership = ClusterMembership(_config())
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, membership.start)

    def state() -> str | None:
        info = membership.snapshot().nodes.get("b")
        return None if info is None else info.state

    async def until(cond: Callable[[], object], what: str) -> None:
        async with asyncio.timeout(10):
            while not cond():  # noqa: ASYNC110 - the controller thread changes it
                await asyncio.sleep(0.01)

    try:
        await until(membership.is_leader, "the single voter to lead")
        assert await membership._change(
            "join", ("b", "http://127.0.0.1:1", "ws://127.0.0.1:2/v1/ws", "127.0.0.1:3", "",
                     False))
        await until(lambda: state() == "active", "b to become active")
        assert await membership.drain("b") is True
        await until(lambda: state() == "draining", "b to drain")
        membership._last_seen["b"] = time.monotonic() - 10 * DEAD_AFTER_S  # long silent

        assert await membership.set_active("b") is True
        await until(lambda: state() in ("active", "dead"), "the leader's decision")
        assert state() == "active"
    finally:
        await loop.run_in_executor(None, membership.stop)


# PySyncObj's journal reads its meta file without closing it (journal.py, getMeta).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_voter_restores_its_state_from_the_dump_and_journal(tmp_path: Path) -> None:
    config = _config(data_dir=tmp_path)
    first = ClusterMembership(config)
    first.start()
    try:
        wait_until(lambda: first.snapshot().epoch >= 1 and first.is_leader(), 10, "slots")
        assert asyncio.run(first.drain("solo")) is True
        first._sync.forceLogCompaction()  # the next command lands after the dump
        wait_until((tmp_path / "raft" / "dump").exists, 10, "a dump file")
        assert asyncio.run(first.set_active("solo")) is True
        expected = first.snapshot()
    finally:
        first.stop()

    second = ClusterMembership(config)
    second.start()
    try:
        wait_until(lambda: second.snapshot().revision >= expected.revision, 10, "the restore")
        view = second.snapshot()
        assert view.slot_map == expected.slot_map and view.epoch == expected.epoch
        assert view.nodes["solo"].state in ("joining", "active")
    finally:
        second.stop()


def test_a_taken_raft_port_is_a_startup_error() -> None:
    from parley.errors import StartupError

    config = _config()
    host, port = config.raft_addr.rsplit(":", 1)
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        with pytest.raises(StartupError, match="cannot listen"):
            ClusterMembership(config).start()


# -- the controller's decisions (pure) ---------------------------------------------------


def _node(node_id: str, state: str) -> NodeInfo:
    return NodeInfo(node_id, "", "", "", "", state, True)  # type: ignore[arg-type]


def _replica(*nodes: NodeInfo, active: list[str]) -> Replica:
    slots = rebalance(SlotMap.empty(), active) if active else SlotMap.empty()
    return Replica(revision=7, nodes=nodes, slots=slots)


def test_plan_activates_alive_joiners_and_leaves_a_settled_cluster_alone() -> None:
    r = _replica(_node("a", "active"), _node("b", "joining"), active=["a"])
    step = plan(r, now=10.0, last_seen={"b": 9.5}, leader_since=0.0, dead_after_s=2.0,
                self_id="a")
    assert step is not None and step.expected_revision == 7
    assert step.states == (("b", "active"),) and step.removals == ()
    assert step.slots.counts() == {"a": 8192, "b": 8192}
    settled = Replica(revision=8, nodes=(_node("a", "active"), _node("b", "active")),
                      slots=step.slots)
    assert plan(settled, now=10.0, last_seen={"b": 9.9}, leader_since=0.0, dead_after_s=2.0,
                self_id="a") is None


def test_plan_marks_the_silent_dead_after_the_grace_and_removes_leavers() -> None:
    r = _replica(_node("a", "active"), _node("b", "active"), _node("c", "leaving"),
                 _node("d", "joining"), active=["a", "b", "c"])
    # a new leader gives members dead_after_s of grace, joiners none
    step = plan(r, now=11.0, last_seen={}, leader_since=10.0, dead_after_s=2.0, self_id="a")
    assert step is not None and step.states == (("d", "dead"),) and step.removals == ("c",)
    assert set(step.slots.counts()) == {"a", "b"}
    assert r.slots.moved(step.slots) == r.slots.slots_of("c")
    later = plan(r, now=12.5, last_seen={"b": 9.0}, leader_since=10.0, dead_after_s=2.0,
                 self_id="a")
    assert later is not None and ("b", "dead") in later.states
    assert later.slots.counts() == {"a": SLOTS}


def test_plan_keeps_the_map_while_nobody_is_active() -> None:
    r = _replica(_node("a", "draining"), active=["a"])
    assert plan(r, now=1.0, last_seen={}, leader_since=0.0, dead_after_s=2.0, self_id="a") is None

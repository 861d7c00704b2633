"""The chaos harness: a local cluster, a checked message load, and faults.

One harness serves ``parley chaos`` and the fault tests (``tests/cluster``):

* ``NodeSet`` runs N ``parley serve`` processes, each its own process (so one
  can be killed, paused or restarted alone), on loopback or -- as root --
  each in its own network namespace (``parley.cluster.netns``).  The nodes
  reach PostgreSQL through a ``TcpProxy`` (the database fault cuts it).
* ``Checker`` is the load and the referee: pairs of users, one ``ParleyClient``
  each, connected to a seed URL (redirects place them); each pair's sender
  sends on an open-loop schedule (the aggregate ``rate``), bodies carrying
  ``(pair, k)``; each receiver records what its application sees from
  ``messages()``.  After a bounded drain, ``counts()`` gives Jepsen's queue
  checker vocabulary (see ``Counts``) and ``verify_db`` checks every ack
  against the messages table.
* ``Faults`` are the actions: kill -9 and restart, kill the raft leader
  again and again, SIGSTOP/SIGCONT, partition (namespaces), database
  unreachable, rolling restart.  Each returns what it measured.
* ``run_chaos`` mixes random faults for a duration under load.

Every fault is bounded in time and undone by ``Cluster.close()`` (processes,
namespaces, bridges, the proxy), which runs even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from parley.client import Backoff, ParleyClient, ParleyClientError, decode_body
from parley.cluster.netns import Namespaces, TcpProxy, unavailable_reason
from parley.protocol import ErrorFrame, Msg, Sent

__all__ = [
    "Checker",
    "Cluster",
    "Counts",
    "FaultResult",
    "Faults",
    "NodeSet",
    "http_get",
    "run_chaos",
]

log = logging.getLogger("parley.cluster.chaos")

_PORT_STEP = 10


# -- small HTTP client (no dependency; one request per connection) ---------------------


async def http_get(url: str, headers: dict[str, str] | None = None,
                   timeout: float = 3.0) -> tuple[int, bytes]:  # noqa: ASYNC109
    """GET ``url`` (http only); returns (status, body).  Raises OSError/TimeoutError."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    lines = [f"GET /{path} HTTP/1.0", f"Host: {hostport}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def _free_base_port(count: int) -> int:
    """A base port whose ``count`` node blocks look free on loopback."""
    for _ in range(50):
        base = 20000 + 10 * secrets.randbelow(1150)  # below the ephemeral range (32768+)
        try:
            for i in range(count):
                for off in range(4):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", base + _PORT_STEP * i + off))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range found")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the node is killed if the harness dies (no orphans after a crash)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _open_log(node: NodeHandle) -> IO[bytes]:
    Path(node.env["PARLEY_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    return node.log_path.open("ab")


# -- the node processes --------------------------------------------------------------------


@dataclass(slots=True)
class NodeHandle:
    index: int
    node_id: str
    http_url: str
    ws_url: str
    env: dict[str, str] = field(repr=False)
    argv: list[str] = field(repr=False)
    log_path: Path = field(repr=False)
    proc: asyncio.subprocess.Process | None = None
    paused: bool = False
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class NodeSet:
    """N node processes of one cluster.  ``start_all`` then faults, then ``close``.

    ``spare`` nodes are planned too (``nodes[count:]``: ports, data directory) but
    not started by ``start_all``; ``start(i)`` makes one join as a non-voter."""

    def __init__(self, count: int, database_url: str, workdir: Path, *,
                 schema: str | None = None, netns: Namespaces | None = None,
                 dead_after_s: float = 3.0, extra_env: dict[str, str] | None = None,
                 spare: int = 0) -> None:
        if spare and netns is not None:
            raise ValueError("spare nodes are not supported with network namespaces")
        self.count = count
        self.workdir = workdir
        self.netns = netns
        self.secret = secrets.token_urlsafe(24)
        base = _free_base_port(count + spare) if netns is None else 9100
        voters = min(count, 3) if count < 5 else 5
        raft, hosts, internal = [], [], []
        for i in range(count + spare):
            host = "127.0.0.1" if netns is None else netns.public_ip(i)
            inner = "127.0.0.1" if netns is None else netns.cluster_ip(i)
            hosts.append(host)
            internal.append(inner)
            raft.append(f"{inner}:{base + _PORT_STEP * i + 2}")
        self.nodes: list[NodeHandle] = []
        for i in range(count + spare):
            port = base + _PORT_STEP * i
            env = {
                "PARLEY_NODE_ID": f"node-{i + 1}", "PARLEY_HOST": hosts[i],
                "PARLEY_PORT": str(port), "PARLEY_WS_PORT": str(port + 1),
                "PARLEY_RAFT_ADDR": raft[i], "PARLEY_LINK_ADDR": f"{internal[i]}:{port + 3}",
                "PARLEY_CLUSTER_PEERS": ",".join(raft[:voters]),
                "PARLEY_CLUSTER_SECRET": self.secret,
                "PARLEY_CLUSTER_DEAD_AFTER_S": str(dead_after_s),
                "PARLEY_DATA_DIR": str(workdir / f"node-{i + 1}"),
                "PARLEY_DATABASE_URL": database_url,
                "PARLEY_SEND_RATE_PER_S": "100000", "PARLEY_USER_SEND_RATE_PER_S": "100000",
                "PARLEY_SHUTDOWN_TIMEOUT_S": "10",
                **({"PARLEY_DATABASE_SCHEMA": schema} if schema else {}),
                **(extra_env or {}),
            }
            argv = [sys.executable, "-m", "parley", "serve"]
            if netns is not None:
                argv = netns.exec_prefix(i) + argv
            self.nodes.append(NodeHandle(
                i, f"node-{i + 1}", f"http://{hosts[i]}:{port}",
                f"ws://{hosts[i]}:{port + 1}/v1/ws", env, argv, workdir / f"node-{i + 1}.log",
            ))

    # -- processes ---------------------------------------------------------------------
    async def start_all(self, deadline_s: float = 60.0) -> None:
        for i in range(self.count):
            await self.start(i, wait=False)
        await asyncio.gather(*(self.wait_ready(i, deadline_s) for i in range(self.count)))

    async def start(self, i: int, wait: bool = True, deadline_s: float = 60.0) -> float:
        """Start node ``i``; with ``wait``, return the seconds until it was ready."""
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"{node.node_id} is already running")
        started = time.monotonic()
        logf = _open_log(node)
        try:
            logf.write(f"--- start {node.starts + 1}\n".encode())
            logf.flush()
            node.proc = await asyncio.create_subprocess_exec(
                *node.argv, env={**os.environ, **node.env}, stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
            )
        finally:
            logf.close()
        node.starts += 1
        node.paused = False
        if wait:
            await self.wait_ready(i, deadline_s)
        return time.monotonic() - started

    async def wait_ready(self, i: int, deadline_s: float = 60.0) -> None:
        """Poll ``/readyz`` until 200; raise with the node's log tail if it dies or times out."""
        node = self.nodes[i]
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if not node.running:
                raise RuntimeError(f"{node.node_id} exited while starting:\n{self.log_tail(i)}")
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, _ = await http_get(node.http_url + "/readyz", timeout=2.0)
                if status == 200:
                    return
            await asyncio.sleep(0.1)  # polled: nothing announces readiness
        raise TimeoutError(f"{node.node_id} not ready within {deadline_s} s:\n{self.log_tail(i)}")

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            text = self.nodes[i].log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, i: int, sig: int) -> None:
        node = self.nodes[i]
        if node.proc is None or node.proc.returncode is not None:
            raise RuntimeError(f"{node.node_id} is not running")
        node.proc.send_signal(sig)

    async def kill(self, i: int) -> None:
        """kill -9 node ``i`` and reap it."""
        node = self.nodes[i]
        if node.paused:
            node.paused = False
        self._signal(i, signal.SIGKILL)
        assert node.proc is not None
        await node.proc.wait()

    def pause(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)
        self.nodes[i].paused = True

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self.nodes[i].paused = False

    async def stop(self, i: int, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful: the node drains its users to the others first); its exit code."""
        node = self.nodes[i]
        self._signal(i, signal.SIGTERM)
        assert node.proc is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await node.proc.wait()
        except TimeoutError:
            node.proc.kill()
            await node.proc.wait()
            raise TimeoutError(f"{node.node_id} did not stop within {timeout_s} s") from None

    async def close(self) -> None:
        """Kill every node still running (never raises)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                    node.proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(node.proc.wait(), 10)

    # -- the cluster as the nodes see it -----------------------------------------------------
    async def status(self, i: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """Node ``i``'s ``/cluster/status`` (None when it does not answer)."""
        node = self.nodes[i]
        if not node.running or node.paused:
            return None
        try:
            code, body = await http_get(node.http_url + "/cluster/status",
                                        {"Authorization": f"Bearer {self.secret}"}, timeout_s)
        except (OSError, TimeoutError, ValueError, IndexError):
            return None
        if code != 200:
            return None
        data: dict[str, Any] = json.loads(body)
        return data

    def index_of(self, node_id: str | None) -> int | None:
        for node in self.nodes:
            if node.node_id == node_id:
                return node.index
        return None

    async def leader(self, among: Sequence[int] | None = None) -> int | None:
        """The raft leader that the answering nodes (``among``: default all) agree on."""
        found: set[str | None] = set()
        for i in among if among is not None else range(self.count):
            st = await self.status(i)
            if st is not None:
                found.add(st.get("leader") if st.get("has_quorum") else None)
        if len(found) == 1:
            return self.index_of(found.pop())
        return None

    async def map_signatures(self, among: Sequence[int]) -> dict[int, Any]:
        """What each answering node of ``among`` says the map is: (epoch, nodes' states and
        slot counts, unassigned slots)."""
        out: dict[int, Any] = {}
        for i in among:
            st = await self.status(i)
            if st is not None:
                out[i] = (st.get("epoch"), st.get("slots_unassigned"),
                          tuple(sorted((n["id"], n["state"], n["slots"]) for n in st["nodes"])))
        return out

    async def wait_converged(self, among: Sequence[int] | None = None,
                             deadline_s: float = 30.0, gone: int | None = None) -> float:
        """Wait until every node of ``among`` (default: all running) answers with the same
        map, every one of them active with slots, none unassigned (and node ``gone``, if
        given, holding no slot); returns the seconds."""
        started = time.monotonic()
        ids = list(among) if among is not None else [
            n.index for n in self.nodes if n.running and not n.paused]
        want = {self.nodes[i].node_id for i in ids}
        last: dict[int, Any] = {}
        while time.monotonic() - started < deadline_s:
            last = await self.map_signatures(ids)
            if len(last) == len(ids) and len(set(last.values())) == 1:
                _, unassigned, nodes = next(iter(last.values()))
                active = {n for n, state, slots in nodes if state == "active" and slots > 0}
                holders = {n for n, _, slots in nodes if slots > 0}
                if unassigned == 0 and want <= active and (
                        gone is None or self.nodes[gone].node_id not in holders):
                    return time.monotonic() - started
            await asyncio.sleep(0.2)  # polled: the map converges on its own
        raise TimeoutError(f"the map did not converge within {deadline_s} s: {last}")


# -- the checker ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Send:
    pair: int
    k: int
    start: float
    mid: str = ""
    end: float = 0.0
    outcome: str = "pending"  # acked | failed | indeterminate | pending
    seq: int = 0
    first_try: bool = True
    error: str = ""


@dataclass
class Counts:
    """The checker's verdict (Jepsen's queue-checker vocabulary).

    * ``sent``: sends attempted; ``acked``: answered ``sent``; ``failed``: refused
      with a non-retryable error (definitely not stored); ``indeterminate``: no
      answer in time (may or may not be stored).
    * ``failed_first_try``: acked only after a retryable error or a reconnect;
      ``retried_ok``: of those, acked in the end.
    * ``delivered``: distinct messages the receivers' applications saw;
      ``lost``: acked but never delivered; ``duplicated``: seen twice by an
      application; ``reordered``: seen before a message that was acked before it
      was even sent, or out of seq order; ``unexpected``: delivered but never
      sent; ``recovered``: indeterminate, yet delivered.
    * ``acked_different_seqs``: one message id acked (or delivered) with two seqs;
      ``false_acks``: acked but absent from the database after the run.
    """

    sent: int = 0
    acked: int = 0
    failed: int = 0
    indeterminate: int = 0
    failed_first_try: int = 0
    retried_ok: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unexpected: int = 0
    recovered: int = 0
    acked_different_seqs: int = 0
    false_acks: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.unexpected
                    or self.acked_different_seqs or self.false_acks)

    @property
    def first_try_or_retry_ratio(self) -> float:
        """Share of sends that succeeded (first time or on retry)."""
        return self.acked / self.sent if self.sent else 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Checker:
    """The load and the referee.  ``connect`` -> ``start_load`` -> faults -> ``stop_load``
    -> ``drain`` -> ``verify_db`` -> ``counts``; ``close`` always."""

    def __init__(self, seeds: Sequence[str], credentials: Sequence[str], convs: Sequence[int],
                 *, rate: float, send_timeout_s: float = 120.0, ping_interval_s: float = 2.0
                 ) -> None:
        if len(credentials) != 2 * len(convs):
            raise ValueError("two credentials (sender, receiver) per conversation")
        self.seeds = list(seeds)
        self.credentials = list(credentials)
        self.convs = list(convs)
        self.rate = rate
        self.send_timeout_s = send_timeout_s
        self.ping_interval_s = ping_interval_s
        self.senders: list[ParleyClient] = []
        self.receivers: list[ParleyClient] = []
        self.sends: list[dict[int, _Send]] = [{} for _ in convs]
        self.seqs_by_mid: dict[str, set[int]] = {}
        self.seen: list[list[tuple[int, int, str]]] = [[] for _ in convs]  # (k, seq, mid)
        self.unexpected = 0
        self._retried: list[set[int]] = [set() for _ in convs]
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._schedulers: list[asyncio.Task[None]] = []
        self._arrived = asyncio.Event()
        self.false_acks = 0

    @property
    def pairs(self) -> int:
        return len(self.convs)

    def _client(self, i: int) -> ParleyClient:
        k = i % len(self.seeds)  # start addresses rotated: clients spread their first hop
        return ParleyClient(
            self.seeds[k:] + self.seeds[:k], self.credentials[i], f"chaos{i}", echo=False,
            backoff=Backoff(initial=0.1, maximum=1.0), ping_interval=self.ping_interval_s,
            connect_timeout=5.0,
        )

    async def connect(self) -> None:
        """Connect every client (redirects place each on its node) and start the readers."""
        for p in range(self.pairs):
            s, r = self._client(2 * p), self._client(2 * p + 1)
            self._tap(p, s)
            self.senders.append(s)
            self.receivers.append(r)
        await asyncio.gather(*(c.connect() for c in self.senders + self.receivers))
        for p, r in enumerate(self.receivers):
            self._readers.append(asyncio.create_task(self._read(p, r), name=f"chaos-read-{p}"))

    def _tap(self, pair: int, client: ParleyClient) -> None:
        """See every ``sent`` frame (a mid acked twice with different seqs) and every retryable
        error (a send that did not succeed the first time)."""
        session = client._session
        answer, on_error = session._answer, session._on_error
        seqs, retried = self.seqs_by_mid, self._retried[pair]

        def tapped_answer(rid: int | None, frame: Any) -> None:
            if type(frame) is Sent:
                seqs.setdefault(frame.mid, set()).add(frame.seq)
            answer(rid, frame)

        def tapped_error(frame: ErrorFrame) -> None:
            if frame.rid is not None:
                retried.add(frame.rid)
            on_error(frame)

        session._answer = tapped_answer  # type: ignore[method-assign]
        session._on_error = tapped_error  # type: ignore[method-assign,assignment]

    async def _read(self, pair: int, client: ParleyClient) -> None:
        seen = self.seen[pair]
        try:
            async for msg in client.messages():
                self._record(pair, seen, msg)
        except ParleyClientError as exc:
            log.warning("receiver %d ended: %s", pair, exc)

    def _record(self, pair: int, seen: list[tuple[int, int, str]], msg: Msg) -> None:
        try:
            p_, k_ = str(decode_body(msg)["text"]).split(" ")
            p, k = int(p_), int(k_)
        except (ValueError, KeyError, TypeError):
            self.unexpected += 1
            return
        if p != pair or k not in self.sends[pair]:
            self.unexpected += 1
            return
        seen.append((k, msg.seq, msg.mid))
        self.seqs_by_mid.setdefault(msg.mid, set()).add(msg.seq)
        self._arrived.set()

    # -- load ----------------------------------------------------------------------------
    async def warm_up(self, timeout_s: float = 30.0) -> None:
        """One message per pair, sent and delivered (connections placed, caches and pools
        warm) before the timed load; counted like the others."""
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(self._send(p, len(self.sends[p]))
                                   for p in range(self.pairs)))
            while self._missing():
                self._arrived.clear()
                await self._arrived.wait()

    def start_load(self) -> None:
        per_pair = self.rate / self.pairs
        for p in range(self.pairs):
            self._schedulers.append(asyncio.create_task(
                self._schedule(p, per_pair, p / self.rate), name=f"chaos-send-{p}"))

    async def _schedule(self, pair: int, rate: float, offset: float) -> None:
        """Open loop: send k at start + offset + k / rate, whatever earlier sends are doing."""
        loop = asyncio.get_running_loop()
        t0 = loop.time() + offset
        first = k = len(self.sends[pair])
        while True:
            due = t0 + (k - first) / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send(pair, k))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            k += 1

    async def _send(self, pair: int, k: int) -> None:
        client = self.senders[pair]
        rec = _Send(pair, k, time.monotonic())
        self.sends[pair][k] = rec
        reconnects = client.stats.reconnects
        try:
            rec.mid = client.new_message_id()
            sent = await client.send(self.convs[pair], "text", {"text": f"{pair} {k}"},
                                     mid=rec.mid, timeout=self.send_timeout_s)
        except TimeoutError:
            rec.outcome, rec.error = "indeterminate", "timeout"
        except ParleyClientError as exc:
            retryable = exc.code in ("client_closed", "session_ended", "connection_lost")
            rec.outcome = "indeterminate" if retryable else "failed"
            rec.error = exc.code
        else:
            rec.outcome, rec.seq = "acked", sent.seq
            rec.first_try = (sent.rid not in self._retried[pair]
                             and client.stats.reconnects == reconnects)
        rec.end = time.monotonic()

    async def stop_load(self, settle_s: float | None = None) -> None:
        """Stop scheduling; wait (bounded) for the sends in flight to be answered."""
        for t in self._schedulers:
            t.cancel()
        await asyncio.gather(*self._schedulers, return_exceptions=True)
        self._schedulers.clear()
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=settle_s or self.send_timeout_s + 5)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every acked message reached its receiver's application, or the bound."""
        end = time.monotonic() + timeout_s
        synced_at = time.monotonic()
        while True:
            missing = self._missing()
            if not missing:
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            if time.monotonic() - synced_at > 3.0:  # push may be lost with a link: ask
                synced_at = time.monotonic()
                for p in missing:
                    r = self.receivers[p]
                    if r.connected:
                        with contextlib.suppress(ParleyClientError):
                            r._session.request_sync()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))

    def _missing(self) -> list[int]:
        out = []
        for p in range(self.pairs):
            got = {k for k, _, _ in self.seen[p]}
            if any(r.outcome == "acked" and k not in got for k, r in self.sends[p].items()):
                out.append(p)
        return out

    async def verify_db(self, database_url: str, schema: str | None) -> int:
        """False acks: acked message ids absent from the messages table.  Needs the
        database reachable (run after every fault is healed)."""
        from sqlalchemy import select

        from parley.store import Database
        from parley.store.tables import messages

        acked = {r.mid for per in self.sends for r in per.values() if r.outcome == "acked"}
        db = Database(database_url, pool_size=2, pg_schema=schema)
        try:
            async with db.reader.connect() as conn:
                rows = await conn.execute(select(messages.c.msg_id, messages.c.seq).where(
                    messages.c.conversation_id.in_(self.convs)))
                stored: dict[str, int] = {str(m): int(s) for m, s in rows}
        finally:
            await db.close()
        for mid, seq in stored.items():
            if mid in self.seqs_by_mid:
                self.seqs_by_mid[mid].add(seq)
        self.false_acks = len(acked - stored.keys())
        return self.false_acks

    def counts(self) -> Counts:
        c = Counts(false_acks=self.false_acks, unexpected=self.unexpected)
        latencies: list[float] = []
        for p in range(self.pairs):
            sends = self.sends[p]
            delivered: dict[int, int] = {}
            for k, _, _ in self.seen[p]:
                delivered[k] = delivered.get(k, 0) + 1
            for rec in sends.values():
                c.sent += 1
                if rec.outcome == "acked":
                    c.acked += 1
                    latencies.append(rec.end - rec.start)
                    if not rec.first_try:
                        c.failed_first_try += 1
                        c.retried_ok += 1
                    if rec.k not in delivered:
                        c.lost += 1
                elif rec.outcome == "failed":
                    c.failed += 1
                    c.failed_first_try += 1
                    c.errors[rec.error] = c.errors.get(rec.error, 0) + 1
                else:
                    c.indeterminate += 1
                    c.failed_first_try += 1
                    c.errors[rec.error or "pending"] = c.errors.get(rec.error or "pending", 0) + 1
                    if rec.k in delivered:
                        c.recovered += 1
            c.delivered += len(delivered)
            c.duplicated += sum(n - 1 for n in delivered.values())
            c.reordered += _reordered(self.seen[p], sends)
        c.acked_different_seqs = sum(1 for s in self.seqs_by_mid.values() if len(s) > 1)
        if latencies:
            latencies.sort()
            c.latency_p50_ms = round(1000 * latencies[len(latencies) // 2], 1)
            c.latency_p99_ms = round(1000 * latencies[int(len(latencies) * 0.99)], 1)
            c.latency_max_ms = round(1000 * latencies[-1], 1)
        return c

    def clients_on(self, ws_url: str) -> list[ParleyClient]:
        """The clients whose connection is (or was last) to the node at ``ws_url``."""
        prefix = ws_url.split("?")[0]
        return [c for c in self.senders + self.receivers
                if c._life._url.split("?")[0] == prefix]

    def max_outage_s(self, pairs: Sequence[int] | None = None) -> float:
        """The longest any of these senders waited for an ack (send start to ack)."""
        worst = 0.0
        for p in pairs if pairs is not None else range(self.pairs):
            for rec in self.sends[p].values():
                if rec.outcome == "acked":
                    worst = max(worst, rec.end - rec.start)
        return worst

    async def close(self) -> None:
        for t in self._schedulers:
            t.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._schedulers, *self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.senders + self.receivers),
                             return_exceptions=True)
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def _reordered(seen: list[tuple[int, int, str]], sends: dict[int, _Send]) -> int:
    """Deliveries out of seq order, plus messages delivered before one that was acked
    before they were sent (a real-time order violation)."""
    bad = 0
    last_seq = 0
    for _, seq, _ in seen:
        if seq <= last_seq:
            bad += 1
        last_seq = max(last_seq, seq)
    earliest_ack_after = float("inf")
    for k, _, _ in reversed(seen):
        rec = sends.get(k)
        if rec is None:
            continue
        if earliest_ack_after < rec.start:
            bad += 1
        if rec.outcome == "acked":
            earliest_ack_after = min(earliest_ack_after, rec.end)
    return bad


# -- the whole thing -------------------------------------------------------------------------


def _with_host(database_url: str, host: str, port: int) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(host=host, port=port).render_as_string(
        hide_password=False)


def _pg_upstream(database_url: str) -> tuple[str, int]:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return url.host or "127.0.0.1", url.port or 5432


class Cluster:
    """Nodes + database proxy (+ namespaces) + checker, built and torn down together.

    ``async with Cluster(...) as c``: nodes started and converged, users
    provisioned, clients connected.  ``close()`` undoes everything."""

    def __init__(self, database_url: str, workdir: Path, *, nodes: int = 3,
                 schema: str | None = None, use_netns: bool = False, pairs: int = 20,
                 rate: float = 500.0, dead_after_s: float = 3.0,
                 send_timeout_s: float = 120.0, spare: int = 0) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.count = nodes
        self.schema = schema
        self.use_netns = use_netns
        self.pairs = pairs
        self.rate = rate
        self.dead_after_s = dead_after_s
        self.send_timeout_s = send_timeout_s
        self.spare = spare
        self.netns: Namespaces | None = None
        self.proxy: TcpProxy | None = None
        self.nodes: NodeSet | None = None
        self.checker: Checker | None = None

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proxy = TcpProxy(_pg_upstream(self.database_url))
        listen = "127.0.0.1"
        if self.use_netns:
            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(reason)
            self.netns = Namespaces(self.count)
            await asyncio.to_thread(self.netns.setup)
            listen = self.netns.host_cluster_ip
        host, port = await self.proxy.start(listen)
        self.nodes = NodeSet(
            self.count, _with_host(self.database_url, host, port), self.workdir,
            schema=self.schema, netns=self.netns, dead_after_s=self.dead_after_s,
            spare=self.spare,
        )
        await self.nodes.start_all()
        await self.nodes.wait_converged(deadline_s=60)
        creds, convs = await self._provision()
        seeds = [n.ws_url for n in self.nodes.nodes[:self.count]]
        self.checker = Checker(seeds, creds, convs, rate=self.rate,
                               send_timeout_s=self.send_timeout_s)
        await self.checker.connect()
        await self.checker.warm_up()

    async def _provision(self) -> tuple[list[str], list[int]]:
        from parley.bench.parley_target import provision
        from parley.bench.targets import Topology
        from parley.config import Settings

        settings = Settings(database_url=self.database_url, database_schema=self.schema)
        run_id = secrets.token_hex(4)
        topo = Topology(run_id, 2 * self.pairs,
                        directs=tuple((2 * p, 2 * p + 1) for p in range(self.pairs)))
        prov, _ = await provision(settings, topo, [])
        return list(prov.credentials), [int(c) for c in prov.directs]

    async def finish(self, drain_s: float = 30.0) -> Counts:
        """Stop the load, drain, check the database; the counts."""
        assert self.checker is not None
        await self.checker.stop_load()
        await self.checker.drain(drain_s)
        await self.checker.verify_db(self.database_url, self.schema)
        return self.checker.counts()

    async def close(self) -> None:
        if self.checker is not None:
            with contextlib.suppress(Exception):
                await self.checker.close()
        if self.nodes is not None:
            await self.nodes.close()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                await self.proxy.close()
        if self.netns is not None:
            await asyncio.to_thread(self.netns.teardown)


# -- faults ------------------------------------------------------------------------------


@dataclass
class FaultResult:
    """What one fault did and what it measured (seconds)."""

    name: str
    node: str = ""
    duration_s: float = 0.0
    measures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Faults:
    """The fault actions over a started ``Cluster``; each is bounded and heals itself."""

    def __init__(self, cluster: Cluster, out: Callable[[str], None] = lambda s: None) -> None:
        assert cluster.nodes is not None and cluster.proxy is not None
        self.cluster = cluster
        self.nodes = cluster.nodes
        self.proxy = cluster.proxy
        self.out = out

    def _others(self, i: int) -> list[int]:
        return [n.index for n in self.nodes.nodes if n.index != i]

    async def kill_restart(self, i: int, down_s: float) -> FaultResult:
        """kill -9 node ``i``, restart it after ``down_s``; measures the time until the
        others moved its slots, its readiness after restart, and the map's convergence."""
        r = FaultResult("kill -9 + restart", self.nodes.nodes[i].node_id, down_s)
        self.out(f"kill -9 {r.node}; restart in {down_s:g} s")
        victim_url = self.nodes.nodes[i].ws_url
        checker = self.cluster.checker
        stranded = checker.clients_on(victim_url) if checker is not None else []
        t0 = time.monotonic()
        await self.nodes.kill(i)
        if stranded:
            r.measures["clients_on_victim"] = len(stranded)
            r.measures["served_again_s"] = await _served_again(stranded, victim_url, 30)
        await self.nodes.wait_converged(self._others(i), 30, gone=i)
        r.measures["slots_moved_s"] = time.monotonic() - t0
        await asyncio.sleep(max(0.0, down_s - (time.monotonic() - t0)))  # the fault's duration
        r.measures["restart_ready_s"] = await self.nodes.start(i)
        t1 = time.monotonic()
        await self.nodes.wait_converged(deadline_s=30)
        r.measures["rejoined_s"] = time.monotonic() - t1
        return r

    async def kill_leader(self, times: int, gap_s: float = 2.0) -> FaultResult:
        """Kill the raft leader ``times`` times (restarting it each time); measures the
        longest time until the survivors agreed on a new leader."""
        r = FaultResult("kill the leader", "", 0.0)
        elections: list[float] = []
        started = time.monotonic()
        for _ in range(times):
            leader = await self._wait_leader(range(self.nodes.count), 15)
            self.out(f"kill -9 leader {self.nodes.nodes[leader].node_id}")
            t0 = time.monotonic()
            await self.nodes.kill(leader)
            new = await self._wait_leader(self._others(leader), 15, not_=leader)
            elections.append(time.monotonic() - t0)
            self.out(f"new leader {self.nodes.nodes[new].node_id} after {elections[-1]:.1f} s")
            await self.nodes.start(leader)
            await self.nodes.wait_converged(deadline_s=30)
            await asyncio.sleep(gap_s)  # the pause between two kills
        r.duration_s = time.monotonic() - started
        r.measures["election_max_s"] = max(elections)
        r.measures["election_mean_s"] = sum(elections) / len(elections)
        return r

    async def _wait_leader(self, among: Any, deadline_s: float, not_: int | None = None) -> int:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            leader = await self.nodes.leader(list(among))
            if leader is not None and leader != not_:
                return leader
            await asyncio.sleep(0.1)  # polled: raft announces nothing outside
        raise TimeoutError(f"no leader among {list(among)} within {deadline_s} s")

    async def pause(self, i: int, paused_s: float) -> FaultResult:
        """SIGSTOP node ``i`` for ``paused_s``, then SIGCONT; measures its rejoin."""
        r = FaultResult("SIGSTOP/SIGCONT", self.nodes.nodes[i].node_id, paused_s)
        self.out(f"SIGSTOP {r.node} for {paused_s:g} s")
        self.nodes.pause(i)
        try:
            await asyncio.sleep(paused_s)  # the fault's duration
        finally:
            self.nodes.resume(i)
        t1 = time.monotonic()
        await self.nodes.wait_converged(deadline_s=30)
        r.measures["rejoined_s"] = time.monotonic() - t1
        return r

    async def partition(self, i: int, cut_s: float) -> FaultResult:
        """Cut node ``i`` from the others and the database for ``cut_s`` (its clients still
        reach it), then heal; measures the majority's takeover and the rejoin."""
        netns = self.cluster.netns
        if netns is None:
            raise RuntimeError("partitions need network namespaces (Cluster(use_netns=True))")
        r = FaultResult("partition", self.nodes.nodes[i].node_id, cut_s)
        self.out(f"partition {r.node} for {cut_s:g} s")
        t0 = time.monotonic()
        netns.cut(i)
        try:
            r.measures["majority_took_over_s"] = await self.nodes.wait_converged(
                self._others(i), 30, gone=i)
            await asyncio.sleep(max(0.0, cut_s - (time.monotonic() - t0)))  # the fault
        finally:
            netns.heal(i)
        t1 = time.monotonic()
        await self.nodes.wait_converged(deadline_s=30)
        r.measures["rejoined_s"] = time.monotonic() - t1
        return r

    async def db_outage(self, down_s: float, blackhole: bool = False) -> FaultResult:
        """Make PostgreSQL unreachable from every node for ``down_s`` (reset, or blackhole)."""
        r = FaultResult("database unreachable", "", down_s)
        self.out(f"database {'blackholed' if blackhole else 'cut'} for {down_s:g} s")
        self.proxy.cut(blackhole=blackhole)
        try:
            await asyncio.sleep(down_s)  # the fault's duration
        finally:
            self.proxy.heal()
        return r

    async def rolling_restart(self) -> FaultResult:
        """Stop (SIGTERM, graceful drain) and start every node in turn."""
        r = FaultResult("rolling restart", "all", 0.0)
        started = time.monotonic()
        for node in self.nodes.nodes:
            self.out(f"restart {node.node_id}")
            code = await self.nodes.stop(node.index)
            if code != 0:
                r.notes.append(f"{node.node_id} exited with {code}")
            await self.nodes.wait_converged(self._others(node.index), 30, gone=node.index)
            await self.nodes.start(node.index)
            await self.nodes.wait_converged(deadline_s=30)
        r.duration_s = time.monotonic() - started
        return r


async def run_chaos(cluster: Cluster, duration_s: float, seed: int,
                    out: Callable[[str], None] = print) -> list[FaultResult]:
    """Random faults for ``duration_s`` under the running load; everything healed after."""
    rng = random.Random(seed)
    faults = Faults(cluster, out)
    n = cluster.count
    kinds = ["kill", "leader", "pause", "db", "rolling"]
    if cluster.netns is not None:
        kinds.append("partition")
    results: list[FaultResult] = []
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        left = end - time.monotonic()
        kind = rng.choice(kinds)
        victim = rng.randrange(n)
        span = min(left, rng.uniform(5, 20))
        if kind == "kill":
            results.append(await faults.kill_restart(victim, span))
        elif kind == "leader":
            results.append(await faults.kill_leader(rng.randint(1, 2)))
        elif kind == "pause":
            results.append(await faults.pause(victim, span))
        elif kind == "partition":
            results.append(await faults.partition(victim, max(span, 8)))
        elif kind == "db":
            results.append(await faults.db_outage(span, blackhole=rng.random() < 0.3))
        else:
            results.append(await faults.rolling_restart())
        await asyncio.sleep(min(max(0.0, end - time.monotonic()), rng.uniform(1, 4)))
    return results


def write_json(path: Path, counts: Counts, faults: list[FaultResult],
               meta: dict[str, Any]) -> None:
    data = {"meta": meta, "counts": counts.as_dict(), "ok": counts.ok,
            "faults": [asdict(f) for f in faults]}
    path.write_text(json.dumps(data, indent=2))


# -- parley chaos ----------------------------------------------------------------------------


def _counts_table(counts: Counts, faults: list[FaultResult]) -> Any:
    from rich.table import Table

    table = Table(title="checker")
    table.add_column("count")
    table.add_column("value", justify="right")
    bad = {"lost", "duplicated", "reordered", "unexpected", "acked_different_seqs",
           "false_acks"}
    for key, value in counts.as_dict().items():
        if key == "errors":
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        style = "bold red" if key in bad and value else ""
        table.add_row(key, str(value), style=style)
    table.add_row("faults", ", ".join(f"{f.name} {f.node}".strip() for f in faults) or "-")
    return table


def chaos_command() -> Any:
    """The ``parley chaos`` click command (built lazily: click is a CLI concern)."""
    import click

    @click.command("chaos")
    @click.option("--duration", type=click.FloatRange(1), required=True,
                  help="Seconds of random faults under load.")
    @click.option("--nodes", type=click.IntRange(3, 7), default=3, show_default=True)
    @click.option("--rate", type=click.FloatRange(1), default=500.0, show_default=True,
                  help="Messages per second, all senders together.")
    @click.option("--pairs", type=click.IntRange(1), default=20, show_default=True,
                  help="Sender/receiver pairs.")
    @click.option("--seed", type=int, default=None, help="Random seed [default: random].")
    @click.option("--json", "json_file", type=click.Path(path_type=Path, dir_okay=False),
                  help="Also write the counts and faults as JSON.")
    @click.option("--netns/--no-netns", default=None,
                  help="Nodes in network namespaces, partitions included [default: if root].")
    @click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
                  help="Node data and logs [default: a temporary directory].")
    def chaos(duration: float, nodes: int, rate: float, pairs: int, seed: int | None,
              json_file: Path | None, netns: bool | None, workdir: Path | None) -> None:
        """Run a local cluster under a checked load with random faults (kill -9, leader
        kills, SIGSTOP, partitions, database outages, rolling restarts), heal, drain,
        and print the checker's counts.  Exits 1 if anything was lost, duplicated,
        reordered or falsely acknowledged.  Needs PARLEY_DATABASE_URL (PostgreSQL);
        uses a fresh schema in it, dropped afterwards."""
        import tempfile

        from rich.console import Console

        url = os.environ.get("PARLEY_DATABASE_URL", "")
        if not url.startswith("postgres"):
            click.echo("parley: error: parley chaos needs PostgreSQL: set PARLEY_DATABASE_URL "
                       "(postgresql://USER:PASSWORD@HOST/DB)", err=True)
            sys.exit(2)
        use_netns = unavailable_reason() is None if netns is None else netns
        if use_netns and (reason := unavailable_reason()) is not None:
            click.echo(f"parley: error: --netns: {reason}", err=True)
            sys.exit(2)
        run_seed = seed if seed is not None else secrets.randbelow(2**31)
        console = Console()
        base = workdir or Path(tempfile.mkdtemp(prefix="parley-chaos-"))
        console.print(f"chaos: {nodes} nodes, {rate:g} msg/s, {duration:g} s, seed {run_seed}, "
                      f"{'namespaces' if use_netns else 'loopback (no partitions)'}, "
                      f"logs in {base}")

        async def go() -> tuple[Counts, list[FaultResult]]:
            schema = await _schema(url, "create")
            try:
                async with Cluster(url, base, nodes=nodes, schema=schema, use_netns=use_netns,
                                   pairs=pairs, rate=rate) as cluster:
                    assert cluster.checker is not None
                    cluster.checker.start_load()
                    results = await run_chaos(cluster, duration, run_seed,
                                              lambda s: console.print(f"  {s}"))
                    return await cluster.finish(), results
            finally:
                await _schema(url, "drop", schema)

        counts, results = asyncio.run(go())
        console.print(_counts_table(counts, results))
        if json_file is not None:
            write_json(json_file, counts, results,
                       {"nodes": nodes, "rate": rate, "duration_s": duration, "seed": run_seed,
                        "netns": use_netns})
        console.print("[green]OK[/]" if counts.ok else "[bold red]FAILED[/]")
        sys.exit(0 if counts.ok else 1)

    return chaos


async def _schema(url: str, action: str, name: str | None = None) -> str:
    """Create (or drop) the run's own PostgreSQL schema."""
    import asyncpg

    name = name or f"chaos_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        verb = "CREATE SCHEMA" if action == "create" else "DROP SCHEMA IF EXISTS"
        await conn.execute(f'{verb} "{name}"' + (" CASCADE" if action == "drop" else ""))
    finally:
        await conn.close()
    return name


async def _served_again(clients: Sequence[ParleyClient], gone_url: str, deadline_s: float
                        ) -> float:
    """Seconds until every client is connected again to another node than ``gone_url``."""
    prefix = gone_url.split("?")[0]
    start = time.monotonic()
    end = start + deadline_s
    while time.monotonic() < end:
        if all(c.connected and c._life._url.split("?")[0] != prefix for c in clients):
            return time.monotonic() - start
        await asyncio.sleep(0.05)  # polled: the clients announce nothing outside
    raise TimeoutError(f"clients of {gone_url} not served again within {deadline_s} s")

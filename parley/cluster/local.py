"""``parley serve --nodes N``: a cluster of N node processes on one machine.

One Python process uses one core and at most ~19,000 sockets (the open-files
limit), so a machine's cores and a large connection count need several node
processes.  This supervisor starts them as ordinary cluster members sharing one
PostgreSQL database, each with its own ports, raft and link addresses and data
directory, and stops them together:

==========  ============================================
node ``i``  (0-based) with base port ``P`` and step 10
==========  ============================================
HTTP        ``P + 10 i``
WebSocket   ``P + 10 i + 1``
raft        ``P + 10 i + 2`` (internal)
links       ``P + 10 i + 3`` (internal)
data        ``<data_dir>/node-<i+1>``
==========  ============================================

The first node (of one or two), the first three (of three or four) or the
first five (from five nodes on) are raft voters; the others join as
non-voting members.  The cluster secret is the configured one, or one
generated once and kept in ``<data_dir>/cluster-secret`` (mode 0600).

The nodes share the database, so unless ``commit_partitions`` is configured
they share its concurrent commits too: each node gets ``4 // N`` (at least 1)
instead of 4.  Measured with 6 nodes on one 2-core machine, chat at 5,000
msg/s across them: 4 commit loops per node (24 committers) gave send->deliver
p50 206 ms / p99 487 ms, 1 per node 46 / 130 ms (docs/performance.md).

A node that exits on its own is started again after a backoff (1 s doubling to
30 s), unless it exited with the configuration error code (2): a setting that
the node refuses will not change by restarting it, so the whole cluster stops
and ``parley serve`` exits with that code.  Ctrl-C, SIGTERM or SIGHUP stops
every node gracefully and waits for them.

Each node runs in a session of its own (POSIX), as under a service manager:
the supervisor alone owns the nodes' lifecycle.  A terminal's Ctrl-C and hangup
reach the supervisor, which stops the nodes gracefully with SIGTERM (before, a
hangup killed every node outright), and a node stops on its own when the
supervisor is gone (killed with SIGKILL, say; before, the nodes ran on and held
their ports): see ``supervised`` and ``watch_supervisor``.  Under Linux's
autogroup scheduling a session is also one CPU share; measured with 6 nodes at
5,000 msg/s, a share per node lowered the nodes' loop lag but not clearly the
p99 (docs/performance.md, 29 November 18:00).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from parley.config import Settings
from parley.errors import EXIT_CONFIG, ConfigError

__all__ = [
    "SUPERVISOR_ENV", "LocalCluster", "NodePlan", "plan_nodes", "supervised", "watch_supervisor",
]

PORT_STEP = 10
SUPERVISOR_ENV = "PARLEY_SUPERVISOR_PID"
"""Set by the supervisor in each node's environment: its own pid (see ``supervised``)."""
# Concurrent commits of all local nodes together, by default: one node's default.
COMMITS_PER_CLUSTER: int = Settings.model_fields["commit_partitions"].default


@dataclass(frozen=True, slots=True)
class NodePlan:
    node_id: str
    port: int
    ws_port: int
    raft_addr: str
    link_addr: str
    data_dir: Path
    env: dict[str, str] = field(repr=False)


def voter_count(nodes: int) -> int:
    """Raft voters among ``nodes``: an odd count (an even one tolerates no more
    failures than one fewer), the rest join as non-voting members."""
    return 5 if nodes >= 5 else 3 if nodes >= 3 else 1


def cluster_secret(settings: Settings) -> str:
    """The configured secret, or the local cluster's generated one (created once)."""
    if settings.cluster_secret is not None:
        return settings.cluster_secret.get_secret_value()
    path = settings.data_dir / "cluster-secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def plan_nodes(settings: Settings, nodes: int) -> list[NodePlan]:
    """Ports, addresses and environment of each node of a local cluster."""
    if nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    if not settings.effective_database_url.startswith("postgres"):
        raise ConfigError(
            "--nodes above 1 needs PostgreSQL (set database_url): SQLite admits one "
            "writing process"
        )
    if settings.port == 0:
        raise ConfigError("--nodes needs a fixed --port (the base of every node's ports)")
    if settings.port + PORT_STEP * nodes > 65535:
        raise ConfigError(f"ports from {settings.port} do not fit {nodes} nodes")
    host = settings.host
    secret = cluster_secret(settings)
    raft = [f"{host}:{settings.port + PORT_STEP * i + 2}" for i in range(nodes)]
    peers = ",".join(raft[: voter_count(nodes)])
    plans = []
    for i in range(nodes):
        port = settings.port + PORT_STEP * i
        node_id = f"node-{i + 1}"
        data_dir = settings.data_dir / node_id
        env = {
            "PARLEY_NODE_ID": node_id,
            "PARLEY_HOST": host,
            "PARLEY_PORT": str(port),
            "PARLEY_WS_PORT": str(port + 1),
            "PARLEY_RAFT_ADDR": raft[i],
            "PARLEY_LINK_ADDR": f"{host}:{port + 3}",
            "PARLEY_CLUSTER_PEERS": peers,
            "PARLEY_CLUSTER_SECRET": secret,
            "PARLEY_DATA_DIR": str(data_dir),
            "PARLEY_DATABASE_URL": settings.effective_database_url,
        }
        if settings.database_schema:
            env["PARLEY_DATABASE_SCHEMA"] = settings.database_schema
        if "commit_partitions" not in settings.model_fields_set:
            env["PARLEY_COMMIT_PARTITIONS"] = str(max(1, COMMITS_PER_CLUSTER // nodes))
        plans.append(NodePlan(node_id, port, port + 1, raft[i], env["PARLEY_LINK_ADDR"],
                              data_dir, env))
    return plans


class LocalCluster:
    """Runs the planned node processes until stopped; restarts one that dies."""

    def __init__(self, plans: list[NodePlan], config_file: Path | None = None,
                 out: Callable[[str], None] = print, restart: bool = True) -> None:
        self.plans = plans
        self.config_file = config_file
        self.out = out
        self.restart = restart
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "parley", "serve"]
        if self.config_file is not None:
            argv += ["--config", str(self.config_file)]
        return argv

    async def _spawn(self, plan: NodePlan) -> asyncio.subprocess.Process:
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *self._argv(), env={**os.environ, **plan.env, SUPERVISOR_ENV: str(os.getpid())},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=sys.platform != "win32",
        )
        self.procs[plan.node_id] = proc
        return proc

    async def _pump(self, plan: NodePlan, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.out(f"[{plan.node_id}] {line.decode(errors='replace').rstrip()}")

    restart_delay_s = 1.0
    """The pause before restarting a node that exited; doubled (up to 30 s) while it
    keeps exiting soon after it started."""
    healthy_after_s = 60.0
    """A node that ran this long before it exited was not crash-looping: its restart
    waits ``restart_delay_s`` again (without this, every restart of a long-lived
    cluster waited twice as long as the one before, up to 30 s)."""

    async def _keep(self, plan: NodePlan) -> int:
        loop = asyncio.get_running_loop()
        delay = self.restart_delay_s
        while True:
            started = loop.time()
            proc = await self._spawn(plan)
            await self._pump(plan, proc)
            code = await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            if loop.time() - started >= self.healthy_after_s:
                delay = self.restart_delay_s
            if self._stopping.is_set() or not self.restart:
                return code
            if code == EXIT_CONFIG:
                self.out(f"[{plan.node_id}] refused its configuration; stopping the cluster")
                self.stop()
                return code
            self.out(f"[{plan.node_id}] exited with {code}; starting it again in {delay:g} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return code
            delay = min(delay * 2, 30.0)

    def stop(self) -> None:
        """Ask every node to shut down gracefully (SIGTERM)."""
        self._stopping.set()
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        """Run until every node has exited after ``stop()``; 0 if all exited cleanly."""
        loop = asyncio.get_running_loop()
        if sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self.stop)
        voters = voter_count(len(self.plans))
        for i, p in enumerate(self.plans):
            role = "voter" if i < voters else "non-voter"
            self.out(f"[{p.node_id}] http :{p.port}  ws :{p.ws_port}  raft {p.raft_addr}  "
                     f"links {p.link_addr}  ({role})")
        codes = await asyncio.gather(*(self._keep(p) for p in self.plans))
        if EXIT_CONFIG in codes:
            return EXIT_CONFIG
        return 0 if all(c == 0 for c in codes) else 1


def supervised() -> bool:
    """True in a node that this module's supervisor started: its parent is the pid
    in ``SUPERVISOR_ENV`` (a variable inherited by anything else does not count),
    on POSIX, where the supervisor gives it the stdin ``watch_supervisor`` reads."""
    pid = os.environ.get(SUPERVISOR_ENV, "")
    return sys.platform != "win32" and pid.isdigit() and int(pid) == os.getppid()


async def watch_supervisor(on_gone: Callable[[], None]) -> None:
    """In a node of a local cluster (POSIX): call ``on_gone`` when the supervisor is
    gone.  The supervisor holds the write end of the node's stdin and never writes
    to it; the kernel closes it when the supervisor exits, however it exits, and
    the node reads end-of-file."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await reader.read()
    finally:
        transport.close()
    on_gone()

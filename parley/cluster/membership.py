"""Cluster membership and the slot map, replicated with raft (PySyncObj).

What is replicated (``Replica``, one immutable record replaced on every change):
the node list (``NodeInfo``: id, addresses, state, voter), the ``SlotMap``
(with its ``epoch``), and the fencing counter with the node and raft term
holding it.  Every change is a raft command, so a side without a quorum of
voters never changes the map: its nodes keep serving from their last map.

Node states::

    joining --(leader assigns slots)--> active --drain--> draining
       ^                                  |                  |
       +---------- join (after dead) -----+--(unreachable)--> dead
    leave: leaving --(leader moves its slots)--> removed from the list

Who does what:

* every node asks to ``join`` (with its addresses) and sends a replicated
  ``heartbeat`` every ``heartbeat_s``;
* the raft leader, once it holds the fencing token of its term, runs the
  controller (``plan``): it activates joining nodes, marks nodes dead whose
  heartbeats it has not applied for ``dead_after_s``, removes leaving nodes,
  and rebalances the slots (``slots.rebalance``, fewest moves) -- all in one
  compare-and-set command (``apply_plan``) that fails if anything changed
  in between;
* any node may ask to ``drain``, ``leave`` or ``set_active`` a node.

Liveness uses replicated heartbeats rather than PySyncObj's connection table:
non-voting members are anonymous in that table, and a heartbeat that commits
proves what matters -- the node reaches the leader and the leader a quorum.
The time a heartbeat is applied is a local observation of each replica, never
part of the replicated state (no wall clock enters the state machine).

Reads (``snapshot``, ``node_for_user``) never touch raft: they return the last
local view, so the message path keeps working while there is no leader.

The raft channel: PySyncObj pickles its messages, so an open raft port would be
remote code execution; Parley refuses to start without a cluster secret (the
PySyncObj ``password``: Fernet, i.e. AES-CBC + HMAC-SHA256, checked before
anything is decompressed or unpickled), binds to the configured internal
address only, and hardens PySyncObj's TCP connections (``_BoundedConnection``):
frame lengths are checked before buffering (4 KiB before the peer has proven
the secret, 1 MiB after), decompression is capped, idle unauthenticated
connections are closed, and at most 32 may wait at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast, get_args

from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj import pickle as raft_pickle
from pysyncobj.config import FAIL_REASON
from pysyncobj.syncobj import SyncObjException
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from parley.cluster.slots import SlotMap, rebalance, slot_of_user
from parley.errors import ConfigError, StartupError, Unavailable

__all__ = [
    "MIN_SECRET_LENGTH",
    "ClusterConfig",
    "ClusterMembership",
    "ClusterView",
    "NodeInfo",
    "NodeState",
    "Plan",
    "RaftTimings",
    "Replica",
    "plan",
]

log = logging.getLogger("parley.cluster")

NodeState = Literal["joining", "active", "draining", "leaving", "dead"]
MIN_SECRET_LENGTH = 16
VOTER_COUNTS = (1, 3, 5, 7)

_F = TypeVar("_F", bound=Callable[..., Any])
# PySyncObj's decorator is untyped; it looks its caller's frame up, so it is
# aliased (not wrapped) to keep the frame depth it expects.
_replicated = cast("Callable[[_F], _F]", replicated)


# -- replicated records ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member as the cluster knows it.  ``raft_addr`` is where a voter's raft
    port listens (non-voting members open none); ``link_addr`` is the inter-node
    link, ``http_url``/``ws_url`` what clients are redirected to."""

    id: str
    http_url: str
    ws_url: str
    link_addr: str
    raft_addr: str
    state: NodeState
    voter: bool


@dataclass(frozen=True, slots=True)
class Replica:
    """The whole replicated state; replaced, never mutated, on every change.

    ``revision`` counts applied changes (compare-and-set guard); ``slots.epoch``
    counts map changes; ``fence`` is bumped once per raft term whose leader
    claims it (``fence_holder``, ``fence_term``)."""

    revision: int = 0
    nodes: tuple[NodeInfo, ...] = ()
    slots: SlotMap = field(default_factory=SlotMap.empty)
    fence: int = 0
    fence_holder: str = ""
    fence_term: int = 0

    def node(self, node_id: str) -> NodeInfo | None:
        for info in self.nodes:
            if info.id == node_id:
                return info
        return None

    def with_nodes(self, nodes: Mapping[str, NodeInfo], **changes: Any) -> Replica:
        ordered = tuple(nodes[k] for k in sorted(nodes))
        return dataclasses.replace(self, revision=self.revision + 1, nodes=ordered, **changes)


# -- the controller's decision (pure) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What the leader commits in one ``apply_plan`` command."""

    expected_revision: int
    slots: SlotMap
    states: tuple[tuple[str, NodeState], ...]
    removals: tuple[str, ...]


def plan(
    replica: Replica,
    *,
    now: float,
    last_seen: Mapping[str, float],
    leader_since: float,
    dead_after_s: float,
    self_id: str,
) -> Plan | None:
    """The leader's next step, or None when the state is where it should be.

    A node is alive if the leader itself, or a heartbeat or join applied within
    ``dead_after_s``; nodes already holding a place (active, draining, leaving)
    get ``dead_after_s`` of grace from ``leader_since``, a joining node none.
    Joining nodes that are alive become active; nodes that are not become dead;
    leaving nodes are removed; slots are rebalanced over the active nodes
    (the map is kept as it is while no node is active).
    """
    states: dict[str, NodeState] = {}
    removals: list[str] = []
    for info in replica.nodes:
        seen = last_seen.get(info.id, float("-inf"))
        if info.state != "joining":
            seen = max(seen, leader_since)
        alive = info.id == self_id or now - seen < dead_after_s
        if info.state == "leaving":
            removals.append(info.id)
        elif info.state == "dead":
            continue
        elif not alive:
            states[info.id] = "dead"
        elif info.state == "joining":
            states[info.id] = "active"
    active = [
        info.id
        for info in replica.nodes
        if info.id not in removals and states.get(info.id, info.state) == "active"
    ]
    slots = rebalance(replica.slots, active) if active else replica.slots
    if not states and not removals and slots is replica.slots:
        return None
    return Plan(replica.revision, slots, tuple(sorted(states.items())), tuple(removals))


# -- the replicated state machine ---------------------------------------------------


class _State(SyncObjConsumer):  # type: ignore[misc]
    """The raft state machine.  Methods marked replicated run, in log order, on
    every member's raft thread; they must be deterministic."""

    def __init__(self, on_applied: Callable[[str, str], None]) -> None:
        # Local (not replicated) attributes come before the base __init__,
        # which records them as such; everything after it is replicated.
        self._on_applied = on_applied
        super().__init__()
        self.replica = Replica()

    def _deserialize(self, data: Any) -> None:
        super()._deserialize(data)
        self._on_applied("restore", "")

    def _set(self, replica: Replica, event: str, node_id: str) -> bool:
        self.replica = replica
        self._on_applied(event, node_id)
        return True

    @_replicated
    def join(
        self, node_id: str, http_url: str, ws_url: str, link_addr: str, raft_addr: str,
        voter: bool,
    ) -> bool:
        r = self.replica
        old = r.node(node_id)
        state: NodeState = "joining" if old is None or old.state == "dead" else old.state
        info = NodeInfo(node_id, http_url, ws_url, link_addr, raft_addr, state, voter)
        if info == old:
            self._on_applied("join", node_id)
            return True
        nodes = {n.id: n for n in r.nodes}
        nodes[node_id] = info
        return self._set(r.with_nodes(nodes), "join", node_id)

    def _set_state(self, node_id: str, allowed: tuple[NodeState, ...], new: NodeState,
                   event: str = "state") -> bool:
        r = self.replica
        old = r.node(node_id)
        if old is None or old.state not in allowed:
            return False
        nodes = {n.id: n for n in r.nodes}
        nodes[node_id] = dataclasses.replace(old, state=new)
        return self._set(r.with_nodes(nodes), event, node_id)

    @_replicated
    def drain(self, node_id: str) -> bool:
        return self._set_state(node_id, ("joining", "active"), "draining")

    @_replicated
    def leave(self, node_id: str) -> bool:
        return self._set_state(node_id, ("joining", "active", "draining", "dead"), "leaving")

    @_replicated
    def set_active(self, node_id: str) -> bool:
        # Counts as seeing the node, as a join does: the joining state gets no
        # grace, and a node that led the cluster before its restart sent no
        # heartbeat for as long as it led (the next leader marked it dead at once).
        return self._set_state(node_id, ("draining", "leaving", "dead"), "joining", "rejoin")

    @_replicated
    def heartbeat(self, node_id: str) -> bool:
        self._on_applied("heartbeat", node_id)
        return True

    @_replicated
    def claim_fence(self, node_id: str, term: int) -> bool:
        r = self.replica
        if term <= r.fence_term:
            return False
        return self._set(
            dataclasses.replace(
                r, revision=r.revision + 1, fence=r.fence + 1, fence_holder=node_id,
                fence_term=term,
            ),
            "fence", node_id,
        )

    @_replicated
    def apply_plan(
        self, expected_revision: int, epoch: int, owners: tuple[str, ...], table: bytes,
        states: tuple[tuple[str, str], ...], removals: tuple[str, ...],
    ) -> bool:
        r = self.replica
        if expected_revision != r.revision:
            return False
        try:
            slots = SlotMap(epoch, tuple(owners), bytes(table))
        except (TypeError, ValueError):
            log.error("cluster: ignored a malformed slot map in the raft log")
            return False
        nodes = {n.id: n for n in r.nodes}
        for node_id, state in states:
            if node_id in nodes and state in get_args(NodeState):
                nodes[node_id] = dataclasses.replace(nodes[node_id], state=cast(NodeState, state))
        for node_id in removals:
            nodes.pop(node_id, None)
        return self._set(r.with_nodes(nodes, slots=slots), "plan", "")


# -- the hardened raft transport ----------------------------------------------------

_PREAUTH_MAX_FRAME = 4096
"""Largest frame from a peer that has not yet proven the secret (its first frame,
a 32-byte key, is ~170 bytes encrypted)."""
_MAX_FRAME = 1 << 20
"""Largest frame from an authenticated peer (PySyncObj batches are ~64 KiB)."""
_MAX_MESSAGE = 16 << 20
"""Largest decompressed message (a zlib bomb from a peer stops here)."""
_MAX_UNKNOWN = 32
"""Incoming connections allowed to wait for their handshake at once."""


class _BoundedConnection(TcpConnection):  # type: ignore[misc]
    """PySyncObj's TcpConnection with bounded buffering and decompression.

    The original buffers whatever length a frame header announces (up to
    2 GiB, before authenticating it) and decompresses without a limit.  Here
    the header is checked before more is read, and the Fernet token is
    verified before anything is decompressed (capped) or unpickled.  Only the
    two private methods below differ; the wire format is unchanged.
    """

    def _buffer(self) -> bytes:
        return cast(bytes, self.__dict__["_TcpConnection__readBuffer"])

    def _frame_limit(self) -> int:
        return _MAX_FRAME if self.sendRandKey is not None else _PREAUTH_MAX_FRAME

    def _header(self) -> int | None:
        """The announced length of the buffered frame; disconnects on a bad one."""
        buf: bytes = self._buffer()
        if len(buf) < 4:
            return None
        (length,) = struct.unpack("i", buf[:4])
        if length < 0 or length > self._frame_limit():
            log.warning("cluster: refused a raft frame of %d bytes", length)
            self.disconnect()
            return None
        return int(length)

    def _TcpConnection__processRead(self) -> bool:
        length = self._header()
        if self.state == 0:  # disconnected by _header
            return False
        if length is not None and len(self._buffer()) >= 4 + length:
            return False  # a whole frame is buffered: parse it before reading on
        return bool(TcpConnection._TcpConnection__processRead(self))

    def _TcpConnection__processParseMessage(self) -> Any:
        length = self._header()
        buf = self._buffer()
        if length is None or len(buf) - 4 < length:
            return None
        data = buf[4:4 + length]
        try:
            if self.encryptor is None:
                raise ValueError("unencrypted raft traffic")
            stamp = self.encryptor.extract_timestamp(data)
            if stamp < self.__dict__["recvLastTimestamp"]:
                raise ValueError("replayed frame")
            self.__dict__["recvLastTimestamp"] = stamp
            plain = self.encryptor.decrypt(data)
            inflater = zlib.decompressobj()
            raw = inflater.decompress(plain, _MAX_MESSAGE)
            if inflater.unconsumed_tail or not inflater.eof:
                raise ValueError("oversized or truncated message")
            message = raft_pickle.loads(raw)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("frame from another connection")
        except Exception as exc:  # noqa: BLE001 -- every bad frame ends the connection
            log.warning("cluster: dropped a raft connection: %s: %s", type(exc).__name__, exc)
            self.disconnect()
            return None
        self.__dict__["_TcpConnection__readBuffer"] = buf[4 + length:]
        return message


class _HardenedTransport(TCPTransport):  # type: ignore[misc]
    """TCPTransport using ``_BoundedConnection``, with a handshake deadline and a
    cap on connections that have not identified themselves yet."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._accepted_at: dict[Any, float] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        conn.__class__ = _BoundedConnection
        super()._onNewIncomingConnection(conn)
        self._accepted_at[conn] = time.monotonic()
        waiting = [c for c in self._accepted_at if c in self._unknownConnections]
        if len(waiting) > _MAX_UNKNOWN:
            oldest = min(waiting, key=self._accepted_at.__getitem__)
            oldest.disconnect()

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and type(conn) is TcpConnection:
            conn.__class__ = _BoundedConnection

    def _onTick(self) -> None:
        super()._onTick()
        if not self._accepted_at:
            return
        deadline = time.monotonic() - self._syncObj.conf.connectionTimeout
        for conn, accepted in list(self._accepted_at.items()):
            if conn not in self._unknownConnections:
                del self._accepted_at[conn]
            elif accepted < deadline:
                del self._accepted_at[conn]
                conn.disconnect()


# -- configuration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftTimings:
    """PySyncObj timeouts.  The defaults elect a new leader within about 1-3 s of
    a crash; a leader cut off from its quorum steps down after
    ``leader_fallback_s`` (PySyncObj's default, 30 s, would be far too long)."""

    append_entries_s: float = 0.1
    election_min_s: float = 1.0
    election_max_s: float = 2.0
    connection_timeout_s: float = 3.5
    leader_fallback_s: float = 3.0
    reconnect_s: float = 1.0


_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}  # noqa: S104 -- the point is to refuse them


def _check_addr(addr: str, what: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be host:port, not {addr!r}")
    if host in _WILDCARD_HOSTS:
        raise ConfigError(
            f"{what} {addr!r} binds every interface; give the internal address of this host"
        )


def _probe_bind(addr: str) -> None:
    """Fail fast on a taken or foreign raft address (PySyncObj would retry, leaking
    a socket per attempt); PySyncObj binds for real right after."""
    host, _, port = addr.rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """One node's view of the cluster it belongs to.

    ``voters`` lists the raft addresses of the voting members (1, 3, 5 or 7,
    the same list on every node); a node whose ``raft_addr`` is among them
    votes, any other joins as a non-voting member (it opens no raft port).
    ``data_dir`` keeps a voter's raft journal (None: memory only).
    """

    node_id: str
    raft_addr: str
    voters: tuple[str, ...]
    secret: str = field(repr=False)
    http_url: str = ""
    ws_url: str = ""
    link_addr: str = ""
    data_dir: Path | None = None
    dead_after_s: float = 10.0
    heartbeat_s: float | None = None
    tick_s: float = 0.1
    timings: RaftTimings = RaftTimings()

    @property
    def is_voter(self) -> bool:
        return self.raft_addr in self.voters

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.dead_after_s / 5

    def validate(self) -> None:
        """Raise ConfigError naming the first problem."""
        if not self.secret:
            raise ConfigError(
                "a cluster secret is required: every node of a cluster needs the same secret "
                f"(at least {MIN_SECRET_LENGTH} characters) to authenticate and encrypt raft "
                "traffic"
            )
        if len(self.secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"the cluster secret is too short ({len(self.secret)} characters); "
                f"use at least {MIN_SECRET_LENGTH}, e.g. from `openssl rand -base64 32`"
            )
        if not _NODE_ID.match(self.node_id):
            raise ConfigError(f"cluster node id {self.node_id!r} must match {_NODE_ID.pattern}")
        _check_addr(self.raft_addr, "the raft address")
        if len(set(self.voters)) != len(self.voters) or len(self.voters) not in VOTER_COUNTS:
            raise ConfigError(
                f"a cluster has 1, 3, 5 or 7 distinct voters, not {len(self.voters)}: an even "
                "count tolerates no more failures than one fewer"
            )
        for voter in self.voters:
            _check_addr(voter, "a voter address")
        hb = self.heartbeat_interval_s
        if not 0 < hb <= self.dead_after_s / 2:
            raise ConfigError("the cluster heartbeat must be at most half of dead_after_s")
        t = self.timings
        if not (
            0 < t.append_entries_s * 3 < t.election_min_s < t.election_max_s
            <= t.connection_timeout_s
        ) or t.leader_fallback_s <= t.append_entries_s:
            raise ConfigError("raft timings must satisfy 3*append < min < max <= connection")


# -- the view and the facade -----------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class ClusterView:
    """An immutable snapshot of the cluster as this node sees it.

    ``is_leader`` is true only on the raft leader once it holds the fencing
    token of its term; several nodes may briefly believe they lead, so work
    done as leader must carry ``fencing_token`` to whatever it writes.
    """

    self_id: str
    replica: Replica
    nodes: Mapping[str, NodeInfo]
    leader_id: str | None
    is_leader: bool
    raft_term: int
    has_quorum: bool
    voters: tuple[str, ...]

    @property
    def slot_map(self) -> SlotMap:
        return self.replica.slots

    @property
    def epoch(self) -> int:
        """The slot map's epoch (bumped on every map change)."""
        return self.replica.slots.epoch

    @property
    def revision(self) -> int:
        """Count of replicated changes applied (node states, map, fence)."""
        return self.replica.revision

    @property
    def fencing_token(self) -> int:
        return self.replica.fence

    def node_for_user(self, user_id: int) -> NodeInfo | None:
        """The node holding ``user_id``'s slot (None before slots are assigned)."""
        owner = self.replica.slots.owner(slot_of_user(user_id))
        return None if owner is None else self.nodes.get(owner)

    def slots_per_node(self) -> dict[str, int]:
        return self.replica.slots.counts()

    def _key(self) -> tuple[object, ...]:
        return (self.revision, self.leader_id, self.is_leader, self.has_quorum, self.voters)


ChangeCallback = Callable[[ClusterView], None]

_RETRY_S = 0.25
"""Pause before a failed controller command is sent again."""

_FAILURES = {
    getattr(FAIL_REASON, name): name.lower() for name in dir(FAIL_REASON) if name.isupper()
}


class ClusterMembership:
    """This node's membership in the cluster: a thread-safe, asyncio-friendly facade.

    ``start()`` (blocking, well under a second) binds the raft port and starts
    two threads: PySyncObj's and a controller thread.  Reads are lock-free and
    never wait for raft.  ``on_change`` callbacks run on the given event loop.
    Changes (``drain``, ``leave``, ``set_active``) return once committed or
    raise ``Unavailable`` (no leader, no quorum, timeout): a side without a
    quorum cannot change anything.
    """

    def __init__(self, config: ClusterConfig, *, change_timeout_s: float = 5.0) -> None:
        config.validate()
        self.config = config
        self.change_timeout_s = change_timeout_s
        self._state = _State(self._on_applied)
        self._sync: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._start_error: BaseException | None = None
        self._publish_lock = threading.Lock()
        self._subscribers: list[tuple[ChangeCallback, asyncio.AbstractEventLoop]] = []
        self._last_seen: dict[str, float] = {}
        self._leader_since: float | None = None
        self._inflight: dict[str, float] = {}
        self._next_heartbeat = 0.0
        self._leaving = False
        self._view = self._build_view(None)

    # -- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Bind the raft port and join.  Raises StartupError if it cannot listen."""
        if self._thread is not None:
            raise RuntimeError("ClusterMembership.start() called twice")
        # PySyncObj stops ticking when the thread that built it ends, so it is
        # built by the controller thread, which lives until stop().
        self._thread = threading.Thread(
            target=self._run, name=f"parley-cluster-{self.config.node_id}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop()
            raise StartupError("the raft node did not start in time")
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self) -> None:
        """Leave raft (without leaving the cluster: see ``leave``) and join the threads."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _make_conf(self) -> Any:
        c, t = self.config, self.config.timings
        journal = dump = None
        if c.is_voter and c.data_dir is not None:
            raft_dir = c.data_dir / "raft"
            raft_dir.mkdir(parents=True, exist_ok=True)
            journal, dump = str(raft_dir / "journal"), str(raft_dir / "dump")
        return SyncObjConf(
            password=c.secret,
            bindAddress=c.raft_addr,
            dynamicMembershipChange=True,
            journalFile=journal,
            fullDumpFile=dump,
            useFork=False,  # the dump is small; fork() in a threaded server is not
            commandsWaitLeader=False,  # fail fast without a leader; callers retry
            appendEntriesPeriod=t.append_entries_s,
            raftMinTimeout=t.election_min_s,
            raftMaxTimeout=t.election_max_s,
            connectionTimeout=t.connection_timeout_s,
            leaderFallbackTimeout=t.leader_fallback_s,
            connectionRetryTime=t.reconnect_s,
            logCompactionMinEntries=2000,
            bindRetryTime=0.2,
            maxBindRetries=10,
            commandsQueueSize=10_000,
        )

    def _run(self) -> None:
        c = self.config
        try:
            if c.is_voter:
                _probe_bind(c.raft_addr)
            self_node = c.raft_addr if c.is_voter else None
            others = [v for v in c.voters if v != c.raft_addr]
            self._sync = SyncObj(
                self_node, others, conf=self._make_conf(), consumers=[self._state],
                transportClass=_HardenedTransport,
            )
            if c.is_voter:
                self._sync.waitBinded()
        except SyncObjException:
            self._start_error = StartupError(f"cannot listen on raft address {c.raft_addr}")
        except OSError as exc:
            self._start_error = StartupError(
                f"cannot listen on raft address {c.raft_addr}: {exc.strerror or exc}"
            )
        if self._start_error is not None:
            if self._sync is not None:
                self._sync.destroy_synchronous()
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stopping.wait(c.tick_s):
                try:
                    self._tick(time.monotonic())
                except Exception:  # the controller must outlive a bad tick
                    log.exception("cluster: controller tick failed")
        finally:
            self._sync.destroy_synchronous()

    # -- reads (any thread, never blocking) -----------------------------------------------
    def snapshot(self) -> ClusterView:
        return self._view

    def node_for_user(self, user_id: int) -> NodeInfo | None:
        return self._view.node_for_user(user_id)

    def is_leader(self) -> bool:
        """Whether this node leads now and holds the fencing token of its term."""
        return self._current_is_leader(self._state.replica)

    def fencing_token(self) -> int:
        """The fencing counter (monotonic; bumped once per leader term)."""
        return int(self._state.replica.fence)

    def on_change(
        self, callback: ChangeCallback, loop: asyncio.AbstractEventLoop | None = None
    ) -> Callable[[], None]:
        """Call ``callback(view)`` on ``loop`` (default: the running loop) whenever the
        view changes; returns a function that unsubscribes."""
        target = loop or asyncio.get_running_loop()
        entry = (callback, target)
        with self._publish_lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._publish_lock, contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """JSON-ready status for `parley cluster status` and metrics."""
        view = self._view
        counts = view.slots_per_node()
        return {
            "self": view.self_id,
            "leader": view.leader_id,
            "is_leader": view.is_leader,
            "raft_term": view.raft_term,
            "has_quorum": view.has_quorum,
            "fencing_token": view.fencing_token,
            "epoch": view.epoch,
            "revision": view.revision,
            "voters": list(view.voters),
            "slots_unassigned": view.slot_map.unassigned(),
            "nodes": [
                {
                    "id": n.id, "state": n.state, "voter": n.voter, "slots": counts.get(n.id, 0),
                    "http_url": n.http_url, "ws_url": n.ws_url, "link_addr": n.link_addr,
                    "raft_addr": n.raft_addr,
                }
                for n in view.nodes.values()
            ],
        }

    # -- changes (committed through raft or refused) ------------------------------------
    async def drain(self, node_id: str) -> bool:
        """Move ``node_id``'s slots away; it stays a member.  False: unknown node or
        not joining/active."""
        return await self._change("drain", (node_id,))

    async def leave(self, node_id: str) -> bool:
        """Move ``node_id``'s slots away and remove it from the cluster.  False:
        unknown node."""
        return await self._change("leave", (node_id,))

    async def set_active(self, node_id: str) -> bool:
        """Give a draining, leaving or dead node slots again (once it is alive).
        False: unknown node or already joining/active."""
        return await self._change("set_active", (node_id,))

    async def _change(self, name: str, args: tuple[Any, ...]) -> bool:
        if self._sync is None:
            raise Unavailable("the cluster is not started")
        future = self._submit(name, args)
        limit = self.change_timeout_s
        try:
            async with asyncio.timeout(limit):
                result = await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()
            raise Unavailable(
                f"cluster change '{name}' was not committed within {limit:g} s (no quorum?)"
            ) from None
        return bool(result)

    def _submit(self, name: str, args: tuple[Any, ...]) -> concurrent.futures.Future[Any]:
        """Queue a replicated command; the future resolves when it is applied here."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(result: Any, error: int) -> None:
            if future.done():
                return
            if error == FAIL_REASON.SUCCESS:
                future.set_result(result)
            else:
                reason = _FAILURES.get(error, str(error))
                future.set_exception(Unavailable(f"cluster change '{name}' failed: {reason}"))

        getattr(self._state, name)(*args, callback=done)
        return future

    # -- the controller (controller thread) ------------------------------------------------
    def _tick(self, now: float) -> None:
        sync = self._sync
        replica: Replica = self._state.replica
        if sync._isLeader():
            if self._leader_since is None:
                self._leader_since = now
        else:
            self._leader_since = None
        self._publish()
        me = replica.node(self.config.node_id)
        if me is not None and me.state == "leaving":
            self._leaving = True
        if not self._leaving and (me is None or me.state == "dead" or self._stale(me)):
            self._fire("join", self._join_args(), now)
        if now >= self._next_heartbeat and me is not None and self._leader_since is None:
            self._next_heartbeat = now + self.config.heartbeat_interval_s
            self._fire("heartbeat", (self.config.node_id,), now)
        if self._leader_since is not None:
            self._lead(replica, now, self._leader_since)

    def _lead(self, replica: Replica, now: float, leader_since: float) -> None:
        term = int(self._sync.raftCurrentTerm)
        if replica.fence_holder != self.config.node_id or replica.fence_term != term:
            self._fire("claim_fence", (self.config.node_id, term), now)
            return
        step = plan(
            replica, now=now, last_seen=dict(self._last_seen), leader_since=leader_since,
            dead_after_s=self.config.dead_after_s, self_id=self.config.node_id,
        )
        if step is not None:
            for node_id, state in step.states:
                log.info("cluster: node %s -> %s", node_id, state)
            for node_id in step.removals:
                log.info("cluster: node %s left", node_id)
            self._fire("apply_plan", (
                step.expected_revision, step.slots.epoch, step.slots.owners, step.slots.table,
                step.states, step.removals,
            ), now)

    def _fire(self, name: str, args: tuple[Any, ...], now: float) -> None:
        """Submit a command unless the same kind is still in flight (5 s at most)."""
        if self._inflight.get(name, 0.0) > now:
            return
        self._inflight[name] = now + 5.0
        future = self._submit(name, args)

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._inflight[name] = time.monotonic() + _RETRY_S  # e.g. no leader yet
            else:
                self._inflight.pop(name, None)

        future.add_done_callback(done)

    def _join_args(self) -> tuple[Any, ...]:
        c = self.config
        return (c.node_id, c.http_url, c.ws_url, c.link_addr, c.raft_addr, c.is_voter)

    def _stale(self, me: NodeInfo) -> bool:
        c = self.config
        return (me.http_url, me.ws_url, me.link_addr, me.raft_addr, me.voter) != (
            c.http_url, c.ws_url, c.link_addr, c.raft_addr, c.is_voter
        )

    # -- applied commands (raft thread) and publication ---------------------------------------
    def _on_applied(self, event: str, node_id: str) -> None:
        if node_id and event in ("heartbeat", "join", "rejoin"):
            self._last_seen[node_id] = time.monotonic()
        if event != "heartbeat":
            self._publish()

    def _current_is_leader(self, replica: Replica) -> bool:
        sync = self._sync
        return bool(
            sync is not None and sync._isLeader()
            and replica.fence_holder == self.config.node_id
            and replica.fence_term == sync.raftCurrentTerm
        )

    def _build_view(self, sync: Any) -> ClusterView:
        replica: Replica = self._state.replica
        nodes = {n.id: n for n in replica.nodes}
        by_raft = {n.raft_addr: n.id for n in replica.nodes if n.raft_addr}
        leader_id: str | None = None
        term, quorum = 0, False
        voters: tuple[str, ...] = tuple(by_raft.get(v, v) for v in self.config.voters)
        if sync is not None:
            leader = sync._getLeader()
            if leader is not None:
                leader_id = by_raft.get(leader.address, leader.address)
            term, quorum = int(sync.raftCurrentTerm), bool(sync.hasQuorum)
            addrs = {n.address for n in sync.otherNodes}
            if sync.selfNode is not None:
                addrs.add(sync.selfNode.address)
            voters = tuple(sorted(by_raft.get(a, a) for a in addrs))
        return ClusterView(
            self_id=self.config.node_id, replica=replica, nodes=MappingProxyType(nodes),
            leader_id=leader_id, is_leader=self._current_is_leader(replica), raft_term=term,
            has_quorum=quorum, voters=voters,
        )

    def _publish(self) -> None:
        with self._publish_lock:
            view = self._build_view(self._sync)
            if view._key() == self._view._key():
                return
            self._view = view
            subscribers = list(self._subscribers)
        for callback, loop in subscribers:
            try:
                loop.call_soon_threadsafe(callback, view)
            except RuntimeError:  # the loop is closed
                with self._publish_lock, contextlib.suppress(ValueError):
                    self._subscribers.remove((callback, loop))

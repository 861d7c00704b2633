"""What ``parley bench`` drives: the :class:`Target` seam and Parley's implementation.

The scheduler, checker and report never talk to a server directly; they use
three small interfaces, so another server (a relay, Synapse, ...) plugs into
exactly the same measurement with ``--target module:factory``:

* :class:`Target`, in the coordinator process: ``start()`` (start the server
  if the options ask for it, else check it is there), ``provision(topology)``
  (create the users and conversations the scenario needs, idempotently, and
  return :class:`Provisioned`: endpoints, one credential per user, one opaque
  reference per conversation), ``connector()`` (a *picklable*
  :class:`Connector` sent to every worker process), ``server_pids()`` /
  ``metrics_urls()`` (where server RSS and CPU are read) and ``close()`` (stop
  what ``start`` started).  ``factory(options: TargetOptions) -> Target`` builds it.
* :class:`Connector`, in each worker process: ``await connect(...)`` opens one
  authenticated connection for one user and returns a
  :class:`TargetConnection` once the server accepted it, or raises
  :class:`ConnectFailed` with a short stable ``code`` (counted by code).
* :class:`TargetConnection`: ``send(conv, payload, token)`` never blocks and
  never raises; ``close()`` begins closing.  Outcomes come back through the
  :class:`Events` the bench passed to ``connect``.  An optional int attribute
  ``redirects`` (how often the server sent the connection elsewhere before
  accepting it) is summed into the report's ``connections.redirected``.

Guarantees a target must give, or the checker reports it as a failure:

* ``payload`` is at most 64 ASCII bytes of ``[0-9.]``; it must come back
  byte for byte in ``Events.delivered`` on every *other* member's connection
  (never on the sender's own: filter self-echoes).
* every ``send`` ends in exactly one ``Events.acked(token)`` (the server
  accepted the message durably, or whatever the target's "sent" means) or one
  ``Events.failed(token, code)``, unless the connection closes first
  (``Events.closed``); ``token`` is an int in ``[0, 2**53)``, unique per
  connection.
* ``Events.delivered`` is called once per message after the protocol's own
  de-duplication (Parley: by ``(conv, seq)``); anything delivered twice after
  that is a duplicate the checker counts.
* callbacks run on the worker's event loop and must not block.

All calls happen on one event loop per worker process (uvloop), so
implementations need no locks.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Protocol, cast

import msgspec
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSParsedURL,
    WSTransport,
    ws_connect,
)

from parley.protocol import (
    Cursor,
    Msg,
    Reconnect,
    Sent,
    Sync,
    SyncPage,
    Welcome,
    decode_server_frame,
    encode,
)
from parley.protocol.frames import MAX_CURSORS, ErrorFrame

__all__ = [
    "ConnectFailed",
    "Connector",
    "Events",
    "ParleyConnector",
    "Provisioned",
    "Target",
    "TargetConnection",
    "TargetOptions",
    "Topology",
    "load_target",
]


# --------------------------------------------------------------------------- the seam


@dataclass(frozen=True, slots=True)
class Topology:
    """The users and conversations a scenario needs.

    Users are indices ``0 .. users-1``; ``directs`` are pairs of users with one
    direct (1:1) conversation each; ``groups`` list each group's members (the
    first is its owner).  ``run_id`` (``[a-z0-9]{1,16}``) names the run: the
    same ``run_id`` and topology must give back the same users and conversations.
    """

    run_id: str
    users: int
    directs: tuple[tuple[int, int], ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What ``Target.provision`` made: everything a worker needs to connect and send.

    ``urls``: endpoints; the bench spreads users over them (user ``i`` uses
    ``urls[i % len(urls)]``) unless ``user_urls`` places each user (``user_urls[i]``,
    e.g. the node serving user ``i``).  ``credentials[i]``: opaque to the bench (a
    token, a password...).  ``directs[k]`` / ``groups[k]``: opaque conversation
    references passed back to ``TargetConnection.send``.
    """

    urls: tuple[str, ...]
    credentials: tuple[str, ...]
    directs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    user_urls: tuple[str, ...] = ()
    """Empty, or one URL per user."""


@dataclass(frozen=True, slots=True)
class TargetOptions:
    """Command-line options a target factory receives; each target uses what applies.

    ``urls``: ``--url`` values (empty with ``start``); ``start``/``backend``:
    ``--start [--backend]``; ``database_url``/``data_dir``/``config_file``: where
    the server keeps its data (for provisioning); ``server_pids``:
    ``--server-pid``; ``metrics_urls``: ``--metrics-url``; ``extra``:
    ``--target-opt KEY=VALUE`` pairs.
    """

    urls: tuple[str, ...] = ()
    start: bool = False
    backend: str = "sqlite"
    database_url: str | None = None
    data_dir: str | None = None
    config_file: str | None = None
    server_pids: tuple[int, ...] = ()
    metrics_urls: tuple[str, ...] = ()
    max_connections: int = 20_000
    extra: dict[str, str] = field(default_factory=dict)


class ConnectFailed(Exception):
    """A connection attempt failed; ``code`` is short and stable (counted by code)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


class Events(Protocol):
    """What one connection reports to the bench.  Called on the event loop; never block."""

    def acked(self, token: int) -> None:
        """The send ``token`` was accepted by the server."""
        ...

    def failed(self, token: int, code: str) -> None:
        """The send ``token`` was refused with ``code``."""
        ...

    def delivered(self, payload: bytes) -> None:
        """A message of another user arrived; ``payload`` exactly as it was sent."""
        ...

    def closed(self, code: int, reason: str) -> None:
        """The connection is gone (once, after the last other callback)."""
        ...


class TargetConnection(Protocol):
    """One open, authenticated connection of one user."""

    def send(self, conv: str, payload: bytes, token: int) -> None:
        """Send ``payload`` to conversation ``conv``; never blocks, never raises."""
        ...

    def close(self) -> None:
        """Begin closing; ``Events.closed`` follows."""
        ...


class Connector(Protocol):
    """Opens connections in a worker process.  Must be picklable (workers are spawned)."""

    async def connect(self, user: int, credential: str, url: str, local_host: str,
                      events: Events, keepalive_s: float | None) -> TargetConnection:
        """Open ``user``'s connection from source address ``local_host`` (port 0).

        Returns once the server accepted it (Parley: after ``welcome``); raises
        :class:`ConnectFailed`.  ``keepalive_s``: ping when idle this long (None: never).

        A connector may also offer ``reconnect(old, user, credential, url,
        local_host, events, keepalive_s)``, taking the user's closed connection:
        workers then bring back users whose connection the server closed, and
        resend what was not acknowledged.  Without it such users stay closed.
        """
        ...


class Target(Protocol):
    """A server under test, seen from the coordinator process."""

    name: str

    async def start(self) -> None:
        """Start the server if the options ask for it; else check it answers."""
        ...

    async def provision(self, topology: Topology) -> Provisioned:
        """Create (or find again) the users and conversations of ``topology``."""
        ...

    def connector(self) -> Connector:
        """A picklable connector for the worker processes."""
        ...

    def server_pids(self) -> list[int]:
        """Pids of the server processes (for RSS and CPU from /proc); [] if unknown."""
        ...

    def metrics_urls(self) -> list[str]:
        """Prometheus endpoints with ``process_*`` metrics, used when no pid is known."""
        ...

    async def close(self) -> None:
        """Stop what ``start`` started; safe to call after a failed start."""
        ...


TargetFactory = Callable[[TargetOptions], Target]


def load_target(spec: str, options: TargetOptions) -> Target:
    """Build the target named ``module:factory`` (``parley`` is Parley's own)."""
    if spec == "parley":
        from parley.bench.parley_target import ParleyTarget

        return ParleyTarget(options)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--target must be 'parley' or 'module:factory', got {spec!r}")
    factory: Any = getattr(importlib.import_module(module_name), attr)
    target: Target = factory(options)
    return target


# --------------------------------------------------------------------------- Parley


_TEXT: Final = WSMsgType.TEXT
_CLOSE: Final = WSMsgType.CLOSE
_ACK_DELAY_S: Final = 0.05
_GAP_SYNC_S: Final = 1.0
"""A gap in a conversation still open this long is synced (protocol: "if the gap
is not filled within a few seconds, sync"); a gap is normally filled within
milliseconds (a peer's message coming over from another node)."""
_TIMER_RESOLUTION_S: Final = 0.001
"""libuv timers count milliseconds: acks due within one go out together."""
_TEXT_OPEN: Final = b'{"text":"'
_TEXT_CLOSE: Final = b'"}'
_SEND: Final = (b'{"t":"send","rid":%d,"conv":%d,"mid":"%b%d.%b%010d","kind":"text",'
                b'"body":{"text":"%b"}}')
"""``encode(Send(...))`` of a text message, as a template (tests/bench pin it to the codec):
rid, conv, mid prefix ``1.<uid>.<device>.``, mid time (ms), nonce, token, payload."""
_ACK: Final = b'{"t":"ack","conv":%d,"seq":%d}'
"""``encode(Ack(conv=..., seq=...))`` as a template."""
_BODY_START: Final = len(_TEXT_OPEN)
_BODY_END: Final = -len(_TEXT_CLOSE)
_MSG_PREFIX: Final = b'{"t":"msg",'
_SENT_PREFIX: Final = b'{"t":"sent",'


class _PushedMsg(msgspec.Struct, tag_field="t", tag="msg", gc=False):
    """What the bench reads of a ``msg`` frame (the rest is skipped unvalidated)."""

    conv: int
    seq: int
    sender: int = msgspec.field(name="from")
    body: msgspec.Raw


class _SentRid(msgspec.Struct, tag_field="t", tag="sent", gc=False):
    """What the bench reads of a ``sent`` frame."""

    rid: int


_MSG_DECODER: Final = msgspec.json.Decoder(_PushedMsg)
_SENT_DECODER: Final = msgspec.json.Decoder(_SentRid)


class _AckTimer:
    """The receive-acks of every connection of one connector (one worker process):
    each connection's acks go out ``_ACK_DELAY_S`` after its first unacked message,
    from one timer re-armed for the earliest due (instead of a timer per message)."""

    __slots__ = ("_due", "_gap_handle", "_gaps", "_handle", "_loop", "gap_syncs")

    def __init__(self) -> None:
        self._due: deque[tuple[float, ParleyConnection]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gaps: set[ParleyConnection] = set()
        """Connections holding a message behind a gap (see ``gap``)."""
        self._gap_handle: asyncio.TimerHandle | None = None
        self.gap_syncs = 0
        """Syncs sent because a gap stayed open ``_GAP_SYNC_S``."""

    def __reduce__(self) -> tuple[type[_AckTimer], tuple[()]]:
        return _AckTimer, ()  # travels empty to a worker process

    def add(self, conn: ParleyConnection) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        at = loop.time() + _ACK_DELAY_S
        self._due.append((at, conn))
        if self._handle is None:
            self._handle = loop.call_at(at, self._flush)

    def _flush(self) -> None:
        assert self._loop is not None
        self._handle = None
        due = self._due
        now = self._loop.time() + _TIMER_RESOLUTION_S
        while due and due[0][0] <= now:
            due.popleft()[1].flush_acks()
        if due:
            self._handle = self._loop.call_at(due[0][0], self._flush)

    def gap(self, conn: ParleyConnection) -> None:
        """``conn`` opened a gap: from now on checked every ``_GAP_SYNC_S`` / 4 until
        its gaps are filled (``ParleyConnection.check_gaps``)."""
        self._gaps.add(conn)
        if self._gap_handle is None:
            loop = self._loop = self._loop or asyncio.get_running_loop()
            self._gap_handle = loop.call_later(_GAP_SYNC_S / 4, self._check_gaps)

    def _check_gaps(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._gaps = {c for c in self._gaps if c.check_gaps(now)}
        self._gap_handle = (self._loop.call_later(_GAP_SYNC_S / 4, self._check_gaps)
                            if self._gaps else None)


@dataclass(frozen=True, slots=True)
class ParleyConnector:
    """Parley's :class:`Connector`: a raw picows client speaking protocol v1.

    Lighter than the SDK's ``ParleyClient`` (no outbox, no sync, no reconnect):
    one listener object per connection; the hot frames (``msg``, ``sent``) are
    read with decoders of just the fields the bench uses, the others with
    ``parley.protocol.decode_server_frame``; ``send`` and ``ack`` frames are
    filled into templates of what ``parley.protocol.encode`` gives.  One timer
    per connector (per worker) sends the receive-acks of all its connections.
    ``credential`` is an access token.
    """

    device: str = "bench"
    connect_timeout_s: float = 10.0
    read_buffer: int = 2048
    bases: dict[int, int] = field(default_factory=dict, hash=False)
    """Each conversation's last seq before the run: a receiver expects the next one
    first (a later one arriving first -- the receiver's own message, pushed by its
    node before a peer's earlier one came over from another node -- waits)."""
    acks: _AckTimer = field(default_factory=_AckTimer, hash=False, compare=False, repr=False)

    async def connect(self, user: int, credential: str, url: str, local_host: str,
                      events: Events, keepalive_s: float | None,
                      resume: TargetConnection | None = None) -> TargetConnection:
        """Connect, following a cluster's redirects (``reconnect`` ``moved`` + 4010;
        counted in the connection's ``redirects``).  With ``resume`` (a closed
        connection of the same user) the new one goes on where it stopped: the
        same message-id nonce (a resent message is the same message), its
        conversations' positions, and a ``sync`` for what came in between."""
        bases = self.bases
        identity: tuple[bytes, int] | None = None
        resumed: dict[int, int] | None = None
        if isinstance(resume, ParleyConnection):
            resumed = resume.positions()
            bases = {**self.bases, **resumed}
            identity = resume.identity
        for redirects in range(4):
            conn = await self._connect_once(credential, url, local_host, events, keepalive_s,
                                            bases, identity, resumed)
            if conn.moved_to is None:
                conn.redirects = redirects
                if resume is not None:
                    conn.sync()
                return conn
            url = conn.moved_to.split("?")[0]
        raise ConnectFailed("redirects", "redirected too many times")

    async def reconnect(self, old: TargetConnection, user: int, credential: str, url: str,
                        local_host: str, events: Events, keepalive_s: float | None
                        ) -> TargetConnection:
        """``connect`` resuming ``old`` (see there)."""
        return await self.connect(user, credential, url, local_host, events, keepalive_s,
                                  resume=old)

    async def _connect_once(self, credential: str, url: str, local_host: str,
                            events: Events, keepalive_s: float | None,
                            bases: dict[int, int], identity: tuple[bytes, int] | None,
                            resumed: dict[int, int] | None) -> ParleyConnection:
        ping: dict[str, Any] = {}
        if keepalive_s:
            ping = {"enable_auto_ping": True, "auto_ping_idle_timeout": keepalive_s,
                    "auto_ping_reply_timeout": min(keepalive_s, 10.0)}
        sep = "&" if "?" in url else "?"
        conn: ParleyConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s + 1.0):
                _, listener = await ws_connect(
                    lambda: ParleyConnection(events, self.device, bases, self.acks, identity,
                                             resumed),
                    f"{url}{sep}device={self.device}",
                    extra_headers={"Authorization": f"Bearer {credential}"},
                    websocket_handshake_timeout=self.connect_timeout_s, max_redirects=0,
                    read_buffer_init_size=self.read_buffer,
                    socket_factory=partial(connected_socket, local_host),
                    logger_name="parley.bench.picows", **ping,
                )
                if not isinstance(listener, ParleyConnection):  # seen under heavy load
                    raise ConnectFailed("listener", f"picows returned {type(listener).__name__}")
                conn = listener
                await conn.welcomed  # resolves without a welcome when redirected
        except WSHandshakeError as exc:
            status = int(exc.response.status) if exc.response is not None else 0
            raise ConnectFailed(f"http_{status}" if status else "handshake", str(exc)) from None
        except TimeoutError:
            raise ConnectFailed("timeout") from None
        except (OSError, WSError) as exc:
            code = getattr(exc, "errno", None)
            raise ConnectFailed(f"os_{code}" if code else type(exc).__name__, str(exc)) from None
        assert conn is not None
        return conn


# Linux: let connect(), not bind(), pick the source port.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connected_socket(local_host: str, url: WSParsedURL) -> socket.socket:
    """A TCP socket from ``local_host`` connected to ``url``'s host and port.

    Binding to (host, 0) makes the kernel choose the port at bind time, unique
    for the source address whatever the destination, searching the bound
    ports one by one: a worker holding 15,000 connections from one address
    spent milliseconds per bind with its loop blocked, so sockets it had
    already connected sent their upgrade request seconds late and the nodes
    dropped them at their 5 s handshake deadline (c100k, 28 November: every
    failure of runs 7-12; py-spy showed the workers in ``sock.bind``).  With
    IP_BIND_ADDRESS_NO_PORT the port is chosen at connect time, per
    destination, in constant time.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((local_host, 0))
        loop = asyncio.get_running_loop()
        host, port = str(url.host), int(url.port)
        try:
            socket.inet_aton(host)
            address: Any = (host, port)
        except OSError:  # a name, e.g. localhost (no resolver hop for an address)
            (*_, address), *_ = await loop.getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


class ParleyConnection(WSListener):
    """One Parley connection: sends ``send`` frames, acks pushes (batched), reports events.

    Pushes are de-duplicated by ``(conv, seq)`` and handed on in seq order, as
    the protocol asks a client to show them (an early message waits for the gap
    below it, and a gap still open after ``_GAP_SYNC_S`` is synced; re-pushes are
    counted in ``repushed``, not delivered twice); the
    device acks the highest contiguous seq of each conversation at most 50 ms
    after a message arrived, at most once per conversation per 50 ms.
    """

    __slots__ = ("_ack_due", "_acks", "_bases", "_convs", "_device", "_events", "_gaps",
                 "_going", "_mid_ms", "_mid_prefix", "_nonce", "_pending", "_resumed", "_uid",
                 "_ws", "closed_code", "identity", "moved_to", "redirects", "repushed",
                 "welcomed")

    def __init__(self, events: Events, device: str, bases: dict[int, int] | None = None,
                 acks: _AckTimer | None = None, identity: tuple[bytes, int] | None = None,
                 resumed: dict[int, int] | None = None) -> None:
        self._events = events
        self._bases = bases or {}
        self._acks = acks if acks is not None else _AckTimer()
        self._device = device
        self._ws: WSTransport | None = None
        self._uid = 0
        self.identity = identity or (secrets.token_hex(3).encode(), time.time_ns() // 1_000_000)
        """(nonce, time in ms) of this device's message ids: the same for every
        message, so a message resent on a new connection keeps its id (the
        token, 1, 2, 3, ..., keeps ids apart)."""
        self._nonce, self._mid_ms = self.identity
        self._resumed = resumed or {}
        """The positions of the connection this one resumes (its ``positions()``)."""
        self._mid_prefix = b""
        """``1.<uid>.<device>.``, once welcomed."""
        self._convs: dict[str, int] = {}
        self._pending: dict[int, list[Any]] = {}  # conv -> [contiguous seq, {seq: early msg}]
        self._ack_due: set[int] = set()
        self._gaps: dict[int, float] = {}
        """conv -> when its current gap was last synced for (or opened)."""
        self.repushed = 0
        self.redirects = 0
        self.moved_to: str | None = None
        self._going = False
        """The server announced its shutdown (``reconnect``, reason "shutdown")."""
        self.closed_code: int | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.welcomed.add_done_callback(_retrieved)  # an attempt given up may fail later

    # -- TargetConnection --------------------------------------------------------
    def send(self, conv: str, payload: bytes, token: int) -> None:
        ws = self._ws
        if ws is None or self.closed_code is not None:
            return
        cid = self._convs.get(conv)
        if cid is None:
            cid = self._convs[conv] = int(conv)
        ws.send(_TEXT, _SEND % (token, cid, self._mid_prefix, self._mid_ms, self._nonce, token,
                                payload))

    def close(self) -> None:
        if self._ws is not None and self.closed_code is None:
            self.flush_acks()
            self.closed_code = 1000
            self._ws.send_close(WSCloseCode.OK)
            self._ws.disconnect()

    # -- picows ------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._ws = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not _TEXT:
            if frame.msg_type is _CLOSE:
                self.closed_code = int(frame.get_close_code().value) or 1005
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        f: object
        try:
            if data.startswith(_MSG_PREFIX):
                f = _MSG_DECODER.decode(data)
            elif data.startswith(_SENT_PREFIX):
                f = _SENT_DECODER.decode(data)
            else:
                f = decode_server_frame(data)
        except Exception:  # noqa: BLE001 - unknown frame types are skipped (protocol §1)
            return
        t = type(f)
        if t is _PushedMsg:
            self._on_msg(cast(_PushedMsg, f))
        elif t is _SentRid:
            self._events.acked(cast(_SentRid, f).rid)
        else:
            self._on_other(f, t)

    def _on_other(self, f: object, t: type) -> None:
        if t is Msg:  # a server putting "t" elsewhere than first
            self._on_msg(cast(Msg, f))
        elif t is Sent:
            self._events.acked(cast(Sent, f).rid)
        elif t is SyncPage:
            page = cast(SyncPage, f)
            for m in page.msgs:
                self._on_msg(m)
            if page.more:
                self.sync()
        elif t is ErrorFrame:
            err = cast(ErrorFrame, f)
            # A send refused with a retryable error while the node shuts down (its
            # message store already stopped) stays unacknowledged: the connection
            # closes next, and the resume sends it again, as the SDK retries it.
            if err.rid is not None and not (self._going and err.retryable):
                self._events.failed(err.rid, err.code)
        elif t is Welcome:
            self._uid = uid = cast(Welcome, f).uid
            self._mid_prefix = b"1.%d.%b." % (uid, self._device.encode())
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        elif t is Reconnect:
            r = cast(Reconnect, f)
            self._going = self._going or r.reason == "shutdown"
            if r.reason == "moved" and r.url:  # before the welcome: a redirect; after
                self.moved_to = r.url  # it: where to resume once closed (4010)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        code = self.closed_code if self.closed_code is not None else 1006
        self.closed_code = code
        if not self.welcomed.done():
            if self.moved_to is not None:  # redirected before the welcome: not a
                self.welcomed.set_result(None)  # connection the run sees
                return
            self.welcomed.set_exception(ConnectFailed(f"closed_{code}"))
        self._events.closed(code, "")

    # -- resuming ----------------------------------------------------------------
    def positions(self) -> dict[int, int]:
        """The highest seq of each conversation the user holds every seq up to: what
        this connection received, else what the one it resumed held (a connection
        closed before it received anything passes its predecessor's on), else the
        run's start for the conversations it sends to."""
        out = dict(self._resumed)
        for cid in self._convs.values():
            if cid not in out and cid in self._bases:
                out[cid] = self._bases[cid]
        out.update((conv, state[0]) for conv, state in self._pending.items())
        return out

    def sync(self) -> None:
        """Ask for what came after ``positions()`` (rid 0; answered by ``sync_page``,
        whose messages go the way of pushes).  Conversations without a position
        start from the device's stored delivery cursor."""
        ws = self._ws
        if ws is None or self.closed_code is not None:
            return
        cursors = [Cursor(conv, seq) for conv, seq in sorted(self.positions().items())]
        ws.send(_TEXT, encode(Sync(rid=0, cursors=cursors[:MAX_CURSORS])))

    # -- receiving ---------------------------------------------------------------
    def _on_msg(self, m: _PushedMsg | Msg) -> None:
        conv = m.conv
        state = self._pending.get(conv)
        if state is None:
            state = self._pending[conv] = [self._bases.get(conv, m.seq - 1), {}]
        seq = m.seq
        if seq <= state[0] or seq in state[1]:
            self.repushed += 1
            return
        if seq != state[0] + 1:  # early: hold it until the gap fills (protocol §8)
            state[1][seq] = m
            if conv not in self._gaps:
                self._gaps[conv] = asyncio.get_running_loop().time()
                self._acks.gap(self)
            return
        self._deliver(m)
        state[0] = seq
        early = state[1]
        while early and state[0] + 1 in early:
            state[0] += 1
            self._deliver(early.pop(state[0]))
        if not early and self._gaps:
            self._gaps.pop(conv, None)
        if not self._ack_due:
            self._acks.add(self)
        self._ack_due.add(conv)

    def _deliver(self, m: _PushedMsg | Msg) -> None:
        if m.sender != self._uid:
            self._events.delivered(bytes(m.body)[_BODY_START:_BODY_END])

    def check_gaps(self, now: float) -> bool:
        """Sync if a gap has been open ``_GAP_SYNC_S`` (again a second later if the
        sync did not fill it: the message may not have been committed yet); whether
        a gap is still open."""
        if self.closed_code is not None:
            self._gaps.clear()
            return False
        if any(now - t >= _GAP_SYNC_S for t in self._gaps.values()):
            self._gaps = dict.fromkeys(self._gaps, now)
            self._acks.gap_syncs += 1
            self.sync()
        return bool(self._gaps)

    def flush_acks(self) -> None:
        """Send the due acks now (one frame per conversation)."""
        ws = self._ws
        if ws is None or self.closed_code is not None:
            self._ack_due.clear()
            return
        pending = self._pending
        for conv in self._ack_due:
            ws.send(_TEXT, _ACK % (conv, pending[conv][0]))
        self._ack_due.clear()


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()

"""Inter-node links: authenticated TCP connections carrying batched forwards.

``Links`` is one node's end.  It listens on the node's internal link address
(``LinkServer``, inbound: receive only) and keeps one outgoing ``PeerLink`` to
every other node of the cluster map (outbound: send only), so each direction of
each pair of nodes is one TCP stream with its own order.

Delivery contract (what a caller of ``send`` may rely on)
---------------------------------------------------------
* ``send`` never blocks, never raises and never waits for the network: it
  queues the record and returns True, or drops it, counts it and returns False.
* Records sent to one peer are handed to the peer's handler in the order sent,
  at most once.  Nothing is retried or buffered across a reconnect.
* A record is dropped (and counted per peer and reason) when the link is not up
  (connecting, backing off, peer silent), when the peer's queue is full (items
  or bytes; the queue stops draining while the socket's write buffer is above
  its high-water mark), or when it alone exceeds a frame.  Records queued or in
  flight when a connection ends are discarded.
* Every loss is *detected by the receiver*: the handshake, each batch and each
  heartbeat carry the sender's stream position and drop count (per sender
  process), so the receiving node gets ``on_gap(peer, restarted=False)`` at the
  reconnect, batch or heartbeat that follows a loss (within ``heartbeat_s`` of
  the link being up), and ``on_gap(peer, restarted=True)`` when the peer came
  back as a new process (a new instance id in the handshake).  The receiver
  then resyncs what it keeps on the peer's word: e.g. drop its membership
  cache, reload revocations from the database and close sockets of revoked
  logins.
* Why dropping is right here: messages are in the database before they are
  forwarded, so a device that misses a push gets it from its session's re-push
  or from sync; events are best effort by the Router contract; cache
  invalidations and session closes are repaired by the resync that ``on_gap``
  triggers.  A ``send_wait`` that blocks a caller on a slow or dead peer would
  instead stall the sender's own clients (head-of-line blocking across nodes)
  and still not survive a crash.

Wire format
-----------
Length-prefixed msgpack frames and an HMAC challenge-response handshake, both
described in ``forward.py``.  Until the handshake ends a frame may hold at most
1 KiB and the handshake must finish within ``handshake_timeout_s``; anything
else closes the socket at once.  After it, frames are capped at ``max_frame``
(checked on the length prefix, so a connection never buffers more than one
frame).  TLS may be layered underneath (``server_ssl`` / ``client_ssl``); the
HMAC handshake runs either way.

Liveness
--------
The dialer pings every ``heartbeat_s``; the acceptor answers.  A connection
that has received nothing for ``dead_after_s`` (a stopped or partitioned peer)
is closed: ``on_peer_down``, then reconnection with exponential backoff and
jitter (``backoff_min_s`` doubling up to ``backoff_max_s``), cut short when the
peer's own link connects to this node (it is back: ``PeerLink.wake``).

Cost
----
Everything queued for a peer in one event-loop iteration leaves as one
``transport.write`` (one ``Batch`` frame per ``batch_bytes``), encoded with one
``encode_into``; the receiver decodes a batch in one call and hands the list to
its handler.  The queue is bounded by an upper estimate of each record's size
(``cost()``), so nothing is encoded twice.  Measured (uvloop, loopback, two
processes, ``DeliverMessage`` with a 150-byte frame and 2 users; CPU of send
through write, and of read through the handler call, per CPU-second): sender
0.9M / 1.45M / 2.5M, receiver 1.4M / 2.6M / 4.7M for 10 / 100 / 1,000 records
per loop turn; 135k / 280k with one record per turn (a write per record).

Metrics
-------
``stats()`` returns counters per peer and the link state; the composition root
exports them (a collector over ``stats()``), so this module touches no
Prometheus registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, cast

import msgspec

from parley.cluster.forward import (
    LENGTH,
    NONCE_BYTES,
    PONG,
    VERSION,
    Auth,
    Batch,
    Challenge,
    Forward,
    HandshakeFailed,
    Hello,
    Ping,
    Pong,
    Ready,
    answer,
    challenge,
    data_decoder,
    encoder,
    frame,
    handshake_decoder,
    verify_auth,
)

__all__ = ["LinkConfig", "LinkHandler", "LinkServer", "LinkStats", "Links", "PeerLink", "PeerStats"]

_log = logging.getLogger("parley.cluster.links")

_HS_MAX_FRAME: Final = 1024
_pack_len = LENGTH.pack_into
_unpack_len = LENGTH.unpack_from


# -- public records ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Bounds and timings of the links (defaults suit a LAN)."""

    max_frame: int = 8 << 20
    """Largest frame accepted or sent (bytes)."""
    batch_bytes: int = 256 << 10
    """A flush splits the queue into frames of about this many bytes."""
    max_queue_items: int = 50_000
    max_queue_bytes: int = 8 << 20
    write_high_water: int = 1 << 20
    """Above this many unsent bytes in the socket's buffer the queue stops draining."""
    heartbeat_s: float = 1.0
    dead_after_s: float = 4.0
    """A connection that has received nothing for this long is closed (peer down)."""
    handshake_timeout_s: float = 3.0
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        if not 4096 <= self.batch_bytes <= self.max_frame - 1024:
            raise ValueError("batch_bytes must be within [4096, max_frame - 1024]")
        if self.dead_after_s <= self.heartbeat_s:
            raise ValueError("dead_after_s must exceed heartbeat_s")


class PeerStats(msgspec.Struct):
    """Counters of one peer, both directions (all since this process started)."""

    node_id: str
    state: str = "down"  # outbound: "down" | "connecting" | "up" | "absent" (inbound only)
    instance: str = ""  # the peer's process instance, as last seen
    sent: int = 0  # records written to the socket
    batches: int = 0  # Batch frames written
    writes: int = 0  # transport writes (one per flush)
    dropped_down: int = 0  # refused: link not up
    dropped_full: int = 0  # refused: queue full (items or bytes)
    dropped_too_big: int = 0  # refused: larger than a frame
    discarded: int = 0  # queued, then lost with the connection
    queued: int = 0
    queued_bytes: int = 0  # upper estimate
    paused: bool = False  # socket write buffer above high water
    connects: int = 0  # outbound handshakes completed
    connect_failures: int = 0
    received: int = 0  # records handed to the handler
    received_batches: int = 0
    gaps: int = 0  # on_gap calls for this peer
    inbound_up: bool = False


class LinkStats(msgspec.Struct):
    node_id: str
    instance: str
    peers: dict[str, PeerStats]
    refused: int  # inbound connections closed before or during the handshake
    no_peer: int  # send() to a node id with no link


class LinkHandler(Protocol):
    """The node's side of the links; called on the event loop, must not block."""

    def on_forwards(self, peer: str, forwards: list[Forward]) -> None:
        """Records from ``peer``, in the order it sent them."""
        ...

    def on_gap(self, peer: str, restarted: bool) -> None:
        """Records from ``peer`` may have been lost (or ``peer`` restarted): resync
        whatever this node keeps on the peer's word."""
        ...

    def on_peer_up(self, peer: str, instance: str, restarted: bool) -> None:
        """The link to ``peer`` is up: ``send`` queues from now on.  ``restarted``
        tells that ``peer`` is a new process since the link was last up."""
        ...

    def on_peer_down(self, peer: str) -> None:
        """The link to ``peer`` went down; sends are dropped until ``on_peer_up``."""
        ...


# -- one connection -----------------------------------------------------------------
_HELLO, _AUTH, _CHALLENGE, _READY, _UP, _CLOSED = range(6)


class _Conn(asyncio.Protocol):
    """One TCP connection, either end; a small state machine fed by ``data_received``."""

    def __init__(self, links: Links, peer: PeerLink | None) -> None:
        self.links = links
        self.peer = peer  # the outbound link this connection serves, or None (inbound)
        self.peer_node = peer.node_id if peer is not None else ""
        self.peer_instance = ""
        self.transport: asyncio.Transport | None = None
        self.state = _CHALLENGE if peer is not None else _HELLO
        self.limit = _HS_MAX_FRAME
        self.buf = bytearray()
        self.last_rx = 0.0
        self.paused = False
        self.authed = False
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self.hello: Hello | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        cfg = self.links.config
        transport.set_write_buffer_limits(high=cfg.write_high_water)
        loop = asyncio.get_running_loop()
        self.last_rx = loop.time()
        self._timer = loop.call_later(cfg.handshake_timeout_s, self.fail, "handshake timeout")
        if self.peer is not None:
            p = self.peer
            self.hello = Hello(VERSION, self.links.node_id, self.links.instance, self.nonce,
                               self.peer_node, p._pos, p._dropped)
            transport.write(frame(self.hello))
        else:
            self.links._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.links._conns.discard(self)
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None:
            self.peer._conn_lost(self)
        elif self.authed:
            self.links._inbound_lost(self)
        elif not self.links._stopping:
            self.links._refused += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.peer is not None:
            self.peer._resumed(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self.last_rx = self.links._loop.time()
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _unpack_len(buf, pos)
            if size > self.limit:
                self.fail(f"frame of {size} bytes over the limit")
                return
            stop = pos + 4 + size
            if stop > end:
                break
            body = bytes(buf[pos + 4 : stop])
            pos = stop
            try:
                self._on_frame(body)
            except (msgspec.DecodeError, HandshakeFailed) as exc:
                self.fail(str(exc))
                return
            if self.state == _CLOSED:
                return
        if pos:
            del buf[:pos]

    # --
    def fail(self, why: str) -> None:
        if self.state == _CLOSED:
            return
        if not self.authed:
            self.links._log_refusal(self, why)
        else:
            _log.info("link %s %s closed: %s", self.links.node_id, self.peer_node or "?", why)
        if self.transport is not None:
            self.transport.abort()
        self.state = _CLOSED

    def send_frame(self, msg: msgspec.Struct) -> None:
        if self.transport is not None and self.state != _CLOSED:
            self.transport.write(frame(msg))

    def _on_frame(self, body: bytes) -> None:
        state = self.state
        if state == _UP:
            msg = data_decoder.decode(body)
            if self.peer is None:
                if type(msg) is Batch:
                    self.links._on_batch(self, msg)
                elif type(msg) is Ping:
                    self.links._on_ping(self, msg)
                    assert self.transport is not None
                    self.transport.write(PONG)
                else:
                    raise HandshakeFailed("unexpected frame")
            elif type(msg) is not Pong:
                raise HandshakeFailed("unexpected frame on an outbound link")
            return
        hs = handshake_decoder.decode(body)
        links = self.links
        if state == _HELLO and type(hs) is Hello:
            self.send_frame(challenge(links.secret, hs, links.node_id, links.instance, self.nonce))
            self.hello, self.state = hs, _AUTH
        elif state == _AUTH and type(hs) is Auth:
            assert self.hello is not None
            verify_auth(links.secret, self.hello, hs, links.node_id, links.instance, self.nonce)
            self._up(self.hello.node, self.hello.instance)
            self.send_frame(Ready())
            links._inbound_up(self)
        elif state == _CHALLENGE and type(hs) is Challenge:
            assert self.hello is not None
            self.send_frame(answer(links.secret, self.hello, hs, self.peer_node))
            self.peer_instance, self.state = hs.instance, _READY
        elif state == _READY and type(hs) is Ready:
            self._up(self.peer_node, self.peer_instance)
            self.ready.set_result(True)
        else:
            raise HandshakeFailed(f"unexpected {type(hs).__name__}")

    def _up(self, node: str, instance: str) -> None:
        self.peer_node, self.peer_instance = node, instance
        self.state = _UP
        self.authed = True
        self.limit = self.links.config.max_frame
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# -- outbound -------------------------------------------------------------------------
_DOWN, _CONNECTING, _LINK_UP = "down", "connecting", "up"


class PeerLink:
    """The outgoing link to one peer: its queue, its connection, its reconnect loop."""

    def __init__(self, links: Links, node_id: str, addr: tuple[str, int]) -> None:
        self.links = links
        self.node_id = node_id
        self.addr = addr
        self.state = _DOWN
        self.stats = links._peer_stats(node_id)
        self._conn: _Conn | None = None
        self._queue: list[Forward] = []
        self._qbytes = 0
        self._flushing = False
        self._pos = 0  # stream position of the next record written (per instance of ours)
        self._dropped = 0
        self._instance = ""  # the peer's instance when last up
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        """Set when the peer connected to us: it is up, so a backoff ends early."""
        cfg = links.config
        self._max_item = min(cfg.max_frame - 64, cfg.max_queue_bytes)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link {self.links.node_id}->{self.node_id}"
        )

    def retire(self) -> None:
        """Stop at once: ``on_peer_down`` now if it was up, no callback after; the
        socket closes in ``close``."""
        if self._task is not None:
            self._task.cancel()
        was_up = self.state is _LINK_UP
        self.state = self.stats.state = _DOWN
        self._discard()
        if was_up:
            self.links._call("on_peer_down", self.node_id)

    async def close(self) -> None:
        """``retire``, then close the connection."""
        self.retire()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
            await conn.closed
        self._conn = None

    # -- hot path ------------------------------------------------------------------
    def send(self, fwd: Forward) -> bool:
        st = self.stats
        if self.state is not _LINK_UP:
            st.dropped_down += 1
            self._dropped += 1
            return False
        cost = fwd.cost()
        cfg = self.links.config
        queue = self._queue
        if (len(queue) >= cfg.max_queue_items or self._qbytes + cost > cfg.max_queue_bytes
                or cost > self._max_item):
            if cost > self._max_item:
                st.dropped_too_big += 1
            else:
                st.dropped_full += 1
            self._dropped += 1
            return False
        queue.append(fwd)
        self._qbytes += cost
        if not self._flushing:
            self._flushing = True
            self.links._loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flushing = False
        conn = self._conn
        queue = self._queue
        if conn is None or conn.paused or not queue or conn.state == _CLOSED:
            return
        assert conn.transport is not None
        cfg = self.links.config
        buf = bytearray()
        pos = self._pos
        chunks = [queue] if self._qbytes <= cfg.batch_bytes else _split(queue, cfg.batch_bytes)
        for chunk in chunks:
            start = len(buf)
            buf += b"\0\0\0\0"
            encoder.encode_into(Batch(pos, self._dropped, chunk), buf, -1)
            _pack_len(buf, start, len(buf) - start - 4)
            pos += len(chunk)
        st = self.stats
        st.sent += len(queue)
        st.batches += len(chunks)
        st.writes += 1
        self._pos = pos
        self._queue = []
        self._qbytes = 0
        conn.transport.write(buf)

    # -- connection events ---------------------------------------------------------
    def _resumed(self, conn: _Conn) -> None:
        if conn is self._conn and self._queue and not self._flushing:
            self._flushing = True
            self.links._loop.call_soon(self._flush)

    def _conn_lost(self, conn: _Conn | None) -> None:
        if conn is not self._conn or conn is None:
            return
        self._conn = None
        self._discard()
        if self.state == _LINK_UP:
            self.state = self.stats.state = _DOWN
            self.links._call("on_peer_down", self.node_id)

    def _discard(self) -> None:
        self.stats.discarded += len(self._queue)
        self._dropped += len(self._queue)  # the receiver will see the gap
        self._queue = []
        self._qbytes = 0

    def _heartbeat(self, now: float) -> None:
        conn = self._conn
        if conn is None or self.state is not _LINK_UP:
            return
        if now - conn.last_rx > self.links.config.dead_after_s:
            conn.fail("peer silent")
            return
        # Ping carries the position of the next record this connection will write.
        conn.send_frame(Ping(self._pos, self._dropped))

    async def _run(self) -> None:
        links = self.links
        cfg = links.config
        loop = links._loop
        failures = 0
        while True:
            self.state = self.stats.state = _CONNECTING
            self._wake.clear()  # a wake from now on ends the next pause
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(cfg.handshake_timeout_s):
                    host, port = self.addr
                    _, conn = await loop.create_connection(
                        lambda: _Conn(links, self), host, port, ssl=links.client_ssl,
                    )
                    ok = await asyncio.shield(conn.ready)
                if not ok or conn.closed.done():
                    raise ConnectionError("closed during the handshake")
            except BaseException as exc:
                if conn is not None and conn.transport is not None:
                    conn.transport.abort()
                if not isinstance(exc, OSError | TimeoutError):
                    raise
                self.state = self.stats.state = _DOWN
                self.stats.connect_failures += 1
                failures += 1
                if failures in (1, _WARN_AFTER) or failures % 100 == 0:
                    # A peer starting up or stopping with the rest of a local
                    # cluster refuses a few attempts: worth a warning only once it
                    # has stayed unreachable (attempt 10 comes after ~7 s).
                    _log.log(logging.INFO if failures < _WARN_AFTER else logging.WARNING,
                             "link %s->%s: %s (attempt %d)", links.node_id, self.node_id,
                             exc or type(exc).__name__, failures)
                await self._pause(_backoff(cfg, failures))
                continue
            failures = 0
            restarted = bool(self._instance) and self._instance != conn.peer_instance
            self._instance = self.stats.instance = conn.peer_instance
            self._conn = conn
            self.state = self.stats.state = _LINK_UP
            self.stats.connects += 1
            links._call("on_peer_up", self.node_id, conn.peer_instance, restarted)
            await asyncio.shield(conn.closed)  # close() awaits it too
            self._conn_lost(conn)
            await asyncio.sleep(_backoff(cfg, 1))


    def wake(self) -> None:
        """The peer just connected to us (it restarted, or came back from a partition):
        a connection attempt waiting out its backoff goes now."""
        self._wake.set()

    async def _pause(self, delay: float) -> None:
        """The backoff between attempts; ``wake`` cuts it short.  Without this a
        restarted peer waited up to ``backoff_max_s`` (2 s) for this side's link,
        and with it for the sessions this node sends back to it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()


def _split(queue: list[Forward], limit: int) -> list[list[Forward]]:
    chunks: list[list[Forward]] = []
    chunk: list[Forward] = []
    size = 0
    for fwd in queue:
        cost = fwd.cost()
        if chunk and size + cost > limit:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(fwd)
        size += cost
    chunks.append(chunk)
    return chunks


_WARN_AFTER = 10
"""Failed connection attempts to a peer logged at INFO before the first WARNING."""


def _backoff(cfg: LinkConfig, failures: int) -> float:
    """Exponential, capped, with equal jitter (so restarted nodes do not reconnect in step)."""
    cap = min(cfg.backoff_max_s, cfg.backoff_min_s * (2 ** min(failures - 1, 30)))
    return float(cap / 2 + random.uniform(0, cap / 2))


# -- inbound ----------------------------------------------------------------------------
@dataclass(slots=True)
class _Inbound:
    conn: _Conn | None
    instance: str
    next: int  # the stream position expected next from this instance of the peer
    dropped: int  # the peer's drop count as last seen


class LinkServer:
    """The listening socket of the links (inbound connections, receive only)."""

    def __init__(self, links: Links, host: str, port: int, ssl_context: ssl.SSLContext | None
                 ) -> None:
        self.links = links
        self.host, self.port = host, port
        self.ssl = ssl_context
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self.host, self.port
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        links = self.links
        self._server = await links._loop.create_server(
            lambda: _Conn(links, None), self.host, self.port, ssl=self.ssl,
            ssl_handshake_timeout=links.config.handshake_timeout_s if self.ssl else None,
            backlog=128,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# -- the node's end ------------------------------------------------------------------------
class Links:
    """All links of one node.  Build, ``await start()``, ``set_peers(...)`` on every
    cluster-map change, ``send``/``broadcast`` from the hot path, ``await stop()``."""

    def __init__(
        self, node_id: str, secret: bytes, listen_addr: tuple[str, int], handler: LinkHandler,
        *, config: LinkConfig | None = None, server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the cluster secret must be at least 16 bytes")
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.secret = secret
        self.instance = secrets.token_hex(8)
        self.handler = handler
        self.config = config or LinkConfig()
        self.client_ssl = client_ssl
        self.server = LinkServer(self, listen_addr[0], listen_addr[1], server_ssl)
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._stopping = False
        self._closing: set[asyncio.Task[None]] = set()
        self._peers: dict[str, PeerLink] = {}
        self._inbound: dict[str, _Inbound] = {}
        self._stats: dict[str, PeerStats] = {}
        self._conns: set[_Conn] = set()  # inbound connections
        self._refused = 0
        self._no_peer = 0
        self._last_refusal_log = -1e9
        self._ticker: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound link address (the real port when started with port 0)."""
        return self.server.address

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.server.start()
        self._ticker = self._loop.create_task(self._tick(), name=f"links {self.node_id} heartbeat")

    async def stop(self) -> None:
        """Close every link; no callbacks run after this returns."""
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.server.stop()
        peers, self._peers = list(self._peers.values()), {}
        for link in peers:
            await link.close()
        while self._closing:
            await asyncio.gather(*self._closing)
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
            await conn.closed

    def set_peers(self, peers: Mapping[str, tuple[str, int]]) -> None:
        """Make the outbound links match the cluster map (our own id is ignored).
        Links to removed nodes are closed; a changed address reconnects."""
        if self._ticker is None:
            raise RuntimeError("Links.start() first")
        loop = self._loop
        wanted = {n: (str(a[0]), int(a[1])) for n, a in peers.items() if n != self.node_id}
        for node_id, link in list(self._peers.items()):
            if wanted.get(node_id) != link.addr:
                del self._peers[node_id]
                link.retire()  # its on_peer_down comes before the new link's on_peer_up
                task = loop.create_task(link.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        for node_id, addr in wanted.items():
            if node_id not in self._peers:
                link = self._peers[node_id] = PeerLink(self, node_id, addr)
                link.start()

    def send(self, node_id: str, fwd: Forward) -> bool:
        """Queue ``fwd`` for ``node_id``; False if it was dropped (see the module doc)."""
        link = self._peers.get(node_id)
        if link is None:
            self._no_peer += 1
            return False
        return link.send(fwd)

    def broadcast(self, fwd: Forward) -> int:
        """Queue ``fwd`` for every peer; returns how many accepted it."""
        n = 0
        for link in self._peers.values():
            n += link.send(fwd)
        return n

    def is_up(self, node_id: str) -> bool:
        link = self._peers.get(node_id)
        return link is not None and link.state is _LINK_UP

    def peers_up(self) -> list[str]:
        return [n for n, link in self._peers.items() if link.state is _LINK_UP]

    def stats(self) -> LinkStats:
        """A snapshot of the counters (copies; safe to keep)."""
        peers: dict[str, PeerStats] = {}
        for node_id, st in self._stats.items():
            link = self._peers.get(node_id)
            snap = msgspec.structs.replace(st)
            if link is None:
                snap.state = "absent"
            else:
                snap.queued = len(link._queue)
                snap.queued_bytes = link._qbytes
                snap.paused = link._conn is not None and link._conn.paused
            inbound = self._inbound.get(node_id)
            snap.inbound_up = inbound is not None and inbound.conn is not None
            peers[node_id] = snap
        return LinkStats(self.node_id, self.instance, peers, self._refused, self._no_peer)

    # -- internals ------------------------------------------------------------------------
    def _peer_stats(self, node_id: str) -> PeerStats:
        st = self._stats.get(node_id)
        if st is None:
            st = self._stats[node_id] = PeerStats(node_id)
        return st

    def _call(self, name: str, *args: object) -> None:
        try:
            getattr(self.handler, name)(*args)
        except Exception:  # noqa: BLE001 - a handler's bug must not break the link
            _log.exception("link handler %s failed", name)

    def _log_refusal(self, conn: _Conn, why: str) -> None:
        now = self._loop.time()
        if now - self._last_refusal_log >= 10.0:
            self._last_refusal_log = now
            peer = conn.transport.get_extra_info("peername") if conn.transport else None
            _log.warning("link %s: refused %s: %s", self.node_id, peer, why)

    def _inbound_up(self, conn: _Conn) -> None:
        node, hello = conn.peer_node, conn.hello
        assert hello is not None
        st = self._peer_stats(node)
        ib = self._inbound.get(node)
        if ib is None:  # first contact: the hello is the baseline
            self._inbound[node] = _Inbound(conn, hello.instance, hello.pos, hello.dropped)
        else:
            old, ib.conn = ib.conn, conn
            if old is not None and old.transport is not None:
                old.transport.abort()  # its connection_lost sees it is no longer current
            if ib.instance != hello.instance:
                ib.instance, ib.next, ib.dropped = hello.instance, hello.pos, hello.dropped
                st.gaps += 1
                self._call("on_gap", node, True)
            else:
                self._check(conn, ib, hello.pos, hello.dropped)
                ib.next = hello.pos
        if not st.instance:
            st.instance = hello.instance
        peer = self._peers.get(node)
        if peer is not None and peer.state is not _LINK_UP:
            peer.wake()

    def _inbound_lost(self, conn: _Conn) -> None:
        ib = self._inbound.get(conn.peer_node)
        if ib is not None and ib.conn is conn:
            ib.conn = None

    def _check(self, conn: _Conn, ib: _Inbound, pos: int, dropped: int) -> None:
        if pos != ib.next or dropped != ib.dropped:
            self._stats[conn.peer_node].gaps += 1
            self._call("on_gap", conn.peer_node, False)
        ib.dropped = dropped

    def _on_batch(self, conn: _Conn, batch: Batch) -> None:
        ib = self._inbound[conn.peer_node]
        if ib.conn is not conn:
            return
        items = batch.items
        if batch.first != ib.next or batch.dropped != ib.dropped:
            self._check(conn, ib, batch.first, batch.dropped)
        ib.next = batch.first + len(items)
        st = self._stats[conn.peer_node]
        st.received += len(items)
        st.received_batches += 1
        try:
            self.handler.on_forwards(conn.peer_node, items)
        except Exception:  # noqa: BLE001 - a handler's bug must not break the link
            _log.exception("link handler on_forwards failed")

    def _on_ping(self, conn: _Conn, ping: Ping) -> None:
        ib = self._inbound[conn.peer_node]
        if ib.conn is not conn:
            return
        if ping.next != ib.next or ping.dropped != ib.dropped:
            self._check(conn, ib, ping.next, ping.dropped)
        ib.next = ping.next

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            self._beat(self._loop.time())

    def _beat(self, now: float) -> None:
        # A method of its own: a loop variable of the long-lived coroutine would keep
        # the last link and connection it visited alive (see GatewayServer._sweep).
        for link in list(self._peers.values()):
            link._heartbeat(now)
        for conn in list(self._conns):
            if conn.state == _UP and now - conn.last_rx > self.config.dead_after_s:
                conn.fail("peer silent")

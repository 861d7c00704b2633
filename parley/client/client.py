"""``ParleyClient``: the asyncio SDK for Parley's WebSocket protocol.

Guarantees (for one client object, i.e. one device):

* **Sends are at-least-once, stored once.**  ``send`` returns only after the
  server's ``sent`` ack (the durable commit).  Until then the frame stays in a
  bounded outbox and is re-sent — same ``rid``, same ``mid`` — after every
  reconnect and after retryable errors (``unavailable``, ``rate_limited``);
  the server deduplicates by ``mid`` (``Sent.dup`` is then true).
* **Receipt is in order and duplicate-free.**  ``messages()`` yields each
  ``(conv, seq)`` once, in increasing ``seq`` per conversation, whether it came
  by push or by sync; a push after a gap triggers a sync instead of being
  delivered early.  Messages are acked (cumulatively, coalesced) when they
  enter the client's queue.
* **Nothing grows without bound.**  The message queue (``max_queue``), events
  (``max_events``, oldest dropped first), the outbox (``max_outbox``: ``send``
  waits for room) and other requests (``max_requests``) are bounded.  When the
  application does not read, new messages are refused *unacked*: the server
  re-pushes them, or closes the connection as a slow consumer (4008), and the
  client fetches them by sync once the application has read half the queue.
* **Reconnects are automatic** (unless ``reconnect=False``) with exponential
  backoff and jitter, or after the delay a ``reconnect`` frame asks for; each
  new connection syncs first, then re-sends what is unacked.  4001 (revoked),
  4009 (too many connections / replaced) and protocol-error closes end the
  client: pending calls and the streams raise :class:`SessionEnded`.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import msgspec

from parley.protocol import (
    DEVICE_ID_RE,
    ClientFrame,
    Convs,
    ConvsPage,
    History,
    HistoryPage,
    Msg,
    Ok,
    Ping,
    Pong,
    Presence,
    Read,
    Recall,
    Send,
    Sent,
    Typing,
    WelcomeLimits,
    encode,
)
from parley.protocol.frames import ClientStatus

from .calls import Backoff, Call, Slots
from .errors import ClientClosed, ParleyClientError
from .ids import IdMinter
from .inbox import Inbox
from .lifecycle import Lifecycle, TokenSource, with_device
from .link import ClientStats
from .session import Event, Session
from .streams import MessageStream

__all__ = ["PING_INTERVAL_S", "ParleyClient"]

PING_INTERVAL_S: Final = 45.0
"""The client's default: ping after this many seconds without hearing from the server.

Longer than the server's heartbeat (a node pings a connection silent for 30 s,
``ping_interval_s``, within 7 s more), so while the server is alive its pings
keep the client from pinging: the heartbeat is then the server's alone, sent in
sweeps.  Client pings arrive one by one, each waking a node: 100,000 clients
pinging every 20 s cost this 2-core machine about 0.6 of a core (nodes 0.32,
load client 0.30) against 0.31 for the server's heartbeat alone, and the chat
beside them p99 823-897 against 264 ms (docs/performance.md, runs 18-21).  The
client still notices a silent server within ``PING_INTERVAL_S`` plus 10 s.
"""

_JSON: Final = msgspec.json.Encoder()


class ParleyClient:
    """One device's connection to a Parley server.  See the module docstring.

    ``url`` is the WebSocket endpoint (``ws://host:port/v1/ws``), or several
    (the nodes of a cluster: when one cannot be reached the next is tried);
    ``?device=`` is added.  Create it anywhere, then ``await connect()`` (or ``async with``)
    inside a running loop; every method runs on that loop only.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: TokenSource,
        device_id: str,
        *,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        cursors: Mapping[int, int] | None = None,
        echo: bool = True,
        max_queue: int = 10_000,
        max_held: int = 1_024,
        max_events: int = 1_000,
        max_outbox: int = 200,
        max_requests: int = 32,
        ack_interval: float = 0.05,
        sync_page: int = 200,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        ping_interval: float | None = PING_INTERVAL_S,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        """Build the client; no I/O until :meth:`connect`.

        * ``token``: a bearer token, or a (sync or async) function returning a
          fresh one, called before every connection.
        * ``cursors``: per-conversation positions saved from :attr:`cursors`;
          without them the first sync starts from the server's stored cursor.
        * ``echo=False``: skip this device's own messages in :meth:`messages`
          (they still move the cursor and are acked).
        * ``max_queue`` messages wait for the application at most (beyond:
          refused unacked, fetched again later); ``max_held`` out-of-order
          pushes wait for a gap to fill; ``max_events`` events are kept
          (oldest dropped); ``max_outbox`` sends and ``max_requests`` other
          requests may be in flight (further calls wait for room).
        * ``ack_interval``: least seconds between two ack flushes (the first
          after a quiet period leaves at the end of the loop iteration).
        * ``sync_page``: preferred sync page size (halved after a 4008 close
          during a sync, then regrown).
        * ``ping_interval``: WebSocket ping after this many seconds without a frame
          from the server (None: never; see ``PING_INTERVAL_S``);
          ``max_frame_bytes``: largest server message accepted.

        Raises ``ValueError`` on a bad ``device_id`` or bound.
        """
        if DEVICE_ID_RE.fullmatch(device_id) is None:
            raise ValueError("device_id must match [A-Za-z0-9_-]{1,64}")
        if min(max_outbox, max_requests, sync_page) < 1 or ack_interval < 0:
            raise ValueError("bounds must be >= 1 and ack_interval >= 0")
        self._device = device_id
        self._rng = random.Random(secrets.randbits(64))
        self._ids = IdMinter(device_id, self._rng)
        self._session = Session(
            Inbox(max_queue, max_held, cursors), echo=echo, max_events=max_events,
            ack_interval=ack_interval, sync_page=sync_page,
            backoff=backoff or Backoff(), rng=self._rng,
        )
        self._send_slots = Slots(max_outbox)
        self._request_slots = Slots(max_requests)
        self._life = Lifecycle(
            self._session,
            [with_device(u, device_id) for u in ([url] if isinstance(url, str) else url)],
            token, device_id,
            reconnect=reconnect, backoff=backoff or Backoff(), rng=self._rng,
            connect_timeout=connect_timeout, close_timeout=close_timeout,
            ping_interval=ping_interval, max_frame_bytes=max_frame_bytes,
            on_finish=self._on_finish,
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "disconnected"
        return f"<ParleyClient device={self._device!r} {state}>"

    # -- state -------------------------------------------------------------------------
    @property
    def device_id(self) -> str:
        return self._device

    @property
    def user_id(self) -> int:
        """The user id from the server's ``welcome``.  Raises before the first connect."""
        welcome = self._session.welcome
        if welcome is None:
            raise ParleyClientError("not_connected", "call connect() first")
        return welcome.uid

    @property
    def limits(self) -> WelcomeLimits | None:
        """The server's limits from the last ``welcome`` (None before the first)."""
        welcome = self._session.welcome
        return None if welcome is None else welcome.limits

    @property
    def connected(self) -> bool:
        """True while a connection is open and welcomed (it may still be syncing)."""
        return self._session.connected.is_set()

    @property
    def closed(self) -> bool:
        """True once the client is finished (``close()`` or a fatal error)."""
        return self._session.finished

    @property
    def error(self) -> ParleyClientError | None:
        """The fatal error that ended the client, if any."""
        return self._session.error

    @property
    def last_close(self) -> tuple[int, str] | None:
        """``(close code, reason)`` of the last connection that ended (1006: dropped)."""
        return self._session.last_close

    @property
    def cursors(self) -> dict[int, int]:
        """A copy of conv -> highest seq received contiguously (persist it, pass it back)."""
        return dict(self._session.inbox.cursors)

    @property
    def stats(self) -> ClientStats:
        """Live counters (pushes, syncs, duplicates, acks, reconnects...)."""
        return self._session.stats

    async def wait_connected(self) -> None:
        """Wait until a connection is open and welcomed."""
        await self._session.connected.wait()

    async def wait_synced(self) -> None:
        """Wait until the current connection's sync has caught up (no page pending).

        While the message queue is full the sync is paused, so this waits for
        the application to read."""
        await self._session.synced.wait()

    # -- lifecycle ---------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the first connection and wait for the server's ``welcome``.

        Raises :class:`HandshakeRejected` (HTTP 401 ``unauthenticated``, 403
        ``forbidden``, ...), :class:`ConnectionFailed` or :class:`SessionEnded`;
        the client may then be connected again.  Later connections are the
        client's own business (see ``reconnect``).
        """
        await self._life.connect()

    async def close(self) -> None:
        """Flush acks, close the connection (1000) and end the client.

        Pending calls raise :class:`ClientClosed`; the streams end after what
        they already hold.  Idempotent.
        """
        await self._life.close()

    async def __aenter__(self) -> ParleyClient:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def drop_connection(self) -> None:
        """Abort the TCP connection now, with no closing handshake (for tests).

        The client then behaves as after a network failure: it reconnects (if
        allowed), syncs and re-sends unacked calls.
        """
        transport = self._session.transport
        if transport is not None:
            transport.abort()

    def _on_finish(self, error: ParleyClientError | None) -> None:
        closed = ClientClosed()
        self._session.finish(error, closed)
        self._send_slots.fail_all(error or closed)
        self._request_slots.fail_all(error or closed)

    # -- messages ----------------------------------------------------------------------
    def messages(self) -> MessageStream[Msg]:
        """Received messages, in order per conversation, each once (recalls are
        messages of kind ``recall``).  Decode a body with :func:`decode_body`.

        The stream ends (StopAsyncIteration) after ``close()`` once drained, or
        raises the fatal error that ended the client.  Meant for one consumer.
        """
        return MessageStream(self._session.next_message)

    def events(self) -> MessageStream[Event]:
        """Typing, presence, read and delivery events, and ``error`` frames without a
        ``rid``.  At most ``max_events`` are kept: the oldest are dropped first."""
        return MessageStream(self._session.next_event)

    def new_message_id(self) -> str:
        """A fresh message id for this user and device (server-clock corrected)."""
        return self._ids.new(self.user_id, self._session.skew_ms)

    async def send(
        self,
        conv: int,
        kind: str,
        body: Mapping[str, Any] | bytes,
        *,
        mid: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - documented: withdraws the send
    ) -> Sent:
        """Send a message and wait until it is durably stored; returns the ``sent`` ack.

        ``body`` is a JSON object (or its encoded bytes).  Across reconnects the
        same ``mid`` is re-sent until acked; a non-retryable ``error`` raises
        :class:`ParleyClientError` (e.g. ``not_member``, ``invalid_body``).  On
        ``timeout`` (TimeoutError) or cancellation the message is withdrawn from
        the outbox; it may or may not be stored — send again with the same
        ``mid`` to find out (``Sent.dup``).
        """
        self._check()
        if mid is None:
            mid = self.new_message_id()
        raw = msgspec.Raw(body if isinstance(body, bytes) else _JSON.encode(body))

        def frame(rid: int) -> Send:
            return Send(rid=rid, conv=conv, mid=mid, kind=kind, body=raw)

        answer = await self._call(frame, self._send_slots, True, timeout)
        assert isinstance(answer, Sent)
        return answer

    # -- requests ----------------------------------------------------------------------
    async def history(
        self, conv: int, before: int | None = None, after: int | None = None, limit: int = 50,
        *, timeout: float | None = 30.0,  # noqa: ASYNC109 - a default bound, see _call
    ) -> HistoryPage:
        """A page of ``conv`` in ascending seq: the newest (before ``before``), or from
        ``after`` forwards.  ``more`` says whether there is more that way."""
        answer = await self._call(
            lambda rid: History(rid=rid, conv=conv, before=before, after=after, limit=limit),
            self._request_slots, True, timeout,
        )
        assert isinstance(answer, HistoryPage)
        return answer

    async def conversations(
        self, after: int | None = None, limit: int = 100,
        *, timeout: float | None = 30.0,  # noqa: ASYNC109 - a default bound, see _call
    ) -> ConvsPage:
        """The user's conversations by ascending id, after ``after``."""
        answer = await self._call(
            lambda rid: Convs(rid=rid, after=after, limit=limit), self._request_slots, True,
            timeout,
        )
        assert isinstance(answer, ConvsPage)
        return answer

    async def read(
        self, conv: int, seq: int, *, timeout: float | None = 30.0  # noqa: ASYNC109
    ) -> int:
        """Move the read cursor of ``conv`` to ``seq``; returns the resulting read cursor."""
        answer = await self._call(
            lambda rid: Read(rid=rid, conv=conv, seq=seq), self._request_slots, True, timeout
        )
        assert isinstance(answer, Ok)
        return seq if answer.seq is None else answer.seq

    async def recall(
        self, conv: int, mid: str, *, timeout: float | None = 30.0  # noqa: ASYNC109
    ) -> int:
        """Recall message ``mid``; returns the seq of the ``recall`` message.

        Not repeated after a dropped connection: raises :class:`ConnectionLost`
        then, and the recall may or may not have happened.
        """
        answer = await self._call(
            lambda rid: Recall(rid=rid, conv=conv, mid=mid), self._request_slots, False, timeout
        )
        assert isinstance(answer, Ok)
        return -1 if answer.seq is None else answer.seq

    async def ping(self, *, timeout: float | None = 30.0) -> float:  # noqa: ASYNC109
        """Round trip to the server and back; returns the seconds it took."""
        started = time.perf_counter()
        answer = await self._call(lambda rid: Ping(rid=rid), self._request_slots, True, timeout)
        assert isinstance(answer, Pong)
        return time.perf_counter() - started

    async def typing(self, conv: int) -> None:
        """Tell the other members the user is typing.  Ephemeral: dropped while
        disconnected; the server rate-limits it (about once a second per conv)."""
        self._check()
        self._session.send_now(encode(Typing(conv=conv)))

    async def presence(self, status: ClientStatus, text: str = "") -> None:
        """Set the user's presence; restored after every reconnect."""
        self._check()
        data = encode(Presence(status=status, text=text))
        self._session.presence = data
        self._session.send_now(data)

    async def sync(self) -> None:
        """Ask the server for anything missed and wait until caught up."""
        self._check()
        self._session.request_sync()
        await self._session.synced.wait()

    # -- private -----------------------------------------------------------------------
    def _check(self) -> None:
        session = self._session
        if session.finished:
            raise session.error or ClientClosed()
        if session.welcome is None:
            raise ParleyClientError("not_connected", "call connect() first")

    async def _call(
        self, build: Callable[[int], ClientFrame], slots: Slots, resend: bool,
        limit_s: float | None,
    ) -> object:
        """Dispatch one call and await its answer for at most ``limit_s`` seconds.

        On timeout or cancellation the call is forgotten (never re-sent) and its
        slot is freed; the server may still have acted on it."""
        self._check()
        session = self._session
        rid = session.calls.next_rid()
        data = encode(build(rid))
        limits = self.limits
        if limits is not None and len(data) > limits.max_frame_bytes:
            raise ParleyClientError(
                "frame_too_large", f"frame of {len(data)} bytes exceeds the server's "
                f"limit of {limits.max_frame_bytes} bytes",
            )
        await slots.acquire()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        try:
            session.dispatch(Call(rid, data, future, resend))
            if limit_s is None:
                return await future
            async with asyncio.timeout(limit_s):
                return await future
        finally:
            session.calls.discard(rid)
            slots.release()


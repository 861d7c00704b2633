"""The WebSocket front door: one ``DeviceSession`` per connection.

Implements the gateway's ``SessionHandler``: decodes each text frame with the
sans-I/O codec, applies per-connection and per-user limits, runs the use case
(a task for anything that awaits), and answers with exactly one frame per
request that carries a ``rid``.  Each session is also the hub's ``DeviceSink``:
it records every pushed message in its ``InflightTracker`` and re-pushes what
stays unacknowledged (a sweeper checks deadlines once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from parley.clock import Clock
from parley.errors import ParleyError, RateLimited, Unavailable
from parley.gateway.seam import Connection
from parley.hub.hub import LocalHub
from parley.hub.presence import PresenceState
from parley.messaging.members import ConvMembers
from parley.messaging.presence import PresenceFanout
from parley.messaging.service import (
    Actor,
    MessagingService,
    SendOrder,
    SendResult,
    SendTurn,
    msg_frame,
)
from parley.metrics import Metrics
from parley.protocol import (
    Ack,
    CloseCode,
    ConvInfo,
    Convs,
    ConvsPage,
    History,
    HistoryPage,
    InflightTracker,
    Limits,
    Msg,
    Ok,
    Ping,
    Pong,
    Presence,
    Read,
    Recall,
    Reconnect,
    Send,
    Sent,
    Sync,
    SyncPage,
    TokenBucket,
    Typing,
    Welcome,
    close_code_for,
    decode_client_frame,
    encode,
    encode_error,
    salvage_rid,
)
from parley.store.messages import AppendResult, StoredMessage

__all__ = ["DeviceSession", "FrontConfig", "WebSocketFront"]

log = logging.getLogger("parley.messaging.ws")


@dataclass(frozen=True, slots=True)
class FrontConfig:
    send_rate_per_s: float = 100.0
    send_burst: float = 200.0
    user_send_rate_per_s: float = 200.0
    user_send_burst: float = 400.0
    typing_min_interval_ms: int = 1_000
    max_inflight_requests: int = 256
    repush_timeout_ms: int = 5_000
    repush_max_attempts: int = 3
    max_unacked_pushes: int = 4_096
    sweep_interval_s: float = 1.0
    repush_batch: int = 200
    page_bytes: int = 256 * 1024
    """Byte budget of one sync or history page (below the outbound bound)."""


class DeviceSession:
    """One connected device: limits, inflight pushes, running requests.

    What only some devices need is built when first needed: the inflight tracker
    at the first push, the send bucket and order at the first send, the typing
    times at the first typing frame.  Most connections sit idle, and these were
    ~400 bytes of each (a fresh tracker, bucket or order is the same as one
    built at connect: empty, full, without a previous send).
    """

    __slots__ = (
        "actor", "conn", "front", "inflight", "requests", "send_bucket", "send_order", "typing_at",
    )

    def __init__(self, front: WebSocketFront, conn: Connection) -> None:
        p = conn.principal
        self.front = front
        self.conn = conn
        self.actor = Actor(p.tenant_id, p.user_id, p.device_id)
        self.inflight: InflightTracker | None = None
        self.send_bucket: TokenBucket | None = None
        self.typing_at: dict[int, int] | None = None
        self.send_order: SendOrder | None = None
        self.requests = 0

    def tracker(self) -> InflightTracker:
        """The inflight tracker, built at the first push (then kept: pushes and acks
        alternate, and a tracker per message would be an allocation per message)."""
        inflight = self.inflight
        if inflight is None:
            cfg = self.front.config
            inflight = self.inflight = InflightTracker(
                repush_timeout_ms=cfg.repush_timeout_ms, max_attempts=cfg.repush_max_attempts,
                max_pending=cfg.max_unacked_pushes,
            )
        return inflight

    def order(self) -> SendOrder:
        """This device's send order, built at its first send."""
        order = self.send_order
        if order is None:
            order = self.send_order = SendOrder()
        return order

    # -- DeviceSink ----------------------------------------------------------------
    @property
    def tenant_id(self) -> int:
        return self.actor.tenant_id

    @property
    def user_id(self) -> int:
        return self.actor.user_id

    @property
    def device_id(self) -> str:
        return self.actor.device_id

    @property
    def session_id(self) -> str:
        return self.conn.principal.session_id

    def push_message(self, conv: int, seq: int, frame: bytes) -> None:
        if not self.tracker().pushed(conv, seq, self.front.mono_ms()):
            self.front.metrics.ws_closes.labels(str(CloseCode.SLOW_CONSUMER)).inc()
            self.conn.close(CloseCode.SLOW_CONSUMER, "too many unacknowledged messages")
            return
        self.front.pending.add(self)
        self.conn.send(frame)

    def push_event(self, frame: bytes) -> None:
        self.conn.send(frame)

    def close(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)


class WebSocketFront:
    """The gateway's SessionHandler for Parley's protocol."""

    def __init__(
        self, service: MessagingService, hub: LocalHub, limits: Limits, clock: Clock,
        metrics: Metrics, config: FrontConfig | None = None,
    ) -> None:
        self.service = service
        self.hub = hub
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.config = config or FrontConfig()
        self.sessions: dict[int, DeviceSession] = {}
        self.pending: set[DeviceSession] = set()
        self._user_buckets: dict[tuple[int, int], TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._welcome_limits = limits.welcome(recall_window_ms=service.config.recall_window_ms)
        self.presence = PresenceFanout(self._presence_audience, service.router)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.placement: Callable[[int], str | None] | None = None
        """In a cluster: the WebSocket URL of the node serving a user id, or None when
        this node serves it (set by the node; None on a single node)."""

    def mono_ms(self) -> int:
        return int(self.clock.monotonic() * 1000)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        # Kept for the per-message tasks and futures: on Python 3.11 every
        # asyncio.get_running_loop() -- inside create_task() and create_future()
        # callers -- is a getpid() system call (8% of the node's samples at
        # 4,000 msg/s, profiled with py-spy --native).
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep_forever(), name="repush-sweeper")
        self.presence.start()

    async def stop(self) -> None:
        """Stop re-pushing; let running requests finish (their commits complete)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.presence.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)

    def announce_shutdown(self, after_ms: int = 1_000) -> None:
        """Tell every client to reconnect (to another node, or to this one later);
        from now on, fire-and-forget work (presence, typing) is no longer started."""
        self._stopping = True
        frame = encode(Reconnect(reason="shutdown", after_ms=after_ms))
        for s in list(self.sessions.values()):
            s.conn.send(frame)

    def evict_moved(self) -> int:
        """Send every session whose user this node no longer serves to its new node
        (``reconnect`` frame with reason ``moved``, then close 4010); the device
        reconnects there and syncs.  Called after the cluster's slot map changed."""
        placement = self.placement
        if placement is None:
            return 0
        n = 0
        for session in list(self.sessions.values()):
            url = placement(session.user_id)
            if url is not None and not session.conn.closed:
                self._redirect(session.conn, url)
                n += 1
        return n

    def _redirect(self, conn: Connection, url: str) -> None:
        conn.send(encode(Reconnect(reason="moved", after_ms=0, url=url)))
        conn.close(CloseCode.MOVED, "moved")

    # -- SessionHandler ------------------------------------------------------------
    def on_open(self, conn: Connection) -> None:
        if self.placement is not None:
            url = self.placement(conn.principal.user_id)
            if url is not None:
                self._redirect(conn, url)
                return
        session = DeviceSession(self, conn)
        self.sessions[conn.id] = session
        try:
            replaced = self.hub.attach(session)
        except ParleyError as exc:
            conn.send(encode_error(None, exc))
            conn.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return
        if replaced is not None:
            replaced.close(CloseCode.TOO_MANY_CONNECTIONS, "replaced by a newer connection")
        self.metrics.ws_connections.set(len(self.sessions))
        a = session.actor
        conn.send(encode(Welcome(
            uid=a.user_id, device=a.device_id, server_time=self.clock.now_ms(),
            limits=self._welcome_limits,
        )))
        before, after = self.hub.presence.set(a.tenant_id, a.user_id, a.device_id, "online")
        self._presence_changed(session, before, after)

    def on_close(self, conn: Connection, code: int) -> None:
        session = self.sessions.pop(conn.id, None)
        self.metrics.ws_closes.labels(str(code)).inc()
        self.metrics.ws_connections.set(len(self.sessions))
        if session is None:
            return
        self.pending.discard(session)
        if session.inflight is not None:
            session.inflight.clear()
        if self.hub.detach(session):
            a = session.actor
            before, after = self.hub.presence.remove(a.tenant_id, a.user_id, a.device_id)
            self._presence_changed(session, before, after)
            if not self.hub.is_online(a.tenant_id, a.user_id):
                self._user_buckets.pop((a.tenant_id, a.user_id), None)

    def on_text(self, conn: Connection, data: bytes) -> None:
        session = self.sessions.get(conn.id)
        if session is None or conn.closed:
            return
        try:
            frame = decode_client_frame(data, self.limits)
        except ParleyError as exc:
            self.metrics.ws_errors.labels(exc.code).inc()
            conn.send(encode_error(salvage_rid(data, self.limits), exc))
            code = close_code_for(exc)
            if code is not None:
                conn.close(code, exc.code)
            return
        self.metrics.child(self.metrics.ws_frames_in, type(frame).__name__.lower()).inc()
        if isinstance(frame, Ack):
            self._on_ack(session, frame)
        elif isinstance(frame, Send):
            if not self._allow_send(session):
                self._error(session, frame.rid, RateLimited("sending too fast"))
                return
            order = session.order()
            if not (order.idle() and self._send_now(session, frame)):
                # Taken now, not when the task starts: a later frame of this read
                # may take the task-free path and must not overtake this one.
                turn = order.turn(self._loop)
                self._spawn(session, frame.rid, self._send(session, frame, turn), turn)
        elif isinstance(frame, Typing):
            now = self.clock.now_ms()
            typing_at = session.typing_at
            if typing_at is None:
                typing_at = session.typing_at = {}
            last = typing_at.get(frame.conv, 0)
            if now - last >= self.config.typing_min_interval_ms:
                typing_at[frame.conv] = now
                if len(typing_at) > 1024:
                    typing_at.clear()
                self._spawn(session, None, self.service.typing(session.actor, frame.conv))
        elif isinstance(frame, Ping):
            conn.send(encode(Pong(rid=frame.rid)))
        elif isinstance(frame, Presence):
            a = session.actor
            before, after = self.hub.presence.set(
                a.tenant_id, a.user_id, a.device_id, frame.status, frame.text
            )
            self._presence_changed(session, before, after)
        elif isinstance(frame, Sync):
            self._spawn(session, frame.rid, self._sync(session, frame))
        elif isinstance(frame, History):
            self._spawn(session, frame.rid, self._history(session, frame))
        elif isinstance(frame, Read):
            self._spawn(session, frame.rid, self._read(session, frame))
        elif isinstance(frame, Recall):
            self._spawn(session, frame.rid, self._recall(session, frame))
        elif isinstance(frame, Convs):
            self._spawn(session, frame.rid, self._convs(session, frame))

    # -- helpers -------------------------------------------------------------------
    def _allow_send(self, session: DeviceSession) -> bool:
        now = self.mono_ms()
        bucket = session.send_bucket
        if bucket is None:
            cfg = self.config
            bucket = session.send_bucket = TokenBucket(cfg.send_rate_per_s, cfg.send_burst)
        if not bucket.allow(now):
            return False
        key = (session.tenant_id, session.user_id)
        bucket = self._user_buckets.get(key)
        if bucket is None:
            bucket = self._user_buckets[key] = TokenBucket(
                self.config.user_send_rate_per_s, self.config.user_send_burst
            )
        return bucket.allow(now)

    def _error(self, session: DeviceSession, rid: int | None, exc: ParleyError) -> None:
        self.metrics.ws_errors.labels(exc.code).inc()
        session.conn.send(encode_error(rid, exc))

    def _spawn(
        self, session: DeviceSession, rid: int | None, coro: Coroutine[Any, Any, None],
        turn: SendTurn | None = None,
    ) -> None:
        if rid is None and self._stopping:
            coro.close()
            return
        if session.requests >= self.config.max_inflight_requests:
            coro.close()
            if turn is not None:
                turn.done()
            self._error(session, rid, RateLimited("too many requests in flight"))
            return
        session.requests += 1
        task = (self._loop or asyncio.get_running_loop()).create_task(
            self._guard(session, rid, coro)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if turn is not None:  # a task cancelled before it ran never reached the send
            task.add_done_callback(lambda _: turn.done())

    async def _guard(
        self, session: DeviceSession, rid: int | None, coro: Coroutine[Any, Any, None]
    ) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - every failure is answered (_failed)
            self._failed(session, rid, exc)
        finally:
            session.requests -= 1

    def _failed(self, session: DeviceSession, rid: int | None, exc: Exception) -> None:
        """Answer a request that raised: its own error, a retryable one when the
        database failed, else "internal" (logged)."""
        if isinstance(exc, ParleyError):
            pass
        elif isinstance(exc, (SQLAlchemyError, OSError, TimeoutError)):
            # The database failed (unreachable, connection cut): nothing was stored by
            # this request, so the client may retry -- never a non-retryable "internal".
            log.warning("request failed, database unavailable: %s", type(exc).__name__)
            exc = Unavailable("the database is unavailable; retry")
        else:
            log.error("request failed", exc_info=exc)
            exc = ParleyError("internal error")
        if rid is not None:
            self._error(session, rid, exc)

    def _presence_changed(
        self, session: DeviceSession, before: PresenceState, after: PresenceState
    ) -> None:
        if before == after or self._stopping:
            return
        a = session.actor
        self.presence.changed(a.tenant_id, a.user_id, after)

    async def _presence_audience(self, tenant_id: int, user_ids: list[int]
                                 ) -> dict[int, list[int]]:
        """Who sees each user's presence: direct peers, minus whom the user blocked."""
        peers = await self.service.conversations.direct_peers_many(tenant_id, user_ids)
        policy = self.service.policy
        if policy is not None:
            hidden = await policy.social.blocked_ids_many(tenant_id, user_ids)
            peers = {u: [p for p in ps if p not in hidden[u]] for u, ps in peers.items()}
        return peers

    # -- requests ------------------------------------------------------------------
    def _on_ack(self, session: DeviceSession, frame: Ack) -> None:
        inflight = session.inflight
        if inflight is not None:  # (without one nothing was pushed: nothing to release)
            inflight.acked(frame.conv, frame.seq, self.mono_ms())
            if not len(inflight):
                self.pending.discard(session)
        members = self.service.members.peek(session.tenant_id, frame.conv)
        if members is None or session.user_id in members:
            self.service.delivered(session.actor, frame.conv, frame.seq, members)

    async def _send(self, session: DeviceSession, f: Send, turn: SendTurn) -> None:
        started = self.clock.monotonic()
        r = await self.service.send(session.actor, f.conv, f.mid, f.kind, f.body, turn=turn)
        self._sent(session, f.rid, r, started)

    def _sent(self, session: DeviceSession, rid: int, r: SendResult, started: float) -> None:
        session.conn.send(encode(Sent(
            rid=rid, conv=r.conv, mid=r.mid, seq=r.seq, ts=r.ts, dup=r.dup
        )))
        self.metrics.send_duration.observe(self.clock.monotonic() - started)

    def _send_now(self, session: DeviceSession, f: Send) -> bool:
        """A send without a task: queued right away when the caches answer every
        check, finished by a callback on its commit.  False when it must go the
        task's way (nothing was done).

        Without the task, its two coroutines and the turn's future the node spent
        ~5% less CPU per message (112 against 117 µs at 6,000 msg/s, 1,000 users;
        docs/performance.md, profile 8).
        """
        if session.requests >= self.config.max_inflight_requests:
            return False  # (the task's way refuses it, as for every request)
        started = self.clock.monotonic()
        try:
            queued = self.service.send_now(session.actor, f.conv, f.mid, f.kind, f.body)
        except ParleyError as exc:
            self._error(session, f.rid, exc)
            return True
        if queued is None:
            return False
        session.requests += 1
        queued.result.add_done_callback(  # (not ``queued``: it holds the future)
            partial(self._committed, session, f, queued.members, queued.canonical, started)
        )
        return True

    def _committed(
        self, session: DeviceSession, f: Send, members: ConvMembers, canonical: bytes,
        started: float, fut: asyncio.Future[AppendResult],
    ) -> None:
        session.requests -= 1
        try:
            if fut.cancelled():
                raise Unavailable("the message could not be stored; retry")
            r = self.service.committed(
                session.actor, f.conv, f.mid, f.kind, canonical, members, fut.result(),
            )
        except Exception as exc:  # noqa: BLE001 - answered as a task's failure is
            self._failed(session, f.rid, exc)
            return
        self._sent(session, f.rid, r, started)

    def _fit(self, msgs: list[StoredMessage], keep_newest: bool) -> tuple[list[Msg], bool]:
        """Wire frames for a page, cut to a byte budget (a page must never trip the
        slow-consumer bound); returns them and whether any were cut."""
        budget = self.config.page_bytes
        frames = [msg_frame(m) for m in msgs]
        order = reversed(frames) if keep_newest else iter(frames)
        kept = 0
        for fr in order:
            budget -= len(fr.body) + len(fr.mid) + 96
            if budget < 0 and kept:
                break
            kept += 1
        if kept == len(frames):
            return frames, False
        return (frames[-kept:] if keep_newest else frames[:kept]), True

    async def _sync(self, session: DeviceSession, f: Sync) -> None:
        cursors = {c.conv: c.seq for c in f.cursors}
        msgs, more = await self.service.sync(session.actor, cursors, f.limit)
        frames, cut = self._fit(msgs, keep_newest=False)
        session.conn.send(encode(SyncPage(rid=f.rid, msgs=frames, more=more or cut)))

    async def _history(self, session: DeviceSession, f: History) -> None:
        msgs, more = await self.service.history(session.actor, f.conv, f.before, f.after, f.limit)
        frames, cut = self._fit(msgs, keep_newest=f.after is None)
        session.conn.send(encode(HistoryPage(
            rid=f.rid, conv=f.conv, msgs=frames, more=more or cut
        )))

    async def _read(self, session: DeviceSession, f: Read) -> None:
        seq = await self.service.mark_read(session.actor, f.conv, f.seq, skip=session)
        if f.rid is not None:
            session.conn.send(encode(Ok(rid=f.rid, seq=seq)))

    async def _recall(self, session: DeviceSession, f: Recall) -> None:
        seq = await self.service.recall(session.actor, f.conv, f.mid)
        session.conn.send(encode(Ok(rid=f.rid, seq=seq)))

    async def _convs(self, session: DeviceSession, f: Convs) -> None:
        rows, more = await self.service.conversations_page(session.actor, f.after, f.limit)
        session.conn.send(encode(ConvsPage(
            rid=f.rid, more=more, convs=[
                ConvInfo(conv=c.conversation.id, kind=c.conversation.kind,
                         last_seq=c.last_seq, read_seq=c.read_seq,
                         unread=c.unread)
                for c in rows
            ],
        )))

    # -- re-push -------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("re-push sweep failed")

    async def sweep(self) -> int:
        """Re-push what stayed unacknowledged past its deadline; returns frames re-sent."""
        now = self.mono_ms()
        sent = 0
        for session in list(self.pending):
            if session.conn.closed:
                self.pending.discard(session)
                continue
            inflight = session.tracker()  # a pending session has pushed: it has one
            due = inflight.due(now)
            if due.dropped:
                # Unresponsive for a conversation: force a reconnect, which syncs.
                self.pending.discard(session)
                session.conn.close(CloseCode.SLOW_CONSUMER, "messages left unacknowledged")
                continue
            for r in due.repush:
                # From the device's acknowledged seq, not only from the first seq
                # this session pushed: a message pushed to the device's previous
                # node while its session moved (or stored while it reconnected)
                # was never pushed here, and a device that does not sync on a gap
                # would otherwise hold everything after it until closed with 4008.
                acked = await self.service.cursors.delivery_cursor(
                    session.tenant_id, session.user_id, session.device_id, r.conv)
                first = acked + 1 if 0 < acked < r.first_seq - 1 else r.first_seq
                msgs = await self.service.messages.after(
                    session.tenant_id, r.conv, first - 1,
                    min(r.last_seq - first + 1, self.config.repush_batch),
                )
                frames = [encode(msg_frame(m)) for m in msgs]
                if frames and session.conn.send_many(frames):
                    sent += len(frames)
                    self.metrics.redeliveries.inc(len(frames))
            if not len(inflight):
                self.pending.discard(session)
        return sent


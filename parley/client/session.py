"""The client's protocol engine: frames in, state changes and frames out.

One :class:`Session` lives as long as its :class:`~parley.client.ParleyClient`
and outlives connections; each connection attempt is a :class:`Link` (the
transport's :class:`~parley.client.transport.FrameSink`).  Everything here runs
in transport callbacks on the event loop: no task per message, no awaiting.

Per connection the session goes ``DOWN`` -> ``OPEN`` (``welcome`` received; a
sync round starts) -> ``READY`` (the round finished, or paused because the
application is not reading): queued calls are (re)sent, in rid order, and the
last presence is restored.  A sync round sends ``sync`` with every known
cursor, feeds each ``sync_page`` to the :class:`~parley.client.inbox.Inbox`
and asks again while ``more`` is true (or another sync was requested
meanwhile, e.g. by a gap in pushes).

Acks are coalesced: at most one ``ack`` per conversation per flush, and
flushes are at least ``ack_interval`` seconds apart (the first after a quiet
period goes out at the end of the current loop iteration).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import Final

from parley.errors import ParleyError, UnknownFrame
from parley.protocol import (
    Ack,
    ConvsPage,
    Cursor,
    Delivered,
    ErrorFrame,
    HistoryPage,
    Msg,
    Ok,
    Pong,
    PresenceEvent,
    ReadEvent,
    Reconnect,
    Sent,
    Sync,
    SyncPage,
    TypingEvent,
    Welcome,
    decode_server_frame,
    encode,
)
from parley.protocol.frames import MAX_CURSORS

from .calls import BACKOFF, QUEUED, WIRE, Backoff, Call, Calls
from .errors import ParleyClientError
from .inbox import DELIVERED, DUPLICATE, FULL, HELD, Inbox
from .link import ClientStats, Link
from .streams import Waiters
from .transport import Transport

__all__ = ["DOWN", "OPEN", "READY", "Event", "Session"]

log = logging.getLogger("parley.client")

DOWN: Final = 0
OPEN: Final = 1
READY: Final = 2

Event = TypingEvent | PresenceEvent | ReadEvent | Delivered | ErrorFrame
"""What :meth:`ParleyClient.events` yields (``ErrorFrame``: errors with no ``rid``)."""

class Session:
    """State shared by all connections of one client (see the module docstring)."""

    def __init__(
        self, inbox: Inbox, *, echo: bool, max_events: int, ack_interval: float,
        sync_page: int, backoff: Backoff, rng: random.Random,
    ) -> None:
        self.inbox = inbox
        self.calls = Calls()
        self.stats = ClientStats()
        self.link: Link | None = None
        self.transport: Transport | None = None
        self.state = DOWN
        self.welcome: Welcome | None = None
        self.skew_ms = 0
        self.finished = False
        self.error: ParleyClientError | None = None
        self.reconnect_hint: Reconnect | None = None
        self.presence: bytes | None = None
        self.last_close: tuple[int, str] | None = None
        """(code, reason) of the last connection that ended."""
        self.sync_limit = sync_page
        self.sync_cut = False
        """Whether the last connection dropped while a sync page was awaited."""
        self.connected = asyncio.Event()
        self.synced = asyncio.Event()
        self._echo = echo
        self._default_page = sync_page
        self._backoff = backoff
        self._rng = rng
        self._events: deque[Event] = deque()
        self._max_events = max_events
        self._msg_waiters = Waiters()
        self._event_waiters = Waiters()
        self._sync_rid: int | None = None
        self._sync_errors = 0
        self._resync = False
        self._sync_paused = False
        self._ack_interval = ack_interval
        self._ack_handle: asyncio.Handle | None = None
        self._last_ack = 0.0

    # -- frames in -----------------------------------------------------------------
    def on_text(self, data: bytes) -> None:
        """Handle one server frame (undecodable or unknown frames are counted and skipped)."""
        try:
            frame = decode_server_frame(data)
        except UnknownFrame:
            self.stats.unknown_frames += 1
            return
        except ParleyError as exc:
            self.stats.unknown_frames += 1
            log.warning("skipping an undecodable frame from the server: %s", exc)
            return
        if type(frame) is Msg:
            self._on_push(frame)
        elif isinstance(frame, Sent | Ok | HistoryPage | ConvsPage | Pong):
            self._answer(frame.rid, frame)
        elif isinstance(frame, SyncPage):
            self._on_sync_page(frame)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, Welcome):
            self._on_welcome(frame)
        elif isinstance(frame, Reconnect):
            self.reconnect_hint = frame
        elif isinstance(frame, TypingEvent | PresenceEvent | ReadEvent | Delivered):
            self._event(frame)

    def _on_push(self, msg: Msg) -> None:
        self.stats.pushed += 1
        verdict = self.inbox.push(msg)
        if verdict == DELIVERED:
            if self._msg_waiters:
                self._msg_waiters.wake()
        elif verdict == DUPLICATE:
            self.stats.duplicates += 1
        elif verdict == HELD:
            self.stats.held += 1
            self.request_sync()
        elif verdict == FULL:
            self.stats.overflowed += 1
        if self._ack_handle is None and self.inbox.acks:
            self._schedule_acks()

    def _answer(self, rid: int | None, frame: Sent | Ok | HistoryPage | ConvsPage | Pong) -> None:
        call = self.calls.get(rid) if rid is not None else None
        if call is not None:
            self.calls.discard(call.rid)
            if not call.future.done():
                call.future.set_result(frame)

    def _on_error(self, f: ErrorFrame) -> None:
        if f.rid is None:
            self._event(f)
            return
        if f.rid == self._sync_rid:
            self._sync_failed(f)
            return
        call = self.calls.get(f.rid)
        if call is None:
            return
        if f.retryable:
            self.stats.retries += 1
            call.state = BACKOFF
            delay = self._backoff.delay(call.attempts, self._rng.random())
            call.attempts += 1
            call.timer = asyncio.get_running_loop().call_later(delay, self._retry, call)
            return
        self.calls.discard(call.rid)
        if not call.future.done():
            call.future.set_exception(ParleyClientError(f.code, f.message))

    def _on_welcome(self, w: Welcome) -> None:
        self.welcome = w
        self.skew_ms = w.server_time - int(time.time() * 1000)
        self.inbox.echo_prefix = None if self._echo else f"1.{w.uid}.{w.device}."
        self.state = OPEN
        self.reconnect_hint = None
        self.connected.set()
        link = self.link
        if link is not None and not link.welcome.done():
            link.welcome.set_result(w)
        if self.inbox.acks:
            self._schedule_acks()
        self.request_sync()

    def _event(self, frame: Event) -> None:
        events = self._events
        if len(events) >= self._max_events:
            events.popleft()
            self.stats.events_dropped += 1
        events.append(frame)
        if self._event_waiters:
            self._event_waiters.wake()

    # -- sync ------------------------------------------------------------------------
    def request_sync(self) -> None:
        """Start a sync round now, or right after the running one; no-op while down."""
        transport = self.transport
        if self.state == DOWN or transport is None or self.welcome is None:
            return
        if self._sync_rid is not None:
            self._resync = True
            return
        room = self.inbox.room
        if room <= 0:
            self._sync_paused = True
            self._become_ready()
            return
        self.synced.clear()
        self._sync_rid = rid = self.calls.next_rid()
        cursors = self.inbox.cursors
        items: Iterable[tuple[int, int]] = cursors.items()
        if len(cursors) > MAX_CURSORS:  # the rest resume from the server's stored cursors
            items = list(items)[-MAX_CURSORS:]
        limit = max(1, min(self.sync_limit, self.welcome.limits.sync_page_max, room))
        transport.send(encode(Sync(rid=rid, cursors=[Cursor(c, s) for c, s in items], limit=limit)))
        self.stats.syncs += 1

    def _on_sync_page(self, page: SyncPage) -> None:
        if page.rid != self._sync_rid:
            return
        self._sync_rid = None
        self._sync_errors = 0
        synced = self.inbox.synced
        full = False
        delivered = 0
        for msg in page.msgs:
            verdict = synced(msg)
            if verdict == DELIVERED:
                delivered += 1
            elif verdict == FULL:
                full = True
                break
        self.stats.synced += delivered
        if delivered and self._msg_waiters:
            self._msg_waiters.wake()
        if self._ack_handle is None and self.inbox.acks:
            self._schedule_acks()
        self.sync_limit = min(self._default_page, self.sync_limit * 2)
        if full or (page.more and self.inbox.room <= 0):
            self._sync_paused = True
            self._become_ready()
        elif page.more or self._resync:
            self._resync = False
            self.request_sync()
        else:
            self._become_ready()
            self.synced.set()

    def _sync_failed(self, f: ErrorFrame) -> None:
        self._sync_rid = None
        if f.retryable:
            delay = self._backoff.delay(self._sync_errors, self._rng.random())
            self._sync_errors += 1
            asyncio.get_running_loop().call_later(delay, self.request_sync)
            return
        log.error("sync refused by the server: %s %s", f.code, f.message)
        self._event(f)
        self._become_ready()

    def resume_if_drained(self) -> None:
        """The application read: once half the queue is free, fetch what was refused."""
        inbox = self.inbox
        if (self._sync_paused or inbox.backlogged) and 2 * inbox.room >= inbox.capacity:
            self._sync_paused = False
            inbox.backlogged = False
            self.request_sync()

    # -- calls -------------------------------------------------------------------------
    def dispatch(self, call: Call) -> None:
        """Track ``call`` and write it now if the session is ready (else when it becomes so)."""
        self.calls.add(call)
        if self.state == READY and self.transport is not None:
            self.transport.send(call.frame)
            call.state = WIRE

    def send_now(self, data: bytes) -> bool:
        """Write a fire-and-forget frame if connected (welcome received; the first
        sync need not be finished); False (dropped) otherwise."""
        if self.state == DOWN or self.transport is None:
            return False
        self.transport.send(data)
        return True

    def _retry(self, call: Call) -> None:
        call.timer = None
        if self.calls.get(call.rid) is not call:
            return
        call.state = QUEUED
        if self.state == READY and self.transport is not None:
            self.transport.send(call.frame)
            call.state = WIRE

    def _become_ready(self) -> None:
        transport = self.transport
        if self.state != OPEN or transport is None:
            return
        self.state = READY
        for call in self.calls.queued():
            transport.send(call.frame)
            call.state = WIRE
        if self.presence is not None:
            transport.send(self.presence)

    # -- acks --------------------------------------------------------------------------
    def _schedule_acks(self) -> None:
        if self._ack_handle is not None or self.state == DOWN:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_ack + self._ack_interval - loop.time()
        if delay <= 0:
            self._ack_handle = loop.call_soon(self.flush_acks)
        else:
            self._ack_handle = loop.call_later(delay, self.flush_acks)

    def flush_acks(self) -> None:
        """Send the pending cumulative acks now (one frame per conversation)."""
        self._ack_handle = None
        transport = self.transport
        if transport is None or self.state == DOWN or not self.inbox.acks:
            return
        self._last_ack = asyncio.get_running_loop().time()
        acks = self.inbox.take_acks()
        for conv, seq in acks.items():
            transport.send(encode(Ack(conv=conv, seq=seq)))
        self.stats.acks_sent += len(acks)

    # -- connection and end ----------------------------------------------------------
    def detach(self, code: int, reason: str) -> None:
        """The current connection is gone: requeue what can be repeated, keep cursors/acks."""
        self.last_close = (code, reason)
        self.sync_cut = self._sync_rid is not None
        self.transport = None
        self.state = DOWN
        self.connected.clear()
        self.synced.clear()
        if self._ack_handle is not None:
            self._ack_handle.cancel()
            self._ack_handle = None
        self._sync_rid = None
        self._resync = False
        self._sync_paused = False
        before = sum(1 for _ in self.calls.queued())
        self.calls.connection_lost()
        self.stats.resent += sum(1 for _ in self.calls.queued()) - before

    def finish(self, error: ParleyClientError | None, closed: ParleyClientError) -> None:
        """The client is done: fail every call (with ``error`` or ``closed``), end streams."""
        if self.finished:
            return
        self.finished = True
        self.error = error
        if self._ack_handle is not None:
            self._ack_handle.cancel()
            self._ack_handle = None
        self.calls.fail_all(error or closed)
        self._msg_waiters.wake()
        self._event_waiters.wake()

    # -- application side ---------------------------------------------------------
    async def next_message(self) -> Msg:
        """The next message in order; StopAsyncIteration once finished and drained
        (or the fatal error, if one ended the client)."""
        while True:
            msg = self.inbox.pop()
            if msg is not None:
                if self._sync_paused or self.inbox.backlogged:
                    self.resume_if_drained()
                return msg
            await self._wait(self._msg_waiters)

    async def next_event(self) -> Event:
        """The next event; StopAsyncIteration (or the fatal error) once finished and drained."""
        while True:
            if self._events:
                return self._events.popleft()
            await self._wait(self._event_waiters)

    async def _wait(self, waiters: Waiters) -> None:
        if self.finished:
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        await waiters.wait()

"""Opening, re-opening and closing the client's connections.

One supervisor task per client (started by the first successful ``connect``)
waits for the current connection to end and decides what next:

* the owner called ``close()`` -> stop;
* a fatal close (4001, 4009, protocol errors) or ``reconnect=False`` -> end the
  client with that error;
* otherwise wait — the ``reconnect`` frame's ``after_ms`` plus 0..1 s, else
  exponential backoff with jitter (30..60 s after 4029) — then open a new
  connection (to the ``reconnect`` frame's ``url`` if it gave one).  A
  refused upgrade that is not retryable (401, 403, 404...) ends the client;
  network errors and 503 are retried forever.

``close()`` cancels the supervisor wherever it is.  A connection attempt
cancelled half-way is marked abandoned: picows may still finish its handshake
in the background (it shields it), and the link then aborts the socket at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from parley.protocol import CloseCode

from .calls import Backoff
from .errors import (
    ClientClosed,
    ConnectionFailed,
    ConnectionLost,
    HandshakeRejected,
    ParleyClientError,
    SessionEnded,
)
from .link import Link, close_outcome
from .session import Session
from .transport import ABNORMAL, open_websocket

__all__ = ["Lifecycle", "TokenSource", "resolve_token", "with_device"]

log = logging.getLogger("parley.client")

TokenSource = str | Callable[[], str | Awaitable[str]]
"""A bearer token, or a function returning one (called before every connection)."""


class Lifecycle:
    """Connection management for one client (see the module docstring)."""

    def __init__(
        self, session: Session, urls: Sequence[str], token: TokenSource, device_id: str, *,
        reconnect: bool, backoff: Backoff, rng: random.Random, connect_timeout: float,
        close_timeout: float, ping_interval: float | None, max_frame_bytes: int,
        on_finish: Callable[[ParleyClientError | None], None],
    ) -> None:
        self._session = session
        if not urls:
            raise ValueError("at least one url")
        self._seeds = list(urls)
        self._seed = 0
        self._url = self._seeds[0]
        self._token = token
        self._device = device_id
        self._reconnect = reconnect
        self._backoff = backoff
        self._rng = rng
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._max_frame = max_frame_bytes
        self._on_finish = on_finish
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()

    async def connect(self) -> None:
        if self._supervisor is not None or self._closing or self._session.finished:
            raise RuntimeError("connect() may succeed only once per client")
        link = await self._open()
        if self._closing:  # close() ran meanwhile
            link.abandoned = True
            if link.transport is not None:
                link.transport.abort()
            raise ClientClosed("the client was closed while connecting")
        self._supervisor = asyncio.create_task(
            self._supervise(link), name=f"parley-client-{self._device}"
        )

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        self._session.flush_acks()
        task = self._supervisor
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_link()
        self._finish(None)

    def _finish(self, error: ParleyClientError | None) -> None:
        self._stop.set()
        if not self._session.finished:
            self._on_finish(error)

    async def _close_link(self) -> None:
        link = self._session.link
        if link is None or link.transport is None or link.closed.done():
            return
        link.transport.close(CloseCode.NORMAL)
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(link.closed)
        except TimeoutError:
            link.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(link.closed)

    async def _open(self) -> Link:
        """Open a connection and wait for its ``welcome``, following cluster
        redirects (a ``reconnect`` frame with reason ``moved``, then close 4010);
        raise on any failure.  A failure on a redirected address sends the next
        attempt back to the address the client started from, which knows where the
        user lives now (the node it was sent to may be gone); a failure on a start
        address moves on to the next one, each tried once per call."""
        seeds_failed = 0
        for _ in range(MAX_REDIRECTS + len(self._seeds)):
            try:
                return await self._open_once()
            except ConnectionFailed:
                hint = self._session.reconnect_hint
                self._session.reconnect_hint = None
                if hint is not None and hint.reason == "moved" and hint.url:
                    self._url = with_device(hint.url, self._device)
                    continue
                if self._url in self._seeds:  # a start address failed: try the next one
                    self._seed = (self._seed + 1) % len(self._seeds)
                    self._url = self._seeds[self._seed]
                    seeds_failed += 1
                    if seeds_failed >= len(self._seeds):
                        raise
                    continue
                log.info("parley client %s: %s unreachable, back to %s",
                         self._device, self._url, self._seeds[self._seed])
                self._url = self._seeds[self._seed]
        self._url = self._seeds[self._seed]
        raise ConnectionFailed(f"redirected more than {MAX_REDIRECTS} times")

    async def _open_once(self) -> Link:
        session = self._session
        token = await resolve_token(self._token)
        link = Link(session)
        session.link = link
        try:
            await open_websocket(
                self._url, {"Authorization": f"Bearer {token}"}, link,
                connect_timeout=self._connect_timeout, max_message=self._max_frame,
                ping_interval=self._ping_interval,
            )
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.shield(link.welcome)
        except BaseException as exc:
            link.abandoned = True
            if session.link is link:
                session.link = None
                if not link.closed.done():  # else on_closed has detached, with its code
                    session.detach(ABNORMAL, "connection attempt abandoned")
            if link.transport is not None:
                link.transport.abort()
            if not link.welcome.done():
                link.welcome.cancel()
            elif not link.welcome.cancelled():
                link.welcome.exception()  # retrieved: it is re-raised below or superseded
            if isinstance(exc, TimeoutError):
                raise ConnectionFailed("the server sent no welcome in time") from None
            raise
        return link

    async def _supervise(self, link: Link) -> None:
        try:
            await self._reconnect_forever(link)
        except Exception as exc:  # a bug here must end the client visibly, not hang it
            log.exception("parley client %s supervisor failed", self._device)
            self._finish(ParleyClientError("internal", f"client supervisor failed: {exc!r}"))

    async def _reconnect_forever(self, link: Link) -> None:
        session = self._session
        attempt = 0
        while True:
            # shielded: cancelling the supervisor (close()) must not cancel the link's future
            code, reason = await asyncio.shield(link.closed)
            if self._closing:
                return
            fatal: ParleyClientError | None = close_outcome(code, reason)
            if fatal is None and not self._reconnect:
                fatal = ConnectionLost(f"the connection closed ({code} {reason!r})")
            if fatal is not None:
                log.warning("parley client %s stops: %s", self._device, fatal)
                self._finish(fatal)
                return
            if code == CloseCode.SLOW_CONSUMER and session.sync_cut:
                session.sync_limit = max(1, session.sync_limit // 2)
            hint = session.reconnect_hint
            session.reconnect_hint = None
            if hint is not None:  # docs/protocol.md 17: after_ms plus 0..1 s of jitter
                delay = hint.after_ms / 1000 + self._rng.random()
                if hint.url:
                    self._url = with_device(hint.url, self._device)
            elif code == CloseCode.RATE_LIMITED:  # docs/protocol.md 19: at least 30 s
                delay = 30.0 * (1 + self._rng.random())
            else:
                delay = self._backoff.delay(attempt, self._rng.random())
            log.info("parley client %s disconnected (%d); reconnecting in %.2fs",
                     self._device, code, delay)
            while True:
                if await self._sleep(delay):
                    return
                attempt += 1
                try:
                    link = await self._open()
                except (HandshakeRejected, SessionEnded) as exc:
                    if not exc.retryable:
                        self._finish(exc)
                        return
                    log.info("reconnect refused: %s", exc)
                except ConnectionFailed as exc:
                    log.info("reconnect failed: %s", exc)
                except Exception:  # e.g. the token function failed: retry later
                    log.exception("parley client %s: reconnect attempt failed", self._device)
                else:
                    session.stats.reconnects += 1
                    attempt = 0
                    break
                delay = self._backoff.delay(attempt, self._rng.random())

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless closing first; True if closing."""
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            pass
        return self._closing or self._session.finished


MAX_REDIRECTS: Final = 5
"""Redirects followed in one connection attempt (a map change mid-attempt costs one)."""


def with_device(url: str, device_id: str) -> str:
    """``url`` with its ``device`` query parameter set to ``device_id``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "device"]
    query.append(("device", device_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def resolve_token(source: TokenSource) -> str:
    """The token itself, or what the token function returns (awaited if needed)."""
    if isinstance(source, str):
        return source
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return str(value)

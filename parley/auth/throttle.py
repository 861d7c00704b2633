"""Login throttling: failed attempts per account and per client address.

A sliding window counts failures (a wrong password, an unknown user) by key.
Once a key reached its limit within the window, further attempts are refused
*before* any password is checked, until the oldest failure leaves the window;
``Throttled.retry_after_s`` says when.  Success does not count (and does not
reset the window: an attacker who also knows the password gains nothing).

In memory and per process (bounded: at most ``max_keys`` keys, expired ones
dropped first).  The client address is the TCP peer; behind a proxy it is the
proxy's unless the proxy is configured to pass the real one.
"""

from __future__ import annotations

import math
from collections import deque

from parley.clock import Clock
from parley.errors import RateLimited

__all__ = ["LoginThrottle", "SlidingWindow", "Throttled"]


class Throttled(RateLimited):
    """Too many failed logins; retry later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("too many failed attempts; retry later")
        self.retry_after_s = retry_after_s


class SlidingWindow:
    """At most ``limit`` events per key within ``window_s`` seconds."""

    def __init__(
        self, clock: Clock, *, limit: int, window_s: float, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may act again (0: now)."""
        events = self._events.get(key)
        if not events:
            return 0.0
        now = self._clock.monotonic()
        self._expire(events, now)
        if len(events) < self.limit:
            if not events:
                del self._events[key]
            return 0.0
        return events[0] + self.window_s - now

    def hit(self, key: str) -> None:
        now = self._clock.monotonic()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._shrink(now)
            events = self._events[key] = deque(maxlen=self.limit)
        self._expire(events, now)
        events.append(now)

    def _expire(self, events: deque[float], now: float) -> None:
        while events and events[0] + self.window_s <= now:
            events.popleft()

    def _shrink(self, now: float) -> None:
        for key in list(self._events):
            events = self._events[key]
            self._expire(events, now)
            if not events:
                del self._events[key]
        while len(self._events) >= self.max_keys:  # still full: forget the oldest keys
            del self._events[next(iter(self._events))]


class LoginThrottle:
    def __init__(
        self, clock: Clock, *, per_account: int, per_address: int, window_s: float
    ) -> None:
        self.accounts = SlidingWindow(clock, limit=per_account, window_s=window_s)
        self.addresses = SlidingWindow(clock, limit=per_address, window_s=window_s)

    @staticmethod
    def account_key(tenant: str, username: str) -> str:
        return f"{tenant}\x00{username.casefold()}"

    def check(self, account: str, address: str) -> None:
        """Raise Throttled if either key has used up its failures."""
        wait = max(self.accounts.retry_after(account), self.addresses.retry_after(address))
        if wait > 0:
            raise Throttled(max(1, math.ceil(wait)))

    def failed(self, account: str, address: str) -> None:
        self.accounts.hit(account)
        self.addresses.hit(address)

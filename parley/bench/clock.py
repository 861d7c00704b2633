"""A wake-up at an exact monotonic time, for the load worker's open-loop schedule.

Why not ``loop.call_later``: libuv counts timers in whole milliseconds and
uvloop runs a delay under 0.5 ms on the next loop iteration, so a worker that
sleeps until each send is due either wakes up to a millisecond late (measured:
0.6-0.8 ms at p50 at 1,000 sends/s, as much as the server's whole
send->deliver time at that rate) or spins.  On Linux a ``timerfd`` armed with
an absolute ``CLOCK_MONOTONIC`` deadline (the clock of ``time.monotonic_ns``)
and watched by the loop like a socket wakes the worker within tens of
microseconds, and it sleeps in between.  The process's timer slack (50 µs by
default) is lowered to 1 µs for the same reason.

``os.timerfd_create`` exists from Python 3.13; on 3.11-3.12 the same two
system calls go through ``ctypes`` (no maintained package wraps them).  Where
neither exists (macOS, Windows) :func:`precise_timer` returns None and the
schedule falls back to loop timers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["PreciseTimer", "precise_timer"]

_CLOCK_MONOTONIC: Final = 1
_TFD_TIMER_ABSTIME: Final = 1
_TFD_NONBLOCK: Final = os.O_NONBLOCK
_TFD_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_PR_SET_TIMERSLACK: Final = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


class PreciseTimer:
    """One ``timerfd`` on the running loop: ``at(when_ns)`` (re)arms it, and the
    loop calls ``callback`` once the deadline has passed.  One deadline at a time;
    ``close`` releases the descriptor."""

    __slots__ = ("_arm", "_callback", "_fd", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None],
                 fd: int, arm: Callable[[int, int], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._fd = fd
        self._arm = arm
        loop.add_reader(fd, self._fired)

    def at(self, when_ns: int) -> None:
        """Wake at ``when_ns`` (``time.monotonic_ns``); a deadline already past
        fires on the loop's next turn."""
        self._arm(self._fd, max(when_ns, 1))

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; reading re-arms the readiness
        except BlockingIOError:  # re-armed after it became readable
            return
        self._callback()


def precise_timer(loop: asyncio.AbstractEventLoop,
                  callback: Callable[[], None]) -> PreciseTimer | None:
    """A :class:`PreciseTimer` on ``loop``, or None where timerfd is unavailable."""
    flags = _TFD_NONBLOCK | _TFD_CLOEXEC
    create = getattr(os, "timerfd_create", None)
    if create is not None:  # Python >= 3.13
        settime = os.timerfd_settime_ns  # type: ignore[attr-defined,unused-ignore]

        def arm_os(fd: int, when_ns: int) -> None:
            settime(fd, flags=_TFD_TIMER_ABSTIME, initial=when_ns)

        _lower_slack(_libc())
        return PreciseTimer(loop, callback, create(_CLOCK_MONOTONIC, flags=flags), arm_os)
    libc = _libc()
    if libc is None or not hasattr(libc, "timerfd_create"):
        return None
    fd = libc.timerfd_create(_CLOCK_MONOTONIC, flags)
    if fd < 0:
        return None
    settime_c = libc.timerfd_settime
    settime_c.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                          ctypes.c_void_p]
    spec = _Itimerspec()
    ref = ctypes.byref(spec)

    def arm_c(fd: int, when_ns: int) -> None:
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(when_ns, 1_000_000_000)
        if settime_c(fd, _TFD_TIMER_ABSTIME, ref, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    _lower_slack(libc)
    return PreciseTimer(loop, callback, fd, arm_c)


def _lower_slack(libc: ctypes.CDLL | None) -> None:
    """1 µs of timer slack for this process (best effort: the default is 50 µs)."""
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1000), 0, 0, 0)

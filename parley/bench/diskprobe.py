"""A disk-flush probe: how long the disk under the database takes to make 8 KiB
durable, measured beside a run.

Every acknowledged message waits for a WAL flush (``fdatasync``), so a disk that
stalls its flushes stalls every send in flight, whatever the server does.  On
this project's VM (28-29 November 2026) the light-load runs' tails were such
stalls: a probe flushing a file on PostgreSQL's disk every 10 ms saw
``fdatasync`` take 80-207 ms in the very seconds where the node's commits took
100-230 ms, while PostgreSQL logged no statement over 40 ms and neither the
node's nor the load client's event loop lagged over 40 ms (docs/performance.md).
At rest the same probe saw p50 0.28 ms, max 5 ms.

``parley bench ... --disk-probe DIR`` runs one for the whole run: the longest
flush of each second goes into the time series (``disk_flush_max_ms``), the
distribution and every flush over ``stall_ms`` into the result's
``disk_probe``.  Put ``DIR`` on the database's disk (for PostgreSQL, its data
directory's filesystem).  The probe's own load is one 8 KiB write and flush per
``interval_s``: ~0.8 MB/s and 100 flushes/s at the default.

The flushes run in a thread: ``fdatasync`` releases the GIL, and the thread
touches nothing of the coordinator's but this object (under a lock).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from hdrh.histogram import HdrHistogram

__all__ = ["DiskProbe"]

_BLOCK: Final = b"\xa5" * 8192
_SLOTS: Final = 64
"""The probe rewrites 64 blocks in turn (a 512 KiB file), never growing it."""
_MAX_STALLS: Final = 200
"""Stalls kept for the result (the histogram counts them all)."""

_flush = getattr(os, "fdatasync", os.fsync)  # macOS and Windows: fsync


class DiskProbe:
    """Writes and flushes 8 KiB in ``directory`` every ``interval_s`` while started."""

    def __init__(self, directory: Path, *, interval_s: float = 0.01, stall_ms: float = 20.0,
                 t0: float | None = None) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.stall_ms = stall_ms
        self.t0 = time.monotonic() if t0 is None else t0
        """Stalls are reported in seconds from this ``time.monotonic()`` value."""
        self.error: str | None = None
        """Why the probe stopped early (e.g. the disk filled up), else None."""
        self._hist = HdrHistogram(1, 600_000_000, 3)  # microseconds, up to 10 minutes
        self._stalls: list[tuple[float, float]] = []
        self._over = 0
        self._tick_max_us = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._path: str | None = None

    def start(self) -> None:
        """Create the probe's file (raises OSError if ``directory`` is not writable)
        and start flushing."""
        fd, path = tempfile.mkstemp(prefix=".parley-disk-probe-", dir=self.directory)
        self._fd, self._path = fd, path
        self._thread = threading.Thread(target=self._run, name="parley-disk-probe",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop flushing and remove the file (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    def _run(self) -> None:
        fd, n = self._fd, 0
        try:
            while not self._stop.is_set():
                t = time.perf_counter()
                os.pwrite(fd, _BLOCK, (n % _SLOTS) * len(_BLOCK))
                _flush(fd)
                us = max(1, round((time.perf_counter() - t) * 1e6))
                n += 1
                with self._lock:
                    self._hist.record_value(us)
                    if us > self._tick_max_us:
                        self._tick_max_us = us
                    if us >= self.stall_ms * 1000:
                        self._over += 1
                        if len(self._stalls) < _MAX_STALLS:
                            self._stalls.append((time.monotonic() - self.t0, us / 1000))
                self._stop.wait(self.interval_s)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc.strerror or exc}"

    def take_max_ms(self) -> float | None:
        """The longest flush since the last call, in ms (None: none finished)."""
        with self._lock:
            us, self._tick_max_us = self._tick_max_us, 0
        return us / 1000 if us else None

    def summary(self) -> dict[str, Any]:
        """Flush latency over the probe's life (ms) and the flushes over ``stall_ms``."""
        from parley.bench.coordinator import percentiles  # (the coordinator imports us)

        with self._lock:
            out: dict[str, Any] = {
                "dir": str(self.directory), "interval_s": self.interval_s,
                "stall_ms": self.stall_ms, "over_stall": self._over,
                "stalls": [{"t": round(t, 3), "ms": round(ms, 1)} for t, ms in self._stalls],
                **percentiles(self._hist),
            }
        if self.error is not None:
            out["error"] = self.error
        return out

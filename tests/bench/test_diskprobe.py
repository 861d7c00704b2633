"""The disk-flush probe on a real file system: flushes, per-second maxima, summary, cleanup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from parley.bench.diskprobe import DiskProbe


def _wait_for(probe: DiskProbe, flushes: int, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while probe.summary()["count"] < flushes:
        assert time.monotonic() < deadline, "the probe did not flush in time"
        time.sleep(0.01)


def test_probe_flushes_reports_and_cleans_up(tmp_path: Path) -> None:
    probe = DiskProbe(tmp_path, interval_s=0.001, stall_ms=0.001)
    probe.start()
    try:
        files = list(tmp_path.iterdir())
        assert len(files) == 1 and files[0].name.startswith(".parley-disk-probe-")
        _wait_for(probe, 5)
    finally:
        probe.stop()
    assert list(tmp_path.iterdir()) == []
    s = probe.summary()
    assert s["count"] >= 5 and "error" not in s
    assert 0 < s["p50"] <= s["p99"] <= s["max"]
    # every flush takes at least a microsecond, so each is over a 1 µs stall bound
    # (the result keeps the first 200 stalls; a slow machine may flush more first)
    assert s["over_stall"] == s["count"]
    assert len(s["stalls"]) == min(s["count"], 200)
    assert all(st["t"] >= 0 and st["ms"] > 0 for st in s["stalls"])
    assert probe.take_max_ms() == pytest.approx(s["max"], rel=0.01)
    assert probe.take_max_ms() is None  # taken: nothing new since
    probe.stop()  # idempotent


def test_probe_needs_a_writable_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        DiskProbe(tmp_path / "missing").start()

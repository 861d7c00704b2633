"""The bench's reading of how busy the whole machine was over a run (``/proc/stat``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from parley.bench.stats import CpuTimes, machine_busy, machine_cpu

TCK = os.sysconf("SC_CLK_TCK")


def _stat(tmp: Path, user: int, system: int, idle: int, iowait: int, steal: int) -> str:
    """A /proc/stat head line (ticks): user nice system idle iowait irq softirq steal ..."""
    p = tmp / "stat"
    p.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\ncpu0 1 2 3 4\n")
    return str(p)


def test_the_window_is_the_difference_in_cores_and_shares(tmp_path: Path) -> None:
    a = machine_cpu(_stat(tmp_path, 100 * TCK, 50 * TCK, 1000 * TCK, 10 * TCK, 0))
    # 10 s on 2 cores = 20 s of CPU: 15 busy, 3 idle, 1 iowait, 1 steal.
    b = machine_cpu(_stat(tmp_path, 110 * TCK, 55 * TCK, 1003 * TCK, 11 * TCK, 1 * TCK))
    assert a is not None and b is not None
    assert b.total_s - a.total_s == pytest.approx(20.0)
    assert machine_busy(a, b, cores=2) == {"busy_cores": 1.5, "busy_pct": 75.0,
                                           "iowait_pct": 5.0, "steal_pct": 5.0}


def test_no_reading_or_no_time_gives_nothing(tmp_path: Path) -> None:
    assert machine_cpu(str(tmp_path / "missing")) is None
    (tmp_path / "bad").write_text("intr 1 2 3\n")
    assert machine_cpu(str(tmp_path / "bad")) is None
    t = CpuTimes(1.0, 2.0, 0.0, 0.0)
    assert machine_busy(None, t) is None and machine_busy(t, None) is None
    assert machine_busy(t, t) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_this_machine_busy_while_this_process_spins() -> None:
    before = machine_cpu()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of this process's CPU, at least
        pass
    got = machine_busy(before, machine_cpu())
    assert got is not None
    # This process alone kept one core busy through most of the window.
    assert 0.3 <= got["busy_cores"] <= (os.cpu_count() or 1), got

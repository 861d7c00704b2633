"""Run ``parley`` as a real subprocess, the way an operator does."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PARLEY = [sys.executable, "-m", "parley"]
SERVING = re.compile(r"serving on http://[^:]+:(\d+)")


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PARLEY, *args], capture_output=True, text=True, timeout=timeout, input=stdin,
        env={**os.environ, **(env or {})},
    )


class NodeProcess:
    """A ``parley serve`` subprocess; ``start`` waits (with a deadline) for its serving line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.port = 0
        self._reader = threading.Thread()

    def start(self, deadline_s: float = 60) -> NodeProcess:
        self.proc = subprocess.Popen(
            [*PARLEY, "serve", *self.args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=self.env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._reader.start()
        end = time.monotonic() + deadline_s
        while (left := end - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            m = SERVING.search(line)
            if m:
                self.port = int(m.group(1))
                return self
        self.proc.kill()
        self.wait()
        raise AssertionError("node did not start:\n" + self.text)

    def _pump(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to end; collect its output; return its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    @property
    def text(self) -> str:
        return "".join(self.output)


def data_dir(tmp: Path) -> str:
    return str(tmp / "data")

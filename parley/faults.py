"""Failpoints: named places where a test can make the process die on purpose.

Enabled only through the environment (``PARLEY_FAILPOINTS=name[,name...]``),
read once at start.  With the variable unset — always, in production — a
failpoint costs one set lookup.  Used by the crash tests to kill the node at
the one moment that matters (between a commit and its acknowledgement), which
a signal sent from outside could only hit by luck.

Known failpoints:

* ``after-commit``: SIGKILL the process right after a message batch commits,
  before any waiter is resolved (so no ``sent`` ack leaves).
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]

_ENABLED = frozenset(p for p in os.environ.get("PARLEY_FAILPOINTS", "").split(",") if p)


def failpoint(name: str) -> None:
    """Die with SIGKILL here if failpoint ``name`` is enabled."""
    if name in _ENABLED:
        os.kill(os.getpid(), signal.SIGKILL)

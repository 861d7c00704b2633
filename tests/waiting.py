"""Polling with a deadline, for conditions no event announces (a counter in another
object, a process's state).  Raises TimeoutError with the condition's description."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], timeout: float = 10.0,
                what: str = "condition", interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # nothing announces it: polled, with a deadline
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)

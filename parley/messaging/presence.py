"""Presence fan-out in batches.

A device connecting or leaving, or setting its status, may change what its user's
peers see.  Pushing that needs the user's audience (who shares a direct
conversation with them, minus whom they blocked) from the database; one query per
change turns a reconnect storm (a node restart, a rebalance, a load test) into
thousands of queries queued on the connection pool.  ``PresenceFanout`` keeps the
latest state per user and a single task pushes the changes in batches, one pair
of queries per batch and tenant.

Best effort, as presence is in the protocol: a batch whose queries fail is
dropped (logged); states changed meanwhile are pushed by the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from parley.hub.presence import PresenceState
from parley.hub.router import Router
from parley.protocol import PresenceEvent, encode

__all__ = ["Audience", "PresenceFanout"]

log = logging.getLogger("parley.messaging.presence")

Audience = Callable[[int, list[int]], Awaitable[dict[int, list[int]]]]
"""(tenant, users) -> for each user, who may see their presence."""


class PresenceFanout:
    def __init__(self, audience: Audience, router: Router, *, batch: int = 1000) -> None:
        self._audience = audience
        self._router = router
        self._batch = batch
        self._dirty: dict[tuple[int, int], PresenceState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pushed = 0

    def changed(self, tenant_id: int, user_id: int, state: PresenceState) -> None:
        """The user's aggregate presence is now ``state`` (the latest call wins)."""
        self._dirty[(tenant_id, user_id)] = state
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="presence-fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def flush(self) -> None:
        """Push everything pending now (tests and shutdown)."""
        while self._dirty:
            await self._push_batch()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                try:
                    await self._push_batch()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - presence is best effort
                    log.warning("presence batch dropped: %s: %s", type(exc).__name__, exc)

    async def _push_batch(self) -> None:
        batch: dict[int, dict[int, PresenceState]] = {}
        for _ in range(min(self._batch, len(self._dirty))):
            (tenant_id, user_id), state = self._dirty.popitem()
            batch.setdefault(tenant_id, {})[user_id] = state
        for tenant_id, states in batch.items():
            audience = await self._audience(tenant_id, list(states))
            for user_id, state in states.items():
                peers = audience.get(user_id)
                if not peers:
                    continue
                frame = encode(PresenceEvent(uid=user_id, status=state.status,  # type: ignore[arg-type]
                                             text=state.text))
                self.pushed += self._router.deliver_event(tenant_id, peers, frame)

"""What the application iterates over, and the waiting behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import msgspec

from parley.protocol import Msg

__all__ = ["MessageStream", "Waiters", "decode_body"]

_T = TypeVar("_T")


def decode_body(msg: Msg) -> dict[str, Any]:
    """A message's body as a JSON object (bodies are kept as raw JSON until asked)."""
    body: dict[str, Any] = msgspec.json.decode(msg.body)
    return body


class MessageStream(Generic[_T]):
    """An async iterator over one of the client's queues (see ``messages``/``events``)."""

    __slots__ = ("_next",)

    def __init__(self, take: Callable[[], Coroutine[Any, Any, _T]]) -> None:
        self._next = take

    def __aiter__(self) -> MessageStream[_T]:
        return self

    def __anext__(self) -> Coroutine[Any, Any, _T]:
        return self._next()


class Waiters:
    """Readers parked on an empty queue; :meth:`wake` releases them all.

    A list of futures rather than an ``asyncio.Event``: waking costs nothing
    when nobody waits (the common case on a busy stream), and a cancelled
    reader removes only its own future.
    """

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(self._futures)

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        try:
            await fut
        finally:
            if fut in self._futures:
                self._futures.remove(fut)

    def wake(self) -> None:
        futures = self._futures
        self._futures = []
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

"""Where a worker resumes a user the server closed (no server: the reconnect is
given as a function, as the connector's is): at the url the server's ``reconnect``
frame named, else the user's own node, and after a failed attempt the next node."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from parley.bench.targets import ConnectFailed, ParleyConnector
from parley.bench.worker import UserSpec, WorkerSpec, _Worker

A, B, C = (f"ws://127.0.0.{i}:9/v1/ws" for i in (1, 2, 3))


class _Conn:
    def __init__(self, moved_to: str | None = None) -> None:
        self.moved_to = moved_to
        self.closed_code: int | None = None

    def send(self, conv: str, payload: bytes, token: int) -> None:
        pass

    def close(self) -> None:
        self.closed_code = 1000


async def _resume(old: _Conn, failures: int) -> list[str]:
    """The urls tried to resume user 0 (on node B) when the first ``failures``
    attempts fail."""
    users = (UserSpec(0, "", B, "7", 1), UserSpec(1, "", A, "7", 1), UserSpec(2, "", C, None, 0))
    spec = WorkerSpec(0, ParleyConnector(), users, "127.0.0.1", None, 1, 60)
    tried: list[str] = []

    async def reconnect(old: Any, user: int, credential: str, url: str, *rest: Any) -> _Conn:
        tried.append(url)
        if len(tried) <= failures:
            raise ConnectFailed("os_111", "refused")
        return _Conn()

    parent, child = mp.Pipe()
    try:
        w = _Worker(spec, child)
        w.live = True
        await w._resume(w.users[0], old, reconnect)
        assert w.users[0].conn is not None and w.reconnects == 1
    finally:
        parent.close()
        child.close()
    return tried


async def test_a_moved_user_resumes_where_the_server_sent_it() -> None:
    assert await _resume(_Conn(moved_to=C + "?x=1"), 0) == [C]


async def test_a_user_whose_node_is_down_tries_the_next_nodes() -> None:
    assert await _resume(_Conn(), 0) == [B]
    assert await _resume(_Conn(), 3) == [B, C, A, B]

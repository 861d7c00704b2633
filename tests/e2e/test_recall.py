"""Recall: the sender inside the window, refused outside it, group admins any time;
sync and history return the tombstone and the recall event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.client import ParleyClient, ParleyClientError, decode_body
from parley.protocol import Msg
from parley.server import Node
from tests.e2e.conftest import OffsetClock, World, start_node, stop_node


@pytest.fixture
async def clocked(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Node, OffsetClock]]:
    clock = OffsetClock()
    n, schema = await start_node(backend, tmp_path, clock=clock)
    try:
        yield n, clock
    finally:
        await stop_node(n, schema)


async def _next(client: ParleyClient, n: int = 1) -> list[Msg]:
    out: list[Msg] = []
    async with asyncio.timeout(10):
        async for m in client.messages():
            out.append(m)
            if len(out) == n:
                return out
    raise AssertionError("stream ended")


async def test_sender_recalls_inside_window_and_everyone_sees_it(
    clocked: tuple[Node, OffsetClock],
) -> None:
    node, clock = clocked
    w = World(node)
    a, b = await w.user("alice"), await w.user("bob")
    conv = (await w.direct(a, b)).id
    async with ParleyClient(w.ws_url, w.token(a), "a1") as alice, \
            ParleyClient(w.ws_url, w.token(b), "b1") as bob, \
            ParleyClient(w.ws_url, w.token(a), "a2") as alice2:
        sent = await alice.send(conv, "text", {"text": "oops"})
        await _next(bob)
        await _next(alice2)
        clock.offset_ms = 60_000  # one minute later: inside the 2-minute window
        recall_seq = await alice.recall(conv, sent.mid)
        assert recall_seq == sent.seq + 1
        for dev in (bob, alice2):
            (ev,) = await _next(dev)
            assert ev.kind == "recall" and ev.seq == recall_seq
            assert decode_body(ev) == {"mid": sent.mid}
        page = await bob.history(conv, limit=10)
        assert [(m.seq, m.kind, m.recalled) for m in page.msgs] == [
            (sent.seq, "text", True), (recall_seq, "recall", False)
        ]
        assert decode_body(page.msgs[0]) == {}
    # A device that was never online syncs the tombstone and the event, in order.
    async with ParleyClient(w.ws_url, w.token(b), "b-new") as fresh:
        got = await _next(fresh, 2)
        assert [(m.seq, m.recalled) for m in got] == [(sent.seq, True), (recall_seq, False)]
        assert decode_body(got[0]) == {}
    with pytest.raises(ParleyClientError) as again:
        async with ParleyClient(w.ws_url, w.token(a), "a1") as alice:
            await alice.recall(conv, sent.mid)
    assert again.value.code == "bad_request"


async def test_recall_outside_window_is_refused_but_admin_may(
    clocked: tuple[Node, OffsetClock],
) -> None:
    node, clock = clocked
    w = World(node)
    owner, a, b = await w.user("owner"), await w.user("alice"), await w.user("bob")
    conv = (await w.group(owner, [a, b])).id
    async with ParleyClient(w.ws_url, w.token(a), "a1") as alice, \
            ParleyClient(w.ws_url, w.token(b), "b1") as bob, \
            ParleyClient(w.ws_url, w.token(owner), "o1") as boss:
        sent = await alice.send(conv, "text", {"text": "old news"})
        clock.offset_ms = 121_000  # past the 2-minute window
        with pytest.raises(ParleyClientError) as late:
            await alice.recall(conv, sent.mid)
        assert late.value.code == "recall_window_passed"
        with pytest.raises(ParleyClientError) as other:
            await bob.recall(conv, sent.mid)
        assert other.value.code == "forbidden"
        await w.set_role(conv, b, "admin")
        seq = await bob.recall(conv, sent.mid)  # an admin: any time, anyone's message
        assert seq == sent.seq + 1
        await boss.sync()
        page = await boss.history(conv)
        assert [m.recalled for m in page.msgs] == [True, False]
        with pytest.raises(ParleyClientError) as missing:
            await boss.recall(conv, "1.1.x.1.doesnotexist")
        assert missing.value.code == "not_found"
    assert await w.rows(conv) == [(sent.seq, sent.mid), (seq, (await w.rows(conv))[1][1])]

"""A device's pipelined sends are stored in the order it sent them, also when the
checks before storage wait for the database (cold caches right after start, or an
expired entry): seqs follow the send order, whatever each send waited for."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from parley.messaging.members import ConvMembers
from parley.protocol import Sent
from parley.protocol.ids import new_message_id
from parley.server import Node
from tests.e2e.conftest import World
from tests.e2e.raw import RawClient
from tests.waiting import until


async def test_pipelined_sends_keep_their_order(node: Node) -> None:
    w = World(node)
    a, b, c = await w.user("alice"), await w.user("bob"), await w.user("carol")
    convs = [(await w.direct(a, b)).id, (await w.direct(a, c)).id]
    alice = await RawClient.connect(w.ws_url, w.token(a), "phone")
    n = 200
    mids = []
    for i in range(n):  # all sent before any answer: the first ones find every cache cold
        mid = new_message_id(a, "phone", node.clock.now_ms(), secrets.token_hex(8))
        mids.append(mid)
        alice.send({"t": "send", "rid": i + 1, "conv": convs[i % 2], "mid": mid,
                    "kind": "text", "body": {"text": str(i)}})
    seqs: dict[str, int] = {}
    for _ in range(n):
        sent = await alice.expect(Sent)
        seqs[sent.mid] = sent.seq
    for k, conv in enumerate(convs):
        in_send_order = [seqs[m] for m in mids[k::2]]
        assert in_send_order == list(range(1, n // 2 + 1)), conv
        assert [mid for _, mid in await w.rows(conv)] == mids[k::2]


async def test_a_send_with_warm_caches_does_not_overtake_one_waiting_for_its_turn(
    node: Node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send whose checks are all cached is queued at once, without a task (see
    ``WebSocketFront._send_now``); it must still wait when an earlier send of the
    same device has not been queued yet.  Here send 1 (conversation B) has its
    answers and waits for its turn behind send 0 (conversation A), whose
    membership read is held; send 2 (B) then finds B's caches warm."""
    w = World(node)
    a, b, c = await w.user("alice"), await w.user("bob"), await w.user("carol")
    conv_a, conv_b = (await w.direct(a, b)).id, (await w.direct(a, c)).id
    service = node.service
    assert service is not None
    release = asyncio.Event()
    real_get = service.members.get

    async def held_for_a(tenant_id: int, conv_id: int) -> ConvMembers | None:
        if conv_id == conv_a:
            await release.wait()
        return await real_get(tenant_id, conv_id)

    monkeypatch.setattr(service.members, "get", held_for_a)
    alice = await RawClient.connect(w.ws_url, w.token(a), "phone")
    mids = [new_message_id(a, "phone", node.clock.now_ms(), secrets.token_hex(8))
            for _ in range(3)]

    def send(i: int, conv: int) -> None:
        alice.send({"t": "send", "rid": i + 1, "conv": conv, "mid": mids[i],
                    "kind": "text", "body": {"text": str(i)}})

    def b_answered() -> bool:
        members = service.members.fresh(w.tenant_id, conv_b)
        policy = service.policy
        return members is not None and (
            policy is None or policy.direct_allowed_now(w.tenant_id, a, c)
        )

    send(0, conv_a)
    send(1, conv_b)
    await until(b_answered, what="send 1's checks answered")
    send(2, conv_b)
    # send 2 reached the node and went its way before send 0 may go on
    await until(lambda: node.metrics.ws_frames_in.labels("send")._value.get() >= 3,
                what="the node read all three sends")
    release.set()
    seqs = {}
    for _ in range(3):
        sent = await alice.expect(Sent)
        seqs[sent.mid] = sent.seq
    assert [seqs[mids[1]], seqs[mids[2]]] == [1, 2]
    assert [mid for _, mid in await w.rows(conv_b)] == [mids[1], mids[2]]
    await alice.close()

"""A device's pipelined sends are stored in the order it sent them, also when the
checks before storage wait for the database (cold caches right after start, or an
expired entry): seqs follow the send order, whatever each send waited for."""

from __future__ import annotations

import secrets

from parley.protocol import Sent
from parley.protocol.ids import new_message_id
from parley.server import Node
from tests.e2e.conftest import World
from tests.e2e.raw import RawClient


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

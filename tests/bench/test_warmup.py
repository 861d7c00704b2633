"""A warm-up's messages are checked like every other but their latencies stay
out of the measured histograms (one worker, driven through the Events a target
calls; no server)."""

from __future__ import annotations

import multiprocessing as mp
import time

from parley.bench.checker import verdict
from parley.bench.targets import ParleyConnector
from parley.bench.worker import UserSpec, WorkerSpec, _Worker


async def test_warmup_messages_are_checked_but_not_timed() -> None:
    users = (UserSpec(0, "", "ws://127.0.0.1:1/v1/ws", "7", 1),
             UserSpec(1, "", "ws://127.0.0.1:1/v1/ws", "7", 1))
    spec = WorkerSpec(0, ParleyConnector(), users, "127.0.0.1", None, 1, 60)
    parent, child = mp.Pipe()
    try:
        w = _Worker(spec, child)
        t0 = time.monotonic_ns()
        await w.run(t0, 0.05, 1000.0, 0.05)  # 50 sends of warm-up, then 50 measured
        # Every send is acknowledged and reaches the peer (what a target reports).
        for sender, peer in (w.users, w.users[::-1]):
            for seq, intended in sorted(w.ledger.inflight[sender.index].items()):
                sender.acked(seq)
                peer.delivered(b"%d.%d.%d.0" % (sender.index, seq, intended))
    finally:
        parent.close()
        child.close()
    assert w.sent == 100 and w.warm_sent == 50
    # Latencies: only the measured half; the warm-up's kept apart.
    assert w.ack_hist.get_total_count() == 50 and w.warm_ack_hist.get_total_count() == 50
    assert w.deliver_hist.get_total_count() == 50 == w.sent_deliver_hist.get_total_count()
    assert w.warm_deliver_hist.get_total_count() == 50 == w.warm_delivered
    # Correctness: every message, warm-up included.
    v = verdict(w.ledger.summary(), w.checker.summary(), {0: (1,), 1: (0,)})
    assert (v.sent, v.acked, v.delivered, v.lost, v.reordered) == (100, 100, 100, 0, 0)


async def test_a_warmup_message_acked_after_the_next_run_stays_apart() -> None:
    users = (UserSpec(0, "", "ws://127.0.0.1:1/v1/ws", "7", 1),)
    spec = WorkerSpec(0, ParleyConnector(), users, "127.0.0.1", None, 1, 60)
    parent, child = mp.Pipe()
    try:
        w = _Worker(spec, child)
        await w.run(time.monotonic_ns(), 0.02, 1000.0, 0.02)
        await w.run(time.monotonic_ns(), 0.02, 1000.0)
        for seq in list(w.ledger.inflight[0]):
            w.users[0].acked(seq)
    finally:
        parent.close()
        child.close()
    assert (w.sent, w.warm_sent, w.warm_acked) == (60, 20, 20)
    assert w.ack_hist.get_total_count() == 40

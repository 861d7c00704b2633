"""The checker must be able to fail: injected gaps, duplicates and reorders."""

from __future__ import annotations

from parley.bench.checker import ReceiveChecker, SendLedger, verdict


def _run(deliveries: list[int], sent: int = 5, fail: tuple[int, ...] = (),
         inflight: tuple[int, ...] = ()):
    ledger = SendLedger()
    ledger.open(1)
    for q in range(1, sent + 1):
        ledger.sent(1, q, 0)
    for q in range(1, sent + 1):
        if q in fail:
            ledger.failed(1, q)
        elif q not in inflight:
            ledger.inflight[1].pop(q)
    rc = ReceiveChecker()
    for q in deliveries:
        rc.record(1, 2, q)
    return verdict(ledger.summary(), rc.summary(), {1: (2,)})


def test_clean_stream_passes() -> None:
    v = _run([1, 2, 3, 4, 5])
    assert (v.sent, v.acked, v.delivered, v.lost, v.duplicated, v.reordered) == (5, 5, 5, 0, 0, 0)
    assert v.ok


def test_gap_in_the_middle_is_lost() -> None:
    v = _run([1, 2, 4, 5])
    assert (v.lost, v.duplicated, v.reordered) == (1, 0, 0)
    assert not v.ok and v.lost_streams == [(1, 2)]


def test_missing_tail_is_lost() -> None:
    v = _run([1, 2, 3])
    assert v.lost == 2


def test_nothing_delivered_loses_everything_acked() -> None:
    v = _run([], fail=(5,))
    assert (v.acked, v.unacked, v.lost) == (4, 1, 4)


def test_duplicate_is_counted() -> None:
    v = _run([1, 2, 2, 3, 4, 5])
    assert (v.lost, v.duplicated, v.reordered) == (0, 1, 0)
    assert not v.ok


def test_late_message_is_reordered_not_lost() -> None:
    v = _run([1, 3, 2, 4, 5])
    assert (v.lost, v.duplicated, v.reordered) == (0, 0, 1)
    assert not v.ok


def test_duplicate_of_a_late_message_is_both() -> None:
    v = _run([1, 3, 2, 2, 4, 5])
    assert (v.duplicated, v.reordered) == (1, 1)


def test_unacked_messages_are_not_lost() -> None:
    v = _run([1, 2, 3], inflight=(4, 5))
    assert (v.acked, v.unacked, v.lost) == (3, 2, 0)
    assert v.ok


def test_delivered_but_unacked_is_reported() -> None:
    v = _run([1, 2, 3, 4, 5], fail=(5,))
    assert (v.lost, v.delivered_unacked) == (0, 1)


def test_group_stream_per_receiver() -> None:
    ledger = SendLedger()
    ledger.open(0)
    for q in (1, 2):
        ledger.sent(0, q, 0)
        ledger.inflight[0].pop(q)
    rc = ReceiveChecker()
    for r in (1, 2):
        rc.record(0, r, 1)
        rc.record(0, r, 2)
    rc.record(0, 3, 2)  # receiver 3 missed seq 1
    v = verdict(ledger.summary(), rc.summary(), {0: (1, 2, 3)})
    assert (v.expected, v.delivered, v.lost) == (6, 5, 1)

"""The receive state machine alone: ordering, dedup, gaps, bounds, acks (no sockets)."""

from __future__ import annotations

import msgspec
import pytest

from parley.client.inbox import DELIVERED, DUPLICATE, FULL, HELD, Inbox
from parley.protocol import Msg


def m(conv: int, seq: int, mid: str | None = None) -> Msg:
    return Msg(conv=conv, seq=seq, mid=mid or f"1.9.d.1.{conv}x{seq}aaaaaaa", sender=9,
               kind="text", body=msgspec.Raw(b'{"text":"x"}'), ts=1)


def drain(inbox: Inbox) -> list[tuple[int, int]]:
    out = []
    while (msg := inbox.pop()) is not None:
        out.append((msg.conv, msg.seq))
    return out


def test_in_order_pushes_are_delivered_and_acked_cumulatively() -> None:
    inbox = Inbox(capacity=10)
    assert [inbox.push(m(1, s)) for s in (1, 2, 3)] == [DELIVERED] * 3
    assert inbox.push(m(2, 1)) == DELIVERED
    assert drain(inbox) == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert inbox.take_acks() == {1: 3, 2: 1}
    assert inbox.take_acks() == {}
    assert inbox.cursors == {1: 3, 2: 1}


def test_duplicates_are_dropped_and_reacked() -> None:
    inbox = Inbox(capacity=10)
    inbox.push(m(1, 1))
    inbox.push(m(1, 2))
    inbox.take_acks()
    assert inbox.push(m(1, 1)) == DUPLICATE
    assert inbox.synced(m(1, 2)) == DUPLICATE
    assert drain(inbox) == [(1, 1), (1, 2)]
    assert inbox.take_acks() == {1: 2}  # the server stops re-pushing


def test_gap_holds_then_releases_in_order() -> None:
    inbox = Inbox(capacity=10)
    inbox.push(m(1, 1))
    assert inbox.push(m(1, 3)) == HELD
    assert inbox.push(m(1, 4)) == HELD
    assert drain(inbox) == [(1, 1)]
    assert inbox.held == 2
    assert inbox.push(m(1, 2)) == DELIVERED
    assert drain(inbox) == [(1, 2), (1, 3), (1, 4)]
    assert inbox.held == 0 and inbox.cursors[1] == 4


def test_unknown_conversation_push_needs_seq_1_but_sync_sets_the_baseline() -> None:
    inbox = Inbox(capacity=10)
    assert inbox.push(m(5, 8)) == HELD  # may have missed 1..7: sync
    assert inbox.synced(m(5, 7)) == DELIVERED  # the server's stored cursor was 6
    assert drain(inbox) == [(5, 7), (5, 8)]
    assert inbox.held == 0


def test_sync_is_authoritative_across_gaps_and_prunes_held() -> None:
    inbox = Inbox(capacity=10, cursors={1: 2})
    assert inbox.push(m(1, 5)) == HELD
    assert inbox.synced(m(1, 6)) == DELIVERED  # 3..5 no longer exist
    assert inbox.held == 0
    assert drain(inbox) == [(1, 6)]


def test_full_queue_refuses_without_acking_and_recovers() -> None:
    inbox = Inbox(capacity=2)
    assert inbox.push(m(1, 1)) == DELIVERED
    assert inbox.push(m(1, 2)) == DELIVERED
    inbox.take_acks()
    assert inbox.push(m(1, 3)) == FULL
    assert inbox.backlogged and inbox.cursors[1] == 2 and inbox.acks == {}
    assert inbox.pop() is not None
    assert inbox.room == 1
    assert inbox.synced(m(1, 3)) == DELIVERED
    assert inbox.cursors[1] == 3


def test_held_is_bounded() -> None:
    inbox = Inbox(capacity=10, max_held=2)
    for s in (3, 4, 5, 6):
        assert inbox.push(m(1, s)) == HELD
    assert inbox.held == 2


def test_echo_prefix_advances_without_queueing() -> None:
    inbox = Inbox(capacity=10)
    inbox.echo_prefix = "1.9.me."
    assert inbox.push(m(1, 1, mid="1.9.me.5.abcdefgh")) == DELIVERED
    assert inbox.push(m(1, 2)) == DELIVERED
    assert drain(inbox) == [(1, 2)]
    assert inbox.take_acks() == {1: 2}


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Inbox(capacity=0)

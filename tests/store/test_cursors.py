"""CursorStore against both backends: cursors only move forward, scoped by tenant."""

from __future__ import annotations

import hashlib

import pytest

from parley.errors import NotFound
from parley.store import AccountStore, Database
from parley.store.conversations import ConversationStore
from parley.store.cursors import CursorStore, DeliveryCursor
from parley.store.messages import MessageStore, NewMessage

NOW = 1_800_000_000_000


async def _world(db: Database) -> tuple[int, int, int, int, list[int]]:
    """Tenant, other tenant, users a and b, and two conversations with 5 and 3 messages."""
    acc = AccountStore(db)
    tid = (await acc.create_tenant("acme", "Acme", NOW)).id
    oid = (await acc.create_tenant("other", "Other", NOW)).id
    a = (await acc.create_user(tid, "a", NOW)).id
    b = (await acc.create_user(tid, "b", NOW)).id
    convs = ConversationStore(db)
    c1 = (await convs.create_direct(tid, a, b, NOW)).id
    c2 = (await convs.create_group(tid, b, "G", [a], NOW)).id
    body = b'{"text":"x"}'
    await MessageStore(db).append([
        NewMessage(tid, conv, f"m{conv}-{i}", b, "d", "text", body,
                   hashlib.sha256(body).hexdigest(), NOW)
        for conv, n in ((c1, 5), (c2, 3)) for i in range(n)
    ])
    return tid, oid, a, b, [c1, c2]


def _dc(tid: int, user: int, device: str, conv: int, seq: int, at: int = NOW) -> DeliveryCursor:
    return DeliveryCursor(tid, user, device, conv, seq, at)


async def test_delivery_cursors_only_move_forward(db: Database) -> None:
    tid, _oid, a, _b, (c1, c2) = await _world(db)
    store = CursorStore(db)
    assert await store.delivery_cursors(tid, a, "phone") == {}
    await store.advance_delivery([
        _dc(tid, a, "phone", c1, 3), _dc(tid, a, "phone", c1, 2),  # same key: the max wins
        _dc(tid, a, "phone", c2, 1), _dc(tid, a, "laptop", c1, 5),
    ])
    assert await store.delivery_cursors(tid, a, "phone") == {c1: 3, c2: 1}
    assert await store.delivery_cursors(tid, a, "laptop") == {c1: 5}
    await store.advance_delivery([_dc(tid, a, "phone", c1, 1), _dc(tid, a, "phone", c2, 3)])
    assert await store.delivery_cursors(tid, a, "phone") == {c1: 3, c2: 3}
    await store.advance_delivery([_dc(tid, a, "phone", c1, 99)])  # never past last_seq (5)
    assert await store.delivery_cursors(tid, a, "phone") == {c1: 5, c2: 3}
    await store.advance_delivery([])  # nothing to do


async def test_delivery_cursors_are_scoped_by_tenant(db: Database) -> None:
    tid, oid, a, _b, (c1, _c2) = await _world(db)
    store = CursorStore(db)
    await store.advance_delivery([_dc(tid, a, "phone", c1, 2)])
    assert await store.delivery_cursors(oid, a, "phone") == {}
    # An advance claiming another tenant can neither move this tenant's row
    # nor create one for a conversation outside its tenant.
    await store.advance_delivery([_dc(oid, a, "phone", c1, 5), _dc(oid, a, "tablet", c1, 5)])
    assert await store.delivery_cursors(tid, a, "phone") == {c1: 2}
    assert await store.delivery_cursors(oid, a, "tablet") == {}
    assert await store.delivery_cursors(tid, a, "tablet") == {}
    await store.advance_delivery([_dc(tid, a, "phone", 424242, 5)])  # no such conversation
    assert await store.delivery_cursors(tid, a, "phone") == {c1: 2}


async def test_read_cursor_is_monotonic_and_capped(db: Database) -> None:
    tid, oid, a, b, (c1, c2) = await _world(db)
    store = CursorStore(db)
    # b sent every message, so b has read them all; a has read nothing.
    assert await store.read_cursors(tid, b) == {c1: 5, c2: 3}
    assert await store.read_cursor(tid, a, c1) == 0
    assert await store.read_cursors(tid, a) == {}
    assert await store.advance_read(tid, a, c1, 2, NOW + 1) == 2
    assert await store.advance_read(tid, a, c1, 1, NOW + 2) == 2  # never backwards
    assert await store.advance_read(tid, a, c1, 99, NOW + 3) == 5  # not past last_seq
    assert await store.advance_read(tid, a, c2, -4, NOW + 4) == 0
    assert await store.read_cursor(tid, a, c1) == 5
    assert await store.read_cursors(tid, a) == {c1: 5, c2: 0}
    with pytest.raises(NotFound):
        await store.advance_read(oid, a, c1, 1, NOW)
    with pytest.raises(NotFound):
        await store.advance_read(tid, a, 424242, 1, NOW)
    assert await store.read_cursors(oid, a) == {}
    assert await store.read_cursor(oid, a, c1) == 0

"""ConversationStore against both backends: direct pairs, groups, roles, lists, tenants."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from parley.errors import BadRequest, NotFound
from parley.store import AccountStore, Database
from parley.store.conversations import ConversationStore
from parley.store.cursors import CursorStore
from parley.store.messages import MessageStore, NewMessage
from parley.store.social import SocialStore

NOW = 1_800_000_000_000


async def _users(db: Database, slug: str, n: int) -> tuple[int, list[int]]:
    acc = AccountStore(db)
    t = await acc.create_tenant(slug, slug.title(), NOW)
    return t.id, [(await acc.create_user(t.id, f"{slug}{i}", NOW)).id for i in range(n)]


def _msg(tenant: int, conv: int, sender: int, n: int) -> NewMessage:
    body = b'{"text":"m%d"}' % n
    return NewMessage(
        tenant_id=tenant, conversation_id=conv, msg_id=f"m-{conv}-{sender}-{n}",
        sender_id=sender, sender_device="d1", kind="text", body=body,
        digest=hashlib.sha256(body).hexdigest(), created_at=NOW + n,
    )


async def test_direct_is_one_conversation_per_pair(db: Database) -> None:
    tid, (a, b, c) = await _users(db, "acme", 3)
    store = ConversationStore(db)
    ab = await store.create_direct(tid, a, b, NOW)
    assert ab.kind == "direct" and ab.direct_key == f"{min(a, b)}:{max(a, b)}"
    assert ab.last_seq == 0 and ab.tenant_id == tid
    assert (await store.create_direct(tid, b, a, NOW + 5)).id == ab.id
    assert (await store.create_direct(tid, a, c, NOW)).id != ab.id
    assert await store.member_ids(tid, ab.id) == sorted([a, b])
    assert await store.member_role(tid, ab.id, a) == "member"
    assert await store.get(tid, ab.id) == ab
    with pytest.raises(BadRequest):
        await store.create_direct(tid, a, a, NOW)


async def test_concurrent_direct_creation_yields_one_row(db: Database) -> None:
    tid, (a, b) = await _users(db, "acme", 2)
    store = ConversationStore(db)
    convs = await asyncio.gather(
        *(store.create_direct(tid, *((a, b) if i % 2 else (b, a)), NOW) for i in range(8))
    )
    assert len({c.id for c in convs}) == 1
    assert await store.member_ids(tid, convs[0].id) == sorted([a, b])


async def test_group_roles_and_membership(db: Database) -> None:
    tid, (owner, u1, u2, u3) = await _users(db, "acme", 4)
    store = ConversationStore(db)
    g = await store.create_group(tid, owner, "Team", [u1, u1, owner], NOW)
    assert g.kind == "group" and g.name == "Team" and g.direct_key is None
    assert g.created_by == owner
    assert await store.member_ids(tid, g.id) == sorted([owner, u1])
    assert await store.member_role(tid, g.id, owner) == "owner"
    assert await store.member_role(tid, g.id, u1) == "member"

    assert await store.add_members(tid, g.id, [u1, u2, u3], NOW, role="admin") == sorted([u2, u3])
    assert await store.add_members(tid, g.id, [u2, u3], NOW) == []  # idempotent
    assert await store.member_role(tid, g.id, u1) == "member"  # existing role kept
    assert await store.member_role(tid, g.id, u2) == "admin"

    await store.set_role(tid, g.id, u1, "admin")
    assert await store.member_role(tid, g.id, u1) == "admin"
    assert await store.remove_member(tid, g.id, u3) is True
    assert await store.remove_member(tid, g.id, u3) is False
    assert await store.member_role(tid, g.id, u3) is None
    with pytest.raises(NotFound):
        await store.set_role(tid, g.id, u3, "member")
    with pytest.raises(ValueError):
        await store.set_role(tid, g.id, u1, "emperor")
    with pytest.raises(NotFound):
        await store.add_members(tid, g.id + 1000, [u3], NOW)


async def test_users_of_another_tenant_are_never_members(db: Database) -> None:
    tid, (a, b) = await _users(db, "acme", 2)
    oid, (x,) = await _users(db, "other", 1)
    store = ConversationStore(db)
    with pytest.raises(NotFound):
        await store.create_direct(tid, a, x, NOW)
    with pytest.raises(NotFound):
        await store.create_group(tid, a, "G", [b, x], NOW)
    g = await store.create_group(tid, a, "G", [b], NOW)
    with pytest.raises(NotFound):
        await store.add_members(tid, g.id, [x], NOW)
    assert await store.member_ids(tid, g.id) == sorted([a, b])
    # The other tenant cannot see or extend this conversation.
    assert await store.get(oid, g.id) is None
    assert await store.member_ids(oid, g.id) == []
    assert await store.member_role(oid, g.id, a) is None
    with pytest.raises(NotFound):
        await store.add_members(oid, g.id, [x], NOW)
    assert await store.list_for_user(oid, a) == []
    assert await store.remove_member(oid, g.id, a) is False
    assert await store.member_ids(tid, g.id) == sorted([a, b])


async def test_list_for_user_pages_and_counts_unread(db: Database) -> None:
    tid, (a, b, c) = await _users(db, "acme", 3)
    store = ConversationStore(db)
    ms = MessageStore(db)
    ab = await store.create_direct(tid, a, b, NOW)
    g = await store.create_group(tid, b, "G", [a, c], NOW)
    bc = await store.create_direct(tid, b, c, NOW)  # not a's
    await ms.append(
        [_msg(tid, ab.id, b, 1), _msg(tid, ab.id, b, 2), _msg(tid, ab.id, a, 3),
         _msg(tid, ab.id, b, 4), _msg(tid, g.id, c, 5), _msg(tid, g.id, b, 6),
         _msg(tid, bc.id, b, 7)]
    )

    page = await store.list_for_user(tid, a, limit=10)
    assert [s.conversation.id for s in page] == [ab.id, g.id]
    first, second = page
    assert first.role == "member" and second.role == "member"
    # a sent seq 3 in ab: sending marks everything before it read.
    assert (first.last_seq, first.read_seq, first.unread) == (4, 3, 1)
    assert (second.last_seq, second.read_seq, second.unread) == (2, 0, 2)

    await CursorStore(db).advance_read(tid, a, g.id, 1, NOW)
    one = await store.list_for_user(tid, a, limit=1)
    rest = await store.list_for_user(tid, a, after=one[0].conversation.id, limit=10)
    assert [s.conversation.id for s in one + rest] == [ab.id, g.id]
    assert (rest[0].read_seq, rest[0].unread) == (1, 1)
    owner_view = await store.list_for_user(tid, b)
    assert [(s.conversation.id, s.role, s.unread) for s in owner_view] == [
        (ab.id, "member", 0), (g.id, "owner", 0), (bc.id, "member", 0)
    ]


async def test_direct_peers_are_the_other_sides_of_direct_conversations(db: Database) -> None:
    tid, (a, b, c, d) = await _users(db, "acme", 4)
    oid, _ = await _users(db, "other", 1)
    store = ConversationStore(db)
    await store.create_direct(tid, a, b, NOW)
    await store.create_direct(tid, c, a, NOW)
    await store.create_group(tid, a, "G", [d], NOW)  # groups do not count
    assert sorted(await store.direct_peers(tid, a)) == sorted([b, c])
    assert await store.direct_peers(tid, d) == []
    assert await store.direct_peers(oid, a) == []
    # The batched form (presence fan-out) answers the same for several users at once.
    many = await store.direct_peers_many(tid, [a, b, d])
    assert {u: sorted(p) for u, p in many.items()} == {a: sorted([b, c]), b: [a], d: []}
    assert await store.direct_peers_many(tid, []) == {}
    social = SocialStore(db)
    await social.block(tid, a, c, NOW)
    assert await social.blocked_ids_many(tid, [a, b]) == {a: {c}, b: set()}


async def test_batched_reads_of_a_cold_cache(db: Database) -> None:
    """``kinds_and_members`` and ``direct_rules``: one read for many keys, the same
    answers as the one-key reads, nothing from another tenant."""
    tid, (a, b, c, d) = await _users(db, "acme", 4)
    oid, _ = await _users(db, "other", 1)
    store = ConversationStore(db)
    ab = await store.create_direct(tid, a, b, NOW)
    grp = await store.create_group(tid, c, "g", [a, b, d], NOW)
    got = await store.kinds_and_members(tid, [ab.id, grp.id, ab.id, 999_999])
    assert got == {ab.id: ("direct", sorted([a, b])), grp.id: ("group", sorted([a, b, c, d]))}
    assert await store.kinds_and_members(oid, [ab.id, grp.id]) == {}  # another tenant's ids
    assert await store.kinds_and_members(tid, []) == {}
    social = SocialStore(db)
    await social.block(tid, b, a, NOW)  # b blocks a
    assert await social.request_contact(tid, a, c, NOW) == "requested"
    await social.accept_contact(tid, c, a, NOW)
    assert await social.request_contact(tid, a, d, NOW) == "requested"  # pending only
    rules = await social.direct_rules(tid, [(a, b), (b, a), (a, c), (c, a), (a, d), (a, b)])
    assert {p: (r.blocked_by_peer, r.contacts) for p, r in rules.items()} == {
        (a, b): (True, False), (b, a): (False, False), (a, c): (False, True),
        (c, a): (False, True), (a, d): (False, False),
    }
    assert {p: (r.blocked_by_peer, r.contacts)
            for p, r in (await social.direct_rules(oid, [(a, b), (a, c)])).items()} == {
        (a, b): (False, False), (a, c): (False, False)}
    assert await social.direct_rules(tid, []) == {}
    # Group rules: all-muted flags, owners/admins, member mutes, per group.
    g2 = await store.create_group(tid, a, "g2", [b], NOW)
    await store.set_role(tid, grp.id, d, "admin")
    await social.update_group(tid, g2.id, all_muted=True)
    await social.set_send_muted(tid, grp.id, b, NOW + 60_000)
    groups = await social.group_rules(tid, [grp.id, g2.id, 999_999])
    assert (groups[grp.id].all_muted, groups[grp.id].privileged, groups[grp.id].muted_until) == (
        False, frozenset({c, d}), {b: NOW + 60_000})
    assert (groups[g2.id].all_muted, groups[g2.id].privileged, groups[g2.id].muted_until) == (
        True, frozenset({a}), {})
    assert not groups[999_999].all_muted and not groups[999_999].privileged  # unknown: open
    assert not (await social.group_rules(oid, [g2.id]))[g2.id].all_muted  # another tenant

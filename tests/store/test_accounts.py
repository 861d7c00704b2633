"""AccountStore against both backends: tenants, users, passwords, devices, tenant scoping."""

from __future__ import annotations

import pytest

from parley.errors import Conflict, NotFound
from parley.store import AccountStore, Database

NOW = 1_800_000_000_000


async def test_tenant_and_user_lifecycle(db: Database) -> None:
    store = AccountStore(db)
    t = await store.create_tenant("acme", "Acme", NOW)
    assert (await store.tenant_by_slug("acme")) == t
    u = await store.create_user(t.id, "alice", NOW, password_hash="h1")
    assert u.display_name == "alice" and u.role == "user" and u.status == "active"
    assert await store.user(t.id, u.id) == u
    assert await store.user_by_name(t.id, "alice") == u
    assert await store.password_hash(t.id, u.id) == "h1"
    await store.set_password_hash(t.id, u.id, "h2", NOW + 1)
    assert await store.password_hash(t.id, u.id) == "h2"


async def test_duplicates_conflict(db: Database) -> None:
    store = AccountStore(db)
    t = await store.create_tenant("acme", "Acme", NOW)
    with pytest.raises(Conflict):
        await store.create_tenant("acme", "Other", NOW)
    await store.create_user(t.id, "bob", NOW)
    with pytest.raises(Conflict):
        await store.create_user(t.id, "bob", NOW)


async def test_rows_are_scoped_by_tenant(db: Database) -> None:
    store = AccountStore(db)
    a = await store.create_tenant("a", "A", NOW)
    b = await store.create_tenant("b", "B", NOW)
    ua = await store.create_user(a.id, "same", NOW, password_hash="ha")
    ub = await store.create_user(b.id, "same", NOW)  # same name, other tenant: allowed
    assert await store.user(b.id, ua.id) is None
    assert await store.password_hash(b.id, ua.id) is None
    assert [u.id for u in await store.list_users(b.id)] == [ub.id]
    with pytest.raises(NotFound):
        await store.set_password_hash(b.id, ua.id, "x", NOW)
    assert await store.password_hash(a.id, ua.id) == "ha"


async def test_list_users_paginates(db: Database) -> None:
    store = AccountStore(db)
    t = await store.create_tenant("acme", "Acme", NOW)
    ids = [(await store.create_user(t.id, f"u{i}", NOW)).id for i in range(5)]
    page1 = await store.list_users(t.id, limit=2)
    page2 = await store.list_users(t.id, after_id=page1[-1].id, limit=10)
    assert [u.id for u in page1 + page2] == ids
    assert await store.count_users(t.id) == 5


async def test_devices_upsert(db: Database) -> None:
    store = AccountStore(db)
    t = await store.create_tenant("acme", "Acme", NOW)
    u = await store.create_user(t.id, "alice", NOW)
    await store.touch_device(t.id, u.id, "phone", NOW, platform="ios")
    await store.touch_device(t.id, u.id, "phone", NOW + 5)
    await store.touch_device(t.id, u.id, "laptop", NOW + 6)
    devs = await store.list_devices(t.id, u.id)
    assert [(d.device_id, d.created_at, d.last_seen_at) for d in devs] == [
        ("laptop", NOW + 6, NOW + 6), ("phone", NOW, NOW + 5)
    ]

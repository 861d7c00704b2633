"""SessionStore on both backends: rotation, reuse, revocation, tickets."""

from __future__ import annotations

from parley.store.accounts import AccountStore
from parley.store.database import Database
from parley.store.sessions import RotationOutcome, SessionStore

NOW = 1_800_000_000_000


async def _setup(db: Database) -> tuple[SessionStore, int, int]:
    accounts = AccountStore(db)
    t = await accounts.create_tenant("acme", "Acme", NOW)
    u = await accounts.create_user(t.id, "alice", NOW)
    return SessionStore(db), t.id, u.id


async def test_rotation_and_reuse(db: Database) -> None:
    store, tid, uid = await _setup(db)
    await store.create("s1", tid, uid, "phone", "h1", NOW, NOW + 1000)
    r = await store.rotate("h1", "h2", NOW + 1, NOW + 2000)
    assert r.outcome is RotationOutcome.ROTATED and r.session is not None
    assert r.session.id == "s1"
    assert (await store.rotate("nope", "h3", NOW + 2, NOW + 2000)).outcome \
        is RotationOutcome.INVALID
    reused = await store.rotate("h1", "h3", NOW + 3, NOW + 2000)
    assert reused.outcome is RotationOutcome.REUSED
    assert (await store.rotate("h2", "h4", NOW + 4, NOW + 2000)).outcome \
        is RotationOutcome.INVALID
    assert await store.active(tid, uid, NOW + 5) == []
    assert [sid for sid, _ in await store.revoked_since(NOW)] == ["s1"]


async def test_expired_session_does_not_refresh(db: Database) -> None:
    store, tid, uid = await _setup(db)
    await store.create("s1", tid, uid, "", "h1", NOW, NOW + 1000)
    assert (await store.rotate("h1", "h2", NOW + 1000, NOW + 3000)).outcome \
        is RotationOutcome.INVALID


async def test_revoke_by_device_and_all_but_one(db: Database) -> None:
    store, tid, uid = await _setup(db)
    for sid, dev in (("a", "phone"), ("b", "phone"), ("c", "laptop"), ("d", "")):
        await store.create(sid, tid, uid, dev, f"h{sid}", NOW, NOW + 10_000)
    assert sorted(await store.revoke(tid, uid, NOW, device_id="phone")) == ["a", "b"]
    assert await store.revoke(tid, uid, NOW, device_id="phone") == []
    assert await store.revoke(tid, uid, NOW, keep="c") == ["d"]
    assert [s.id for s in await store.active(tid, uid, NOW)] == ["c"]
    assert await store.revoke(tid + 1, uid, NOW) == []  # another tenant sees nothing


async def test_tickets_redeem_once_and_purge(db: Database) -> None:
    store, _, _ = await _setup(db)
    assert await store.redeem_ticket("j1", NOW + 10)
    assert not await store.redeem_ticket("j1", NOW + 10)
    assert await store.purge_tickets(NOW + 10) == 1

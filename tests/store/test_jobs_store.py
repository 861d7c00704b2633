"""JobStore (fenced claims, run records) and MaintenanceStore on both backends."""

from __future__ import annotations

import asyncio
import hashlib

from sqlalchemy import Table, func, select

from parley.store import AccountStore, Database
from parley.store.conversations import ConversationStore
from parley.store.identities import AuthCode, OAuthClient, OAuthStore
from parley.store.jobs import ERROR_TEXT_MAX, JobStore, MaintenanceStore
from parley.store.messages import MessageStore, NewMessage
from parley.store.sessions import SessionStore
from parley.store.tables import auth_sessions, job_runs, messages, oauth_codes, refresh_tokens

NOW = 1_800_000_000_000
DAY = 86_400_000


async def _count(db: Database, table: Table) -> int:
    async with db.reader.connect() as conn:
        n = await conn.scalar(select(func.count()).select_from(table))
    return int(n or 0)


# -- claims ------------------------------------------------------------------------------
async def test_a_tick_is_claimed_once(db: Database) -> None:
    store = JobStore(db)
    won = await store.claim("j", 10, "n1", 1, now_ms=NOW)
    assert won is not None and (won.job, won.tick, won.node_id, won.fencing_token) == (
        "j", 10, "n1", 1,
    )
    assert await store.claim("j", 10, "n2", 1, now_ms=NOW) is None
    assert await store.claim("j", 10, "n1", 1, now_ms=NOW) is None
    assert await store.claim("j", 11, "n2", 1, now_ms=NOW) is not None
    assert await store.claim("other", 10, "n2", 1, now_ms=NOW) is not None  # per job
    assert [(r.tick, r.node_id) for r in await store.runs("j")] == [(11, "n2"), (10, "n1")]
    lease = await store.lease("j")
    assert lease is not None and (lease.last_tick, lease.holder) == (11, "n2")


async def test_concurrent_claims_of_one_tick_have_one_winner(db: Database) -> None:
    store = JobStore(db)
    results = await asyncio.gather(
        *(store.claim("j", 7, f"n{i}", 3, now_ms=NOW) for i in range(8))
    )
    assert sum(r is not None for r in results) == 1
    assert await _count(db, job_runs) == 1


async def test_a_stale_token_is_fenced_out(db: Database) -> None:
    store = JobStore(db)
    assert await store.claim("j", 1, "new-leader", 5, now_ms=NOW) is not None
    # The old leader still thinks it leads; its token is older.
    assert await store.claim("j", 2, "old-leader", 4, now_ms=NOW) is None
    assert await store.claim("j", 99, "old-leader", 4, now_ms=NOW) is None
    lease = await store.lease("j")
    assert lease is not None and (lease.fencing_token, lease.holder, lease.last_tick) == (
        5, "new-leader", 1,
    )
    assert await _count(db, job_runs) == 1  # a refused claim writes nothing
    # The same token moves forward only; a newer token takes over.
    assert await store.claim("j", 1, "new-leader", 5, now_ms=NOW) is None
    assert await store.claim("j", 0, "new-leader", 5, now_ms=NOW) is None
    assert await store.claim("j", 2, "newer-leader", 6, now_ms=NOW) is not None


async def test_a_newer_token_cannot_rerun_a_tick_and_leaves_the_lease_alone(
    db: Database,
) -> None:
    store = JobStore(db)
    assert await store.claim("j", 5, "a", 1, now_ms=NOW) is not None
    assert await store.claim("j", 5, "b", 2, now_ms=NOW + 1) is None
    lease = await store.lease("j")
    assert lease is not None and (lease.fencing_token, lease.holder, lease.updated_at) == (
        1, "a", NOW,
    )  # the lease update was rolled back with the refused run
    # A newer leader may still run a tick nobody ran (it took over mid-tick).
    assert await store.claim("j", 6, "b", 2, now_ms=NOW + 2) is not None


async def test_finish_records_the_outcome_and_prunes_old_runs(db: Database) -> None:
    store = JobStore(db)
    claims = [await store.claim("j", t, "n", 1, now_ms=NOW + t) for t in range(1, 5)]
    assert all(claims)
    c1, _, c3, c4 = claims
    assert c1 and c3 and c4
    await store.finish(c1, now_ms=NOW + 10, outcome="ok", items=3)
    await store.finish(c3, now_ms=NOW + 11, outcome="error", error="x" * 5000)
    runs = {r.tick: r for r in await store.runs("j")}
    assert (runs[1].outcome, runs[1].items, runs[1].finished_at, runs[1].error) == (
        "ok", 3, NOW + 10, None,
    )
    assert runs[3].outcome == "error" and runs[3].error is not None
    assert len(runs[3].error) == ERROR_TEXT_MAX and runs[3].error.endswith("...")
    assert (runs[2].outcome, runs[2].finished_at) == (None, None)  # never finished
    other = await store.claim("other", 1, "n", 1, now_ms=NOW)
    assert other is not None
    await store.finish(c4, now_ms=NOW + 12, outcome="ok", prune_before_tick=3)
    assert sorted(r.tick for r in await store.runs("j")) == [3, 4]
    assert [r.job for r in await store.runs("other")] == ["other"]  # other jobs kept


# -- maintenance ---------------------------------------------------------------------------
async def _tenant_user(db: Database) -> tuple[int, int]:
    acc = AccountStore(db)
    tid = (await acc.create_tenant("acme", "Acme", NOW)).id
    uid = (await acc.create_user(tid, "alice", NOW)).id
    return tid, uid


async def test_expire_sessions_deletes_ended_sessions_and_their_tokens(db: Database) -> None:
    tid, uid = await _tenant_user(db)
    sessions = SessionStore(db)
    keep = 3_600_000
    specs = {  # id: (expires_at, revoked_at)
        "live": (NOW + DAY, None),
        "expired-long-ago": (NOW - 2 * keep, None),
        "expired-recently": (NOW - keep // 2, None),
        "revoked-long-ago": (NOW + DAY, NOW - 2 * keep),
        "revoked-recently": (NOW + DAY, NOW - keep // 2),
    }
    for sid, (expires, _) in specs.items():
        await sessions.create(sid, tid, uid, "", f"h-{sid}", NOW - 3 * keep, expires)
        await sessions.rotate(f"h-{sid}", f"h2-{sid}", NOW - 3 * keep, expires)
    for sid, (_, revoked) in specs.items():
        if revoked is not None:
            await sessions.revoke(tid, uid, revoked, session_id=sid)
    store = MaintenanceStore(db)
    assert await store.expire_sessions(NOW, keep, batch=1) == 1  # bounded
    assert await store.expire_sessions(NOW, keep, batch=10) == 1
    assert await store.expire_sessions(NOW, keep, batch=10) == 0
    async with db.reader.connect() as conn:
        left = set((await conn.execute(select(auth_sessions.c.id))).scalars())
        tokens = set((await conn.execute(select(refresh_tokens.c.session_id))).scalars())
    assert left == {"live", "expired-recently", "revoked-recently"}
    assert tokens == left  # both of each remaining session's tokens, none of the others
    assert await _count(db, refresh_tokens) == 2 * len(left)


async def test_expire_oauth_codes(db: Database) -> None:
    tid, uid = await _tenant_user(db)
    oauth = OAuthStore(db)
    await oauth.create_client(OAuthClient(
        client_id="app", tenant_id=tid, name="App", secret_hash=None,
        redirect_uris=("https://app.example/cb",), grant_types=("authorization_code",),
        scopes=(), first_party=False, service_user_id=None, created_at=NOW,
    ))
    for code, expires in (("old1", NOW - 1), ("old2", NOW), ("fresh", NOW + 1)):
        await oauth.save_code(code, AuthCode(
            tenant_id=tid, client_id="app", user_id=uid, redirect_uri="https://app.example/cb",
            scope="", code_challenge="c" * 43, code_challenge_method="S256",
            expires_at=expires,
        ))
    store = MaintenanceStore(db)
    assert await store.expire_oauth_codes(NOW, batch=1) == 1
    assert await store.expire_oauth_codes(NOW, batch=10) == 1
    assert await store.expire_oauth_codes(NOW, batch=10) == 0
    assert await _count(db, oauth_codes) == 1


class Chat:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.store = MessageStore(db)
        self.n = 0

    async def setup(self) -> Chat:
        tid, a = await _tenant_user(self.db)
        b = (await AccountStore(self.db).create_user(tid, "bob", NOW)).id
        convs = ConversationStore(self.db)
        self.tid, self.a = tid, a
        self.c1 = (await convs.create_direct(tid, a, b, NOW)).id
        self.c2 = (await convs.create_group(tid, a, "G", [b], NOW)).id
        return self

    async def send(self, conv: int, at: int) -> None:
        self.n += 1
        body = b'{"text":"m%d"}' % self.n
        result = await self.store.append([NewMessage(
            tenant_id=self.tid, conversation_id=conv, msg_id=f"mid-{self.n}", sender_id=self.a,
            sender_device="phone", kind="text", body=body,
            digest=hashlib.sha256(body).hexdigest(), created_at=at,
        )])
        assert result[0].status == "created"

    async def left(self) -> list[tuple[int, int]]:
        async with self.db.reader.connect() as conn:
            rows = await conn.execute(
                select(messages.c.conversation_id, messages.c.seq).order_by(messages.c.id)
            )
            return [(int(c), int(s)) for c, s in rows]


async def test_retention_deletes_old_messages_in_batches(db: Database) -> None:
    chat = await Chat(db).setup()
    for i in range(5):
        await chat.send(chat.c1 if i % 2 else chat.c2, NOW - 10 * DAY + i)
    for i in range(3):
        await chat.send(chat.c1, NOW - DAY + i)
    store = MaintenanceStore(db)
    cutoff = NOW - 5 * DAY
    assert await store.delete_messages_before(cutoff, batch=2) == 2
    assert await store.delete_messages_before(cutoff, batch=2) == 2
    assert await store.delete_messages_before(cutoff, batch=2) == 1  # fewer: done
    assert await store.delete_messages_before(cutoff, batch=2) == 0
    # Nothing newer touched; each conversation lost a prefix of its stream.
    assert await chat.left() == [(chat.c1, 3), (chat.c1, 4), (chat.c1, 5)]


async def test_retention_stops_at_a_newer_message(db: Database) -> None:
    chat = await Chat(db).setup()
    await chat.send(chat.c1, NOW - 10 * DAY)
    await chat.send(chat.c2, NOW - DAY)  # e.g. stamped by a node whose clock ran ahead
    await chat.send(chat.c1, NOW - 9 * DAY)
    store = MaintenanceStore(db)
    assert await store.delete_messages_before(NOW - 5 * DAY, batch=10) == 1
    assert await chat.left() == [(chat.c2, 1), (chat.c1, 2)]  # c1 seq 2 waits behind it
    # Once the newer one is old enough, the rest goes too.
    assert await store.delete_messages_before(NOW, batch=10) == 2
    assert await chat.left() == []

"""Sync after retention deleted the oldest messages of a conversation: a device
behind the first kept message starts there (no endless empty pages), and a
conversation whose messages are all gone syncs nothing."""

from __future__ import annotations

from parley.store import Database
from parley.store.jobs import MaintenanceStore
from tests.store.test_jobs_store import DAY, NOW, Chat


async def test_sync_starts_at_the_first_kept_message(db: Database) -> None:
    chat = await Chat(db).setup()
    await chat.send(chat.c2, NOW - 11 * DAY)  # c2 seq 1: deleted, nothing left
    for i in range(4):
        await chat.send(chat.c1, NOW - 10 * DAY + i)  # c1 seqs 1..4: deleted
    for i in range(3):
        await chat.send(chat.c1, NOW - DAY + i)  # c1 seqs 5..7: kept
    assert await MaintenanceStore(db).delete_messages_before(NOW - 5 * DAY, batch=100) == 5
    page = await chat.store.sync_page(chat.tid, chat.a, {}, limit=2)
    assert [(m.conversation_id, m.seq) for m in page.messages] == [(chat.c1, 5), (chat.c1, 6)]
    assert page.more
    page = await chat.store.sync_page(chat.tid, chat.a, {chat.c1: 6}, limit=10)
    assert [(m.conversation_id, m.seq) for m in page.messages] == [(chat.c1, 7)]
    assert not page.more
    # A device already past the deleted prefix is unaffected.
    page = await chat.store.sync_page(chat.tid, chat.a, {chat.c1: 7, chat.c2: 0}, limit=10)
    assert page.messages == [] and not page.more

"""The schema check reads revisions without Alembic; it must agree with Alembic."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from parley.store import Database, SchemaState, head_revision, schema_status
from parley.store.migrate import _config, known_revisions


def _alembic_heads(conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(conn).get_current_heads())


def test_revisions_and_head_match_alembic() -> None:
    script = ScriptDirectory.from_config(_config())
    assert head_revision() == script.get_current_head()
    assert known_revisions() == {
        rev.revision: tuple(rev._normalized_down_revisions) for rev in script.walk_revisions()
    }


async def test_current_revision_matches_alembic(empty_db: Database) -> None:
    async with empty_db.reader.connect() as conn:
        assert await conn.run_sync(_alembic_heads) == ()
    assert (await schema_status(empty_db)).current == ()


async def test_migrated_and_older_schemas(db: Database) -> None:
    status = await schema_status(db)
    async with db.reader.connect() as conn:
        assert status.current == await conn.run_sync(_alembic_heads) == (head_revision(),)
    assert status.state is SchemaState.CURRENT
    async with db.writer.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    status = await schema_status(db)
    assert status.state is SchemaState.BEHIND
    assert status.current == ("0001",)

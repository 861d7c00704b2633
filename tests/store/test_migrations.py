"""Migrations create exactly the schema the code describes, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from parley.store import Database, SchemaState, head_revision, schema_status, upgrade
from parley.store.tables import metadata


def _diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, metadata))


async def test_empty_database_is_reported_empty(empty_db: Database) -> None:
    status = await schema_status(empty_db)
    assert status.state is SchemaState.EMPTY
    assert status.head == head_revision()


async def test_upgrade_reaches_head_and_matches_tables(empty_db: Database) -> None:
    status = await upgrade(empty_db)
    assert status.state is SchemaState.CURRENT
    async with empty_db.reader.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], f"migrations and parley/store/tables.py disagree: {diff}"


async def test_upgrade_twice_is_harmless(db: Database) -> None:
    status = await upgrade(db)
    assert status.state is SchemaState.CURRENT


async def test_schema_from_newer_code_is_detected(db: Database) -> None:
    async with db.writer.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    status = await schema_status(db)
    assert status.state is SchemaState.AHEAD
    assert status.current == ("ffff_future",)

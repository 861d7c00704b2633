"""Shared fixtures: a real database on each backend.

``db`` runs a test once on SQLite (a file in tmp_path) and once on PostgreSQL
(a fresh schema per test in the database named by ``PARLEY_TEST_PG_DSN``).
Without that variable the PostgreSQL runs are skipped with a visible reason;
with ``PARLEY_TEST_PG_REQUIRED=1`` (set by .ci/run) the session fails if no
PostgreSQL test ran.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from parley.store.database import Database
from parley.store.migrate import upgrade

PG_DSN = os.environ.get("PARLEY_TEST_PG_DSN", "")
PG_SKIP_REASON = "PostgreSQL tests need PARLEY_TEST_PG_DSN (e.g. postgresql://parley:parley@127.0.0.1/parley_test)"

_pg_ran = {"count": 0}


def _asyncpg_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg_schema(action: str, schema: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_DSN))
    try:
        if action == "create":
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        else:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def new_pg_schema(prefix: str = "t_") -> str:
    """A fresh, empty schema in the test database (skips the test without one)."""
    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    schema = prefix + secrets.token_hex(6)
    await _pg_schema("create", schema)
    _pg_ran["count"] += 1
    return schema


async def drop_pg_schema(schema: str | None) -> None:
    if schema:
        await _pg_schema("drop", schema)


async def make_database(backend: str, tmp_path: os.PathLike[str]) -> tuple[Database, str]:
    """A fresh, empty database on ``backend``; returns it and its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{os.fspath(tmp_path)}/parley-test.db"
        return Database(url), url
    schema = await new_pg_schema()
    return Database(PG_DSN, pg_schema=schema, pool_size=4), schema


async def drop_database(backend: str, db: Database, handle: str) -> None:
    await db.close()
    if backend == "pg":
        await _pg_schema("drop", handle)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def empty_db(backend: str, tmp_path: os.PathLike[str]) -> AsyncIterator[Database]:
    """A database with no schema."""
    db, handle = await make_database(backend, tmp_path)
    try:
        yield db
    finally:
        await drop_database(backend, db, handle)


@pytest.fixture
async def db(empty_db: Database) -> Database:
    """A database migrated to this code's head."""
    await upgrade(empty_db)
    return empty_db


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PARLEY_TEST_PG_REQUIRED") == "1" and _pg_ran["count"] == 0:
        print("\nPARLEY_TEST_PG_REQUIRED=1 but no PostgreSQL test ran", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

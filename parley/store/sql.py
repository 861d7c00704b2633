"""Small SQL helpers shared by the repositories (the only dialect switch lives here)."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

from parley.store.database import Database

__all__ = ["insert_for"]


def insert_for(db: Database, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ``on_conflict_do_update/nothing`` for the database's dialect.

    Both dialects spell upserts the same way in SQLAlchemy, so callers write one
    statement and it runs on either backend.
    """
    if db.backend == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)

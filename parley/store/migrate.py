"""Schema migrations: upgrade, and tell whether the schema matches this code.

The node upgrades the schema at start (unless told not to) and refuses to start
when the database carries a revision this code does not know: that schema was
written by a newer Parley, and running older code on it could corrupt data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from parley.store.database import Database

__all__ = ["SchemaState", "SchemaStatus", "head_revision", "schema_status", "upgrade"]


class SchemaState(enum.Enum):
    CURRENT = "current"
    BEHIND = "behind"  # older than this code: `parley migrate` upgrades it
    AHEAD = "ahead"  # written by a newer Parley: this code must not run on it
    EMPTY = "empty"  # no Parley schema yet


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    state: SchemaState
    current: tuple[str, ...]
    head: str


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(conn).get_current_heads())


async def schema_status(db: Database) -> SchemaStatus:
    """Compare the database's revision with this code's head."""
    async with db.reader.connect() as conn:
        current = await conn.run_sync(_current)
    script = _script()
    head = head_revision()
    if not current:
        state = SchemaState.EMPTY
    elif current == (head,):
        state = SchemaState.CURRENT
    else:
        known = {rev.revision for rev in script.walk_revisions()}
        state = SchemaState.AHEAD if any(r not in known for r in current) else SchemaState.BEHIND
    return SchemaStatus(state=state, current=current, head=head)


def _upgrade(conn: Connection, revision: str) -> None:
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


async def upgrade(db: Database, revision: str = "head") -> SchemaStatus:
    """Upgrade the schema to ``revision``, in one transaction where the backend allows.

    Raises ``SchemaTooNew`` (via the caller's check) is not done here: call
    ``schema_status`` first when the code may be older than the database.
    """
    async with db.writer.begin() as conn:
        await conn.run_sync(_upgrade, revision)
    return await schema_status(db)

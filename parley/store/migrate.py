"""Schema migrations: upgrade, and tell whether the schema matches this code.

The node upgrades the schema at start (unless told not to) and refuses to start
when the database carries a revision this code does not know: that schema was
written by a newer Parley, and running older code on it could corrupt data.

Telling the schema's state does not import Alembic: the database's revision is
one plain query of ``alembic_version`` and this code's revisions are read from
the ``revision`` / ``down_revision`` lines of the migration files (Alembic and
what it imports are ~10 MB of every node's memory, needed only to upgrade).
``tests/store/test_migrate_revisions.py`` checks that reading against Alembic's.
"""

from __future__ import annotations

import ast
import enum
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from parley.errors import ConfigError, StartupError
from parley.store.database import Database, describe_db_error

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "SchemaState",
    "SchemaStatus",
    "head_revision",
    "known_revisions",
    "schema_status",
    "upgrade",
]

_MIGRATIONS = Path(__file__).with_name("migrations")
_VERSION_TABLE = "alembic_version"
# A module-level ``revision = "..."`` or ``down_revision = ...`` line, as the
# template (migrations/script.py.mako) writes them; an annotation is allowed.
_ASSIGNMENT = re.compile(
    r"^(?P<name>revision|down_revision)\s*(?::[^=\n]*)?=\s*(?P<value>.+?)\s*$", re.MULTILINE
)


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


def _parents(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"down_revision is not a revision or a tuple of them: {value!r}")


@functools.cache
def known_revisions() -> dict[str, tuple[str, ...]]:
    """Every revision of the migration files, with the revisions it follows.

    Alembic loads the same files (every ``*.py`` in ``migrations/versions``
    but ``__init__``) by importing them; this reads their two assignments.
    """
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted((_MIGRATIONS / "versions").glob("*.py")):
        if path.name.startswith("__"):
            continue
        found = {
            m["name"]: ast.literal_eval(m["value"])
            for m in _ASSIGNMENT.finditer(path.read_text(encoding="utf-8"))
        }
        if "revision" not in found or "down_revision" not in found:
            raise ValueError(f"{path.name}: no module-level revision / down_revision")
        revision = found["revision"]
        if not isinstance(revision, str):
            raise ValueError(f"{path.name}: revision is not a string: {revision!r}")
        revisions[revision] = _parents(found["down_revision"])
    return revisions


@functools.cache
def head_revision() -> str:
    """The newest revision this code knows."""
    revisions = known_revisions()
    followed = {parent for parents in revisions.values() for parent in parents}
    heads = [rev for rev in revisions if rev not in followed]
    if len(heads) != 1:
        raise ValueError(f"the migrations have {len(heads)} heads, not one: {heads}")
    return heads[0]


def _current(conn: Connection) -> tuple[str, ...]:
    # What alembic's MigrationContext.get_current_heads() does: no table, no revision.
    if not inspect(conn).has_table(_VERSION_TABLE):
        return ()
    rows = conn.execute(text("SELECT version_num FROM alembic_version"))
    return tuple(str(row[0]) for row in rows)


async def schema_status(db: Database) -> SchemaStatus:
    """Compare the database's revision with this code's head.

    Raises ``ConfigError`` when the configured PostgreSQL schema does not exist:
    PostgreSQL would then create tables in no schema at all ("no schema has been
    selected"), and creating it here would hide a misspelt name behind an empty
    database.
    """
    async with db.reader.connect() as conn:
        if db.backend == "postgresql" and db.pg_schema:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": db.pg_schema}
            )
            if found is None:
                raise ConfigError(
                    f"database schema {db.pg_schema!r} does not exist in this database: "
                    f"create it (CREATE SCHEMA ... AUTHORIZATION the node's role) or "
                    f"unset database_schema"
                )
        current = await conn.run_sync(_current)
    head = head_revision()
    if not current:
        state = SchemaState.EMPTY
    elif current == (head,):
        state = SchemaState.CURRENT
    else:
        known = known_revisions()
        state = SchemaState.AHEAD if any(r not in known for r in current) else SchemaState.BEHIND
    return SchemaStatus(state=state, current=current, head=head)


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command  # only here: see the module's docstring

    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


async def upgrade(db: Database, revision: str = "head") -> SchemaStatus:
    """Upgrade the schema to ``revision``, in one transaction where the backend allows.

    Raises ``SchemaTooNew`` (via the caller's check) is not done here: call
    ``schema_status`` first when the code may be older than the database.
    """
    try:
        async with db.writer.begin() as conn:
            await conn.run_sync(_upgrade, revision)
    except Exception as exc:  # noqa: BLE001 - e.g. the role may not create tables
        raise StartupError(f"schema upgrade failed: {describe_db_error(exc)}") from None
    return await schema_status(db)

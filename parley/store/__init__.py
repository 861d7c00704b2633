"""Storage: SQLAlchemy Core tables, Alembic migrations and repositories.

SQLite (the embedded default) and PostgreSQL run through the same code; the
only dialect switch is ``parley.store.sql.insert_for``.
"""

from parley.store.accounts import AccountStore, Device, Tenant, User
from parley.store.database import Backend, Database, normalize_url
from parley.store.migrate import SchemaState, SchemaStatus, head_revision, schema_status, upgrade

__all__ = [
    "AccountStore",
    "Backend",
    "Database",
    "Device",
    "SchemaState",
    "SchemaStatus",
    "Tenant",
    "User",
    "head_revision",
    "normalize_url",
    "schema_status",
    "upgrade",
]

"""Storage: SQLAlchemy Core tables, Alembic migrations and repositories.

SQLite (the embedded default) and PostgreSQL run through the same code; the
only dialect switch is ``parley.store.sql.insert_for``.
"""

from parley.store.accounts import AccountStore, Device, Tenant, User
from parley.store.batcher import CursorWriter, WriteBatcher
from parley.store.conversations import Conversation, ConversationStore, ConversationSummary
from parley.store.cursors import CursorStore, DeliveryCursor
from parley.store.database import Backend, Database, normalize_url
from parley.store.messages import AppendResult, MessageStore, NewMessage, StoredMessage, SyncPage
from parley.store.migrate import SchemaState, SchemaStatus, head_revision, schema_status, upgrade

__all__ = [
    "AccountStore",
    "AppendResult",
    "Backend",
    "Conversation",
    "ConversationStore",
    "ConversationSummary",
    "CursorStore",
    "CursorWriter",
    "Database",
    "DeliveryCursor",
    "Device",
    "MessageStore",
    "NewMessage",
    "SchemaState",
    "SchemaStatus",
    "StoredMessage",
    "SyncPage",
    "Tenant",
    "User",
    "WriteBatcher",
    "head_revision",
    "normalize_url",
    "schema_status",
    "upgrade",
]

"""The schema, as SQLAlchemy Core tables: the one description of Parley's storage.

Rules every table follows:

* Every tenant-owned table carries ``tenant_id`` and every repository query
  filters on it, so one tenant can never read another's rows by id.
* Times are integers: milliseconds since the Unix epoch (UTC).  The same type on
  SQLite and PostgreSQL, no time-zone surprises, cheap to compare.
* A conversation's ``last_seq`` is the single owner of its order: a message's
  ``seq`` is taken by incrementing it inside the transaction that inserts the
  message, so seqs are gapless and monotonic per conversation.

Alembic migrations in ``migrations/versions`` create these tables;
``tests/store/test_migrations.py`` fails if the two drift apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

__all__ = [
    "conversations",
    "credentials",
    "delivery_cursors",
    "devices",
    "members",
    "messages",
    "metadata",
    "read_cursors",
    "signing_keys",
    "tenants",
    "users",
]

# Named constraints, so migrations on both backends name them the same way.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

tenants = Table(
    "tenants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("username", String(64), nullable=False),
    Column("display_name", String(200), nullable=False),
    # "user" | "tenant_admin" | "system_admin"
    Column("role", String(32), nullable=False, server_default="user"),
    # "active" | "disabled"
    Column("status", String(16), nullable=False, server_default="active"),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "username"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    # "password" (argon2id hash in ``secret``); later: "ldap", "oidc" subjects.
    Column("kind", String(32), nullable=False),
    Column("secret", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("user_id", "kind"),
)

devices = Table(
    "devices",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("platform", String(32), nullable=False, server_default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    # "direct" | "group"
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False, server_default=""),
    # For direct conversations "<low uid>:<high uid>", so a pair has one conversation.
    Column("direct_key", String(64), nullable=True),
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    Column("created_by", Id, ForeignKey("users.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "direct_key"),
)

members = Table(
    "members",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("conversation_id", Id, ForeignKey("conversations.id"), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    # "owner" | "admin" | "member"
    Column("role", String(16), nullable=False, server_default="member"),
    Column("joined_at", BigInteger, nullable=False),
    Index(None, "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("conversation_id", Id, ForeignKey("conversations.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    # The client-generated message id (version.sender.device.timestamp.random).
    Column("msg_id", String(160), nullable=False),
    Column("sender_id", Id, ForeignKey("users.id"), nullable=False),
    Column("sender_device", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    # Canonical JSON of the body; emptied when the message is recalled.
    Column("body", LargeBinary, nullable=False),
    # Digest of (conversation, kind, body) as sent: a resend with the same
    # msg_id must carry the same payload, checked even after a recall.
    Column("digest", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("recalled", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("conversation_id", "seq"),
    UniqueConstraint("tenant_id", "msg_id"),
)

delivery_cursors = Table(
    "delivery_cursors",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("conversation_id", Id, ForeignKey("conversations.id"), primary_key=True),
    # Highest seq this device has acknowledged receiving (cumulative).
    Column("acked_seq", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

read_cursors = Table(
    "read_cursors",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("conversation_id", Id, ForeignKey("conversations.id"), primary_key=True),
    # Highest seq this user has read, on any device.
    Column("read_seq", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Keys that sign access tokens (HS256), shared by every node through the database.
# The newest unretired key signs; every unretired key verifies, so rotating a key
# does not log anyone out.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(32), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("retired_at", BigInteger, nullable=True),
)

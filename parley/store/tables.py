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
    "auth_sessions",
    "blocks",
    "contacts",
    "conversations",
    "credentials",
    "delivery_cursors",
    "devices",
    "external_identities",
    "idempotency_keys",
    "job_leases",
    "job_runs",
    "members",
    "messages",
    "metadata",
    "oauth_clients",
    "oauth_codes",
    "read_cursors",
    "refresh_tokens",
    "signing_keys",
    "tenants",
    "used_tickets",
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
    # 0006: per-tenant policies; NULL means "the node's setting".
    Column("allow_registration", Boolean, nullable=True),
    Column("stranger_messages", Boolean, nullable=True),
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
    # 0005: a short profile line, set by the user.
    Column("status_text", String(200), nullable=False, server_default=""),
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
    # 0005, groups only: the announcement, "only owner/admins may send", dissolution time.
    Column("announcement", Text, nullable=False, server_default=""),
    Column("all_muted", Boolean, nullable=False, server_default=false()),
    Column("dissolved_at", BigInteger, nullable=True),
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
    # 0005: the member's own settings (pinned, notifications muted) and, in groups,
    # the time until which an owner/admin muted them (ms; 0: not muted).
    Column("pinned", Boolean, nullable=False, server_default=false()),
    Column("muted", Boolean, nullable=False, server_default=false()),
    Column("send_muted_until", BigInteger, nullable=False, server_default="0"),
    Index(None, "user_id"),
)

# No foreign keys (migration 0008 says why): the append checks the tenant,
# the conversation and the sender's membership in its own statement.
messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, nullable=False),
    Column("conversation_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    # The client-generated message id (version.sender.device.timestamp.random).
    Column("msg_id", String(160), nullable=False),
    Column("sender_id", Id, nullable=False),
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

# -- 0005: social --------------------------------------------------------------------
# Columns added to existing tables by 0005: users.status_text; conversations.announcement,
# conversations.all_muted, conversations.dissolved_at; members.pinned, members.muted,
# members.send_muted_until.

# One row per direction of a relationship: a request from A to B is (A, B, "requested")
# and (B, A, "incoming"); accepting turns both into "accepted".
contacts = Table(
    "contacts",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("peer_id", Id, ForeignKey("users.id"), primary_key=True),
    # "requested" | "incoming" | "accepted"
    Column("state", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# ``user_id`` blocked ``blocked_id``: the blocked user cannot message the blocker
# in their direct conversation nor see the blocker's presence.
blocks = Table(
    "blocks",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("blocked_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "blocked_id"),
)

# Server-side sends: a caller's Idempotency-Key -> the message id the server generated.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("msg_id", String(160), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# -- 0004: identities and OAuth clients ----------------------------------------------
# A Parley user vouched for by an outside identity provider (LDAP now, OIDC later):
# ``subject`` is the provider's stable id for the person (entryUUID, else the DN).
external_identities = Table(
    "external_identities",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("email", String(320), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("last_login_at", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "provider", "subject"),
    Index(None, "user_id"),
)

# Registered OAuth 2.0 clients.  ``secret_hash`` is the SHA-256 (hex) of a 256-bit
# random secret, NULL for public clients; lists are space-separated.
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=True),
    Column("redirect_uris", Text, nullable=False, server_default=""),
    Column("grant_types", String(200), nullable=False),
    Column("scopes", Text, nullable=False, server_default=""),
    Column("first_party", Boolean, nullable=False, server_default=false()),
    # The service principal that client-credentials tokens stand for.
    Column("service_user_id", Id, ForeignKey("users.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

# Authorization codes: stored as SHA-256 (hex), single use (deleted when redeemed),
# always with an S256 PKCE challenge.
oauth_codes = Table(
    "oauth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("client_id", String(64), ForeignKey("oauth_clients.client_id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False, server_default=""),
    Column("code_challenge", String(128), nullable=False),
    Column("code_challenge_method", String(8), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# -- 0003: auth sessions ---------------------------------------------------------------
# A login: the ``sid`` of every access token it issues.  Revoking it (logout, refresh
# reuse, password change, device revocation) kills its refresh tokens and, through the
# in-memory revocation list, its access tokens.
auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", Id, ForeignKey("tenants.id"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id"), nullable=False),
    # The device the login was made for ("" when the client named none).
    Column("device_id", String(64), nullable=False, server_default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=False),
    # The refresh token's (sliding) expiry: each rotation moves it forward.
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Index(None, "user_id"),
    Index(None, "revoked_at"),
)

# Refresh tokens, by SHA-256 (hex) of the 256-bit random token: each is used once;
# a used one presented again (``used_at`` set) revokes its whole session.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("session_id", String(32), ForeignKey("auth_sessions.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Index(None, "session_id"),
)

# One-time tickets already redeemed (by JWT id) until they expire anyway.
used_tickets = Table(
    "used_tickets",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
)

# -- 0007: scheduled jobs ----------------------------------------------------------------
# One row per job: the newest tick claimed and the fencing token it was claimed with.  A
# claim carrying an older token than the one stored here is refused (a deposed leader
# that still believes it leads cannot run a job).
job_leases = Table(
    "job_leases",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("last_tick", BigInteger, nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
    Column("holder", String(128), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# One row per claimed (job, tick): the unique constraint is what makes a tick run once
# across the cluster.  ``outcome`` ("ok" | "error") and ``finished_at`` stay NULL while
# the run is going (or forever, if its node died during it).
job_runs = Table(
    "job_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("tick", BigInteger, nullable=False),
    Column("node_id", String(128), nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("items", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("job", "tick"),
)

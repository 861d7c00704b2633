"""Contacts, blocks, group and member settings, idempotency keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("status_text", sa.String(200), nullable=False, server_default="")
    )
    op.add_column(
        "conversations", sa.Column("announcement", sa.Text, nullable=False, server_default="")
    )
    op.add_column(
        "conversations",
        sa.Column("all_muted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("conversations", sa.Column("dissolved_at", sa.BigInteger, nullable=True))
    op.add_column(
        "members", sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "members", sa.Column("muted", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "members",
        sa.Column("send_muted_until", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "contacts",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("peer_id", Id, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "peer_id", name="pk_contacts"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_contacts_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_contacts_user_id_users"),
        sa.ForeignKeyConstraint(["peer_id"], ["users.id"], name="fk_contacts_peer_id_users"),
    )
    op.create_table(
        "blocks",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("blocked_id", Id, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "blocked_id", name="pk_blocks"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_blocks_tenant_id_tenants"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_blocks_user_id_users"),
        sa.ForeignKeyConstraint(["blocked_id"], ["users.id"], name="fk_blocks_blocked_id_users"),
    )
    op.create_index("ix_blocks_blocked_id", "blocks", ["blocked_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("msg_id", sa.String(160), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_idempotency_keys_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_idempotency_keys_user_id_users"
        ),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index("ix_blocks_blocked_id", table_name="blocks")
    op.drop_table("blocks")
    op.drop_table("contacts")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("send_muted_until")
        batch.drop_column("muted")
        batch.drop_column("pinned")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("dissolved_at")
        batch.drop_column("all_muted")
        batch.drop_column("announcement")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("status_text")

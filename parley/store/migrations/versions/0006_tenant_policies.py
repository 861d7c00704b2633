"""Per-tenant policies: registration and stranger messages (NULL: the node's setting).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("allow_registration", sa.Boolean, nullable=True))
    op.add_column("tenants", sa.Column("stranger_messages", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("stranger_messages")
        batch.drop_column("allow_registration")

"""Messages without foreign keys: the append checks what they checked, at a third of the cost.

Every message row fired three foreign-key triggers (tenant, conversation,
sender), each an index lookup plus a KEY SHARE row lock; measured on
PostgreSQL 15 they were 7.4 ms of the 11 ms a 200-message batch took to
execute, and every concurrent writer's KEY SHARE on the same tenant row turns
into a MultiXact.  The append already checks the same facts in its own
statement, under the conversation's row lock: the conversation exists in the
message's tenant, and the sender is a member (``members`` keeps its foreign
keys to users and conversations).  Nothing deletes tenants, users or
conversations, so no message can be orphaned by a delete either.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_FKS = (
    ("fk_messages_tenant_id_tenants", "tenant_id", "tenants"),
    ("fk_messages_conversation_id_conversations", "conversation_id", "conversations"),
    ("fk_messages_sender_id_users", "sender_id", "users"),
)


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:  # SQLite rebuilds the table
        for name, _, _ in _FKS:
            batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        for name, column, table in _FKS:
            batch.create_foreign_key(name, table, [column], ["id"])



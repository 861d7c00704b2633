"""External identities and OAuth 2.0 clients.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "external_identities",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_login_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_external_identities"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_external_identities_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_external_identities_user_id_users"
        ),
        sa.UniqueConstraint(
            "tenant_id", "provider", "subject",
            name="uq_external_identities_tenant_id_provider_subject",
        ),
    )
    op.create_index("ix_external_identities_user_id", "external_identities", ["user_id"])
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=True),
        sa.Column("redirect_uris", sa.Text, nullable=False, server_default=""),
        sa.Column("grant_types", sa.String(200), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False, server_default=""),
        sa.Column("first_party", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("service_user_id", Id, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_oauth_clients"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_oauth_clients_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["service_user_id"], ["users.id"], name="fk_oauth_clients_service_user_id_users"
        ),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False, server_default=""),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(8), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_oauth_codes"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_oauth_codes_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["oauth_clients.client_id"],
            name="fk_oauth_codes_client_id_oauth_clients",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_oauth_codes_user_id_users"),
    )


def downgrade() -> None:
    op.drop_table("oauth_codes")
    op.drop_table("oauth_clients")
    op.drop_index("ix_external_identities_user_id", table_name="external_identities")
    op.drop_table("external_identities")

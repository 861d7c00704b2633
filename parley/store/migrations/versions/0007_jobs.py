"""Scheduled jobs: one lease per job (fencing) and a record of every run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("last_tick", sa.BigInteger, nullable=False),
        sa.Column("fencing_token", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("job", name="pk_job_leases"),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("tick", sa.BigInteger, nullable=False),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("fencing_token", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("items", sa.BigInteger, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_runs"),
        sa.UniqueConstraint("job", "tick", name="uq_job_runs_job_tick"),
    )


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("job_leases")

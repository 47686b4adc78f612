"""rejection counters: one row per (run, round, silo, reason code), incremented

Rejected submissions used to append an ``update_rejected`` ledger entry each, so an approved
silo could grow the ledger without bound. They now bump a counter in this table (bounded by
the key space: rounds opened x silos in the run x a fixed set of reason codes); the ledger
gets one ``rejections`` summary per round when the round closes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejection_counts",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("silo", sa.String(length=64), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=False),
        sa.Column("federation", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("run_id", "round", "silo", "reason_code"),
    )


def downgrade() -> None:
    op.drop_table("rejection_counts")

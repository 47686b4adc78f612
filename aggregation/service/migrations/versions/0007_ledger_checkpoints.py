"""ledger checkpoints and the silos' countersignatures

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 14:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_checkpoints",
        sa.Column("height", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("service_signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("height"),
    )
    op.create_index(
        op.f("ix_ledger_checkpoints_run_id"), "ledger_checkpoints", ["run_id"], unique=False
    )
    op.create_table(
        "ledger_countersignatures",
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("silo", sa.String(length=80), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["height"], ["ledger_checkpoints.height"]),
        sa.PrimaryKeyConstraint("height", "silo"),
    )


def downgrade() -> None:
    op.drop_table("ledger_countersignatures")
    op.drop_index(op.f("ix_ledger_checkpoints_run_id"), table_name="ledger_checkpoints")
    op.drop_table("ledger_checkpoints")

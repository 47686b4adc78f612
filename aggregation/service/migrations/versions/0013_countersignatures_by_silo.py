"""ledger countersignatures indexed by silo

Every task a silo gets now carries the checkpoints above the highest one it countersigned
(`aggregation.service.checkpoints.with_pending`); that maximum is read through this index
instead of a scan of every silo's countersignatures.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:00:00.000000
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_ledger_countersignatures_silo", "ledger_countersignatures", ["silo", "height"]
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_countersignatures_silo", table_name="ledger_countersignatures")

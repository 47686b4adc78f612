"""vertical runs: epochs reported (logistic regression)

A vertical run may train logistic regression instead of SecureBoost: its active party
reports each epoch in order, as SecureBoost's reports each tree, and the run counts them so
that an epoch out of order, or an end that claims another count, is refused.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vertical_runs") as batch:
        batch.add_column(sa.Column("epochs", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("vertical_runs") as batch:
        batch.drop_column("epochs")

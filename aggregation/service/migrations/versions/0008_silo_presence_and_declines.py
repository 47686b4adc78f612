"""silo presence (last seen, readiness) and the cause of a declined round

A silo's agent reports when it is ready (validated and warmed up) and every authenticated
request refreshes when it was last seen; a declined contribution keeps the silo's cause.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("silos") as batch:
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("ready_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("ready_json", sa.Text(), nullable=True))
    with op.batch_alter_table("contributions") as batch:
        batch.add_column(sa.Column("cause", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contributions") as batch:
        batch.drop_column("cause")
    with op.batch_alter_table("silos") as batch:
        batch.drop_column("ready_json")
        batch.drop_column("ready_at")
        batch.drop_column("last_seen_at")

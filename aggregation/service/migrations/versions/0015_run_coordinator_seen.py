"""runs: when the coordinator last read a run still waiting for its first round

A coordinator waits for its silos to report ready before it opens round 1, reading its run
every few seconds (`flows.round_progress.wait_ready`). A coordinator that dies in that wait
left its run ``running`` for good: the service's abandoned-run check (`abandoned.py`) counts
from a round's deadline, and such a run has no round. The run now records that read, and a
run before round 1 whose coordinator stopped reading it is failed as abandoned.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("coordinator_seen_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("coordinator_seen_at")

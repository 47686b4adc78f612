"""vertical runs: mode and parameters for the silo agents; envelope ids never reused

A vertical run says what its parties' agents do (train, predict or count), with which
hyperparameters, and for prediction which training run's model halves they use: the agents
pick the run up from their task poll, so the run itself must carry it.

The relay now deletes envelopes once read. A party reads its inbox past the last id it saw,
so ids must never be reused: on SQLite an INTEGER PRIMARY KEY without AUTOINCREMENT reuses
the highest id once that row is gone, and a new envelope would hide behind an old id. The
table is rebuilt with AUTOINCREMENT there (PostgreSQL's sequence never goes back).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 15:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vertical_runs") as batch:
        batch.add_column(
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="train")
        )
        batch.add_column(sa.Column("params_json", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("model_run", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "vertical_envelopes", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    with op.batch_alter_table("vertical_runs") as batch:
        batch.drop_column("model_run")
        batch.drop_column("params_json")
        batch.drop_column("mode")

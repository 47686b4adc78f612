"""vertical runs: the relay's mailbox

A vertical run's parties, status and ledger figures; each party's X25519 public key; and the
sealed envelopes the service relays between parties (header and ciphertext as they came).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 01:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vertical_runs",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "federation", sa.String(length=64), sa.ForeignKey("federations.name"), nullable=False
        ),
        sa.Column("active", sa.String(length=64), nullable=False),
        sa.Column("parties_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("psi_size", sa.Integer(), nullable=True),
        sa.Column("psi_digest", sa.String(length=64), nullable=True),
        sa.Column("trees", sa.Integer(), nullable=False),
        sa.Column("model_digest", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_vertical_runs_federation", "vertical_runs", ["federation"])
    op.create_table(
        "vertical_keys",
        sa.Column(
            "run_id", sa.String(length=32), sa.ForeignKey("vertical_runs.id"), primary_key=True
        ),
        sa.Column("party", sa.String(length=64), primary_key=True),
        sa.Column("public_key", sa.String(length=64), nullable=False),
    )
    op.create_table(
        "vertical_envelopes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(length=32), sa.ForeignKey("vertical_runs.id"), nullable=False
        ),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("frame", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_vertical_envelopes_run_id", "vertical_envelopes", ["run_id"])
    op.create_index("ix_vertical_envelopes_recipient", "vertical_envelopes", ["recipient"])


def downgrade() -> None:
    op.drop_table("vertical_envelopes")
    op.drop_table("vertical_keys")
    op.drop_index("ix_vertical_runs_federation", "vertical_runs")
    op.drop_table("vertical_runs")

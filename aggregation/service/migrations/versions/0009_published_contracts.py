"""published data contracts

Each federation's contracts, as the coordinator published them: the exact TOML text, its
sha256 and the coordinator's Ed25519 signature; one row per (federation, name, version).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 20:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "published_contracts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "federation", sa.String(length=64), sa.ForeignKey("federations.name"), nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("toml", sa.Text(), nullable=False),
        sa.Column("signer", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("federation", "name", "version", name="uq_published_contract"),
    )


def downgrade() -> None:
    op.drop_table("published_contracts")

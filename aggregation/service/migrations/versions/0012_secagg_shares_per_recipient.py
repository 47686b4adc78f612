"""secure aggregation: encrypted shares stored one row per recipient

A silo's fetch of its shares read every sender's whole ``share`` message of the round (N
messages of N shares each) to pick out the N addressed to it. Each accepted message's shares
now also go to `secagg_shares`, one row per (sender, recipient), read through an index on the
recipient. The signed messages stay whole in `secagg_messages`. Rounds in progress are filled
in from their stored messages.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from schemas.secagg.messages import ShareKeys

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    shares = op.create_table(
        "secagg_shares",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.number"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "round", "sender", "recipient"),
    )
    op.create_index("ix_secagg_shares_recipient", "secagg_shares", ["run_id", "round", "recipient"])
    messages = sa.table(
        "secagg_messages",
        sa.column("run_id", sa.String),
        sa.column("round", sa.Integer),
        sa.column("stage", sa.String),
        sa.column("silo", sa.String),
        sa.column("payload", sa.LargeBinary),
        sa.column("id", sa.Integer),
    )
    rounds = sa.table(
        "rounds",
        sa.column("run_id", sa.String),
        sa.column("number", sa.Integer),
        sa.column("status", sa.String),
    )
    # only open rounds can still be fetched from; closed ones keep their messages as they are
    stored = (
        op.get_bind()
        .execute(
            sa.select(messages.c.run_id, messages.c.round, messages.c.silo, messages.c.payload)
            .join(
                rounds,
                sa.and_(rounds.c.run_id == messages.c.run_id, rounds.c.number == messages.c.round),
            )
            .where(messages.c.stage == "share", rounds.c.status == "open")
            .order_by(messages.c.id)
        )
        .all()
    )
    for run_id, round_, sender, payload in stored:
        rows = [
            {
                "run_id": run_id,
                "round": round_,
                "sender": sender,
                "recipient": recipient,
                "ciphertext": blob,
            }
            for recipient, blob in ShareKeys.from_bytes(payload).ciphertexts.items()
        ]
        if rows:
            op.bulk_insert(shares, rows)


def downgrade() -> None:
    op.drop_index("ix_secagg_shares_recipient", table_name="secagg_shares")
    op.drop_table("secagg_shares")

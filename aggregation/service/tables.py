"""The service's tables. Every piece of federation state lives in these rows."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from aggregation.service.db import Base


def utcnow() -> datetime:
    """Naive UTC, stored the same way on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


class Federation(Base):
    __tablename__ = "federations"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Silo(Base):
    __tablename__ = "silos"
    __table_args__ = (UniqueConstraint("federation", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    federation: Mapped[str] = mapped_column(ForeignKey("federations.name"))
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    enrolled_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # presence: the last authenticated request, and the agent's latest readiness report
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ready_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class Nonce(Base):
    """Nonces seen within the clock-skew window; the primary key makes a replay fail."""

    __tablename__ = "nonces"
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Run(Base):
    __tablename__ = "runs"
    __held_in_session__ = True  # small, read several times a request (`db.make_sessionmaker`)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    federation: Mapped[str] = mapped_column(ForeignKey("federations.name"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="created", index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    strategy_state: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    federation_stats: Mapped[str | None] = mapped_column(Text, nullable=True)
    # before round 1: the coordinator's last read of the run (`abandoned.coordinator_read`)
    coordinator_seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RunSilo(Base):
    __tablename__ = "run_silos"
    __held_in_session__ = True
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    silo: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Round(Base):
    __tablename__ = "rounds"
    __held_in_session__ = True
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="train")
    status: Mapped[str] = mapped_column(String(16), default="open")
    opened_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    input_model_version: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # secure aggregation: advertise -> share -> masked -> unmask (None: plain updates)
    secagg_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    roster_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class SecAggMessage(Base):
    """The secure-aggregation mailbox: every accepted protocol message, in arrival order.

    The protocol's server state is a pure function of these rows, so a restarted service
    rebuilds it by replaying them; nothing lives only in a process's memory.
    """

    __tablename__ = "secagg_messages"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.number"]),
        UniqueConstraint("run_id", "round", "stage", "silo"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    round: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    silo: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    n_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SecAggShare(Base):
    """One encrypted share from `sender` to `recipient`, split out of the sender's accepted
    ``share`` message (which `secagg_messages` keeps whole, as signed) in the same
    transaction: a silo's fetch reads its own rows through the recipient index, never every
    sender's message of the round (N messages of N shares each)."""

    __tablename__ = "secagg_shares"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.number"]),
        UniqueConstraint("run_id", "round", "sender", "recipient"),
        Index("ix_secagg_shares_recipient", "run_id", "round", "recipient"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32))
    round: Mapped[int] = mapped_column(Integer)
    sender: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class Contribution(Base):
    """One silo's answer in one round: an update, an evaluation, a refusal, a sit-out or a
    signed decline (kind ``declined``, with its cause).

    The primary key (run, round, silo) is what makes a resubmission after a crash count once.
    """

    __tablename__ = "contributions"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.number"]),
    )
    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    metrics_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    cause: Mapped[str | None] = mapped_column(String(16), nullable=True)  # a decline's cause
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "models"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class HistRun(Base):
    """A secure-histogram (tree mode ``secure-hist``) run's protocol state, one row per run.

    Plain data, never pickled: `state_json` holds the secure-aggregation session (server half)
    and the tree being grown, `arrays` its level histograms (safetensors, `schemas.tensors`),
    `trees_json` the finished trees. `aggregation.service.hist_state` reads and writes them.
    """

    __tablename__ = "hist_runs"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), default="advertise")
    round: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str] = mapped_column(Text)
    state_json: Mapped[str] = mapped_column(Text)
    arrays: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    cuts_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    trees_json: Mapped[str] = mapped_column(Text, default="[]")
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class HistMessage(Base):
    """The secure-histogram mailbox: every accepted session message, in arrival order.

    A masked vector's payload is kept until its aggregation is unmasked (the sum is computed
    from these rows), then cleared; its sha256 stays as the record of what was sent.
    """

    __tablename__ = "hist_messages"
    __table_args__ = (UniqueConstraint("run_id", "counter", "stage", "silo"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    counter: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    silo: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RejectionCount(Base):
    """How often one silo's submissions to one round were refused, for one reason code.

    One row per key, incremented in place: a rejected request costs one upsert and never a new
    row beyond the key space (rounds opened x silos in the run x `statements.REASON_CODES`).
    The ledger gets one ``rejections`` summary per round when the round closes.
    """

    __tablename__ = "rejection_counts"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    federation: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LedgerCheckpoint(Base):
    """A signed checkpoint of the ledger (`schemas.ledger_checkpoint`), one per height.

    Published at round close, round failure and run end; silos fetch and countersign it.
    """

    __tablename__ = "ledger_checkpoints"
    height: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[str] = mapped_column(String(32))
    service_signature: Mapped[str] = mapped_column(String(128))


class LedgerCountersignature(Base):
    """A silo's Ed25519 countersignature of one checkpoint (checked before it is stored)."""

    __tablename__ = "ledger_countersignatures"
    # a silo's latest countersigned height, read for every task it gets
    __table_args__ = (Index("ix_ledger_countersignatures_silo", "silo", "height"),)
    height: Mapped[int] = mapped_column(ForeignKey("ledger_checkpoints.height"), primary_key=True)
    silo: Mapped[str] = mapped_column(String(80), primary_key=True)
    signature: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

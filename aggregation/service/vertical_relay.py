"""The service's part in a vertical run: a relay and a ledger, never a key holder.

Parties (approved silos of one federation; one of them, the active party, holds the labels)
exchange sealed envelopes (`schemas.vertical.frame`: ChaCha20-Poly1305 under per-pair keys
the service never sees). The service checks what it can without a key: the envelope's header
names the silo that signed the request as its sender, this run, and another party of it as
recipient. It stores the frame as it came (ciphertext and header) until the recipient reads
it. It also relays each party's X25519 public key, as it relays silo keys for secure
aggregation. The ledger gets: the run with its parties, every party's intersection size and
hash, every tree's lineage (which party split which node at what depth, no threshold or bin),
the end with the model's digest, or the failure with the reason a party gave.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from aggregation.service.db import Base
from aggregation.service.exceptions import Conflict, Forbidden, InvalidPayload, NotFound
from aggregation.service.lineage import Recorder
from aggregation.service.tables import Silo, utcnow
from schemas.vertical import (
    PsiDone,
    RunDone,
    RunFailed,
    TreeDone,
    VerticalEvent,
    VerticalRunCreate,
    VerticalRunOut,
    unframe,
)

KEY_BYTES = 32


class VerticalRun(Base):
    __tablename__ = "vertical_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    federation: Mapped[str] = mapped_column(ForeignKey("federations.name"), index=True)
    active: Mapped[str] = mapped_column(String(64))
    parties_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    psi_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    psi_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    trees: Mapped[int] = mapped_column(Integer, default=0)
    model_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def parties(self) -> list[str]:
        return list(json.loads(self.parties_json))


class VerticalKey(Base):
    __tablename__ = "vertical_keys"
    run_id: Mapped[str] = mapped_column(ForeignKey("vertical_runs.id"), primary_key=True)
    party: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))


class VerticalEnvelope(Base):
    __tablename__ = "vertical_envelopes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("vertical_runs.id"), index=True)
    sender: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    frame: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def out(run: VerticalRun) -> VerticalRunOut:
    return VerticalRunOut(
        run_id=run.id,
        federation=run.federation,
        active=run.active,
        parties=run.parties,
        status=run.status,  # type: ignore[arg-type]
        reason=run.reason,
        psi_size=run.psi_size,
        psi_digest=run.psi_digest,
        trees=run.trees,
        model_digest=run.model_digest,
    )


def create(s: Session, recorder: Recorder, req: VerticalRunCreate) -> VerticalRun:
    parties = sorted(set(req.parties))
    if len(parties) != len(req.parties):
        raise InvalidPayload(f"vertical run: parties {req.parties} name a silo twice")
    if req.active not in parties:
        raise InvalidPayload(f"vertical run: active party {req.active!r} is not in {parties}")
    approved = set(
        s.scalars(
            select(Silo.name).where(Silo.federation == req.federation, Silo.status == "approved")
        )
    )
    missing = sorted(set(parties) - approved)
    if missing:
        raise Conflict(f"silos {missing} are not approved members of {req.federation!r}")
    run = VerticalRun(
        id=uuid.uuid4().hex,
        federation=req.federation,
        active=req.active,
        parties_json=json.dumps(parties),
        status="running",
        trees=0,
    )
    s.add(run)
    s.flush()
    recorder.service(s, "vertical_started", {"active": req.active, "parties": parties}, run.id)
    return run


def get(s: Session, run_id: str, *, for_update: bool = False) -> VerticalRun:
    stmt = select(VerticalRun).where(VerticalRun.id == run_id)
    run = s.scalar(stmt.with_for_update() if for_update else stmt)
    if run is None:
        raise NotFound(f"vertical run {run_id!r} does not exist")
    return run


def party_of(s: Session, run_id: str, silo: str, *, for_update: bool = False) -> VerticalRun:
    run = get(s, run_id, for_update=for_update)
    if silo not in run.parties:
        raise Forbidden(f"silo {silo!r} is not a party of vertical run {run_id}")
    return run


def _running(run: VerticalRun, silo: str, what: str) -> None:
    if run.status != "running":
        raise Conflict(f"vertical run {run.id} is {run.status}: {what} from silo {silo!r} refused")


def put_key(s: Session, run: VerticalRun, silo: str, key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise InvalidPayload(
            f"silo {silo!r}: an X25519 public key is {KEY_BYTES} bytes, got {len(key)}"
        )
    stored = s.get(VerticalKey, (run.id, silo))
    if stored is not None:
        if stored.public_key != key.hex():
            raise Conflict(f"silo {silo!r} already gave another key for vertical run {run.id}")
        return
    s.add(VerticalKey(run_id=run.id, party=silo, public_key=key.hex()))


def keys(s: Session, run: VerticalRun) -> dict[str, str]:
    rows = s.scalars(select(VerticalKey).where(VerticalKey.run_id == run.id))
    return {k.party: k.public_key for k in rows}


def post(s: Session, run: VerticalRun, silo: str, data: bytes) -> int:
    """Store one sealed envelope from `silo`; returns its id. Only the header is read."""
    _running(run, silo, "an envelope")
    try:
        sealed = unframe(data)
    except ValueError as exc:
        raise InvalidPayload(f"envelope from silo {silo!r}: {exc}") from exc
    if sealed.sender != silo:
        raise Forbidden(
            f"silo {silo!r} posted an envelope whose header names sender {sealed.sender!r}"
        )
    if sealed.run != run.id:
        raise InvalidPayload(
            f"envelope from silo {silo!r} is bound to run {sealed.run!r}, not {run.id}"
        )
    if sealed.recipient == silo or sealed.recipient not in run.parties:
        raise InvalidPayload(
            f"envelope from silo {silo!r} is addressed to {sealed.recipient!r}, not another "
            f"party of vertical run {run.id} ({run.parties})"
        )
    row = VerticalEnvelope(
        run_id=run.id, sender=silo, recipient=sealed.recipient, seq=sealed.seq, frame=data
    )
    s.add(row)
    s.flush()
    return row.id


def inbox(
    s: Session, run: VerticalRun, silo: str, after: int, limit: int
) -> list[tuple[int, bytes]]:
    rows = s.execute(
        select(VerticalEnvelope.id, VerticalEnvelope.frame)
        .where(
            VerticalEnvelope.run_id == run.id,
            VerticalEnvelope.recipient == silo,
            VerticalEnvelope.id > after,
        )
        .order_by(VerticalEnvelope.id)
        .limit(limit)
    )
    return [(i, f) for i, f in rows]


def record(
    s: Session, recorder: Recorder, run: VerticalRun, silo: str, body: VerticalEvent
) -> None:
    """A party's report of progress, checked and written to the ledger."""
    ev = body.event
    if isinstance(ev, RunFailed):
        if run.status == "running":
            _end(s, recorder, run, "failed", f"party {silo!r}: {ev.reason}")
        return
    _running(run, silo, f"a {ev.kind} report")
    if isinstance(ev, PsiDone):
        if run.psi_digest is not None and (run.psi_digest, run.psi_size) != (ev.digest, ev.size):
            _end(s, recorder, run, "failed", f"party {silo!r} found another intersection")
            return
        run.psi_digest, run.psi_size = ev.digest, ev.size
        recorder.service(
            s, "vertical_psi", {"party": silo, "size": ev.size, "digest": ev.digest}, run.id
        )
        return
    if silo != run.active:
        raise Forbidden(f"silo {silo!r} is not the active party of vertical run {run.id}")
    if isinstance(ev, TreeDone):
        if ev.tree != run.trees:
            raise Conflict(f"vertical run {run.id}: tree {ev.tree} reported, next is {run.trees}")
        strangers = sorted({n.party for n in ev.nodes} - set(run.parties))
        if strangers:
            raise InvalidPayload(f"tree {ev.tree} names parties {strangers} outside the run")
        run.trees += 1
        recorder.service(s, "vertical_tree", ev.model_dump(mode="json"), run.id)
        return
    assert isinstance(ev, RunDone)
    if ev.trees != run.trees:
        raise Conflict(f"vertical run {run.id}: {ev.trees} trees claimed, {run.trees} reported")
    run.model_digest = ev.model_digest
    _end(s, recorder, run, "finished", "")


def _end(s: Session, recorder: Recorder, run: VerticalRun, status: str, reason: str) -> None:
    run.status, run.reason, run.finished_at = status, reason or None, utcnow()
    payload = {"trees": run.trees, "model_digest": run.model_digest, "reason": reason}
    recorder.service(s, f"vertical_{status}", payload, run.id)

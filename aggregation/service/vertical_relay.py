"""The service's part in a vertical run: a relay and a ledger, never a key holder.

Parties (approved silos of one federation; one of them, the active party, holds the labels)
exchange sealed envelopes (`schemas.vertical.frame`: ChaCha20-Poly1305 under per-pair keys
the service never sees). The service checks what it can without a key: the envelope's header
names the silo that signed the request as its sender, this run, and another party of it as
recipient. It stores the frame as it came (ciphertext and header) until the recipient reads
it (its next inbox poll acknowledges it) and drops what is left when the run ends, unless
`vertical_keep_envelopes` keeps them for audit. It also relays each party's X25519 public
key, as it relays silo keys for secure aggregation. A run carries its mode (train, predict
with a trained run's model, or psi_size: a count only, which ends once every party reported
it) and parameters; the parties' agents are offered it on their task poll (`pending_for`).
The ledger gets: the run with its parties, every party's intersection size and hash, every
tree's lineage (which party split which node at what depth, no threshold or bin) or, for
logistic regression, every epoch's steps and rows, the end with the model's digest, or the
failure with the reason and the party that gave it. The coordinator lists runs (`list_runs`)
for `fedsilo runs list`.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from aggregation.service.db import Base
from aggregation.service.exceptions import Conflict, Forbidden, InvalidPayload, NotFound
from aggregation.service.federations import get_federation
from aggregation.service.ledger import LedgerEntry
from aggregation.service.lineage import Recorder
from aggregation.service.tables import Silo, utcnow
from schemas.vertical import (
    EpochDone,
    PsiDone,
    RunDone,
    RunFailed,
    TreeDone,
    VerticalEvent,
    VerticalParams,
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
    epochs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    model_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    mode: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    params_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    model_run: Mapped[str | None] = mapped_column(String(64), nullable=True)

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
    # ids only grow (AUTOINCREMENT on SQLite): parties read past the last id they saw, and
    # read envelopes are deleted, so a reused id would hide a new envelope
    __table_args__ = {"sqlite_autoincrement": True}
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
        epochs=run.epochs,
        model_digest=run.model_digest,
        mode=run.mode,  # type: ignore[arg-type]
        params=VerticalParams.model_validate_json(run.params_json),
        model_run=run.model_run,
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


def list_runs(s: Session, federation: str | None, limit: int) -> list[VerticalRun]:
    """The newest vertical runs first (of one federation, if named)."""
    stmt = select(VerticalRun).order_by(VerticalRun.created_at.desc()).limit(limit)
    if federation:
        get_federation(s, federation)  # a misspelt federation is not one without runs
        stmt = stmt.where(VerticalRun.federation == federation)
    return list(s.scalars(stmt))


def create(s: Session, recorder: Recorder, req: VerticalRunCreate) -> VerticalRun:
    get_federation(s, req.federation)
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
    if req.model_run is not None:
        _check_model_run(s, req, parties)
    run = VerticalRun(
        id=uuid.uuid4().hex,
        federation=req.federation,
        active=req.active,
        parties_json=json.dumps(parties),
        status="running",
        trees=0,
        epochs=0,
        mode=req.mode,
        params_json=req.params.model_dump_json(),
        model_run=req.model_run,
    )
    s.add(run)
    s.flush()
    started: dict[str, object] = {"federation": req.federation, "active": req.active}
    started |= {"parties": parties, "mode": req.mode}
    started |= {"params": req.params.model_dump(), "model_run": req.model_run}
    recorder.service(s, "vertical_started", started, run.id)
    return run


def _check_model_run(s: Session, req: VerticalRunCreate, parties: list[str]) -> None:
    """A prediction uses a finished training run of the same federation, parties and active
    party: each party's agent holds its half of that run's model."""
    trained = s.get(VerticalRun, req.model_run)
    if trained is None or trained.federation != req.federation or trained.mode != "train":
        raise NotFound(f"no vertical training run {req.model_run!r} in {req.federation!r}")
    if trained.status != "finished":
        raise Conflict(f"vertical run {trained.id} is {trained.status}: its model is not whole")
    if (trained.parties, trained.active) != (parties, req.active):
        raise InvalidPayload(
            f"vertical run {trained.id} was trained by {trained.parties} (active "
            f"{trained.active!r}); a prediction with its model needs the same parties"
        )


def pending_for(s: Session, federation: str, silo: str) -> VerticalRun | None:
    """The oldest running vertical run that names `silo` as a party and that it has not
    joined yet (joining is giving its X25519 key): its agent's next piece of work."""
    joined = select(VerticalKey.run_id).where(VerticalKey.party == silo)
    stmt = (
        select(VerticalRun)
        .where(
            VerticalRun.federation == federation,
            VerticalRun.status == "running",
            VerticalRun.id.not_in(joined),
        )
        .order_by(VerticalRun.created_at)
    )
    return next((r for r in s.scalars(stmt) if silo in r.parties), None)


def get(s: Session, run_id: str, *, for_update: bool = False) -> VerticalRun:
    stmt = select(VerticalRun).where(VerticalRun.id == run_id)
    run = s.scalar(stmt.with_for_update() if for_update else stmt)
    if run is None:
        raise NotFound(f"vertical run {run_id!r} does not exist")
    return run


def party_of(
    s: Session, run_id: str, federation: str, silo: str, *, for_update: bool = False
) -> VerticalRun:
    """The vertical run, when `silo` of `federation` is one of its parties (names are unique
    within a federation only: a same-named silo of another federation is no party)."""
    run = get(s, run_id, for_update=for_update)
    if run.federation != federation or silo not in run.parties:
        raise Forbidden(
            f"silo {silo!r} of federation {federation!r} is not a party of vertical run {run_id}"
        )
    return run


def _running(run: VerticalRun, silo: str, what: str) -> None:
    if run.status != "running":
        raise Conflict(f"vertical run {run.id} is {run.status}: {what} from silo {silo!r} refused")


def put_key(s: Session, run: VerticalRun, silo: str, key: bytes) -> None:
    """Store `silo`'s X25519 key once (the same key again is a no-op). The caller holds the
    run's row lock (`party_of(..., for_update=True)`): two requests of one silo at once
    would both find no key and both insert it."""
    _running(run, silo, "a key")
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


def acknowledge(s: Session, run: VerticalRun, silo: str, after: int) -> None:
    """Delete the envelopes `silo` has read (ids up to `after`, which its next inbox poll
    names): the service holds ciphertext only until it is delivered."""
    s.execute(
        delete(VerticalEnvelope).where(
            VerticalEnvelope.run_id == run.id,
            VerticalEnvelope.recipient == silo,
            VerticalEnvelope.id <= after,
        )
    )


def drop_envelopes(s: Session, run_id: str) -> None:
    """Delete every envelope of an ended run: nobody reads them any more."""
    s.execute(delete(VerticalEnvelope).where(VerticalEnvelope.run_id == run_id))


def record(
    s: Session,
    recorder: Recorder,
    run: VerticalRun,
    silo: str,
    body: VerticalEvent,
) -> None:
    """A party's report of progress, checked and written to the ledger."""
    ev = body.event
    if isinstance(ev, RunFailed):
        if run.status == "running":
            _end(s, recorder, run, "failed", f"party {silo!r}: {ev.reason}", party=silo)
        return
    _running(run, silo, f"a {ev.kind} report")
    if isinstance(ev, PsiDone):
        _record_psi(s, recorder, run, silo, ev)
        return
    if silo != run.active:
        raise Forbidden(f"silo {silo!r} is not the active party of vertical run {run.id}")
    _check_stage(run, silo, ev)
    if isinstance(ev, TreeDone | EpochDone):
        _check_model(run, ev)
    if isinstance(ev, TreeDone):
        if ev.tree != run.trees:
            raise Conflict(f"vertical run {run.id}: tree {ev.tree} reported, next is {run.trees}")
        strangers = sorted({n.party for n in ev.nodes} - set(run.parties))
        if strangers:
            raise InvalidPayload(f"tree {ev.tree} names parties {strangers} outside the run")
        run.trees += 1
        recorder.service(s, "vertical_tree", ev.model_dump(mode="json"), run.id)
        return
    if isinstance(ev, EpochDone):
        if ev.epoch != run.epochs:
            raise Conflict(
                f"vertical run {run.id}: epoch {ev.epoch} reported, next is {run.epochs}"
            )
        run.epochs += 1
        recorder.service(s, "vertical_epoch", ev.model_dump(mode="json"), run.id)
        return
    assert isinstance(ev, RunDone)
    if ev.trees != run.trees:
        raise Conflict(f"vertical run {run.id}: {ev.trees} trees claimed, {run.trees} reported")
    if ev.epochs != run.epochs:
        raise Conflict(f"vertical run {run.id}: {ev.epochs} epochs claimed, {run.epochs} reported")
    run.model_digest = ev.model_digest
    _end(s, recorder, run, "finished", "")


def _check_stage(run: VerticalRun, silo: str, ev: TreeDone | EpochDone | RunDone) -> None:
    """A size-only run has no model: it ends on the parties' counts alone, so a tree, epoch
    or model reported there would end it finished with no intersection size. A prediction
    run trains nothing: it takes no tree or epoch. Training and
    prediction start with PSI: the active party reports its intersection (`PsiDone`) before
    its first tree, epoch or end (silos/vertical/agent_role.py, predict_role.py)."""
    if run.mode == "psi_size":
        raise InvalidPayload(
            f"vertical run {run.id} only counts the common ids: a {ev.kind} report from "
            f"party {silo!r} does not belong to it"
        )
    if run.mode == "predict" and not isinstance(ev, RunDone):
        raise InvalidPayload(
            f"vertical run {run.id} predicts with a trained model: a {ev.kind} report from "
            f"party {silo!r} does not belong to it"
        )
    if run.psi_size is None:
        raise Conflict(
            f"vertical run {run.id}: a {ev.kind} report from party {silo!r} before any "
            f"party reported its intersection"
        )


def _check_model(run: VerticalRun, ev: TreeDone | EpochDone) -> None:
    """Trees belong to SecureBoost, epochs to logistic regression: a report of the other
    model's progress is an agent that runs another model than the run asked for."""
    model = VerticalParams.model_validate_json(run.params_json).model
    if (model == "logreg") != isinstance(ev, EpochDone):
        what = "an epoch" if isinstance(ev, EpochDone) else "a tree"
        raise InvalidPayload(
            f"vertical run {run.id} trains {model}: {what} report does not belong to it"
        )


def cancel(s: Session, recorder: Recorder, run: VerticalRun, reason: str) -> None:
    """The coordinator ends a running vertical run (a party that never came, or stopped):
    every party's next poll sees it failed and stops."""
    if run.status != "running":
        raise Conflict(f"vertical run {run.id} is {run.status}: nothing to cancel")
    _end(s, recorder, run, "failed", f"cancelled by the coordinator: {reason}")


def _record_psi(s: Session, recorder: Recorder, run: VerticalRun, silo: str, ev: PsiDone) -> None:
    """One party's intersection for the ledger; every party must find the same one. A
    size-only run ends here, once every party reported its count."""
    reported = {
        json.loads(e.payload)["party"]
        for e in s.scalars(
            select(LedgerEntry).where(
                LedgerEntry.run_id == run.id, LedgerEntry.kind == "vertical_psi"
            )
        )
    }
    if silo in reported:
        raise Conflict(f"silo {silo!r} already reported its intersection in vertical run {run.id}")
    if run.psi_size is not None and (run.psi_digest, run.psi_size) != (ev.digest, ev.size):
        reason = f"party {silo!r} found another intersection"
        _end(s, recorder, run, "failed", reason, party=silo)
        return
    run.psi_digest, run.psi_size = ev.digest, ev.size
    recorder.service(
        s, "vertical_psi", {"party": silo, "size": ev.size, "digest": ev.digest}, run.id
    )
    if run.mode == "psi_size" and reported | {silo} == set(run.parties):
        _end(s, recorder, run, "finished", "")


def _end(
    s: Session,
    recorder: Recorder,
    run: VerticalRun,
    status: str,
    reason: str,
    party: str | None = None,
) -> None:
    """End the run; a failure a party caused names it (`party`) for the report."""
    run.status, run.reason, run.finished_at = status, reason or None, utcnow()
    payload: dict[str, object] = {"trees": run.trees, "epochs": run.epochs}
    payload |= {"model_digest": run.model_digest, "reason": reason}
    if party is not None:
        payload["party"] = party
    recorder.service(s, f"vertical_{status}", payload, run.id)

"""Training runs: creation with a participant list and an initial model, start, finish."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service.exceptions import Conflict, Forbidden, InvalidPayload, NotFound
from aggregation.service.federations import get_federation
from aggregation.service.tables import ModelVersion, Run, RunSilo, Silo, utcnow
from aggregation.trees.models import parse_model
from schemas import tensors
from schemas.exceptions import TensorFormatError
from schemas.member_kinds import unknown_silos
from schemas.specs import RunSpec, param_shapes
from schemas.tree_errors import TreeError
from schemas.tree_params import TreeSpec
from schemas.wire import RunOut


def spec_of(run: Run) -> RunSpec:
    return RunSpec.model_validate_json(run.spec_json)


def get_run(s: Session, run_id: str, *, for_update: bool = False) -> Run:
    """The run (NotFound naming it). `for_update` takes the row's lock and reads it afresh
    (`populate_existing`: a copy this session loaded earlier may be older than the locked
    row); without the lock a run this session already loaded is not read again
    (`Session.get`: a request's handlers ask for it up to three times)."""
    if for_update:
        stmt = select(Run).where(Run.id == run_id).with_for_update()
        run = s.scalar(stmt.execution_options(populate_existing=True))
    else:
        run = s.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} does not exist")
    return run


def create_run(s: Session, spec: RunSpec, prefect_flow_run_id: str | None) -> Run:
    """Create a run whose participants are the named (or all) approved silos."""
    get_federation(s, spec.federation)
    approved = set(
        s.scalars(
            select(Silo.name).where(Silo.federation == spec.federation, Silo.status == "approved")
        )
    )
    wanted = set(spec.silos) or approved
    not_approved = sorted(wanted - approved)
    if not_approved:
        raise Conflict(f"silos {not_approved} are not approved members of {spec.federation!r}")
    if len(wanted) < spec.min_silos:
        raise Conflict(
            f"run needs min_silos={spec.min_silos} but federation {spec.federation!r} has "
            f"{len(wanted)} approved silos: {sorted(wanted)}"
        )
    _check_secure_sums(spec, wanted)
    _check_thresholds(spec, wanted)
    _check_buffer_size(spec, wanted)
    _check_member_kinds(spec, wanted)
    run = Run(
        id=uuid.uuid4().hex,
        federation=spec.federation,
        status="created",
        spec_json=spec.model_dump_json(),
        prefect_flow_run_id=prefect_flow_run_id,
    )
    s.add(run)
    s.flush()
    s.add_all(RunSilo(run_id=run.id, silo=name) for name in sorted(wanted))
    return run


def secure_sums(spec: RunSpec) -> tuple[str, str] | None:
    """What of a run the silos mask so that the service learns only their sum, and the spec
    change that turns it off; None when nothing is."""
    if spec.federation_statistics:  # a statistics round is always securely summed
        return "its federation statistics round", "federation_statistics=false"
    if spec.trees is not None:
        if spec.trees.mode == "secure-hist":
            return "secure-hist", "another tree mode (bagging, cyclic)"
        return None
    if spec.mode is None and spec.secure_aggregation.enabled:  # a plugin decides for itself
        return "secure aggregation", "secure_aggregation.enabled=false (updates then unmasked)"
    return None


def _check_secure_sums(spec: RunSpec, silos: set[str]) -> None:
    """Refuse a run whose masked sums would have one silo: masks cancel only between silos,
    so its rounds could never start (and one silo's "sum" would be its own update)."""
    secure = secure_sums(spec)
    if secure is None or len(silos) >= 2:
        return
    what, instead = secure
    raise Conflict(
        f"run in federation {spec.federation!r} has only {len(silos)} participating silo "
        f"({', '.join(sorted(silos))}), but {what} needs at least 2: approve another silo "
        f"(`fedsilo silo approve NAME --federation {spec.federation}`) and train with "
        f"--min-silos 2, or create the run with {instead}"
    )


def _check_thresholds(spec: RunSpec, silos: set[str]) -> None:
    """Refuse a secure-sum threshold above what the run's silos can meet: t silos must survive
    to unmask, so with fewer no round could, and lowering t quietly would weaken the
    guarantee the run asked for (`secure_rounds.threshold_unmet` fails a round whose silos
    left since)."""
    n = len(silos)
    than = f"its {n} participating silos ({', '.join(sorted(silos))})"
    sa = spec.secure_aggregation
    summed = spec.federation_statistics or (spec.mode is None and spec.trees is None and sa.enabled)
    if summed and sa.threshold is not None:
        option = "secure_aggregation.threshold"
        if sa.threshold > n:
            _refuse_threshold(spec, option, sa.threshold, than, "approve more silos")
        # as `secure_rounds.config`: a SecAgg+ graph applies t within each silo's neighbourhood
        if sa.degree is not None and sa.degree < n - 1 and sa.threshold > sa.degree + 1:
            hood = f"the {sa.degree + 1} silos of a SecAgg+ neighbourhood (degree {sa.degree})"
            _refuse_threshold(spec, option, sa.threshold, hood, "raise the degree")
    hist = spec.trees.secure_hist if spec.trees is not None else None
    if hist is not None and hist.threshold is not None and hist.threshold > n:
        _refuse_threshold(
            spec, "trees.secure_hist.threshold", hist.threshold, than, "approve more silos"
        )


def _refuse_threshold(spec: RunSpec, option: str, threshold: int, than: str, fix: str) -> None:
    raise Conflict(
        f"run in federation {spec.federation!r} asks for {option} {threshold} (silos that "
        f"must survive to unmask a sum), more than {than}, so no round could unmask; lower "
        f"{option} or {fix} (it is never lowered for you: that would weaken the guarantee)"
    )


def _check_buffer_size(spec: RunSpec, silos: set[str]) -> None:
    """Refuse asynchronous buffers of K above the run's silos: a buffer meant to close at its
    K-th update would never fill, and each would wait for every silo or its deadline."""
    a = spec.asynchronous
    if a is None or a.buffer_size <= len(silos):
        return
    raise Conflict(
        f"run in federation {spec.federation!r} asks for asynchronous.buffer_size (K) "
        f"{a.buffer_size}, but it has {len(silos)} participating silos "
        f"({', '.join(sorted(silos))}): a buffer of K updates could never fill; lower K to at "
        f"most {len(silos)} or approve more silos"
    )


def _check_member_kinds(spec: RunSpec, silos: set[str]) -> None:
    """Refuse per-silo model kinds keyed by a name no participant has (a display name such as
    "Cleveland" for silo ``cleveland``, a typo): that silo would silently train the default."""
    for option, kinds in (
        ("ensemble.kinds", spec.ensemble.kinds if spec.ensemble else None),
        ("distill.kinds", spec.distill.kinds if spec.distill else None),
    ):
        unknown = unknown_silos(kinds, silos) if kinds is not None else []
        if unknown:
            raise Conflict(
                f"run in federation {spec.federation!r}: {option} names "
                f"{', '.join(repr(k) for k in unknown)}, which no participating silo is called; "
                f"its participants are {', '.join(sorted(silos))} (a key is a silo's enrolled "
                "name, as `fedsilo silo list` shows it)"
            )


def put_initial_model(s: Session, run_id: str, payload: bytes) -> ModelVersion:
    run = get_run(s, run_id, for_update=True)
    if run.status != "created":
        raise Conflict(f"run {run_id} is {run.status}; the initial model is set before it starts")
    spec = spec_of(run)
    if spec.trees is not None:
        _check_tree_model(spec.trees, payload, run_id)
    elif spec.ensemble is not None:  # version 0 of an ensemble run: no members yet
        if payload:
            raise InvalidPayload(
                f"run {run_id} is an ensemble run: its members are trained in round 1, so its "
                "initial model is empty"
            )
    elif spec.distill is not None:  # version 0 of a distillation run: no soft labels yet
        if payload:
            raise InvalidPayload(
                f"run {run_id} is a distillation run: it starts with no soft labels, so its "
                "initial model is empty"
            )
    else:
        try:
            tensors.decode_expected(payload, param_shapes(spec.torch_model))
        except TensorFormatError as exc:
            raise InvalidPayload(f"initial model for run {run_id}: {exc}") from exc
    existing = s.get(ModelVersion, (run_id, 0))
    if existing is not None:
        s.delete(existing)
        s.flush()
    model = ModelVersion(run_id=run_id, version=0, sha256=tensors.digest(payload), payload=payload)
    s.add(model)
    run.latest_model_version = 0
    return model


def _check_tree_model(spec: TreeSpec, payload: bytes, run_id: str) -> None:
    """The starting model of a tree run: empty (grow from scratch) or a native model of the
    run's kind with the run's number of features."""
    if not payload:
        return
    try:
        parsed = parse_model(spec.kind, payload)
    except TreeError as exc:
        raise InvalidPayload(f"initial {spec.kind} model for run {run_id}: {exc.detail}") from exc
    if parsed.n_features != spec.n_features:
        raise InvalidPayload(
            f"initial model for run {run_id} has {parsed.n_features} features; the run's "
            f"spec has {spec.n_features}"
        )


def start_run(s: Session, run_id: str) -> tuple[Run, bool]:
    """Start a created run; returns (run, started now)."""
    run = get_run(s, run_id, for_update=True)
    if run.status == "running":
        return run, False
    if run.status != "created":
        raise Conflict(f"run {run_id} is {run.status} and cannot start")
    if run.latest_model_version is None:
        raise Conflict(f"run {run_id} has no initial model; PUT /v1/runs/{run_id}/models/0 first")
    run.status = "running"
    run.coordinator_seen_at = utcnow()  # the coordinator's wait for ready silos starts now
    return run, True


def finish_run(s: Session, run_id: str, status: str, reason: str) -> tuple[Run, bool]:
    """Mark a run finished or failed; returns (run, changed now)."""
    run = get_run(s, run_id, for_update=True)
    if run.status in ("finished", "failed", "cancelled"):  # a cancelled run stays so
        return run, False
    run.status = status
    run.reason = reason or None
    run.finished_at = utcnow()
    return run, True


def record_run_end(s: Session, recorder: Any, run: Run, status: str, reason: str) -> None:
    """The ledger's ``run_finished`` / ``run_failed`` entry of a run that just ended: its
    status, reason and final model (`recorder`: the service's `lineage.Recorder`)."""
    version = run.latest_model_version
    sha = get_model(s, run.id, version).sha256 if version is not None else None
    recorder.service(
        s,
        f"run_{status}",
        {
            "status": status,
            "reason": reason,
            "final_model_version": version,
            "final_model_sha256": sha,
        },
        run.id,
    )


def get_model(s: Session, run_id: str, version: int) -> ModelVersion:
    model = s.get(ModelVersion, (run_id, version))
    if model is None:
        raise NotFound(f"run {run_id} has no model version {version}")
    return model


def check_participant(s: Session, run_id: str, silo: str, federation: str | None = None) -> RunSilo:
    """The silo's membership of the run: NotFound for an unknown run, Forbidden for a silo
    that is not one of its participants. Silo names are unique within a federation only, so
    a calling silo's `federation` must be the run's too: a same-named silo of another
    federation is not this run's participant."""
    membership = s.get(RunSilo, (run_id, silo))
    if membership is None or federation is not None:
        run = get_run(s, run_id)
        if membership is None or run.federation != federation:
            of = f" of federation {federation!r}" if federation is not None else ""
            raise Forbidden(f"silo {silo!r}{of} is not a participant of run {run_id}")
    return membership


def participants(s: Session, run_id: str) -> list[RunSilo]:
    return list(s.scalars(select(RunSilo).where(RunSilo.run_id == run_id).order_by(RunSilo.silo)))


def list_runs(s: Session, federation: str | None = None, limit: int = 50) -> list[Run]:
    stmt = select(Run).order_by(Run.created_at.desc()).limit(limit)
    if federation:
        get_federation(s, federation)  # a misspelt federation is not one without runs
        stmt = stmt.where(Run.federation == federation)
    return list(s.scalars(stmt))


def run_out(s: Session, run: Run) -> RunOut:
    return RunOut(
        run_id=run.id,
        federation=run.federation,
        status=run.status,  # type: ignore[arg-type]
        spec=spec_of(run),
        participants=[p.silo for p in participants(s, run.id)],
        created_at=run.created_at,
        finished_at=run.finished_at,
        reason=run.reason,
        latest_model_version=run.latest_model_version,
        prefect_flow_run_id=run.prefect_flow_run_id,
    )

"""Tree-model rounds (XGBoost, LightGBM) at the service: tasks, sealed updates, the next model.

Modes (see `aggregation/trees/README.md` for what the service sees in each):

- ``bagging``: every silo grows trees from the round's input model; closing the round merges
  them with the n_k / N leaf scaling (`models.merge_bagging`).
- ``cyclic``: silos take turns in an order that rotates every round; each continues from the
  chain so far (input model plus the trees of the silos before it). The chain is a pure
  function of the stored contributions, so any service process can rebuild it.
- ``collective``: XGBoost's federated gRPC server (mutual TLS) runs for the round; every silo
  joins it as a worker and submits the new trees it ended with. They must agree: the service
  appends them once.

Updates arrive sealed (`schemas.sealed`): signed by the silo, encrypted to the service's
X25519 key. Everything is checked before anything is stored, as for tensor updates.
"""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.orm import Session

from aggregation.service.contributions import check_n_examples
from aggregation.service.exceptions import AlreadyAnswered, Conflict, InvalidPayload
from aggregation.service.lineage import Recorder
from aggregation.service.model_store import save_round_model
from aggregation.service.runs import get_model, participants
from aggregation.service.tables import Contribution, Round, Run
from aggregation.trees.models import append_cyclic, merge_bagging, parse_model
from aggregation.trees.validate import validate_tree_update
from schemas.sealed import SealError, open_sealed
from schemas.specs import RunSpec
from schemas.tasks import CollectiveInfo
from schemas.tree_errors import TreeError
from schemas.tree_params import TreeSpec
from schemas.wire import Metrics

_ANSWERED = ("update", "sat_out", "refusal", "declined")

SERVICE_SEES = {
    "bagging": "each silo's new trees (split features, thresholds, leaf values) and row count",
    "cyclic": "each silo's new trees and row count, and so the model after each silo",
    "collective": "per-silo gradient/hessian histograms of every node and feature sketches",
}


def tree_spec(spec: RunSpec) -> TreeSpec:
    assert spec.trees is not None, "not a tree run"
    return spec.trees


def turn_order(s: Session, run: Run, rnd: Round) -> list[str]:
    """Cyclic order of round `rnd`: the participants, rotated by one place every round so
    that no silo always has the last word."""
    names = [p.silo for p in participants(s, run.id)]
    if not names:
        return names
    shift = (rnd.number - 1) % len(names)
    return names[shift:] + names[:shift]


def _input_model(s: Session, run: Run, rnd: Round) -> bytes | None:
    payload = get_model(s, run.id, rnd.input_model_version).payload
    return payload or None


def _chain(s: Session, run: Run, rnd: Round, spec: TreeSpec) -> tuple[bytes | None, list[str]]:
    """Cyclic: the input model plus every accepted update so far, in turn order."""
    model = _input_model(s, run, rnd)
    added: list[str] = []
    for silo in turn_order(s, run, rnd):
        c = s.get(Contribution, (run.id, rnd.number, silo))
        if c is not None and c.kind == "update" and c.payload:
            model = append_cyclic(spec.kind, model, c.payload, silo)
            added.append(silo)
    return model, added


def base_model(s: Session, run: Run, rnd: Round, spec: TreeSpec) -> bytes | None:
    """The model the next update of this round must grow from (None: from scratch)."""
    if spec.mode == "cyclic":
        return _chain(s, run, rnd, spec)[0]
    return _input_model(s, run, rnd)


def waiting_on_earlier(s: Session, run: Run, rnd: Round, silo: str) -> bool:
    order = turn_order(s, run, rnd)
    active = {p.silo for p in participants(s, run.id) if p.status == "active"}
    for earlier in order[: order.index(silo)]:
        c = s.get(Contribution, (run.id, rnd.number, earlier))
        if earlier in active and (c is None or c.kind not in _ANSWERED):
            return True
    return False


def collective_info(rnd: Round, silo: str) -> CollectiveInfo | None:
    """Where the round's collective server listens and this silo's rank (stored in the round,
    so every service process hands out the same answer)."""
    if not rnd.roster_json:
        return None
    info = json.loads(rnd.roster_json).get("collective")
    if not info:
        return None
    ranks: list[str] = info["ranks"]
    return CollectiveInfo(
        host=info["host"],
        port=info["port"],
        rank=ranks.index(silo),
        world_size=len(ranks),
        server_name=info["server_name"],
    )


def existing_update(s: Session, run_id: str, number: int, silo: str) -> Contribution | None:
    return s.get(Contribution, (run_id, number, silo))


def submit_tree_update(
    s: Session,
    run: Run,
    rnd: Round,
    spec: RunSpec,
    silo: str,
    silo_public_hex: str,
    sealed: bytes,
    seal_key: X25519PrivateKey,
) -> tuple[Contribution, bool]:
    """Open, check and store a silo's sealed tree update; returns (contribution, created).

    The round must be open and the caller a participant (`contributions.open_round_for`).
    """
    trees = tree_spec(spec)
    where = f"tree update from silo {silo!r} for round {rnd.number} of run {run.id}"
    try:
        plain = open_sealed(
            sealed,
            service_key=seal_key,
            silo_public=bytes.fromhex(silo_public_hex),
            run_id=run.id,
            round_num=rnd.number,
            silo=silo,
        )
    except SealError as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc
    digest = hashlib.sha256(plain).hexdigest()
    existing = s.get(Contribution, (run.id, rnd.number, silo))
    if existing is not None:
        if existing.digest == digest:
            return existing, False
        raise AlreadyAnswered(f"silo {silo!r} already answered round {rnd.number} of run {run.id}")
    if trees.mode == "cyclic" and waiting_on_earlier(s, run, rnd, silo):
        raise Conflict(f"{where}: not this silo's turn yet (order {turn_order(s, run, rnd)})")
    contribution = _checked(s, run, rnd, trees, silo, plain, where)
    check_n_examples(s, run.id, rnd.number, silo, contribution.n_examples or 0, "tree update")
    contribution.digest = digest
    s.add(contribution)
    s.flush()
    return contribution, True


def _checked(
    s: Session, run: Run, rnd: Round, trees: TreeSpec, silo: str, plain: bytes, where: str
) -> Contribution:
    """The opened update, validated against the model it must grow from, as a contribution
    (InvalidPayload saying what is wrong)."""
    try:
        accepted = validate_tree_update(
            plain,
            silo=silo,
            run_id=run.id,
            round_num=rnd.number,
            spec=trees,
            global_model=base_model(s, run, rnd, trees),
        )
    except TreeError as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc
    header = accepted.header
    metrics = None
    if header.metrics_json:
        try:
            metrics = Metrics.model_validate_json(header.metrics_json).model_dump_json()
        except ValueError as exc:
            raise InvalidPayload(f"{where}: metrics are malformed: {exc}") from exc
    if trees.mode == "collective":
        _check_agrees(s, run, rnd, accepted.model, where)
    return Contribution(
        run_id=run.id,
        round=rnd.number,
        silo=silo,
        kind="update",
        n_examples=header.n_examples,
        payload=accepted.model,
        metrics_json=metrics,
        train_seconds=header.train_seconds,
    )


def _check_agrees(s: Session, run: Run, rnd: Round, model: bytes, where: str) -> None:
    """Collective workers all end with the same trees; a different model is refused."""
    for c in s.query(Contribution).filter_by(run_id=run.id, round=rnd.number, kind="update"):
        if c.payload != model:
            raise InvalidPayload(
                f"{where}: its trees differ from those silo {c.silo!r} submitted for the same "
                "collective round (every worker of a collective ends with the same model)"
            )


def close_tree_round(
    s: Session,
    run: Run,
    rnd: Round,
    spec: RunSpec,
    updates: list[Contribution],
    recorder: Recorder,
) -> None:
    """The round's model from the accepted updates; a new model version and its ledger entries."""
    trees = tree_spec(spec)
    base = _input_model(s, run, rnd)
    order: list[str] = []
    if trees.mode == "bagging":
        model = merge_bagging(
            trees.kind, base, {c.silo: (c.payload or b"", c.n_examples or 0) for c in updates}
        )
    elif trees.mode == "cyclic":
        chained, order = _chain(s, run, rnd, trees)
        assert chained is not None
        model = chained
    else:
        model = append_cyclic(trees.kind, base, updates[0].payload or b"", "collective")
    sha = hashlib.sha256(model).hexdigest()
    entry: dict[str, object] = {
        "round": rnd.number,
        "contributors": [
            {"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples} for c in updates
        ],
        "model_version": rnd.number,
        "model_sha256": sha,
        "trees": {"kind": trees.kind, "mode": trees.mode, "n_trees": _n_trees(trees, model)},
        "secure_aggregation": False,
        "sealed_to_service": True,  # the trees are; the collective's histograms are not
        "individual_updates_seen_by_service": True,
        "service_sees": SERVICE_SEES[trees.mode],
    }
    if order:
        entry["order"] = order
    save_round_model(s, run, rnd, model, sha, entry, recorder)


def _n_trees(spec: TreeSpec, model: bytes) -> int:
    return len(parse_model(spec.kind, model).trees)

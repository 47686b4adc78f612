"""Checks on a silo's tree update before the service merges or hands it on.

Order matters: the cheap binding checks (run, round, silo, base model) run before any tree is
parsed, so a replayed or stale update is refused without touching its model bytes.

Each refusal is a typed `TreeUpdateError` naming the silo and round; the round goes on without
that silo (the lead records the refusal in the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from aggregation.trees import lgb_merge, xgb_merge
from aggregation.trees.lgb_model import LGBModel
from aggregation.trees.models import ParsedModel, parse_model
from aggregation.trees.xgb_model import XGBModel
from schemas.objectives import task_of
from schemas.tree_errors import (
    FeatureCountError,
    MergeError,
    StaleModelError,
    TreeCountError,
    TreeError,
    TreeModelFormatError,
    WrongRoundError,
)
from schemas.tree_params import TreeSpec
from schemas.tree_payload import TreePayloadError, TreeUpdateHeader, decode_tree_update, sha256_hex


class _Where(TypedDict):
    silo: str
    round_num: int


@dataclass(frozen=True)
class AcceptedUpdate:
    """A tree update that passed every check: ready for `merge_bagging` / `append_cyclic`."""

    header: TreeUpdateHeader
    model: bytes
    parsed: ParsedModel

    @property
    def n_examples(self) -> int:
        return self.header.n_examples


def validate_tree_update(
    payload: bytes,
    *,
    silo: str,
    run_id: str,
    round_num: int,
    spec: TreeSpec,
    global_model: bytes | None,
) -> AcceptedUpdate:
    """Decode and check one silo's tree-update envelope (already opened from its seal).

    Parameters
    ----------
    payload
        The envelope bytes (`schemas.tree_payload.encode_tree_update`).
    silo, run_id, round_num
        Who the service authenticated as the sender, and the round it is collecting.
    spec
        The run's tree spec: kind, mode, feature count, trees per round.
    global_model
        The model the silo was asked to continue from: the current global model in bagging,
        the model handed on by the previous silo in cyclic; None when there is none yet.

    Raises
    ------
    TreeModelFormatError
        The envelope or the model does not parse, or declares another library or mode.
    WrongRoundError
        The envelope is bound to another run, round or silo.
    StaleModelError
        The trees were grown from another model version (sha256, tree count or base score).
    FeatureCountError
        The model has a different number of features than the run's spec.
    TreeCountError
        No new trees, or more than ``spec.trees_per_round``.
    UnsupportedTreeError
        The model uses categorical splits, linear trees or several outputs.
    """
    where: _Where = {"silo": silo, "round_num": round_num}
    try:
        header, model = decode_tree_update(payload)
    except TreePayloadError as exc:
        raise TreeModelFormatError(f"tree update does not decode: {exc}", **where) from exc
    _check_binding(header, silo=silo, run_id=run_id, round_num=round_num, spec=spec)
    _check_base(header, global_model, silo=silo, round_num=round_num)
    if header.n_features != spec.n_features:
        raise FeatureCountError(
            f"the update declares {header.n_features} features; the run's model has "
            f"{spec.n_features}. Rebuild the silo's features from the run's data contract",
            **where,
        )
    try:
        parsed = parse_model(spec.kind, model)
    except TreeError as exc:
        raise type(exc)(f"submitted model: {exc.detail}", **where) from exc
    if parsed.n_features != spec.n_features:
        raise FeatureCountError(
            f"the trees were trained on {parsed.n_features} features; the run's model has "
            f"{spec.n_features}",
            **where,
        )
    if task_of(parsed.objective) != spec.task:
        raise TreeModelFormatError(
            f"the trees were trained with objective {parsed.objective!r}; the run's is "
            f"{spec.objective}",
            **where,
        )
    if max(parsed.num_class, 1) != spec.n_outputs:
        raise TreeModelFormatError(
            f"the trees have {max(parsed.num_class, 1)} output(s); the run's model has "
            f"{spec.n_outputs}",
            **where,
        )
    _check_tree_count(parsed.n_rounds, header, spec, **where)
    if global_model is not None:
        _check_continues(spec, global_model, parsed, silo=silo, round_num=round_num)
    return AcceptedUpdate(header, model, parsed)


def _check_binding(
    header: TreeUpdateHeader, *, silo: str, run_id: str, round_num: int, spec: TreeSpec
) -> None:
    where: _Where = {"silo": silo, "round_num": round_num}
    if header.run_id != run_id or header.round != round_num or header.silo != silo:
        raise WrongRoundError(
            f"the update is bound to run {header.run_id!r} round {header.round} silo "
            f"{header.silo!r}; the service is collecting run {run_id!r} round {round_num}. "
            "A late or replayed update is discarded; train for the current round",
            **where,
        )
    if header.kind != spec.kind or header.mode != spec.mode:
        raise TreeModelFormatError(
            f"the update holds {header.kind} trees for mode {header.mode}; the run trains "
            f"{spec.kind} in mode {spec.mode}",
            **where,
        )


def _check_base(
    header: TreeUpdateHeader, global_model: bytes | None, *, silo: str, round_num: int
) -> None:
    expected = sha256_hex(global_model) if global_model is not None else None
    if header.base_model_sha256 != expected:
        raise StaleModelError(
            f"the trees were grown from model {header.base_model_sha256 or 'none (scratch)'}; "
            f"the current model is {expected or 'none (scratch)'}. Fetch the current global "
            "model and train again",
            silo=silo,
            round_num=round_num,
        )


def _check_tree_count(
    found: int, header: TreeUpdateHeader, spec: TreeSpec, *, silo: str, round_num: int
) -> None:
    # LightGBM stops early when no split has positive gain, so fewer trees than asked for is
    # legitimate; more is not, and neither is a header that disagrees with the model.
    if found != header.n_new_trees or not 1 <= found <= spec.trees_per_round:
        raise TreeCountError(
            f"the update holds {found} trees (header says {header.n_new_trees}; boosting rounds "
            f"of K trees for multiclass); the run asks for 1..{spec.trees_per_round} new trees "
            "per silo and round",
            silo=silo,
            round_num=round_num,
        )


def _check_continues(
    spec: TreeSpec, global_model: bytes, parsed: ParsedModel, *, silo: str, round_num: int
) -> None:
    base = parse_model(spec.kind, global_model)
    try:
        if isinstance(base, XGBModel) and isinstance(parsed, XGBModel):
            xgb_merge.check_compatible(base, parsed, silo, require_same_base=True)
        elif isinstance(base, LGBModel) and isinstance(parsed, LGBModel):
            lgb_merge.check_compatible(base, parsed, silo)
    except MergeError as exc:
        raise StaleModelError(exc.detail, silo=silo, round_num=round_num) from exc

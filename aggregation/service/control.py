"""SCAFFOLD's global control variate c, served to the silos with the model it belongs to.

c lives in the run's strategy state, written in the same transaction as the model version it
goes with, so it always belongs to the run's latest model version: a silo training from an
older version is refused rather than handed a c that does not match its model.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from aggregation.service.exceptions import Conflict
from aggregation.service.runs import get_model, get_run, spec_of
from aggregation.strategies.scaffold import control_of
from schemas import tensors
from schemas.specs import param_shapes


def control_payload(s: Session, run_id: str, version: int) -> bytes:
    """c for model `version` of `run_id` (zeros for the initial model), named like the model.

    Raises
    ------
    NotFound
        The run or the model version does not exist.
    Conflict
        The run's strategy is not scaffold, or `version` is not the run's latest model version.
    """
    run = get_run(s, run_id)
    spec = spec_of(run)
    if spec.trees is not None or spec.strategy.name != "scaffold":
        raise Conflict(
            f"run {run_id} uses strategy {spec.strategy.name}; only scaffold runs have a "
            "control variate"
        )
    model = get_model(s, run_id, version)
    if model.version != run.latest_model_version:
        raise Conflict(
            f"run {run_id}'s control variate belongs to model version "
            f"{run.latest_model_version}, not {version}: train from the latest model"
        )
    shapes = param_shapes(spec.torch_model)
    params, _ = tensors.decode_expected(model.payload, shapes)
    state = tensors.decode(run.strategy_state)[0] if run.strategy_state else {}
    names = [n for n, _ in shapes]
    meta = {"run_id": run_id, "version": str(version)}
    return tensors.encode(dict(zip(names, control_of(state, params), strict=True)), meta)

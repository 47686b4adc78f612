"""The start of a secure-histogram run: its `HistRunConfig` and its secure-aggregation session.

The config is fixed by the service from the run's spec and the dataset's contract alone, so
every silo can check it: the fine binning grid spans each encoded feature's range as the
contract (and, for standardising contracts, the federation statistics round) defines it. The
silos derive the same ranges with `silos.hist_binning.feature_ranges` and refuse a run whose
ranges differ from theirs (`silos.hist_round`).

The session's roster is the run's active silos when its first training round opens; its
threshold t is `SecureHistSpec.threshold`, else max(2, n // 2 + 1), at most n.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.secagg import session_server
from aggregation.service.contracts import run_contract
from aggregation.service.exceptions import Conflict, InvalidPayload
from aggregation.service.hist_state import HistState, config_json, save
from aggregation.service.rounds import active_silos
from aggregation.service.tables import HistRun, Round, Run, Silo
from schemas.contracts.loader import Contract, ContractError
from schemas.contracts.stats import FederationStats, feature_ranges
from schemas.secagg.session_config import SessionConfig
from schemas.secure_hist.errors import HistConfigError
from schemas.secure_hist.protocol import HistRunConfig, auto_fine_cells
from schemas.specs import RunSpec
from schemas.tree_params import TreeSpecError, check_task


def run_config(spec: RunSpec, stats: list[float] | None, contract: Contract) -> HistRunConfig:
    """The run's HistRunConfig (InvalidPayload naming the problem when it cannot be built)."""
    trees = spec.trees
    assert trees is not None and trees.secure_hist is not None
    try:
        fed = FederationStats.from_summed_moments(stats, contract) if stats else None
        ranges = feature_ranges(contract, fed)
    except ContractError as exc:
        raise InvalidPayload(
            f"secure-hist needs the contract of dataset {spec.dataset!r}: {exc}"
        ) from exc
    if len(ranges) != trees.n_features:
        raise InvalidPayload(
            f"contract {spec.dataset!r} encodes {len(ranges)} features; the run's trees expect "
            f"{trees.n_features}"
        )
    hist = trees.secure_hist
    try:
        check_task(trees, contract.task, len(contract.classes), contract.name)
        return HistRunConfig(
            objective=trees.objective,
            params=trees.params,  # type: ignore[arg-type]  # XGBoost (TreeSpec checks)
            n_trees=spec.rounds * trees.trees_per_round * trees.n_outputs,
            ranges=ranges,
            fine_cells=hist.fine_cells or auto_fine_cells(ranges, trees.params.max_bin),
            min_rows_per_node=hist.min_rows_per_node,
            max_rows=hist.max_rows,
            grad_bits=hist.grad_bits,
            grad_bound=max(hist.grad_bound, regression_bound(contract)),
            num_class=trees.num_class,
        )
    except (HistConfigError, TreeSpecError) as exc:
        raise InvalidPayload(f"secure-hist run: {exc}") from exc


def regression_bound(contract: Contract) -> float:
    """The gradient and label bound B of a regression contract, from its target's range
    [lo, hi]: max(1, |lo|, |hi|, 2 (hi - lo)) (`schemas.secure_hist.protocol` says why); 0 for
    other tasks or a target without a range (the spec's grad_bound then stands)."""
    if contract.task != "regression":
        return 0.0
    bounds = contract.column(contract.target.column).range
    if bounds is None:
        return 0.0
    lo, hi = bounds
    return max(1.0, abs(lo), abs(hi), 2.0 * (hi - lo))


def new_state(s: Session, run: Run, rnd: Round, spec: RunSpec) -> HistRun:
    """The run's state row at its first training round: config fixed, session advertising."""
    assert spec.trees is not None and spec.trees.secure_hist is not None
    silos = tuple(sorted(active_silos(s, run.id)))
    stats = json.loads(run.federation_stats) if run.federation_stats else None
    config = run_config(spec, stats, run_contract(s, spec))  # the published version
    n = len(silos)
    threshold = spec.trees.secure_hist.threshold or max(2, n // 2 + 1)
    if n < 2 or threshold > n:
        raise Conflict(
            f"run {run.id}: secure-hist needs at least 2 silos and a threshold of at most the "
            f"number of silos; {n} active ({list(silos)}), threshold {threshold}"
        )
    session = SessionConfig(run.id, silos, threshold, 64, True)
    per_round = spec.trees.trees_per_round * spec.trees.n_outputs  # trees, K per boosting round
    keys = {
        row.name: bytes.fromhex(row.public_key)
        for row in s.scalars(
            select(Silo).where(Silo.federation == run.federation, Silo.name.in_(silos))
        )
    }
    state = HistState(
        config=config,
        server=session_server.SessionServer(session, keys),
        trees_per_round=per_round,
        round=rnd.number,
        round_end_tree=per_round,
    )
    row = HistRun(
        run_id=run.id,
        phase="advertise",
        round=rnd.number,
        config_json=config_json(config, session, keys, per_round),
        state_json="",
        trees_json="",
    )
    save(row, state)
    s.add(row)
    return row

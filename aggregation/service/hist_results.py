"""The end of a secure-hist round: its model (every tree so far) and its ledger entries.

The model is an XGBoost JSON export of the trees grown so far (`export_xgb`), named with the
run's contract's encoded feature names (what the silos' pipeline encodes); each silo that
is still in the session is recorded as a contributor with a digest chained over every masked
vector it sent in the round (the vectors themselves are dropped once summed).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service.contracts import run_contract
from aggregation.service.hist_state import HistState
from aggregation.service.lineage import Recorder
from aggregation.service.model_store import save_round_model
from aggregation.service.runs import spec_of
from aggregation.service.tables import Contribution, HistMessage, Round, Run, utcnow
from aggregation.trees.secure_hist.export import export_xgb
from schemas.tree_features import encoded_feature_names

SERVICE_SEES = "only federation-wide sums of gradient/hessian histograms per node (no silo's own)"


def finish_round(s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder) -> None:
    """The round's model (every tree so far), its contributions and ledger entries."""
    assert state.base_score is not None
    # secure-hist runs always pin a published contract (the set-up reads it), so it is here
    names = encoded_feature_names(run_contract(s, spec_of(run)))
    model = export_xgb(state.trees, state.config, state.base_score, names)
    sha = hashlib.sha256(model).hexdigest()
    contributors = []
    for silo, digest in _round_digests(s, run.id, rnd.number).items():
        if silo not in state.server.active:
            continue
        if s.get(Contribution, (run.id, rnd.number, silo)) is not None:
            continue  # it declined the round after its last message: its decline stands
        s.add(
            Contribution(run_id=run.id, round=rnd.number, silo=silo, kind="update", digest=digest)
        )
        contributors.append({"silo": silo, "digest": digest, "n_examples": None})
    events = state.events
    entry: dict[str, object] = {
        "round": rnd.number,
        "contributors": contributors,
        "model_version": rnd.number,
        "model_sha256": sha,
        "trees": {
            "kind": "xgboost",
            "mode": "secure-hist",
            "n_trees": len(state.trees),
            "new_trees": state.trees_per_round,
        },
        "secure_aggregation": True,
        "sealed_to_service": False,
        "individual_updates_seen_by_service": False,
        "service_sees": SERVICE_SEES,
        "aggregations": sum(1 for e in events if e["event"] == "sum"),
        "session_counter": state.server.counter,
        "dropouts": [e for e in events if e["event"] == "dropout"],
        "recoveries": [e for e in events if e["event"] == "recovery"],
        "tree_restarts": sum(1 for e in events if e["event"] == "tree_restart"),
        "min_rows_per_node": state.config.min_rows_per_node,
        "session": {
            "silos": list(state.server.config.silos),
            "threshold": state.server.config.threshold,
        },
    }
    save_round_model(s, run, rnd, model, sha, entry, recorder)
    rnd.status, rnd.closed_at = "aggregated", utcnow()
    state.phase = "between"


def _round_digests(s: Session, run_id: str, number: int) -> dict[str, str]:
    """Per silo: sha256 over the digests of every masked vector it sent in this round."""
    rows = s.execute(
        select(HistMessage.silo, HistMessage.digest)
        .where(
            HistMessage.run_id == run_id, HistMessage.round == number, HistMessage.stage == "masked"
        )
        .order_by(HistMessage.id)
    )
    chained: dict[str, Any] = {}
    for silo, digest in rows:
        chained.setdefault(silo, hashlib.sha256()).update(bytes.fromhex(digest))
    return {silo: h.hexdigest() for silo, h in chained.items()}

"""Joint prediction with a trained vertical model, as a run of its own over the relay:
`python -m silos.vertical.predict_role` (or `fedsilo silo vertical --model DIR`).

Each party loads its own half of the model from a finished run's output (the active party's
`model-active.json`: trees, leaf weights, its cuts; a passive party's `model-passive.json`: its
records' thresholds; for logistic regression each party's scaling and weights), aligns the
rows to predict by PSI on their ids, and the active party asks each passive party for the
left/right routes of its records (silos/vertical/active.py, `predict_margin`) or, for
logistic regression, for its partial scores (silos/vertical/logreg.py). Thresholds and
weights never leave their owner; the active party writes `predict-RUN.csv` beside its model
and reports the end with the digest of the model half it used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.vertical import LrPredictRequest, PredictRequest, PsiDone, RunDone
from schemas.vertical_contract import load_vertical_contract
from silos.client import SiloClient
from silos.keys import load_or_create_key
from silos.vertical.active import ActiveParty, Send
from silos.vertical.agent_role import (
    RoleError,
    align,
    load_checked,
    psi_over_wire,
    report,
    report_failed_part,
    require_common,
    sender,
)
from silos.vertical.http_wire import HttpWire, RunOver, open_channel, run_info
from silos.vertical.logreg import Half, answer_scores, request_scores
from silos.vertical.passive import PassiveParty
from silos.vertical.trees import BoostParams, Node, Tree


def load_active(name: str, run: str, text: str, X: np.ndarray, passives: list[str]) -> ActiveParty:
    """The active half from `model-active.json`, ready to route `X` (aligned rows)."""
    model = json.loads(text)
    # no Paillier at prediction: the party's default key pair is made and never used
    party = ActiveParty(name, run, X, np.zeros(len(X)), dict.fromkeys(passives, 0), BoostParams())
    party.cuts = [np.asarray(c, dtype=np.float64) for c in model["cuts"]]
    if len(party.cuts) != X.shape[1]:
        raise RoleError(
            f"model of {name!r} has {len(party.cuts)} own features; data has {X.shape[1]}"
        )
    party.trees = [
        Tree({int(k): Node(**node) for k, node in tree.items()}) for tree in model["trees"]
    ]
    return party


def predict(client: SiloClient, run: str, data_path: Path, contract: str, model_dir: Path) -> str:
    info = run_info(client, run)
    data = load_checked(data_path, load_vertical_contract(contract), predict=True)
    wire = HttpWire(client, open_channel(client, run))
    found = psi_over_wire(wire, info.parties, data.ids)
    require_common(run, client.silo, found)
    report(client, run, PsiDone(size=found.size, digest=found.digest))
    X, _ = align(data, found)
    if info.active == client.silo:
        text = (model_dir / "model-active.json").read_text(encoding="utf-8")
        others = [p for p in info.parties if p != client.silo]
        send = sender(wire)
        margin = _logreg_margin(client.silo, run, text, X, others, send, model_dir)
        if margin is None:
            party = load_active(client.silo, run, text, X, others)
            margin = party.predict_margin(X, send)
        proba = 1.0 / (1.0 + np.exp(-margin))
        pd.DataFrame({"id": found.ids, "proba": proba}).to_csv(
            model_dir / f"predict-{run}.csv", index=False
        )
        digest = hashlib.sha256(text.encode()).hexdigest()
        report(client, run, RunDone(trees=0, model_digest=digest))
        return "active"
    half = json.loads((model_dir / "model-passive.json").read_text(encoding="utf-8"))
    where = f"{model_dir / 'model-passive.json'}"
    logreg = Half.from_dict(half, X.shape[1], False, where) if "model" in half else None
    passive = PassiveParty(client.silo, run, X)
    if logreg is None:
        passive.load_records({int(r): (int(f), float(t)) for r, (f, t) in half["records"].items()})
    passive.set_predict_rows(X)
    while True:
        try:
            msg = wire.receive(info.active)
        except RunOver:
            return "passive"
        if logreg is not None and isinstance(msg, LrPredictRequest):
            wire.send(info.active, answer_scores(logreg, X, msg, client.silo))
        elif logreg is None and isinstance(msg, PredictRequest):
            # routes only: `handle` would first ask for the training run's Paillier key
            wire.send(info.active, passive._routes(msg))
        else:
            raise RoleError(
                f"party {client.silo!r} got {msg.kind} from {msg.sender!r} at prediction"
            )


def _logreg_margin(
    me: str, run: str, text: str, X: np.ndarray, others: list[str], send: Send, folder: Path
) -> np.ndarray | None:
    """The joint margin when the active half is logistic regression's, else None."""
    model = json.loads(text)
    if model.get("model") != "logreg":
        return None
    if len(others) != 1:
        raise RoleError(f"a logistic-regression model predicts with one passive party; {others}")
    half = Half.from_dict(model, X.shape[1], True, str(folder / "model-active.json"))
    return half.margin(X) + request_scores(send, me, run, others[0], len(X))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m silos.vertical.predict_role", description=__doc__)
    for flag in ("--service", "--federation", "--silo", "--run", "--contract"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--key", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="rows to predict")
    ap.add_argument("--model", required=True, type=Path, help="this party's model folder")
    a = ap.parse_args(argv)
    client = SiloClient(
        a.service, federation=a.federation, silo=a.silo, key=load_or_create_key(a.key)
    )
    try:
        role = predict(client, a.run, a.data, a.contract, a.model)
    except Exception as exc:  # any refusal ends the run, naming this party and why
        return report_failed_part(client, a.run, "vertical prediction", exc)
    print(f"vertical prediction {a.run}: silo {a.silo!r} done as the {role} party")
    return 0


if __name__ == "__main__":
    sys.exit(main())

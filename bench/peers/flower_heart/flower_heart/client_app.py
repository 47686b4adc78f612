"""A hospital: Flower's ClientApp (legacy NumPyClient, with the SecAgg+ mod when asked).

Node config (set on `flower-supernode --node-config`): `data-path` (the hospital's .npz from
fedsilo's pipeline) and `hospital` (its name, for the timing file). Every round the client
scores the model it received on its holdout and trains from it, as fedsilo's silo does; the
local training seconds go to `<out-dir>/train_<hospital>.jsonl` for the overhead figure (SecAgg+
drops per-client metrics from the aggregate, so they cannot travel in the reply).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context

from flower_heart.task import build, evaluate, fit, get_params

_DATA: dict[str, dict[str, np.ndarray]] = {}


def _load(path: str) -> dict[str, np.ndarray]:
    if path not in _DATA:
        with np.load(path) as f:
            _DATA[path] = {k: f[k].astype(np.float32) for k in f.files}
    return _DATA[path]


class Hospital(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.cfg = dict(context.run_config)
        self.hospital = str(context.node_config["hospital"])
        self.data = _load(str(context.node_config["data-path"]))

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        round_ = int(config["server_round"])
        model = build(self.cfg, parameters)
        evaluate(model, self.data["X_test"], self.data["y_test"])  # as fedsilo's silo does
        seconds = fit(
            model,
            self.data["X_train"],
            self.data["y_train"],
            int(self.cfg["local-epochs"]),
            int(self.cfg["batch-size"]),
            float(self.cfg["lr"]),
            int(self.cfg["seed"]) + round_,
        )
        out = Path(str(self.cfg["out-dir"]))
        with open(out / f"train_{self.hospital}.jsonl", "a") as f:
            f.write(json.dumps({"round": round_, "train_seconds": seconds}) + "\n")
        return get_params(model), len(self.data["y_train"]), {"train_seconds": seconds}

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        model = build(self.cfg, parameters)
        loss, accuracy = evaluate(model, self.data["X_test"], self.data["y_test"])
        return loss, len(self.data["y_test"]), {"accuracy": accuracy}


def _client_fn(context: Context):  # type: ignore[no-untyped-def]
    return Hospital(context).to_client()


def _secagg_when_asked(msg, ctxt, call_next):  # type: ignore[no-untyped-def]
    """One app for both settings: the SecAgg+ mod expects every fit message to be a protocol
    stage, so it runs only when the run config turns secure aggregation on."""
    if ctxt.run_config.get("secagg"):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=_client_fn, mods=[_secagg_when_asked])

"""A bank: trains XGBoost trees on top of the global model (Flower's XGBoost bagging recipe).

As in Flower's xgboost example: the first round boosts from scratch, later rounds load the
global model and boost `local-rounds` more trees; only the new trees go back (FedXgbBagging
appends every bank's trees to the global model). Node config: `data-path` (the bank's .npz).
"""

from __future__ import annotations

import numpy as np
import xgboost as xgb
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _params(cfg) -> dict:  # type: ignore[no-untyped-def]
    return {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": int(cfg["max-depth"]),
        "eta": float(cfg["eta"]),
        "seed": int(cfg["seed"]),
        "nthread": 1,
        "eval_metric": "auc",
    }


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    with np.load(str(context.node_config["data-path"])) as f:
        dtrain = xgb.DMatrix(f["X_train"], label=f["y_train"])
    k = int(cfg["local-rounds"])
    global_model = msg.content["arrays"]["0"].numpy().tobytes()
    if global_model == b"":
        bst = xgb.train(_params(cfg), dtrain, num_boost_round=k)
        new = bst
    else:
        bst = xgb.Booster(params=_params(cfg))
        bst.load_model(bytearray(global_model))
        for _ in range(k):
            bst.update(dtrain, bst.num_boosted_rounds())
        new = bst[bst.num_boosted_rounds() - k : bst.num_boosted_rounds()]
    payload = np.frombuffer(new.save_raw("json"), dtype=np.uint8)
    content = RecordDict(
        {
            "arrays": ArrayRecord([payload]),
            "metrics": MetricRecord({"num-examples": dtrain.num_row()}),
        }
    )
    return Message(content=content, reply_to=msg)

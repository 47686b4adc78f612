"""XGBoost's federated collective for multiclass: objective and num_class reach every worker.

Real gRPC server and worker processes on 127.0.0.1 with mutual TLS (the `pki` fixture of
`test_trees_collective`).
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from test_trees_collective import pki  # noqa: F401  # the module-scoped fixture

from aggregation.trees.collective import CollectiveServer
from aggregation.trees.models import evaluate, predict
from schemas.tree_params import TreeSpec, task_fields
from silos.collective_worker import collect_worker, start_worker_process

K = 3
SPEC = TreeSpec.model_validate(
    {
        "kind": "xgboost",
        "mode": "collective",
        "n_features": 5,
        "params": {"max_depth": 3, "eta": 0.3},
        **task_fields("multiclass", K),
    }
)


def _data(seed: int, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    z = X[:, 0] - 0.5 * X[:, 2] + 0.4 * rng.normal(size=n)
    return X, np.digitize(z, [-0.5, 0.5]).astype(np.float32)


@pytest.mark.integration
def test_collective_trains_one_multiclass_model(pki) -> None:  # noqa: F811
    silos = ("alpha", "beta")
    parts = [_data(i) for i in range(len(silos))]
    with CollectiveServer(n_workers=len(silos), tls=pki["server"]) as server:
        workers = [
            start_worker_process(
                spec=SPEC,
                X=X,
                y=y,
                host="127.0.0.1",
                port=server.port,
                world_size=len(silos),
                rank=rank,
                tls=pki["workers"][silo],
                num_boost_round=8,
            )  # fmt: skip
            for rank, ((X, y), silo) in enumerate(zip(parts, silos, strict=True))
        ]
        models = [collect_worker(p, q, timeout_s=120) for p, q in workers]
    assert len(set(models)) == 1, "every worker must end with the same model"
    joint = xgb.Booster(model_file=bytearray(models[0]))
    X_test, y_test = _data(7, n=800)
    probs = joint.predict(xgb.DMatrix(X_test))
    assert probs.shape == (800, K)
    assert joint.num_boosted_rounds() == 8
    # the service parses and evaluates the multiclass model as XGBoost does
    np.testing.assert_allclose(predict("xgboost", models[0], X_test), probs, atol=1e-5)
    # the same as training on the pooled rows (the collective is lossless)
    X_all = np.vstack([X for X, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    pooled = xgb.train(SPEC.native_params(), xgb.DMatrix(X_all, label=y_all), 8)
    np.testing.assert_allclose(pooled.predict(xgb.DMatrix(X_test)), probs, atol=1e-3)
    metrics = evaluate("xgboost", models[0], X_test, y_test)
    majority = np.mean(y_test == np.bincount(y_all.astype(int)).argmax())
    assert metrics.accuracy is not None and metrics.accuracy > majority + 0.15

"""XGBoost's federated collective with mutual TLS: refusals, a real run, rejected workers.

The integration tests run the real gRPC server and workers as separate processes on
127.0.0.1 with certificates from a test federation CA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from cryptography.hazmat.primitives.serialization import Encoding
from sklearn.metrics import roc_auc_score

from aggregation.trees.collective import CollectiveServer, ServerTLS, require_mutual_tls
from flows.federation_ca import Issued, issue_ca, issue_leaf
from schemas.tree_errors import CollectiveRunError, CollectiveTLSError
from schemas.tree_params import TreeSpec
from silos.collective_worker import (
    WorkerTLS,
    check_admitted,
    collect_worker,
    start_worker_process,
    train_collective,
)

N = 5
SPEC = TreeSpec(kind="xgboost", mode="collective", n_features=N, params={"max_depth": 3})
SILOS = ("alpha", "beta", "gamma")


def _write_cert(path: Path, issued: Issued) -> Path:
    path.write_bytes(issued.cert.public_bytes(Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pki")
    ca = issue_ca("test federation CA")
    rogue_ca = issue_ca("rogue CA")
    _write_cert(d / "ca.pem", ca)
    issue_leaf(ca, "service", server_hosts=["127.0.0.1"]).write(d / "srv.pem", d / "srv.key")
    issue_leaf(rogue_ca, "impostor", server_hosts=["127.0.0.1"]).write(
        d / "fake.pem", d / "fake.key"
    )
    for silo in (*SILOS, "mallory"):
        issuer = rogue_ca if silo == "mallory" else ca
        issue_leaf(issuer, silo, server_hosts=[]).write(d / f"{silo}.pem", d / f"{silo}.key")
    return {
        "server": ServerTLS(d / "srv.pem", d / "srv.key", d / "ca.pem"),
        "impostor": ServerTLS(d / "fake.pem", d / "fake.key", d / "ca.pem"),
        "workers": {
            s: WorkerTLS(d / "ca.pem", d / f"{s}.pem", d / f"{s}.key") for s in (*SILOS, "mallory")
        },
    }


def _data(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=0.2 * seed, size=(n, N)).astype(np.float32)
    return X, (X[:, 0] - X[:, 2] + rng.normal(size=n) > 0.2 * seed).astype(np.float32)


def test_server_refuses_to_start_without_mutual_tls(tmp_path: Path) -> None:
    with pytest.raises(CollectiveTLSError, match=r"0\.0\.0\.0.*any host that reaches the port"):
        CollectiveServer(n_workers=2, tls=None)
    (tmp_path / "srv.pem").write_text("x")
    (tmp_path / "srv.key").write_text("x")
    missing_ca = ServerTLS(tmp_path / "srv.pem", tmp_path / "srv.key", tmp_path / "ca.pem")
    with pytest.raises(CollectiveTLSError, match="client CA certificate .* does not exist"):
        require_mutual_tls(missing_ca)


def test_worker_refuses_without_certificates_or_wrong_spec(tmp_path: Path) -> None:
    X, y = _data(0)
    missing = WorkerTLS(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "c.key")
    with pytest.raises(CollectiveTLSError, match="does not exist"):
        check_admitted("127.0.0.1", 1, missing)
    bagging = SPEC.model_copy(update={"mode": "bagging"})
    with pytest.raises(CollectiveRunError, match="not xgboost/collective"):
        train_collective(
            bagging, X, y, host="127.0.0.1", port=1, world_size=1, rank=0, tls=missing,
            num_boost_round=1,
        )  # fmt: skip


@pytest.mark.integration
def test_workers_train_one_model_over_mutual_tls(pki) -> None:
    parts = [_data(i) for i in range(len(SILOS))]
    with CollectiveServer(n_workers=len(SILOS), tls=pki["server"]) as server:
        assert server.port
        workers = [
            start_worker_process(
                spec=SPEC,
                X=X,
                y=y,
                host="127.0.0.1",
                port=server.port,
                world_size=len(SILOS),
                rank=rank,
                tls=pki["workers"][silo],
                num_boost_round=20,
            )  # fmt: skip
            for rank, ((X, y), silo) in enumerate(zip(parts, SILOS, strict=True))
        ]
        models = [collect_worker(p, q, timeout_s=120) for p, q in workers]
    assert len(set(models)) == 1, "every worker must end with the same model"
    X_all = np.vstack([X for X, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    joint = xgb.Booster(model_file=bytearray(models[0]))
    pooled = xgb.train(SPEC.native_params(), xgb.DMatrix(X_all, label=y_all), 20)
    auc_joint = roc_auc_score(y_all, joint.predict(xgb.DMatrix(X_all)))
    auc_pooled = roc_auc_score(y_all, pooled.predict(xgb.DMatrix(X_all)))
    assert joint.num_boosted_rounds() == 20
    assert abs(auc_joint - auc_pooled) < 0.01


@pytest.mark.integration
def test_worker_with_certificate_from_another_ca_is_rejected(pki) -> None:
    X, y = _data(0)
    with CollectiveServer(n_workers=1, tls=pki["server"]) as server:
        check_admitted("127.0.0.1", server.port, pki["workers"]["alpha"])  # a valid silo passes
        process, results = start_worker_process(
            spec=SPEC, X=X, y=y, host="127.0.0.1", port=server.port, world_size=1, rank=0,
            tls=pki["workers"]["mallory"], num_boost_round=2,
        )  # fmt: skip
        with pytest.raises(CollectiveTLSError, match="rejected this silo's client certificate"):
            collect_worker(process, results, timeout_s=60)


@pytest.mark.integration
def test_worker_refuses_a_server_outside_the_federation(pki) -> None:
    with CollectiveServer(n_workers=1, tls=pki["impostor"]) as server:
        with pytest.raises(CollectiveTLSError, match="federation CA does not vouch"):
            check_admitted("127.0.0.1", server.port, pki["workers"]["alpha"])

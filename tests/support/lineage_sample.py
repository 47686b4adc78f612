"""A realistic ledger for the lineage review tests: two runs of a heart-disease federation.

Written through the service's real `ledger.append` into a SQLite database, with real
safetensors model files in a service workspace and each silo's own copy (statements, signatures,
receipts) in its workspace, exactly where the service and agents keep them.

Run ``run-a`` (3 rounds, silos cleveland, hungary, switzerland, finished):
  round 1: switzerland fails validation (chol is 0 in every row) and sits out; the others
           contribute.
  round 2: switzerland fixed its data (new fingerprint) and contributes; hungary's update is
           accepted but hungary drops before unmasking, so the aggregate leaves it out.
  round 3: switzerland's update is rejected (replayed signature); cleveland and hungary
           contribute. Round 4 evaluates the final model.
Run ``run-b`` (cleveland, hungary, failed after round 1): hungary's only accepted update is
  left out of the aggregate (dropout), so hungary contributed to no model of run-b.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from aggregation.service import ledger, ledger_guard
from aggregation.service.db import Base, make_engine, make_sessionmaker, transaction
from schemas.ledger_verify import SiloRecord
from schemas.lineage import LineageEntry, canonical_json, make_statement, sign_statement
from schemas.specs import ModelSpec, RunSpec, param_shapes
from schemas.tensors import encode

SILOS = ("cleveland", "hungary", "switzerland")
RUN_A, RUN_B = "run-a", "run-b"
PREFECT_RUN_A = "0b6e9c59-5d0e-4a53-9d33-7f0b8f7d1c2a"
CONTRACT = {"contract": "heart_disease", "contract_version": "1", "contract_sha256": "c0" * 32}
ROWS = {"cleveland": 304, "hungary": 293, "switzerland": 123}
CHOL_FAILURE = {
    "expectation": "expect_column_values_to_be_between",
    "column": "chol",
    "unexpected_count": 123,
    "unexpected_percent": 100.0,
}


MLP = ModelSpec(kind="mlp", n_features=13, hidden=(16,))


def run_spec(
    rounds: int, silos: tuple[str, ...] = SILOS, model: ModelSpec = MLP, **extra: Any
) -> RunSpec:
    """A sample run's spec in the heart federation (at least 2 silos); `extra` are further
    `RunSpec` fields (an ensemble, distillation)."""
    return RunSpec(
        federation="heart",
        dataset="heart_disease_uci",
        model=model,
        rounds=rounds,
        min_silos=2,
        silos=silos,
        **extra,
    )


@dataclass
class Sample:
    """The ledger, its keys, the service workspace and the silos' workspaces."""

    engine: Engine
    store: Path
    silo_dirs: dict[str, Path]
    keys: dict[str, str]
    private: dict[str, Ed25519PrivateKey]
    models: dict[tuple[str, int], str] = field(default_factory=dict)

    def entries(self) -> list[LineageEntry]:
        with make_sessionmaker(self.engine)() as session:
            return list(ledger.iter_records(session))


class Writer:
    """Appends service entries and silos' signed statements to the sample's ledger, keeping
    each silo's own copy (statement, signature, receipt) in `copies`."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.factory = make_sessionmaker(sample.engine)
        self.copies: dict[str, list[SiloRecord]] = {s: [] for s in SILOS}

    def service(self, kind: str, payload: dict[str, Any], run_id: str | None) -> LineageEntry:
        with transaction(self.factory) as session:
            return ledger.append(
                session,
                kind=kind,
                payload=payload,
                run_id=run_id,
                author="service",
                service_key=self.sample.private["service"],
            )

    def silo(self, silo: str, kind: str, payload: dict[str, Any], run_id: str) -> LineageEntry:
        author = f"silo:{silo}"
        statement = make_statement(run_id=run_id, kind=kind, payload=payload, author=author)
        signature = sign_statement(self.sample.private[author], statement)
        with transaction(self.factory) as session:
            entry = ledger.append(
                session,
                kind=kind,
                payload=statement.payload,
                run_id=run_id,
                author=author,
                service_key=self.sample.private["service"],
                author_signature=signature,
                author_key=self.sample.private[author].public_key(),
            )
        receipt = ledger.receipt(entry, self.sample.private["service"])
        self.copies[silo].append(
            SiloRecord(statement=statement, author_signature=signature, receipt=receipt)
        )
        return entry

    def model(self, run_id: str, round_: int, version: int, spec: ModelSpec) -> str:
        rng = np.random.default_rng(version + 100 * len(run_id))
        arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(spec)}
        return self.saved(run_id, round_, version, encode(arrays), "safetensors")

    def saved(self, run_id: str, round_: int, version: int, data: bytes, suffix: str) -> str:
        """Store model `version` in the service workspace and append its ``model_saved`` entry;
        returns its sha256."""
        rel = f"models/{run_id}/v{version}.{suffix}"
        path = self.sample.store / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.sample.models[(run_id, version)] = digest
        payload = {"round": round_, "version": version, "sha256": digest, "path": rel}
        self.service("model_saved", payload, run_id)
        return digest


def _metrics(round_: int, version: int, silos: list[str]) -> dict[str, Any]:
    per_silo = {}
    for i, silo in enumerate(silos):
        accuracy = 0.62 + 0.05 * version + 0.03 * i
        per_silo[silo] = {
            "n_test": ROWS[silo] // 5,
            "loss": round(0.69 - 0.06 * version - 0.02 * i, 4),
            "accuracy": round(accuracy, 4),
            "auc": round(accuracy + 0.04, 4),
        }
    n = sum(m["n_test"] for m in per_silo.values())
    weighted = {
        k: round(sum(m[k] * m["n_test"] for m in per_silo.values()) / n, 4)
        for k in ("loss", "accuracy", "auc")
    }
    return {"round": round_, "model_version": version, "per_silo": per_silo, "weighted": weighted}


def _validate(w: Writer, silo: str, run_id: str, round_: int, fixed: bool = True) -> bool:
    ok = silo != "switzerland" or fixed
    data = f"{silo}-{'fixed' if silo == 'switzerland' and fixed else 'raw'}"
    payload = {
        "silo": silo,
        "round": round_,
        **CONTRACT,
        "data_sha256": hashlib.sha256(data.encode()).hexdigest(),
        "n_rows": ROWS[silo],
        "success": ok,
        "failed": [] if ok else [CHOL_FAILURE],
    }
    w.silo(silo, "validation_result", payload, run_id)
    return ok


def _update(w: Writer, silo: str, run_id: str, round_: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{run_id}/{round_}/{silo}".encode()).hexdigest()
    n = ROWS[silo] * 4 // 5
    payload = {"silo": silo, "round": round_, "digest": digest, "n_examples": n}
    w.silo(silo, "update_accepted", payload, run_id)
    privacy = {
        "silo": silo,
        "round": round_,
        "epsilon": round(
            0.4 * round_**0.5 + {"hungary": 0.1, "switzerland": 0.2}.get(silo, 0.0), 4
        ),
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
    }
    w.silo(silo, "privacy_spent", privacy, run_id)
    return {"silo": silo, "digest": digest, "n_examples": n}


def _aggregate(w: Writer, run_id: str, round_: int, contributors: list[dict[str, Any]]) -> None:
    digest = hashlib.sha256(canonical_json({"c": contributors}).encode()).hexdigest()
    payload = {
        "round": round_,
        "contributors": contributors,
        "aggregate_digest": digest,
        "model_version": round_,
        "secure_aggregation": True,
    }
    w.service("aggregate", payload, run_id)


def start_run(w: Writer, run_id: str, silos: list[str], spec: RunSpec, prefect: str | None) -> str:
    """Append the ``run_started`` entry of `run_id`; returns its initial model's sha256."""
    as_dict = spec.model_dump(mode="json")
    initial = hashlib.sha256(f"init-{run_id}".encode()).hexdigest()
    payload = {
        "spec": as_dict,
        "config_sha256": hashlib.sha256(canonical_json(as_dict).encode()).hexdigest(),
        "fedsilo_version": "0.1.0",
        "git_commit": "4f1c2d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e",
        "prefect_flow_run_id": prefect,
        "participants": silos,
        "initial_model_sha256": initial,
    }
    w.service("run_started", payload, run_id)
    return initial


def _run_a(w: Writer) -> None:
    spec = run_spec(3)
    start_run(w, RUN_A, list(SILOS), spec, PREFECT_RUN_A)
    w.model(RUN_A, 0, 0, spec.model)
    for round_ in (1, 2, 3):
        passed = [s for s in SILOS if _validate(w, s, RUN_A, round_, fixed=round_ > 1)]
        w.service("metrics", _metrics(round_, round_ - 1, passed), RUN_A)
        if round_ == 3:
            reason = "statement signed for round 2 replayed in round 3"
            rejected = {"silo": "switzerland", "round": 3, "status": 409, "reason": reason}
            w.service("update_rejected", rejected, RUN_A)
            passed.remove("switzerland")
        updates = [_update(w, s, RUN_A, round_) for s in passed]
        if round_ == 2:
            w.service("dropout", {"round": 2, "silos": ["hungary"]}, RUN_A)
            updates = [u for u in updates if u["silo"] != "hungary"]
            survivors = [u["silo"] for u in updates]
            w.service("recovery", {"round": 2, "survivors": survivors}, RUN_A)
        _aggregate(w, RUN_A, round_, updates)
        w.model(RUN_A, round_, round_, spec.model)
    w.service("metrics", _metrics(4, 3, list(SILOS)), RUN_A)
    final = {
        "status": "finished",
        "reason": "3 rounds completed",
        "final_model_version": 3,
        "final_model_sha256": w.sample.models[(RUN_A, 3)],
    }
    w.service("run_finished", final, RUN_A)


def _run_b(w: Writer) -> None:
    silos = ["cleveland", "hungary"]
    spec = run_spec(5, tuple(silos), ModelSpec(kind="logreg", n_features=13))
    start_run(w, RUN_B, silos, spec, None)
    w.model(RUN_B, 0, 0, spec.model)
    for silo in silos:
        _validate(w, silo, RUN_B, 1)
    updates = [_update(w, s, RUN_B, 1) for s in silos]
    w.service("dropout", {"round": 1, "silos": ["hungary"]}, RUN_B)
    w.service("recovery", {"round": 1, "survivors": ["cleveland"]}, RUN_B)
    _aggregate(w, RUN_B, 1, updates[:1])
    w.model(RUN_B, 1, 1, spec.model)
    failed = {
        "status": "failed",
        "reason": "round 2: 1 of 2 silos answered by the deadline — min_silos is 2",
        "final_model_version": 1,
        "final_model_sha256": w.sample.models[(RUN_B, 1)],
    }
    w.service("run_failed", failed, RUN_B)


def open_ledger(root: Path, silo_dirs: dict[str, Path] | None = None) -> Writer:
    """An empty ledger in ``root/service.db`` (store: ``root/store``), with fresh keys for the
    service and each silo, and each silo's ``silo_joined`` entry; returns its writer."""
    engine = make_engine(f"sqlite:///{root}/service.db")
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
    private = {"service": Ed25519PrivateKey.generate()}
    private |= {f"silo:{s}": Ed25519PrivateKey.generate() for s in SILOS}
    keys = {owner: k.public_key().public_bytes_raw().hex() for owner, k in private.items()}
    w = Writer(Sample(engine, root / "store", silo_dirs or {}, keys, private))
    for silo in SILOS:
        joined = {"silo": silo, "federation": "heart", "public_key": keys[f"silo:{silo}"]}
        w.service("silo_joined", joined, None)
    return w


def build_sample(root: Path) -> Sample:
    """Write both runs under `root`: ``service.db``, ``store/``, ``silos/<name>/``."""
    silo_dirs = {s: root / "silos" / s for s in SILOS}
    w = open_ledger(root, silo_dirs)
    _run_a(w)
    _run_b(w)
    for silo, records in w.copies.items():
        path = silo_dirs[silo] / "lineage" / "records.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return w.sample

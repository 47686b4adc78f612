"""Is every silo better off personalized? Global vs personalized vs local-only, per silo.

In process, the silo's own code (`silos.personalize`, `silos.trainer`), no service: each silo
splits and encodes its rows as the agent does (`flows.baselines.prepare_silo_arrays`, 25 %
holdout, seed 42), FedAvg runs the demo's settings (`flows.demo_config`), then every silo
personalizes the final global model exactly as its agent does in the evaluation round
(`silos.personalize.personalize`: the same validation split, early stopping and local-only
model). FedPer keeps each silo's output layer at the silo in every round, as
`silos.personalize_state` does in the agent. Scores are ROC AUC on each silo's held-out rows,
mean of 5 seeds (seed = initial weights, shuffling and validation split).

MET for a silo when its personalized model's mean AUC is at least both the global model's and
its local-only model's; the table says where it misses and by how much.

    python bench/personalization.py                       # heart, then the banks
    python bench/personalization.py --dataset heart --methods finetune ditto

Measured on a shared 2-core CPU (2026-12-04), silos MET out of all, finetune / ditto / fedper:
hospitals 1 / 2 / 3 of 4, banks 4 / 4 / 5 of 5, so the target (every silo, every method) is
MISSED. Where: Switzerland (31 held-out rows, 2 of them negative) loses 0.038 (finetune) and
0.034 (ditto) AUC to the global model, which is itself below chance there (0.452); Hungary
loses 0.001 / 0.000 / 0.015 and VA Long Beach 0.002 (finetune) to the global model; at the
banks, microcredit (finetune) and consumer (ditto) are 0.001 / 0.000 below the global model.
FedPer beats both at every bank and is the only method that lifts Switzerland (0.376 global,
0.417 personalized, 0.317 alone). The federation does worse than the silo alone at
Cleveland (every method) and at four banks under FedPer, at private under every method; the
personalized model recovers that at each of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.baselines import SiloArrays, prepare_silo_arrays  # noqa: E402
from flows.demo_config import (  # noqa: E402
    DEMO_SPLIT_SEED,
    DEMO_TEST_FRACTION,
    credit_demo_spec,
    heart_demo_spec,
)
from schemas.contracts import load_contract  # noqa: E402
from schemas.contracts.stats import FederationStats  # noqa: E402
from schemas.specs import ModelSpec, PersonalizationSpec, RunSpec  # noqa: E402
from silos.features import FeaturePipeline  # noqa: E402
from silos.personalize import Split, local_only, personalize, split_rows  # noqa: E402
from silos.personalize_state import HEAD_PARAMS, with_head  # noqa: E402
from silos.torch_model import build_model, get_params  # noqa: E402
from silos.trainer import train_local  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)
METHODS = ("finetune", "ditto", "fedper")
DITTO_LAMBDA = [PersonalizationSpec().ditto_lambda]  # --ditto-lambda
FEDPER_HIDDEN = (32,)  # FedPer shares hidden layers: a logreg run gets this MLP


def load(dataset: str) -> tuple[dict[str, SiloArrays], int]:
    """Each silo's encoded rows (the banks standardised with federation statistics)."""
    if dataset == "heart":
        from silos.demo_data import heart_disease_silos

        contract = load_contract("heart_disease")
        frames = heart_disease_silos()
        stats = None
    else:
        from silos.data import split_train_test
        from silos.demo_data import credit_default_silos
        from silos.federated_stats import local_moments

        contract = load_contract("credit_default")
        frames = credit_default_silos()
        train = [
            split_train_test(f, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED)[0]
            for f in frames.values()
        ]
        stats = FederationStats.from_summed_moments(
            sum(local_moments(t, contract) for t in train), contract
        )
    arrays = prepare_silo_arrays(frames, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED, stats)
    return arrays, FeaturePipeline.from_contract(contract, stats).n_features


def run_spec(dataset: str, n_features: int, method: str, seed: int) -> RunSpec:
    base = heart_demo_spec(n_features) if dataset == "heart" else credit_demo_spec(n_features)
    model = base.torch_model
    if method == "fedper" and not model.hidden:
        model = ModelSpec(kind="mlp", n_features=n_features, hidden=FEDPER_HIDDEN)
    training = base.training.model_copy(update={"seed": seed})
    return base.model_copy(
        update={
            "model": model,
            "training": training,
            "personalize": PersonalizationSpec(method=method, ditto_lambda=DITTO_LAMBDA[0]),  # type: ignore[arg-type]
        }
    )


def federate(
    spec: RunSpec, rows: dict[str, Split]
) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """FedAvg for `spec.rounds` rounds on every silo's training rows (fit + validation, as the
    agent trains on all of them); under FedPer each silo's head stays local. Returns the
    global parameters and each silo's head (empty unless FedPer)."""
    fedper = spec.personalize is not None and spec.personalize.method == "fedper"
    weights = get_params(build_model(spec.torch_model, seed=spec.training.seed))
    heads: dict[str, list[np.ndarray]] = {}
    for r in range(1, spec.rounds + 1):
        training = spec.training.model_copy(update={"seed": spec.training.seed + r})
        total, acc = 0, [np.zeros_like(w) for w in weights]
        for silo, s in rows.items():
            start = with_head(spec.torch_model, weights, heads[silo]) if silo in heads else weights
            X = np.concatenate([s.X_fit, s.X_val])
            y = np.concatenate([s.y_fit, s.y_val])
            out = train_local(spec.torch_model, start, X, y, training)
            delta = [p - w for p, w in zip(out.params, start, strict=True)]
            if fedper:
                heads[silo] = out.params[-HEAD_PARAMS:]
                delta[-HEAD_PARAMS:] = [np.zeros_like(d) for d in delta[-HEAD_PARAMS:]]
            total += out.n_examples
            acc = [a + out.n_examples * d for a, d in zip(acc, delta, strict=True)]
        weights = [(w + a / total).astype(np.float32) for w, a in zip(weights, acc, strict=True)]
    return weights, heads


def measure(dataset: str, methods: list[str]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(method, silo) -> {"global", "personalized", "local"} -> AUC per seed."""
    arrays, nf = load(dataset)
    print(
        f"{dataset}: "
        + ", ".join(f"{k} {len(s.y_train)}/{len(s.y_test)} rows" for k, s in arrays.items())
    )
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in SEEDS:
        started = time.perf_counter()
        cache: dict[tuple, tuple] = {}
        locals_: dict[tuple, list[np.ndarray]] = {}
        for method in methods:
            spec = run_spec(dataset, nf, method, seed)
            p = spec.personalize
            assert p is not None
            rows = {
                k: split_rows(
                    "binary", s.X_train, s.y_train, s.X_test, s.y_test, p.val_fraction, seed
                )
                for k, s in arrays.items()
            }
            key = (spec.torch_model, method == "fedper")
            if key not in cache:
                cache[key] = federate(spec, rows)
            weights, heads = cache[key]
            for silo, r in rows.items():
                lkey = (spec.torch_model, silo)
                if lkey not in locals_:
                    locals_[lkey] = local_only(spec, r)
                res = personalize(spec, weights, r, heads.get(silo), locals_[lkey])
                for name, m in (
                    ("global", res.global_metrics),
                    ("personalized", res.personalized),
                    ("local", res.local_only),
                ):
                    out[(method, silo)][name].append(
                        float(m.auc) if m.auc is not None else float("nan")
                    )
        print(f"  seed {seed}: {time.perf_counter() - started:.1f} s", flush=True)
    return out


def table(dataset: str, scores: dict[tuple[str, str], dict[str, list[float]]]) -> int:
    """Print the per-silo table; the number of (method, silo) rows that MISSED."""
    print(f"\n{dataset}: ROC AUC on each silo's held-out rows, mean (sd) of {len(SEEDS)} seeds")
    print(f"{'method':<9} {'silo':<13} {'global':>13} {'personal':>13} {'local-only':>13}  verdict")
    missed = 0
    for (method, silo), s in scores.items():
        mean = {k: float(np.nanmean(v)) for k, v in s.items()}
        cell = {k: f"{mean[k]:.3f} ({np.nanstd(v):.3f})" for k, v in s.items()}
        best_other = max(mean["global"], mean["local"])
        ok = mean["personalized"] >= best_other
        flag = " [federation worse than alone]" if mean["global"] < mean["local"] else ""
        verdict = (
            "MET"
            if ok
            else f"MISSED by {best_other - mean['personalized']:.3f} vs "
            + ("global" if mean["global"] >= mean["local"] else "local-only")
        )
        missed += not ok
        print(
            f"{method:<9} {silo:<13} {cell['global']:>13} {cell['personalized']:>13} "
            f"{cell['local']:>13}  {verdict}{flag}"
        )
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("heart", "banks", "all"), default="all")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ditto-lambda", type=float, default=DITTO_LAMBDA[0])
    args = parser.parse_args()
    DITTO_LAMBDA[0] = args.ditto_lambda
    datasets = ["heart", "banks"] if args.dataset == "all" else [args.dataset]
    for dataset in datasets:
        if dataset == "banks":
            from silos.demo_data import DemoDataError, credit_default_table

            try:
                credit_default_table()
            except DemoDataError as exc:
                print(f"banks skipped: {exc}")
                continue
        started = time.perf_counter()
        missed = table(dataset, measure(dataset, args.methods))
        print(
            f"{dataset}: {missed} silo/method rows MISSED ({time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()

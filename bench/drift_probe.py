"""Why federated softmax logreg lags pooled on the five banks (issue 14): client drift.

A diagnostic, not a product path. On the banks' delinquency task (`bench/tasks.py`'s data,
demo settings: 20 rounds x 1 epoch, SGD lr 0.1, batch 64) it trains, each over `--seeds`
seeds, and prints macro-F1 on all test rows, the training log loss and how many test rows are
predicted "1 month late" (the grade macro-F1 hangs on):

- pooled: the product's `flows.baselines.train_centralized`;
- fedavg: the product's `silos.trainer.train_local` at each bank and the service's FedAvg;
- fedavg iid: the same FedAvg with the pooled rows dealt to five silos of the banks' sizes at
  random: what FedAvg does when silos do not differ;
- scaffold: SCAFFOLD (Karimireddy et al. 2020, control variates option II), written out here in
  a plain loop with the same batches and rate: drift-corrected local steps
  w <- w - lr (grad_i(w) - c_i + c).

FedAvg over IID silos and SCAFFOLD over the real banks both land where pooled does; FedAvg over
the real banks does not. So the gap is FedAvg's client drift (the banks are credit-limit bands
whose rows and grade mixes differ), not scaling, rounds or the learning rate.

    python bench/drift_probe.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402  (bench/tasks.py: the data and the spec)

from aggregation.strategies.aggregate import weighted_mean  # noqa: E402
from flows.baselines import train_centralized  # noqa: E402
from schemas.specs import ModelSpec, RunSpec  # noqa: E402
from silos.torch_model import build_model, get_params, set_params  # noqa: E402
from silos.trainer import evaluate, predict, train_local  # noqa: E402

Silo = tuple[np.ndarray, np.ndarray]


def fedavg(spec: RunSpec, silos: list[Silo], seed: int) -> list[np.ndarray]:
    params = get_params(build_model(spec.torch_model, seed=seed))
    for r in range(1, spec.rounds + 1):
        training = spec.training.for_round(r, spec.rounds)
        results = [train_local(spec.torch_model, params, X, y, training) for X, y in silos]
        deltas = [[n - o for n, o in zip(res.params, params, strict=True)] for res in results]
        mean = weighted_mean(deltas, [res.n_examples for res in results])
        params = [p + d for p, d in zip(params, mean, strict=True)]
    return params


def _corrected_epoch(
    model: ModelSpec, params: list[np.ndarray], silo: Silo, lr: float, batch: int, seed: int,
    correction: list[torch.Tensor],
) -> tuple[list[np.ndarray], int]:  # fmt: skip
    net = build_model(model)
    set_params(net, params)
    X, y = torch.from_numpy(silo[0]), torch.from_numpy(silo[1].astype(np.int64))
    loss = nn.CrossEntropyLoss()
    steps = 0
    for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).split(batch):
        net.zero_grad()
        loss(net(X[idx]), y[idx]).backward()
        with torch.no_grad():
            for p, c in zip(net.parameters(), correction, strict=True):
                p -= lr * (p.grad + c)  # type: ignore[operator]
        steps += 1
    return get_params(net), steps


def scaffold(spec: RunSpec, silos: list[Silo], seed: int) -> list[np.ndarray]:
    model, lr, batch = spec.torch_model, spec.training.lr, spec.training.batch_size
    params = get_params(build_model(model, seed=seed))
    weights = np.array([len(y) for _, y in silos], dtype=np.float64) / sum(len(y) for _, y in silos)
    zeros = [torch.zeros(p.shape) for p in params]
    c, c_i = list(zeros), [list(zeros) for _ in silos]
    for r in range(1, spec.rounds + 1):
        deltas, new_c_i = [], []
        for k, silo in enumerate(silos):
            fix = [g - own for g, own in zip(c, c_i[k], strict=True)]
            new, steps = _corrected_epoch(model, params, silo, lr, batch, seed + r, fix)
            delta = [n - o for n, o in zip(new, params, strict=True)]
            deltas.append(delta)  # option II: c_i <- c_i - c + (x - y_i) / (K lr)
            scaled = [torch.from_numpy(d) / (steps * lr) for d in delta]
            new_c_i.append([own - g - d for own, g, d in zip(c_i[k], c, scaled, strict=True)])
        params = [p + d for p, d in zip(params, weighted_mean(deltas, list(weights)), strict=True)]
        c = [
            g
            + sum(w * (new[j] - old[j]) for w, new, old in zip(weights, new_c_i, c_i, strict=True))
            for j, g in enumerate(c)
        ]
        c_i = new_c_i
    return params


def iid(silos: list[Silo], seed: int = 0) -> list[Silo]:
    X = np.concatenate([s[0] for s in silos])
    y = np.concatenate([s[1] for s in silos])
    order = np.random.default_rng(seed).permutation(len(y))
    cuts = np.cumsum([len(s[1]) for s in silos])[:-1]
    return [(X[part], y[part]) for part in np.split(order, cuts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = tasks.load("multiclass")
    base = tasks.neural_spec(data, "logreg")
    silos = [(s.X_train, s.y_train) for s in data.silos.values()]
    X_all = np.concatenate([s[0] for s in silos])
    y_all = np.concatenate([s[1] for s in silos])
    runs = {
        "pooled": lambda spec, seed: train_centralized(spec, X_all, y_all, init_seed=seed),
        "fedavg": lambda spec, seed: fedavg(spec, silos, seed),
        "fedavg iid": lambda spec, seed: fedavg(spec, iid(silos), seed),
        "scaffold": lambda spec, seed: scaffold(spec, silos, seed),
    }
    print(f"softmax logreg, five banks, mean of {args.seeds} seeds")
    print(f"   {'':<11} {'macro-F1':>8} {'train loss':>10} {'predicted 1 month late':>23}")
    for name, train in runs.items():
        f1, loss, late = [], [], []
        for seed in range(args.seeds):
            training = base.training.model_copy(update={"seed": base.training.seed + seed})
            spec = base.model_copy(update={"training": training})
            params = train(spec, training.seed)
            f1.append(evaluate(spec.torch_model, params, data.X_test, data.y_test).f1_macro)
            loss.append(evaluate(spec.torch_model, params, X_all, y_all).loss)
            late.append(int((predict(spec.torch_model, params, data.X_test).argmax(1) == 1).sum()))
        print(f"   {name:<11} {np.mean(f1):8.4f} {np.mean(loss):10.5f} {np.mean(late):23.0f}")


if __name__ == "__main__":
    main()

"""The model and local training, line for line what fedsilo's silo runs.

`TabularNet` mirrors `silos/torch_model.py` (logistic regression or a ReLU MLP ending in one
logit, parameters named `layers.<i>.weight/bias`) and `fit` mirrors `silos/trainer.py::_fit`
(SGD, mini-batches from `torch.randperm` with a generator seeded per round, summed BCE divided by
the batch size, one intra-op thread). The initial parameters come from fedsilo's
`build_model(spec, seed=0)` through the init file, so both systems start from the same point.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class TabularNet(nn.Module):
    def __init__(self, n_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        sizes = [n_features, *hidden, 1]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


def hidden_of(run_config: dict) -> tuple[int, ...]:
    width = int(run_config["hidden"])
    return (width,) if run_config["model"] == "mlp" and width > 0 else ()


def build(run_config: dict, params: list[np.ndarray]) -> TabularNet:
    model = TabularNet(int(run_config["n-features"]), hidden_of(run_config))
    state = model.state_dict()
    model.load_state_dict(
        {k: torch.as_tensor(np.asarray(a, dtype=np.float32)).clone() for k, a in zip(state, params)}
    )
    return model


def get_params(model: nn.Module) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def fit(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Train in place; returns the seconds spent (the round's local training time)."""
    started = time.perf_counter()
    features, labels = torch.from_numpy(X), torch.from_numpy(y)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
        n = features.shape[0]
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=generator).split(batch_size):
                optimizer.zero_grad()
                (loss_fn(model(features[idx]), labels[idx]) / len(idx)).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(previous)
    return time.perf_counter() - started


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy at 0.5) on held-out rows, as the silo scores the model it receives."""
    with torch.no_grad():
        logits = model(torch.from_numpy(X))
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))
        probs = torch.sigmoid(logits).numpy()
    return loss, float(np.mean((probs >= 0.5) == (y == 1)))

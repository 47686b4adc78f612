"""silos.optim's SGD and Adam give torch.optim's parameters bit for bit (lean agents, issue 20)."""

from __future__ import annotations

import pytest
import torch

from silos.optim import Adam, Sgd, make_optimizer


def _train(make: object, steps: int = 25, frozen: bool = False) -> list[torch.Tensor]:
    """A small MLP trained `steps` mini-batches from a fixed start with optimizer `make`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    if frozen:  # a parameter without a gradient: skipped, its Adam step count stays put
        model[0].bias.requires_grad_(False)
    optimizer = make(model.parameters())  # type: ignore[operator]
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(64, 5, generator=generator)
    y = (X[:, 0] > 0).float().unsqueeze(1)
    for step in range(steps):
        idx = torch.arange(step % 4 * 16, step % 4 * 16 + 16)
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(X[idx]), y[idx]).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("frozen", [False, True])
def test_sgd_matches_torch(weight_decay: float, frozen: bool) -> None:
    ours = _train(lambda ps: Sgd(ps, lr=0.1, weight_decay=weight_decay), frozen=frozen)
    ref = _train(lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=weight_decay), frozen=frozen)
    start = _train(lambda ps: Sgd(ps, lr=0.1), steps=0)
    assert not torch.equal(ours[0], start[0])  # it did train
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("frozen", [False, True])
def test_adam_matches_torch(weight_decay: float, frozen: bool) -> None:
    ours = _train(lambda ps: Adam(ps, lr=0.01, weight_decay=weight_decay), frozen=frozen)
    ref = _train(lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=weight_decay), frozen=frozen)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    sgd = _train(lambda ps: Sgd(ps, lr=0.01, weight_decay=weight_decay), frozen=frozen)
    assert not torch.equal(ours[0], sgd[0])  # Adam's step is not SGD's: the check can fail


def test_make_optimizer_by_spec_name() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params, "adam", 0.1, 0.0), Adam)
    assert isinstance(make_optimizer(params, "sgd", 0.1, 0.0), Sgd)

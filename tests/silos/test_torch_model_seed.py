"""`build_model` seeds only PyTorch's CPU generator: the same weights `torch.manual_seed`
gave, without queueing a seeding of every accelerator backend (each recording a traceback:
about 5% of an agent's CPU per round), and the caller's random state is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.specs import ModelSpec
from silos.torch_model import TabularNet, build_model, get_params


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(kind="logreg", n_features=5), ModelSpec(kind="mlp", n_features=13, hidden=[32, 16])],
)
def test_the_seed_gives_the_weights_the_global_seed_gave(
    spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = [t.detach().numpy().copy() for t in TabularNet(spec).state_dict().values()]
    state = torch.random.get_rng_state()

    def refuse(_seed: int) -> None:
        raise AssertionError("torch.manual_seed seeds every backend")

    monkeypatch.setattr(torch, "manual_seed", refuse)
    got = get_params(build_model(spec, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(get_params(build_model(spec, seed=8)), expected, strict=True)
    )

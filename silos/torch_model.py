"""The tabular PyTorch model a silo trains, and moving its parameters in and out as numpy.

Parameter names and shapes are exactly `schemas.specs.param_shapes(spec)`, in that order, so a
state dict and a wire payload line up without renaming.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from schemas.specs import ModelSpec, param_shapes
from silos.exceptions import ModelError


class TabularNet(nn.Module):
    """A linear model (no hidden layer) or a ReLU MLP, ending in `spec.n_outputs` units: one
    logit (binary), one logit per class (multiclass) or one number (regression)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.squeeze = spec.n_outputs == 1
        sizes = [spec.n_features, *spec.hidden, spec.n_outputs]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of shape (n,), or (n, n_outputs) for a multiclass model."""
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        out = self.layers[-1](x)
        return out.squeeze(-1) if self.squeeze else out


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """A freshly initialised model for `spec`; the same seed gives the same weights.

    PyTorch's default initialisation draws from the global CPU generator, so it runs inside
    `torch.random.fork_rng` to leave the caller's random state untouched. Only that generator
    is seeded: `torch.manual_seed` also queues a seeding of every accelerator backend, each
    recording a traceback, which cost an agent about 5% of its CPU per round.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = TabularNet(spec)
    names = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    if names != param_shapes(spec):  # guards the wire contract against a change on either side
        raise ModelError(f"model parameters {names} differ from param_shapes {param_shapes(spec)}")
    return model


def get_params(model: nn.Module) -> list[np.ndarray]:
    """float32 copies of the model's parameters, in `param_shapes` order."""
    return [
        t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()
    ]


def set_params(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load `arrays` (in `param_shapes` order) into `model`.

    Raises
    ------
    ModelError
        The number of arrays, or any array's shape, differs from the model's parameters.
    """
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ModelError(
            f"got {len(arrays)} parameter arrays but the model has {len(state)} "
            f"({list(state)}); was the update made for a different model spec?"
        )
    new_state = {}
    for (name, current), array in zip(state.items(), arrays, strict=True):
        if tuple(np.shape(array)) != tuple(current.shape):
            raise ModelError(
                f"parameter {name!r} has shape {tuple(np.shape(array))}, the model expects "
                f"{tuple(current.shape)}; check n_features and hidden in the model spec"
            )
        new_state[name] = torch.as_tensor(np.asarray(array, dtype=np.float32)).clone()
    model.load_state_dict(new_state)

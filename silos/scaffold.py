"""SCAFFOLD's silo half (Karimireddy et al. 2020, option II): the silo's control variate c_i.

Each round the silo trains from the global model x with every gradient step corrected by
(c - c_i), c being the service's control variate for that model version, ending at y_i after K
steps of rate lr, then sets c_i+ = c_i - c + (x - y_i) / (K lr) and sends (y_i - x, c_i+ - c_i)
as one update, so secure aggregation sums the control deltas too.

``<workspace>/scaffold/<run_id>/control-r<round>.safetensors`` holds c_i+ after each round. A
round starts from the newest file of an earlier round (zeros before the first), so retrying a
round recomputes the same update instead of advancing c_i twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import tensors
from schemas.exceptions import TensorFormatError
from schemas.specs import ModelSpec, TrainingSpec, param_shapes
from silos.exceptions import ModelError

_FILE = re.compile(r"control-r(\d+)\.safetensors")


@dataclass(frozen=True)
class ScaffoldStep:
    """One round of corrected local training: the trained parameters, the control-variate
    delta c_i+ - c_i, the new c_i, the rows trained on and the training loss and seconds."""

    params: list[np.ndarray]
    control_delta: list[np.ndarray]
    control: list[np.ndarray]
    n_examples: int
    loss: float
    seconds: float


def corrected_training(
    spec: ModelSpec,
    start: list[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    training: TrainingSpec,
    c: list[np.ndarray],
    c_i: list[np.ndarray],
) -> ScaffoldStep:
    """Train from `start` with each step's gradient plus (c - c_i); option II's new c_i."""
    from silos.trainer import train_local  # torch: loaded by the first PyTorch round only

    fix = [(g - own).astype(np.float32) for g, own in zip(c, c_i, strict=True)]
    result = train_local(spec, start, X, y, training, correction=fix)
    if result.steps == 0:
        raise ModelError("SCAFFOLD: local training took no steps (no rows?)")
    scale = 1.0 / (result.steps * training.lr)
    new_c_i = [
        (own - g + (x - y_) * scale).astype(np.float32)
        for own, g, x, y_ in zip(c_i, c, start, result.params, strict=True)
    ]
    delta_c = [(new - old).astype(np.float32) for new, old in zip(new_c_i, c_i, strict=True)]
    return ScaffoldStep(
        result.params, delta_c, new_c_i, result.n_examples, result.loss, result.seconds
    )


def control_dir(workspace: Path, run_id: str) -> Path:
    return Path(workspace) / "scaffold" / run_id


def load_control(
    workspace: Path, run_id: str, round_number: int, spec: ModelSpec
) -> list[np.ndarray]:
    """The silo's c_i before round `round_number`: its newest earlier round's, else zeros."""
    shapes = param_shapes(spec)
    folder = control_dir(workspace, run_id)
    earlier = []
    if folder.is_dir():
        for path in folder.iterdir():
            m = _FILE.fullmatch(path.name)
            if m and int(m.group(1)) < round_number:
                earlier.append((int(m.group(1)), path))
    if not earlier:
        return [np.zeros(shape, dtype=np.float32) for _, shape in shapes]
    _, path = max(earlier)
    try:
        arrays, _ = tensors.decode_expected(path.read_bytes(), shapes)
    except TensorFormatError as exc:
        raise ModelError(f"the silo's SCAFFOLD control variate {path}: {exc}") from exc
    return arrays


def save_control(
    workspace: Path, run_id: str, round_number: int, spec: ModelSpec, control: list[np.ndarray]
) -> Path:
    """Keep c_i+ of round `round_number` (written atomically: a crash leaves the old one)."""
    folder = control_dir(workspace, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in param_shapes(spec)]
    path = folder / f"control-r{round_number}.safetensors"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(tensors.encode(dict(zip(names, control, strict=True)), {"run_id": run_id}))
    tmp.replace(path)
    return path

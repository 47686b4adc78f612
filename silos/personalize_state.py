"""What personalization keeps in the silo's workspace, and FedPer's hooks into training.

``<workspace>/personal/<run_id>/`` holds the silo's FedPer head (``head.safetensors``, its
output layer, trained every round and never sent) and the personalized model
(``personalized.safetensors``). Nothing here imports torch: the training round calls
`start_params` and `keep_head_local` around `silos.trainer.train_local`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from schemas import tensors
from schemas.exceptions import TensorFormatError
from schemas.specs import ModelSpec, RunSpec, param_shapes
from silos.exceptions import ModelError
from silos.files import private_dir, write_private

log = logging.getLogger("fedsilo.silo")

HEAD_PARAMS = 2  # the output layer's weight and bias: what FedPer keeps at the silo
HEAD_FILE = "head.safetensors"
MODEL_FILE = "personalized.safetensors"


def personal_dir(workspace: Path, run_id: str) -> Path:
    """The run's personalization folder in the silo's workspace (not created here)."""
    return Path(workspace) / "personal" / run_id


def uses_fedper(spec: RunSpec) -> bool:
    return spec.personalize is not None and spec.personalize.method == "fedper"


def with_head(
    spec: ModelSpec, params: list[np.ndarray], head: list[np.ndarray]
) -> list[np.ndarray]:
    """`params` with the output layer replaced by the silo's `head` (shapes checked)."""
    shapes = [shape for _, shape in param_shapes(spec)[-HEAD_PARAMS:]]
    if [tuple(h.shape) for h in head] != shapes:
        found = [tuple(h.shape) for h in head]
        raise ModelError(f"the silo's stored FedPer head has shapes {found}, the model {shapes}")
    return [*params[:-HEAD_PARAMS], *(np.asarray(h, dtype=np.float32) for h in head)]


def load_head(workspace: Path, run_id: str) -> list[np.ndarray] | None:
    """The silo's FedPer head for `run_id`, or None before its first round.

    Raises
    ------
    ModelError
        The stored head does not decode (empty or cut short by a crash, say), naming the file.
    """
    path = personal_dir(workspace, run_id) / HEAD_FILE
    if not path.exists():
        return None
    try:
        arrays, _ = tensors.decode(path.read_bytes())
        return [arrays["weight"], arrays["bias"]]
    except (TensorFormatError, KeyError) as exc:
        raise ModelError(
            f"the silo's stored FedPer head {path} does not decode ({type(exc).__name__}: "
            f"{exc}): restore it from a backup or delete it"
        ) from exc


def usable_head(workspace: Path, run_id: str) -> list[np.ndarray] | None:
    """`load_head`, or None (logged) when the stored head does not decode: the silo starts
    again from the global model's head, as in its first round, and its next training round
    writes a new one, rather than failing every round left of the run."""
    try:
        return load_head(workspace, run_id)
    except ModelError as exc:
        log.warning(
            "%s; this silo starts from the global model's head instead (its next training round "
            "writes a new head)",
            exc,
        )
        return None


def start_params(
    workspace: Path, spec: RunSpec, run_id: str, params: list[np.ndarray]
) -> list[np.ndarray]:
    """Where this round's local training starts: the global model, with the silo's own head
    under FedPer (the global model's head, never trained, on the silo's first round or when
    the stored head is unreadable, `usable_head`)."""
    if not uses_fedper(spec):
        return params
    head = usable_head(workspace, run_id)
    return params if head is None else with_head(spec.torch_model, params, head)


def keep_head_local(
    workspace: Path, spec: RunSpec, run_id: str, trained: list[np.ndarray], delta: list[np.ndarray]
) -> list[np.ndarray]:
    """Under FedPer, store the trained head at the silo and send zeros in its place, so only
    the body is aggregated and the head never leaves the silo; otherwise `delta` unchanged."""
    if not uses_fedper(spec):
        return delta
    folder = private_dir(personal_dir(workspace, run_id))
    weight, bias = trained[-HEAD_PARAMS:]
    # durable: the next round reads it back, and a head lost to a power cut must not be empty
    head = tensors.encode({"weight": weight, "bias": bias})
    write_private(folder / HEAD_FILE, head, durable=True)
    return [*delta[:-HEAD_PARAMS], *(np.zeros_like(d) for d in delta[-HEAD_PARAMS:])]


def save_model(workspace: Path, run_id: str, payload: bytes) -> Path:
    """Write the personalized model into the workspace (atomically); its path."""
    folder = personal_dir(workspace, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MODEL_FILE + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(folder / MODEL_FILE)
    return folder / MODEL_FILE

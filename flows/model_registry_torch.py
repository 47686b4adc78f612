"""The MLflow pyfunc wrapper of a fedsilo PyTorch model: its safetensors file plus the model
spec, rebuilt with the same network the silos train (`silos.torch_model`).

MLflow pickles the wrapper by reference to this module, so loading it needs fedsilo installed
(listed in the model's requirements).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from schemas import tensors
from schemas.specs import ModelSpec, param_shapes
from silos.torch_model import build_model, set_params


class SafetensorsTabularNet(PythonModel):  # type: ignore[misc]
    """Predicts for rows of the run's feature matrix (after the contract's pipeline), by the
    model's task: P(y = 1), class probabilities (n, k), or values in the target's units."""

    def load_context(self, context: Any) -> None:
        spec = ModelSpec.model_validate_json(context.model_config["model_spec"])
        payload = Path(context.artifacts["weights"]).read_bytes()
        arrays, _ = tensors.decode_expected(payload, param_shapes(spec))
        self.spec = spec
        self.net = build_model(spec)
        set_params(self.net, arrays)
        self.net.eval()

    # No type hints on predict: MLflow would read them as the model's input signature.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        X = np.asarray(model_input, dtype=np.float32)
        with torch.no_grad():
            out = self.net(torch.from_numpy(X))
        if self.spec.task == "multiclass":
            return torch.softmax(out, dim=1).numpy()
        if self.spec.task == "regression":  # learnt range-scaled (silos.trainer)
            low, high = self.spec.target_range or (0.0, 1.0)
            return out.numpy() * (high - low) + low
        return torch.sigmoid(out).numpy()

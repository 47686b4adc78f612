"""The check every local model applies to its encoded rows before training or scoring."""

from __future__ import annotations

import numpy as np

from silos.exceptions import ModelError


def checked_rows(
    X: np.ndarray, y: np.ndarray, n_features: int, *, binary: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`X` (n, n_features) and `y` (n,) as float32, n > 0, labels finite (0 or 1 if `binary`).

    Raises
    ------
    ModelError
        naming the shape or values at fault and how to produce rows that fit.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ModelError(
            f"features have shape {X.shape}; the run's model expects (n, {n_features}). "
            "Was the feature pipeline built from the run's data contract?"
        )
    if y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise ModelError(f"labels have shape {y.shape}; expected ({X.shape[0]},) with n > 0")
    if not np.isfinite(y).all():
        raise ModelError("labels contain NaN or infinity")
    if binary and not np.isin(y, (0.0, 1.0)).all():
        raise ModelError(
            "labels must be 0 or 1 for a binary model; derive them with silos.data.binary_target"
        )
    return X, y

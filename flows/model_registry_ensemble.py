"""The MLflow pyfunc wrapper of a fedsilo FedBoost ensemble: the run's ensemble artifact
(`schemas.ensemble.EnsembleArtifact`, JSON) loaded and mixed exactly as the silos do
(`silos.ensemble.load_ensemble`, every member checked against its sha256).

MLflow pickles the wrapper by reference to this module, so loading it needs fedsilo installed
(listed in the model's requirements), and xgboost / lightgbm when a member is of that kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from silos.ensemble import load_ensemble


class EnsembleMixture(PythonModel):  # type: ignore[misc]
    """Predicts P(y = 1) for rows of the run's feature matrix (after the contract's pipeline):
    the members' probabilities mixed with the federation's learned weights."""

    def load_context(self, context: Any) -> None:
        self.ensemble = load_ensemble(Path(context.artifacts["ensemble"]).read_bytes())

    # No type hints on predict: MLflow would read them as the model's input signature.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return self.ensemble.predict_proba(np.asarray(model_input, dtype=np.float32))

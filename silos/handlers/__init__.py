"""One handler per task type, looked up in a registry (`silos.handlers.registry`).

Importing this package registers the built-in handlers, one module per task family:

=====================  =====================================================================
``plain``              ``train``, ``evaluate``: PyTorch rounds in the clear
``secagg``             ``secagg_advertise``, ``secagg_share``, ``secagg_masked``,
                       ``secagg_unmask``: secure aggregation's stages
``buffered``           ``secagg_buffered``: an asynchronous secure buffer's masked stage
``statistics``         ``statistics``: the federation's feature moments, masked
``distill``            ``distill``: a distillation round's masked soft labels
``ensemble``           ``ensemble_weights`` and the ``ensemble-members`` / ``ensemble-evaluate``
                       extension modes: a FedBoost ensemble run
``trees``              ``tree_train``, ``tree_evaluate``: XGBoost and LightGBM rounds
``secure_hist``        ``hist``: one step of a secure-histogram run
=====================  =====================================================================

Plugin modules installed at the silo add handlers for `ExtensionTask` round modes
(`silos.handlers.plugins`). Every handler receives a `SiloContext` and its typed task.
"""

from silos.handlers import (
    buffered,
    distill,
    ensemble,
    plain,
    secagg,
    secure_hist,
    statistics,
    trees,
)
from silos.handlers.context import SiloContext
from silos.handlers.registry import REGISTRY, register, register_extension

__all__ = [
    "REGISTRY",
    "SiloContext",
    "buffered",
    "distill",
    "ensemble",
    "plain",
    "register",
    "register_extension",
    "secagg",
    "secure_hist",
    "statistics",
    "trees",
]

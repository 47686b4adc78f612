"""The silo's own rules for what work it accepts, checked before any data is touched."""

from __future__ import annotations

from schemas.specs import RunSpec
from silos.config import SiloConfig


def policy_violation(
    config: SiloConfig, spec: RunSpec, n_features: int | None = None
) -> str | None:
    """Return why this silo must refuse the run, or None when its policy allows it."""
    policy = config.policy
    if spec.model.kind not in policy.allowed_models:
        return (
            f"silo {config.silo.name} policy allows models {policy.allowed_models}; "
            f"the run asks for {spec.model.kind!r}"
        )
    if spec.rounds > policy.max_rounds_per_run:
        return (
            f"silo {config.silo.name} policy allows at most {policy.max_rounds_per_run} rounds per "
            f"run; the run asks for {spec.rounds}"
        )
    if policy.require_privacy and spec.privacy is None:
        return f"silo {config.silo.name} policy requires silo-level differential privacy"
    if spec.dataset != config.data.contract:
        return (
            f"silo {config.silo.name} holds data under contract {config.data.contract!r}; "
            f"the run is for dataset {spec.dataset!r}"
        )
    if n_features is not None and spec.model.n_features != n_features:
        return (
            f"the run's model expects {spec.model.n_features} features; contract "
            f"{config.data.contract!r} yields {n_features} at silo {config.silo.name}"
        )
    return None

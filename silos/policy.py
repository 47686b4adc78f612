"""The silo's own rules for what work it accepts, checked before any data is touched."""

from __future__ import annotations

from schemas.specs import RunSpec
from silos.config import SiloConfig
from silos.tree_policy import policy_violation_trees


def policy_violation(
    config: SiloConfig, spec: RunSpec, n_features: int | None = None, task: str | None = None
) -> str | None:
    """Return why this silo must refuse the run, or None when its policy allows it.

    `n_features` and `task` are what the silo's contract yields; the run's model must match.
    """
    policy = config.policy
    if spec.trees is not None:
        problem = policy_violation_trees(policy.trees, spec.trees, config.silo.name)
        if problem:
            return problem
        if spec.trees.mode == "collective" and config.collective is None:
            return (
                f"silo {config.silo.name} has no [collective] certificates in "
                f"{config.source}; it cannot join XGBoost's federated collective"
            )
    elif spec.distill is not None or spec.ensemble is not None:
        problem = _own_kind_violation(config, spec)
        if problem:
            return problem
    elif spec.torch_model.kind not in policy.allowed_models:
        return (
            f"silo {config.silo.name} policy allows models {policy.allowed_models}; "
            f"the run asks for {spec.torch_model.kind!r}"
        )
    if spec.rounds > policy.max_rounds_per_run:
        return (
            f"silo {config.silo.name} policy allows at most {policy.max_rounds_per_run} rounds per "
            f"run; the run asks for {spec.rounds}"
        )
    if policy.require_privacy and spec.privacy is None:
        return f"silo {config.silo.name} policy requires silo-level differential privacy"
    floor = policy.min_noise_multiplier
    if floor is not None and spec.privacy is not None and spec.privacy.noise_multiplier < floor:
        return (
            f"silo {config.silo.name} policy requires a noise multiplier of at least {floor:g}; "
            f"the run asks for {spec.privacy.noise_multiplier:g}"
        )
    if spec.dataset != config.data.contract:
        return (
            f"silo {config.silo.name} holds data under contract {config.data.contract!r}; "
            f"the run is for dataset {spec.dataset!r}"
        )
    expected = spec.trees.n_features if spec.trees else spec.torch_model.n_features
    if n_features is not None and expected != n_features:
        return (
            f"the run's model expects {expected} features; contract "
            f"{config.data.contract!r} yields {n_features} at silo {config.silo.name}"
        )
    if task is not None and spec.model is not None and spec.model.task != task:
        return (
            f"the run's model is for a {spec.model.task} task; contract "
            f"{config.data.contract!r} at silo {config.silo.name} is {task}"
        )
    return None


def _own_kind_violation(config: SiloConfig, spec: RunSpec) -> str | None:
    """Why the silo refuses the kind a distillation or ensemble run asks it to train (there
    each silo trains its own kind, whatever the run's model), or None."""
    name = config.silo.name
    if spec.distill is not None:
        kind = spec.distill.kind_for(name)
        asked = f"the distillation run asks it to train {kind!r}"
    else:
        assert spec.ensemble is not None
        kind = spec.ensemble.kind_for(name)
        asked = f"the ensemble run asks it to train a {kind!r} member"
    allowed = (*config.policy.allowed_models, *config.policy.trees.allowed_kinds)
    return None if kind in allowed else f"silo {name} policy allows models {list(allowed)}; {asked}"

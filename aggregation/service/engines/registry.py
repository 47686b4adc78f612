"""Which engine runs a round: one `RoundEngine` per mode name, built-ins and plugins alike.

The built-in engines register in `engines.builtin`; a plugin is an importable module named in
the service setting ``plugins`` (env ``FEDSILO_SERVICE_PLUGINS=pkg.mod,other.mod``) whose
import calls `register(name, engine)`. A run picks a plugin's mode with ``RunSpec.mode``;
otherwise the mode follows from the spec and the round (`mode_of`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable

from aggregation.service.engines.base import RoundEngine
from aggregation.service.exceptions import Conflict
from aggregation.service.tables import Round
from schemas.ensemble import EVALUATE_MODE, MEMBERS_MODE
from schemas.specs import RunSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_ENGINES: dict[str, RoundEngine] = {}


class PluginError(RuntimeError):
    """A plugin module named in the settings cannot be imported, or registers badly."""


def register(name: str, engine: RoundEngine) -> None:
    """Make `engine` run the rounds of mode `name`.

    Registering the same name again with an engine of the same class replaces it (a module
    imported twice, a second app in one process); another class under a taken name is refused.
    """
    if not _NAME.match(name):
        raise PluginError(f"round mode name {name!r} must match {_NAME.pattern}")
    existing = _ENGINES.get(name)
    if existing is not None and type(existing) is not type(engine):
        raise PluginError(
            f"round mode {name!r} is already registered by {type(existing).__module__}."
            f"{type(existing).__qualname__}; pick another name for "
            f"{type(engine).__module__}.{type(engine).__qualname__}"
        )
    _ENGINES[name] = engine


def registered() -> list[str]:
    """The mode names an engine is registered for, sorted."""
    return sorted(_ENGINES)


def mode_of(spec: RunSpec, rnd: Round) -> str:
    """The mode name of round `rnd` of a run with `spec`.

    A statistics round is always ``statistics`` (secure sums of feature moments); then the
    spec's plugin `mode`; then the tree mode; then an ensemble run's own modes
    (`ensemble_mode`); then ``distill`` for a training round of a
    distillation run; then ``async`` / ``async-secure`` for a
    training round of an asynchronous run; then ``secure`` for a PyTorch training round
    with secure aggregation, ``plain`` for everything else (evaluation rounds included).
    """
    if rnd.kind == "statistics":
        return "statistics"
    if spec.mode is not None:
        return spec.mode
    if spec.trees is not None:
        return spec.trees.mode
    if spec.ensemble is not None:
        return ensemble_mode(rnd)
    if rnd.kind == "train" and spec.distill is not None:
        return "distill"
    if rnd.kind == "train" and spec.asynchronous is not None:
        return "async-secure" if spec.secure_aggregation.enabled else "async"
    if rnd.kind == "train" and spec.secure_aggregation.enabled:
        return "secure"
    return "plain"


def ensemble_mode(rnd: Round) -> str:
    """An ensemble run's rounds: members (the first training round, whose input is the empty
    version 0), weights (securely summed), the closing evaluation."""
    if rnd.kind != "train":
        return EVALUATE_MODE
    return MEMBERS_MODE if rnd.input_model_version == 0 else "ensemble-weights"


def engine_for(spec: RunSpec, rnd: Round) -> RoundEngine:
    """The engine of round `rnd` (Conflict naming the mode when none is registered)."""
    name = mode_of(spec, rnd)
    engine = _ENGINES.get(name)
    if engine is None:
        raise Conflict(missing(name))
    return engine


def check_mode(spec: RunSpec) -> None:
    """Refuse (Conflict) a run whose plugin mode no engine is registered for."""
    if spec.mode is not None and spec.mode not in _ENGINES:
        raise Conflict(missing(spec.mode))


def missing(name: str) -> str:
    return (
        f"no round engine is registered for mode {name!r} (registered: {registered()}); "
        "name the module that registers it in the service setting plugins "
        "(FEDSILO_SERVICE_PLUGINS)"
    )


def load_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module; importing it registers its engines."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PluginError(
                f"service plugin {module!r} (FEDSILO_SERVICE_PLUGINS) cannot be imported: "
                f"{exc}; install it where the service runs, or drop it from the setting"
            ) from exc

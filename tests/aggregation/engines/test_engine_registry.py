"""The round-engine registry: which engine runs which round, plugins, refusals."""

from __future__ import annotations

import pytest

from aggregation.service.engines import registry
from aggregation.service.engines.builtin import register_builtins
from aggregation.service.engines.collective import CollectiveEngine
from aggregation.service.engines.plain import PlainEngine
from aggregation.service.engines.secure import SecureEngine
from aggregation.service.engines.secure_hist import SecureHistEngine
from aggregation.service.engines.statistics import StatisticsEngine
from aggregation.service.engines.trees import TreeEngine
from aggregation.service.exceptions import Conflict
from aggregation.service.settings import ServiceSettings
from aggregation.service.tables import Round
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec
from schemas.tree_params import TreeSpec

TORCH = RunSpec(federation="f", dataset="toy", model=ModelSpec(kind="logreg", n_features=3))
PLAIN = TORCH.model_copy(update={"secure_aggregation": SecureAggregationSpec(enabled=False)})


def trees(mode: str) -> RunSpec:
    spec = TreeSpec(kind="xgboost", mode=mode, n_features=3)  # type: ignore[arg-type]
    return PLAIN.model_copy(update={"model": None, "trees": spec})


def rnd(kind: str) -> Round:
    return Round(run_id="r", number=1, kind=kind, status="open")


@pytest.fixture(autouse=True)
def builtins() -> None:
    register_builtins()


@pytest.mark.parametrize(
    ("spec", "kind", "mode", "engine"),
    [
        (PLAIN, "train", "plain", PlainEngine),
        (PLAIN, "evaluate", "plain", PlainEngine),
        (TORCH, "train", "secure", SecureEngine),
        (TORCH, "evaluate", "plain", PlainEngine),
        (TORCH, "statistics", "statistics", StatisticsEngine),
        (trees("bagging"), "train", "bagging", TreeEngine),
        (trees("cyclic"), "evaluate", "cyclic", TreeEngine),
        (trees("collective"), "train", "collective", CollectiveEngine),
        (trees("bagging"), "statistics", "statistics", StatisticsEngine),
    ],
)
def test_builtin_modes(spec: RunSpec, kind: str, mode: str, engine: type) -> None:
    assert registry.mode_of(spec, rnd(kind)) == mode
    assert type(registry.engine_for(spec, rnd(kind))) is engine


def test_secure_hist_mode() -> None:
    from schemas.tree_params import SecureHistSpec

    spec = TreeSpec(kind="xgboost", mode="secure-hist", n_features=3, secure_hist=SecureHistSpec())
    run = PLAIN.model_copy(update={"model": None, "trees": spec})
    assert isinstance(registry.engine_for(run, rnd("train")), SecureHistEngine)
    assert isinstance(registry.engine_for(run, rnd("evaluate")), SecureHistEngine)


class Echo:
    """A stand-in plugin engine (never called here)."""


def test_a_plugin_mode_is_found_by_the_spec_and_statistics_stay_builtin() -> None:
    spec = PLAIN.model_copy(update={"mode": "echo-test"})
    with pytest.raises(Conflict, match="no round engine is registered for mode 'echo-test'"):
        registry.engine_for(spec, rnd("train"))
    with pytest.raises(Conflict, match="FEDSILO_SERVICE_PLUGINS"):
        registry.check_mode(spec)
    engine = Echo()
    registry.register("echo-test", engine)  # type: ignore[arg-type]
    assert registry.engine_for(spec, rnd("train")) is engine
    assert registry.engine_for(spec, rnd("evaluate")) is engine
    assert isinstance(registry.engine_for(spec, rnd("statistics")), StatisticsEngine)
    assert "echo-test" in registry.registered()
    registry.check_mode(spec)


def test_a_taken_name_or_a_bad_name_is_refused() -> None:
    with pytest.raises(registry.PluginError, match="already registered by .*PlainEngine"):
        registry.register("plain", Echo())  # type: ignore[arg-type]
    with pytest.raises(registry.PluginError, match="must match"):
        registry.register("../x", Echo())  # type: ignore[arg-type]
    registry.register("plain", PlainEngine())  # the same class again replaces it


def test_plugins_load_by_module_name_and_a_missing_one_is_named() -> None:
    registry.load_plugins(["echo_plugin"])  # this folder's plugin registers "echo"
    assert "echo" in registry.registered()
    with pytest.raises(registry.PluginError, match="'no_such.plugin_mod' .* cannot be imported"):
        registry.load_plugins(["no_such.plugin_mod"])


def test_the_plugins_setting_reads_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDSILO_SERVICE_PLUGINS", "acme.engine, other.mod,")
    assert ServiceSettings().plugins == ["acme.engine", "other.mod"]
    monkeypatch.delenv("FEDSILO_SERVICE_PLUGINS")
    assert ServiceSettings().plugins == []

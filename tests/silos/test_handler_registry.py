"""The agent's handler table: built-in task types, extension modes, plugins."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from pydantic import BaseModel

from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import TASK_ADAPTER, ExtensionTask, RunEndedTask, TrainTask
from silos.config import load_silo_config
from silos.exceptions import PluginError, SiloConfigError, UnsupportedTask
from silos.handlers import REGISTRY, SiloContext
from silos.handlers.plugins import ENV_PLUGINS, load_plugins, plugin_names
from silos.handlers.registry import TASK_TYPES, HandlerRegistry

SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=3)
)
CTX = cast(SiloContext, object())  # these handlers never touch the context


class SketchBody(BaseModel):
    width: int


def _extension(mode: str, body: dict[str, object]) -> ExtensionTask:
    task = TASK_ADAPTER.validate_python(
        {
            "type": "extension",
            "run_id": "r1",
            "round": 2,
            "spec": SPEC.model_dump(),
            "mode": mode,
            "body": body,
        }
    )
    assert isinstance(task, ExtensionTask)
    return task


def test_every_task_type_of_the_wire_has_a_built_in_handler() -> None:
    assert set(REGISTRY.task_types()) == TASK_TYPES
    assert "run_ended" not in TASK_TYPES and "extension" not in TASK_TYPES
    assert REGISTRY.lookup(TrainTask(run_id="r", round=1, spec=SPEC)).trains


def test_a_task_goes_to_the_handler_of_its_type() -> None:
    registry = HandlerRegistry()
    seen: list[object] = []
    registry.register("train", lambda ctx, task: seen.append(task) or "done", trains=True)
    task = TrainTask(run_id="r", round=1, spec=SPEC)
    assert registry.dispatch(CTX, task) == "done" and seen == [task]
    with pytest.raises(UnsupportedTask, match="no handler for 'evaluate'"):
        registry.dispatch(
            CTX,
            TASK_ADAPTER.validate_python(
                {"type": "evaluate", "run_id": "r", "spec": SPEC.model_dump()}
            ),
        )


def test_unknown_types_and_second_registrations_are_refused() -> None:
    registry = HandlerRegistry()
    with pytest.raises(ValueError, match="register_extension"):
        registry.register("sketch", lambda ctx, task: None)
    with pytest.raises(ValueError, match="not a task type"):
        registry.register("run_ended", lambda ctx, task: None)

    def first(ctx: SiloContext, task: TrainTask) -> None: ...

    def second(ctx: SiloContext, task: TrainTask) -> None: ...

    registry.register("train", first)
    registry.register("train", first)  # the same handler again (a module imported twice): fine
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register("train", second)
    registry.register("train", second, replace=True)
    assert registry.lookup(TrainTask(run_id="r", spec=SPEC)).handler is second


def test_an_extension_handler_receives_its_validated_body() -> None:
    registry = HandlerRegistry()
    seen: list[tuple[ExtensionTask, SketchBody]] = []
    registry.register_extension(
        "sketch", lambda ctx, task, body: seen.append((task, body)), SketchBody
    )
    task = _extension("sketch", {"width": 8})
    registry.dispatch(CTX, task)
    assert seen == [(task, SketchBody(width=8))]
    assert registry.lookup(task).opens_round and not registry.lookup(task).trains
    with pytest.raises(UnsupportedTask, match="does not fit SketchBody"):
        registry.dispatch(CTX, _extension("sketch", {"width": "wide"}))
    with pytest.raises(
        UnsupportedTask, match=r"no handler for round mode 'other'.*\[agent\] plugins"
    ):
        registry.dispatch(CTX, _extension("other", {}))
    with pytest.raises(ValueError, match="must match"):
        registry.register_extension("../x", lambda ctx, task, body: None, SketchBody)


def test_run_ended_has_no_handler() -> None:
    with pytest.raises(UnsupportedTask):
        HandlerRegistry().lookup(RunEndedTask(run_id="r", run_status="finished"))


def test_a_plugin_module_registers_its_mode_at_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fedsilo_sketch_plugin.py").write_text(
        "from pydantic import BaseModel\n"
        "from silos.handlers.registry import register_extension\n"
        "class Body(BaseModel):\n    width: int\n"
        "def sketch(ctx, task, body):\n    return body.width * 2\n"
        "register_extension('sketch-test', sketch, Body)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins(["fedsilo_sketch_plugin"]) == ["fedsilo_sketch_plugin"]
    assert "sketch-test" in REGISTRY.modes()
    assert REGISTRY.dispatch(CTX, _extension("sketch-test", {"width": 21})) == 42
    with pytest.raises(PluginError, match="'fedsilo_no_such_plugin'.*not importable"):
        load_plugins(["fedsilo_no_such_plugin"])


def test_plugins_come_from_silo_toml_then_the_environment(tmp_path: Path) -> None:
    assert plugin_names(["a.b"], {ENV_PLUGINS: " c , a.b,,d"}) == ["a.b", "c", "d"]
    assert plugin_names([], {}) == []
    base = (
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\ncontract = "heart_disease"\n'
        '[service]\nurls = ["http://127.0.0.1:1"]\n'
    )
    ok = tmp_path / "ok.toml"
    ok.write_text(base + '[agent]\nplugins = ["acme_fedsilo.sketch"]\n')
    assert load_silo_config(ok).agent.plugins == ["acme_fedsilo.sketch"]
    assert load_silo_config(_write(tmp_path / "none.toml", base)).agent.plugins == []
    bad = _write(tmp_path / "bad.toml", base + '[agent]\nplugins = ["../evil.py"]\n')
    with pytest.raises(SiloConfigError, match="agent.plugins.*not a Python module name"):
        load_silo_config(bad)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

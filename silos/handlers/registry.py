"""Which function handles which task: a table keyed by the wire's task type.

The agent looks every task up here (`REGISTRY.dispatch(ctx, task)`) instead of branching on
its type. Built-in handlers register when `silos.handlers` is imported; a plugin module (named
in silo.toml ``[agent] plugins`` or ``FEDSILO_AGENT_PLUGINS``) registers its own at import::

    # acme_fedsilo/sketch.py, installed at the silo
    from pydantic import BaseModel
    from schemas.tasks import ExtensionTask
    from silos.handlers.context import SiloContext
    from silos.handlers.registry import register_extension

    class SketchBody(BaseModel):
        width: int

    def sketch(ctx: SiloContext, task: ExtensionTask, body: SketchBody) -> None:
        ctx.client.submit_extension(task.run_id, task.round, make_sketch(ctx.data, body.width))

    register_extension("sketch", sketch, SketchBody)

A handler is a plain function ``(ctx, task) -> object`` (an extension handler also receives
its body, validated by the model it registered). A task type or mode registers once: a second
registration is refused unless `replace=True`, so a plugin cannot silently shadow another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, get_args

from pydantic import BaseModel, ValidationError

from schemas.tasks import ExtensionTask, RunEndedTask, Task, VerticalTask
from schemas.wire import NAME_PATTERN
from silos.decline import Declined
from silos.exceptions import UnsupportedTask
from silos.handlers.context import SiloContext

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)

Handler = Callable[..., object]
"""``(ctx, task) -> object``, or for an extension mode ``(ctx, task, body) -> object``."""

# the agent ends the run; modes register apart; a vertical run is a flow of its own
_NOT_HANDLED = {RunEndedTask, ExtensionTask, VerticalTask}
TASK_TYPES: frozenset[str] = frozenset(
    str(model.model_fields["type"].default)
    for model in get_args(get_args(Task)[0])
    if model not in _NOT_HANDLED
)
"""The task types of this wire version that a handler may be registered for."""


@dataclass(frozen=True)
class Registration:
    """A handler and how the agent treats its tasks.

    `opens_round`: a task of this type may be the first of a round, so the agent runs the
    validation gate before it (once per round). `trains`: it completes one of the silo's
    training rounds (counted in the flow's result).
    """

    name: str
    handler: Handler
    opens_round: bool = False
    trains: bool = False
    body_model: type[BaseModel] | None = None


class HandlerRegistry:
    """Task type -> handler, and extension mode -> handler with its body model."""

    def __init__(self) -> None:
        self._types: dict[str, Registration] = {}
        self._modes: dict[str, Registration] = {}

    def register(
        self,
        task_type: str,
        handler: Callable[[SiloContext, T], object],
        *,
        opens_round: bool = False,
        trains: bool = False,
        replace: bool = False,
    ) -> None:
        """Handle tasks of `task_type` (one of `TASK_TYPES`) with `handler(ctx, task)`."""
        if task_type not in TASK_TYPES:
            raise ValueError(
                f"{task_type!r} is not a task type of this wire version ({sorted(TASK_TYPES)}); "
                "a plugin's own round mode registers with register_extension(mode, ...)"
            )
        self._add(self._types, Registration(task_type, handler, opens_round, trains), replace)

    def register_extension(
        self,
        mode: str,
        handler: Callable[[SiloContext, ExtensionTask, B], object],
        body_model: type[B],
        *,
        opens_round: bool = True,
        trains: bool = False,
        replace: bool = False,
    ) -> None:
        """Handle `ExtensionTask`s of round mode `mode` with ``handler(ctx, task, body)``,
        `body` being the task's `body` validated by `body_model`."""
        if not re.match(NAME_PATTERN, mode):
            raise ValueError(f"extension mode {mode!r} must match {NAME_PATTERN}")
        entry = Registration(mode, handler, opens_round, trains, body_model)
        self._add(self._modes, entry, replace)

    @staticmethod
    def _add(table: dict[str, Registration], entry: Registration, replace: bool) -> None:
        old = table.get(entry.name)
        if old is not None and not replace and old.handler is not entry.handler:
            raise ValueError(
                f"{entry.name!r} already has a handler ({_where(old.handler)}); refusing "
                f"{_where(entry.handler)} (pass replace=True to override it on purpose)"
            )
        table[entry.name] = entry

    def lookup(self, task: Task) -> Registration:
        """The registration that handles `task` (UnsupportedTask if none is installed)."""
        if isinstance(task, ExtensionTask):
            entry = self._modes.get(task.mode)
            if entry is None:
                raise UnsupportedTask(
                    f"this silo has no handler for round mode {task.mode!r} (installed: "
                    f"{sorted(self._modes) or 'none'}); its operator adds the plugin module "
                    "to silo.toml [agent] plugins"
                )
            return entry
        entry = self._types.get(task.type)
        if entry is None:
            raise UnsupportedTask(f"this silo has no handler for {task.type!r} tasks")
        return entry

    def dispatch(self, ctx: SiloContext, task: Task) -> object:
        """Run the handler registered for `task`; returns what it returns.

        A workspace file it cannot write (the disk is full, say) declines the round naming the
        step and the file: the operator's fix counts from the next round."""
        entry = self.lookup(task)
        try:
            return self._run(entry, ctx, task)
        except OSError as exc:
            if exc.filename is None:  # not a file (a socket, say): declined like any error
                raise
            raise Declined("round", "internal", f"{entry.name} step: {exc}") from exc

    @staticmethod
    def _run(entry: Registration, ctx: SiloContext, task: Task) -> object:
        if isinstance(task, ExtensionTask):
            assert entry.body_model is not None  # every mode registers with its model
            try:
                body = entry.body_model.model_validate(task.body)
            except ValidationError as exc:
                raise UnsupportedTask(
                    f"round {task.round} of run {task.run_id}: the {task.mode!r} task's body "
                    f"does not fit {entry.body_model.__name__}: {exc}"
                ) from exc
            return entry.handler(ctx, task, body)
        return entry.handler(ctx, task)

    def task_types(self) -> list[str]:
        return sorted(self._types)

    def modes(self) -> list[str]:
        return sorted(self._modes)


def _where(handler: object) -> str:
    name = getattr(handler, "__qualname__", None) or getattr(handler, "name", repr(handler))
    return f"{getattr(handler, '__module__', '?')}.{name}"


REGISTRY = HandlerRegistry()
"""The agent's table; built-in handlers and plugins register here."""

register = REGISTRY.register
register_extension = REGISTRY.register_extension
